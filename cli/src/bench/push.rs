//! `weir bench consume --members N`: N push consumers of one group (each its own client,
//! so each a distinct member sharing the topic's queues) with listeners that do nothing,
//! from the first offsets (or the group's committed ones), until the backlog is drained.
//!
//! The backlog is fixed at the start: per queue, from where the group starts to the end
//! the queue has then. It is drained when the group's committed offset of every queue
//! reaches that end (a push consumer commits the smallest offset still in flight, so
//! everything below it was consumed); the run then waits for a second without a delivery
//! (stragglers: a queue moved to another member before its progress was committed is
//! partly delivered twice) and stops every member. Rates are over the time until the last
//! delivery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::task::JoinSet;
use weir_client::{
    Admin, ClientInstance, ConsumeConcurrentlyStatus, ConsumeFrom, Listener, MessageExt,
    OnFilterFailure, PushConsumer, PushConsumerConfig,
};

use super::filter_side::FilterFailures;
use super::{ConsumeArgs, Rate, TICK, grouped, per_sec, progress_bar, round2};

/// Quiet time after the backlog is drained before the members stop.
const SETTLE: Duration = Duration::from_secs(1);
/// How often members commit progress (what tells that the backlog is drained).
const PERSIST: Duration = Duration::from_millis(100);

/// What one member's listener records.
#[derive(Default)]
struct MemberCounters {
    bytes: AtomicU64,
}

/// Queue (broker, queue id) → offset.
type Offsets = BTreeMap<(String, u32), u64>;

/// The group's committed offsets of `topic`'s queues.
async fn committed(admin: &Admin, group: &str, topic: &str) -> anyhow::Result<Offsets> {
    Ok(admin
        .group_progress(group)
        .await
        .with_context(|| format!("progress of group {group}"))?
        .into_iter()
        .filter(|(_, q)| q.topic == topic)
        .map(|(b, q)| ((b, q.queue_id), q.consumer_offset))
        .collect())
}

/// Messages of the backlog the group has consumed: per queue, its committed offset
/// (within the backlog) past its start.
fn done_of(starts: &Offsets, ends: &Offsets, now: &Offsets) -> u64 {
    starts
        .iter()
        .map(|(q, &start)| {
            let end = ends.get(q).copied().unwrap_or(start);
            now.get(q)
                .copied()
                .unwrap_or(start)
                .clamp(start, end.max(start))
                - start
        })
        .sum()
}

