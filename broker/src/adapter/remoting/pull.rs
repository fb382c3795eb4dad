//! `PULL_MESSAGE`: a pull as RocketMQ's consumers make it, answered with messages in
//! RocketMQ's layout. RocketMQ 5.x's lite pull consumer sends the same header as
//! `LITE_PULL_MESSAGE` (with `PullSysFlag` bit 0x10, which changes nothing on a broker).
//! A tag subscription is weir's tag expression; an SQL92 one runs natively in the pull
//! (and a filter uploaded for the group runs after either).
//!
//! A push consumer's pull names no subscription (`postSubscriptionWhenPull` is off by
//! default): the broker uses the one its heartbeat registered for the group and topic, as
//! RocketMQ's broker does. Statuses: found → `SUCCESS`, nothing new → `PULL_NOT_FOUND`,
//! nothing matched → `PULL_RETRY_IMMEDIATELY`, offset outside the queue →
//! `PULL_OFFSET_MOVED`, each with `nextBeginOffset`, `minOffset`, `maxOffset` and
//! `suggestWhichBrokerId`.

use weir_protocol::RecordView;
use weir_protocol::broker::{PullMessage, PullStatus};
use weir_protocol::record::{NO_PREPARED_TX, sys_flag as wsys};
use weir_remoting::RemotingCommand;
use weir_remoting::codes::response as rs;
use weir_remoting::message::{MessageExt, encode_properties, property as rp, sys_flag};

use super::{Call, RemotingAdapter, Served, bad, unexpected};
use crate::adapter::answer_buffers::AnswerBuffers;
use crate::dispatch::{BrokerRequest, BrokerResponse};
use crate::error::ProcessError;

/// `PullSysFlag` bits.
mod pull_flag {
    pub const COMMIT_OFFSET: i32 = 0x1;
    pub const SUSPEND: i32 = 0x2;
    pub const SUBSCRIPTION: i32 = 0x4;
}

/// The expression type of a subscription written in SQL92.
pub(crate) const SQL92: &str = "SQL92";
/// The expression type of a tag subscription (RocketMQ's default).
const TAG: &str = "TAG";

/// Whether a subscription of expression type `kind` is SQL92 (else tags); a type weir
/// does not filter by is refused, never read as tags.
pub(crate) fn is_sql92(kind: &str) -> Result<bool, ProcessError> {
    if kind.eq_ignore_ascii_case(SQL92) {
        Ok(true)
    } else if kind.eq_ignore_ascii_case(TAG) {
        Ok(false)
    } else {
        Err(ProcessError::BadSubscription(format!(
            "expression type {kind:?}: only {TAG} and {SQL92} are supported"
        )))
    }
}

/// A tag expression as RocketMQ reads it: parts split on `||`, trimmed, empty ones dropped
/// (`A ||` is `A`), `*` or nothing for all.
pub(crate) fn normalize_tags(expr: &str) -> String {
    let parts: Vec<&str> = expr
        .split("||")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() || parts.contains(&"*") {
        return "*".to_owned();
    }
    parts.join(" || ")
}

/// A stored message in RocketMQ's layout: tag and keys become `TAGS` and `KEYS` again.
pub(crate) fn message_ext(v: &RecordView<'_>) -> MessageExt {
    let keys: Vec<&str> = v.keys().collect();
    let keys = keys.join(" ");
    let mut props: Vec<(&str, &str)> = Vec::new();
    if !v.tags().is_empty() {
        props.push((rp::TAGS, v.tags()));
    }
    if !keys.is_empty() {
        props.push((rp::KEYS, &keys));
    }
    // A name or value holding a separator cannot travel in RocketMQ's layout.
    let fits = |s: &str| !s.contains(['\u{1}', '\u{2}']);
    props.extend(v.properties().filter(|(k, val)| fits(k) && fits(val)));
    let mut sys = ((v.sys_flag() & wsys::TX_MASK) as i32) << 2;
    if v.sys_flag() & wsys::COMPRESSED != 0 {
        sys |= sys_flag::COMPRESSED;
    }
    let prepared = match v.prepared_tx_offset() {
        NO_PREPARED_TX => 0,
        o => i64::try_from(o).unwrap_or(0),
    };
    MessageExt {
        topic: v.topic().to_owned(),
        queue_id: i32::try_from(v.queue_id()).unwrap_or(i32::MAX),
        flag: v.flag() as i32,
        queue_offset: i64::try_from(v.queue_offset()).unwrap_or(i64::MAX),
        commit_log_offset: i64::try_from(v.commit_log_offset()).unwrap_or(i64::MAX),
        sys_flag: sys,
        born_timestamp: v.born_timestamp(),
        born_host: v.born_host(),
        store_timestamp: v.store_timestamp(),
        store_host: v.store_host(),
        reconsume_times: i32::try_from(v.reconsume_times()).unwrap_or(i32::MAX),
        prepared_transaction_offset: prepared,
        body: bytes::Bytes::copy_from_slice(v.body()),
        properties: encode_properties(props),
    }
}

