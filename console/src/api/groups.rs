//! `/api/groups` and `/api/group…`: consumer groups, their members, progress per queue
//! and lag, retry and dead-letter depth; resetting offsets (the group's name typed again)
//! and re-sending a dead letter to its topic.
//!
//! The list is every group a master knows (live members, or offsets committed: pull
//! consumers that only commit and broadcasting groups too) and every group with a
//! `%RETRY%` or `%DLQ%` topic, with its model, members, subscriptions and lag: a fixed
//! number of requests whatever the number of groups. A group known nowhere (broadcasting
//! members gone, offsets kept client-side) opens by name.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::{Extension, Query};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use weir_client::{
    Admin, ClientInstance, GroupOverview, Message, MessageModel, Producer, ResetTarget,
    allocate_averagely,
};
use weir_protocol::broker::{GetConsumeStats, GetConsumerConnections};
use weir_protocol::names::{self, property};

use super::{Paging, required};
use crate::error::{ApiError, ApiResult};
use crate::session::Ctx;

/// The name servers' topic list (1 request: which groups have retry and dead-letter
/// topics), the cluster view (1) and each master's group summaries (1 each, at once).
pub async fn list(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<Paging>,
) -> ApiResult<Json<Value>> {
    let admin = Admin::new(ctx.client);
    let needle = q.q.as_deref().unwrap_or("").trim().to_owned();
    let (topics, known) = tokio::join!(admin.topics(), admin.group_list(&needle, 0));
    let (topics, known) = (topics?, known?);
    let mut groups: BTreeMap<String, Row> = BTreeMap::new();
    for t in &topics {
        if let Some(g) = t.strip_prefix(names::RETRY_PREFIX) {
            groups.entry(g.to_owned()).or_default().retry_topic = true;
        } else if let Some(g) = t.strip_prefix(names::DLQ_PREFIX) {
            groups.entry(g.to_owned()).or_default().dead_letter_topic = true;
        }
    }
    for o in known.groups {
        let row = groups.entry(o.group.clone()).or_default();
        row.overview = Some(o);
    }
    let shown: Vec<(String, Row)> = groups
        .into_iter()
        .filter(|(g, _)| needle.is_empty() || g.contains(&needle))
        .collect();
    let (page, meta) = q.apply(&shown);
    let rows: Vec<Value> = page.iter().map(|(g, r)| r.to_json(g)).collect();
    let errors: Vec<String> = known
        .failed
        .iter()
        .map(|(broker, e)| format!("broker {broker} did not list its groups: {e}"))
        .chain(known.truncated.then(|| {
            "a broker knows more groups than it lists at once: narrow the filter".to_owned()
        }))
        .collect();
    Ok(Json(
        json!({ "groups": rows, "paging": meta, "errors": errors }),
    ))
}

/// A group's row in the list.
#[derive(Clone, Default)]
struct Row {
    retry_topic: bool,
    dead_letter_topic: bool,
    /// What the brokers know of it; `None` for a group known only by its topics.
    overview: Option<GroupOverview>,
}

impl Row {
    fn to_json(&self, group: &str) -> Value {
        let o = self.overview.as_ref();
        json!({
            "name": group,
            "retry_topic": self.retry_topic,
            "dead_letter_topic": self.dead_letter_topic,
            "model": o.and_then(|o| o.model.as_ref()).map(model_name),
            "members": o.map_or(0, |o| o.members),
            // The retry topic is the group's own, not what it subscribes to.
            "subscriptions": o.map_or_else(Vec::new, |o| o
                .subscriptions
                .iter()
                .filter(|t| !t.starts_with(names::RETRY_PREFIX))
                .cloned()
                .collect()),
            "lag": o.map(|o| o.lag),
            "queues": o.map_or(0, |o| o.queues),
        })
    }
}

#[derive(Deserialize)]
pub struct Name {
    name: String,
}

