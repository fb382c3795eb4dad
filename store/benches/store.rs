//! Store benchmarks (criterion): `cargo bench -p weir-store`.
//!
//! - `append_async/{128,1024}`: one writer, async flush, msgs/s.
//! - `append_sync/{1,16,256}`: that many threads appending in sync mode; also prints
//!   appends per fsync (group commit at work).
//! - `read_sequential/{32,256}`: a warm 1,000,000-message queue read in batches of 32 / 256.
//!
//! Data goes to a temporary folder under the target directory (a real disk, as brokers
//! use), removed afterwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir_store::{FlushMode, MessageStore, ReadLimits, StoreConfig, StoreMessage};

fn bench_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&base).expect("create bench folder");
    tempfile::tempdir_in(base).expect("create temp folder")
}

fn message(body_len: usize, i: u64) -> StoreMessage {
    StoreMessage::new("bench", (i % 8) as u32, vec![b'x'; body_len])
        .with_tags("TagA")
        .with_key(format!("k{i}"))
        .with_property("trace", "abc123")
}

fn append_async(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_async");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    for body in [128usize, 1024] {
        let dir = bench_dir();
        let store = MessageStore::open(StoreConfig {
            commit_log_segment_size: 256 << 20,
            ..StoreConfig::new(dir.path())
        })
        .expect("open store");
        g.throughput(Throughput::Elements(1));
        let msg = message(body, 0);
        g.bench_with_input(BenchmarkId::from_parameter(body), &body, |b, _| {
            b.iter(|| store.put(&msg).expect("put"))
        });
    }
    g.finish();
}

fn append_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_sync");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for writers in [1u64, 16, 256] {
        let dir = bench_dir();
        let store = Arc::new(
            MessageStore::open(StoreConfig {
                flush_mode: FlushMode::Sync,
                commit_log_segment_size: 256 << 20,
                ..StoreConfig::new(dir.path())
            })
            .expect("open store"),
        );
        let (mut appends, mut syncs) = (0u64, 0u64);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::from_parameter(writers),
            &writers,
            |b, &writers| {
                b.iter_custom(|iters| {
                    // `iters` appends in all, spread over the writers.
                    let per = iters.div_ceil(writers);
                    let syncs_before = store.commit_log_sync_count();
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for w in 0..writers {
                            let store = &store;
                            s.spawn(move || {
                                let msg = message(128, w);
                                for _ in 0..per {
                                    store.put(&msg).expect("put");
                                }
                            });
                        }
                    });
                    let elapsed = start.elapsed();
                    appends += per * writers;
                    syncs += store.commit_log_sync_count() - syncs_before;
                    elapsed.mul_f64(iters as f64 / (per * writers) as f64)
                })
            },
        );
        if syncs > 0 {
            eprintln!(
                "append_sync/{writers}: {appends} appends, {syncs} fsyncs, {:.1} appends per fsync",
                appends as f64 / syncs as f64
            );
        }
    }
    g.finish();
}

fn read_sequential(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let dir = bench_dir();
    let store = MessageStore::open(StoreConfig {
        commit_log_segment_size: 256 << 20,
        ..StoreConfig::new(dir.path())
    })
    .expect("open store");
    let batch: Vec<StoreMessage> = (0..1000)
        .map(|i| {
            StoreMessage::new("read", 0, vec![b'r'; 128]).with_tags(if i % 2 == 0 {
                "A"
            } else {
                "B"
            })
        })
        .collect();
    for _ in 0..N / 1000 {
        store.put_batch(&batch).expect("fill");
    }
    let mut g = c.benchmark_group("read_sequential");
    g.sample_size(10).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(N));
    for max_count in [32usize, 256] {
        let limits = ReadLimits {
            max_count,
            max_bytes: 4 << 20,
            max_scan: 16_000,
        };
        g.bench_with_input(
            BenchmarkId::from_parameter(max_count),
            &max_count,
            |b, _| {
                b.iter(|| {
                    let (mut offset, mut bytes, mut n) = (0u64, 0usize, 0u64);
                    while offset < N {
                        let r = store.get_messages("read", 0, offset, limits, |_| true);
                        for rec in &r.messages {
                            let v = rec.view().expect("parse");
                            bytes += v.body().len();
                            n += 1;
                        }
                        offset = r.next_offset;
                    }
                    assert_eq!(n, N);
                    bytes
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, append_async, append_sync, read_sequential);
criterion_main!(benches);
