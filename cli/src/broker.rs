//! `weir broker`: every broker's statistics, and its settings that can change live.

use clap::Subcommand;
use weir_client::{Admin, BrokerSettings, ClientInstance};

use crate::output;

#[derive(Subcommand, Debug)]
pub enum BrokerCmd {
    /// Per broker: messages and bytes in, messages out (since it started), connections,
    /// known clients, disk usage, topics, held pulls, uptime, version.
    Stats {
        /// One JSON object per broker.
        #[arg(long)]
        json: bool,
    },
    /// Settings that can change while brokers run: show or change them (on every broker,
    /// masters and slaves, or --broker's). A change lasts until the broker restarts: put
    /// it in the configuration file too.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Each live setting and its value, per broker.
    Get {
        /// Only this broker (its name; all its ids).
        #[arg(long)]
        broker: Option<String>,
        /// One JSON object per broker.
        #[arg(long)]
        json: bool,
    },
    /// Change one: auto_create_topic, default_topic_queues, max_message_size,
    /// send_queue_wait_ms or slave_ack_timeout_ms.
    Set {
        name: String,
        value: String,
        /// Only this broker (its name; all its ids).
        #[arg(long)]
        broker: Option<String>,
        /// One JSON object per broker.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: BrokerCmd, client: ClientInstance) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        BrokerCmd::Stats { json } => stats(&admin, json).await,
        BrokerCmd::Config {
            cmd: ConfigCmd::Get { broker, json },
        } => {
            let rows = admin.broker_config(broker.as_deref()).await?;
            print_settings(&rows, json);
            Ok(())
        }
        BrokerCmd::Config {
            cmd:
                ConfigCmd::Set {
                    name,
                    value,
                    broker,
                    json,
                },
        } => {
            let rows = admin
                .set_broker_config(broker.as_deref(), &name, &value)
                .await?;
            print_settings(&rows, json);
            Ok(())
        }
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
            "VERSION",
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
                "started_at_ms": s.started_at_ms,
                "version": s.version,
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
            s.version_or_unknown().to_owned(),
        ]);
    }
    if !json {
        output::table(&table);
    }
    Ok(())
}

fn print_settings(rows: &[((String, u64, String), BrokerSettings)], json: bool) {
    let mut table = vec![
        ["BROKER", "ID", "ADDRESS", "SETTING", "VALUE"]
            .map(String::from)
            .to_vec(),
    ];
    for ((name, id, addr), s) in rows {
        if json {
            let settings: serde_json::Map<String, serde_json::Value> = s
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let v = serde_json::json!({
                "broker": name,
                "id": id,
                "addr": addr,
                "settings": settings,
            });
            println!("{v}");
            continue;
        }
        for (k, v) in &s.settings {
            table.push(vec![
                name.clone(),
                id.to_string(),
                addr.clone(),
                k.clone(),
                v.clone(),
            ]);
        }
    }
    if !json {
        output::table(&table);
    }
}
