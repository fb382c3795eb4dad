//! ali-ons 3.12.0, RocketMQ's pure-JavaScript 4.x client, against weir (the probe in
//! `interop/node`). The client has a sync send only (the probe's `async` mode is several
//! sends in flight at once), a sharding-key queue selector, and a push consumer
//! (clustering or broadcasting, tag or SQL92 subscriptions, retries through the group's
//! `%RETRY%` topic); it sets no `UNIQ_KEY`, so its messages are known by their
//! `offsetMsgId`, and it cannot create topics, so every test creates its topic first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use weir_tests::{Env, Msg, Received, eventually};

use crate::probe::{Lang, Probe, Run, assert_shared_once, broadcast_member, props, run};

/// `offsetMsgId` (SENT field 4) of each key (SENT field 8).
fn sent_ids(r: &Run) -> BTreeMap<String, String> {
    r.of("SENT").map(|l| (l[8].clone(), l[4].clone())).collect()
}

fn keys(msgs: &[Received]) -> BTreeSet<String> {
    msgs.iter().map(|m| m.key().to_owned()).collect()
}

/// Sync sends and several in flight at once (one body compressed) are stored as sent, and
/// each send's answer names its record; an ali-ons push consumer then gets each message once
/// and commits the group's offsets to the end of every queue; a Java consumer reads the
/// same messages under the ids the ali-ons producer was given.
#[tokio::test]
async fn node_producer_and_consumer() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let client = env.client().await;
    client.create_topic("NodeT", 4).await;
    let sent = run(Lang::Node, "produce", &ns, &["topic=NodeT", "count=4"]).await;
    sent.assert_ok("produce");
    let ids = sent_ids(&sent);
    assert_eq!(ids.len(), 8, "sync and async, 4 each");
    assert!(
        sent.of("SENT").all(|l| l[3] == l[4]),
        "no UNIQ_KEY: msgId is the offsetMsgId"
    );

    // weir's view: every message, with tag, keys, properties and body as sent, at the
    // record its send's answer named.
    let got = client.drain_topic("weir_view", "NodeT", 4).await;
    assert_eq!(keys(&got).len(), 8);
    for m in &got {
        assert_eq!(ids[m.key()], m.msg_id, "the send answered the record's id");
        let seq: usize = m.key()[1..].parse().expect("key n<seq>");
        let (tag, color) = if seq.is_multiple_of(2) {
            ("TagA", "red")
        } else {
            ("TagB", "blue")
        };
        assert_eq!(m.tag, tag);
        let p: BTreeMap<&str, &str> = m
            .props
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(p.get("color"), Some(&color));
        assert_eq!(p.get("n").copied(), Some(seq.to_string().as_str()));
        assert!(
            !p.contains_key("UNIQ_KEY"),
            "ali-ons sets no UNIQ_KEY: {p:?}"
        );
    }
    let big = got.iter().find(|m| m.key() == "n0").expect("message n0");
    assert_eq!(
        big.body.len(),
        6000,
        "the compressed body is stored inflated"
    );
    let sha_n0 = &sent.of("SENT").find(|l| l[8] == "n0").expect("n0 sent")[10];

    // An ali-ons push consumer in a group of its own gets them all, once, with the body
    // the producer had before it compressed it.
    let consumed = run(
        Lang::Node,
        "consume",
        &ns,
        &["topic=NodeT", "group=node_cg", "expect=8", "grace=500"],
    )
    .await;
    consumed.assert_ok("consume");
    let by_key: BTreeMap<String, &Vec<String>> =
        consumed.of("RECV").map(|l| (l[8].clone(), l)).collect();
    assert_eq!(by_key.len(), 8);
    for (key, l) in &by_key {
        assert_eq!(l[6], ids[key], "received as the record the send named");
        assert!(props(l).contains_key("color"), "{l:?}");
    }
    assert_eq!(&by_key["n0"][12], sha_n0);
    // The group's committed offsets (UPDATE_CONSUMER_OFFSET, one-way) reach every queue's end.
    for q in 0..4 {
        let max = client.queue_offsets("NodeT", q).await.max;
        eventually("node_cg's offsets committed", async || {
            client.committed("node_cg", "NodeT", q).await == Some(max)
        })
        .await;
    }

    // A Java consumer sees the ali-ons messages under the same ids (no UNIQ_KEY: its
    // msgId falls back to the offsetMsgId).
    let java = run(
        Lang::Java,
        "consume",
        &ns,
        &["topic=NodeT", "group=node_java_cg", "expect=8", "grace=500"],
    )
    .await;
    java.assert_ok("java consume");
    let java_ids: BTreeSet<String> = java.of("RECV").map(|l| l[5].clone()).collect();
    assert_eq!(java_ids, ids.values().cloned().collect());
}

