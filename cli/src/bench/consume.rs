//! `weir bench consume`: one reader per queue, in parallel, from the first offsets;
//! throughput and pull latency, with a filter on the brokers or in this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_client::{
    ClientError, ClientInstance, MessageQueue, PullConsumer, PullStatus, ReceivedMessage,
};

use crate::filter::LocalFilter;

use super::filter_side::{FilterFailures, FilterSide, server_filter};
use super::{
    Histogram, Rate, TICK, bench_group, grouped, per_sec, progress_bar, round2, topic_lookup_error,
};

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[arg(default_value = "BenchTopic")]
    pub(super) topic: String,
    /// Consumer group [default: a new one per run, weir-bench-PID-MILLIS]. When the group
    /// has a filter for the topic (`weir filter upload`), the brokers apply it: the summary
    /// then also reports offsets read and messages delivered (kept).
    #[arg(long)]
    pub(super) group: Option<String>,
    /// Run this filter component (.wasm) in this process over every pulled batch, counting
    /// only the messages it keeps as delivered: a client-side filter, to compare with the
    /// same filter uploaded for --group (server-side) on delivered msgs/s.
    #[arg(long, value_name = "FILE.wasm")]
    pub(super) local_filter: Option<PathBuf>,
    /// A parameter `K=V` for the local filter's `init` (repeatable; order kept).
    #[arg(long = "param", value_parser = crate::parse_prop, requires = "local_filter")]
    pub(super) params: Vec<(String, String)>,
    /// Stop after this many messages (delivered ones: with a filter, those it keeps).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) count: Option<u64>,
    /// Stop after this many seconds with no new message (0: never).
    #[arg(long, default_value_t = 3)]
    pub(super) idle_exit: u64,
    /// Most messages per pull (brokers cap it at 1024).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(super) batch: u32,
    /// Commit, for the group, the offset where each queue's reader stopped.
    #[arg(long)]
    pub(super) commit: bool,
    /// Consume with this many push consumers of the group instead (each its own client, so
    /// a distinct member sharing the queues), with a listener that does nothing, from the
    /// first offsets (or the group's committed ones) until the backlog is drained: every
    /// queue's committed offset reaches the end it had at the start.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256),
          conflicts_with_all = ["local_filter", "count", "commit"])]
    pub(super) members: Option<u32>,
    /// With --members: listener threads per member.
    #[arg(long, default_value_t = 20, requires = "members",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) threads: u32,
    /// With --members: messages per listener call.
    #[arg(long, default_value_t = 1, requires = "members",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(super) consume_batch: u32,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub(super) json: bool,
}

// ---------------------------------------------------------------------------------------
// Consume

/// How long a caught-up reader's pull waits at the broker for new messages.
const HOLD: Duration = Duration::from_millis(500);
/// A reader's pause after the group's filter failed its pull.
const FILTER_RETRY: Duration = Duration::from_millis(500);

struct ConsumeShared {
    /// Messages counted (never more than the limit): delivered ones, i.e. with a filter,
    /// the ones it kept.
    consumed: AtomicU64,
    /// With a filter: messages the brokers returned (before a local filter).
    pulled: AtomicU64,
    /// With a filter: queue offsets the reads moved past (what the brokers examined).
    scanned: AtomicU64,
    /// When the last counted message arrived (with a filter: when a read last moved an
    /// offset), nanoseconds after the start.
    last_arrival_ns: AtomicU64,
    stop: watch::Sender<bool>,
}

impl ConsumeShared {
    /// Of `n` messages just pulled, how many count (the rest are past the limit).
    fn count(&self, n: u64, limit: Option<u64>) -> u64 {
        let prev = self.consumed.fetch_add(n, Ordering::Relaxed);
        match limit {
            None => n,
            Some(limit) if prev >= limit => 0,
            Some(limit) => n.min(limit - prev),
        }
    }

    fn limit_reached(&self, limit: Option<u64>) -> bool {
        limit.is_some_and(|l| self.consumed.load(Ordering::Relaxed) >= l)
    }
}

/// What every queue's reader shares.
struct Reader {
    consumer: PullConsumer,
    batch: u32,
    shared: ConsumeShared,
    limit: Option<u64>,
    started: Instant,
    /// `--local-filter`: run over every pulled batch in this process.
    local: Option<LocalFilter>,
    /// A filter applies (local, or the group's on the brokers): count pulled messages and
    /// offsets read as well, and a read that moves the offset without delivering anything
    /// is progress.
    filtered: bool,
    /// Pulls the group's filter failed (reported in the summary; the run then fails).
    failures: FilterFailures,
}

struct ConsumeTaskStats {
    latency: Histogram,
    /// Time of the local filter's calls, one per pulled batch.
    filter_latency: Histogram,
    pulls: u64,
    bytes: u64,
    queue: MessageQueue,
    next_offset: u64,
}

