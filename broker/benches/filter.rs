//! Filter call benchmarks (criterion): `cargo bench -p weir-broker --bench filter`.
//!
//! Per-message cost of deciding a batch with a wasm filter, through the broker's runtime
//! exactly as a pull uses it (hand-off to a filter worker, records lowered from their
//! stored bytes, verdicts back), for batches of 32 and 256 messages with 100 B and 1 KiB
//! bodies:
//! - `keep-all`: a filter that keeps everything (the cost of the call itself);
//! - `sql92`: `(region = 'eu' AND amount > 500) OR priority IN ('high', 'urgent')` over
//!   six properties per message;
//! - `keep-all-direct`, `sql92-direct`: the call alone, made on the benchmark's thread
//!   (`DirectCaller`): the filter's own cost per message;
//! - `keep-all-pipelined`, `sql92-pipelined`: the same with 8 batches in flight, so the
//!   filter worker goes from call to call without sleeping (a busy broker); the cost per
//!   message without the two thread wake-ups of a lone call;
//! - `native-sql92`: the same expression evaluated in native Rust (the sql92 filter's
//!   own parser and evaluator, compiled for the host) over the same stored records,
//!   parsing each record as the runtime does;
//! - `js-sql92-direct`, `py-sql92-direct`: the same expression with the JavaScript
//!   (`filters/js/sql92`) and Python (`filters/python/sql92`) property filters, on this
//!   thread: the per-language cost of one filter (skipped, saying why, when
//!   componentize-js or componentize-py was not installed when the artifacts were built).
//!
//! Throughput is reported in messages, so criterion's time per element is the cost per
//! message. Under `cargo test --benches` every benchmark runs once.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weir_broker::filter::{BatchContext, DirectCaller, FilterConfig, FilterRuntime};
use weir_protocol::RecordView;

#[path = "../tests/common/filter_fixtures.rs"]
mod filter_fixtures;
use filter_fixtures::{EXPR, load, load_with_memory, records};

/// Batches in flight in the `-pipelined` benchmarks.
const IN_FLIGHT: usize = 8;

/// Memory cap of the JavaScript and Python filters (their engines need more than the
/// default 16 MiB).
const ENGINE_MEMORY: usize = 64 << 20;

fn filter_calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let runtime = FilterRuntime::new(FilterConfig {
        workers: 1,
        ..FilterConfig::default()
    })
    .expect("filter runtime");
    let keep_all = load(&runtime, weir_filter_artifacts::KEEP_ALL, &[]);
    let sql92 = load(&runtime, weir_filter_artifacts::SQL92, &[("expr", EXPR)]);
    // The same property filter in JavaScript and Python, where their tools were installed.
    let mut engines = Vec::new();
    for (name, path) in [
        ("js-sql92-direct", weir_filter_artifacts::JS_SQL92),
        ("py-sql92-direct", weir_filter_artifacts::PY_SQL92),
    ] {
        if path.starts_with(weir_filter_artifacts::NOT_BUILT_PREFIX) {
            eprintln!("skipping {name}: {path}");
        } else {
            engines.push((
                name,
                load_with_memory(&runtime, path, &[("expr", EXPR)], ENGINE_MEMORY),
            ));
        }
    }
    let native = weir_filter_sql92::parse(EXPR).expect("expression");
    let mut direct = DirectCaller::new(&runtime);
    let ctx = BatchContext {
        topic: "bench".into(),
        queue_id: 0,
        consumer_group: "bench".into(),
    };

    let mut group = c.benchmark_group("filter");
    for body in [100usize, 1024] {
        for batch in [32usize, 256] {
            let recs = records(batch, body);
            group.throughput(Throughput::Elements(batch as u64));
            let id = |name: &str| BenchmarkId::new(name, format!("b{batch}/{body}B"));
            for (name, filter) in [("keep-all", &keep_all), ("sql92", &sql92)] {
                // On this thread: the call itself (lowering, the guest, verdicts back).
                group.bench_function(id(&format!("{name}-direct")), |b| {
                    b.iter(|| direct.call(filter, &ctx, &recs).expect("filter call"))
                });
                // One batch at a time: the latency of a call, per message, including the
                // hand-off to the worker thread and back (two thread wake-ups).
                group.bench_function(id(name), |b| {
                    b.iter_batched(
                        || recs.clone(),
                        |recs| {
                            rt.block_on(runtime.run(filter, ctx.clone(), recs))
                                .expect("filter call")
                        },
                        BatchSize::SmallInput,
                    )
                });
                // Several batches in flight, as when many pulls are served: the worker
                // goes from one call to the next without sleeping; the sustained cost.
                group.throughput(Throughput::Elements((batch * IN_FLIGHT) as u64));
                group.bench_function(id(&format!("{name}-pipelined")), |b| {
                    b.iter_batched(
                        || vec![recs.clone(); IN_FLIGHT],
                        |batches| {
                            rt.block_on(async {
                                let calls: Vec<_> = batches
                                    .into_iter()
                                    .map(|recs| {
                                        let (runtime, filter, ctx) =
                                            (runtime.clone(), Arc::clone(filter), ctx.clone());
                                        tokio::spawn(async move {
                                            runtime.run(&filter, ctx, recs).await
                                        })
                                    })
                                    .collect();
                                for call in calls {
                                    call.await.expect("task").expect("filter call");
                                }
                            })
                        },
                        BatchSize::SmallInput,
                    )
                });
                group.throughput(Throughput::Elements(batch as u64));
            }
            for (name, filter) in &engines {
                group.bench_function(id(name), |b| {
                    b.iter(|| direct.call(filter, &ctx, &recs).expect("filter call"))
                });
            }
            group.bench_function(id("native-sql92"), |b| {
                b.iter(|| {
                    recs.iter()
                        .map(|r| {
                            RecordView::parse(black_box(r))
                                .is_ok_and(|v| native.evaluate(|name| v.property(name)))
                        })
                        .collect::<Vec<bool>>()
                })
            });
        }
    }
    group.finish();

    // The verdicts agree with the native predicate.
    let recs = records(256, 100);
    let (_, wasm) = rt
        .block_on(runtime.run(&sql92, ctx.clone(), recs.clone()))
        .expect("filter call");
    let native: Vec<bool> = recs
        .iter()
        .map(|r| RecordView::parse(r).is_ok_and(|v| native.evaluate(|n| v.property(n))))
        .collect();
    assert_eq!(wasm, native, "wasm and native sql92 disagree");
    for (name, filter) in &engines {
        let verdicts = direct.call(filter, &ctx, &recs).expect("filter call");
        assert_eq!(verdicts, native, "{name} and native sql92 disagree");
    }
    let kept = native.iter().filter(|k| **k).count();
    println!("sql92 keeps {kept} of 256 benchmark messages");
}

criterion_group!(benches, filter_calls);
criterion_main!(benches);
