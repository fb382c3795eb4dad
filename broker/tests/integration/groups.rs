//! Consumer groups on the broker: delay levels, send-back to retry and dead-letter topics,
//! queue locks, membership notices. Real broker, real sockets and files.
//!
//! Over ~600 lines on purpose: one scenario per test over the shared helpers at the top.

use crate::common::{T, expect_error};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_broker::{BrokerConfig, RunningBroker};
use weir_protocol::broker::{
    BatchEntry, ConsumerConnections, ConsumerData, ConsumerList, ConsumerOffset,
    ConsumerSendMsgBack, GetConsumerConnections, GetConsumerList, GetTopicStats, Heartbeat,
    LockBatchMq, MessageModel, NotifyConsumerIdsChanged, PullMessage, PullResult, PullStatus,
    QueryConsumerOffset, QueueRef, SendBatch, SendMessage, SendResult, SentBack, UnlockBatchMq,
    UnregisterClient, split_records,
};
use weir_protocol::names::{SCHEDULE_TOPIC, property};
use weir_protocol::net::BoxFuture;
use weir_protocol::{
    ConnConfig, Connection, ErrorCode, Handler, Message, NoHandler, RecordView, Reply, Request,
    RequestCode,
};
use weir_store::{ReadLimits, StoreConfig};

fn config(dir: &std::path::Path, tweak: impl FnOnce(&mut BrokerConfig)) -> BrokerConfig {
    let mut c = BrokerConfig {
        listen: "127.0.0.1:0".into(),
        store: StoreConfig {
            commit_log_segment_size: 4 << 20,
            consume_queue_segment_entries: 4096,
            index_slots: 4096,
            index_entries: 65536,
            // The machine's own disk must not decide these tests (a storage test sets its own).
            disk_max_used_ratio: 1.0,
            disk_full_ratio: 1.0,
            ..StoreConfig::new(dir.join("data"))
        },
        ..BrokerConfig::default()
    };
    tweak(&mut c);
    c
}

struct Env {
    broker: RunningBroker,
    _dir: tempfile::TempDir,
}

async fn env_with(tweak: impl FnOnce(&mut BrokerConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let broker = weir_broker::start(config(dir.path(), tweak)).await.unwrap();
    Env { broker, _dir: dir }
}

impl Env {
    fn addr(&self) -> String {
        self.broker.local_addr().to_string()
    }
    async fn client(&self) -> Connection {
        connect(&self.addr(), Arc::new(NoHandler)).await
    }
}

async fn connect(addr: &str, handler: Arc<dyn Handler>) -> Connection {
    Connection::connect(addr, handler, ConnConfig::default(), T)
        .await
        .unwrap()
}

fn send(topic: &str, queue_id: u32, props: &[(&str, &str)]) -> SendMessage {
    SendMessage {
        producer_group: "pg".into(),
        topic: topic.into(),
        queue_id,
        tags: "TagA".into(),
        keys: vec!["k1".into(), "k2".into()],
        properties: props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flag: 7,
        born_timestamp: 1234,
        sys_flag: 0,
        reconsume_times: 0,
        max_reconsume_times: None,
    }
}

fn pull_req(group: &str, topic: &str, offset: u64, suspend_ms: u64) -> PullMessage {
    PullMessage {
        group: group.into(),
        topic: topic.into(),
        queue_id: 0,
        offset,
        max_msgs: 64,
        expression: "*".into(),
        suspend_ms,
        commit_offset: None,
    }
}

/// Pulled messages as owned values, with the store's view of them.
#[derive(Debug, Clone)]
struct Got {
    msg: Message,
    store_ts: i64,
    commit_log_offset: u64,
    msg_id: String,
}

impl Got {
    fn prop(&self, name: &str) -> Option<&str> {
        self.msg
            .properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn body(&self) -> &str {
        std::str::from_utf8(&self.msg.body).unwrap()
    }
}

fn parse(body: &[u8]) -> Vec<Got> {
    split_records(body)
        .unwrap()
        .into_iter()
        .map(|r| {
            let v = RecordView::parse_verified(r).unwrap();
            Got {
                msg: v.to_message(),
                store_ts: v.store_timestamp(),
                commit_log_offset: v.commit_log_offset(),
                msg_id: v.message_id().to_string(),
            }
        })
        .collect()
}

/// Everything in queue 0 of `topic`, from the start.
async fn drain(conn: &Connection, topic: &str) -> Vec<Got> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (r, body): (PullResult, Bytes) = conn
            .call(&pull_req("cg", topic, offset, 0), Bytes::new(), T)
            .await
            .unwrap();
        match r.status {
            PullStatus::Found => out.extend(parse(&body)),
            PullStatus::NoMatch => {}
            PullStatus::NoNewMessage => return out,
            PullStatus::OffsetMoved => panic!("offset moved"),
        }
        offset = r.next_offset;
    }
}

