//! A message's delivery trail, where its broker knows it ([`Admin::message_trail`]).

use bytes::Bytes;
use weir_protocol::admin::{GetMessageTrail, MessageTrail};
use weir_protocol::names::property;
use weir_protocol::{ErrorCode, MessageId};

use crate::{Admin, ReceivedMessage, Result};

/// A stored message and what its broker knows of its delivery.
#[derive(Debug, Clone)]
pub struct DeliveryTrail {
    /// The message as stored: broker, queue, offset, store time.
    pub message: ReceivedMessage,
    /// The address of the broker that stored it (its id names it).
    pub addr: String,
    /// What that broker knows: each consumer group with an offset on the message's queue,
    /// whether it is past the message, and the group's retries and dead letters of it.
    /// `None` from a broker too old to tell (it does not serve the request).
    pub known: Option<MessageTrail>,
}

impl Admin {
    /// The message with this id and its delivery trail, for at most `max_groups` groups
    /// (the broker caps it): 3 requests (the message by id, the cluster view naming its
    /// broker, the trail from that broker).
    pub async fn message_trail(&self, msg_id: &str, max_groups: u32) -> Result<DeliveryTrail> {
        let id: MessageId = msg_id.parse()?;
        let addr = id.store_host.to_string();
        let message = self.message_by_id(msg_id).await?;
        // A copy's trail is its original's: the copies carry the original's id.
        let origin = message
            .property(property::ORIGIN_MESSAGE_ID)
            .map_or_else(|| message.msg_id.to_string(), str::to_owned);
        let req = GetMessageTrail {
            topic: message.topic.clone(),
            queue_id: message.queue_id,
            queue_offset: message.queue_offset,
            origin_msg_id: origin,
            max_groups,
        };
        let known = match self.client.call(&addr, &req, Bytes::new()).await {
            Ok((trail, _)) => Some(trail),
            Err(e) if e.code() == Some(ErrorCode::RequestCodeNotSupported) => None,
            Err(e) => return Err(e),
        };
        Ok(DeliveryTrail {
            message,
            addr,
            known,
        })
    }
}