/// The cluster view (1), each master's members and progress (2 each, all at once), the
/// routes of the subscribed topics (cached), the dead-letter topic's offsets if it exists.
pub async fn detail(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<Name>,
) -> ApiResult<Json<Value>> {
    let group = required("group", &q.name)?.to_owned();
    let admin = Admin::new(ctx.client.clone());
    let info = admin.cluster().await?;
    let mut calls = JoinSet::new();
    for b in &info.brokers {
        let Some(addr) = b.master_addr() else {
            continue;
        };
        let (client, addr, name, g) = (
            ctx.client.clone(),
            addr.to_owned(),
            b.broker_name.clone(),
            group.clone(),
        );
        calls.spawn(async move {
            let members = client
                .call(
                    &addr,
                    &GetConsumerConnections { group: g.clone() },
                    Bytes::new(),
                )
                .await;
            let progress = client
                .call(&addr, &GetConsumeStats { group: g }, Bytes::new())
                .await;
            (name, members, progress)
        });
    }
    let mut members: BTreeMap<String, Value> = BTreeMap::new();
    let mut model = None;
    let mut subscriptions: BTreeSet<(String, String)> = BTreeSet::new();
    let mut queues = Vec::new();
    let mut errors = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let Ok((broker, m, p)) = joined else { continue };
        match m {
            Ok((list, _)) => {
                for m in list.members {
                    model.get_or_insert(m.model.clone());
                    subscriptions.extend(m.subscriptions.iter().cloned());
                    members.entry(m.client_id.clone()).or_insert_with(|| {
                        json!({
                            "client_id": m.client_id, "addr": m.addr, "broker": broker,
                            "model": model_name(&m.model),
                            "subscriptions": m.subscriptions,
                            "last_heartbeat_ms_ago": m.last_heartbeat_ms_ago,
                        })
                    });
                }
            }
            Err(e) => errors.push(format!("{broker}: members: {e}")),
        }
        match p {
            Ok((stats, _)) => queues.extend(stats.queues.into_iter().map(|q| (broker.clone(), q))),
            Err(e) => errors.push(format!("{broker}: progress: {e}")),
        }
    }
    queues.sort_by(|a, b| (&a.1.topic, &a.0, a.1.queue_id).cmp(&(&b.1.topic, &b.0, b.1.queue_id)));
    let ids: Vec<String> = members.keys().cloned().collect();
    let holders = if model == Some(MessageModel::Clustering) {
        holders(&ctx.client, &group, &subscriptions, &ids).await
    } else {
        BTreeMap::new()
    };
    let retry = names::retry_topic(&group);
    let (mut total_lag, mut retry_depth) = (0u64, 0u64);
    let rows: Vec<Value> = queues
        .iter()
        .map(|(broker, q)| {
            let lag = q.broker_offset.saturating_sub(q.consumer_offset);
            if q.topic == retry {
                retry_depth = retry_depth.saturating_add(lag);
            } else {
                total_lag = total_lag.saturating_add(lag);
            }
            let holder = holders.get(&(q.topic.clone(), broker.clone(), q.queue_id));
            json!({
                "topic": q.topic, "broker": broker, "queue": q.queue_id,
                "broker_offset": q.broker_offset, "consumer_offset": q.consumer_offset,
                "lag": lag, "holder": holder,
            })
        })
        .collect();
    let dead_letters = dead_letter_depth(&admin, &group).await;
    let subs: Vec<Value> = subscriptions
        .iter()
        .map(|(t, e)| json!({ "topic": t, "expression": e }))
        .collect();
    Ok(Json(json!({
        "name": group,
        "model": model.as_ref().map(model_name),
        "members": members.into_values().collect::<Vec<_>>(),
        "subscriptions": subs,
        "queues": rows,
        "total_lag": total_lag,
        "retry_depth": retry_depth,
        "dead_letters": dead_letters,
        "dead_letter_topic": names::dlq_topic(&group),
        "errors": errors,
    })))
}

fn model_name(m: &MessageModel) -> &'static str {
    match m {
        MessageModel::Clustering => "clustering",
        MessageModel::Broadcasting => "broadcasting",
    }
}

/// Which member holds each queue of the subscribed topics (and the retry topic), as the
/// members compute it: the sorted member ids, average allocation over each topic's readable
/// queues in route order. Keyed by (topic, broker, queue id).
async fn holders(
    client: &ClientInstance,
    group: &str,
    subscriptions: &BTreeSet<(String, String)>,
    ids: &[String],
) -> BTreeMap<(String, String, u32), String> {
    let mut out = BTreeMap::new();
    let mut topics: BTreeSet<String> = subscriptions.iter().map(|(t, _)| t.clone()).collect();
    topics.insert(names::retry_topic(group));
    for topic in topics {
        let Ok(route) = client.route(&topic, false).await else {
            continue;
        };
        // In the order the members take them (the route's), not re-sorted.
        let queues = ClientInstance::queues(&route, &topic, false);
        for id in ids {
            for q in allocate_averagely(&queues, ids, id) {
                out.insert((q.topic, q.broker_name, q.queue_id), id.clone());
            }
        }
    }
    out
}

