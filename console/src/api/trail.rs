//! `GET /api/messages/trail?id=…[&topic=…]`: a message's delivery trail, where its broker
//! knows it: where it is stored (broker, queue, offset, store time); each consumer group
//! with an offset committed on that queue, consumed (its offset is past the message) or
//! pending; the group's retries of it (waiting for their delay, or in `%RETRY%<group>`,
//! consumed or not) and its dead letters (`%DLQ%<group>`), found by the id they carry as
//! `ORIGIN_MESSAGE_ID`.
//!
//! Round trips: 3 (the message from the broker its id names, the name servers' cluster
//! view naming that broker, the trail from that broker), whatever the number of groups.
//!
//! What the broker cannot know is said in the answer (`unknown`): groups without a
//! committed offset on the queue (broadcasting groups keep theirs in their clients), copies
//! stored before the broker indexed `ORIGIN_MESSAGE_ID`, and everything past the stored
//! place from a broker too old to serve trails.

use axum::Json;
use axum::extract::{Extension, Query};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_client::{Admin, CopyKind};
use weir_protocol::admin::MAX_TRAIL_GROUPS;

use super::messages::message_json;
use super::required;
use crate::error::{ApiError, ApiResult};
use crate::session::Ctx;

#[derive(Deserialize)]
pub struct TrailQuery {
    id: String,
    /// When given, the message must be of this topic.
    topic: Option<String>,
}

fn kind(k: CopyKind) -> &'static str {
    match k {
        CopyKind::RetryWaiting => "retry-waiting",
        CopyKind::Retry => "retry",
        CopyKind::DeadLetter => "dead-letter",
    }
}

pub async fn trail(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<TrailQuery>,
) -> ApiResult<Json<Value>> {
    let id = required("message id", &q.id)?;
    let t = Admin::new(ctx.client)
        .message_trail(id, MAX_TRAIL_GROUPS)
        .await?;
    let m = &t.message;
    if let Some(topic) = q.topic.as_deref().map(str::trim).filter(|s| !s.is_empty())
        && topic != m.topic
    {
        return Err(ApiError::bad_request(format!(
            "message {id} is of topic {}, not {topic}",
            m.topic
        )));
    }
    let mut unknown = vec![
        "groups that never committed an offset on this queue (broadcasting groups keep theirs in their clients)".to_owned(),
        "retries and dead letters stored before the broker indexed ORIGIN_MESSAGE_ID".to_owned(),
    ];
    let (groups, more_groups, queue_max) = match &t.known {
        Some(k) => {
            let groups: Vec<Value> = k
                .groups
                .iter()
                .map(|g| {
                    let copies: Vec<Value> = g
                        .copies
                        .iter()
                        .map(|c| {
                            json!({
                                "kind": kind(c.kind), "kind_text": c.kind.as_str(),
                                "topic": c.topic, "msg_id": c.msg_id, "queue": c.queue_id,
                                "queue_offset": c.queue_offset, "store_ts": c.store_timestamp,
                                "reconsume_times": c.reconsume_times, "consumed": c.consumed,
                            })
                        })
                        .collect();
                    json!({
                        "group": g.group,
                        "consumer_offset": g.consumer_offset,
                        "state": if g.past(m.queue_offset) { "consumed" } else { "pending" },
                        "copies": copies,
                    })
                })
                .collect();
            if k.more_groups > 0 {
                unknown.push(format!(
                    "{} more groups with an offset on this queue (the first {MAX_TRAIL_GROUPS} by name are shown)",
                    k.more_groups
                ));
            }
            (groups, k.more_groups, Some(k.queue_max_offset))
        }
        None => {
            unknown.insert(
                0,
                format!(
                    "the consumer groups' progress and copies: broker {} ({}) is too old to tell",
                    m.broker_name, t.addr
                ),
            );
            (Vec::new(), 0, None)
        }
    };
    Ok(Json(json!({
        "message": message_json(m),
        "stored": {
            "broker": m.broker_name, "addr": t.addr, "topic": m.topic, "queue": m.queue_id,
            "queue_offset": m.queue_offset, "store_ts": m.store_timestamp,
        },
        "known": t.known.is_some(),
        "groups": groups,
        "more_groups": more_groups,
        "queue_max_offset": queue_max,
        "unknown": unknown,
        "requests": 3,
    })))
}
