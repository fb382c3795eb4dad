//! The broker end to end: real name server, real broker, real sockets and files.

use crate::common::{
    T, bodies, connect, drain, env, env_with, eventually, expect_error, pull, send,
};

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_protocol::ErrorCode;
use weir_protocol::broker::{
    BatchEntry, CreateTopic, GetTopicStats, PullStatus, QueryConsumerOffset, QueryMessageByKey,
    SendBatch, UpdateConsumerOffset, ViewMessageById,
};
use weir_protocol::route::{GetRoute, TopicConfig, perm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_with_tags_each_consumed_once() {
    let env = env().await;
    let conn = env.client().await;
    let tags = ["TagA", "TagB", "TagC", ""];
    let mut expected: HashMap<&str, BTreeSet<String>> = HashMap::new();
    // 10,000 messages over 8 queues: batches of 50, plus single sends.
    for b in 0..190u32 {
        let queue_id = b % 8;
        let mut entries = Vec::new();
        let mut body = Vec::new();
        for i in 0..50u32 {
            let n = b * 50 + i;
            let text = format!("msg-{n}");
            expected
                .entry(tags[(n % 4) as usize])
                .or_default()
                .insert(text.clone());
            entries.push(BatchEntry {
                tags: tags[(n % 4) as usize].into(),
                keys: vec![format!("key-{n}")],
                properties: vec![],
                flag: 0,
                born_timestamp: 1,
                body_len: text.len() as u32,
            });
            body.extend_from_slice(text.as_bytes());
        }
        let req = SendBatch {
            producer_group: "pg".into(),
            topic: "Mixed".into(),
            queue_id,
            messages: entries,
        };
        let (r, _) = conn.call(&req, Bytes::from(body), T).await.unwrap();
        assert_eq!(r.results.len(), 50);
    }
    for n in 9500..10_000u32 {
        let text = format!("msg-{n}");
        let tag = tags[(n % 4) as usize];
        expected.entry(tag).or_default().insert(text.clone());
        let (r, _) = conn
            .call(
                &send("Mixed", n % 8, tag, &format!("key-{n}")),
                Bytes::from(text),
                T,
            )
            .await
            .unwrap();
        assert_eq!(r.queue_id, n % 8);
    }

    let mut all = Vec::new();
    let mut ab = Vec::new();
    for q in 0..8 {
        all.extend(drain(&conn, "Mixed", q, "*").await);
        ab.extend(drain(&conn, "Mixed", q, "TagA || TagB").await);
    }
    let all_set: BTreeSet<String> = all.iter().cloned().collect();
    assert_eq!(all.len(), 10_000, "every message exactly once");
    assert_eq!(all_set.len(), 10_000);
    let want_ab: BTreeSet<String> = expected["TagA"].union(&expected["TagB"]).cloned().collect();
    let ab_set: BTreeSet<String> = ab.iter().cloned().collect();
    assert_eq!(ab.len(), want_ab.len());
    assert_eq!(ab_set, want_ab);

    // The auto-created topic reaches the name server's route.
    let ns = connect(&env.ns.local_addr().to_string()).await;
    eventually("route of Mixed", async || {
        ns.call(
            &GetRoute {
                topic: "Mixed".into(),
            },
            Bytes::new(),
            T,
        )
        .await
        .is_ok_and(|(r, _)| {
            r.queues.len() == 1
                && r.queues[0].write_queues == 8
                && r.brokers[0].master_addr() == Some(env.broker().broker().addr())
        })
    })
    .await;

    // Lookups by key and by id.
    let (found, body) = conn
        .call(
            &QueryMessageByKey {
                topic: "Mixed".into(),
                key: "key-9999".into(),
                max: 4,
            },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        (found.count, bodies(&body)),
        (1, vec!["msg-9999".to_string()])
    );
    let (sent, _) = conn
        .call(
            &send("Mixed", 0, "", "by-id"),
            Bytes::from_static(b"find me"),
            T,
        )
        .await
        .unwrap();
    let (_, body) = conn
        .call(
            &ViewMessageById {
                msg_id: sent.msg_id.clone(),
            },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(bodies(&body), vec!["find me".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_pull_is_answered_soon_after_a_send() {
    let env = env().await;
    let conn = env.client().await;
    conn.call(
        &send("Poll", 3, "", "first"),
        Bytes::from_static(b"first"),
        T,
    )
    .await
    .unwrap();
    let (r, _) = conn
        .call(&pull("Poll", 3, 0, "*", 0), Bytes::new(), T)
        .await
        .unwrap();
    let next = r.next_offset;
    let puller = {
        let conn = env.client().await;
        tokio::spawn(async move {
            let r = conn
                .call(&pull("Poll", 3, next, "*", 15_000), Bytes::new(), T)
                .await
                .unwrap();
            (r, Instant::now())
        })
    };
    let broker = Arc::clone(env.broker().broker());
    eventually("the pull is held", async || broker.held_pulls() == 1).await;
    conn.call(
        &send("Poll", 3, "", "second"),
        Bytes::from_static(b"second"),
        T,
    )
    .await
    .unwrap();
    let sent_at = Instant::now();
    let ((r, body), answered_at) = puller.await.unwrap();
    assert_eq!(r.status, PullStatus::Found);
    assert_eq!(bodies(&body), vec!["second".to_string()]);
    let lag = answered_at.saturating_duration_since(sent_at);
    assert!(
        lag < Duration::from_millis(200),
        "held pull answered {lag:?} after the send"
    );

    // With nothing arriving, the hold ends at its suspend time with "no new message".
    let started = Instant::now();
    let (r, _) = conn
        .call(&pull("Poll", 3, next + 1, "*", 300), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(r.status, PullStatus::NoNewMessage);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_messages_offsets_and_topics() {
    let mut env = env().await;
    let conn = env.client().await;
    let topic = TopicConfig {
        name: "Kept".into(),
        read_queues: 2,
        write_queues: 2,
        perm: perm::READ_WRITE,
    };
    conn.call(&CreateTopic { topic }, Bytes::new(), T)
        .await
        .unwrap();
    for i in 0..20 {
        conn.call(
            &send("Kept", i % 2, "", &format!("k{i}")),
            Bytes::from(format!("m{i}")),
            T,
        )
        .await
        .unwrap();
    }
    conn.call(
        &UpdateConsumerOffset {
            group: "g".into(),
            topic: "Kept".into(),
            queue_id: 1,
            offset: 7,
        },
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    let mut p = pull("Kept", 0, 0, "*", 0);
    p.group = "g".into();
    p.commit_offset = Some(4);
    conn.call(&p, Bytes::new(), T).await.unwrap();
    drop(conn);
    env.restart().await;

    let conn = env.client().await;
    for (q, want) in [(0u32, 4u64), (1, 7)] {
        let (o, _) = conn
            .call(
                &QueryConsumerOffset {
                    group: "g".into(),
                    topic: "Kept".into(),
                    queue_id: q,
                },
                Bytes::new(),
                T,
            )
            .await
            .unwrap();
        assert_eq!(o.offset, Some(want));
    }
    let q0 = drain(&conn, "Kept", 0, "*").await;
    assert_eq!(
        q0,
        (0..20)
            .step_by(2)
            .map(|i| format!("m{i}"))
            .collect::<Vec<_>>()
    );
    let (stats, _) = conn
        .call(
            &GetTopicStats {
                topic: "Kept".into(),
            },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        stats.queues.iter().map(|q| q.max).collect::<Vec<_>>(),
        vec![10, 10]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_while_others_are_served() {
    let env = env_with(|c| {
        c.auto_create_topic = false;
        c.max_message_size = 1024;
    })
    .await;
    let conn = env.client().await;
    let topic = TopicConfig {
        name: "Ok".into(),
        read_queues: 4,
        write_queues: 4,
        perm: perm::READ_WRITE,
    };
    conn.call(&CreateTopic { topic }, Bytes::new(), T)
        .await
        .unwrap();

    let other = env.client().await;
    let serving = tokio::spawn(async move {
        for i in 0..200 {
            other
                .call(&send("Ok", i % 4, "", "x"), Bytes::from_static(b"fine"), T)
                .await
                .unwrap();
        }
    });

    expect_error(
        &conn,
        &send("Ok", 0, "", "k"),
        Bytes::from(vec![0u8; 2000]),
        ErrorCode::MessageIllegal,
        "exceeds the maximum of 1024",
    )
    .await;
    expect_error(
        &conn,
        &send("bad/topic", 0, "", "k"),
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "allowed are letters",
    )
    .await;
    expect_error(
        &conn,
        &send(&"x".repeat(128), 0, "", "k"),
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "exceeds 127",
    )
    .await;
    expect_error(
        &conn,
        &send("Unknown", 0, "", "k"),
        Bytes::new(),
        ErrorCode::TopicNotExist,
        "auto-create is off",
    )
    .await;
    expect_error(
        &conn,
        &send("Ok", 9, "", "k"),
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "has 4 write queues",
    )
    .await;
    expect_error(
        &conn,
        &pull("Ok", 4, 0, "*", 0),
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "has 4 read queues",
    )
    .await;
    expect_error(
        &conn,
        &pull("Nope", 0, 0, "*", 0),
        Bytes::new(),
        ErrorCode::TopicNotExist,
        "does not exist",
    )
    .await;
    expect_error(
        &conn,
        &pull("Ok", 0, 0, "A ||", 0),
        Bytes::new(),
        ErrorCode::SubscriptionParseFailed,
        "empty tag",
    )
    .await;
    let sys = TopicConfig {
        name: "%SYS".into(),
        read_queues: 1,
        write_queues: 1,
        perm: 6,
    };
    expect_error(
        &conn,
        &CreateTopic { topic: sys },
        Bytes::new(),
        ErrorCode::NoPermission,
        "reserved",
    )
    .await;
    expect_error(
        &conn,
        &ViewMessageById {
            msg_id: "zz".into(),
        },
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "hex",
    )
    .await;
    expect_error(
        &conn,
        &ViewMessageById {
            msg_id: "7F00000100002A9F00000000FFFFFFFF".into(),
        },
        Bytes::new(),
        ErrorCode::QueryNotFound,
        "beyond the end",
    )
    .await;

    // Garbage on a raw socket and an oversized frame close only their own connections.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = env.broker().local_addr();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"\x16\x03\x01 not a weir frame at all")
        .await
        .unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(T, raw.read_to_end(&mut sink))
        .await
        .unwrap()
        .unwrap();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&(64u32 << 20).to_be_bytes()).await.unwrap();
    raw.write_all(&[1, 0, 0, 0, 0, 9, 0, 10, 0, 0, 0, 0])
        .await
        .unwrap();
    tokio::time::timeout(T, raw.read_to_end(&mut sink))
        .await
        .unwrap()
        .unwrap();

    serving.await.unwrap();
    let (r, _) = conn
        .call(
            &send("Ok", 0, "", "after"),
            Bytes::from_static(b"still here"),
            T,
        )
        .await
        .unwrap();
    assert!(r.msg_id.len() == 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_leaves_the_route() {
    let mut env = env().await;
    let conn = env.client().await;
    conn.call(&send("Gone", 0, "", "k"), Bytes::from_static(b"x"), T)
        .await
        .unwrap();
    let ns = connect(&env.ns.local_addr().to_string()).await;
    eventually("route appears", async || {
        ns.call(
            &GetRoute {
                topic: "Gone".into(),
            },
            Bytes::new(),
            T,
        )
        .await
        .is_ok()
    })
    .await;
    env.broker.take().unwrap().shutdown().await.unwrap();
    eventually("route disappears", async || {
        ns.call(
            &GetRoute {
                topic: "Gone".into(),
            },
            Bytes::new(),
            T,
        )
        .await
        .is_err()
    })
    .await;
}
