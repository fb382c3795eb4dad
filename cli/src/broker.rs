//! `weir broker`: every broker's statistics.

use clap::Subcommand;
use weir_client::{Admin, ClientInstance};

use crate::output;

#[derive(Subcommand, Debug)]
pub enum BrokerCmd {
    /// Per broker: messages and bytes in, messages out (since it started), connections,
    /// known clients, disk usage, topics, held pulls, uptime.
    Stats {
        /// One JSON object per broker.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: BrokerCmd, client: ClientInstance) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        BrokerCmd::Stats { json } => stats(&admin, json).await,
    }
}

async fn stats(admin: &Admin, json: bool) -> anyhow::Result<()> {
    let rows = admin.broker_stats().await?;
    if rows.is_empty() {
        anyhow::bail!("no broker is registered");
    }
    let mut table = vec![
        [
            "BROKER",
            "ID",
            "ADDRESS",
            "MSGS_IN",
            "BYTES_IN",
            "MSGS_OUT",
            "CONNS",
            "CLIENTS",
            "DISK",
            "TOPICS",
            "HELD_PULLS",
            "UPTIME",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in &rows {
        let s = &r.stats;
        let disk_ratio = s.disk_used_ppm.map(|p| f64::from(p) / 1_000_000.0);
        if json {
            let v = serde_json::json!({
                "broker": s.broker_name,
                "id": s.broker_id,
                "addr": r.addr,
                "messages_in": s.messages_in,
                "bytes_in": s.bytes_in,
                "messages_out": s.messages_out,
                "connections": s.connections,
                "clients": s.clients,
                "disk_used_ratio": disk_ratio,
                "topics": s.topics,
                "held_pulls": s.held_pulls,
                "uptime_ms": s.uptime_ms,
            });
            println!("{v}");
            continue;
        }
        table.push(vec![
            s.broker_name.clone(),
            s.broker_id.to_string(),
            r.addr.clone(),
            s.messages_in.to_string(),
            s.bytes_in.to_string(),
            s.messages_out.to_string(),
            s.connections.to_string(),
            s.clients.to_string(),
            disk_ratio.map_or_else(|| "-".into(), |d| format!("{:.1}%", d * 100.0)),
            s.topics.to_string(),
            s.held_pulls.to_string(),
            format!("{}s", s.uptime_ms / 1000),
        ]);
    }
    if !json {
        output::table(&table);
    }
    Ok(())
}
