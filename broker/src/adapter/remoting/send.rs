//! `SEND_MESSAGE` (long header names), `SEND_MESSAGE_V2` (one-letter names) and
//! `SEND_BATCH_MESSAGE` (V2 header, `MessageDecoder.encodeMessages` body). As RocketMQ's
//! broker does, a send whose header says `batch` is a batch whatever its code: RocketMQ's
//! C++ client (under PyPI's `rocketmq`) sends batches as `SEND_MESSAGE` with `batch` "1"
//! (which RocketMQ 4.9.7 itself reads as false, storing the batch as one message).
//!
//! A RocketMQ message's tag and keys travel as properties `TAGS` and `KEYS` (keys
//! space-separated); they become weir's tag and keys, every other property stays a
//! property (`UNIQ_KEY`, the producer's message id, among them). A compressed body
//! (zlib, sys flag bit 0) is stored inflated. A half message (`TRAN_MSG`) is identified by
//! its `UNIQ_KEY`, which RocketMQ's producers send back as the transaction id.

use bytes::{Bytes, BytesMut};
use weir_protocol::broker::{BatchEntry, SendBatch, SendMessage, SendResult, SendStatus};
use weir_protocol::names::property as wp;
use weir_remoting::RemotingCommand;
use weir_remoting::codes::{request as rq, response as rs};
use weir_remoting::message::{self, decode_properties, property as rp, sys_flag};

use super::{Call, RemotingAdapter, Served, bad, unexpected};
use crate::dispatch::{BrokerRequest, BrokerResponse};
use crate::error::ProcessError;

/// A send header's fields, whichever names carried them.
struct SendHeader {
    producer_group: String,
    topic: String,
    queue_id: u32,
    sys_flag: i32,
    born_timestamp: i64,
    flag: i32,
    properties: String,
    reconsume_times: u32,
    max_reconsume_times: Option<u32>,
    /// Queues the producer asks for should the send create the topic.
    default_topic_queues: Option<u32>,
    /// The body is a batch (`MessageDecoder.encodeMessages`).
    batch: bool,
}

impl SendHeader {
    fn parse(cmd: &RemotingCommand) -> Result<Self, ProcessError> {
        // V2's one-letter names, else V1's (`SendMessageRequestHeaderV2.createSendMessageRequestHeaderV1`).
        let v2 = cmd.opt_field("b").is_some();
        let name = |long: &'static str, short: &'static str| if v2 { short } else { long };
        let queue_id: i32 = cmd.num(name("queueId", "e")).map_err(bad)?;
        let queue_id = u32::try_from(queue_id).map_err(|_| {
            ProcessError::InvalidParameter(format!("queue id {queue_id} is negative"))
        })?;
        let reconsume_times: i32 = cmd
            .opt_num(name("reconsumeTimes", "j"))
            .map_err(bad)?
            .unwrap_or(0);
        Ok(Self {
            producer_group: cmd
                .field(name("producerGroup", "a"))
                .map_err(bad)?
                .to_owned(),
            topic: cmd.field(name("topic", "b")).map_err(bad)?.to_owned(),
            queue_id,
            sys_flag: cmd.opt_num(name("sysFlag", "f")).map_err(bad)?.unwrap_or(0),
            born_timestamp: cmd
                .opt_num(name("bornTimestamp", "g"))
                .map_err(bad)?
                .unwrap_or(0),
            flag: cmd.opt_num(name("flag", "h")).map_err(bad)?.unwrap_or(0),
            properties: cmd
                .opt_field(name("properties", "i"))
                .unwrap_or_default()
                .to_owned(),
            reconsume_times: u32::try_from(reconsume_times).unwrap_or(0),
            max_reconsume_times: cmd
                .opt_num::<i32>(name("maxReconsumeTimes", "l"))
                .map_err(bad)?
                .map(|m| u32::try_from(m).unwrap_or(0)),
            default_topic_queues: cmd
                .opt_num::<i32>(name("defaultTopicQueueNums", "d"))
                .map_err(bad)?
                .and_then(|q| u32::try_from(q).ok()),
            batch: cmd.code == rq::SEND_BATCH_MESSAGE
                || cmd.opt_bool(name("batch", "m")).unwrap_or(false),
        })
    }
}

