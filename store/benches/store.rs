//! Store benchmarks (criterion): `cargo bench -p weir-store`.
//!
//! - `append_async/{128B,1KiB}`: one writer calling `put` on an async-mode store with
//!   broker-like messages (topic, tag, one key, two properties) over 8 queues. Reports
//!   msgs/s; MB/s of records (headers included) is printed after each benchmark.
//! - `append_topics/{64,1024}`: the same over 64 or 1,024 topics of 8 queues.
//! - `append_sync/appenders/{1,16,256}`: that many threads each calling `put` on a
//!   sync-mode store (group commit). Reports appends/s; prints appends per commit log
//!   sync (`commit_log_sync_count`) and per device cache flush (block device statistics,
//!   machine-wide) after each benchmark.
//! - `read_seq/batch{32,256}`: `get_messages` over a warm queue of 1,000,000 messages of
//!   128 B, parsing every record and touching its body. Reports msgs/s.
//!
//! Stores live in temporary folders under `$WEIR_BENCH_DIR`, else under cargo's
//! `target/tmp`: a real disk, not a tmpfs, is what brokers use. Each benchmark removes its
//! store when it ends; between samples the append benchmarks apply retention to sealed
//! segments, so a store holds at most about two 1 GiB commit log segments plus its index.
//!
//! Under `cargo test --benches` every benchmark runs once, on a small data set.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use weir_store::{
    FlushMode, FlushStatus, GetStatus, Message, MessageStore, ReadLimits, StoreConfig,
};

/// Distinct messages the writers cycle through (each with its own key and unique id).
const POOL: usize = 8192;
/// Messages pre-filled for the read benchmark (fewer under `cargo test`).
const READ_MESSAGES: u64 = 1_000_000;
const READ_MESSAGES_TEST: u64 = 20_000;
const READ_TOPIC: &str = "bench-read";

/// True under `cargo bench`, false under `cargo test --benches` (criterion's test mode,
/// where each benchmark runs once): keeps one-off setup small in tests.
fn benchmarking() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

fn temp_dir(tag: &str) -> TempDir {
    let root = std::env::var_os("WEIR_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from);
    std::fs::create_dir_all(&root).expect("create the benchmark folder");
    tempfile::Builder::new()
        .prefix(&format!("weir-bench-{tag}-"))
        .tempdir_in(root)
        .expect("create a temporary store folder")
}

/// A broker-like message: tag, one key, a unique id and a trace flag as properties, a
/// random body.
fn message(rng: &mut SmallRng, topic: &str, queue_id: u32, seq: usize, body_len: usize) -> Message {
    let mut body = vec![0u8; body_len];
    rng.fill(&mut body[..]);
    let uniq: u128 = rng.random();
    let mut m = Message::new(topic, queue_id, body)
        .with_tags("TagA")
        .with_key(format!("order-{seq:010}"))
        .with_property("UNIQ_KEY", format!("{uniq:032X}"))
        .with_property("TRACE_ON", "true");
    m.born_timestamp = 1_700_000_000_000 + seq as i64;
    m.born_host = "10.0.3.17:52114".parse().expect("socket address");
    m
}

fn message_pool(topic: &str, queues: u32, body_len: usize) -> Vec<Message> {
    let mut rng = SmallRng::seed_from_u64(0x5745_4952);
    (0..POOL)
        .map(|i| message(&mut rng, topic, i as u32 % queues, i, body_len))
        .collect()
}

/// Messages spread over `topics` topics `{prefix}-N` of `queues` queues each, as `weir
/// bench produce --topics` sends them: one to each topic in turn, each topic's queues in
/// turn.
fn topics_pool(prefix: &str, topics: usize, queues: u32, body_len: usize) -> Vec<Message> {
    let mut rng = SmallRng::seed_from_u64(0x5745_4952);
    (0..POOL)
        .map(|i| {
            let topic = format!("{prefix}-{}", i % topics);
            message(&mut rng, &topic, (i / topics) as u32 % queues, i, body_len)
        })
        .collect()
}

/// Size of a stored record (every message of a pool has the same).
fn record_len(pool: &[Message]) -> usize {
    pool[0].encoded_len().expect("valid message")
}

/// Totals over every call of one benchmark (warm-up included), printed when it ends.
#[derive(Default)]
struct Totals {
    msgs: u64,
    elapsed: Duration,
}

impl Totals {
    fn add(&mut self, msgs: u64, elapsed: Duration) {
        self.msgs += msgs;
        self.elapsed += elapsed;
    }
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }
    fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs()
    }
}

