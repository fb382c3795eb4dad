//! RocketMQ's Java client 4.9.8 against weir (the probe in `interop/java`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use weir_protocol::broker::GetTopicStats;
use weir_tests::{Env, Msg};

use crate::probe::{Lang, Probe, assert_shared_once, broadcast_member, props, run};

/// A Java producer's sync, async and one-way sends (one body compressed) reach weir's
/// own consumers intact; a Java push consumer then receives each of them exactly once.
#[tokio::test]
async fn java_producer_and_consumer() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let sent = run(Lang::Java, "produce", &ns, &["topic=JavaT", "count=4"]).await;
    sent.assert_ok("produce");
    let sends: Vec<_> = sent.of("SENT").collect();
    assert_eq!(sends.len(), 12);
    // weir's view: every message, tag, keys, properties and body as sent.
    let client = env.client().await;
    // Created on the first send with the producer's queue count (RocketMQ's
    // defaultTopicQueueNums, 4), below the broker's default of 8.
    assert_eq!(env.config().default_topic_queues, 8);
    let (stats, _) = client
        .conn
        .call(
            &GetTopicStats {
                topic: "JavaT".into(),
            },
            bytes::Bytes::new(),
            weir_tests::T,
        )
        .await
        .expect("topic stats");
    assert_eq!(stats.config.write_queues, 4);
    client.wait_stored("JavaT", 4, 12).await;
    let got = client.drain_topic("weir_view", "JavaT", 4).await;
    assert_eq!(got.len(), 12, "every send stored, one-way ones too");
    let big = got.iter().find(|m| m.key() == "k0").expect("message k0");
    assert_eq!(
        big.body.len(),
        6000,
        "the compressed body is stored inflated"
    );
    assert_eq!(big.tag, "TagA");
    assert!(big.props.iter().any(|(k, v)| k == "color" && v == "red"));
    // A Java push consumer in a group of its own gets them all, once.
    let consumed = run(
        Lang::Java,
        "consume",
        &ns,
        &["topic=JavaT", "group=java_cg", "expect=12", "grace=500"],
    )
    .await;
    consumed.assert_ok("consume");
    let keys: BTreeSet<String> = consumed.received_keys().into_iter().collect();
    assert_eq!(keys.len(), 12);
    for line in consumed.of("RECV") {
        let p = props(line);
        assert!(
            p.contains_key("color") && p.contains_key("UNIQ_KEY"),
            "{p:?}"
        );
        assert!(line[7] == "TagA" || line[7] == "TagB");
    }
}

/// Messages weir's client sends arrive at a Java consumer with tag, keys and properties.
#[tokio::test]
async fn weir_to_java() {
    let env = Env::start().await;
    let client = env.client().await;
    client.create_topic("CrossT", 2).await;
    let msgs: Vec<Msg> = (0..6)
        .map(|i| {
            Msg::new(format!("x{i}"))
                .tag(if i % 2 == 0 { "TagA" } else { "TagB" })
                .prop("color", "green")
                .body(format!("weir #{i}"))
        })
        .collect();
    client.send("CrossT", 0, &msgs[..3]).await;
    client.send("CrossT", 1, &msgs[3..]).await;
    let consumed = run(
        Lang::Java,
        "consume",
        &env.namesrv(),
        &[
            "topic=CrossT",
            "group=cross_cg",
            "expr=TagA",
            "expect=3",
            "grace=500",
        ],
    )
    .await;
    consumed.assert_ok("consume weir's messages");
    let keys: BTreeSet<String> = consumed.received_keys().into_iter().collect();
    assert_eq!(
        keys,
        ["x0", "x2", "x4"].into_iter().map(String::from).collect()
    );
    for line in consumed.of("RECV") {
        assert_eq!(line[7], "TagA");
        assert_eq!(props(line).get("color").map(String::as_str), Some("green"));
    }
}

/// Two Java consumers in one group share the queues (each message once in all), and a
/// broadcasting group gets everything in each member.
#[tokio::test]
async fn java_clustering_and_broadcasting() {
    let env = Env::start().await;
    let ns = env.namesrv();
    env.client().await.create_topic("ShareT", 4).await;
    let member = |instance: &str| {
        let instance = format!("instance={instance}");
        Probe::start(
            Lang::Java,
            "consume",
            &ns,
            &[
                "topic=ShareT",
                "group=share_cg",
                "members=2",
                "grace=1500",
                &instance,
            ],
        )
    };
    let (mut a, mut b) = (member("a"), member("b"));
    a.ready().await;
    b.ready().await;
    let sent = run(Lang::Java, "produce", &ns, &["topic=ShareT", "count=4"]).await;
    sent.assert_ok("produce");
    // Each member ends after a quiet grace, having received its share only.
    let (ra, rb) = tokio::join!(a.finish(), b.finish());
    ra.assert_ok("member a");
    rb.assert_ok("member b");
    assert_shared_once(&ra, &rb, 12);

    // Broadcasting: every member gets every message.
    env.client().await.create_topic("CastT", 4).await;
    let listener =
        |instance: &str| broadcast_member(Lang::Java, &ns, "CastT", "cast_cg", 12, instance);
    let (mut a, mut b) = (listener("a"), listener("b"));
    a.ready().await;
    b.ready().await;
    run(Lang::Java, "produce", &ns, &["topic=CastT", "count=4"])
        .await
        .assert_ok("produce");
    let (ra, rb) = tokio::join!(a.finish(), b.finish());
    for r in [&ra, &rb] {
        r.assert_ok("broadcast member");
        assert_eq!(r.received_keys().len(), 12);
    }
}

