//! `weir bench produce|consume`: throughput and latency against a running cluster.
//!
//! Produce: `--concurrency` requests in flight at once (tasks sharing one producer and
//! its connections), each carrying `--batch` messages of `--size` bytes, until `--count`
//! messages are acknowledged or `--duration` has passed. Latency is per request, from the
//! call to its answer.
//!
//! Consume (catch-up): one reader per queue of the topic, all in parallel, each pulling
//! from the queue's first offset, until `--count` messages or `--idle-exit` seconds with
//! nothing new. Latency is that of the pulls that returned messages.
//!
//! Filters: with `--local-filter FILE.wasm` every pulled batch goes through the filter in
//! this process (the broker's runtime) and only kept messages count as delivered; with a
//! `--group` that has a filter uploaded for the topic, the brokers filter. Either way the
//! summary adds queue offsets read, messages pulled and messages delivered (kept), and the
//! rates are over the time until the last read (not the last kept message), so the two
//! can be compared on delivered msgs/s.
//!
//! A progress bar goes to stderr (only when it is a terminal); the summary goes to stdout,
//! as text or, with `--json`, as one JSON object. MB are 1,000,000 bytes (of bodies).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinSet;
use weir_client::{
    Admin, ClientError, ClientInstance, FilterInfo, Message, MessageQueue, Producer, PullConsumer,
    PullStatus, ReceivedMessage, SendStatus,
};

use crate::filter::LocalFilter;

mod push;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Send messages as fast as the brokers take them: msgs/s, MB/s, request latency.
    Produce(ProduceArgs),
    /// Read a topic from its first offsets, every queue in parallel: msgs/s, MB/s, pull
    /// latency.
    Consume(ConsumeArgs),
}

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// Created with --queues queues when it does not exist.
    #[arg(default_value = "BenchTopic")]
    topic: String,
    /// Body size of each message, bytes.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=(15 << 20)))]
    size: u32,
    /// Stop after this many messages [default: 1000000 when --duration is not given].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this many seconds (with --count: whichever comes first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    duration: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// Messages per request (more than 1: batch sends, all to one queue).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
    /// Queues of the topic when this creates it.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    queues: u32,
    /// Give message i of each batch the property `n` = i mod N, so filters have something
    /// to select on: with --batch a multiple of N, `n = '0'` keeps exactly 1 in N.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    vary: Option<u32>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[arg(default_value = "BenchTopic")]
    topic: String,
    /// Consumer group [default: a new one per run, weir-bench-PID-MILLIS]. When the group
    /// has a filter for the topic (`weir filter upload`), the brokers apply it: the summary
    /// then also reports offsets read and messages delivered (kept).
    #[arg(long)]
    group: Option<String>,
    /// Run this filter component (.wasm) in this process over every pulled batch, counting
    /// only the messages it keeps as delivered: a client-side filter, to compare with the
    /// same filter uploaded for --group (server-side) on delivered msgs/s.
    #[arg(long, value_name = "FILE.wasm")]
    local_filter: Option<PathBuf>,
    /// A parameter `K=V` for the local filter's `init` (repeatable; order kept).
    #[arg(long = "param", value_parser = crate::parse_prop, requires = "local_filter")]
    params: Vec<(String, String)>,
    /// Stop after this many messages (delivered ones: with a filter, those it keeps).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this many seconds with no new message (0: never).
    #[arg(long, default_value_t = 3)]
    idle_exit: u64,
    /// Most messages per pull (brokers cap it at 1024).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// Commit, for the group, the offset where each queue's reader stopped.
    #[arg(long)]
    commit: bool,
    /// Consume with this many push consumers of the group instead (each its own client, so
    /// a distinct member sharing the queues), with a listener that does nothing, from the
    /// first offsets (or the group's committed ones) until the backlog is drained: every
    /// queue's committed offset reaches the end it had at the start.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256),
          conflicts_with_all = ["local_filter", "count", "commit"])]
    members: Option<u32>,
    /// With --members: listener threads per member.
    #[arg(long, default_value_t = 20, requires = "members",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    threads: u32,
    /// With --members: messages per listener call.
    #[arg(long, default_value_t = 1, requires = "members",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    consume_batch: u32,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: BenchCmd, client: ClientInstance) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Produce(args) => produce(args, client).await.context("bench produce"),
        BenchCmd::Consume(args) if args.members.is_some() => {
            push::consume(args, client).await.context("bench consume")
        }
        BenchCmd::Consume(args) => consume(args, client).await.context("bench consume"),
    }
}

