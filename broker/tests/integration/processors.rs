//! Processors driven without any frame or socket: what a second protocol adapter does.
//! The broker is opened from its configuration alone (`weir_broker::open`), requests go in
//! typed through `Broker::dispatch`, and answers and refusals come back typed.

use crate::common::broker_config;

use std::net::SocketAddr;

use bytes::Bytes;
use weir_broker::dispatch::{BrokerRequest, BrokerResponse, RequestContext};
use weir_broker::processor::MAX_BATCH_MESSAGES;
use weir_broker::{Broker, ProcessError};
use weir_protocol::broker::{
    BatchEntry, CreateTopic, Heartbeat, PullMessage, PullStatus, QueryMessageByKey, SendBatch,
    SendStatus, UpdateConsumerOffset,
};
use weir_protocol::net::AnswerRoom;
use weir_protocol::route::{TopicConfig, perm};

fn ctx() -> RequestContext {
    RequestContext {
        received: std::time::Instant::now(),
        peer: "192.0.2.1:4000".parse::<SocketAddr>().unwrap(),
        link: None,
        signed: None,
        auto_create_queues: None,
        answer_room: AnswerRoom::unbounded(),
    }
}

/// A broker opened from its configuration alone, in a folder of its own.
async fn opened() -> (tempfile::TempDir, std::sync::Arc<Broker>) {
    let dir = tempfile::tempdir().unwrap();
    let config = broker_config(dir.path(), "");
    let broker = weir_broker::open(config, "127.0.0.1:10911".into())
        .await
        .unwrap();
    (dir, broker)
}

async fn run(broker: &Broker, req: BrokerRequest) -> Result<BrokerResponse, ProcessError> {
    broker.dispatch(&ctx(), req).await
}

