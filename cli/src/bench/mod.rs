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

use anyhow::Context;
use weir_client::{ClientError, ClientInstance};

mod consume;
mod filter_side;
mod produce;
mod push;
mod stats;
mod transactional;

pub use consume::ConsumeArgs;
pub use produce::ProduceArgs;
pub(crate) use stats::{Histogram, Rate, TICK, grouped, per_sec, progress_bar, round2};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCmd {
    /// Send messages as fast as the brokers take them: msgs/s, MB/s, request latency.
    Produce(ProduceArgs),
    /// Read a topic from its first offsets, every queue in parallel: msgs/s, MB/s, pull
    /// latency.
    Consume(ConsumeArgs),
}

impl BenchCmd {
    /// Worker threads the command's runtime should have (`None`: the runtime's default,
    /// one per core).
    pub fn runtime_workers(&self) -> Option<usize> {
        match self {
            BenchCmd::Produce(args) => Some(usize::from(args.threads)),
            BenchCmd::Consume(_) => None,
        }
    }
}

pub async fn run(cmd: BenchCmd, client: ClientInstance) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Produce(args) => produce::produce(args, client)
            .await
            .context("bench produce"),
        BenchCmd::Consume(args) if args.members.is_some() => {
            push::consume(args, client).await.context("bench consume")
        }
        BenchCmd::Consume(args) => consume::consume(args, client)
            .await
            .context("bench consume"),
    }
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