/// Polls `topic` until it holds `n` messages (and fails if it ever holds more).
async fn wait_for_count(conn: &Connection, topic: &str, n: usize) -> Vec<Got> {
    let deadline = Instant::now() + T;
    loop {
        let got = drain(conn, topic).await;
        assert!(
            got.len() <= n,
            "{topic}: {} messages, expected {n}",
            got.len()
        );
        if got.len() == n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: {} messages, expected {n}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The records waiting on one schedule queue, read from the store directly.
fn scheduled(broker: &RunningBroker, level: u32) -> Vec<Got> {
    let r = broker.broker().store().get_messages(
        SCHEDULE_TOPIC,
        level - 1,
        0,
        ReadLimits {
            max_count: 1000,
            max_bytes: 64 << 20,
            max_scan: 100_000,
        },
        |_| true,
    );
    let bytes: Vec<u8> = r.messages.iter().flat_map(|m| m.bytes().to_vec()).collect();
    parse(&bytes)
}

fn assert_restored(got: &Got) {
    for p in [
        property::DELAY_LEVEL,
        property::REAL_TOPIC,
        property::REAL_QUEUE_ID,
    ] {
        assert_eq!(got.prop(p), None, "{p} left on {:?}", got.msg.properties);
    }
    assert_eq!(got.msg.tags, "TagA");
    assert_eq!(got.msg.keys, ["k1", "k2"]);
    assert_eq!(got.prop("x"), Some("1"));
    assert_eq!(got.msg.flag, 7);
    assert_eq!(got.msg.born_timestamp, 1234);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_arrives_after_its_level_with_its_properties_restored() {
    let env = env_with(|c| c.delay_levels = "300ms 600ms".into()).await;
    let conn = env.client().await;
    let sent_at = Instant::now();
    let r: SendResult = conn
        .call(
            &send("D", 0, &[("x", "1"), ("DELAY", "2")]),
            Bytes::from_static(b"level two"),
            T,
        )
        .await
        .unwrap()
        .0;
    assert_eq!(r.queue_id, 0);
    // Clamped to the last level.
    conn.call(
        &send("D", 0, &[("DELAY", "9"), ("x", "1")]),
        Bytes::from_static(b"level nine"),
        T,
    )
    .await
    .unwrap();
    // A held pull on the real topic (created by the send): the delivery wakes it.
    let waiter = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            conn.call(&pull_req("cg", "D", 0, 8000), Bytes::new(), T)
                .await
                .map(|(r, body)| (r, parse(&body), started.elapsed()))
        })
    };
    let waiting = scheduled(&env.broker, 2);
    assert_eq!(waiting.len(), 2);
    assert_eq!(waiting[0].prop(property::REAL_TOPIC), Some("D"));
    assert_eq!(waiting[0].prop(property::REAL_QUEUE_ID), Some("0"));
    assert_eq!(waiting[1].prop(property::DELAY_LEVEL), Some("2"));
    let early = drain(&conn, "D").await;
    if sent_at.elapsed() < Duration::from_millis(500) {
        assert!(early.is_empty(), "delivered early");
    }

    let (pulled, found, waited) = waiter.await.unwrap().unwrap();
    assert_eq!(pulled.status, PullStatus::Found);
    assert_eq!(found[0].body(), "level two");
    assert!(
        waited < Duration::from_secs(5),
        "held pull answered after {waited:?}"
    );

    let got = wait_for_count(&conn, "D", 2).await;
    for (g, (s, body)) in got
        .iter()
        .zip(waiting.iter().zip(["level two", "level nine"]))
    {
        assert_eq!(g.body(), body);
        assert!(
            g.store_ts - s.store_ts >= 600,
            "delivered {} ms after it was stored",
            g.store_ts - s.store_ts
        );
        assert_restored(g);
        assert_eq!(g.msg.topic, "D");
    }
    // Without a delay (DELAY=0): stored on the real topic at once.
    let immediate = send("D", 0, &[("x", "1"), ("DELAY", "0")]);
    conn.call(&immediate, Bytes::from_static(b"now"), T)
        .await
        .unwrap();
    let got = wait_for_count(&conn, "D", 3).await;
    assert_eq!(got[2].body(), "now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_survive_a_restart_none_early_none_lost() {
    let dir = tempfile::tempdir().unwrap();
    let tweak = |c: &mut BrokerConfig| c.delay_levels = "2s".into();
    let broker = weir_broker::start(config(dir.path(), tweak)).await.unwrap();
    let conn = connect(&broker.local_addr().to_string(), Arc::new(NoHandler)).await;
    for i in 0..10 {
        conn.call(
            &send("R", 0, &[("x", "1"), ("DELAY", "1")]),
            Bytes::from(format!("single {i}")),
            T,
        )
        .await
        .unwrap();
    }
    let entries: Vec<BatchEntry> = (0..10)
        .map(|i| BatchEntry {
            tags: "TagA".into(),
            keys: vec!["k1".into(), "k2".into()],
            properties: vec![("x".into(), "1".into()), ("DELAY".into(), "1".into())],
            flag: 7,
            born_timestamp: 1234,
            body_len: format!("batch {i}").len() as u32,
        })
        .collect();
    let body: String = (0..10).map(|i| format!("batch {i}")).collect();
    conn.call(
        &SendBatch {
            producer_group: "pg".into(),
            topic: "R".into(),
            queue_id: 0,
            messages: entries,
        },
        Bytes::from(body),
        T,
    )
    .await
    .unwrap();
    drop(conn);
    broker.shutdown().await.unwrap();

    let broker = weir_broker::start(config(dir.path(), tweak)).await.unwrap();
    let conn = connect(&broker.local_addr().to_string(), Arc::new(NoHandler)).await;
    let waiting = scheduled(&broker, 1);
    assert_eq!(waiting.len(), 20);
    let got = wait_for_count(&conn, "R", 20).await;
    // Wait for the scheduler's progress to reach the end, then count again: none twice.
    let offsets = broker.broker().store().consumer_offsets();
    eventually("schedule progress at the end", || {
        offsets.query("%SCHEDULE%", SCHEDULE_TOPIC, 0) == Some(20)
    })
    .await;
    assert_eq!(drain(&conn, "R").await.len(), 20);
    let stored: HashMap<&str, i64> = waiting.iter().map(|w| (w.body(), w.store_ts)).collect();
    for g in &got {
        let at = stored[g.body()];
        assert!(
            g.store_ts - at >= 2000,
            "{} delivered {} ms after it was stored",
            g.body(),
            g.store_ts - at
        );
        assert_restored(g);
    }
    let mut bodies: Vec<&str> = got.iter().map(Got::body).collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..10)
        .flat_map(|i| [format!("single {i}"), format!("batch {i}")])
        .collect();
    expected.sort();
    assert_eq!(bodies, expected);
    drop(conn);
    broker.shutdown().await.unwrap();

    // The progress survives a restart too: a message sent after the second restart comes
    // after the old ones' places, and none of them comes again.
    let broker = weir_broker::start(config(dir.path(), tweak)).await.unwrap();
    let conn = connect(&broker.local_addr().to_string(), Arc::new(NoHandler)).await;
    conn.call(
        &send("R", 0, &[("x", "1"), ("DELAY", "1")]),
        Bytes::from_static(b"after"),
        T,
    )
    .await
    .unwrap();
    let got = wait_for_count(&conn, "R", 21).await;
    assert_eq!(got[20].body(), "after");
    drop(conn);
    broker.shutdown().await.unwrap();
}