// ---------------------------------------------------------------------------------------
// Latency histogram

/// Sub-buckets per power of two: 2^7 = 128, so a bucket is under 0.8 % of its values.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (SUB as usize) * (64 - SUB_BITS as usize + 1);

/// Durations in nanoseconds, in log-linear buckets: exact below 256 ns, then 128 buckets
/// per power of two. Fixed memory (about 60 KB) whatever the number of samples; merges.
#[derive(Clone)]
struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        let shift = (63 - (v | 1).leading_zeros()).saturating_sub(SUB_BITS);
        (SUB * u64::from(shift) + (v >> shift)) as usize
    }

    /// The value a bucket stands for: the middle of its range.
    fn value(index: usize) -> u64 {
        let i = index as u64;
        if i < 2 * SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let low = (i - SUB * shift) << shift;
        low + ((1u64 << shift) - 1) / 2
    }

    fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0..=1), nanoseconds; 0 when empty.
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum / u128::from(self.total)) as u64
        }
    }

    /// p50, p99, p99.9, max and mean, milliseconds.
    fn summary_ms(&self) -> Latency {
        let ms = |ns: u64| ns as f64 / 1e6;
        Latency {
            p50: ms(self.quantile(0.5)),
            p99: ms(self.quantile(0.99)),
            p999: ms(self.quantile(0.999)),
            max: ms(if self.total == 0 { 0 } else { self.max }),
            mean: ms(self.mean()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

impl Latency {
    fn json(&self) -> serde_json::Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        serde_json::json!({
            "p50": r(self.p50),
            "p99": r(self.p99),
            "p999": r(self.p999),
            "max": r(self.max),
            "mean": r(self.mean),
        })
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            self.p50, self.p99, self.p999, self.max, self.mean
        )
    }
}

// ---------------------------------------------------------------------------------------
// Shared helpers

/// `1234567` as `1,234,567`.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A progress bar on stderr (hidden when stderr is not a terminal): a bar when the end is
/// known, a counter otherwise.
fn progress_bar(len: Option<u64>) -> ProgressBar {
    let (bar, template) = match len {
        Some(len) => (
            ProgressBar::new(len),
            "{elapsed_precise} [{bar:40}] {percent:>3}% {msg}",
        ),
        None => (ProgressBar::no_length(), "{elapsed_precise} {msg}"),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Smoothed rate for the progress bar.
struct Rate {
    last: Instant,
    last_count: u64,
    rate: f64,
}

impl Rate {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            last_count: 0,
            rate: 0.0,
        }
    }

    fn update(&mut self, count: u64) -> f64 {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        if dt > 0.0 {
            let inst = count.saturating_sub(self.last_count) as f64 / dt;
            self.rate = if self.last_count == 0 && self.rate == 0.0 {
                inst
            } else {
                0.7 * self.rate + 0.3 * inst
            };
        }
        self.last = now;
        self.last_count = count;
        self.rate
    }
}

const TICK: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// Produce

/// Largest request body the protocol carries comfortably (frames are 16 MiB).
const MAX_REQUEST_BODY: u64 = 15 << 20;

struct ProduceShared {
    /// Messages handed out to tasks (count mode).
    claimed: AtomicU64,
    /// Messages acknowledged.
    acked: AtomicU64,
    stop: AtomicBool,
}

impl ProduceShared {
    /// How many messages the next request carries: 0 when there is nothing left.
    fn claim(&self, batch: u64, limit: Option<u64>, deadline: Option<Instant>) -> u64 {
        if self.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            return 0;
        }
        match limit {
            None => batch,
            Some(limit) => {
                let prev = self.claimed.fetch_add(batch, Ordering::Relaxed);
                if prev >= limit {
                    0
                } else {
                    batch.min(limit - prev)
                }
            }
        }
    }
}