/// A message's tag, keys and other properties, from RocketMQ's properties string.
pub(crate) struct Split {
    pub tags: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
}

pub(crate) fn split_properties(s: &str) -> Split {
    let mut out = Split {
        tags: String::new(),
        keys: Vec::new(),
        properties: Vec::new(),
    };
    for (k, v) in decode_properties(s) {
        match k.as_str() {
            rp::TAGS => out.tags = v,
            rp::KEYS => out.keys.extend(
                v.split(rp::KEY_SEPARATOR)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            ),
            _ => out.properties.push((k, v)),
        }
    }
    // A half message's transaction id is its producer's message id (RocketMQ's producers
    // answer check-backs and end transactions with it).
    let half = out
        .properties
        .iter()
        .any(|(k, v)| k == wp::TRANSACTION_PREPARED && v == "true");
    if half && !out.properties.iter().any(|(k, _)| k == wp::TRANSACTION_ID) {
        let uniq = out
            .properties
            .iter()
            .find(|(k, _)| k == rp::UNIQ_KEY)
            .map(|(_, v)| v.clone());
        if let Some(id) = uniq {
            out.properties.push((wp::TRANSACTION_ID.to_owned(), id));
        }
    }
    out
}

/// The body as stored: inflated when the producer compressed it.
fn plain_body(adapter: &RemotingAdapter, sys: i32, body: Bytes) -> Result<Bytes, ProcessError> {
    if sys & sys_flag::COMPRESSED == 0 {
        return Ok(body);
    }
    let limit = adapter.0.live.max_message_size();
    message::decompress(sys, &body, limit)
        .map(Bytes::from)
        .map_err(|e| ProcessError::MessageIllegal(format!("message body: {e}")))
}

pub(super) async fn serve(
    adapter: &RemotingAdapter,
    call: &Call<'_>,
    cmd: &RemotingCommand,
) -> Served {
    let h = SendHeader::parse(cmd)?;
    if h.batch {
        return serve_batch(adapter, call, cmd, h).await;
    }
    let split = split_properties(&h.properties);
    let body = plain_body(adapter, h.sys_flag, cmd.body.clone())?;
    let queues = h.default_topic_queues;
    let req = SendMessage {
        producer_group: h.producer_group,
        topic: h.topic,
        queue_id: h.queue_id,
        tags: split.tags,
        keys: split.keys,
        properties: split.properties,
        flag: h.flag as u32,
        born_timestamp: h.born_timestamp,
        sys_flag: 0,
        reconsume_times: h.reconsume_times,
        max_reconsume_times: h.max_reconsume_times,
    };
    match adapter
        .dispatch_send(call, BrokerRequest::Send { req, body }, queues)
        .await?
    {
        BrokerResponse::Sent(r) => Ok(sent(cmd, &r, r.msg_id.clone())),
        _ => Err(unexpected("send")),
    }
}

async fn serve_batch(
    adapter: &RemotingAdapter,
    call: &Call<'_>,
    cmd: &RemotingCommand,
    h: SendHeader,
) -> Served {
    // 4.x producers never compress a batch; newer ones compress the whole body.
    let whole = plain_body(adapter, h.sys_flag, cmd.body.clone())?;
    let entries = message::decode_batch(&whole)
        .map_err(|e| ProcessError::BadRequest(format!("batch body: {e}")))?;
    let mut messages = Vec::with_capacity(entries.len());
    let mut bodies = BytesMut::new();
    for e in entries {
        let split = split_properties(&e.properties);
        let body = e.body;
        let body_len = u32::try_from(body.len())
            .map_err(|_| ProcessError::MessageIllegal("message body over 4 GiB".into()))?;
        bodies.extend_from_slice(&body);
        messages.push(BatchEntry {
            tags: split.tags,
            keys: split.keys,
            properties: split.properties,
            flag: e.flag as u32,
            born_timestamp: h.born_timestamp,
            body_len,
        });
    }
    let queues = h.default_topic_queues;
    let req = SendBatch {
        producer_group: h.producer_group,
        topic: h.topic,
        queue_id: h.queue_id,
        messages,
    };
    let body = bodies.freeze();
    match adapter
        .dispatch_send(call, BrokerRequest::SendBatch { req, body }, queues)
        .await?
    {
        BrokerResponse::SentBatch(b) => {
            let first = b
                .results
                .first()
                .ok_or_else(|| ProcessError::Internal("a batch stored nothing".into()))?;
            // RocketMQ's batch answer: every message's id, comma-separated, and the first
            // message's queue offset.
            let ids: Vec<&str> = b.results.iter().map(|r| r.msg_id.as_str()).collect();
            Ok(sent(cmd, first, ids.join(",")))
        }
        _ => Err(unexpected("send batch")),
    }
}

