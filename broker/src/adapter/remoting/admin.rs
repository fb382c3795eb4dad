//! Offsets of queues (`GET_MAX_OFFSET`, `GET_MIN_OFFSET`, `SEARCH_OFFSET_BY_TIMESTAMP`),
//! lookups (`QUERY_MESSAGE` by key, `VIEW_MESSAGE_BY_ID` by commit log offset), topic
//! creation (`UPDATE_AND_CREATE_TOPIC`) and a producer's decision on a transaction
//! (`END_TRANSACTION`).

use weir_protocol::MessageId;
use weir_protocol::broker::{
    CreateTopic, EndTransaction, GetQueueOffsets, QueryMessageByKey, SearchOffsetByTimestamp,
    TransactionDecision, ViewMessageById,
};
use weir_protocol::route::TopicConfig;
use weir_remoting::RemotingCommand;
use weir_remoting::codes::{request as rq, response as rs};
use weir_remoting::message::sys_flag;

use super::pull::encode_records;
use super::{Call, RemotingAdapter, Served, bad, unexpected};
use crate::dispatch::{BrokerRequest, BrokerResponse};
use crate::error::ProcessError;

/// Most messages one `QUERY_MESSAGE` answers with.
const MAX_QUERY: u32 = 64;

fn non_negative(name: &str, v: i64) -> Result<u64, ProcessError> {
    u64::try_from(v).map_err(|_| ProcessError::InvalidParameter(format!("{name} {v} is negative")))
}

pub(super) async fn serve(
    adapter: &RemotingAdapter,
    call: &Call<'_>,
    cmd: &RemotingCommand,
) -> Served {
    use BrokerRequest as R;
    let ok = || RemotingCommand::response_to(cmd, rs::SUCCESS, None);
    match cmd.code {
        rq::GET_MAX_OFFSET | rq::GET_MIN_OFFSET => {
            let req = GetQueueOffsets {
                topic: cmd.field("topic").map_err(bad)?.to_owned(),
                queue_id: cmd.num("queueId").map_err(bad)?,
            };
            match adapter.dispatch(call, R::QueueOffsets(req), false).await? {
                BrokerResponse::QueueOffsets(o) => Ok(ok().with(
                    "offset",
                    if cmd.code == rq::GET_MAX_OFFSET {
                        o.max
                    } else {
                        o.min
                    },
                )),
                _ => Err(unexpected("queue offsets")),
            }
        }
        rq::SEARCH_OFFSET_BY_TIMESTAMP => {
            let req = SearchOffsetByTimestamp {
                topic: cmd.field("topic").map_err(bad)?.to_owned(),
                queue_id: cmd.num("queueId").map_err(bad)?,
                timestamp: cmd.num("timestamp").map_err(bad)?,
            };
            match adapter.dispatch(call, R::SearchOffset(req), false).await? {
                BrokerResponse::Offset(o) => Ok(ok().with("offset", o.offset)),
                _ => Err(unexpected("search offset")),
            }
        }
        rq::QUERY_MESSAGE => {
            let max: i32 = cmd.opt_num("maxNum").map_err(bad)?.unwrap_or(32);
            let req = QueryMessageByKey {
                topic: cmd.field("topic").map_err(bad)?.to_owned(),
                key: cmd.field("key").map_err(bad)?.to_owned(),
                max: u32::try_from(max).unwrap_or(1).clamp(1, MAX_QUERY),
            };
            match adapter.dispatch(call, R::QueryByKey(req), false).await? {
                BrokerResponse::Records(recs) if recs.is_empty() => {
                    Ok(RemotingCommand::response_to(
                        cmd,
                        rs::QUERY_NOT_FOUND,
                        Some("no message has this key".into()),
                    ))
                }
                BrokerResponse::Records(recs) => Ok(ok()
                    .with("indexLastUpdateTimestamp", 0)
                    .with("indexLastUpdatePhyoffset", 0)
                    .with_body(encode_records(&recs)?)),
                _ => Err(unexpected("query message")),
            }
        }
        rq::VIEW_MESSAGE_BY_ID => {
            let offset = non_negative("offset", cmd.num("offset").map_err(bad)?)?;
            let id = MessageId {
                store_host: adapter.0.store.config().store_host,
                offset,
            };
            let req = ViewMessageById {
                msg_id: id.to_string(),
            };
            match adapter.dispatch(call, R::ViewById(req), false).await? {
                BrokerResponse::Records(recs) => Ok(ok().with_body(encode_records(&recs)?)),
                _ => Err(unexpected("view message")),
            }
        }
        rq::UPDATE_AND_CREATE_TOPIC => {
            let perm: i32 = cmd.opt_num("perm").map_err(bad)?.unwrap_or(6);
            // RocketMQ's permission bits: 8 priority, 4 read, 2 write, 1 inherit.
            if !(0..=0b1111).contains(&perm) {
                return Err(ProcessError::InvalidParameter(format!(
                    "perm {perm} is not a combination of RocketMQ's permission bits (8 priority, 4 read, 2 write, 1 inherit)"
                )));
            }
            let read: u32 = cmd.opt_num("readQueueNums").map_err(bad)?.unwrap_or(8);
            let write: u32 = cmd.opt_num("writeQueueNums").map_err(bad)?.unwrap_or(read);
            let req = CreateTopic {
                topic: TopicConfig {
                    name: cmd.field("topic").map_err(bad)?.to_owned(),
                    read_queues: read,
                    write_queues: write,
                    // RocketMQ's bits: 4 read, 2 write (1, inherit, has no meaning here).
                    perm: (perm & 0b110) as u8,
                },
            };
            adapter.dispatch(call, R::CreateTopic(req), false).await?;
            Ok(ok())
        }
        rq::END_TRANSACTION => {
            let decision = match cmd.num::<i32>("commitOrRollback").map_err(bad)? {
                sys_flag::TRANSACTION_COMMIT => TransactionDecision::Commit,
                sys_flag::TRANSACTION_ROLLBACK => TransactionDecision::Rollback,
                sys_flag::TRANSACTION_NOT_TYPE => TransactionDecision::Unknown,
                other => {
                    return Err(ProcessError::InvalidParameter(format!(
                        "commitOrRollback {other} is not 0, 8 or 12"
                    )));
                }
            };
            let transaction_id = match cmd.opt_field("transactionId") {
                Some(id) if !id.is_empty() => id,
                _ => cmd.field("msgId").map_err(bad)?,
            };
            let req = EndTransaction {
                producer_group: cmd.field("producerGroup").map_err(bad)?.to_owned(),
                transaction_id: transaction_id.to_owned(),
                commit_log_offset: non_negative(
                    "commitLogOffset",
                    cmd.num("commitLogOffset").map_err(bad)?,
                )?,
                decision,
                from_check: cmd.opt_bool("fromTransactionCheck").unwrap_or(false),
            };
            adapter
                .dispatch(call, R::EndTransaction(req), false)
                .await?;
            Ok(ok())
        }
        code => Err(ProcessError::Unsupported(format!(
            "request code {code} is not an admin request"
        ))),
    }
}