struct ProduceTaskStats {
    latency: Histogram,
    requests: u64,
    flush_timeouts: u64,
}

async fn ensure_topic(client: &ClientInstance, topic: &str, queues: u32) -> anyhow::Result<bool> {
    let admin = Admin::new(client.clone());
    match admin.route(topic).await {
        Ok(_) => return Ok(false),
        Err(ClientError::NoRoute { .. }) => {}
        Err(e) => return Err(e).with_context(|| format!("looking up topic {topic}")),
    }
    admin
        .create_topic(topic, queues)
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    // The brokers register the new topic with the name servers: wait until it routes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match admin.route(topic).await {
            Ok(_) => return Ok(true),
            Err(ClientError::NoRoute { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("topic {topic} was created but does not route"));
            }
        }
    }
}

async fn produce_task(
    producer: Arc<Producer>,
    msgs: Arc<[Message]>,
    shared: Arc<ProduceShared>,
    limit: Option<u64>,
    deadline: Option<Instant>,
) -> anyhow::Result<ProduceTaskStats> {
    let mut stats = ProduceTaskStats {
        latency: Histogram::new(),
        requests: 0,
        flush_timeouts: 0,
    };
    let batch = msgs.len() as u64;
    loop {
        let n = shared.claim(batch, limit, deadline) as usize;
        if n == 0 {
            return Ok(stats);
        }
        let began = Instant::now();
        let sent = if batch == 1 {
            producer
                .send(&msgs[0])
                .await
                .map(|r| u64::from(r.status == SendStatus::FlushDiskTimeout))
        } else {
            producer.send_batch(&msgs[..n]).await.map(|rs| {
                rs.iter()
                    .filter(|r| r.status == SendStatus::FlushDiskTimeout)
                    .count() as u64
            })
        };
        let took = began.elapsed();
        match sent {
            Ok(timeouts) => {
                stats.latency.record(took);
                stats.requests += 1;
                stats.flush_timeouts += timeouts;
                shared.acked.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                return Err(e).with_context(|| format!("sending to topic {}", msgs[0].topic));
            }
        }
    }
}