/// Messages weir's client sends arrive at an ali-ons consumer with tag, keys, properties
/// and body, under the ids weir's sends answered; its tag subscription is served by the
/// broker.
#[tokio::test]
async fn weir_to_node() {
    let env = Env::start().await;
    let client = env.client().await;
    client.create_topic("CrossNodeT", 2).await;
    let msgs: Vec<Msg> = (0..6)
        .map(|i| {
            Msg::new(format!("x{i}"))
                .tag(if i % 2 == 0 { "TagA" } else { "TagB" })
                .prop("color", "green")
                .body(format!("weir #{i}"))
        })
        .collect();
    let mut ids = client.send("CrossNodeT", 0, &msgs[..3]).await;
    ids.extend(client.send("CrossNodeT", 1, &msgs[3..]).await);
    let consumed = run(
        Lang::Node,
        "consume",
        &env.namesrv(),
        &[
            "topic=CrossNodeT",
            "group=cross_node_cg",
            "expr=TagA",
            "expect=3",
            "grace=500",
        ],
    )
    .await;
    consumed.assert_ok("consume weir's messages");
    let got: BTreeSet<String> = consumed.received_keys().into_iter().collect();
    assert_eq!(
        got,
        ["x0", "x2", "x4"].into_iter().map(String::from).collect()
    );
    for line in consumed.of("RECV") {
        assert_eq!(line[7], "TagA");
        assert_eq!(props(line).get("color").map(String::as_str), Some("green"));
        let i: usize = line[8][1..].parse().expect("key x<i>");
        assert_eq!(line[6], ids[i].msg_id, "the record weir's send named");
        assert_eq!(line[11], format!("weir #{i}").len().to_string());
    }
}

/// Two ali-ons consumers in one group share the queues (each message once in all); a
/// broadcasting group gets everything in each member.
#[tokio::test]
async fn node_clustering_and_broadcasting() {
    let env = Env::start().await;
    let ns = env.namesrv();
    env.client().await.create_topic("ShareNodeT", 4).await;
    let member = |instance: &str| {
        let instance = format!("instance={instance}");
        Probe::start(
            Lang::Node,
            "consume",
            &ns,
            &[
                "topic=ShareNodeT",
                "group=share_node_cg",
                "members=2",
                "grace=1500",
                &instance,
            ],
        )
    };
    let (mut a, mut b) = (member("a"), member("b"));
    a.ready().await;
    b.ready().await;
    let sent = run(Lang::Node, "produce", &ns, &["topic=ShareNodeT", "count=6"]).await;
    sent.assert_ok("produce");
    let (ra, rb) = tokio::join!(a.finish(), b.finish());
    ra.assert_ok("member a");
    rb.assert_ok("member b");
    let queues = |r: &Run| -> BTreeSet<String> { r.of("RECV").map(|l| l[3].clone()).collect() };
    assert!(
        queues(&ra).is_disjoint(&queues(&rb)),
        "each queue has one member: {:?} {:?}",
        queues(&ra),
        queues(&rb)
    );
    assert_shared_once(&ra, &rb, 12);

    // Broadcasting: every member gets every message (offsets in the client's memory).
    let listener = |instance: &str| {
        broadcast_member(Lang::Node, &ns, "ShareNodeT", "cast_node_cg", 12, instance)
    };
    let (ra, rb) = tokio::join!(listener("a").finish(), listener("b").finish());
    for r in [&ra, &rb] {
        r.assert_ok("broadcast member");
        assert_eq!(r.received_keys().len(), 12);
    }
}