/// Stored records one after another in RocketMQ's layout.
pub(crate) fn encode_records(
    records: &[weir_store::StoredRecord],
) -> Result<bytes::Bytes, ProcessError> {
    // RocketMQ's layout is about as long as weir's.
    let len = records.iter().map(weir_store::StoredRecord::len).sum();
    AnswerBuffers::shared().fill(len, |out| {
        for r in records {
            let view = r
                .view()
                .map_err(|e| ProcessError::Internal(format!("a stored record: {e}")))?;
            let m = message_ext(&view);
            m.encode(out).map_err(|e| {
                ProcessError::MessageIllegal(format!(
                    "message {} cannot be given to a RocketMQ client: {e}",
                    view.message_id()
                ))
            })?;
        }
        Ok(())
    })
}

/// The group's subscription to `topic` as its members' heartbeats registered it:
/// `(expression, type)`.
fn registered(adapter: &RemotingAdapter, group: &str, topic: &str) -> Option<(String, String)> {
    let expr = adapter.0.clients.subscription_of(group, topic)?;
    Some(match expr.strip_prefix(super::consumer::SQL92_PREFIX) {
        Some(sql) => (sql.to_owned(), SQL92.to_owned()),
        None => (expr, "TAG".to_owned()),
    })
}

pub(super) async fn serve(
    adapter: &RemotingAdapter,
    call: &Call<'_>,
    cmd: &RemotingCommand,
) -> Served {
    let group = cmd.field("consumerGroup").map_err(bad)?.to_owned();
    let topic = cmd.field("topic").map_err(bad)?.to_owned();
    let queue_id: u32 = cmd.num("queueId").map_err(bad)?;
    let offset: i64 = cmd.num("queueOffset").map_err(bad)?;
    let offset = u64::try_from(offset).map_err(|_| {
        ProcessError::InvalidParameter(format!("queue offset {offset} is negative"))
    })?;
    let max: i32 = cmd.opt_num("maxMsgNums").map_err(bad)?.unwrap_or(32);
    let sys: i32 = cmd.opt_num("sysFlag").map_err(bad)?.unwrap_or(0);
    let suspend: i64 = cmd
        .opt_num("suspendTimeoutMillis")
        .map_err(bad)?
        .unwrap_or(0);
    let commit_offset = match sys & pull_flag::COMMIT_OFFSET {
        0 => None,
        _ => cmd
            .opt_num::<i64>("commitOffset")
            .map_err(bad)?
            .and_then(|c| u64::try_from(c).ok()),
    };
    let given = cmd
        .opt_field("subscription")
        .filter(|s| sys & pull_flag::SUBSCRIPTION != 0 && !s.is_empty());
    let (expression, kind) = match given {
        Some(s) => (
            s.to_owned(),
            cmd.opt_field("expressionType").unwrap_or(TAG).to_owned(),
        ),
        None => match registered(adapter, &group, &topic) {
            Some(found) => found,
            None => {
                // Access control first: a stranger learns nothing of the group's
                // subscriptions (this pull, as any, needs `sub` on both).
                let probe = PullMessage {
                    group: group.clone(),
                    topic: topic.clone(),
                    queue_id,
                    offset,
                    max_msgs: 1,
                    expression: "*".to_owned(),
                    suspend_ms: 0,
                    commit_offset: None,
                };
                adapter.check_access(call, &BrokerRequest::Pull(probe))?;
                return Ok(RemotingCommand::response_to(
                    cmd,
                    rs::SUBSCRIPTION_NOT_EXIST,
                    Some(format!(
                        "group {group:?} has no subscription to topic {topic:?}: send a heartbeat first"
                    )),
                ));
            }
        },
    };
    let sql92 = is_sql92(&kind)?;
    let req = PullMessage {
        group,
        topic,
        queue_id,
        offset,
        max_msgs: u32::try_from(max).unwrap_or(1).max(1),
        expression: if sql92 {
            "*".to_owned()
        } else {
            normalize_tags(&expression)
        },
        suspend_ms: match sys & pull_flag::SUSPEND {
            0 => 0,
            _ => u64::try_from(suspend).unwrap_or(0),
        },
        commit_offset,
    };
    let request = match sql92 {
        true => BrokerRequest::PullSql {
            req,
            sql92: expression,
        },
        false => BrokerRequest::Pull(req),
    };
    let pulled = match adapter.dispatch(call, request, false).await? {
        BrokerResponse::Pulled(p) => p,
        _ => return Err(unexpected("pull")),
    };
    let r = &pulled.result;
    let code = match r.status {
        PullStatus::Found => rs::SUCCESS,
        PullStatus::NoNewMessage => rs::PULL_NOT_FOUND,
        PullStatus::NoMatch => rs::PULL_RETRY_IMMEDIATELY,
        PullStatus::OffsetMoved => rs::PULL_OFFSET_MOVED,
    };
    let own_id = adapter.0.config.broker_id;
    let suggest: u64 = match (r.suggest_slave, own_id) {
        (true, 0) => 1,
        (true, id) => id,
        (false, _) => 0,
    };
    let body = encode_records(&pulled.records)?;
    Ok(RemotingCommand::response_to(cmd, code, None)
        .with("nextBeginOffset", r.next_offset)
        .with("minOffset", r.min_offset)
        .with("maxOffset", r.max_offset)
        .with("suggestWhichBrokerId", suggest)
        .with_body(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::Message;
    use weir_protocol::record::{Assigned, encode_to_vec};

    #[test]
    fn a_failed_filter_is_a_system_error_with_its_message() {
        use crate::adapter::remoting::response_code;
        use crate::error::ProcessError;
        for e in [
            ProcessError::FilterFailed("the filter of group \"g\" failed".into()),
            ProcessError::FilterMarkedFailed("the filter of group \"g\" is marked".into()),
        ] {
            assert_eq!(
                response_code(&e),
                weir_remoting::codes::response::SYSTEM_ERROR
            );
        }
    }

    #[test]
    fn tag_expressions_read_as_rocketmq_reads_them() {
        assert_eq!(normalize_tags("A ||"), "A");
        assert_eq!(normalize_tags(" A||B "), "A || B");
        assert_eq!(normalize_tags(""), "*");
        assert_eq!(normalize_tags("A || *"), "*");
    }

    #[test]
    fn a_stored_message_reads_back_in_rocketmq_layout() {
        let msg = Message::new("T", 2, b"body".to_vec())
            .with_tags("TagA")
            .with_key("k1")
            .with_key("k2")
            .with_property("UNIQ_KEY", "AC11")
            .with_property("bad\u{1}name", "dropped");
        let rec = encode_to_vec(
            &msg,
            &Assigned {
                queue_offset: 7,
                commit_log_offset: 4096,
                store_timestamp: 11,
                store_host: "127.0.0.1:10911".parse().unwrap(),
            },
        )
        .unwrap();
        let view = RecordView::parse(&rec).unwrap();
        let m = message_ext(&view);
        let mut buf = bytes::BytesMut::new();
        m.encode(&mut buf).unwrap();
        let back = MessageExt::decode_all(&buf.freeze()).unwrap().remove(0);
        assert_eq!(back.topic, "T");
        assert_eq!((back.queue_id, back.queue_offset), (2, 7));
        assert_eq!(back.commit_log_offset, 4096);
        assert_eq!(&back.body[..], b"body");
        assert_eq!(back.offset_msg_id(), view.message_id().to_string());
        let props = weir_remoting::message::decode_properties(&back.properties);
        let get = |k: &str| props.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TAGS"), Some("TagA"));
        assert_eq!(get("KEYS"), Some("k1 k2"));
        assert_eq!(get("UNIQ_KEY"), Some("AC11"));
        assert_eq!(props.len(), 3, "{props:?}");
    }
}