// ---------------------------------------------------------------------------------------
// Async append

struct AppendFixture {
    // Fields drop in order: the store stops before its folder is removed.
    store: MessageStore,
    dir: TempDir,
    pool: Vec<Message>,
    next: usize,
    totals: Totals,
    peak_disk: u64,
    /// When the data folder was last measured (walking thousands of queue folders each
    /// sample would leave criterion's warm-up too little time to calibrate).
    measured: Option<Instant>,
}

impl AppendFixture {
    fn new(body_len: usize) -> Self {
        Self::with_pool(message_pool("bench-append", 8, body_len))
    }

    fn with_pool(pool: Vec<Message>) -> Self {
        let dir = temp_dir("async");
        let store = MessageStore::open(StoreConfig {
            flush_mode: FlushMode::Async,
            ..StoreConfig::new(dir.path())
        })
        .expect("open store");
        // Create the first segment, the consume queues and the index file untimed.
        for msg in &pool {
            store.put(msg).expect("put");
        }
        Self {
            store,
            dir,
            pool,
            next: 0,
            totals: Totals::default(),
            peak_disk: 0,
            measured: None,
        }
    }

    fn run(&mut self, iters: u64) -> Duration {
        // Untimed: bound the data set by deleting sealed segments (and their index files).
        if self
            .measured
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            self.peak_disk = self.peak_disk.max(disk_usage(self.dir.path()));
            self.measured = Some(Instant::now());
        }
        self.store.run_retention(i64::MAX).expect("retention");
        let mut next = self.next;
        let start = Instant::now();
        for _ in 0..iters {
            black_box(self.store.put(&self.pool[next % POOL]).expect("put"));
            next += 1;
        }
        let elapsed = start.elapsed();
        self.next = next;
        self.totals.add(iters, elapsed);
        elapsed
    }

    fn report(&self, name: &str) {
        let len = record_len(&self.pool);
        let t = &self.totals;
        eprintln!(
            "  {name}: {} appends in {:.2} s (warm-up included): {:.0} msgs/s, {:.1} MB/s of \
             {len}-byte records; data folder peaked at {} MiB allocated",
            t.msgs,
            t.secs(),
            t.rate(),
            t.rate() * len as f64 / 1e6,
            self.peak_disk >> 20,
        );
    }
}

/// Bytes allocated on disk under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Runs one async-append benchmark per case of `group`, each on a store made by `fixture`
/// (once, untimed), and reports its totals.
fn append_cases(
    c: &mut Criterion,
    group: &str,
    cases: Vec<(String, Box<dyn Fn() -> AppendFixture>)>,
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, fixture) in cases {
        let mut fx: Option<AppendFixture> = None;
        g.bench_function(&name, |b| {
            let fx = fx.get_or_insert_with(&fixture);
            b.iter_custom(|iters| fx.run(iters));
        });
        if let Some(fx) = fx {
            fx.report(&format!("{group}/{name}"));
        }
    }
    g.finish();
}

fn append_async(c: &mut Criterion) {
    let cases = [("128B", 128), ("1KiB", 1024)]
        .into_iter()
        .map(|(name, body_len)| {
            let fixture: Box<dyn Fn() -> AppendFixture> =
                Box::new(move || AppendFixture::new(body_len));
            (name.to_owned(), fixture)
        })
        .collect();
    append_cases(c, "append_async", cases);
}

/// `append_topics/{64,1024}`: as `append_async/128B`, the messages spread over 64 or 1,024
/// topics of 8 queues (512 or 8,192 queues): the store's share of how throughput holds up
/// with many topics (`weir bench produce --topics`).
fn append_topics(c: &mut Criterion) {
    let cases = [64usize, 1024]
        .into_iter()
        .map(|topics| {
            let fixture: Box<dyn Fn() -> AppendFixture> = Box::new(move || {
                AppendFixture::with_pool(topics_pool("bench-topics", topics, 8, 128))
            });
            (topics.to_string(), fixture)
        })
        .collect();
    append_cases(c, "append_topics", cases);
}

