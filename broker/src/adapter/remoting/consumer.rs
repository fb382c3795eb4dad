//! Client and consumer-group requests: `HEART_BEAT`, `UNREGISTER_CLIENT`,
//! `GET_CONSUMER_LIST_BY_GROUP`, `QUERY_CONSUMER_OFFSET`, `UPDATE_CONSUMER_OFFSET`,
//! `CONSUMER_SEND_MSG_BACK`, `LOCK_BATCH_MQ`, `UNLOCK_BATCH_MQ` and `CHECK_CLIENT_CONFIG`.

use weir_protocol::broker::{
    ConsumerData, ConsumerSendMsgBack, GetConsumerList, Heartbeat, LockBatchMq, MessageModel,
    QueryConsumerOffset, QueueRef, UnlockBatchMq, UnregisterClient, UpdateConsumerOffset,
};
use weir_remoting::RemotingCommand;
use weir_remoting::body::{
    self, ConsumerListBody, HeartbeatData, LockBatchRequestBody, LockBatchResponseBody,
    MessageQueue, SubscriptionData,
};
use weir_remoting::codes::{request as rq, response as rs};

use super::pull::SQL92;
use super::{Call, RemotingAdapter, Served, bad, unexpected};
use crate::dispatch::{BrokerRequest, BrokerResponse};
use crate::error::ProcessError;
use crate::subscription::TagFilter;

/// How an SQL92 subscription is kept among the group's (topic, expression) pairs.
pub(crate) const SQL92_PREFIX: &str = "SQL92:";

/// Deliveries after the first before a message goes to the dead-letter topic, when a
/// send-back does not say (RocketMQ's default).
const DEFAULT_MAX_RECONSUME_TIMES: u32 = 16;

fn bad_body(what: &str, e: weir_remoting::RemotingError) -> ProcessError {
    ProcessError::BadRequest(format!("{what} body: {e}"))
}

fn expression(s: &SubscriptionData) -> String {
    match s.expression_type.as_deref() {
        Some(t) if t.eq_ignore_ascii_case(SQL92) => format!("{SQL92_PREFIX}{}", s.sub_string),
        _ => super::pull::normalize_tags(&s.sub_string),
    }
}

fn heartbeat(hb: HeartbeatData) -> Heartbeat {
    Heartbeat {
        client_id: hb.client_id,
        producer_groups: hb
            .producer_data_set
            .into_iter()
            .map(|p| p.group_name)
            .collect(),
        consumers: hb
            .consumer_data_set
            .into_iter()
            .map(|c| ConsumerData {
                model: if c.broadcasting() {
                    MessageModel::Broadcasting
                } else {
                    MessageModel::Clustering
                },
                group: c.group_name,
                subscriptions: c
                    .subscription_data_set
                    .iter()
                    .map(|s| (s.topic.clone(), expression(s)))
                    .collect(),
            })
            .collect(),
    }
}

/// The queues of a lock or unlock body (sent to this broker: its own queues).
fn queues(mqs: &[MessageQueue]) -> Vec<QueueRef> {
    mqs.iter()
        .map(|q| QueueRef {
            topic: q.topic.clone(),
            queue_id: q.queue_id,
        })
        .collect()
}

fn ok(cmd: &RemotingCommand) -> RemotingCommand {
    RemotingCommand::response_to(cmd, rs::SUCCESS, None)
}

