//! What producers and consumers see when the store cannot take more: a full disk, a failed
//! sync, a slow sync. Sends get a clear status; pulls go on; nothing acknowledged is lost.

use crate::common::{T, connect, env_with, eventually, expect_error, pull, send};

use std::time::Duration;

use bytes::Bytes;
use weir_protocol::ErrorCode;
use weir_protocol::broker::{PullResult, PullStatus, SendResult, SendStatus, UpdateConsumerOffset};
use weir_protocol::route::{GetRoute, perm};
use weir_protocol::{Connection, RecordView};
use weir_store::FlushMode;

async fn pull_all(conn: &Connection, topic: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (r, body): (PullResult, Bytes) = conn
            .call(&pull(topic, 0, offset, "*", 0), Bytes::new(), T)
            .await
            .unwrap();
        match r.status {
            PullStatus::Found => {
                for rec in weir_protocol::broker::split_records(&body).unwrap() {
                    out.push(RecordView::parse_verified(rec).unwrap().body().to_vec());
                }
            }
            PullStatus::NoNewMessage => return out,
            s => panic!("unexpected {s:?}"),
        }
        offset = r.next_offset;
    }
}

fn body(i: usize) -> Bytes {
    Bytes::from(format!("{i:08}-").repeat(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sends_serves_pulls_and_resumes_once_consumed() {
    let env = env_with(|c| {
        c.store.commit_log_segment_size = 1 << 20;
        // The test's own "disk": 12 MiB for the store's files.
        c.store.disk_quota_bytes = Some(12 << 20);
        // Above what the machine's own disk already uses: only the quota decides.
        let used = weir_store::FsReading::of(std::path::Path::new("."))
            .unwrap()
            .used_ratio();
        c.store.disk_full_ratio = (used + 0.05).clamp(0.8, 0.995);
        c.store.disk_max_used_ratio = (c.store.disk_full_ratio - 0.2).max(0.6);
        c.store.disk_check_interval_ms = 20;
    })
    .await;
    let conn = env.client().await;
    let mut acked = 0usize;
    let refusal = loop {
        assert!(acked < 100_000, "never full");
        match conn
            .call(&send("Full", 0, "", &format!("k{acked}")), body(acked), T)
            .await
        {
            Ok((r, _)) => {
                let r: SendResult = r;
                assert_eq!(r.status, SendStatus::Ok);
                acked += 1;
            }
            Err(e) => break e,
        }
    };
    match &refusal {
        weir_protocol::CallError::Remote { code, message } => {
            assert_eq!(*code, ErrorCode::DiskFull, "{message}");
            assert!(message.contains("disk full"), "{message}");
            assert!(message.contains("store quota"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    expect_error(
        &conn,
        &send("Full", 0, "", "more"),
        body(0),
        ErrorCode::DiskFull,
        "reads continue",
    )
    .await;
    // Producers are routed elsewhere: the name server's route turns read-only.
    let ns = connect(&env.ns.local_addr().to_string()).await;
    let route_perm = async || {
        let r = ns
            .call(
                &GetRoute {
                    topic: "Full".into(),
                },
                Bytes::new(),
                T,
            )
            .await;
        r.ok().and_then(|(r, _)| r.queues.first().map(|q| q.perm))
    };
    eventually("read-only route", async || {
        route_perm().await == Some(perm::READ)
    })
    .await;
    // Pulls go on: every acknowledged message, exact bytes.
    let got = pull_all(&conn, "Full").await;
    assert_eq!(got.len(), acked);
    for (i, b) in got.iter().enumerate() {
        assert_eq!(b[..], body(i)[..]);
    }
    // A consumer group commits everything; retention frees what it consumed, and sends
    // resume by themselves.
    let commit = UpdateConsumerOffset {
        group: "cg".into(),
        topic: "Full".into(),
        queue_id: 0,
        offset: acked as u64,
    };
    conn.call(&commit, Bytes::new(), T).await.unwrap();
    eventually("sends accepted again", async || {
        conn.call(&send("Full", 0, "", "again"), body(0), T)
            .await
            .is_ok()
    })
    .await;
    eventually("writable route", async || {
        route_perm().await == Some(perm::READ_WRITE)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_refuses_sends_and_keeps_serving_pulls() {
    let env = env_with(|c| c.store.flush_mode = FlushMode::Sync).await;
    let conn = env.client().await;
    for i in 0..3 {
        let (r, _): (SendResult, _) = conn
            .call(&send("S", 0, "", &format!("k{i}")), body(i), T)
            .await
            .unwrap();
        assert_eq!(r.status, SendStatus::Ok);
    }
    env.broker()
        .broker()
        .store()
        .inject_sync_failure("EIO (injected)");
    expect_error(
        &conn,
        &send("S", 0, "", "x"),
        body(9),
        ErrorCode::WritesStopped,
        "EIO",
    )
    .await;
    expect_error(
        &conn,
        &send("S", 0, "", "y"),
        body(9),
        ErrorCode::WritesStopped,
        "restart the broker",
    )
    .await;
    let got = pull_all(&conn, "S").await;
    assert!(got.len() >= 3);
    assert_eq!(
        got[..3],
        [body(0).to_vec(), body(1).to_vec(), body(2).to_vec()]
    );
    // A new connection is served too.
    let other = connect(&env.broker().local_addr().to_string()).await;
    assert!(pull_all(&other, "S").await.len() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sync_answers_flush_disk_timeout() {
    let env = env_with(|c| {
        c.store.flush_mode = FlushMode::Sync;
        c.store.sync_flush_timeout_ms = 100;
    })
    .await;
    let conn = env.client().await;
    env.broker()
        .broker()
        .store()
        .inject_sync_delay(Duration::from_millis(1500));
    let (r, _): (SendResult, _) = conn
        .call(&send("Slow", 0, "", "k"), body(1), T)
        .await
        .unwrap();
    assert_eq!(r.status, SendStatus::FlushDiskTimeout);
    env.broker()
        .broker()
        .store()
        .inject_sync_delay(Duration::ZERO);
    // Stored all the same.
    assert_eq!(pull_all(&conn, "Slow").await, vec![body(1).to_vec()]);
}
