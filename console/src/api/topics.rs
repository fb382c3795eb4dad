//! `/api/topics` and `/api/topic…`: the list (paged), a topic's route and per-queue
//! offsets, create / update / delete (delete needs the topic's name typed again), and a
//! test message.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Query};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use weir_client::{Admin, Message, Producer, QueueData, TopicSummary, TopicUpdate};
use weir_protocol::broker::GetTopicStats;
use weir_protocol::names;
use weir_protocol::route::perm;

use super::{Paging, required};
use crate::error::{ApiError, ApiResult};
use crate::session::Ctx;

/// What a topic is for, by its name.
pub fn kind(topic: &str) -> &'static str {
    if topic.starts_with(names::RETRY_PREFIX) {
        "retry"
    } else if topic.starts_with(names::DLQ_PREFIX) {
        "dead-letter"
    } else if names::is_system_topic(topic) {
        "system"
    } else {
        "normal"
    }
}

/// (Not `#[serde(flatten)]` of [`Paging`]: flattened query fields arrive as strings.)
#[derive(Deserialize)]
pub struct ListQuery {
    page: Option<usize>,
    per_page: Option<usize>,
    q: Option<String>,
    /// Include retry, dead-letter and the brokers' own topics.
    #[serde(default)]
    system: bool,
}

/// One request: the name servers' topics with their queues, filtered and paged here.
pub async fn list(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let all = Admin::new(ctx.client).topic_summaries().await?;
    let paging = Paging {
        page: q.page,
        per_page: q.per_page,
        q: q.q,
    };
    let needle = paging.q.as_deref().unwrap_or("").trim().to_owned();
    let shown: Vec<TopicSummary> = all
        .into_iter()
        .filter(|t| q.system || kind(&t.name) == "normal")
        .filter(|t| needle.is_empty() || t.name.contains(&needle))
        .collect();
    let (page, meta) = paging.apply(&shown);
    let topics: Vec<Value> = page.iter().map(summary_row).collect();
    Ok(Json(json!({ "topics": topics, "paging": meta })))
}

/// A topic's row: its queues summed over its brokers, and its permission (`"mixed"` when
/// the brokers differ; `null`s from a name server too old to tell).
fn summary_row(t: &TopicSummary) -> Value {
    let known = !t.queues.is_empty();
    let sum = |f: fn(&QueueData) -> u32| -> Value {
        if known {
            json!(t.queues.iter().map(|q| u64::from(f(q))).sum::<u64>())
        } else {
            Value::Null
        }
    };
    let perms: BTreeSet<&str> = t.queues.iter().map(|q| perm::describe(q.perm)).collect();
    let perm = match perms.len() {
        0 => Value::Null,
        1 => json!(perms.first()),
        _ => json!("mixed"),
    };
    json!({
        "name": t.name,
        "kind": kind(&t.name),
        "brokers": t.queues.iter().map(|q| q.broker_name.as_str()).collect::<Vec<_>>(),
        "read_queues": sum(|q| q.read_queues),
        "write_queues": sum(|q| q.write_queues),
        "perm": perm,
    })
}

#[derive(Deserialize)]
pub struct Name {
    name: String,
}

