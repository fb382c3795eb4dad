//! `weir group`: list, progress, members, reset-offset, delete.

use anyhow::bail;
use clap::{ArgGroup, Subcommand};
use weir_client::{Admin, ClientInstance, MessageModel, ResetTarget};

use crate::output;

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Every consumer group a master broker knows (live members or committed offsets):
    /// model, members, subscribed topics, queues with offsets, lag.
    List {
        /// Only groups whose name contains this.
        #[arg(long, default_value = "")]
        contains: String,
        /// One JSON object per group.
        #[arg(long)]
        json: bool,
    },
    /// Per queue: broker offset, consumer offset, lag (the group's retry topic too).
    Progress { group: String },
    /// The group's live members, as each broker knows them from their heartbeats.
    Members {
        group: String,
        /// One JSON object per member and broker.
        #[arg(long)]
        json: bool,
    },
    /// Move the group's offsets on a topic (every queue, every master broker): to the
    /// first message stored at or after a time, or to the queues' start or end. Stop the
    /// group's consumers first: a live consumer's next commit would undo the reset.
    #[command(group(ArgGroup::new("target").required(true).args(["to_time", "to"])))]
    ResetOffset {
        group: String,
        #[arg(long)]
        topic: String,
        /// A time: milliseconds since the epoch, or RFC 3339 (`2026-01-02T03:04:05Z`,
        /// `2026-01-02T04:04:05+01:00`).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        to_time: Option<i64>,
        /// earliest (each queue's first stored message) or latest (its end: skip all).
        #[arg(long, value_enum)]
        to: Option<Edge>,
        /// Reset even while the group has live members (they may commit over it).
        #[arg(long)]
        force: bool,
        /// One JSON object per broker and queue.
        #[arg(long)]
        json: bool,
    },
    /// Forget a group on every master broker: its committed offsets and its retry topic
    /// (its dead-letter topic stays). Refused while it has live members.
    Delete {
        group: String,
        /// One JSON object per broker.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Edge {
    Earliest,
    Latest,
}