async fn produce(args: ProduceArgs, client: ClientInstance) -> anyhow::Result<()> {
    let batch = u64::from(args.batch);
    let size = u64::from(args.size);
    if batch * size > MAX_REQUEST_BODY {
        bail!(
            "--batch {} of --size {} is {} bytes per request, over the {} a request carries",
            args.batch,
            args.size,
            batch * size,
            MAX_REQUEST_BODY
        );
    }
    let limit = match (args.count, args.duration) {
        (None, None) => Some(1_000_000),
        (count, _) => count,
    };
    let duration = args.duration.map(Duration::from_secs);
    let created = ensure_topic(&client, &args.topic, args.queues).await?;

    let body: Bytes = (0..args.size).map(|i| b'a' + (i % 26) as u8).collect();
    let msgs: Arc<[Message]> = (0..batch)
        .map(|i| {
            let msg = Message::new(args.topic.clone(), body.clone());
            match args.vary {
                Some(n) => msg.with_property("n", (i % u64::from(n)).to_string()),
                None => msg,
            }
        })
        .collect();
    let producer = Arc::new(Producer::new("weir-bench", client));
    let shared = Arc::new(ProduceShared {
        claimed: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    let bar = match (limit, duration) {
        (Some(n), _) => progress_bar(Some(n)),
        (None, Some(d)) => progress_bar(Some(d.as_millis() as u64)),
        (None, None) => progress_bar(None),
    };
    let started = Instant::now();
    let deadline = duration.map(|d| started + d);
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        tasks.spawn(produce_task(
            Arc::clone(&producer),
            Arc::clone(&msgs),
            Arc::clone(&shared),
            limit,
            deadline,
        ));
    }

    let mut latency = Histogram::new();
    let (mut requests, mut flush_timeouts) = (0u64, 0u64);
    let mut failure: Option<anyhow::Error> = None;
    let mut interrupted = false;
    let mut rate = Rate::new();
    let mut tick = tokio::time::interval(TICK);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(s))) => {
                    latency.merge(&s.latency);
                    requests += s.requests;
                    flush_timeouts += s.flush_timeouts;
                }
                Some(Ok(Err(e))) => {
                    failure.get_or_insert(e);
                }
                Some(Err(e)) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    failure.get_or_insert(anyhow::Error::new(e).context("a sending task failed"));
                }
            },
            _ = tick.tick() => {
                let acked = shared.acked.load(Ordering::Relaxed);
                let r = rate.update(acked);
                match limit {
                    Some(_) => bar.set_position(acked),
                    None => bar.set_position(started.elapsed().as_millis() as u64),
                }
                bar.set_message(format!("{} msgs  {} msgs/s", grouped(acked), grouped(r as u64)));
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                shared.stop.store(true, Ordering::Relaxed);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    if interrupted {
        eprintln!("weir: interrupted; the summary covers what was sent until then");
    }

    let messages = shared.acked.load(Ordering::Relaxed);
    let bytes = messages * size;
    let lat = latency.summary_ms();
    let msgs_per_sec = per_sec(messages, elapsed);
    let mb_per_sec = per_sec(bytes, elapsed) / 1e6;
    if args.json {
        let v = serde_json::json!({
            "mode": "produce",
            "topic": args.topic,
            "topic_created": created,
            "size": args.size,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "messages": messages,
            "requests": requests,
            "bytes": bytes,
            "flush_timeouts": flush_timeouts,
            "elapsed_secs": (elapsed * 1000.0).round() / 1000.0,
            "msgs_per_sec": round2(msgs_per_sec),
            "mb_per_sec": round2(mb_per_sec),
            "latency_ms": lat.json(),
            "interrupted": interrupted,
        });
        println!("{v}");
    } else {
        println!(
            "produced {} messages of {} B to {} in {:.2} s ({} requests: batch {}, concurrency {})",
            grouped(messages),
            args.size,
            args.topic,
            elapsed,
            grouped(requests),
            args.batch,
            args.concurrency
        );
        println!(
            "throughput: {} msgs/s, {:.2} MB/s",
            grouped(msgs_per_sec.round() as u64),
            mb_per_sec
        );
        println!("request latency ms: {}", lat.text());
        if flush_timeouts > 0 {
            println!(
                "flush timeouts: {} (stored, not yet on disk in time)",
                grouped(flush_timeouts)
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Consume

/// How long a caught-up reader's pull waits at the broker for new messages.
const HOLD: Duration = Duration::from_millis(500);

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
                    p = r.consumer.pull(&mq, "*", offset, r.batch, hold, None) => p.with_context(|| {
                        format!("pulling {} queue {}/{} at offset {offset}", mq.topic, mq.broker_name, mq.queue_id)
                    })?,
                    _ = stop.changed() => break,
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

/// The filter a run applies, for the summary.
enum FilterSide {
    /// `--local-filter`.
    Client {
        file: PathBuf,
        params: Vec<(String, String)>,
        needs_body: bool,
    },
    /// The group's filter for the topic, as the brokers run it: (broker, filter).
    Server {
        group: String,
        filters: Vec<(String, FilterInfo)>,
    },
}

impl FilterSide {
    fn text(&self) -> String {
        match self {
            FilterSide::Client {
                file, needs_body, ..
            } => format!(
                "client-side, {} (needs body: {})",
                file.display(),
                if *needs_body { "yes" } else { "no" }
            ),
            FilterSide::Server { group, filters } => {
                let each: Vec<String> = filters
                    .iter()
                    .map(|(b, f)| {
                        let sha: String = f.sha256.chars().take(12).collect();
                        format!("{b} version {} (sha256 {sha})", f.version)
                    })
                    .collect();
                format!("server-side, group {group}: {}", each.join(", "))
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            FilterSide::Client {
                file,
                params,
                needs_body,
            } => serde_json::json!({
                "side": "client",
                "file": file.display().to_string(),
                "params": params.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                "needs_body": needs_body,
            }),
            FilterSide::Server { group, filters } => serde_json::json!({
                "side": "server",
                "group": group,
                "brokers": filters.iter().map(|(b, f)| serde_json::json!({
                    "broker": b,
                    "version": f.version,
                    "sha256": f.sha256,
                    "needs_body": f.needs_body,
                    "failed": f.failed,
                })).collect::<Vec<_>>(),
            }),
        }
    }
}

/// The group's filter for `topic` on the brokers, if it has one. Best effort: a broker
/// that cannot say is taken to have none.
async fn server_filter(client: &ClientInstance, group: &str, topic: &str) -> Option<FilterSide> {
    let lists = Admin::new(client.clone())
        .list_filters(Some(group))
        .await
        .ok()?;
    let filters: Vec<(String, FilterInfo)> = lists
        .into_iter()
        .flat_map(|(b, l)| {
            l.filters
                .into_iter()
                .filter(|f| f.topic == topic && f.group == group)
                .map(move |f| (b.clone(), f))
        })
        .collect();
    (!filters.is_empty()).then(|| FilterSide::Server {
        group: group.to_owned(),
        filters,
    })
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The group a consume benchmark reads as: the one given, or a new one per run.
pub(crate) fn bench_group(group: &Option<String>) -> String {
    group
        .clone()
        .unwrap_or_else(|| format!("weir-bench-{}-{}", std::process::id(), now_ms()))
}

/// A failed lookup of the benchmark's topic, saying how to write one when it is missing.
pub(crate) fn topic_lookup_error(topic: &str, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::NoRoute { .. } => {
            anyhow::anyhow!("topic {topic} does not exist (weir bench produce {topic} writes one)")
        }
        e => anyhow::Error::new(e).context(format!("looking up topic {topic}")),
    }
}

async fn consume(args: ConsumeArgs, client: ClientInstance) -> anyhow::Result<()> {
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
            let f = crate::filter::load_local(file, args.params.clone()).await?;
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
    if nothing && !interrupted {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        // Every value maps to a bucket whose stand-in is within 1 % of it.
        let mut prev = 0;
        for v in 0..100_000u64 {
            let i = Histogram::index(v);
            assert!(i == prev || i == prev + 1, "{v}: {prev} -> {i}");
            prev = i;
        }
        for v in (0..100_000u64)
            .chain((1..64).map(|p| (1u64 << p) - 1))
            .chain((1..64).map(|p| 1u64 << p))
            .chain([u64::MAX])
        {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            let s = Histogram::value(i) as f64;
            assert!((s - v as f64).abs() <= v as f64 * 0.01, "{v} stands as {s}");
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for us in 1..=100_000u64 {
            let d = Duration::from_micros(us);
            if us % 2 == 0 {
                a.record(d)
            } else {
                b.record(d)
            }
        }
        a.merge(&b);
        assert_eq!(a.total, 100_000);
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = a.quantile(q) as f64 / 1000.0;
            assert!((got - want).abs() <= want * 0.01, "q{q}: {got} vs {want}");
        }
        assert!(a.quantile(1.0).abs_diff(100_000_000) <= 1_000_000);
        assert_eq!(a.max, 100_000_000);
        assert_eq!(a.min, 1000);
        let l = a.summary_ms();
        assert!((l.mean - 50.0005).abs() < 0.001, "{l:?}");
        assert_eq!(Histogram::new().summary_ms().p99, 0.0);
    }

    #[test]
    fn thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn claims_stop_at_the_limit() {
        let s = ProduceShared {
            claimed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        };
        let got: Vec<u64> = (0..5).map(|_| s.claim(32, Some(100), None)).collect();
        assert_eq!(got, [32, 32, 32, 4, 0]);
        s.stop.store(true, Ordering::Relaxed);
        assert_eq!(s.claim(32, None, None), 0);
    }
}
