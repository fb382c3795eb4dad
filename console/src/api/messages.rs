//! `/api/messages/…`: messages by key, by id, and by topic and store-time range (paged).
//!
//! A message goes to the page as JSON: properties as pairs, the body as Base64 (its bytes,
//! whatever they are) and as text when it is UTF-8; the page shows text, pretty JSON or
//! hex, always through `textContent`.
//!
//! Browsing by time reads as the consumer group [`BROWSE_GROUP`] and commits nothing.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, Query};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use weir_client::{Admin, MessageQueue, PullConsumer, ReceivedMessage};

use super::required;
use crate::error::{ApiError, ApiResult};
use crate::session::Ctx;

/// The group time-range reads pull as.
pub const BROWSE_GROUP: &str = "weir-console-browse";
/// Most messages a page shows.
const MAX_PER_PAGE: usize = 100;
/// Most bytes of bodies a page of messages by time shows (the rest on the next pages).
const PAGE_BODY_BYTES: usize = 4 << 20;

pub fn message_json(m: &ReceivedMessage) -> Value {
    json!({
        "topic": m.topic,
        "broker": m.broker_name,
        "queue": m.queue_id,
        "queue_offset": m.queue_offset,
        "msg_id": m.msg_id.to_string(),
        "tags": m.tags,
        "keys": m.keys.to_vec(),
        "props": m.properties.to_vec(),
        "body_len": m.body.len(),
        "body_text": std::str::from_utf8(&m.body).ok(),
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&m.body),
        "reconsume_times": m.reconsume_times,
        "born_ts": m.born_timestamp,
        "born_host": m.born_host.to_string(),
        "store_ts": m.store_timestamp,
    })
}

#[derive(Deserialize)]
pub struct ByKey {
    topic: String,
    key: String,
}

pub async fn by_key(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ByKey>,
) -> ApiResult<Json<Value>> {
    let topic = required("topic", &q.topic)?;
    let key = required("key", &q.key)?;
    let found = Admin::new(ctx.client)
        .messages_by_key(topic, key, 64)
        .await?;
    let msgs: Vec<Value> = found.iter().map(message_json).collect();
    Ok(Json(json!({ "messages": msgs })))
}

#[derive(Deserialize)]
pub struct ById {
    id: String,
}

pub async fn by_id(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ById>,
) -> ApiResult<Json<Value>> {
    let id = required("message id", &q.id)?;
    let m = Admin::new(ctx.client).message_by_id(id).await?;
    Ok(Json(json!({ "messages": [message_json(&m)] })))
}

#[derive(Deserialize)]
pub struct ByTime {
    topic: String,
    /// Store time range, ms since the epoch (inclusive).
    from_ms: i64,
    to_ms: i64,
    per_page: Option<usize>,
    /// Where the previous page stopped (the `next` of its answer).
    cursor: Option<String>,
}

/// The cursor: each queue's next offset, as `broker/queue/offset` joined by `,`.
fn parse_cursor(s: &str) -> ApiResult<BTreeMap<(String, u32), u64>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let bad = || ApiError::bad_request(format!("the page cursor {part:?} is malformed"));
        let mut it = part.rsplitn(3, '/');
        let (Some(off), Some(q), Some(b)) = (it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        out.insert(
            (b.to_owned(), q.parse().map_err(|_| bad())?),
            off.parse().map_err(|_| bad())?,
        );
    }
    Ok(out)
}

/// For each readable queue: its start (the cursor's, else the first offset stored at or
/// after `from_ms`), one pull of up to a page; the page is the earliest stored of all
/// those in range, and the cursor moves each queue past what the page took. 1 route
/// request, then 1 or 2 per queue.
pub async fn by_time(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ByTime>,
) -> ApiResult<Json<Value>> {
    let topic = required("topic", &q.topic)?;
    if q.to_ms < q.from_ms {
        return Err(ApiError::bad_request("the range ends before it starts"));
    }
    let per_page = q.per_page.unwrap_or(20).clamp(1, MAX_PER_PAGE);
    let cursor = parse_cursor(q.cursor.as_deref().unwrap_or(""))?;
    let pc = PullConsumer::new(BROWSE_GROUP, ctx.client);
    let queues = pc.queues(topic).await?;
    let mut starts: Vec<(MessageQueue, u64)> = Vec::new();
    let mut candidates: Vec<ReceivedMessage> = Vec::new();
    let mut more = false;
    for mq in queues {
        let start = match cursor.get(&(mq.broker_name.clone(), mq.queue_id)) {
            Some(o) => *o,
            None if q.cursor.is_some() => continue, // done with this queue
            None => pc.offset_for_timestamp(&mq, q.from_ms).await?,
        };
        let got = pc
            .pull(&mq, "*", start, per_page as u32, None, None)
            .await?;
        // More stored after what the pull returned: a pull of large messages returns fewer
        // than asked (its bytes are bounded), and the queue goes on.
        let full = got.messages.len() >= per_page || got.next_offset < got.max_offset;
        let mut any_past = false;
        for m in got.messages {
            if m.store_timestamp < q.from_ms {
                continue;
            }
            if m.store_timestamp > q.to_ms {
                any_past = true;
                break;
            }
            candidates.push(m);
        }
        if full && !any_past {
            more = true;
        }
        starts.push((mq, start));
    }
    candidates.sort_by_key(|m| (m.store_timestamp, m.queue_id, m.queue_offset));
    if candidates.len() > per_page {
        more = true;
    }
    candidates.truncate(per_page);
    // At most PAGE_BODY_BYTES of bodies (at least one message): each body goes out twice,
    // as text and Base64, and 100 messages of 1 MiB made a 59 MB answer.
    let mut bytes = 0usize;
    let fit = candidates
        .iter()
        .take_while(|m| {
            bytes = bytes.saturating_add(m.body.len());
            bytes <= PAGE_BODY_BYTES
        })
        .count()
        .max(1);
    if fit < candidates.len() {
        more = true;
        candidates.truncate(fit);
    }
    // Each queue resumes after the last message of it this page shows.
    let mut next = Vec::new();
    for (mq, start) in &starts {
        let taken = candidates
            .iter()
            .filter(|m| m.broker_name == mq.broker_name && m.queue_id == mq.queue_id)
            .map(|m| m.queue_offset.saturating_add(1))
            .max();
        next.push(format!(
            "{}/{}/{}",
            mq.broker_name,
            mq.queue_id,
            taken.unwrap_or(*start)
        ));
    }
    let msgs: Vec<Value> = candidates.iter().map(message_json).collect();
    Ok(Json(json!({
        "messages": msgs,
        "next": more.then(|| next.join(",")),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let c = parse_cursor("broker-a/0/12,broker/b/3/7").unwrap();
        assert_eq!(c.get(&("broker-a".into(), 0)), Some(&12));
        assert_eq!(c.get(&("broker/b".into(), 3)), Some(&7));
        assert!(parse_cursor("x/y").is_err());
        assert!(parse_cursor("a/1/z").is_err());
        assert!(parse_cursor("").unwrap().is_empty());
    }
}
