//! Builds a large backlog and reports memory as it grows, to show that the store's own
//! memory does not grow with the backlog (the mapped files live in the page cache).
//!
//! ```sh
//! cargo run --release -p weir-store --example backlog -- [DIR] [MESSAGES] [QUEUES]
//! ```
//! Defaults: a temporary folder, 20,000,000 messages of 128 B over 64 queues. Prints, at
//! each tenth of the run, messages written, commit log size, and the process's anonymous
//! (heap) and file-backed resident memory from /proc/self/status.

use std::time::Instant;

use weir_store::{Message, MessageStore, StoreConfig};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let total: u64 = args.next().map_or(Ok(20_000_000), |s| s.parse())?;
    let queues: u32 = args.next().map_or(Ok(64), |s| s.parse())?;

    let store = MessageStore::open(StoreConfig::new(&dir))?;
    let body = vec![b'x'; 128];
    let started = Instant::now();
    println!("messages,commit_log_mib,rss_anon_mib,rss_file_mib,elapsed_s");
    let step = (total / 10).max(1);
    for i in 0..total {
        let m = Message::new("backlog", (i % u64::from(queues)) as u32, body.clone())
            .with_tags("TagA")
            .with_key(format!("k{i}"));
        store.put(&m)?;
        if (i + 1) % step == 0 {
            println!(
                "{},{},{},{},{:.1}",
                i + 1,
                store.commit_log_max_offset() >> 20,
                status_kib("RssAnon:") >> 10,
                status_kib("RssFile:") >> 10,
                started.elapsed().as_secs_f64()
            );
        }
    }
    store.shutdown()?;
    Ok(())
}