pub(super) async fn consume(args: ConsumeArgs, client: ClientInstance) -> anyhow::Result<()> {
    let members = args.members.unwrap_or(1) as usize;
    let group = super::bench_group(&args.group);
    let admin = Admin::new(client.clone());
    let stats = admin
        .topic_stats(&args.topic)
        .await
        .map_err(|e| super::topic_lookup_error(&args.topic, e))?;
    let before = committed(&admin, &group, &args.topic).await?;
    let (mut starts, mut ends) = (Offsets::new(), Offsets::new());
    for (broker, s) in &stats {
        for (q, o) in s.queues.iter().enumerate() {
            let key = (broker.clone(), q as u32);
            let start = before
                .get(&key)
                .copied()
                .unwrap_or(o.min)
                .clamp(o.min, o.max);
            starts.insert(key.clone(), start);
            ends.insert(key, o.max);
        }
    }
    if starts.is_empty() {
        bail!("topic {} has no readable queue", args.topic);
    }
    let backlog = done_of(&starts, &ends, &ends);
    if backlog == 0 {
        bail!(
            "group {group} has nothing to consume of topic {} (weir bench produce {} writes some)",
            args.topic,
            args.topic
        );
    }

    let started = Instant::now();
    // Nanoseconds after the start of the last delivery, to any member.
    let last_ns = Arc::new(AtomicU64::new(0));
    // Pulls the group's filter failed, any member's.
    let failures = Arc::new(FilterFailures::default());
    let mut starting = JoinSet::new();
    for i in 0..members {
        let mut config = PushConsumerConfig::new(group.clone());
        config.consume_from = ConsumeFrom::FirstOffset;
        config.consume_thread_min = args.threads as usize;
        config.consume_thread_max = args.threads as usize;
        config.consume_message_batch_max_size = args.consume_batch as usize;
        config.pull_batch_size = args.batch;
        config.persist_offset_interval = PERSIST;
        config.on_filter_failure = {
            let failures = Arc::clone(&failures);
            OnFilterFailure::new(move |f| failures.record(f))
        };
        let counters = Arc::new(MemberCounters::default());
        let (c, last) = (Arc::clone(&counters), Arc::clone(&last_ns));
        let listener = Listener::concurrently(move |msgs: &[MessageExt], _: &mut _| {
            let bytes: usize = msgs.iter().map(|m| m.body.len()).sum();
            c.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            let at = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            last.fetch_max(at, Ordering::Relaxed);
            ConsumeConcurrentlyStatus::ConsumeSuccess
        });
        // Each its own client: a distinct member of the group.
        let member_client = ClientInstance::new(client.config().clone())?;
        let subs = vec![(args.topic.clone(), "*".to_owned())];
        starting.spawn(async move {
            let c = PushConsumer::start(member_client, config, subs, listener).await;
            (i, c, counters)
        });
    }
    let mut consumers: Vec<Option<(PushConsumer, Arc<MemberCounters>)>> =
        (0..members).map(|_| None).collect();
    let mut failure = None;
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok((i, Ok(c), counters)) => consumers[i] = Some((c, counters)),
            Ok((_, Err(e), _)) => {
                failure.get_or_insert(anyhow::Error::new(e).context("starting a push consumer"));
            }
            Err(e) => {
                failure.get_or_insert(anyhow::Error::new(e).context("starting a push consumer"));
            }
        }
    }
    let consumers: Vec<(PushConsumer, Arc<MemberCounters>)> =
        consumers.into_iter().flatten().collect();
    if let Some(e) = failure {
        for (c, _) in consumers {
            let _ = c.shutdown().await;
        }
        return Err(e);
    }

    let bar = progress_bar(Some(backlog));
    let mut rate = Rate::new();
    let idle = (args.idle_exit > 0).then(|| Duration::from_secs(args.idle_exit));
    let (mut drained_at, mut interrupted, mut idled) = (None::<Instant>, false, false);
    let mut progress = Offsets::new();
    let (mut last_seen, mut last_change) = (0u64, Instant::now());
    let mut tick = tokio::time::interval(TICK);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => {
                interrupted = true;
                break;
            }
        }
        let consumed: u64 = consumers.iter().map(|(c, _)| c.stats().consumed).sum();
        let r = rate.update(consumed.min(backlog));
        bar.set_position(consumed.min(backlog));
        bar.set_message(format!(
            "{} msgs  {} msgs/s",
            grouped(consumed.min(backlog)),
            grouped(r as u64)
        ));
        if consumed != last_seen {
            (last_seen, last_change) = (consumed, Instant::now());
        }
        if drained_at.is_none() && consumed >= backlog {
            // Every message delivered at least once; drained when committed.
            // A failed look-up is tried again at the next tick.
            if let Ok(p) = committed(&admin, &group, &args.topic).await {
                progress = p;
                if done_of(&starts, &ends, &progress) >= backlog {
                    drained_at = Some(Instant::now());
                }
            }
        }
        if drained_at.is_some() && last_change.elapsed() >= SETTLE {
            break;
        }
        if drained_at.is_none() && idle.is_some_and(|d| last_change.elapsed() >= d) {
            idled = true;
            break;
        }
    }
    bar.finish_and_clear();
    let elapsed = Duration::from_nanos(last_ns.load(Ordering::Relaxed)).as_secs_f64();
    let mut rows = Vec::with_capacity(consumers.len());
    for (c, counters) in &consumers {
        rows.push((
            c.client_id().to_owned(),
            c.stats(),
            counters.bytes.load(Ordering::Relaxed),
            c.assigned_queues()
                .iter()
                .filter(|q| q.topic == args.topic)
                .count(),
        ));
    }
    let mut stopping = JoinSet::new();
    for (c, _) in consumers {
        stopping.spawn(c.shutdown());
    }
    while let Some(r) = stopping.join_next().await {
        if let Ok(Err(e)) = r {
            eprintln!("weir: a member did not stop cleanly: {e}");
        }
    }
    if drained_at.is_none() {
        progress = committed(&admin, &group, &args.topic).await?;
    }
    let messages = done_of(&starts, &ends, &progress);
    let consumed: u64 = rows.iter().map(|r| r.1.consumed).sum();
    let failed: u64 = rows.iter().map(|r| r.1.failed).sum();
    let bytes: u64 = rows.iter().map(|r| r.2).sum();
    let redelivered = consumed.saturating_sub(messages);
    if consumed == 0 && !interrupted && failures.count() == 0 {
        bail!(
            "no message of topic {} arrived within {} s",
            args.topic,
            args.idle_exit
        );
    }
    if interrupted {
        eprintln!("weir: interrupted; the summary covers what was consumed until then");
    } else if idled {
        eprintln!(
            "weir: stopped after {} s with nothing new: {} of the {} messages of the backlog committed",
            args.idle_exit,
            grouped(messages),
            grouped(backlog)
        );
    }
    let msgs_per_sec = per_sec(messages, elapsed);
    let mb_per_sec = per_sec(bytes, elapsed) / 1e6;
    if args.json {
        let per_member: Vec<serde_json::Value> = rows
            .iter()
            .map(|(id, s, b, q)| {
                serde_json::json!({
                    "client_id": id,
                    "consumed": s.consumed,
                    "failed": s.failed,
                    "bytes": b,
                    "queues": q,
                })
            })
            .collect();
        let v = serde_json::json!({
            "mode": "consume",
            "consumer": "push",
            "topic": args.topic,
            "group": group,
            "queues": starts.len(),
            "members": rows.len(),
            "threads": args.threads,
            "consume_batch": args.consume_batch,
            "batch": args.batch,
            "backlog": backlog,
            "messages": messages,
            "consumed": consumed,
            "redelivered": redelivered,
            "failed": failed,
            "bytes": bytes,
            "elapsed_secs": (elapsed * 1000.0).round() / 1000.0,
            "msgs_per_sec": round2(msgs_per_sec),
            "mb_per_sec": round2(mb_per_sec),
            "drained": drained_at.is_some(),
            "interrupted": interrupted,
            "per_member": per_member,
            "filter_failures": failures.json(),
        });
        println!("{v}");
    } else {
        println!(
            "consumed {} messages ({} bytes) of {} in {:.2} s ({} queues, {} push consumer{} of group {group}, {} threads each, pulls of up to {})",
            grouped(messages),
            grouped(bytes),
            args.topic,
            elapsed,
            starts.len(),
            rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            args.threads,
            args.batch
        );
        println!(
            "throughput: {} msgs/s, {:.2} MB/s",
            grouped(msgs_per_sec.round() as u64),
            mb_per_sec
        );
        for (i, (id, s, _, q)) in rows.iter().enumerate() {
            println!(
                "member {} ({id}): {} messages, {} queues at the end",
                i + 1,
                grouped(s.consumed),
                q
            );
        }
        if redelivered > 0 {
            println!(
                "delivered twice: {} (queues moved between members before their progress was committed)",
                grouped(redelivered)
            );
        }
        if let Some(line) = failures.text() {
            println!("{line}");
        }
    }
    failures.outcome()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_within_the_backlog() {
        let q = |b: &str, i| (b.to_owned(), i);
        let starts = Offsets::from([(q("a", 0), 10), (q("a", 1), 0)]);
        let ends = Offsets::from([(q("a", 0), 20), (q("a", 1), 5)]);
        assert_eq!(done_of(&starts, &ends, &ends), 15);
        // Nothing committed yet on queue 1; queue 0 past its start, and beyond the end.
        assert_eq!(
            done_of(&starts, &ends, &Offsets::from([(q("a", 0), 15)])),
            5
        );
        assert_eq!(
            done_of(&starts, &ends, &Offsets::from([(q("a", 0), 99)])),
            10
        );
        assert_eq!(done_of(&starts, &ends, &Offsets::from([(q("a", 0), 3)])), 0);
    }
}