/// ali-ons' queue selector (a sharding key per order) keeps each order on one queue, and
/// its consumer gets every order's steps in order.
#[tokio::test]
async fn node_orderly() {
    let env = Env::start().await;
    let client = env.client().await;
    client.create_topic("OrderNodeT", 4).await;
    let r = run(
        Lang::Node,
        "orderly",
        &env.namesrv(),
        &["topic=OrderNodeT", "orders=10", "steps=3"],
    )
    .await;
    r.assert_ok("orderly");
    assert_eq!(r.of("RECV").count(), 30);
    // weir's view: per order, one queue, steps in queue order, the sharding key kept.
    let got = client.drain_topic("weir_view", "OrderNodeT", 4).await;
    assert_eq!(got.len(), 30);
    let mut orders: BTreeMap<String, Vec<(u32, u64, String)>> = BTreeMap::new();
    for m in &got {
        let get = |name: &str| {
            m.props
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{} has no {name}: {:?}", m.key(), m.props))
        };
        let sharding = get("__SHARDING_KEY");
        assert!(sharding.starts_with(&format!("order-{}", get("order"))));
        orders
            .entry(get("order"))
            .or_default()
            .push((m.queue_id, m.queue_offset, get("step")));
    }
    for (order, mut steps) in orders {
        steps.sort();
        let queues: BTreeSet<u32> = steps.iter().map(|s| s.0).collect();
        assert_eq!(queues.len(), 1, "order {order} on one queue: {steps:?}");
        let in_queue_order: Vec<&str> = steps.iter().map(|s| s.2.as_str()).collect();
        assert_eq!(in_queue_order, ["1", "2", "3"], "order {order}");
    }
}

/// A handler that throws: ali-ons sends the message back (CONSUMER_SEND_MSG_BACK, delay
/// level 0, its maxReconsumeTimes), gets it again from the group's `%RETRY%` topic with
/// reconsumeTimes + 1, and after the last attempt weir moves it to `%DLQ%<group>`.
#[tokio::test]
async fn node_retry_and_dead_letters() {
    // Delay level 0 is the broker's 3 + reconsumeTimes: 1 s each here.
    let env = Env::start_with(|c| c.delay_levels = "1s 1s 1s 1s 1s".into()).await;
    let client = env.client().await;
    client.create_topic("RetryNodeT", 4).await;
    let r = run(
        Lang::Node,
        "retry",
        &env.namesrv(),
        &[
            "topic=RetryNodeT",
            "group=retry_node_cg",
            "count=4",
            "fail=2",
            "max=1",
        ],
    )
    .await;
    r.assert_ok("retry");
    let ids = sent_ids(&r);
    let redelivered: Vec<_> = r.of("RECV").filter(|l| l[10] == "1").collect();
    assert_eq!(redelivered.len(), 2, "r0 and r1 once more each");
    for l in redelivered {
        let p = props(l);
        assert_eq!(l[2], "RetryNodeT", "the client restores the topic");
        assert_eq!(p.get("RETRY_TOPIC").map(String::as_str), Some("RetryNodeT"));
        assert_eq!(p.get("ORIGIN_MESSAGE_ID"), ids.get(&l[8]), "{l:?}");
    }
    // weir's view: the failing keys in the dead-letter topic, once each.
    let dead = client
        .drain_topic("weir_view", "%DLQ%retry_node_cg", 1)
        .await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(
        keys(&dead),
        ["r0", "r1"].into_iter().map(String::from).collect()
    );
    for m in &dead {
        let origin = m.props.iter().find(|(k, _)| k == "ORIGIN_MESSAGE_ID");
        assert_eq!(origin.map(|(_, v)| v), ids.get(m.key()), "{:?}", m.props);
    }
    // Nothing else is dead or still waiting for a retry.
    let retried = client
        .drain_topic("weir_view", "%RETRY%retry_node_cg", 1)
        .await;
    assert_eq!(keys(&retried), keys(&dead), "one retry per failing key");
}