/// One pull: what the brokers returned and what of it is delivered.
struct Pulled {
    status: PullStatus,
    next_offset: u64,
    pulled: usize,
    delivered: Vec<ReceivedMessage>,
    took: Duration,
}

/// Pulls raw records and keeps what the local filter keeps.
async fn pull_and_filter(
    r: &Reader,
    filter: &LocalFilter,
    mq: &MessageQueue,
    offset: u64,
    hold: Option<Duration>,
    stop: &mut watch::Receiver<bool>,
    filter_latency: &mut Histogram,
) -> anyhow::Result<Option<Pulled>> {
    let began = Instant::now();
    let out = tokio::select! {
        p = r.consumer.pull_raw(mq, "*", offset, r.batch, hold, None) => p.with_context(|| {
            format!("pulling {} queue {}/{} at offset {offset}", mq.topic, mq.broker_name, mq.queue_id)
        })?,
        _ = stop.changed() => return Ok(None),
    };
    let took = began.elapsed();
    let pulled = out.records.len();
    let mut delivered = Vec::new();
    if pulled > 0 {
        let filter_began = Instant::now();
        // Bytes: the records go to the filter worker and back without a copy.
        let verdicts = filter
            .run(
                &mq.topic,
                mq.queue_id,
                r.consumer.group(),
                out.records.clone(),
            )
            .await
            .with_context(|| {
                format!(
                    "the local filter failed on {} queue {}/{} at offset {offset}",
                    mq.topic, mq.broker_name, mq.queue_id
                )
            })?;
        filter_latency.record(filter_began.elapsed());
        for (rec, keep) in out.records.iter().zip(verdicts) {
            if keep {
                delivered.push(ReceivedMessage::decode(rec, &mq.broker_name)?);
            }
        }
    }
    Ok(Some(Pulled {
        status: out.status,
        next_offset: out.next_offset,
        pulled,
        delivered,
        took,
    }))
}

async fn consume_task(
    r: Arc<Reader>,
    mq: MessageQueue,
    mut offset: u64,
) -> anyhow::Result<ConsumeTaskStats> {
    let mut stats = ConsumeTaskStats {
        latency: Histogram::new(),
        filter_latency: Histogram::new(),
        pulls: 0,
        bytes: 0,
        queue: mq.clone(),
        next_offset: offset,
    };
    let shared = &r.shared;
    let mut stop = shared.stop.subscribe();
    let mut caught_up = false;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let hold = caught_up.then_some(HOLD);
        let out = match &r.local {
            Some(filter) => {
                let pulled = pull_and_filter(
                    &r,
                    filter,
                    &mq,
                    offset,
                    hold,
                    &mut stop,
                    &mut stats.filter_latency,
                )
                .await?;
                match pulled {
                    Some(p) => p,
                    None => break,
                }
            }
            None => {
                let began = Instant::now();
                let out = tokio::select! {
                    p = r.consumer.pull(&mq, "*", offset, r.batch, hold, None) => p,
                    _ = stop.changed() => break,
                };
                let out = match out {
                    Err(ClientError::FilterFailed(f)) => {
                        // Counted for the summary; a new version may come meanwhile.
                        r.failures.record(&f);
                        tokio::select! {
                            _ = tokio::time::sleep(FILTER_RETRY) => continue,
                            _ = stop.changed() => break,
                        }
                    }
                    out => out.with_context(|| {
                        format!(
                            "pulling {} queue {}/{} at offset {offset}",
                            mq.topic, mq.broker_name, mq.queue_id
                        )
                    })?,
                };
                Pulled {
                    status: out.status,
                    next_offset: out.next_offset,
                    pulled: out.messages.len(),
                    delivered: out.messages,
                    took: began.elapsed(),
                }
            }
        };
        let advanced = out.next_offset.saturating_sub(offset);
        offset = out.next_offset;
        stats.next_offset = offset;
        caught_up = out.status == PullStatus::NoNewMessage;
        if r.filtered {
            if advanced == 0 && out.pulled == 0 {
                continue;
            }
            shared.scanned.fetch_add(advanced, Ordering::Relaxed);
            shared
                .pulled
                .fetch_add(out.pulled as u64, Ordering::Relaxed);
        } else if out.delivered.is_empty() {
            continue;
        }
        stats.latency.record(out.took);
        stats.pulls += 1;
        let before_limit = !shared.limit_reached(r.limit);
        let counted = shared.count(out.delivered.len() as u64, r.limit) as usize;
        stats.bytes += out.delivered[..counted]
            .iter()
            .map(|m| m.body.len() as u64)
            .sum::<u64>();
        if counted > 0 || (r.filtered && before_limit) {
            let at = u64::try_from(r.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            shared.last_arrival_ns.fetch_max(at, Ordering::Relaxed);
        }
        if counted < out.delivered.len() {
            // The limit is reached: everyone stops.
            shared.stop.send_replace(true);
            break;
        }
        if shared.limit_reached(r.limit) {
            shared.stop.send_replace(true);
            break;
        }
    }
    Ok(stats)
}

