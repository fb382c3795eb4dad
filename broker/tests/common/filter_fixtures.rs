//! Filter fixtures shared by the broker's filter benchmarks (`benches/filter*.rs`, through
//! `#[path]`) and tests (`tests/filter_scheduling.rs`): stored records with varied
//! properties, a component loaded into a runtime, a batch context, and the hostile
//! fixture's `busy` mode calibrated to an amount of CPU time.
// Each user takes part of this.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_broker::filter::{
    BatchContext, DirectCaller, FilterError, FilterLabel, FilterRuntime, LoadedFilter,
};
use weir_protocol::Message;
use weir_protocol::record::{Assigned, encode_to_vec};

/// A property expression over [`records`], keeping about 30 % of them.
pub const EXPR: &str = "(region = 'eu' AND amount > 500) OR priority IN ('high', 'urgent')";

/// `n` encoded records with `body`-byte bodies and varied tags, keys and properties.
pub fn records(n: usize, body: usize) -> Vec<Bytes> {
    let host: SocketAddr = "127.0.0.1:10911".parse().expect("address");
    (0..n)
        .map(|i| {
            let msg = Message::new("bench", 0, vec![b'x'; body])
                .with_tags(if i % 3 == 0 { "TagA" } else { "TagB" })
                .with_key(format!("order-{i}"))
                .with_property("UNIQ_KEY", format!("{i:032x}"))
                .with_property("region", ["eu", "us", "apac"][i % 3])
                .with_property("amount", format!("{}", (i * 37) % 1000))
                .with_property("priority", ["low", "normal", "high", "urgent"][i % 7 % 4])
                .with_property("tenant", format!("tenant-{}", i % 11))
                .with_property("TRACE_ON", "true");
            let a = Assigned {
                queue_offset: i as u64,
                commit_log_offset: 0,
                store_timestamp: 1_700_000_000_000,
                store_host: host,
            };
            Bytes::from(encode_to_vec(&msg, &a).expect("encode"))
        })
        .collect()
}

/// Compiles the component at `path` (a `weir_filter_artifacts` constant) and loads it with
/// `params` and a memory cap of `memory` bytes: what the load (instantiation and `init`)
/// answered.
pub fn try_load(
    runtime: &FilterRuntime,
    path: &str,
    params: &[(&str, &str)],
    memory: usize,
) -> Result<Arc<LoadedFilter>, FilterError> {
    let compiled = runtime
        .compile(&weir_filter_artifacts::read(path))
        .expect("compile");
    let params = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    runtime.load(
        compiled,
        params,
        memory,
        FilterLabel::new("bench", "bench", 1, String::new()),
    )
}

/// [`try_load`], which must succeed.
pub fn load_with_memory(
    runtime: &FilterRuntime,
    path: &str,
    params: &[(&str, &str)],
    memory: usize,
) -> Arc<LoadedFilter> {
    try_load(runtime, path, params, memory).expect("load")
}

/// [`load_with_memory`] with the runtime's default memory cap.
pub fn load(runtime: &FilterRuntime, path: &str, params: &[(&str, &str)]) -> Arc<LoadedFilter> {
    load_with_memory(runtime, path, params, runtime.config().memory_limit)
}

/// A batch of queue 0 of topic `bench` for `group`.
pub fn ctx(group: &str) -> BatchContext {
    BatchContext {
        topic: "bench".into(),
        queue_id: 0,
        consumer_group: group.into(),
    }
}

/// The CPU time this thread has used.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Rounds of the hostile filter's `busy` mode that take about `target` of CPU time per
/// batch, measured on this thread's CPU clock (so however busy the machine is).
pub fn calibrate_busy(runtime: &FilterRuntime, target: Duration) -> u64 {
    let recs = records(8, 16);
    let mut rounds = 200_000u64;
    loop {
        let work = rounds.to_string();
        let f = load(
            runtime,
            weir_filter_artifacts::HOSTILE,
            &[("mode", "busy"), ("work", &work)],
        );
        let mut direct = DirectCaller::new(runtime);
        direct.call(&f, &ctx("calibrate"), &recs).expect("warm-up");
        let t0 = thread_cpu();
        direct
            .call(&f, &ctx("calibrate"), &recs)
            .expect("timed call");
        let took = thread_cpu().saturating_sub(t0);
        if took >= target / 4 || rounds > 1 << 36 {
            let scaled = rounds as f64 * target.as_secs_f64() / took.as_secs_f64().max(1e-6);
            return scaled as u64;
        }
        rounds *= 8;
    }
}