/// A delay level (level 1: 1 s) and a SQL92 subscription served by weir.
#[tokio::test]
async fn node_delay_and_sql92() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let client = env.client().await;
    client.create_topic("DelayNodeT", 4).await;
    client.create_topic("SqlNodeT", 4).await;
    let (d, s) = tokio::join!(
        run(
            Lang::Node,
            "delay",
            &ns,
            &["topic=DelayNodeT", "count=2", "level=1"],
        ),
        run(Lang::Node, "sql92", &ns, &["topic=SqlNodeT"]),
    );
    d.assert_ok("delay");
    s.assert_ok("sql92");
    let keys: BTreeSet<String> = s.received_keys().into_iter().collect();
    assert_eq!(keys, ["s4", "s6"].into_iter().map(String::from).collect());
}

/// A WebAssembly filter uploaded for a group runs for that group's ali-ons consumers,
/// after their tag subscription (the fixture of `a_groups_wasm_filter_serves_java_consumers`).
#[tokio::test]
async fn a_groups_wasm_filter_serves_node_consumers() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let client = env.client().await;
    client.create_topic("WasmNodeT", 4).await;
    let component = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/sql92-filter-before-remoting.wasm"),
    )
    .expect("the fixture component");
    client
        .upload(
            "wasm_node_cg",
            "WasmNodeT",
            &component,
            &[("expr", "color = 'red'")],
        )
        .await
        .expect("the filter is accepted");
    let sent = run(Lang::Node, "produce", &ns, &["topic=WasmNodeT", "count=6"]).await;
    sent.assert_ok("produce");
    // Red: the even sequence numbers, 6 of 12; the tag expression keeps TagA (also even).
    let consumed = run(
        Lang::Node,
        "consume",
        &ns,
        &[
            "topic=WasmNodeT",
            "group=wasm_node_cg",
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

/// Where a group without committed offsets starts: ali-ons' CONSUME_FROM_TIMESTAMP (30
/// minutes ago: SEARCH_OFFSET_BY_TIMESTAMP) reads every message; its default
/// CONSUME_FROM_LAST_OFFSET reads a young queue from its start too (QUERY_CONSUMER_OFFSET
/// answers 0 while the queue's first message is recent, as Apache RocketMQ does), so a new
/// topic's first messages are not skipped.
#[tokio::test]
async fn node_consume_from_where() {
    let env = Env::start().await;
    let ns = env.namesrv();
    env.client().await.create_topic("FromNodeT", 4).await;
    run(Lang::Node, "produce", &ns, &["topic=FromNodeT", "count=2"])
        .await
        .assert_ok("produce");
    let since = run(
        Lang::Node,
        "consume",
        &ns,
        &[
            "topic=FromNodeT",
            "group=ts_node_cg",
            "from=timestamp",
            "expect=4",
            "grace=500",
        ],
    )
    .await;
    since.assert_ok("consume from a time");
    let mut last = Probe::start(
        Lang::Node,
        "consume",
        &ns,
        &[
            "topic=FromNodeT",
            "group=last_node_cg",
            "from=last",
            "expect=6",
            "grace=1000",
        ],
    );
    // The old messages may arrive before READY.
    let early: Vec<String> = last
        .ready()
        .await
        .into_iter()
        .filter(|l| l[0] == "RECV")
        .map(|l| l[8].clone())
        .collect();
    run(
        Lang::Node,
        "produce",
        &ns,
        &["topic=FromNodeT", "count=1", "keyPrefix=z"],
    )
    .await
    .assert_ok("produce after READY");
    let last = last.finish().await;
    last.assert_ok("consume from the last offset");
    let got: BTreeSet<String> = early.into_iter().chain(last.received_keys()).collect();
    let want: BTreeSet<String> = since
        .received_keys()
        .into_iter()
        .chain(["z0".into(), "z1".into()])
        .collect();
    assert_eq!(
        got, want,
        "the young queues from their start, then what came after"
    );
}
