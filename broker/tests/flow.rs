//! Flow control: a flood of sends from several producers at once, against a store made slow
//! (each append takes a while, one at a time), gets busy answers (`StoreBusy`) instead of
//! queueing behind the store; what the broker holds stays bounded; and every acknowledged
//! message, and nothing else, is stored.

mod common;
use common::{T, connect, env_with, send};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use weir_protocol::admin::SetBrokerConfig;
use weir_protocol::broker::{
    BatchEntry, CreateTopic, PullResult, PullStatus, SendBatch, SendResult, SendStatus,
    split_records,
};
use weir_protocol::route::{TopicConfig, perm};
use weir_protocol::{CallError, Connection, ErrorCode, RecordView};

const PRODUCERS: u32 = 4;
/// Requests each producer keeps in flight.
const WINDOW: usize = 32;
const REQUESTS: usize = 240;
/// Producer 0 sends batches of this many.
const BATCH: usize = 4;

/// What one producer got back: the bodies acknowledged with their message ids, and how
/// many requests were refused as busy.
#[derive(Default)]
struct Outcome {
    acked: Vec<(String, String)>,
    busy: usize,
}

async fn one_send(conn: &Connection, p: u32, i: usize) -> Result<Vec<(String, String)>, CallError> {
    if p == 0 {
        let bodies: Vec<String> = (0..BATCH).map(|j| format!("p{p}-{i}-{j}")).collect();
        let req = SendBatch {
            producer_group: "pg".into(),
            topic: "Flood".into(),
            queue_id: p,
            messages: bodies
                .iter()
                .map(|b| BatchEntry {
                    tags: String::new(),
                    keys: vec![],
                    properties: vec![],
                    flag: 0,
                    born_timestamp: 1,
                    body_len: b.len() as u32,
                })
                .collect(),
        };
        let (r, _) = conn.call(&req, Bytes::from(bodies.concat()), T).await?;
        assert_eq!(r.results.len(), BATCH);
        Ok(bodies
            .into_iter()
            .zip(r.results)
            .map(|(b, s)| {
                assert_eq!(s.status, SendStatus::Ok);
                (s.msg_id, b)
            })
            .collect())
    } else {
        let body = format!("p{p}-{i}");
        let (r, _): (SendResult, Bytes) = conn
            .call(&send("Flood", p, "", &body), Bytes::from(body.clone()), T)
            .await?;
        assert_eq!(r.status, SendStatus::Ok);
        Ok(vec![(r.msg_id, body)])
    }
}

/// One producer: `REQUESTS` requests, `WINDOW` at a time, on its own connection and queue.
async fn produce(addr: String, p: u32) -> Outcome {
    let conn = connect(&addr).await;
    let next = Arc::new(AtomicUsize::new(0));
    let mut window = tokio::task::JoinSet::new();
    for _ in 0..WINDOW {
        let (conn, next) = (conn.clone(), Arc::clone(&next));
        window.spawn(async move {
            let mut out = Outcome::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    return out;
                }
                match one_send(&conn, p, i).await {
                    Ok(acked) => out.acked.extend(acked),
                    Err(CallError::Remote {
                        code: ErrorCode::StoreBusy,
                        message,
                    }) => {
                        assert!(message.contains("send_queue_wait_ms"), "{message}");
                        out.busy += 1;
                    }
                    Err(e) => panic!("producer {p}: {e}"),
                }
            }
        });
    }
    let mut all = Outcome::default();
    for o in window.join_all().await {
        all.acked.extend(o.acked);
        all.busy += o.busy;
    }
    all
}

/// Every stored message of a queue: (message id, body).
async fn stored(conn: &Connection, queue_id: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (r, body): (PullResult, Bytes) = conn
            .call(
                &common::pull("Flood", queue_id, offset, "*", 0),
                Bytes::new(),
                T,
            )
            .await
            .unwrap();
        match r.status {
            PullStatus::Found => {
                for rec in split_records(&body).unwrap() {
                    let v = RecordView::parse_verified(rec).unwrap();
                    let body = String::from_utf8(v.body().to_vec()).unwrap();
                    out.push((v.message_id().to_string(), body));
                }
            }
            PullStatus::NoMatch => {}
            PullStatus::NoNewMessage => return out,
            PullStatus::OffsetMoved => panic!("offset moved"),
        }
        offset = r.next_offset;
    }
}