// ---------------------------------------------------------------------------------------
// Sync append (group commit)

/// Cache flushes completed by the block device holding `dir` (machine-wide), from
/// `/sys/dev/block/MAJ:MIN/stat` (field 16); `None` where unavailable.
fn device_flushes(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    stat.split_whitespace().nth(15)?.parse().ok()
}

struct SyncFixture {
    store: Arc<MessageStore>,
    dir: TempDir,
    pool: Vec<Message>,
    appenders: usize,
    round: usize,
    totals: Totals,
    syncs: u64,
    device_flushes: Option<u64>,
}

impl SyncFixture {
    fn new(appenders: usize) -> Self {
        let dir = temp_dir("sync");
        let store = MessageStore::open(StoreConfig {
            flush_mode: FlushMode::Sync,
            ..StoreConfig::new(dir.path())
        })
        .expect("open store");
        let pool = message_pool("bench-sync", 8, 128);
        store.put_batch(&pool[..64]).expect("put");
        Self {
            store: Arc::new(store),
            dir,
            pool,
            appenders,
            round: 0,
            totals: Totals::default(),
            syncs: 0,
            device_flushes: Some(0),
        }
    }

    /// Each appender thread puts `iters` messages, one `put` at a time. Timed from when
    /// every thread is started and waiting until the last one is done.
    fn run(&mut self, iters: u64) -> Duration {
        let n = self.appenders;
        let ready = Barrier::new(n + 1);
        let failed = AtomicU64::new(0);
        let round = self.round;
        self.round += 1;
        let flushes_before = device_flushes(self.dir.path());
        let syncs_before = self.store.commit_log_sync_count();
        let start = std::thread::scope(|s| {
            for t in 0..n {
                let (store, pool, ready, failed) = (&self.store, &self.pool, &ready, &failed);
                s.spawn(move || {
                    ready.wait();
                    for i in 0..iters as usize {
                        let m = &pool[(round * 7919 + t * 131 + i) % POOL];
                        match store.put(m) {
                            Ok(r) if r.flush == FlushStatus::Durable => {}
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
            ready.wait();
            // Leaving the scope joins every appender.
            Instant::now()
        });
        let elapsed = start.elapsed();
        let syncs = self.store.commit_log_sync_count() - syncs_before;
        let flushes_after = device_flushes(self.dir.path());
        assert_eq!(failed.into_inner(), 0, "an append failed or timed out");
        self.totals.add(iters * n as u64, elapsed);
        self.syncs += syncs;
        self.device_flushes = match (self.device_flushes, flushes_before, flushes_after) {
            (Some(total), Some(a), Some(b)) => Some(total + b.saturating_sub(a)),
            _ => None,
        };
        elapsed
    }

    fn report(&self, name: &str) {
        let t = &self.totals;
        let per = |x: u64| t.msgs as f64 / x.max(1) as f64;
        let device = match self.device_flushes {
            Some(f) => format!(
                "{f} device cache flushes ({:.0}/s, {:.2} appends each)",
                f as f64 / t.secs(),
                per(f)
            ),
            None => "device flush count unavailable".into(),
        };
        eprintln!(
            "  {name}: {} appends in {:.2} s (warm-up included): {:.0} appends/s; {} commit \
             log syncs ({:.0}/s): {:.2} appends per fsync (target >= {:.1}); {device}",
            t.msgs,
            t.secs(),
            t.rate(),
            self.syncs,
            self.syncs as f64 / t.secs(),
            per(self.syncs),
            0.8 * self.appenders as f64,
        );
    }
}

fn append_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_sync");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    for appenders in [1usize, 16, 256] {
        // One iteration is one `put` by every appender.
        group.throughput(Throughput::Elements(appenders as u64));
        let mut fx: Option<SyncFixture> = None;
        group.bench_function(BenchmarkId::new("appenders", appenders), |b| {
            let fx = fx.get_or_insert_with(|| SyncFixture::new(appenders));
            b.iter_custom(|iters| fx.run(iters));
        });
        if let Some(fx) = fx {
            fx.report(&format!("append_sync/appenders/{appenders}"));
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------
// Sequential read

struct ReadFixture {
    store: MessageStore,
    _dir: TempDir,
    messages: u64,
    record_len: usize,
    cursor: u64,
    checksum: u64,
    totals: Totals,
}

impl ReadFixture {
    fn new(messages: u64) -> Self {
        let dir = temp_dir("read");
        let store = MessageStore::open(StoreConfig {
            flush_mode: FlushMode::Async,
            ..StoreConfig::new(dir.path())
        })
        .expect("open store");
        let pool = message_pool(READ_TOPIC, 1, 128);
        let started = Instant::now();
        let mut written = 0u64;
        for chunk in pool.chunks(256).cycle() {
            let n = chunk.len().min((messages - written) as usize);
            store.put_batch(&chunk[..n]).expect("put");
            written += n as u64;
            if written == messages {
                break;
            }
        }
        assert_eq!(store.max_offset(READ_TOPIC, 0), messages);
        let mut fx = Self {
            store,
            _dir: dir,
            messages,
            record_len: record_len(&pool),
            cursor: 0,
            checksum: 0,
            totals: Totals::default(),
        };
        // One untimed pass, so every page is cached and mapped.
        fx.read(messages, 256);
        fx.totals = Totals::default();
        eprintln!(
            "  read_seq: pre-filled {messages} messages ({} MiB of records) in {:.2} s",
            (messages * fx.record_len as u64) >> 20,
            started.elapsed().as_secs_f64()
        );
        fx
    }

    /// Reads `count` messages in batches of up to `batch`, wrapping around at the queue's
    /// end; parses every record and reads its tag and both ends of its body.
    fn read(&mut self, count: u64, batch: usize) -> Duration {
        let limits = |left: u64| ReadLimits {
            max_count: batch.min(left as usize),
            max_bytes: 1 << 30,
            max_scan: 1 << 30,
        };
        let mut left = count;
        let mut sum = 0u64;
        let start = Instant::now();
        while left > 0 {
            let r = self
                .store
                .get_messages(READ_TOPIC, 0, self.cursor, limits(left), |_| true);
            match r.status {
                GetStatus::Found => {}
                GetStatus::NoNewMessage => {
                    self.cursor = 0;
                    continue;
                }
                other => panic!("unexpected read status {other:?} at {}", self.cursor),
            }
            for rec in &r.messages {
                let v = rec.view().expect("record parses");
                let body = v.body();
                sum += body.len() as u64
                    + u64::from(body[0])
                    + u64::from(body[body.len() - 1])
                    + v.tags().len() as u64;
            }
            left -= r.messages.len() as u64;
            self.cursor = r.next_offset;
        }
        let elapsed = start.elapsed();
        self.checksum = self.checksum.wrapping_add(black_box(sum));
        self.totals.add(count, elapsed);
        elapsed
    }

    fn report(&self, name: &str) {
        let t = &self.totals;
        eprintln!(
            "  {name}: {} messages in {:.2} s (warm-up included): {:.0} msgs/s, {:.1} MB/s \
             of {}-byte records from a {}-message queue",
            t.msgs,
            t.secs(),
            t.rate(),
            t.rate() * self.record_len as f64 / 1e6,
            self.record_len,
            self.messages,
        );
    }
}

fn read_seq(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_seq");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let messages = if benchmarking() {
        READ_MESSAGES
    } else {
        READ_MESSAGES_TEST
    };
    let mut fx: Option<ReadFixture> = None;
    for batch in [32usize, 256] {
        group.bench_function(format!("batch{batch}"), |b| {
            let fx = fx.get_or_insert_with(|| ReadFixture::new(messages));
            b.iter_custom(|iters| fx.read(iters, batch));
        });
        if let Some(fx) = &mut fx {
            fx.report(&format!("read_seq/batch{batch}"));
            fx.totals = Totals::default();
        }
    }
    group.finish();
}

criterion_group!(benches, append_async, append_topics, append_sync, read_seq);
criterion_main!(benches);
