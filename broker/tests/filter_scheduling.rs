//! The filter runtime under load: the time budget counts the filter's own CPU time, so a
//! busy machine does not fail a good filter (while a looping one is still stopped), and
//! batches are routed by filter so an instance stays warm on one worker. (The scheduling
//! policy itself, with plain jobs, is tested in `runtime/schedule_tests.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_broker::filter::{FailureKind, FilterConfig, FilterRuntime};

#[path = "common/filter_fixtures.rs"]
mod filter_fixtures;
use filter_fixtures::{calibrate_busy, ctx, load, records, try_load};

/// Threads that keep every core busy until dropped.
struct Spinners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Spinners {
    fn start(n: usize) -> Spinners {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                })
            })
            .collect();
        Spinners { stop, threads }
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_machine_does_not_fail_a_good_filter_but_a_loop_is_still_stopped() {
    let runtime = FilterRuntime::new(FilterConfig {
        workers: 1,
        batch_cpu_ms: 50,
        ..FilterConfig::default()
    })
    .expect("runtime");
    // A batch that costs under a third of the budget (room for a VM's CPU clock running
    // slow under contention)...
    let rounds = calibrate_busy(&runtime, Duration::from_millis(15)).to_string();
    let good = load(
        &runtime,
        weir_filter_artifacts::HOSTILE,
        &[("mode", "busy"), ("work", &rounds)],
    );
    // ...on a machine with four spinning threads per core: the worker gets a fifth of a
    // core or less, so each batch takes several times its CPU time on the wall clock
    // (past 50 ms).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners = Spinners::start(4 * cores);
    let mut slowest = Duration::ZERO;
    for _ in 0..6 {
        let t0 = Instant::now();
        let r = runtime.run(&good, ctx("G"), records(8, 16)).await;
        slowest = slowest.max(t0.elapsed());
        let (_, verdicts) =
            r.unwrap_or_else(|f| panic!("a good filter failed on a busy machine: {f}"));
        assert_eq!(verdicts, vec![true; 8]);
    }
    // The test proves something only if a wall-clock budget would have failed the filter.
    assert!(
        slowest > Duration::from_millis(50),
        "the machine was not busy enough: the slowest batch took {slowest:?}"
    );
    let stats = good.stats();
    assert_eq!((stats.deadlines, stats.calls), (0, 6));

    // A filter that loops is stopped by its CPU budget, busy machine or not.
    let looping = load(
        &runtime,
        weir_filter_artifacts::HOSTILE,
        &[("mode", "loop")],
    );
    let t0 = Instant::now();
    let failure = match runtime.run(&looping, ctx("G"), records(8, 16)).await {
        Err(f) => f,
        Ok(_) => panic!("a looping filter returned"),
    };
    drop(spinners);
    assert_eq!(failure.kind, FailureKind::Deadline);
    assert!(
        failure.detail.contains("CPU time budget of 50 ms"),
        "{}",
        failure.detail
    );
    // Stopped by the CPU budget, well before the wall-clock safety net.
    assert!(
        t0.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_limit_is_a_safety_net_for_a_starved_call() {
    // The wall limit equal to the CPU budget: with the machine kept busy, the call reaches
    // the wall limit first.
    let runtime = FilterRuntime::new(FilterConfig {
        workers: 1,
        batch_cpu_ms: 100,
        batch_wall_limit_ms: 100,
        ..FilterConfig::default()
    })
    .expect("runtime");
    let looping = load(
        &runtime,
        weir_filter_artifacts::HOSTILE,
        &[("mode", "loop")],
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners = Spinners::start(4 * cores);
    let failure = match runtime.run(&looping, ctx("G"), records(1, 16)).await {
        Err(f) => f,
        Ok(_) => panic!("a looping filter returned"),
    };
    drop(spinners);
    assert_eq!(failure.kind, FailureKind::Deadline);
    assert!(
        failure.detail.contains("wall-clock limit of 100 ms"),
        "{}",
        failure.detail
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_has_a_cpu_budget_of_its_own() {
    // A start (instantiation and `init`) of about 100 ms of CPU time, twice a batch's
    // budget: a JavaScript or Python engine's start on a slow machine.
    let calibration = FilterRuntime::new(FilterConfig {
        workers: 1,
        batch_cpu_ms: 5_000,
        batch_wall_limit_ms: 10_000,
        ..FilterConfig::default()
    })
    .expect("runtime");
    let rounds = calibrate_busy(&calibration, Duration::from_millis(100)).to_string();
    let slow_start = [("mode", "busy"), ("at", "init"), ("work", rounds.as_str())];
    let config = FilterConfig {
        workers: 1,
        batch_cpu_ms: 50,
        init_cpu_ms: 2_000,
        ..FilterConfig::default()
    };
    let runtime = FilterRuntime::new(config.clone()).expect("runtime");
    // Started at load (the upload-time check) and again on the worker, for the batch.
    let filter = load(&runtime, weir_filter_artifacts::HOSTILE, &slow_start);
    let (_, verdicts) = runtime
        .run(&filter, ctx("G"), records(4, 16))
        .await
        .unwrap_or_else(|f| panic!("a slow start failed the first batch: {f}"));
    assert_eq!(verdicts, vec![true; 4]);
    assert_eq!(filter.stats().instantiations, 1);

    // Under a 20 ms start budget the same start is stopped, saying which budget.
    let strict = FilterRuntime::new(FilterConfig {
        init_cpu_ms: 20,
        ..config
    })
    .expect("runtime");
    let memory = strict.config().memory_limit;
    let err = match try_load(&strict, weir_filter_artifacts::HOSTILE, &slow_start, memory) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a 100 ms start passed a 20 ms start budget"),
    };
    assert!(err.contains("CPU time budget of 20 ms"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filters_batches_stay_on_one_warm_instance() {
    let runtime = FilterRuntime::new(FilterConfig {
        workers: 2,
        ..FilterConfig::default()
    })
    .expect("runtime");
    let filters: Vec<_> = (0..3)
        .map(|_| load(&runtime, weir_filter_artifacts::KEEP_ALL, &[]))
        .collect();
    for round in 0..40 {
        for (n, f) in filters.iter().enumerate() {
            let group = format!("G{}", (round + n) % 2);
            runtime
                .run(f, ctx(&group), records(4, 16))
                .await
                .expect("filter call");
        }
    }
    // Both workers were free at every batch: each filter's batches went to its own worker,
    // one instance each (a shared queue would have spread them over both workers).
    for f in &filters {
        let s = f.stats();
        assert_eq!((s.calls, s.instantiations), (40, 1), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_memory_keeps_growing_is_replaced_before_it_fails() {
    let runtime = FilterRuntime::new(FilterConfig {
        workers: 1,
        ..FilterConfig::default()
    })
    .expect("runtime");
    // 256 KiB leaked a batch: one instance reaches the 16 MiB cap within 64 batches.
    let cap = runtime.config().memory_limit;
    assert_eq!(cap, 16 << 20);
    let leaky = load(
        &runtime,
        weir_filter_artifacts::HOSTILE,
        &[("mode", "leak")],
    );
    for n in 0..200 {
        let verdicts = runtime
            .run(&leaky, ctx("G"), records(4, 16))
            .await
            .unwrap_or_else(|e| panic!("batch {n}: {e}"))
            .1;
        assert_eq!(verdicts, vec![true; 4]);
    }
    let s = leaky.stats();
    assert_eq!((s.calls, s.memory_exhausted), (200, 0), "{s:?}");
    // Replaced each time it grew by half the room it had after its first batch (about
    // 7 MiB, 28 batches): several fresh instances, not one a batch.
    assert!((4..=20).contains(&s.instantiations), "{s:?}");

    // A filter whose memory stays put keeps its one instance.
    let steady = load(&runtime, weir_filter_artifacts::HOSTILE, &[]);
    for _ in 0..200 {
        runtime
            .run(&steady, ctx("G"), records(4, 16))
            .await
            .expect("filter call");
    }
    assert_eq!(steady.stats().instantiations, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_group_holds_at_most_its_cap_and_a_waiting_batch_times_out_busy() {
    let runtime = FilterRuntime::new(FilterConfig {
        workers: 2,
        max_group_workers: 1,
        queue_timeout_ms: 200,
        batch_cpu_ms: 5_000,
        batch_wall_limit_ms: 10_000,
        ..FilterConfig::default()
    })
    .expect("runtime");
    let rounds = calibrate_busy(&runtime, Duration::from_millis(300)).to_string();
    let slow = load(
        &runtime,
        weir_filter_artifacts::HOSTILE,
        &[("mode", "busy"), ("work", &rounds)],
    );
    let quick = load(&runtime, weir_filter_artifacts::KEEP_ALL, &[]);
    // Four batches of the slow group at once: one runs, the rest wait behind the cap.
    let slow_batches: Vec<_> = (0..4)
        .map(|_| {
            let (runtime, slow) = (runtime.clone(), Arc::clone(&slow));
            tokio::spawn(async move { runtime.run(&slow, ctx("slow"), records(2, 16)).await })
        })
        .collect();
    // Meanwhile another group is served by the other worker, every time.
    for _ in 0..20 {
        runtime
            .run(&quick, ctx("quick"), records(2, 16))
            .await
            .expect("the other group's batch");
    }
    let mut ran = 0u64;
    let mut busy = Vec::new();
    for b in slow_batches {
        match b.await.expect("join") {
            Ok(_) => ran += 1,
            Err(f) => busy.push(f),
        }
    }
    // A batch runs ~300 ms and the waiting ones time out after 200 ms: the first runs, and
    // at least the last (which would start after ~600 ms) is answered busy, not run.
    assert!(ran >= 1 && !busy.is_empty(), "ran {ran}, busy {busy:?}");
    for f in &busy {
        assert_eq!(f.kind, FailureKind::Busy, "{f}");
        assert!(f.detail.contains("queue_timeout_ms"), "{f}");
    }
    // Busy is not the filter's fault: no failure counted, no mark.
    assert!(slow.marked_failed().is_none());
    assert_eq!(slow.stats().calls, ran);
}
