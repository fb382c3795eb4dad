//! `/api/transactions…`: pending half messages or the dead ones, per master broker;
//! resolving a dead one by hand.

use axum::Json;
use axum::extract::{Extension, Query};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_client::{Admin, TransactionDecision, TransactionState};

use super::required;
use crate::error::{ApiError, ApiResult};
use crate::session::Ctx;

/// Most transactions listed per broker.
const MAX_LISTED: u32 = 1000;

#[derive(Deserialize)]
pub struct ListQuery {
    /// "pending" (default) or "dead".
    state: Option<String>,
    group: Option<String>,
}

/// One request per master broker.
pub async fn list(
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let state = match q.state.as_deref() {
        None | Some("") | Some("pending") => TransactionState::Pending,
        Some("dead") => TransactionState::Dead,
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "state {s:?} is not pending or dead"
            )));
        }
    };
    let group = q.group.as_deref().map(str::trim).filter(|g| !g.is_empty());
    let lists = Admin::new(ctx.client)
        .list_transactions(state, group, MAX_LISTED)
        .await?;
    let mut rows = Vec::new();
    let mut truncated = false;
    for (broker, list) in &lists {
        truncated |= list.truncated;
        for t in &list.transactions {
            rows.push(json!({
                "broker": broker, "transaction_id": t.transaction_id,
                "producer_group": t.producer_group, "topic": t.topic, "queue": t.queue_id,
                "msg_id": t.msg_id, "first_stored_ms": t.first_stored_ms,
                "check_times": t.check_times,
            }));
        }
    }
    Ok(Json(
        json!({ "transactions": rows, "truncated": truncated }),
    ))
}

#[derive(Deserialize)]
pub struct Resolve {
    id: String,
    /// "commit" or "rollback".
    decision: String,
}

pub async fn resolve(
    Extension(ctx): Extension<Ctx>,
    Json(r): Json<Resolve>,
) -> ApiResult<Json<Value>> {
    let id = required("transaction id", &r.id)?;
    let decision = match r.decision.as_str() {
        "commit" => TransactionDecision::Commit,
        "rollback" => TransactionDecision::Rollback,
        d => {
            return Err(ApiError::bad_request(format!(
                "decide {d:?}: commit or rollback"
            )));
        }
    };
    let (broker, done) = Admin::new(ctx.client)
        .resolve_transaction(id, decision)
        .await?;
    tracing::info!(transaction = %id, decision = %r.decision, "console: transaction resolved");
    Ok(Json(
        json!({ "broker": broker, "transaction_id": id, "msg_id": done.msg_id }),
    ))
}