/// The route (1 request) and every master's config and queue offsets (1 each, at once).
pub async fn detail(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<Name>,
) -> ApiResult<Json<Value>> {
    let name = required("topic", &q.name)?.to_owned();
    let route = Admin::new(ctx.client.clone()).route(&name).await?;
    let mut calls = JoinSet::new();
    for (i, b) in route.brokers.iter().enumerate() {
        if let Some(addr) = b.master_addr() {
            let (client, addr, req) = (
                ctx.client.clone(),
                addr.to_owned(),
                GetTopicStats {
                    topic: name.clone(),
                },
            );
            calls.spawn(async move {
                (
                    i,
                    addr.clone(),
                    client.call(&addr, &req, Bytes::new()).await,
                )
            });
        }
    }
    let mut brokers = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let Ok((i, addr, r)) = joined else { continue };
        let Some(b) = route.brokers.get(i) else {
            continue;
        };
        let mut row = json!({ "broker": b.broker_name, "addr": addr });
        match r {
            Ok((s, _)) => {
                row["read_queues"] = json!(s.config.read_queues);
                row["write_queues"] = json!(s.config.write_queues);
                row["perm"] = json!(perm::describe(s.config.perm));
                row["queues"] = s
                    .queues
                    .iter()
                    .enumerate()
                    .map(|(q, o)| {
                        json!({ "queue": q, "min": o.min, "max": o.max,
                                "messages": o.max.saturating_sub(o.min) })
                    })
                    .collect();
            }
            Err(e) => row["error"] = json!(e.to_string()),
        }
        brokers.push((i, row));
    }
    brokers.sort_by_key(|(i, _)| *i);
    let route_rows: Vec<Value> = route
        .queues
        .iter()
        .map(|q| {
            json!({ "broker": q.broker_name, "read_queues": q.read_queues,
                    "write_queues": q.write_queues, "perm": perm::describe(q.perm) })
        })
        .collect();
    Ok(Json(json!({
        "name": name,
        "kind": kind(&name),
        "route": route_rows,
        "brokers": brokers.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
pub struct Create {
    name: String,
    queues: u32,
}

pub async fn create(
    Extension(ctx): Extension<Ctx>,
    Json(c): Json<Create>,
) -> ApiResult<Json<Value>> {
    let name = required("topic's name", &c.name)?;
    if c.queues == 0 || c.queues > 1024 {
        return Err(ApiError::bad_request("a topic has 1 to 1024 queues"));
    }
    let admin = Admin::new(ctx.client);
    let done = admin.create_topic(name, c.queues).await?;
    tracing::info!(topic = %name, queues = c.queues, "console: topic created");
    // Answer once the name servers route it, so that what the operator does next with the
    // topic (open it, send a test message) finds it; brokers register it within moments.
    let deadline = tokio::time::Instant::now() + ROUTE_WAIT;
    let routed = loop {
        match admin.route(name).await {
            Ok(r) if r.queues.iter().any(|q| q.write_queues > 0) => break true,
            _ if tokio::time::Instant::now() >= deadline => break false,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    Ok(Json(
        json!({ "topic": name, "brokers": done, "routed": routed }),
    ))
}

/// How long creating a topic waits for the name servers to route it.
const ROUTE_WAIT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
pub struct Update {
    name: String,
    queues: Option<u32>,
    /// "rw", "r" or "w".
    perm: Option<String>,
}

pub async fn update(
    Extension(ctx): Extension<Ctx>,
    Json(u): Json<Update>,
) -> ApiResult<Json<Value>> {
    let name = required("topic's name", &u.name)?;
    let perm = match u.perm.as_deref() {
        None | Some("") => None,
        Some("rw") => Some(perm::READ_WRITE),
        Some("r") => Some(perm::READ),
        Some("w") => Some(perm::WRITE),
        Some(p) => {
            return Err(ApiError::bad_request(format!(
                "permission {p:?} is not rw, r or w"
            )));
        }
    };
    let done = Admin::new(ctx.client)
        .update_topic(
            name,
            TopicUpdate {
                perm,
                queues: u.queues,
            },
        )
        .await?;
    let rows: Vec<Value> = done
        .iter()
        .map(|(b, c)| {
            json!({ "broker": b, "read_queues": c.read_queues, "write_queues": c.write_queues,
                    "perm": perm::describe(c.perm) })
        })
        .collect();
    Ok(Json(json!({ "topic": name, "brokers": rows })))
}

#[derive(Deserialize)]
pub struct Delete {
    name: String,
    /// The topic's name typed again.
    confirm: String,
}

pub async fn delete(
    Extension(ctx): Extension<Ctx>,
    Json(d): Json<Delete>,
) -> ApiResult<Json<Value>> {
    let name = required("topic's name", &d.name)?;
    if d.confirm.trim() != name {
        return Err(ApiError::bad_request(format!(
            "not deleted: type the topic's name ({name}) to confirm"
        )));
    }
    let done = Admin::new(ctx.client).delete_topic(name).await?;
    tracing::info!(topic = %name, "console: topic deleted");
    Ok(Json(json!({ "topic": name, "brokers": done })))
}

#[derive(Deserialize)]
pub struct Send {
    topic: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    props: Vec<(String, String)>,
    #[serde(default)]
    body: String,
}

/// The producer group test messages are sent as.
pub const PRODUCER_GROUP: &str = "weir-console";

pub async fn send(Extension(ctx): Extension<Ctx>, Json(s): Json<Send>) -> ApiResult<Json<Value>> {
    let topic = required("topic", &s.topic)?;
    let mut m = Message::new(topic, Bytes::from(s.body.into_bytes()));
    m.tags = s.tag.trim().to_owned();
    m.keys = s
        .keys
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    for (k, v) in s.props {
        if k.trim().is_empty() {
            return Err(ApiError::bad_request("a property needs a name"));
        }
        m.properties.push((k.trim().to_owned(), v));
    }
    let r = Producer::new(PRODUCER_GROUP, ctx.client).send(&m).await?;
    Ok(Json(json!({
        "status": r.status.as_str(), "msg_id": r.msg_id, "broker": r.broker_name,
        "queue": r.queue_id, "queue_offset": r.queue_offset,
    })))
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds() {
        assert_eq!(super::kind("Orders"), "normal");
        assert_eq!(super::kind("%RETRY%g"), "retry");
        assert_eq!(super::kind("%DLQ%g"), "dead-letter");
        assert_eq!(super::kind("RMQ_SYS_TRANS_HALF_TOPIC"), "system");
    }
}
