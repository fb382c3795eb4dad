//! `POST /api/filters/preview`: a filter component tried on the last N messages of a topic
//! (`weir filter test` behind the Filters page). The console runs it itself, in the
//! broker's own filter runtime ([`LocalFilter`], as `weir filter test` does), over the
//! records exactly as the brokers store them; nothing is uploaded, no offset moves.
//!
//! Which messages: per readable queue, its last ⌈N / queues⌉ (from its max offset back),
//! then the newest N of those by store time. The filter sees each queue's messages in
//! queue order, in one call per queue, as a broker would hand them.
//!
//! Bounded, so a browser cannot make the console grow: N at most [`MAX_COUNT`]; the
//! request at most the upload's 24 MiB (the component in Base64), read only once this
//! console's one preview slot is taken (a second preview meanwhile is refused with 429);
//! the filter compiled on a blocking thread and run on one filter worker of its own under
//! the broker's limits (memory cap, CPU budget per batch), its log lines kept up to
//! [`MAX_LOG_LINES`] (the runtime's rate limit drops lines past 10 a second).
//!
//! Round trips: 1 route request, then per readable queue 1 offsets request and 1 pull
//! (a few more only when a pull comes back short), in turn.

use std::cmp::Reverse;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Extension, Request, State};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use weir_broker::filter::{FilterConfig, LocalFilter, LogSink};
use weir_client::{MessageQueue, PullConsumer, PullStatus};
use weir_protocol::RecordView;

use super::{json_in_slot, required};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::session::Ctx;

/// The group a preview reads as (it commits nothing) and, unless asked otherwise, the
/// group the filter is told it runs for.
pub const PREVIEW_GROUP: &str = "weir-console-preview";
/// Most messages one preview judges.
pub const MAX_COUNT: usize = 1_000;
const DEFAULT_COUNT: usize = 100;
/// Most log lines one preview keeps.
pub const MAX_LOG_LINES: usize = 200;
/// Most pulls of one queue (a pull may come back short of what was asked).
const MAX_PULLS_PER_QUEUE: usize = 8;

#[derive(Deserialize)]
struct Preview {
    topic: String,
    count: Option<usize>,
    /// The group the filter is told it runs for (default [`PREVIEW_GROUP`]).
    group: Option<String>,
    #[serde(default)]
    params: Vec<(String, String)>,
    /// The instance's memory cap, e.g. `64MiB` (default the broker's 16 MiB).
    memory: Option<String>,
    component_base64: String,
}

/// One message read, and the filter's verdict on it.
struct Judged {
    broker: String,
    queue_id: u32,
    record: Bytes,
    store_ts: i64,
    queue_offset: u64,
    keep: Option<bool>,
}

