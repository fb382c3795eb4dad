//! `weir bench produce`: requests in flight, each carrying a batch of messages, until a
//! count or a duration; throughput and request latency. With `--transaction`, each request
//! is one `send_message_in_transaction` (half message, local transaction, one-way commit);
//! with `--transaction unknown` the local transactions answer Unknown and the broker's
//! check-backs commit them, and the summary adds the check-backs' rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::task::JoinSet;
use weir_client::{Admin, ClientError, ClientInstance, Message, Producer, SendStatus};

use super::transactional::{self, Sender, TxMode};
use super::{Histogram, Rate, TICK, grouped, per_sec, progress_bar, round2};

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
    /// Spread the messages over this many topics, `TOPIC-0` … `TOPIC-(N-1)` (each created
    /// with --queues queues when missing), one request to each in turn: how throughput
    /// holds up with many topics.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    topics: u32,
    /// Give message i of each batch the property `n` = i mod N, so filters have something
    /// to select on: with --batch a multiple of N, `n = '0'` keeps exactly 1 in N.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    vary: Option<u32>,
    /// Worker threads of this process's runtime. One is the cheapest way to drive a
    /// connection: the tasks woken by a burst of replies run on the thread that read them
    /// and their next requests leave in one write, where two workers wake each other to
    /// share them (on a 2-core machine beside a broker, 15–30 % less of the client's CPU
    /// a send). More when the client alone needs more than a core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Each request a transaction of one message: `commit` (the default: the local
    /// transaction commits at once) or `unknown` (then committed when the broker asks back;
    /// the summary adds the check-backs' rate).
    #[arg(long, value_enum, value_name = "OUTCOME", num_args = 0..=1, default_missing_value = "commit")]
    transaction: Option<TxMode>,
    /// With --transaction unknown: how long to wait for the check-backs, seconds (0: not
    /// at all).
    #[arg(long, default_value_t = 300, requires = "transaction")]
    check_timeout: u64,
    /// With --transaction: run the local transaction inline on its task
    /// (`listener_may_block = false`) instead of in `block_in_place`.
    #[arg(long, requires = "transaction")]
    inline_listener: bool,
    /// With --transaction: check-backs waiting for a thread at most (more are dropped and
    /// asked again).
    #[arg(long, default_value_t = 2000, requires = "transaction")]
    check_queue: usize,
}

// ---------------------------------------------------------------------------------------
// Produce

/// Largest request body the protocol carries comfortably (frames are 16 MiB).
const MAX_REQUEST_BODY: u64 = 15 << 20;

struct ProduceShared {
    /// Messages handed out to tasks (count mode).
    claimed: AtomicU64,
    /// Requests started, for choosing each one's topic in turn.
    started: AtomicU64,
    /// Messages acknowledged.
    acked: AtomicU64,
    stop: AtomicBool,
    /// Every task's request latencies: one histogram for all keeps the counts recorded
    /// into in cache (one a task, 64 of them of 60 KB, missed it on each record).
    latency: Mutex<Histogram>,
}

impl ProduceShared {
    fn new() -> Self {
        ProduceShared {
            claimed: AtomicU64::new(0),
            started: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            latency: Mutex::new(Histogram::new()),
        }
    }

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
    requests: u64,
    flush_timeouts: u64,
    /// Sync master: stored, but no slave confirmed in time (or none was connected).
    slave_unconfirmed: u64,
}

/// (flush timeouts, not confirmed by a slave) among `statuses`.
pub(super) fn unconfirmed(statuses: impl Iterator<Item = SendStatus>) -> (u64, u64) {
    statuses.fold((0, 0), |(f, s), st| match st {
        SendStatus::FlushDiskTimeout => (f + 1, s),
        SendStatus::FlushSlaveTimeout | SendStatus::SlaveNotAvailable => (f, s + 1),
        SendStatus::Ok => (f, s),
    })
}

/// Makes sure every topic exists and routes, creating the missing ones (a few at a time);
/// returns how many were created.
async fn ensure_topics(
    client: &ClientInstance,
    topics: &[String],
    queues: u32,
) -> anyhow::Result<usize> {
    let mut created = 0;
    for chunk in topics.chunks(32) {
        let mut each = JoinSet::new();
        for t in chunk {
            let (client, t) = (client.clone(), t.clone());
            each.spawn(async move { ensure_topic(&client, &t, queues).await });
        }
        while let Some(r) = each.join_next().await {
            created += usize::from(r.context("creating a topic")??);
        }
    }
    Ok(created)
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
    producer: Arc<Sender>,
    per_topic: Arc<[Arc<[Message]>]>,
    shared: Arc<ProduceShared>,
    limit: Option<u64>,
    deadline: Option<Instant>,
) -> anyhow::Result<ProduceTaskStats> {
    let mut stats = ProduceTaskStats {
        requests: 0,
        flush_timeouts: 0,
        slave_unconfirmed: 0,
    };
    let batch = per_topic.first().map_or(1, |m| m.len() as u64);
    loop {
        let n = shared.claim(batch, limit, deadline) as usize;
        if n == 0 {
            return Ok(stats);
        }
        let turn = shared.started.fetch_add(1, Ordering::Relaxed);
        let msgs = &per_topic[(turn % per_topic.len() as u64) as usize];
        let began = Instant::now();
        let sent = if batch == 1 {
            producer.send_one(&msgs[0]).await
        } else {
            producer
                .plain()
                .send_batch(&msgs[..n])
                .await
                .map(|rs| unconfirmed(rs.iter().map(|r| r.status)))
        };
        let took = began.elapsed();
        match sent {
            Ok((timeouts, slave)) => {
                shared
                    .latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(took);
                stats.requests += 1;
                stats.flush_timeouts += timeouts;
                stats.slave_unconfirmed += slave;
                shared.acked.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                return Err(e).with_context(|| format!("sending to topic {}", msgs[0].topic));
            }
        }
    }
}

