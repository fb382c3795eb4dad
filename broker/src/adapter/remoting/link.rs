//! A remoting connection as the broker's way back to a RocketMQ client: rebalance notices
//! and transaction check-backs, both one way, as a RocketMQ broker sends them.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use weir_protocol::broker::CheckTransactionState;
use weir_protocol::names::property;
use weir_protocol::net::BoxFuture;
use weir_protocol::{Connection, RecordView};
use weir_remoting::RemotingCommand;
use weir_remoting::codes::request as rq;
use weir_remoting::message::property as rp;

use super::pull::message_ext;
use crate::clients::ClientLink;

/// A RocketMQ client's connection, kept from its heartbeat.
pub struct RemotingLink {
    conn: Connection,
}

impl RemotingLink {
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    fn send_oneway(&self, cmd: RemotingCommand) -> BoxFuture<'static, Result<(), String>> {
        let conn = self.conn.clone();
        Box::pin(async move {
            let header = cmd.header_parts().map_err(|e| e.to_string())?;
            conn.oneway_raw(cmd.code as u16, header, cmd.body)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

impl ClientLink for RemotingLink {
    fn id(&self) -> u64 {
        self.conn.id()
    }

    fn peer(&self) -> SocketAddr {
        self.conn.peer()
    }

    fn notify_consumer_ids_changed(&self, group: &str) -> BoxFuture<'static, Result<(), String>> {
        let cmd = RemotingCommand::request(rq::NOTIFY_CONSUMER_IDS_CHANGED, 0)
            .with("consumerGroup", group)
            .oneway();
        self.send_oneway(cmd)
    }

    /// `CHECK_TRANSACTION_STATE` with the half message in RocketMQ's layout, under its real
    /// topic and queue, as `AbstractTransactionalMessageCheckListener` sends it.
    fn check_transaction_state(
        &self,
        check: CheckTransactionState,
        half: Bytes,
    ) -> BoxFuture<'static, Result<(), String>> {
        let encoded = RecordView::parse(&half)
            .map_err(|e| e.to_string())
            .and_then(|view| {
                let mut m = message_ext(&view);
                if let Some(t) = view.property(property::REAL_TOPIC) {
                    m.topic = t.to_owned();
                }
                if let Some(q) = view
                    .property(property::REAL_QUEUE_ID)
                    .and_then(|q| q.parse().ok())
                {
                    m.queue_id = q;
                }
                let uniq = view.property(rp::UNIQ_KEY).map(str::to_owned);
                let mut body = BytesMut::with_capacity(m.encoded_len());
                m.encode(&mut body).map_err(|e| e.to_string())?;
                Ok((m, uniq, body.freeze()))
            });
        let (m, uniq, body) = match encoded {
            Ok(x) => x,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let offset_msg_id = m.offset_msg_id();
        let cmd = RemotingCommand::request(rq::CHECK_TRANSACTION_STATE, 0)
            .with("tranStateTableOffset", m.queue_offset)
            .with("commitLogOffset", check.commit_log_offset)
            .with("msgId", uniq.as_deref().unwrap_or(&offset_msg_id))
            .with("transactionId", &check.transaction_id)
            .with("offsetMsgId", &offset_msg_id)
            .with_body(body)
            .oneway();
        self.send_oneway(cmd)
    }
}