/// A batch to `queue_id` of `topic`: `body` cut into messages of `each` bytes.
fn batch_of(topic: &str, queue_id: u32, body: Vec<u8>, each: u32) -> BrokerRequest {
    let entry = BatchEntry {
        tags: String::new(),
        keys: Vec::new(),
        properties: Vec::new(),
        flag: 0,
        born_timestamp: 1,
        body_len: each,
    };
    BrokerRequest::SendBatch {
        req: SendBatch {
            producer_group: "pg".into(),
            topic: topic.into(),
            queue_id,
            messages: vec![entry; body.len() / each as usize],
        },
        body: Bytes::from(body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_pull_and_refusals_without_a_frame() {
    let (_dir, broker) = opened().await;

    run(
        &broker,
        BrokerRequest::CreateTopic(CreateTopic {
            topic: TopicConfig {
                name: "Orders".into(),
                read_queues: 2,
                write_queues: 2,
                perm: perm::READ_WRITE,
            },
        }),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let req = crate::common::send("Orders", 1, "TagA", &format!("order-{i}"));
        let sent = run(
            &broker,
            BrokerRequest::Send {
                req,
                body: Bytes::from(format!("body-{i}")),
            },
        )
        .await
        .unwrap();
        let BrokerResponse::Sent(r) = sent else {
            panic!("{sent:?}")
        };
        assert_eq!(
            (r.status, r.queue_id, r.queue_offset),
            (SendStatus::Ok, 1, i)
        );
    }

    // The pull answers typed records, not bytes of some wire.
    let pulled = run(
        &broker,
        BrokerRequest::Pull(PullMessage {
            group: "g".into(),
            topic: "Orders".into(),
            queue_id: 1,
            offset: 0,
            max_msgs: 10,
            expression: "TagA".into(),
            suspend_ms: 0,
            commit_offset: None,
        }),
    )
    .await
    .unwrap();
    let BrokerResponse::Pulled(p) = pulled else {
        panic!("{pulled:?}")
    };
    assert_eq!(p.result.status, PullStatus::Found);
    assert_eq!(p.result.next_offset, 3);
    let bodies: Vec<_> = p
        .records
        .iter()
        .map(|r| r.view().unwrap().body().to_vec())
        .collect();
    assert_eq!(
        bodies,
        [b"body-0".to_vec(), b"body-1".to_vec(), b"body-2".to_vec()]
    );
    // The peer the adapter named is the born host.
    assert_eq!(
        p.records[0].view().unwrap().born_host(),
        "192.0.2.1:4000".parse::<SocketAddr>().unwrap()
    );

    let found = run(
        &broker,
        BrokerRequest::QueryByKey(QueryMessageByKey {
            topic: "Orders".into(),
            key: "order-1".into(),
            max: 4,
        }),
    )
    .await
    .unwrap();
    assert!(matches!(found, BrokerResponse::Records(r) if r.len() == 1));

    // Refusals are domain errors, one kind each; no status code in sight.
    let e = run(
        &broker,
        BrokerRequest::Pull(PullMessage {
            group: "g".into(),
            topic: "Missing".into(),
            queue_id: 0,
            offset: 0,
            max_msgs: 1,
            expression: "*".into(),
            suspend_ms: 0,
            commit_offset: None,
        }),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ProcessError::TopicNotFound(_)), "{e}");
    let e = run(
        &broker,
        BrokerRequest::Send {
            req: crate::common::send("bad topic", 0, "", "k"),
            body: Bytes::from_static(b"x"),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ProcessError::InvalidName(_)), "{e}");
    let e = run(
        &broker,
        BrokerRequest::UpdateConsumerOffset(UpdateConsumerOffset {
            group: "g".into(),
            topic: "Orders".into(),
            queue_id: 7,
            offset: 1,
        }),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ProcessError::InvalidParameter(_)), "{e}");
    let hb = Heartbeat {
        client_id: "c".into(),
        producer_groups: vec![],
        consumers: vec![],
    };
    // A heartbeat needs a way back to its client, which only an adapter can give.
    let e = run(&broker, BrokerRequest::Heartbeat(hb))
        .await
        .unwrap_err();
    assert!(matches!(e, ProcessError::Internal(_)), "{e}");
    broker.store().shutdown().unwrap();
}

/// A pull reads no more than its answer may take (`RequestContext::answer_room`: what is
/// left of its connection's share while the connections together hold their total): it
/// answers fewer messages, and one whose first message would not fit is refused as busy
/// without moving on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_reads_within_its_answer_room() {
    let (_dir, broker) = opened().await;
    for i in 0..10 {
        let req = crate::common::send("Big", 0, "", &format!("k{i}"));
        run(
            &broker,
            BrokerRequest::Send {
                req,
                body: Bytes::from(vec![b'x'; 1000]),
            },
        )
        .await
        .unwrap();
    }
    let pull = |room: AnswerRoom| {
        let ctx = RequestContext {
            answer_room: room,
            ..ctx()
        };
        let broker = &broker;
        async move {
            let req = BrokerRequest::Pull(crate::common::pull("Big", 0, 0, "*", 0));
            match broker.dispatch(&ctx, req).await {
                Ok(BrokerResponse::Pulled(p)) => Ok((p.records.len(), p.result.next_offset)),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        }
    };
    // Unbounded (and any room of two largest answers or more): all ten.
    assert_eq!(pull(AnswerRoom::unbounded()).await.unwrap(), (10, 10));
    assert_eq!(pull(AnswerRoom::fixed(8 << 20)).await.unwrap(), (10, 10));
    // 6,000 bytes of room: records of half of it, two of these ~1.1 KB messages.
    assert_eq!(pull(AnswerRoom::fixed(6000)).await.unwrap(), (2, 2));
    // Less than two messages' worth: refused as busy, naming the setting.
    let e = pull(AnswerRoom::fixed(1000)).await.unwrap_err();
    assert!(matches!(e, ProcessError::Busy(_)), "{e}");
    assert!(e.to_string().contains("net.max_pending_bytes_total"), "{e}");
}

/// A lookup by key answers at most a pull's bytes (4 MiB), the newest first (64
/// messages of 4 MiB made a 268 MB answer, refused then as past the frame maximum), and
/// is refused as busy when not even the newest fits in its answer room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_by_key_answers_within_a_pulls_bytes_and_its_room() {
    let (_dir, broker) = opened().await;
    for _ in 0..6 {
        let req = crate::common::send("Keyed", 0, "", "same-key");
        run(
            &broker,
            BrokerRequest::Send {
                req,
                body: Bytes::from(vec![b'k'; 1 << 20]),
            },
        )
        .await
        .unwrap();
    }
    let query = |room: AnswerRoom| {
        let ctx = RequestContext {
            answer_room: room,
            ..ctx()
        };
        let broker = &broker;
        async move {
            let req = BrokerRequest::QueryByKey(QueryMessageByKey {
                topic: "Keyed".into(),
                key: "same-key".into(),
                max: 64,
            });
            match broker.dispatch(&ctx, req).await {
                Ok(BrokerResponse::Records(r)) => Ok(r.len()),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        }
    };
    // Three 1 MiB messages (and their headers) within 4 MiB, not six.
    assert_eq!(query(AnswerRoom::unbounded()).await.unwrap(), 3);
    // Room for two (half of it for records, the rest for the encoding).
    assert_eq!(query(AnswerRoom::fixed(5 << 20)).await.unwrap(), 2);
    let e = query(AnswerRoom::fixed(1 << 20)).await.unwrap_err();
    assert!(matches!(e, ProcessError::Busy(_)), "{e}");
}

/// A batch of more messages than its answer may name is refused before anything is
/// stored (one of 520,000 was stored whole, then answered "header over the limit", which
/// a client retries: everything twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_too_many_messages_is_refused_before_it_is_stored() {
    let (_dir, broker) = opened().await;
    let batch = |n: usize| batch_of("Many", 0, vec![b'm'; n], 1);
    let e = run(&broker, batch(MAX_BATCH_MESSAGES + 1))
        .await
        .unwrap_err();
    assert!(matches!(e, ProcessError::BadRequest(_)), "{e}");
    assert!(e.to_string().contains("at most 16384 messages"), "{e}");
    let BrokerResponse::SentBatch(r) = run(&broker, batch(MAX_BATCH_MESSAGES)).await.unwrap()
    else {
        panic!()
    };
    // Only the batch within the bound was stored: its first message is the queue's first.
    assert_eq!(r.results.first().map(|r| r.queue_offset), Some(0));
    assert_eq!(r.results.len(), MAX_BATCH_MESSAGES);
}