/// Resident memory of this process (broker and producers), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_busy_answers_and_every_acknowledged_message_is_stored() {
    let env = env_with(|c| c.send_queue_wait_ms = 40).await;
    let broker = Arc::clone(env.broker().broker());
    let conn = env.client().await;
    let topic = TopicConfig {
        name: "Flood".into(),
        read_queues: PRODUCERS,
        write_queues: PRODUCERS,
        perm: perm::READ_WRITE,
    };
    conn.call(&CreateTopic { topic }, Bytes::new(), T)
        .await
        .unwrap();
    // A store that takes 4 ms per append: 32 producer requests in flight at once wait up
    // to 128 ms for their turn, past the 40 ms the broker lets a send wait.
    broker
        .send_queue
        .slow_appends_for_tests(Duration::from_millis(4));

    let rss_before = rss_kib();
    let addr = env.broker().local_addr().to_string();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(produce(addr.clone(), p)))
        .collect();
    // What the broker holds while the flood runs, sampled.
    let (mut peak_requests, mut peak_bytes, mut rss_peak) = (0, 0, 0);
    while !producers.iter().all(|p| p.is_finished()) {
        let s = env.broker().net_stats();
        peak_requests = peak_requests.max(s.pending_requests);
        peak_bytes = peak_bytes.max(s.pending_bytes);
        rss_peak = rss_peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut acked = Vec::new();
    let mut busy = 0;
    for p in producers {
        let o = p.await.unwrap();
        acked.extend(o.acked);
        busy += o.busy;
    }
    let requests = PRODUCERS as usize * REQUESTS;
    eprintln!(
        "flood: {requests} requests ({} messages), {} messages acknowledged, {busy} requests answered busy; broker held at most {peak_requests} requests, {peak_bytes} bytes; RSS {rss_before} KiB before, {rss_peak} KiB at most",
        (PRODUCERS as usize - 1) * REQUESTS + REQUESTS * BATCH,
        acked.len()
    );
    assert!(busy > 0, "the flood got no busy answer");
    assert!(!acked.is_empty(), "nothing was acknowledged");
    // Counted once, where refusals are counted.
    assert_eq!(broker.send_queue.refused(), busy as u64);
    assert!(
        broker
            .metrics
            .errors()
            .contains(&(ErrorCode::StoreBusy, busy as u64)),
        "{:?}",
        broker.metrics.errors()
    );
    // Bounded: the broker held no more than the producers had in flight (no queue of its
    // own behind the store), and let all of it go.
    assert!(
        peak_requests <= PRODUCERS as usize * WINDOW,
        "{peak_requests}"
    );
    assert_eq!(env.broker().net_stats().pending_requests, 0);

    // Every acknowledged message is stored, with its id; nothing refused is.
    broker.send_queue.slow_appends_for_tests(Duration::ZERO);
    let mut all = Vec::new();
    for q in 0..PRODUCERS {
        all.extend(stored(&conn, q).await);
    }
    let stored: BTreeSet<(String, String)> = all.iter().cloned().collect();
    assert_eq!(stored.len(), all.len(), "a message stored twice");
    let acked: BTreeSet<(String, String)> = acked.into_iter().collect();
    assert_eq!(stored, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_allowed_changes_live() {
    let env = env_with(|c| c.send_queue_wait_ms = 1).await;
    let broker = Arc::clone(env.broker().broker());
    let conn = env.client().await;
    broker
        .send_queue
        .slow_appends_for_tests(Duration::from_millis(5));
    let burst = |n: usize| {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..n {
            let conn = conn.clone();
            calls.spawn(async move {
                let body = format!("m{i}");
                conn.call::<weir_protocol::broker::SendMessage>(
                    &send("Live", 0, "", &body),
                    Bytes::from(body),
                    T,
                )
                .await
                .map(|(r, _)| r)
            });
        }
        calls.join_all()
    };
    let answers = burst(8).await;
    assert!(
        answers.iter().any(|a| matches!(
            a,
            Err(CallError::Remote {
                code: ErrorCode::StoreBusy,
                ..
            })
        )),
        "{answers:?}"
    );
    let set = SetBrokerConfig {
        name: "send_queue_wait_ms".into(),
        value: "60000".into(),
    };
    let (settings, _) = conn.call(&set, Bytes::new(), T).await.unwrap();
    assert!(
        settings
            .settings
            .contains(&("send_queue_wait_ms".into(), "60000".into()))
    );
    for a in burst(8).await {
        a.expect("no send waits a minute");
    }
}
