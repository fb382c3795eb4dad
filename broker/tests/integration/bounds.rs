//! What a client can make the broker hold through its connections: pulls never read,
//! pulls held past their connection's close, and the `[net]` settings.

use crate::common::{T, env, env_with, pull, send};

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weir_protocol::broker::PullStatus;
use weir_protocol::frame::{Frame, Kind};
use weir_protocol::rpc::encode_header;
use weir_protocol::{RequestCode, ServerStats};

async fn within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_never_read_stay_within_the_bound_and_others_are_served() {
    const MAX_BYTES: usize = 4 << 20;
    const MAX_REQUESTS: usize = 1024;
    let env = env_with(|c| {
        c.net.max_pending_bytes = MAX_BYTES;
        c.net.max_pending_requests = MAX_REQUESTS;
    })
    .await;
    let conn = env.client().await;
    // 16 messages of 4 KiB: each pull of the queue answers 64 KiB and more.
    let body = Bytes::from(vec![b'x'; 4096]);
    for i in 0..16 {
        conn.call(&send("Big", 0, "", &format!("k{i}")), body.clone(), T)
            .await
            .unwrap();
    }
    let (r, records) = conn
        .call(&pull("Big", 0, 0, "*", 0), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(r.status, PullStatus::Found);
    let reply_len = records.len() + 1024;
    // 10,000 such pulls pipelined on one connection, never read (640 MB of answers).
    let mut frames = BytesMut::new();
    for id in 0..10_000u32 {
        let header = encode_header(&pull("Big", 0, 0, "*", 0), "pull").unwrap();
        Frame {
            kind: Kind::Request,
            request_id: id,
            code: RequestCode::PullMessage as u16,
            auth: Bytes::new(),
            header,
            body: Bytes::new(),
        }
        .encode(&mut frames, 1 << 20)
        .unwrap();
    }
    let request_len = frames.len() / 10_000;
    let (hostile_rd, mut hostile_wr) = TcpStream::connect(env.broker().local_addr())
        .await
        .unwrap()
        .into_split();
    let writer = tokio::spawn(async move {
        let _ = hostile_wr.write_all(&frames).await;
        hostile_wr
    });
    let stats = || env.broker().net_stats();
    let full = |s: &ServerStats| s.pending_bytes + reply_len >= MAX_BYTES;
    within("the hostile connection at its bound", T, || full(&stats())).await;
    // Meanwhile another client's sends and pulls are answered promptly.
    let mut slowest = Duration::ZERO;
    for i in 0..50u64 {
        let started = Instant::now();
        let (sent, _) = conn
            .call(&send("Small", 0, "", "k"), Bytes::from("small"), T)
            .await
            .unwrap();
        let (r, _) = conn
            .call(
                &pull("Small", 0, sent.queue_offset, "*", 0),
                Bytes::new(),
                T,
            )
            .await
            .unwrap();
        assert_eq!((r.status, sent.queue_offset), (PullStatus::Found, i));
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest send + pull {slowest:?}"
    );
    let s = stats();
    assert!(full(&s), "{s:?}");
    assert!(s.peak_pending_requests <= MAX_REQUESTS, "{s:?}");
    // One frame read and one answer may go past the byte bound.
    assert!(
        s.peak_pending_bytes <= MAX_BYTES + reply_len + request_len,
        "{s:?}"
    );
    // The hostile client goes: what it held is released.
    writer.abort();
    let _ = writer.await;
    drop(hostile_rd);
    within("the hostile connection's release", T, || {
        let s = stats();
        s.connections == 1 && s.pending_requests == 0 && s.pending_bytes == 0
    })
    .await;
}

#[tokio::test]
async fn a_held_pull_is_released_when_its_connection_closes() {
    let env = env().await;
    let conn = env.client().await;
    conn.call(&send("Held", 0, "", "k"), Bytes::from("one"), T)
        .await
        .unwrap();
    let holder = env.client().await;
    let held = {
        let holder = holder.clone();
        tokio::spawn(async move {
            holder
                .call(&pull("Held", 0, 1, "*", 30_000), Bytes::new(), T * 4)
                .await
        })
    };
    let broker = env.broker().broker();
    within("the pull held", T, || broker.held_pulls() == 1).await;
    holder.close();
    within("the held pull released", Duration::from_secs(1), || {
        broker.held_pulls() == 0
    })
    .await;
    assert!(held.await.unwrap().is_err());
}

#[tokio::test]
async fn net_and_limit_settings_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let read = |text: &str| {
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, text).unwrap();
        weir_namesrv::server_main::read_toml::<weir_broker::BrokerConfig>(&path)
    };
    let c = read("[net]\nmax_connections = 5\nidle_timeout_ms = 60000\n").unwrap();
    assert_eq!((c.net.max_connections, c.net.idle_timeout_ms), (5, 60_000));
    assert_eq!(
        c.net.max_pending_requests, 1024,
        "the others keep their defaults"
    );
    c.validate().unwrap();
    let e = read("[net]\nmax_conections = 5\n").unwrap_err();
    assert!(format!("{e:#}").contains("max_conections"), "{e:#}");
    let mut c = read("").unwrap();
    c.net.max_pending_bytes = 0;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("net.max_pending_bytes = 0"), "{e}");
    let c = read("[net]\nmax_pending_bytes_total = 1073741824\n").unwrap();
    assert_eq!(c.net.server_config().max_pending_bytes_total, 1 << 30);
    let mut c = read("").unwrap();
    assert_eq!(c.net.max_pending_bytes_total, 256 << 20);
    c.net.max_pending_bytes_total = 1000;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("net.max_pending_bytes_total = 1000"), "{e}");
    // The room kept from heartbeats must leave them some.
    let c = read("[limits]\nmax_topics = 50\ntopic_room_kept_from_heartbeats = 50\n").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains(
            "limits.topic_room_kept_from_heartbeats (50) must be under limits.max_topics (50)"
        ),
        "{e}"
    );
    let c = read("[limits]\nmax_topics = 50\ntopic_room_kept_from_heartbeats = 0\n").unwrap();
    c.validate().unwrap();
}