pub(super) async fn serve(
    adapter: &RemotingAdapter,
    call: &Call<'_>,
    cmd: &RemotingCommand,
) -> Served {
    use BrokerRequest as R;
    match cmd.code {
        rq::HEART_BEAT => {
            let hb: HeartbeatData =
                body::from_json(&cmd.body, "heartbeat").map_err(|e| bad_body("heartbeat", e))?;
            adapter
                .dispatch(call, R::Heartbeat(heartbeat(hb)), true)
                .await?;
            Ok(ok(cmd))
        }
        rq::UNREGISTER_CLIENT => {
            // RocketMQ's clients unregister one producer or consumer group at a time when
            // it shuts down; the client instance may go on serving its other groups.
            let group = |name: &str| {
                cmd.opt_field(name)
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
            };
            let req = UnregisterClient {
                client_id: cmd.field("clientID").map_err(bad)?.to_owned(),
                producer_group: group("producerGroup"),
                consumer_group: group("consumerGroup"),
            };
            adapter
                .dispatch(call, R::UnregisterClient(req), false)
                .await?;
            Ok(ok(cmd))
        }
        rq::GET_CONSUMER_LIST_BY_GROUP => {
            let group = cmd.field("consumerGroup").map_err(bad)?.to_owned();
            let req = R::ConsumerList(GetConsumerList {
                group: group.clone(),
            });
            match adapter.dispatch(call, req, false).await? {
                BrokerResponse::ConsumerList(l) if l.client_ids.is_empty() => {
                    Ok(RemotingCommand::response_to(
                        cmd,
                        rs::SYSTEM_ERROR,
                        Some(format!("no consumer for group {group:?}")),
                    ))
                }
                BrokerResponse::ConsumerList(l) => {
                    let b = body::to_json(&ConsumerListBody {
                        consumer_id_list: l.client_ids,
                    })
                    .map_err(|e| ProcessError::Internal(e.to_string()))?;
                    Ok(ok(cmd).with_body(b))
                }
                _ => Err(unexpected("consumer list")),
            }
        }
        rq::QUERY_CONSUMER_OFFSET => {
            let req = QueryConsumerOffset {
                group: cmd.field("consumerGroup").map_err(bad)?.to_owned(),
                topic: cmd.field("topic").map_err(bad)?.to_owned(),
                queue_id: cmd.num("queueId").map_err(bad)?,
            };
            let (topic, queue_id) = (req.topic.clone(), req.queue_id);
            match adapter
                .dispatch(call, R::QueryConsumerOffset(req), false)
                .await?
            {
                BrokerResponse::ConsumerOffset(o) => match o.offset {
                    Some(offset) => Ok(ok(cmd).with("offset", offset)),
                    // RocketMQ's answer to a new group: 0 on a young queue, whatever the
                    // client's consume-from-where (RocketMQ's C++ client, under PyPI's
                    // `rocketmq`, starts at the last offset and cannot be told otherwise), so
                    // a new topic's first messages are not skipped.
                    None if adapter.0.queue_is_young(&topic, queue_id) => {
                        Ok(ok(cmd).with("offset", 0))
                    }
                    // An old queue: the client starts where its consume-from-where says.
                    None => Ok(RemotingCommand::response_to(
                        cmd,
                        rs::QUERY_NOT_FOUND,
                        Some("no offset committed: this group's first consumer".into()),
                    )),
                },
                _ => Err(unexpected("query consumer offset")),
            }
        }
        rq::UPDATE_CONSUMER_OFFSET => {
            let offset: i64 = cmd.num("commitOffset").map_err(bad)?;
            let req = UpdateConsumerOffset {
                group: cmd.field("consumerGroup").map_err(bad)?.to_owned(),
                topic: cmd.field("topic").map_err(bad)?.to_owned(),
                queue_id: cmd.num("queueId").map_err(bad)?,
                offset: u64::try_from(offset).map_err(|_| {
                    ProcessError::InvalidParameter(format!("offset {offset} is negative"))
                })?,
            };
            adapter
                .dispatch(call, R::UpdateConsumerOffset(req), false)
                .await?;
            Ok(ok(cmd))
        }
        rq::CONSUMER_SEND_MSG_BACK => {
            let offset: i64 = cmd.num("offset").map_err(bad)?;
            let req = ConsumerSendMsgBack {
                group: cmd.field("group").map_err(bad)?.to_owned(),
                commit_log_offset: u64::try_from(offset).map_err(|_| {
                    ProcessError::InvalidParameter(format!("offset {offset} is negative"))
                })?,
                delay_level: cmd.opt_num("delayLevel").map_err(bad)?.unwrap_or(0),
                max_reconsume_times: cmd
                    .opt_num::<i32>("maxReconsumeTimes")
                    .map_err(bad)?
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(DEFAULT_MAX_RECONSUME_TIMES),
            };
            adapter.dispatch(call, R::SendBack(req), false).await?;
            Ok(ok(cmd))
        }
        rq::LOCK_BATCH_MQ => {
            let b: LockBatchRequestBody =
                body::from_json(&cmd.body, "lock").map_err(|e| bad_body("lock", e))?;
            let req = LockBatchMq {
                group: b.consumer_group,
                client_id: b.client_id,
                queues: queues(&b.mq_set),
            };
            // Locked queues are named as the client named them.
            let broker_name = b.mq_set.first().map_or_else(
                || adapter.0.config.broker_name.clone(),
                |q| q.broker_name.clone(),
            );
            match adapter.dispatch(call, R::LockQueues(req), false).await? {
                BrokerResponse::LockedQueues(l) => {
                    let answer = LockBatchResponseBody {
                        lock_ok_mq_set: l
                            .queues
                            .into_iter()
                            .map(|q| MessageQueue {
                                broker_name: broker_name.clone(),
                                queue_id: q.queue_id,
                                topic: q.topic,
                            })
                            .collect(),
                    };
                    let b = body::to_json(&answer)
                        .map_err(|e| ProcessError::Internal(e.to_string()))?;
                    Ok(ok(cmd).with_body(b))
                }
                _ => Err(unexpected("lock")),
            }
        }
        rq::UNLOCK_BATCH_MQ => {
            let b: LockBatchRequestBody =
                body::from_json(&cmd.body, "unlock").map_err(|e| bad_body("unlock", e))?;
            let req = UnlockBatchMq {
                group: b.consumer_group,
                client_id: b.client_id,
                queues: queues(&b.mq_set),
            };
            adapter.dispatch(call, R::UnlockQueues(req), false).await?;
            Ok(ok(cmd))
        }
        rq::CHECK_CLIENT_CONFIG => {
            // Asked by consumers with a non-tag subscription before they start.
            #[derive(serde::Deserialize, Default)]
            #[serde(rename_all = "camelCase", default)]
            struct CheckClient {
                subscription_data: Option<SubscriptionData>,
            }
            let b: CheckClient = body::from_json(&cmd.body, "check client config")
                .map_err(|e| bad_body("check client config", e))?;
            let Some(s) = b.subscription_data else {
                return Ok(ok(cmd));
            };
            match super::pull::is_sql92(s.expression_type.as_deref().unwrap_or("TAG"))? {
                true => weir_filter_sql92::parse(&s.sub_string)
                    .map(|_| ok(cmd))
                    .map_err(|e| ProcessError::BadSubscription(format!("SQL92 expression: {e}"))),
                false => TagFilter::parse(&s.sub_string)
                    .map(|_| ok(cmd))
                    .map_err(|e| ProcessError::BadSubscription(e.to_string())),
            }
        }
        code => Err(ProcessError::Unsupported(format!(
            "request code {code} is not a consumer request"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_java_heartbeat_becomes_weirs() {
        let body = br#"{"clientID":"c@1","consumerDataSet":[{"groupName":"cg","messageModel":0,"subscriptionDataSet":[{"topic":"T","subString":"a || b"},{"topic":"U","subString":"x > 1","expressionType":"SQL92"}]}],"producerDataSet":[{"groupName":"pg"}]}"#;
        let hb = heartbeat(body::from_json(body, "heartbeat").unwrap());
        assert_eq!(hb.client_id, "c@1");
        assert_eq!(hb.producer_groups, vec!["pg"]);
        let c = &hb.consumers[0];
        assert_eq!(c.model, MessageModel::Broadcasting);
        assert_eq!(
            c.subscriptions,
            vec![
                ("T".to_string(), "a || b".to_string()),
                ("U".to_string(), "SQL92:x > 1".to_string())
            ]
        );
    }
}
