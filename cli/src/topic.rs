//! `weir topic`: create, list, route, stats, update, delete.

use anyhow::bail;
use clap::Subcommand;
use weir_client::{Admin, ClientInstance, TopicUpdate};
use weir_protocol::route::{TopicConfig, perm};

use crate::output;

#[derive(Subcommand, Debug)]
pub enum TopicCmd {
    /// Create (or update) a topic on every master broker.
    Create {
        topic: String,
        #[arg(long, default_value_t = 8)]
        queues: u32,
    },
    /// Every topic the name servers route.
    List,
    /// Which brokers serve a topic, with their queues.
    Route { topic: String },
    /// Per queue: min and max offsets.
    Stats { topic: String },
    /// Change a topic's permission or queue count on every master broker that has it.
    /// Fewer queues: no new message goes to the queues past N at once, but they stay
    /// readable while they hold unconsumed messages (run it again once consumers drained
    /// them to drop them).
    Update {
        topic: String,
        /// r (read only: no sends), w (write only: no pulls) or rw.
        #[arg(long, value_parser = parse_perm)]
        perm: Option<u8>,
        /// Read and write queues per broker.
        #[arg(long)]
        queues: Option<u32>,
        /// One JSON object per broker.
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic on every master broker: its queues and every group's offsets on it;
    /// the name servers stop routing it at once.
    Delete {
        topic: String,
        /// One JSON object per broker.
        #[arg(long)]
        json: bool,
    },
}

fn parse_perm(s: &str) -> Result<u8, String> {
    match s {
        "r" => Ok(perm::READ),
        "w" => Ok(perm::WRITE),
        "rw" | "wr" => Ok(perm::READ_WRITE),
        _ => Err(format!("{s:?} is not r, w or rw")),
    }
}

/// "rw", "r-", "-w" or "--".
pub fn perm_text(p: u8) -> &'static str {
    perm::describe(p)
}

fn config_json(broker: &str, c: &TopicConfig) -> serde_json::Value {
    serde_json::json!({
        "broker": broker,
        "topic": c.name,
        "read_queues": c.read_queues,
        "write_queues": c.write_queues,
        "perm": perm_text(c.perm),
    })
}

pub async fn run(cmd: TopicCmd, client: ClientInstance) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        TopicCmd::Create { topic, queues } => {
            if queues == 0 {
                bail!("--queues must be at least 1");
            }
            let brokers = admin.create_topic(&topic, queues).await?;
            println!(
                "created {topic} with {queues} queues on {}",
                brokers.join(", ")
            );
        }
        TopicCmd::List => {
            for t in admin.topics().await? {
                println!("{t}");
            }
        }
        TopicCmd::Route { topic } => route(&admin, &topic).await?,
        TopicCmd::Stats { topic } => {
            let mut rows = vec![vec![
                "BROKER".into(),
                "QUEUE".into(),
                "MIN".into(),
                "MAX".into(),
            ]];
            for (broker, stats) in admin.topic_stats(&topic).await? {
                for (q, o) in stats.queues.iter().enumerate() {
                    rows.push(vec![
                        broker.clone(),
                        q.to_string(),
                        o.min.to_string(),
                        o.max.to_string(),
                    ]);
                }
            }
            output::table(&rows);
        }
        TopicCmd::Update {
            topic,
            perm,
            queues,
            json,
        } => {
            if perm.is_none() && queues.is_none() {
                bail!("nothing to change: give --perm, --queues or both");
            }
            if queues == Some(0) {
                bail!("--queues must be at least 1");
            }
            let done = admin
                .update_topic(&topic, TopicUpdate { perm, queues })
                .await?;
            for (broker, c) in &done {
                if json {
                    println!("{}", config_json(broker, c));
                    continue;
                }
                println!(
                    "updated {topic} on {broker}: {} read / {} write queues, perm {}",
                    c.read_queues,
                    c.write_queues,
                    perm_text(c.perm)
                );
                if let Some(n) = queues
                    && c.read_queues > n
                {
                    println!(
                        "  queues {n}..{} of {broker} still hold unconsumed messages: they stay readable (no new sends); run this again once they are consumed",
                        c.read_queues - 1
                    );
                }
            }
        }
        TopicCmd::Delete { topic, json } => {
            let brokers = admin.delete_topic(&topic).await?;
            if json {
                for b in &brokers {
                    println!(
                        "{}",
                        serde_json::json!({"broker": b, "topic": topic, "deleted": true})
                    );
                }
            } else {
                println!("deleted {topic} on {}", brokers.join(", "));
            }
        }
    }
    Ok(())
}

async fn route(admin: &Admin, topic: &str) -> anyhow::Result<()> {
    let route = admin.route(topic).await?;
    let mut rows = vec![vec![
        "BROKER".into(),
        "READ".into(),
        "WRITE".into(),
        "PERM".into(),
        "ADDRESSES".into(),
    ]];
    for q in &route.queues {
        let addrs = route
            .brokers
            .iter()
            .find(|b| b.broker_name == q.broker_name)
            .map(|b| {
                b.addrs
                    .iter()
                    .map(|(id, a)| format!("{id}={a}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        rows.push(vec![
            q.broker_name.clone(),
            q.read_queues.to_string(),
            q.write_queues.to_string(),
            perm_text(q.perm).into(),
            addrs,
        ]);
    }
    output::table(&rows);
    Ok(())
}
