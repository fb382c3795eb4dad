//! A client that pipelines pulls and never reads their answers, against a running broker,
//! while printing the broker's resident memory: what issue 11 ("Bounded connections")
//! measures.
//!
//! ```sh
//! cargo run --release -p weir-protocol --example pull_flood -- BROKER_ADDR BROKER_PID 10000
//! ```
//!
//! Stores 16 messages of 4 KiB on queue 0 of topic `Flood` (so every pull answers about
//! 66 KB), reads the broker's `VmRSS` and `RssAnon` from `/proc/PID/status` when idle,
//! pipelines N pulls on one connection without reading, samples while the broker takes
//! them (and times a send and a pull on another connection), then closes the flooding
//! connection and samples again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weir_protocol::broker::{PullMessage, SendMessage};
use weir_protocol::frame::{Frame, Kind};
use weir_protocol::rpc::encode_header;
use weir_protocol::{ConnConfig, Connection, NoHandler, RequestCode};

const T: Duration = Duration::from_secs(10);

/// (VmRSS, RssAnon) in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn pull(offset: u64) -> PullMessage {
    PullMessage {
        group: "flood".into(),
        topic: "Flood".into(),
        queue_id: 0,
        offset,
        max_msgs: 32,
        expression: "*".into(),
        suspend_ms: 0,
        commit_offset: None,
    }
}

fn send(key: &str) -> SendMessage {
    SendMessage {
        producer_group: "flood".into(),
        topic: "Flood".into(),
        queue_id: 0,
        tags: String::new(),
        keys: vec![key.into()],
        properties: vec![],
        flag: 0,
        born_timestamp: 0,
        sys_flag: 0,
        reconsume_times: 0,
        max_reconsume_times: None,
    }
}

/// Samples until the figure stops growing (or `limit`), returning the highest.
async fn settle(pid: u32, limit: Duration) -> (u64, u64) {
    let started = Instant::now();
    let mut peak = memory(pid);
    let mut still = 0;
    while started.elapsed() < limit && still < 8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = memory(pid);
        if now.1 > peak.1 + peak.1 / 100 {
            still = 0;
        } else {
            still += 1;
        }
        peak = (peak.0.max(now.0), peak.1.max(now.1));
    }
    peak
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, pid, n] = &args[..] else {
        eprintln!("usage: pull_flood BROKER_ADDR BROKER_PID PULLS");
        std::process::exit(2);
    };
    let pid: u32 = pid.parse().expect("a process id");
    let n: u32 = n.parse().expect("a number of pulls");
    let conn = Connection::connect(addr, Arc::new(NoHandler), ConnConfig::default(), T)
        .await
        .expect("the broker answers");
    let body = Bytes::from(vec![b'x'; 4096]);
    let mut first = None;
    for i in 0..16 {
        let (r, _) = conn
            .call(&send(&format!("k{i}")), body.clone(), T)
            .await
            .expect("a send");
        first.get_or_insert(r.queue_offset);
    }
    let offset = first.unwrap_or(0);
    let (_, records) = conn
        .call(&pull(offset), Bytes::new(), T)
        .await
        .expect("a pull");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = memory(pid);
    println!(
        "idle: VmRSS {} RssAnon {} (each pull answers {} bytes)",
        mib(idle.0),
        mib(idle.1),
        records.len()
    );

    let mut frames = BytesMut::new();
    for id in 0..n {
        Frame {
            kind: Kind::Request,
            request_id: id,
            code: RequestCode::PullMessage as u16,
            auth: Bytes::new(),
            header: encode_header(&pull(offset), "pull").expect("a header"),
            body: Bytes::new(),
        }
        .encode(&mut frames, 1 << 20)
        .expect("a frame");
    }
    let (flood_rd, mut flood_wr) = TcpStream::connect(addr)
        .await
        .expect("a connection")
        .into_split();
    let writer = tokio::spawn(async move {
        let _ = flood_wr.write_all(&frames).await;
        flood_wr
    });
    let during = settle(pid, Duration::from_secs(60)).await;
    let started = Instant::now();
    let (sent, _) = conn
        .call(&send("other"), Bytes::from("x"), T)
        .await
        .expect("a send meanwhile");
    conn.call(&pull(sent.queue_offset), Bytes::new(), T)
        .await
        .expect("a pull meanwhile");
    let other = started.elapsed();
    println!(
        "{n} pulls never read: VmRSS {} RssAnon {} (+{} over idle); another client's send + pull took {other:?}; writer done: {}",
        mib(during.0),
        mib(during.1),
        mib(during.1.saturating_sub(idle.1)),
        writer.is_finished()
    );
    writer.abort();
    let _ = writer.await;
    drop(flood_rd);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = memory(pid);
    println!(
        "after the flooding client left: VmRSS {} RssAnon {} (+{} over idle)",
        mib(after.0),
        mib(after.1),
        mib(after.1.saturating_sub(idle.1))
    );
}
