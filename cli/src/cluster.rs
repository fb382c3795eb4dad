//! `weir cluster list`: every broker the name servers know, with its role and how far its
//! replication lags (for a master, its slowest slave; for a slave, itself).

use weir_client::{Admin, ClientInstance};
use weir_protocol::ha::HaStatus;
use weir_protocol::route::BrokerData;

use crate::output;

/// One line of the listing.
struct Row<'a> {
    broker: &'a BrokerData,
    id: u64,
    addr: &'a str,
    status: Option<&'a HaStatus>,
}

fn rows(brokers: &[BrokerData]) -> Vec<Row<'_>> {
    let mut out = Vec::new();
    for b in brokers {
        for (id, addr) in &b.addrs {
            let status = b.status.iter().find(|(i, _)| i == id).map(|(_, s)| s);
            out.push(Row {
                broker: b,
                id: *id,
                addr,
                status,
            });
        }
    }
    out
}

/// The role as listed: from the broker's report, else by its id.
fn role(r: &Row<'_>) -> &'static str {
    match r.status {
        Some(s) => s.role.as_str(),
        None if r.id == 0 => "master",
        None => "slave",
    }
}

/// A slave: connected, diverged or away; a master: how many slaves follow it.
fn state(r: &Row<'_>) -> String {
    match r.status {
        None => "-".into(),
        Some(s) if s.diverged.is_some() => "diverged".into(),
        Some(s) if s.role.is_master() => format!("{} slave(s)", s.connected),
        Some(s) if s.connected > 0 => "replicating".into(),
        Some(_) => "disconnected".into(),
    }
}

pub async fn list(client: ClientInstance, json: bool) -> anyhow::Result<()> {
    let info = Admin::new(client).cluster().await?;
    let rows = rows(&info.brokers);
    if json {
        for r in &rows {
            let v = serde_json::json!({
                "cluster": r.broker.cluster,
                "broker": r.broker.broker_name,
                "id": r.id,
                "addr": r.addr,
                "role": role(r),
                "ha_addr": r.status.and_then(|s| s.ha_addr.clone()),
                "lag_bytes": r.status.map(|s| s.lag_bytes),
                "lag_seconds": r.status.map(|s| s.lag_ms as f64 / 1000.0),
                "connected": r.status.map(|s| s.connected),
                "diverged": r.status.and_then(|s| s.diverged.clone()),
            });
            println!("{v}");
        }
        return Ok(());
    }
    let mut table = vec![
        [
            "CLUSTER",
            "BROKER",
            "ID",
            "ADDRESS",
            "ROLE",
            "LAG_BYTES",
            "LAG_SECONDS",
            "STATE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &rows {
        table.push(vec![
            r.broker.cluster.clone(),
            r.broker.broker_name.clone(),
            r.id.to_string(),
            r.addr.to_owned(),
            role(r).to_owned(),
            r.status.map_or("-".into(), |s| s.lag_bytes.to_string()),
            r.status
                .map_or("-".into(), |s| format!("{:.1}", s.lag_ms as f64 / 1000.0)),
            state(r),
        ]);
    }
    output::table(&table);
    for r in &rows {
        if let Some(why) = r.status.and_then(|s| s.diverged.as_deref()) {
            println!(
                "{} id {} ({}) diverged from its master: {why}",
                r.broker.broker_name, r.id, r.addr
            );
        }
    }
    Ok(())
}