/// A topic keeps the store queues its sends go to (looked up by name once): sends land in
/// the queue they name across an update of the topic's queues and a delete and re-create,
/// the batch path too, a delayed send still goes to the schedule's topic first, and the
/// counters see every send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_keeps_its_queues_across_updates_and_deletes() {
    let (_dir, broker) = opened().await;
    let create = |queues: u32| {
        BrokerRequest::CreateTopic(CreateTopic {
            topic: TopicConfig {
                name: "Kept".into(),
                read_queues: queues,
                write_queues: queues,
                perm: perm::READ_WRITE,
            },
        })
    };
    let send = |queue_id: u32, body: &str| BrokerRequest::Send {
        req: crate::common::send("Kept", queue_id, "T", body),
        body: Bytes::from(body.to_owned()),
    };
    let offset_of = |r: BrokerResponse| match r {
        BrokerResponse::Sent(r) => {
            assert_eq!(r.status, SendStatus::Ok);
            r.queue_offset
        }
        other => panic!("{other:?}"),
    };
    let bodies_in = |queue_id: u32| {
        let broker = std::sync::Arc::clone(&broker);
        async move {
            let pulled = run(
                &broker,
                BrokerRequest::Pull(crate::common::pull("Kept", queue_id, 0, "*", 0)),
            )
            .await
            .unwrap();
            let BrokerResponse::Pulled(p) = pulled else {
                panic!("{pulled:?}")
            };
            p.records
                .iter()
                .map(|r| String::from_utf8(r.view().unwrap().body().to_vec()).unwrap())
                .collect::<Vec<_>>()
        }
    };

    run(&broker, create(2)).await.unwrap();
    for i in 0..2 {
        let at = offset_of(run(&broker, send(1, &format!("a{i}"))).await.unwrap());
        assert_eq!(at, i);
    }
    // More queues: the new one starts empty, the kept one goes on.
    run(&broker, create(4)).await.unwrap();
    assert_eq!(offset_of(run(&broker, send(3, "b0")).await.unwrap()), 0);
    assert_eq!(offset_of(run(&broker, send(1, "a2")).await.unwrap()), 2);
    // Fewer: a queue past them is refused, not written through what was kept.
    run(&broker, create(2)).await.unwrap();
    let e = run(&broker, send(3, "b1")).await.unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");

    // A batch, and a delayed send, which waits in the schedule's topic, not in queue 0.
    let batch = batch_of("Kept", 0, b"c0c1".to_vec(), 2);
    let BrokerResponse::SentBatch(r) = run(&broker, batch).await.unwrap() else {
        panic!()
    };
    let at: Vec<_> = r.results.iter().map(|r| r.queue_offset).collect();
    assert_eq!(at, [0, 1]);
    let mut delayed = crate::common::send("Kept", 0, "T", "later");
    delayed.properties.push((
        weir_protocol::names::property::DELAY_LEVEL.into(),
        "18".into(),
    ));
    run(
        &broker,
        BrokerRequest::Send {
            req: delayed,
            body: Bytes::from_static(b"later"),
        },
    )
    .await
    .unwrap();
    assert_eq!(bodies_in(0).await, ["c0", "c1"]);
    assert_eq!(bodies_in(1).await, ["a0", "a1", "a2"]);

    // Deleted and made again by a send: the send lands in the new queue, alone.
    run(
        &broker,
        BrokerRequest::DeleteTopic(weir_protocol::broker::DeleteTopic {
            topic: "Kept".into(),
        }),
    )
    .await
    .unwrap();
    assert_eq!(offset_of(run(&broker, send(1, "d0")).await.unwrap()), 0);
    assert_eq!(bodies_in(1).await, ["d0"]);

    let BrokerResponse::BrokerStats(s) = run(&broker, BrokerRequest::BrokerStats).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(s.messages_in, 8, "{s:?}");
}