/// Orderly consumption: queue locks on weir, each order's steps in order.
#[tokio::test]
async fn java_orderly() {
    let env = Env::start().await;
    let r = run(
        Lang::Java,
        "orderly",
        &env.namesrv(),
        &["topic=OrderT", "orders=6", "steps=3", "queues=4"],
    )
    .await;
    r.assert_ok("orderly");
    assert_eq!(r.of("RECV").count(), 18);
}

/// A SQL92 subscription selects on the broker; a batch send arrives whole, in order.
#[tokio::test]
async fn sql92_and_batches() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let r = run(Lang::Java, "sql92", &ns, &["topic=SqlT"]).await;
    r.assert_ok("java sql92");
    let keys: BTreeSet<String> = r.received_keys().into_iter().collect();
    assert_eq!(keys, ["s4", "s6"].into_iter().map(String::from).collect());
    let b = run(Lang::Java, "batch", &ns, &["topic=BatchT", "count=10"]).await;
    b.assert_ok("batch");
    let offsets: Vec<u64> = b
        .of("SENT")
        .map(|l| l[6].parse().expect("queue offset"))
        .collect();
    assert_eq!(offsets.len(), 10);
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
}

/// Transactions: commit and rollback from the local transaction, unknown resolved by the
/// broker's check-back to the Java producer.
#[tokio::test]
async fn java_transactions() {
    let env = Env::start_with(|c| {
        c.transaction_timeout_ms = 1000;
        c.transaction_check_interval_ms = 1000;
    })
    .await;
    let r = run(Lang::Java, "tx", &env.namesrv(), &["topic=TxT"]).await;
    r.assert_ok("tx");
    let keys: BTreeSet<String> = r.received_keys().into_iter().collect();
    assert_eq!(
        keys,
        ["commit", "unknown"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert!(
        r.of("TX").any(|l| l[3] == "true"),
        "the unknown one was checked back"
    );
}

/// Consumer retries: redelivery through the group's retry topic with the reconsume
/// count, then the dead-letter topic, found by key.
#[tokio::test]
async fn java_retry_and_dead_letters() {
    let env = Env::start_with(|c| c.delay_levels = "1s 1s 1s 1s 1s".into()).await;
    let r = run(Lang::Java, "retry", &env.namesrv(), &["topic=RetryT"]).await;
    r.assert_ok("retry");
}

/// A WebAssembly filter uploaded for a group (as `weir filter upload` does) runs for that
/// group's RocketMQ consumers, after their tag subscription. The component is a fixture
/// built before weir spoke RocketMQ's protocol (weir-filter-sql92 from the tree of commit
/// eca0a52, `filter` profile): RocketMQ's message encoding did not change the filter
/// contract, and components uploaded before it keep working.
#[tokio::test]
async fn a_groups_wasm_filter_serves_java_consumers() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let client = env.client().await;
    client.create_topic("WasmT", 4).await;
    let component = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/sql92-filter-before-remoting.wasm"),
    )
    .expect("the fixture component");
    client
        .upload("wasm_cg", "WasmT", &component, &[("expr", "color = 'red'")])
        .await
        .expect("the filter is accepted");
    let sent = run(Lang::Java, "produce", &ns, &["topic=WasmT", "count=4"]).await;
    sent.assert_ok("produce");
    // Red: the even sequence numbers, 6 of 12; the tag expression keeps TagA (also even).
    let consumed = run(
        Lang::Java,
        "consume",
        &ns,
        &[
            "topic=WasmT",
            "group=wasm_cg",
            "expr=TagA || TagB",
            "expect=6",
            "grace=1000",
        ],
    )
    .await;
    consumed.assert_ok("consume through the group's filter");
    for line in consumed.of("RECV") {
        assert_eq!(props(line).get("color").map(String::as_str), Some("red"));
    }
    assert_eq!(consumed.of("RECV").count(), 6);
}

/// A delay level (level 1: 1 s), a lite pull consumer, and a topic created by a Java
/// producer through RocketMQ's auto-create route.
#[tokio::test]
async fn java_delay_pull_and_topic_creation() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let d = run(
        Lang::Java,
        "delay",
        &ns,
        &["topic=DelayT", "count=2", "level=1"],
    )
    .await;
    d.assert_ok("delay");
    let made = run(Lang::Java, "admin", &ns, &["topic=MadeT", "queues=4"]).await;
    made.assert_ok("createTopic through TBW102");
    run(Lang::Java, "produce", &ns, &["topic=MadeT", "count=2"])
        .await
        .assert_ok("produce");
    let pulled = run(
        Lang::Java,
        "pull",
        &ns,
        &["topic=MadeT", "group=lite_cg", "expect=6", "grace=500"],
    )
    .await;
    pulled.assert_ok("lite pull");
    assert_eq!(pulled.received_keys().len(), 6);
}

/// Lookups as RocketMQ's tools make them: by `offsetMsgId` (VIEW_MESSAGE_BY_ID), by the
/// producer's id (`viewMessage(topic, uniqId)`: the broker indexes `UNIQ_KEY` like a key)
/// and by key.
#[tokio::test]
async fn java_lookups() {
    let env = Env::start().await;
    let r = run(Lang::Java, "view", &env.namesrv(), &["topic=ViewT"]).await;
    r.assert_ok("view");
    let found: BTreeSet<&str> = r.of("RECV").map(|l| l[1].as_str()).collect();
    assert_eq!(
        found,
        ["query-key", "view-offset", "view-uniq"]
            .into_iter()
            .collect()
    );
}