fn back(group: &str, of: &Got, delay_level: i32, max: u32) -> ConsumerSendMsgBack {
    ConsumerSendMsgBack {
        group: group.into(),
        commit_log_offset: of.commit_log_offset,
        delay_level,
        max_reconsume_times: max,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_back_messages_retry_after_a_delay_then_go_to_the_dlq() {
    // Retries use levels 3 and up.
    let env = env_with(|c| c.delay_levels = "5s 5s 200ms 300ms".into()).await;
    let conn = env.client().await;
    conn.call(
        &send("S", 0, &[("x", "1")]),
        Bytes::from_static(b"payload"),
        T,
    )
    .await
    .unwrap();
    let original = drain(&conn, "S").await.remove(0);

    let (sent, _): (SentBack, Bytes) = conn
        .call(&back("g.1", &original, 0, 2), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(sent.topic, "%RETRY%g.1");
    assert_eq!(sent.reconsume_times, 1);
    let retry1 = wait_for_count(&conn, "%RETRY%g.1", 1).await.remove(0);
    assert_eq!(retry1.msg.reconsume_times, 1);
    assert_eq!(retry1.prop(property::RETRY_TOPIC), Some("S"));
    assert_eq!(
        retry1.prop(property::ORIGIN_MESSAGE_ID),
        Some(original.msg_id.as_str())
    );
    assert_eq!(retry1.body(), "payload");
    assert_restored(&retry1);
    assert!(
        retry1.store_ts - original.store_ts >= 200,
        "level 3 (200 ms) retried after {} ms",
        retry1.store_ts - original.store_ts
    );

    // A retry of a retry keeps the first topic and id; the broker picks level 3 + 1.
    let (sent, _): (SentBack, Bytes) = conn
        .call(&back("g.1", &retry1, 0, 2), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(
        (sent.topic.as_str(), sent.reconsume_times),
        ("%RETRY%g.1", 2)
    );
    let retry2 = wait_for_count(&conn, "%RETRY%g.1", 2).await.remove(1);
    assert_eq!(retry2.msg.reconsume_times, 2);
    assert_eq!(retry2.prop(property::RETRY_TOPIC), Some("S"));
    assert_eq!(
        retry2.prop(property::ORIGIN_MESSAGE_ID),
        Some(original.msg_id.as_str())
    );
    assert!(retry2.store_ts - retry1.store_ts >= 300);
    assert_restored(&retry2);
    // The consumer can keep its place on the retry topic.
    let mut p = pull_req("g.1", "%RETRY%g.1", 2, 0);
    p.commit_offset = Some(2);
    conn.call(&p, Bytes::new(), T).await.unwrap();
    let (o, _): (ConsumerOffset, Bytes) = conn
        .call(
            &QueryConsumerOffset {
                group: "g.1".into(),
                topic: "%RETRY%g.1".into(),
                queue_id: 0,
            },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(o.offset, Some(2));

    // Past the maximum: dead-letter topic, at once.
    let (sent, _): (SentBack, Bytes) = conn
        .call(&back("g.1", &retry2, 0, 2), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!((sent.topic.as_str(), sent.reconsume_times), ("%DLQ%g.1", 3));
    let dead = drain(&conn, "%DLQ%g.1").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].msg.reconsume_times, 3);
    assert_eq!(dead[0].msg_id, sent.msg_id);
    assert_eq!(dead[0].prop(property::RETRY_TOPIC), Some("S"));
    assert_eq!(
        dead[0].prop(property::ORIGIN_MESSAGE_ID),
        Some(original.msg_id.as_str())
    );
    assert_restored(&dead[0]);

    // Level -1: straight to the dead-letter topic.
    let (sent, _): (SentBack, Bytes) = conn
        .call(&back("g.1", &original, -1, 16), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!((sent.topic.as_str(), sent.reconsume_times), ("%DLQ%g.1", 1));
    let dead = drain(&conn, "%DLQ%g.1").await;
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[1].prop(property::RETRY_TOPIC), Some("S"));

    let (stats, _) = conn
        .call(
            &GetTopicStats {
                topic: "%DLQ%g.1".into(),
            },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            stats.config.read_queues,
            stats.config.write_queues,
            stats.config.perm
        ),
        (1, 1, 6)
    );
    // The original is where it was.
    assert_eq!(drain(&conn, "S").await.len(), 1);
}

fn heartbeat(client_id: &str, consumers: &[(&str, MessageModel)]) -> Heartbeat {
    Heartbeat {
        client_id: client_id.into(),
        producer_groups: Vec::new(),
        consumers: consumers
            .iter()
            .map(|(g, model)| ConsumerData {
                group: g.to_string(),
                model: model.clone(),
                subscriptions: vec![("T".into(), "*".into())],
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_creates_the_retry_topic_and_lists_the_member() {
    let env = env_with(|_| {}).await;
    let conn = env.client().await;
    let stats = |topic: &str| GetTopicStats {
        topic: topic.into(),
    };
    expect_error(
        &conn,
        &stats("%RETRY%g"),
        Bytes::new(),
        ErrorCode::TopicNotExist,
        "does not exist",
    )
    .await;
    conn.call(
        &heartbeat(
            "c1",
            &[
                ("g", MessageModel::Clustering),
                ("b", MessageModel::Broadcasting),
            ],
        ),
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    let (s, _) = conn
        .call(&stats("%RETRY%g"), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!((s.config.read_queues, s.config.perm), (1, 6));
    expect_error(
        &conn,
        &stats("%RETRY%b"),
        Bytes::new(),
        ErrorCode::TopicNotExist,
        "does not exist",
    )
    .await;
    // Sending does not create system topics, but an existing one takes messages.
    expect_error(
        &conn,
        &send("%RETRY%other", 0, &[]),
        Bytes::new(),
        ErrorCode::NoPermission,
        "system topic",
    )
    .await;
    conn.call(&send("%RETRY%g", 0, &[]), Bytes::from_static(b"x"), T)
        .await
        .unwrap();
    // A consumer re-sending to its retry topic (RocketMQ's clients do when a send-back
    // fails): below the most deliveries it stays there, delayed as asked; at the most it
    // goes to the dead-letter topic, undelayed.
    let resend = |reconsume_times: u32| SendMessage {
        reconsume_times,
        max_reconsume_times: Some(2),
        ..send("%RETRY%g", 0, &[("DELAY", "1")])
    };
    for n in [1, 2] {
        conn.call(&resend(n), Bytes::from(format!("r{n}")), T)
            .await
            .unwrap();
    }
    let dead = wait_for_count(&conn, "%DLQ%g", 1).await;
    assert_eq!(
        (
            dead[0].body(),
            dead[0].msg.reconsume_times,
            dead[0].prop("DELAY")
        ),
        ("r2", 2, None)
    );
    let retried = wait_for_count(&conn, "%RETRY%g", 2).await;
    assert_eq!(
        (retried[1].body(), retried[1].msg.reconsume_times),
        ("r1", 1)
    );
    expect_error(
        &conn,
        &SendMessage {
            max_reconsume_times: Some(0),
            ..send("%RETRY%other", 0, &[])
        },
        Bytes::from_static(b"x"),
        ErrorCode::TopicNotExist,
        "does not exist",
    )
    .await;

    let (m, _): (ConsumerConnections, Bytes) = conn
        .call(
            &GetConsumerConnections { group: "g".into() },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(m.members.len(), 1);
    let member = &m.members[0];
    assert_eq!(member.client_id, "c1");
    assert_eq!(member.model, MessageModel::Clustering);
    assert_eq!(member.subscriptions, [("T".to_string(), "*".to_string())]);
    assert!(member.addr.starts_with("127.0.0.1:"), "{}", member.addr);
    assert!(member.last_heartbeat_ms_ago < 10_000);
    let (l, _): (ConsumerList, Bytes) = conn
        .call(&GetConsumerList { group: "b".into() }, Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(l.client_ids, ["c1"]);
}

fn qs(ids: &[u32]) -> Vec<QueueRef> {
    ids.iter()
        .map(|&queue_id| QueueRef {
            topic: "T".into(),
            queue_id,
        })
        .collect()
}

/// Topic "T" with 4 queues: only queues that exist are leased.
async fn create_t(conn: &Connection) {
    let req = weir_protocol::broker::CreateTopic {
        topic: weir_protocol::route::TopicConfig {
            name: "T".into(),
            read_queues: 4,
            write_queues: 4,
            perm: weir_protocol::route::perm::READ_WRITE,
        },
    };
    conn.call(&req, Bytes::new(), T).await.unwrap();
}

async fn lock(conn: &Connection, client: &str, ids: &[u32]) -> Vec<QueueRef> {
    let req = LockBatchMq {
        group: "og".into(),
        client_id: client.into(),
        queues: qs(ids),
    };
    conn.call(&req, Bytes::new(), T).await.unwrap().0.queues
}

async fn unlock(conn: &Connection, client: &str, ids: &[u32]) {
    let req = UnlockBatchMq {
        group: "og".into(),
        client_id: client.into(),
        queues: qs(ids),
    };
    conn.call(&req, Bytes::new(), T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_locks_over_the_wire() {
    let env = env_with(|_| {}).await;
    let (a, b) = (env.client().await, env.client().await);
    create_t(&a).await;
    assert_eq!(lock(&a, "a", &[4, 99]).await, qs(&[]), "no such queues");
    a.call(
        &heartbeat("a", &[("og", MessageModel::Clustering)]),
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    assert_eq!(lock(&a, "a", &[0, 1]).await, qs(&[0, 1]));
    assert_eq!(lock(&b, "b", &[1, 2]).await, qs(&[2]));
    assert_eq!(lock(&a, "a", &[0, 1]).await, qs(&[0, 1]), "renewal");
    unlock(&b, "b", &[1]).await;
    assert_eq!(lock(&b, "b", &[1]).await, qs(&[]), "unlock by a non-holder");
    unlock(&a, "a", &[1]).await;
    assert_eq!(lock(&b, "b", &[1]).await, qs(&[1]));
    // a's connection closes: its locks go with it.
    drop(a);
    let deadline = Instant::now() + T;
    while lock(&b, "b", &[0]).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "a's lock outlived its connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    expect_error(
        &b,
        &LockBatchMq {
            group: "bad group".into(),
            client_id: "b".into(),
            queues: qs(&[0]),
        },
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "contains ' '",
    )
    .await;
}

/// Records the membership notices a client receives.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn groups(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Handler for Recorder {
    fn handle<'a>(&'a self, _conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            assert_eq!(
                RequestCode::from_u16(req.code),
                Some(RequestCode::NotifyConsumerIdsChanged)
            );
            assert!(req.oneway, "notices are one way");
            let n: NotifyConsumerIdsChanged = req.decode().unwrap();
            self.0.lock().unwrap().push(n.group);
            Reply::ok(&())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hear_when_others_join_and_leave() {
    let env = env_with(|_| {}).await;
    let rec: Vec<Arc<Recorder>> = (0..4).map(|_| Arc::default()).collect();
    let mut conns = Vec::new();
    for r in &rec {
        conns.push(Some(
            connect(&env.addr(), Arc::clone(r) as Arc<dyn Handler>).await,
        ));
    }
    async fn beat(conns: &[Option<Connection>], i: usize, groups: &[(&str, MessageModel)]) {
        let hb = heartbeat(&format!("c{i}"), groups);
        let conn = conns[i].as_ref().unwrap();
        conn.call(&hb, Bytes::new(), T).await.unwrap();
    }
    let g = [("g", MessageModel::Clustering)];
    beat(&conns, 0, &g).await;
    beat(&conns, 1, &g).await;
    eventually("c0 hears c1 joined", || rec[0].groups() == ["g"]).await;
    beat(&conns, 2, &g).await;
    eventually("c0 and c1 hear c2 joined", || {
        rec[0].groups().len() == 2 && rec[1].groups() == ["g"]
    })
    .await;
    // c3 is in another group only: nobody in g hears of it, and it hears of nothing in g.
    beat(&conns, 3, &[("h", MessageModel::Clustering)]).await;
    // Plain repeated heartbeats change nothing.
    beat(&conns, 2, &g).await;
    beat(&conns, 0, &g).await;
    // c2 closes its connection: the others hear of it.
    conns[2] = None;
    eventually("c0 and c1 hear c2 left", || {
        rec[0].groups().len() == 3 && rec[1].groups().len() == 2
    })
    .await;
    // c1 unregisters: c0 hears of it.
    conns[1]
        .as_ref()
        .unwrap()
        .call(&UnregisterClient::whole("c1"), Bytes::new(), T)
        .await
        .unwrap();
    eventually("c0 hears c1 left", || rec[0].groups().len() == 4).await;
    // c0 also joins h: c3 hears of it, c0 does not hear of its own join.
    beat(
        &conns,
        0,
        &[
            ("g", MessageModel::Clustering),
            ("h", MessageModel::Clustering),
        ],
    )
    .await;
    eventually("c3 hears c0 joined h", || rec[3].groups() == ["h"]).await;
    assert_eq!(rec[0].groups(), ["g", "g", "g", "g"]);
    assert_eq!(rec[1].groups(), ["g", "g"]);
    assert!(rec[2].groups().is_empty(), "{:?}", rec[2].groups());
    let (m, _): (ConsumerConnections, Bytes) = conns[0]
        .as_ref()
        .unwrap()
        .call(
            &GetConsumerConnections { group: "g".into() },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    let ids: Vec<&str> = m.members.iter().map(|m| m.client_id.as_str()).collect();
    assert_eq!(ids, ["c0"]);

    // Leaving one consumer group (RocketMQ shuts one consumer of a client instance down):
    // c3 leaves h, its only group, so it is forgotten and c0 hears of it; then c0 leaves h
    // and stays a member of g.
    let leave = |client: &str, group: &str| UnregisterClient {
        client_id: client.into(),
        producer_group: None,
        consumer_group: Some(group.into()),
    };
    let members = async |conn: &Connection, group: &str| {
        let (m, _): (ConsumerConnections, Bytes) = conn
            .call(
                &GetConsumerConnections {
                    group: group.into(),
                },
                Bytes::new(),
                T,
            )
            .await
            .unwrap();
        m.members
            .into_iter()
            .map(|m| m.client_id)
            .collect::<Vec<_>>()
    };
    let conn0 = conns[0].as_ref().unwrap();
    let conn3 = conns[3].as_ref().unwrap();
    conn3
        .call(&leave("c3", "h"), Bytes::new(), T)
        .await
        .unwrap();
    eventually("c0 hears c3 left h", || rec[0].groups().len() == 5).await;
    assert_eq!(rec[0].groups()[4], "h");
    assert_eq!(members(conn0, "h").await, ["c0"]);
    conn0
        .call(&leave("c0", "h"), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(members(conn0, "g").await, ["c0"]);
    assert!(rec[3].groups() == ["h"], "{:?}", rec[3].groups());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_expires_its_group_hears_and_its_locks_go() {
    let env = env_with(|c| c.client_expiry_ms = 400).await;
    let rec = Arc::new(Recorder::default());
    let live = connect(&env.addr(), Arc::clone(&rec) as Arc<dyn Handler>).await;
    let silent = env.client().await;
    create_t(&silent).await;
    let g = [("og", MessageModel::Clustering)];
    live.call(&heartbeat("live", &g), Bytes::new(), T)
        .await
        .unwrap();
    silent
        .call(&heartbeat("silent", &g), Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(lock(&silent, "silent", &[0]).await, qs(&[0]));
    eventually("live hears silent joined", || rec.groups() == ["og"]).await;
    // Only "live" keeps beating; the connection of "silent" stays open.
    let deadline = Instant::now() + T;
    while rec.groups().len() < 2 {
        assert!(Instant::now() < deadline, "silent never expired");
        live.call(&heartbeat("live", &g), Bytes::new(), T)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rec.groups(), ["og", "og"]);
    assert_eq!(lock(&live, "live", &[0]).await, qs(&[0]));
    let (l, _): (ConsumerList, Bytes) = live
        .call(&GetConsumerList { group: "og".into() }, Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(l.client_ids, ["live"]);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let env = env_with(|c| c.delay_levels = "1s".into()).await;
    let conn = env.client().await;
    expect_error(
        &conn,
        &send("B", 0, &[("DELAY", "abc")]),
        Bytes::from_static(b"x"),
        ErrorCode::MessageIllegal,
        "DELAY=\"abc\" is not a delay level",
    )
    .await;
    let batch = SendBatch {
        producer_group: "pg".into(),
        topic: "B".into(),
        queue_id: 0,
        messages: vec![BatchEntry {
            tags: String::new(),
            keys: Vec::new(),
            properties: vec![("DELAY".into(), "-1".into())],
            flag: 0,
            born_timestamp: 0,
            body_len: 1,
        }],
    };
    expect_error(
        &conn,
        &batch,
        Bytes::from_static(b"x"),
        ErrorCode::MessageIllegal,
        "not a delay level",
    )
    .await;
    // The real topic and queue are checked as for any send.
    expect_error(
        &conn,
        &send("B", 99, &[("DELAY", "1")]),
        Bytes::from_static(b"x"),
        ErrorCode::InvalidParameter,
        "queue 99 does not exist",
    )
    .await;
    // Dots are allowed in topic names.
    conn.call(&send("a.b", 0, &[]), Bytes::from_static(b"x"), T)
        .await
        .unwrap();
    let msg = drain(&conn, "a.b").await.remove(0);

    let back_at = |offset: u64| ConsumerSendMsgBack {
        group: "g".into(),
        commit_log_offset: offset,
        delay_level: 0,
        max_reconsume_times: 16,
    };
    expect_error(
        &conn,
        &back_at(1 << 40),
        Bytes::new(),
        ErrorCode::QueryNotFound,
        "no message at commit log offset 1099511627776",
    )
    .await;
    expect_error(
        &conn,
        &back_at(msg.commit_log_offset + 1),
        Bytes::new(),
        ErrorCode::QueryNotFound,
        "no message at commit log offset",
    )
    .await;
    let mut bad_group = back_at(msg.commit_log_offset);
    bad_group.group = "a/b".into();
    expect_error(
        &conn,
        &bad_group,
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "group name \"a/b\" contains '/'",
    )
    .await;
    // A group name allowed, but too long for its retry topic (a folder name in the store).
    let mut long_group = back_at(msg.commit_log_offset);
    long_group.group = "g".repeat(250);
    expect_error(
        &conn,
        &long_group,
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "cannot have a retry topic: system topic name of 257 characters exceeds 255",
    )
    .await;
    long_group.delay_level = -1;
    let (sent, _): (SentBack, Bytes) = conn.call(&long_group, Bytes::new(), T).await.unwrap();
    assert_eq!(sent.topic.len(), 255);

    let dir = tempfile::tempdir().unwrap();
    for (levels, text) in [
        ("", "delay_levels is empty"),
        ("1s 2x", "level 2 \"2x\" has unknown unit \"x\""),
        ("1s 0ms", "level 2 \"0ms\" is zero"),
    ] {
        let c = config(dir.path(), |c| c.delay_levels = levels.into());
        match weir_broker::start(c).await {
            Err(e) => assert!(e.to_string().contains(text), "{levels:?}: {e}"),
            Ok(_) => panic!("delay_levels {levels:?} accepted"),
        }
    }
    let c = config(dir.path(), |c| c.queue_lock_lease_ms = 0);
    assert!(weir_broker::start(c).await.is_err());
}
