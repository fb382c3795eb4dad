//! `/api/cluster`: brokers by name and role, addresses, versions, start times, counters,
//! disk, replication lag, and produce / consume rates from the console's own samples.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Extension, State};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use weir_client::Admin;
use weir_protocol::admin::GetBrokerStats;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::session::Ctx;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One request to the name servers, then one to every broker (masters and slaves) at
/// once; a broker that does not answer is a row naming why.
pub async fn cluster(
    State(st): State<Arc<AppState>>,
    Extension(ctx): Extension<Ctx>,
) -> ApiResult<Json<Value>> {
    let info = Admin::new(ctx.client.clone()).cluster().await?;
    let mut calls = JoinSet::new();
    for (i, b) in info.brokers.iter().enumerate() {
        for (j, (id, addr)) in b.addrs.iter().enumerate() {
            let (client, addr, id) = (ctx.client.clone(), addr.clone(), *id);
            calls.spawn(async move {
                let r = client.call(&addr, &GetBrokerStats, Bytes::new()).await;
                (i, j, id, addr, r)
            });
        }
    }
    let mut rows = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let Ok((i, j, id, addr, r)) = joined else {
            continue;
        };
        let Some(b) = info.brokers.get(i) else {
            continue;
        };
        let ha = b.status.iter().find(|(sid, _)| *sid == id).map(|(_, s)| s);
        let mut row = json!({
            "cluster": b.cluster,
            "broker": b.broker_name,
            "id": id,
            "addr": addr,
            "role": ha.map(|h| h.role.as_str()).unwrap_or(if id == 0 { "master" } else { "slave" }),
            "lag_bytes": ha.map(|h| h.lag_bytes),
            "lag_ms": ha.map(|h| h.lag_ms),
            "ha_connected": ha.map(|h| h.connected),
            "diverged": ha.and_then(|h| h.diverged.clone()),
        });
        match r {
            Ok((s, _)) => {
                let rates = st
                    .stats
                    .record(&addr, now_ms(), s.messages_in, s.messages_out);
                row["stats"] = json!({
                    "messages_in": s.messages_in,
                    "bytes_in": s.bytes_in,
                    "messages_out": s.messages_out,
                    "connections": s.connections,
                    "clients": s.clients,
                    "disk_used_percent": s.disk_used_ppm.map(|p| f64::from(p) / 10_000.0),
                    "topics": s.topics,
                    "held_pulls": s.held_pulls,
                    "uptime_ms": s.uptime_ms,
                    "started_at_ms": s.started_at_ms,
                });
                // A broker older than the field says nothing: "unknown".
                row["version"] = json!(s.version_or_unknown());
                row["rates"] = json!(rates);
            }
            // Credentials would help: the page offers the login form.
            Err(e) if ApiError::from_ref(&e).login => return Err(e.into()),
            Err(e) => row["error"] = json!(e.to_string()),
        }
        rows.push(((i, j), row));
    }
    rows.sort_by_key(|(k, _)| *k);
    let brokers: Vec<Value> = rows.into_iter().map(|(_, r)| r).collect();
    Ok(Json(json!({ "brokers": brokers, "now_ms": now_ms() })))
}