/// Messages stored in the group's dead-letter topic (queue max − min), if it has one.
async fn dead_letter_depth(admin: &Admin, group: &str) -> Option<u64> {
    let stats = admin.topic_stats(&names::dlq_topic(group)).await.ok()?;
    Some(
        stats
            .iter()
            .flat_map(|(_, s)| s.queues.iter())
            .fold(0u64, |n, q| n.saturating_add(q.max.saturating_sub(q.min))),
    )
}

#[derive(Deserialize)]
pub struct Reset {
    group: String,
    topic: String,
    /// "earliest", "latest" or "time" (with `time_ms`).
    to: String,
    time_ms: Option<i64>,
    #[serde(default)]
    force: bool,
    /// The group's name typed again.
    confirm: String,
}

pub async fn reset(Extension(ctx): Extension<Ctx>, Json(r): Json<Reset>) -> ApiResult<Json<Value>> {
    let group = required("group", &r.group)?;
    let topic = required("topic", &r.topic)?;
    if r.confirm.trim() != group {
        return Err(ApiError::bad_request(format!(
            "not reset: type the group's name ({group}) to confirm"
        )));
    }
    let target = match (r.to.as_str(), r.time_ms) {
        ("earliest", _) => ResetTarget::Earliest,
        ("latest", _) => ResetTarget::Latest,
        ("time", Some(t)) => ResetTarget::Timestamp(t),
        ("time", None) => return Err(ApiError::bad_request("give the time to reset to")),
        (other, _) => {
            return Err(ApiError::bad_request(format!(
                "reset to {other:?}: choose earliest, latest or a time"
            )));
        }
    };
    let done = Admin::new(ctx.client)
        .reset_offset(group, topic, target, r.force)
        .await?;
    tracing::info!(group = %group, topic = %topic, "console: offsets reset");
    let rows: Vec<Value> = done
        .iter()
        .flat_map(|(b, r)| {
            r.queues.iter().map(
                move |q| json!({ "broker": b, "queue": q.queue_id, "old": q.old, "new": q.new }),
            )
        })
        .collect();
    Ok(Json(
        json!({ "group": group, "topic": topic, "queues": rows }),
    ))
}

#[derive(Deserialize)]
pub struct Resend {
    msg_id: String,
}

/// Properties the broker sets on a retry or dead letter: not carried to the new copy.
const DROPPED: &[&str] = &[
    property::RETRY_TOPIC,
    property::ORIGIN_MESSAGE_ID,
    "REAL_TOPIC",
    "REAL_QID",
    "DELAY",
];

/// Sends a copy of a dead letter (by id) to the topic it was first sent to.
pub async fn resend_dead_letter(
    Extension(ctx): Extension<Ctx>,
    Json(r): Json<Resend>,
) -> ApiResult<Json<Value>> {
    let id = required("message id", &r.msg_id)?;
    let m = Admin::new(ctx.client.clone()).message_by_id(id).await?;
    if !m.topic.starts_with(names::DLQ_PREFIX) {
        return Err(ApiError::bad_request(format!(
            "message {id} is on topic {}, not a dead-letter topic",
            m.topic
        )));
    }
    let Some(origin) = m.property(property::RETRY_TOPIC).map(str::to_owned) else {
        return Err(ApiError::bad_request(format!(
            "dead letter {id} does not say which topic it came from"
        )));
    };
    let mut copy = Message::new(origin.clone(), m.body.clone());
    copy.tags = m.tags.clone();
    copy.keys = m.keys.to_vec();
    copy.properties = m
        .properties
        .iter()
        .filter(|(k, _)| !DROPPED.contains(k) && *k != "TAGS" && *k != "KEYS")
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let sent = Producer::new(super::topics::PRODUCER_GROUP, ctx.client)
        .send(&copy)
        .await?;
    tracing::info!(msg_id = %id, topic = %origin, "console: dead letter re-sent");
    Ok(Json(
        json!({ "topic": origin, "msg_id": sent.msg_id, "status": sent.status.as_str() }),
    ))
}
