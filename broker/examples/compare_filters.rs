//! Compares the cost per message of filter components side by side, in one process:
//!
//! ```text
//! cargo run --release -p weir-broker --example compare_filters -- \
//!     [--expr "n = '0'"] [--records vary|fixture] [--rounds 30] A.wasm B.wasm ...
//! ```
//!
//! Each component is loaded with the parameter `expr` (as the SQL92 filters take it) and
//! called on this thread (`DirectCaller`: the host's packing of the batch and the filter's
//! own work, not the hand-off to a worker) with one batch of 256 stored records, 200 calls a
//! round, the components taking turns round by round; it prints each one's best and median
//! round in ns a message. Taking turns in one process is what makes two builds comparable
//! on a noisy machine, where runs minutes apart differ by more than the change.
//!
//! Records: `vary` (default), 128 B messages whose property `n` is `i mod 10`, as `weir
//! bench produce --vary 10` sends them; `fixture`, the filter benchmarks' messages with six
//! properties (`benches/filter.rs`, whose expression to use with them is `EXPR` there).

use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use weir_broker::filter::{DirectCaller, FilterConfig, FilterLabel, FilterRuntime};
use weir_protocol::Message;
use weir_protocol::record::{Assigned, encode_to_vec};

#[path = "../tests/common/filter_fixtures.rs"]
mod filter_fixtures;

const BATCH: usize = 256;
const CALLS_PER_ROUND: u32 = 200;

fn varying_records() -> anyhow::Result<Vec<Bytes>> {
    let host = "127.0.0.1:10911".parse()?;
    (0..BATCH)
        .map(|i| {
            let msg =
                Message::new("bench", 0, vec![b'x'; 128]).with_property("n", (i % 10).to_string());
            let a = Assigned {
                queue_offset: i as u64,
                commit_log_offset: 0,
                store_timestamp: 1_700_000_000_000,
                store_host: host,
            };
            Ok(Bytes::from(encode_to_vec(&msg, &a)?))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let mut expr = "n = '0'".to_owned();
    let mut records = "vary".to_owned();
    let mut rounds = 30u32;
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--expr" => expr = value("--expr")?,
            "--records" => records = value("--records")?,
            "--rounds" => rounds = value("--rounds")?.parse().context("--rounds")?,
            flag if flag.starts_with("--") => bail!("unknown option {flag}"),
            _ => paths.push(a),
        }
    }
    if paths.is_empty() || rounds == 0 {
        bail!("usage: compare_filters [--expr E] [--records vary|fixture] [--rounds N] A.wasm ...");
    }
    let recs = match records.as_str() {
        "vary" => varying_records()?,
        "fixture" => filter_fixtures::records(BATCH, 100),
        other => bail!("--records is vary or fixture, not {other:?}"),
    };
    let runtime = FilterRuntime::new(FilterConfig {
        workers: 1,
        ..FilterConfig::default()
    })?;
    let ctx = filter_fixtures::ctx("bench");
    let mut direct = DirectCaller::new(&runtime);
    let mut loaded = Vec::new();
    for path in &paths {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let compiled = runtime
            .compile(&bytes)
            .with_context(|| format!("compiling {path}"))?;
        let filter = runtime
            .load(
                compiled,
                vec![("expr".into(), expr.clone())],
                16 << 20,
                FilterLabel::new("bench", "bench", 1, String::new()),
            )
            .with_context(|| format!("loading {path} with expr={expr:?}"))?;
        loaded.push(filter);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut kept = vec![0; paths.len()];
    for _ in 0..rounds {
        for (i, filter) in loaded.iter().enumerate() {
            let began = Instant::now();
            for _ in 0..CALLS_PER_ROUND {
                let verdicts = direct.call(filter, &ctx, &recs)?;
                kept[i] = verdicts.iter().filter(|k| **k).count();
            }
            let ns = began.elapsed().as_nanos() as f64 / f64::from(CALLS_PER_ROUND) / BATCH as f64;
            times[i].push(ns);
        }
    }
    println!(
        "expr {expr:?}, records {records}, {rounds} rounds of {CALLS_PER_ROUND} calls of {BATCH}"
    );
    for ((path, t), kept) in paths.iter().zip(&mut times).zip(kept) {
        t.sort_by(f64::total_cmp);
        println!(
            "{:8.1} best {:8.1} median ns/msg  keeps {kept:3}/{BATCH}  {path}",
            t[0],
            t[t.len() / 2]
        );
    }
    Ok(())
}