pub(super) async fn produce(args: ProduceArgs, client: ClientInstance) -> anyhow::Result<()> {
    let batch = u64::from(args.batch);
    let size = u64::from(args.size);
    if args.transaction.is_some() && batch > 1 {
        bail!("--transaction sends one message per request: --batch does not apply");
    }
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
    let topics: Vec<String> = match args.topics {
        1 => vec![args.topic.clone()],
        n => (0..n).map(|i| format!("{}-{i}", args.topic)).collect(),
    };
    let created = ensure_topics(&client, &topics, args.queues).await?;

    let body: Bytes = (0..args.size).map(|i| b'a' + (i % 26) as u8).collect();
    let per_topic: Arc<[Arc<[Message]>]> = topics
        .iter()
        .map(|topic| {
            (0..batch)
                .map(|i| {
                    let msg = Message::new(topic.clone(), body.clone());
                    match args.vary {
                        Some(n) => msg.with_property("n", (i % u64::from(n)).to_string()),
                        None => msg,
                    }
                })
                .collect()
        })
        .collect();
    let producer = Arc::new(match args.transaction {
        None => Sender::Plain(Producer::new("weir-bench", client.clone())),
        Some(mode) => {
            transactional::sender(mode, args.check_queue, args.inline_listener, client.clone())?
        }
    });
    let shared = Arc::new(ProduceShared::new());
    // What the runtime has, not what was asked: the summary reports the real thing.
    let threads = tokio::runtime::Handle::current().metrics().num_workers();

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
            Arc::clone(&per_topic),
            Arc::clone(&shared),
            limit,
            deadline,
        ));
    }

    let (mut requests, mut flush_timeouts, mut slave_unconfirmed) = (0u64, 0u64, 0u64);
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
                    requests += s.requests;
                    flush_timeouts += s.flush_timeouts;
                    slave_unconfirmed += s.slave_unconfirmed;
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
    let checks = producer.finish(&client, messages, args.check_timeout).await;
    let bytes = messages * size;
    let lat = shared
        .latency
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .summary_ms();
    let msgs_per_sec = per_sec(messages, elapsed);
    let mb_per_sec = per_sec(bytes, elapsed) / 1e6;
    if args.json {
        let v = serde_json::json!({
            "mode": "produce",
            "topic": args.topic,
            "topics": args.topics,
            "topic_created": created > 0,
            "topics_created": created,
            "size": args.size,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "threads": threads,
            "messages": messages,
            "requests": requests,
            "bytes": bytes,
            "flush_timeouts": flush_timeouts,
            "slave_unconfirmed": slave_unconfirmed,
            "elapsed_secs": (elapsed * 1000.0).round() / 1000.0,
            "msgs_per_sec": round2(msgs_per_sec),
            "mb_per_sec": round2(mb_per_sec),
            "latency_ms": lat.json(),
            "interrupted": interrupted,
            "transaction": args.transaction.map(TxMode::as_str),
            "check_backs": checks.as_ref().map(transactional::CheckBacks::json),
        });
        println!("{v}");
    } else {
        println!(
            "produced {} messages of {} B to {} in {:.2} s ({} requests: batch {}, concurrency {}, {} thread{})",
            grouped(messages),
            args.size,
            match args.topics {
                1 => args.topic.clone(),
                n => format!("{n} topics {}-0…{}-{}", args.topic, args.topic, n - 1),
            },
            elapsed,
            grouped(requests),
            args.batch,
            args.concurrency,
            threads,
            if threads == 1 { "" } else { "s" }
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
        if slave_unconfirmed > 0 {
            println!(
                "not confirmed by a slave: {} (stored on the master only)",
                grouped(slave_unconfirmed)
            );
        }
        if let Some(c) = &checks {
            println!("{}", c.text());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_stop_at_the_limit() {
        let s = ProduceShared::new();
        let got: Vec<u64> = (0..5).map(|_| s.claim(32, Some(100), None)).collect();
        assert_eq!(got, [32, 32, 32, 4, 0]);
        s.stop.store(true, Ordering::Relaxed);
        assert_eq!(s.claim(32, None, None), 0);
    }
}