pub(super) async fn consume(args: ConsumeArgs, client: ClientInstance) -> anyhow::Result<()> {
    let group = bench_group(&args.group);
    let consumer = PullConsumer::new(group.clone(), client.clone());
    let queues = consumer
        .queues(&args.topic)
        .await
        .map_err(|e| topic_lookup_error(&args.topic, e))?;
    if queues.is_empty() {
        bail!("topic {} has no readable queue", args.topic);
    }
    let mut starts = Vec::with_capacity(queues.len());
    let mut backlog = 0u64;
    for mq in &queues {
        let o = consumer.queue_offsets(mq).await.with_context(|| {
            format!(
                "offsets of {} queue {}/{}",
                mq.topic, mq.broker_name, mq.queue_id
            )
        })?;
        backlog += o.max.saturating_sub(o.min);
        starts.push(o.min);
    }
    let (local, side) = match &args.local_filter {
        Some(file) => {
            let f = crate::filter::load_local(file, args.params.clone(), None, false).await?;
            let side = FilterSide::Client {
                file: file.clone(),
                params: args.params.clone(),
                needs_body: f.needs_body(),
            };
            (Some(f), Some(side))
        }
        None => match &args.group {
            Some(g) => (None, server_filter(&client, g, &args.topic).await),
            None => (None, None),
        },
    };
    let filtered = side.is_some();
    let limit = args.count;
    let idle = (args.idle_exit > 0).then(|| Duration::from_secs(args.idle_exit));
    let (stop, _) = watch::channel(false);

    // With a filter and no --count, the bar follows the offsets read through the backlog.
    let bar_follows_reads = filtered && limit.is_none();
    let bar = progress_bar(limit.or((backlog > 0).then_some(backlog)));
    let started = Instant::now();
    let reader = Arc::new(Reader {
        consumer,
        batch: args.batch,
        shared: ConsumeShared {
            consumed: AtomicU64::new(0),
            pulled: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
            last_arrival_ns: AtomicU64::new(0),
            stop,
        },
        limit,
        started,
        local,
        filtered,
        failures: FilterFailures::default(),
    });
    let shared = &reader.shared;
    let mut tasks = JoinSet::new();
    for (mq, start) in queues.iter().zip(starts) {
        tasks.spawn(consume_task(Arc::clone(&reader), mq.clone(), start));
    }

    let mut latency = Histogram::new();
    let mut filter_latency = Histogram::new();
    let (mut pulls, mut bytes) = (0u64, 0u64);
    let mut ends = Vec::with_capacity(queues.len());
    let mut failure: Option<anyhow::Error> = None;
    let mut interrupted = false;
    let mut idled = false;
    let mut rate = Rate::new();
    let (mut last_seen, mut last_change) = (0u64, Instant::now());
    let mut tick = tokio::time::interval(TICK);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(s))) => {
                    latency.merge(&s.latency);
                    filter_latency.merge(&s.filter_latency);
                    pulls += s.pulls;
                    bytes += s.bytes;
                    ends.push((s.queue, s.next_offset));
                }
                Some(Ok(Err(e))) => {
                    shared.stop.send_replace(true);
                    failure.get_or_insert(e);
                }
                Some(Err(e)) => {
                    shared.stop.send_replace(true);
                    failure.get_or_insert(anyhow::Error::new(e).context("a pulling task failed"));
                }
            },
            _ = tick.tick() => {
                let consumed = shared.consumed.load(Ordering::Relaxed);
                let scanned = shared.scanned.load(Ordering::Relaxed);
                let shown = limit.map_or(consumed, |l| consumed.min(l));
                if bar_follows_reads {
                    let r = rate.update(scanned);
                    bar.set_position(scanned);
                    bar.set_message(format!(
                        "{} read  {} delivered  {} read/s",
                        grouped(scanned),
                        grouped(shown),
                        grouped(r as u64)
                    ));
                } else {
                    let r = rate.update(shown);
                    bar.set_position(shown);
                    bar.set_message(format!("{} msgs  {} msgs/s", grouped(shown), grouped(r as u64)));
                }
                // Progress: messages counted or, with a filter, offsets read.
                let activity = consumed + scanned;
                if activity != last_seen {
                    (last_seen, last_change) = (activity, Instant::now());
                } else if idle.is_some_and(|d| last_change.elapsed() >= d) && !idled {
                    idled = true;
                    shared.stop.send_replace(true);
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                shared.stop.send_replace(true);
            }
        }
    }
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let messages = limit.map_or(consumed, |l| consumed.min(l));
    let pulled = shared.pulled.load(Ordering::Relaxed);
    let scanned = shared.scanned.load(Ordering::Relaxed);
    let nothing = if filtered {
        scanned == 0 && pulled == 0
    } else {
        messages == 0
    };
    let failures = &reader.failures;
    if nothing && !interrupted && failures.count() == 0 {
        bail!(
            "no message of topic {} arrived within {} s (weir bench produce {} writes some)",
            args.topic,
            args.idle_exit,
            args.topic
        );
    }
    if interrupted {
        eprintln!("weir: interrupted; the summary covers what was read until then");
    } else if let Some(l) = limit
        && messages < l
    {
        eprintln!(
            "weir: stopped after {} s with nothing new: {} of the {} messages asked for",
            args.idle_exit,
            grouped(messages),
            grouped(l)
        );
    }
    if args.commit {
        for (mq, offset) in &ends {
            reader
                .consumer
                .commit_offset(mq, *offset)
                .await
                .with_context(|| {
                    format!(
                        "committing offset {offset} of {}/{}",
                        mq.broker_name, mq.queue_id
                    )
                })?;
        }
    }

    // Up to the last message counted (with a filter: the last read that moved an
    // offset): the idle wait at the end is not reading.
    let elapsed =
        Duration::from_nanos(shared.last_arrival_ns.load(Ordering::Relaxed)).as_secs_f64();
    let lat = latency.summary_ms();
    let msgs_per_sec = per_sec(messages, elapsed);
    let mb_per_sec = per_sec(bytes, elapsed) / 1e6;
    let kept_pct = if scanned > 0 {
        100.0 * messages as f64 / scanned as f64
    } else {
        0.0
    };
    if args.json {
        let mut v = serde_json::json!({
            "mode": "consume",
            "topic": args.topic,
            "group": group,
            "queues": queues.len(),
            "batch": args.batch,
            "messages": messages,
            "pulls": pulls,
            "bytes": bytes,
            "elapsed_secs": (elapsed * 1000.0).round() / 1000.0,
            "msgs_per_sec": round2(msgs_per_sec),
            "mb_per_sec": round2(mb_per_sec),
            "latency_ms": lat.json(),
            "committed": args.commit,
            "interrupted": interrupted,
        });
        if let (Some(side), Some(obj)) = (&side, v.as_object_mut()) {
            obj.insert("filter".into(), side.json());
            obj.insert("read".into(), scanned.into());
            obj.insert("pulled".into(), pulled.into());
            obj.insert("delivered".into(), messages.into());
            obj.insert(
                "read_per_sec".into(),
                round2(per_sec(scanned, elapsed)).into(),
            );
            obj.insert(
                "pulled_per_sec".into(),
                round2(per_sec(pulled, elapsed)).into(),
            );
            obj.insert("delivered_per_sec".into(), round2(msgs_per_sec).into());
            obj.insert("kept_percent".into(), round2(kept_pct).into());
            obj.insert("filter_failures".into(), failures.json());
            if reader.local.is_some() {
                obj.insert(
                    "filter_latency_ms".into(),
                    filter_latency.summary_ms().json(),
                );
            }
        }
        println!("{v}");
    } else {
        println!(
            "consumed {} messages ({} bytes) of {} in {:.2} s ({} queues, {} pulls of up to {})",
            grouped(messages),
            grouped(bytes),
            args.topic,
            elapsed,
            queues.len(),
            grouped(pulls),
            args.batch
        );
        if let Some(side) = &side {
            println!("filter: {}", side.text());
            println!(
                "queue offsets read: {} ({} /s)",
                grouped(scanned),
                grouped(per_sec(scanned, elapsed).round() as u64)
            );
            println!(
                "messages pulled: {} ({} msgs/s)",
                grouped(pulled),
                grouped(per_sec(pulled, elapsed).round() as u64)
            );
            println!(
                "messages delivered (kept): {} ({:.2} % of those read)",
                grouped(messages),
                kept_pct
            );
            println!(
                "throughput: {} delivered msgs/s, {:.2} MB/s",
                grouped(msgs_per_sec.round() as u64),
                mb_per_sec
            );
            if let Some(line) = failures.text() {
                println!("{line}");
            }
        } else {
            println!(
                "throughput: {} msgs/s, {:.2} MB/s",
                grouped(msgs_per_sec.round() as u64),
                mb_per_sec
            );
        }
        println!("pull latency ms: {}", lat.text());
        if reader.local.is_some() {
            println!(
                "local filter latency ms per batch: {}",
                filter_latency.summary_ms().text()
            );
        }
        if args.commit {
            println!("committed offsets for group {group}");
        }
    }
    failures.outcome()
}