/// `SendMessageResponseHeader`, with the status as RocketMQ's response code.
fn sent(cmd: &RemotingCommand, r: &SendResult, msg_id: String) -> RemotingCommand {
    let code = match r.status {
        SendStatus::Ok => rs::SUCCESS,
        SendStatus::FlushDiskTimeout => rs::FLUSH_DISK_TIMEOUT,
        SendStatus::FlushSlaveTimeout => rs::FLUSH_SLAVE_TIMEOUT,
        SendStatus::SlaveNotAvailable => rs::SLAVE_NOT_AVAILABLE,
    };
    RemotingCommand::response_to(cmd, code, None)
        .with("msgId", msg_id)
        .with("queueId", r.queue_id)
        .with("queueOffset", r.queue_offset)
        .with(rp::MSG_REGION, "DefaultRegion")
        .with(rp::TRACE_ON, "true")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_remoting::message::encode_properties;

    #[test]
    fn tags_and_keys_leave_the_properties() {
        let s = encode_properties([
            ("TAGS", "TagA"),
            ("KEYS", "k1 k2 "),
            ("UNIQ_KEY", "AC11"),
            ("color", "red"),
        ]);
        let split = split_properties(&s);
        assert_eq!(split.tags, "TagA");
        assert_eq!(split.keys, vec!["k1", "k2"]);
        assert_eq!(
            split.properties,
            vec![
                ("UNIQ_KEY".to_string(), "AC11".to_string()),
                ("color".to_string(), "red".to_string())
            ]
        );
    }

    #[test]
    fn a_half_message_is_known_by_its_producer_id() {
        let s = encode_properties([("TRAN_MSG", "true"), ("UNIQ_KEY", "AC11"), ("PGROUP", "g")]);
        let split = split_properties(&s);
        assert!(
            split
                .properties
                .contains(&(wp::TRANSACTION_ID.to_string(), "AC11".to_string()))
        );
    }

    #[test]
    fn both_header_forms_read_alike() {
        let v1 = RemotingCommand::request(rq::SEND_MESSAGE, 1)
            .with("producerGroup", "pg")
            .with("topic", "T")
            .with("queueId", 2)
            .with("sysFlag", 0)
            .with("bornTimestamp", 5)
            .with("flag", 0)
            .with("properties", "TAGS\u{1}a")
            .with("defaultTopicQueueNums", 4)
            .with("unitMode", false)
            .with("maxReconsumeTimes", 3);
        let v2 = RemotingCommand::request(rq::SEND_MESSAGE_V2, 1)
            .with("a", "pg")
            .with("b", "T")
            .with("e", 2)
            .with("f", 0)
            .with("g", 5)
            .with("h", 0)
            .with("i", "TAGS\u{1}a")
            .with("d", 4)
            .with("k", false)
            .with("l", 3);
        for cmd in [v1, v2] {
            let h = SendHeader::parse(&cmd).unwrap();
            assert_eq!(
                (h.producer_group.as_str(), h.topic.as_str(), h.queue_id),
                ("pg", "T", 2)
            );
            assert_eq!(h.born_timestamp, 5);
            assert_eq!(
                (h.default_topic_queues, h.max_reconsume_times),
                (Some(4), Some(3))
            );
        }
        let negative = RemotingCommand::request(rq::SEND_MESSAGE_V2, 1)
            .with("a", "pg")
            .with("b", "T")
            .with("e", -1);
        assert!(SendHeader::parse(&negative).is_err());
    }
}