pub async fn run(cmd: GroupCmd, client: ClientInstance) -> anyhow::Result<()> {
    match cmd {
        GroupCmd::List { contains, json } => list(&contains, json, client).await,
        GroupCmd::Progress { group } => progress(&group, client).await,
        GroupCmd::Members { group, json } => members(&group, json, client).await,
        GroupCmd::ResetOffset {
            group,
            topic,
            to_time,
            to,
            force,
            json,
        } => {
            let target = match (to_time, to) {
                (Some(t), _) => ResetTarget::Timestamp(t),
                (None, Some(Edge::Earliest)) => ResetTarget::Earliest,
                (None, Some(Edge::Latest)) => ResetTarget::Latest,
                (None, None) => bail!("give --to-time or --to"),
            };
            let done = Admin::new(client)
                .reset_offset(&group, &topic, target, force)
                .await?;
            let mut rows = vec![vec![
                "BROKER".into(),
                "QUEUE".into(),
                "OLD".into(),
                "NEW".into(),
            ]];
            for (broker, r) in &done {
                for q in &r.queues {
                    if json {
                        let v = serde_json::json!({
                            "broker": broker,
                            "group": group,
                            "topic": topic,
                            "queue": q.queue_id,
                            "old": q.old,
                            "new": q.new,
                        });
                        println!("{v}");
                    } else {
                        rows.push(vec![
                            broker.clone(),
                            q.queue_id.to_string(),
                            q.old.map_or_else(|| "-".into(), |o| o.to_string()),
                            q.new.to_string(),
                        ]);
                    }
                }
            }
            if !json {
                output::table(&rows);
            }
            Ok(())
        }
        GroupCmd::Delete { group, json } => {
            let done = Admin::new(client).delete_group(&group).await?;
            for (broker, d) in &done {
                if json {
                    let v = serde_json::json!({
                        "broker": broker,
                        "group": group,
                        "offsets_removed": d.offsets_removed,
                        "retry_topic_deleted": d.retry_topic_deleted,
                        "filters_removed": d.filters_removed,
                    });
                    println!("{v}");
                } else {
                    println!(
                        "deleted group {group} on {broker}: {} offset(s){}, {} filter(s)",
                        d.offsets_removed,
                        if d.retry_topic_deleted {
                            ", retry topic"
                        } else {
                            ""
                        },
                        d.filters_removed
                    );
                }
            }
            Ok(())
        }
    }
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian; Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch, or RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`).
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        format!("{s:?} is neither milliseconds since the epoch nor RFC 3339 (2026-01-02T03:04:05Z)")
    };
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = s.get(r).ok_or_else(bad)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let first3: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = first3.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let part = |r: std::ops::Range<usize>| -> Result<i64, String> {
                rest.get(r)
                    .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)
            };
            let (oh, om) = (part(1..3)?, part(4..6)?);
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return Err(bad()),
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60;
    Ok(secs * 1000 + millis)
}

async fn progress(group: &str, client: ClientInstance) -> anyhow::Result<()> {
    let rows = Admin::new(client).group_progress(group).await?;
    if rows.is_empty() {
        bail!("group {group} has no committed offset on any broker");
    }
    let mut table = vec![vec![
        "BROKER".into(),
        "TOPIC".into(),
        "QUEUE".into(),
        "BROKER_OFFSET".into(),
        "CONSUMER_OFFSET".into(),
        "LAG".into(),
    ]];
    let mut total = 0u64;
    for (broker, q) in rows {
        let lag = q.broker_offset.saturating_sub(q.consumer_offset);
        total += lag;
        table.push(vec![
            broker,
            q.topic,
            q.queue_id.to_string(),
            q.broker_offset.to_string(),
            q.consumer_offset.to_string(),
            lag.to_string(),
        ]);
    }
    output::table(&table);
    println!("total lag: {total}");
    Ok(())
}

fn model_name(m: &MessageModel) -> &'static str {
    match m {
        MessageModel::Clustering => "clustering",
        MessageModel::Broadcasting => "broadcasting",
    }
}

async fn members(group: &str, json: bool, client: ClientInstance) -> anyhow::Result<()> {
    let members = Admin::new(client).group_connections(group).await?;
    if members.is_empty() {
        bail!("group {group} has no member on any broker");
    }
    if json {
        for (broker, m) in members {
            let subs: Vec<serde_json::Value> = m
                .subscriptions
                .iter()
                .map(|(t, e)| serde_json::json!({"topic": t, "expr": e}))
                .collect();
            let v = serde_json::json!({
                "broker": broker,
                "client_id": m.client_id,
                "addr": m.addr,
                "model": model_name(&m.model),
                "subscriptions": subs,
                "last_heartbeat_ms_ago": m.last_heartbeat_ms_ago,
            });
            println!("{v}");
        }
        return Ok(());
    }
    let mut rows = vec![vec![
        "BROKER".into(),
        "CLIENT_ID".into(),
        "ADDRESS".into(),
        "MODEL".into(),
        "SUBSCRIPTIONS".into(),
        "LAST_HEARTBEAT".into(),
    ]];
    for (broker, m) in members {
        let subs: Vec<String> = m
            .subscriptions
            .iter()
            .map(|(t, e)| format!("{t}({e})"))
            .collect();
        rows.push(vec![
            broker,
            m.client_id,
            m.addr,
            model_name(&m.model).to_uppercase(),
            subs.join(","),
            format!("{} ms ago", m.last_heartbeat_ms_ago),
        ]);
    }
    output::table(&rows);
    Ok(())
}

async fn list(contains: &str, json: bool, client: ClientInstance) -> anyhow::Result<()> {
    let list = Admin::new(client).group_list(contains, 0).await?;
    let model = |m: &Option<MessageModel>| match m {
        Some(MessageModel::Clustering) => "clustering",
        Some(MessageModel::Broadcasting) => "broadcasting",
        None => "-",
    };
    let mut rows = vec![vec![
        "GROUP".into(),
        "MODEL".into(),
        "MEMBERS".into(),
        "QUEUES".into(),
        "LAG".into(),
        "SUBSCRIPTIONS".into(),
    ]];
    for g in &list.groups {
        if json {
            let v = serde_json::json!({
                "group": g.group,
                "model": model(&g.model),
                "members": g.members,
                "queues": g.queues,
                "lag": g.lag,
                "subscriptions": g.subscriptions,
                "brokers": g.brokers,
            });
            println!("{v}");
        } else {
            let topics: Vec<&str> = g.subscriptions.iter().map(String::as_str).collect();
            rows.push(vec![
                g.group.clone(),
                model(&g.model).into(),
                g.members.to_string(),
                g.queues.to_string(),
                g.lag.to_string(),
                if topics.is_empty() {
                    "-".into()
                } else {
                    topics.join(",")
                },
            ]);
        }
    }
    if !json {
        output::table(&rows);
    }
    for (broker, e) in &list.failed {
        eprintln!("broker {broker} did not list its groups: {e}");
    }
    if list.truncated {
        eprintln!("a broker knows more groups than it lists at once: narrow with --contains");
    }
    if !list.failed.is_empty() {
        bail!("{} broker(s) did not answer", list.failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20.5Z"), Ok(1_700_000_000_500));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.123+01:00"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in [
            "yesterday",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-13-14T22:13:20Z",
            "2023-11-14T22:13:20+0100",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }
}