pub async fn preview(
    State(st): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    req: Request,
) -> ApiResult<Json<Value>> {
    let (_slot, p): (_, Preview) = json_in_slot(
        &st.preview,
        req,
        "another filter preview is running in this console: try again when it ends",
        "a preview",
    )
    .await?;
    let topic = required("topic", &p.topic)?.to_owned();
    let group = match p.group.as_deref().map(str::trim) {
        Some(g) if !g.is_empty() => g.to_owned(),
        _ => PREVIEW_GROUP.to_owned(),
    };
    let count = p.count.unwrap_or(DEFAULT_COUNT);
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(ApiError::bad_request(format!(
            "try the filter on 1 to {MAX_COUNT} messages, not {count}"
        )));
    }
    let mut config = lean_config();
    if let Some(bytes) = super::filters::memory_cap(p.memory.as_deref())? {
        config = config
            .with_memory(bytes)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let component = base64::engine::general_purpose::STANDARD
        .decode(p.component_base64.trim().as_bytes())
        .map_err(|e| ApiError::bad_request(format!("the component is not valid Base64: {e}")))?;
    if component.is_empty() {
        return Err(ApiError::bad_request("choose a component file"));
    }

    let (mut judged, requests) = read_last(&ctx, &topic, count).await?;

    let log = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink: LogSink = {
        let log = Arc::clone(&log);
        Arc::new(move |level: tracing::Level, line: &str| {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() < MAX_LOG_LINES {
                log.push(json!({ "level": level.as_str().to_ascii_lowercase(), "line": line }));
            }
        })
    };
    let filter = LocalFilter::load_in_background(component, p.params, config, Some(sink))
        .await
        .map_err(|e| ApiError::bad_request(format!("the filter does not load: {e}")))?;

    // Each queue's messages in queue order, one call per queue.
    judged.sort_by(|a, b| {
        (&a.broker, a.queue_id, a.queue_offset).cmp(&(&b.broker, b.queue_id, b.queue_offset))
    });
    let mut failure = None;
    for part in judged.chunk_by_mut(|a, b| a.broker == b.broker && a.queue_id == b.queue_id) {
        let (Some(first), Some(last)) = (part.first(), part.last()) else {
            continue;
        };
        let (broker, queue_id) = (first.broker.clone(), first.queue_id);
        let offsets = format!("offsets {} to {}", first.queue_offset, last.queue_offset);
        let records: Vec<Bytes> = part.iter().map(|j| j.record.clone()).collect();
        match filter.run(&topic, queue_id, &group, records).await {
            Ok(verdicts) if verdicts.len() == part.len() => {
                for (j, keep) in part.iter_mut().zip(verdicts) {
                    j.keep = Some(keep);
                }
            }
            Ok(verdicts) => {
                failure = Some(format!(
                    "the filter returned {} verdicts for the {} messages of {broker} queue {queue_id} ({offsets})",
                    verdicts.len(),
                    part.len()
                ));
                break;
            }
            Err(e) => {
                failure = Some(format!(
                    "the filter failed on {broker} queue {queue_id} ({offsets}): {e}"
                ));
                break;
            }
        }
    }
    let stats = filter.stats();
    let needs_body = filter.needs_body();
    drop(filter);
    tracing::info!(topic = %topic, messages = judged.len(), failed = failure.is_some(), "console: filter preview");

    judged.sort_by_key(|j| Reverse((j.store_ts, j.queue_offset)));
    let kept = judged.iter().filter(|j| j.keep == Some(true)).count();
    let dropped = judged.iter().filter(|j| j.keep == Some(false)).count();
    let messages: Vec<Value> = judged.iter().filter_map(message_json).collect();
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Json(json!({
        "topic": topic,
        "group": group,
        "asked": count,
        "read": judged.len(),
        "kept": kept,
        "dropped": dropped,
        "needs_body": needs_body,
        "messages": messages,
        "log": log,
        "log_lines_dropped": stats.log_lines_dropped,
        "error": failure,
        "requests": requests,
    })))
}

/// The broker's limits with one filter worker and a small instance pool: a preview runs
/// one filter, once.
fn lean_config() -> FilterConfig {
    FilterConfig {
        workers: 1,
        max_instances: 2,
        ..FilterConfig::default()
    }
}

fn message_json(j: &Judged) -> Option<Value> {
    let v = RecordView::parse(&j.record).ok()?;
    Some(json!({
        "broker": j.broker,
        "queue": j.queue_id,
        "queue_offset": j.queue_offset,
        "msg_id": v.message_id().to_string(),
        "tags": v.tags(),
        "keys": v.keys().collect::<Vec<_>>(),
        "store_ts": j.store_ts,
        "verdict": j.keep.map(|k| if k { "kept" } else { "dropped" }),
    }))
}

/// The newest `count` messages of `topic` (see the module's doc), and the requests made.
async fn read_last(ctx: &Ctx, topic: &str, count: usize) -> ApiResult<(Vec<Judged>, usize)> {
    let pc = PullConsumer::new(PREVIEW_GROUP, ctx.client.clone());
    let queues = pc.queues(topic).await?;
    let mut requests = 1;
    if queues.is_empty() {
        return Ok((Vec::new(), requests));
    }
    let share = count.div_ceil(queues.len()) as u64;
    let mut out = Vec::new();
    for mq in &queues {
        let o = pc.queue_offsets(mq).await?;
        requests += 1;
        let mut offset = o.min.max(o.max.saturating_sub(share));
        for _ in 0..MAX_PULLS_PER_QUEUE {
            if offset >= o.max {
                break;
            }
            let want = u32::try_from(o.max - offset).unwrap_or(u32::MAX);
            let got = pc.pull_raw(mq, "*", offset, want, None, None).await?;
            requests += 1;
            if got.status != PullStatus::Found || got.next_offset <= offset {
                break;
            }
            offset = got.next_offset;
            out.extend(got.records.into_iter().filter_map(|r| judged(mq, r)));
        }
    }
    out.sort_by_key(|j| Reverse((j.store_ts, j.queue_offset)));
    out.truncate(count);
    Ok((out, requests))
}

fn judged(mq: &MessageQueue, record: Bytes) -> Option<Judged> {
    let v = RecordView::parse(&record).ok()?;
    let (store_ts, queue_offset) = (v.store_timestamp(), v.queue_offset());
    Some(Judged {
        broker: mq.broker_name.clone(),
        queue_id: mq.queue_id,
        record,
        store_ts,
        queue_offset,
        keep: None,
    })
}
