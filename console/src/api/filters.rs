//! `/api/filters…`: every group's WebAssembly filters per broker (version, sha256,
//! parameters, state with the cause when failed, counters), upload, remove, reset (the
//! preview: `preview.rs`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Query, Request, State};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use weir_client::Admin;

use super::{json_in_slot, required};
use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::session::Ctx;

#[derive(Deserialize)]
pub struct ListQuery {
    group: Option<String>,
}

/// One request per master broker.
pub async fn list(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let group = q.group.as_deref().map(str::trim).filter(|g| !g.is_empty());
    let lists = Admin::new(ctx.client).list_filters(group).await?;
    let mut rows = Vec::new();
    for (broker, list) in &lists {
        for f in &list.filters {
            let s = &f.stats;
            rows.push(json!({
                "broker": broker, "group": f.group, "topic": f.topic,
                "version": f.version, "sha256": f.sha256, "params": f.params,
                "size": f.size, "needs_body": f.needs_body, "uploaded_at": f.uploaded_at,
                "state": if f.failed.is_some() { "failed" } else { "active" },
                "failed": f.failed,
                "calls": s.calls, "messages_in": s.messages_in, "messages_kept": s.messages_kept,
                "ns_per_message": s.nanos_per_message(),
                "failures": {
                    "total": s.failures(), "guest_errors": s.guest_errors, "traps": s.traps,
                    "deadlines": s.deadlines, "memory_exhausted": s.memory_exhausted,
                    "wrong_verdicts": s.wrong_verdicts,
                },
                "instantiations": s.instantiations, "log_lines_dropped": s.log_lines_dropped,
            }));
        }
    }
    Ok(Json(json!({ "filters": rows })))
}

#[derive(Deserialize)]
pub struct Upload {
    group: String,
    topic: String,
    #[serde(default)]
    params: Vec<(String, String)>,
    /// Each instance's memory cap, e.g. `64MiB` (default the brokers' own).
    memory: Option<String>,
    component_base64: String,
}

/// A memory cap as written in the form (`64MiB`, `512k`, bytes); blank is none.
pub fn memory_cap(m: Option<&str>) -> ApiResult<Option<u64>> {
    match m.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => weir_broker::filter::parse_memory(m)
            .map(Some)
            .map_err(ApiError::bad_request),
        None => Ok(None),
    }
}

pub async fn upload(
    State(st): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
    req: Request,
) -> ApiResult<Json<Value>> {
    // Uploads waiting on their brokers hold up to 24 MiB of request each (16 at once held
    // 460 MB).
    let (_slot, u): (_, Upload) = json_in_slot(
        &st.uploads,
        req,
        "other filter uploads are running in this console: try again when they end",
        "an upload",
    )
    .await?;
    let group = required("consumer group", &u.group)?;
    let topic = required("topic", &u.topic)?;
    let memory = memory_cap(u.memory.as_deref())?;
    let component = base64::engine::general_purpose::STANDARD
        .decode(u.component_base64.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("the component is not valid Base64: {e}")))?;
    let done = Admin::new(ctx.client)
        .upload_filter_with_memory(group, topic, component, u.params, memory)
        .await?;
    tracing::info!(group = %group, topic = %topic, "console: filter uploaded");
    let rows: Vec<Value> = done
        .iter()
        .map(|(b, up)| json!({ "broker": b, "version": up.version, "sha256": up.sha256 }))
        .collect();
    Ok(Json(
        json!({ "group": group, "topic": topic, "brokers": rows }),
    ))
}

#[derive(Deserialize)]
pub struct Target {
    group: String,
    topic: String,
}

pub async fn remove(
    Extension(ctx): Extension<Ctx>,
    Json(t): Json<Target>,
) -> ApiResult<Json<Value>> {
    let (group, topic) = (
        required("consumer group", &t.group)?,
        required("topic", &t.topic)?,
    );
    let done = Admin::new(ctx.client).remove_filter(group, topic).await?;
    let brokers: Vec<&String> = done.iter().map(|(b, _)| b).collect();
    Ok(Json(
        json!({ "group": group, "topic": topic, "brokers": brokers }),
    ))
}

pub async fn reset(
    Extension(ctx): Extension<Ctx>,
    Json(t): Json<Target>,
) -> ApiResult<Json<Value>> {
    let (group, topic) = (
        required("consumer group", &t.group)?,
        required("topic", &t.topic)?,
    );
    let done = Admin::new(ctx.client).reset_filter(group, topic).await?;
    let brokers: Vec<&String> = done.iter().map(|(b, _)| b).collect();
    Ok(Json(
        json!({ "group": group, "topic": topic, "brokers": brokers }),
    ))
}
