//! RocketMQ's Python client `rocketmq` 0.4.4 against weir (the probe in `interop/python`):
//! the package from PyPI, whose wheel bundles RocketMQ's C++ client (rocketmq-client-cpp),
//! so these are the C++ client's requests on the wire (`language: CPP`, its own heartbeat
//! JSON, one-way offset commits).
//!
//! The package cannot set a consumer's consume-from-where: the C++ client starts a new
//! group at the last offset unless the broker answers that the queue is young (offset 0),
//! as RocketMQ's broker does and weir does (`new_group_start` in the remoting adapter).
//! Tests that send before the consumer starts rely on that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use weir_tests::{Env, Msg, Received, eventually};

use crate::probe::{Lang, Probe, Run, assert_shared_once, broadcast_member, props, run};

fn keys(msgs: &[Received]) -> BTreeSet<String> {
    msgs.iter().map(|m| m.key().to_owned()).collect()
}

fn prop<'a>(m: &'a Received, name: &str) -> Option<&'a str> {
    m.props
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Waits until `group`'s committed offsets on `queues` of `topic` reach the queues' ends
/// (the C++ client commits one-way, every 5 s and when it shuts down).
async fn committed_to_the_end(env: &Env, group: &str, topic: &str, queues: u32) {
    let client = env.client().await;
    eventually(
        &format!("{group} committed {topic} to its end"),
        async || {
            for q in 0..queues {
                let max = client.queue_offsets(topic, q).await.max;
                if max > 0 && client.committed(group, topic, q).await != Some(max) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// Waits until `group`'s committed offset on each queue a probe received from is past
/// the last message it received there. (With a filter, the offset after the last
/// delivered message is where the client commits; the offset past the filtered-out rest
/// comes with its next pull's answer, which the broker holds while nothing arrives.)
async fn committed_past_received(env: &Env, group: &str, topic: &str, run: &Run) {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for l in run.of("RECV") {
        let (q, o): (u32, u64) = (l[3].parse().unwrap(), l[4].parse().unwrap());
        let e = last.entry(q).or_default();
        *e = (*e).max(o + 1);
    }
    let client = env.client().await;
    eventually(
        &format!("{group} committed past what it received"),
        async || {
            for (&q, &past) in &last {
                if client.committed(group, topic, q).await < Some(past) {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// Sync, async, one-way and ordered sends (one body > 4 KiB, which the C++ client
/// compresses) reach weir's own consumer intact; then a Python push consumer in a new
/// group receives each once and commits its offsets on weir.
#[tokio::test]
async fn python_producer_and_consumer() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let sent = run(Lang::Python, "produce", &ns, &["topic=PyT", "count=4"]).await;
    sent.assert_ok("produce");
    assert_eq!(sent.of("SENT").count(), 16);
    // weir's view: every message with its tag, keys, properties and body.
    let queues = env.config().default_topic_queues;
    let client = env.client().await;
    client.wait_stored("PyT", queues, 16).await;
    let got = client.drain_topic("weir_view", "PyT", queues).await;
    assert_eq!(got.len(), 16, "every send stored, one-way ones too");
    assert_eq!(keys(&got).len(), 16);
    let big = got.iter().find(|m| m.key() == "p0").expect("message p0");
    assert_eq!(
        big.body.len(),
        6000,
        "the compressed body is stored inflated"
    );
    assert!(big.body.starts_with(b"weir-interop sync #0\n"));
    for m in &got {
        let n: usize = prop(m, "n").expect("property n").parse().unwrap();
        assert_eq!(m.key(), format!("p{n}"));
        let (tag, color) = if n.is_multiple_of(2) {
            ("TagA", "red")
        } else {
            ("TagB", "blue")
        };
        assert_eq!((m.tag.as_str(), prop(m, "color")), (tag, Some(color)));
        assert!(prop(m, "UNIQ_KEY").is_some(), "{m:?}");
    }
    // The SENT ids are the producer's (UNIQ_KEY), as weir stored them.
    let stored_ids: BTreeSet<&str> = got.iter().filter_map(|m| prop(m, "UNIQ_KEY")).collect();
    for line in sent.of("SENT") {
        assert!(stored_ids.contains(line[3].as_str()), "{line:?}");
    }
    // Ordered sends went to the queue the selector chose (arg % queues).
    for line in sent.of("SENT").filter(|l| l[1] == "orderly") {
        let m = got.iter().find(|m| m.key() == line[8]).expect("stored");
        assert_eq!(m.queue_id.to_string(), line[5], "{line:?}");
    }

    // A Python push consumer of a new group, started after the sends, gets them all once.
    let consumed = run(
        Lang::Python,
        "consume",
        &ns,
        &["topic=PyT", "group=py_cg", "expect=16", "grace=500"],
    )
    .await;
    consumed.assert_ok("consume");
    let received: BTreeSet<String> = consumed.received_keys().into_iter().collect();
    assert_eq!(received, keys(&got));
    for line in consumed.of("RECV") {
        let p = props(line);
        assert_eq!(
            p.get("UNIQ_KEY"),
            Some(&line[5]),
            "msgId is the producer's id"
        );
        assert!(p.contains_key("color"), "{p:?}");
        assert_eq!(line[10], "0", "first delivery");
    }
    committed_to_the_end(&env, "py_cg", "PyT", queues).await;
}

/// Messages weir's client sends arrive at a Python consumer with tag, keys and
/// properties, filtered by its tag expression.
#[tokio::test]
async fn weir_to_python() {
    let env = Env::start().await;
    let client = env.client().await;
    client.create_topic("CrossPyT", 2).await;
    let msgs: Vec<Msg> = (0..6)
        .map(|i| {
            Msg::new(format!("x{i}"))
                .tag(if i % 2 == 0 { "TagA" } else { "TagB" })
                .prop("color", "green")
                .body(format!("weir #{i}"))
        })
        .collect();
    client.send("CrossPyT", 0, &msgs[..3]).await;
    client.send("CrossPyT", 1, &msgs[3..]).await;
    let consumed = run(
        Lang::Python,
        "consume",
        &env.namesrv(),
        &[
            "topic=CrossPyT",
            "group=cross_py_cg",
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
        let n = &line[8][1..];
        assert_eq!(line[11], format!("weir #{n}").len().to_string());
    }
    committed_past_received(&env, "cross_py_cg", "CrossPyT", &consumed).await;
}

/// Two Python consumers (two processes) in one group share the queues, each message once
/// in all; a broadcasting group gets everything in each member.
#[tokio::test]
async fn python_clustering_and_broadcasting() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let client = env.client().await;
    client.create_topic("SharePyT", 4).await;
    let member = |instance: &str| {
        let instance = format!("instance={instance}");
        Probe::start(
            Lang::Python,
            "consume",
            &ns,
            &[
                "topic=SharePyT",
                "group=share_py_cg",
                "members=2",
                "grace=2000",
                &instance,
            ],
        )
    };
    let (mut a, mut b) = (member("a"), member("b"));
    a.ready().await;
    b.ready().await;
    run(Lang::Python, "produce", &ns, &["topic=SharePyT", "count=3"])
        .await
        .assert_ok("produce");
    let (ra, rb) = tokio::join!(a.finish(), b.finish());
    ra.assert_ok("member a");
    rb.assert_ok("member b");
    let (ka, kb) = (ra.received_keys(), rb.received_keys());
    assert!(
        !ka.is_empty() && !kb.is_empty(),
        "both members consumed: {ka:?} {kb:?}"
    );
    assert_shared_once(&ra, &rb, 12);
    // Each member read whole queues of its own.
    let queues_of = |r: &Run| -> BTreeSet<String> { r.of("RECV").map(|l| l[3].clone()).collect() };
    assert!(queues_of(&ra).is_disjoint(&queues_of(&rb)));
    committed_to_the_end(&env, "share_py_cg", "SharePyT", 4).await;

    // Broadcasting: every member gets every message.
    client.create_topic("CastPyT", 4).await;
    let listener =
        |instance: &str| broadcast_member(Lang::Python, &ns, "CastPyT", "cast_py_cg", 12, instance);
    let (mut a, mut b) = (listener("a"), listener("b"));
    a.ready().await;
    b.ready().await;
    run(Lang::Python, "produce", &ns, &["topic=CastPyT", "count=3"])
        .await
        .assert_ok("produce");
    let (ra, rb) = tokio::join!(a.finish(), b.finish());
    for r in [&ra, &rb] {
        r.assert_ok("broadcast member");
        assert_eq!(r.received_keys().len(), 12);
    }
}

/// Orderly consumption (the C++ client locks its queues on weir): 10 orders × 3 steps sent
/// with `send_orderly`, each order's steps received in order; weir's view agrees.
#[tokio::test]
async fn python_orderly() {
    let env = Env::start().await;
    let client = env.client().await;
    client.create_topic("OrderPyT", 4).await;
    let r = run(
        Lang::Python,
        "orderly",
        &env.namesrv(),
        &["topic=OrderPyT", "orders=10", "steps=3"],
    )
    .await;
    r.assert_ok("orderly");
    assert_eq!(r.of("RECV").count(), 30);
    // weir's view: each order on one queue (order % 4), its steps in queue order.
    let stored = client.drain_topic("weir_view", "OrderPyT", 4).await;
    assert_eq!(stored.len(), 30);
    let mut steps: BTreeMap<u32, Vec<(u32, u64, u32)>> = BTreeMap::new();
    for m in &stored {
        let order: u32 = prop(m, "order").unwrap().parse().unwrap();
        let step: u32 = prop(m, "step").unwrap().parse().unwrap();
        steps
            .entry(order)
            .or_default()
            .push((m.queue_id, m.queue_offset, step));
    }
    for (order, mut s) in steps {
        s.sort_by_key(|&(_, offset, _)| offset);
        assert!(s.iter().all(|&(q, _, _)| q == order % 4), "{order}: {s:?}");
        let got: Vec<u32> = s.iter().map(|&(_, _, step)| step).collect();
        assert_eq!(got, vec![1, 2, 3], "order {order}");
    }
    committed_to_the_end(&env, "interop_py_order_cg", "OrderPyT", 4).await;
}

/// Consumer retries: the listener asks for a redelivery of `r0` every time; weir
/// redelivers it through the group's retry topic with the reconsume count + 1, up to
/// RocketMQ's default of 16 (the C++ client sends no maximum of its own), then moves it to
/// `%DLQ%<group>`; the other messages are consumed once.
#[tokio::test]
async fn python_retry_and_dead_letters() {
    // Every delay level 1 s: the C++ client sends back with level 0 (3 + reconsume times).
    let env = Env::start_with(|c| c.delay_levels = "1s".into()).await;
    let r = run(
        Lang::Python,
        "retry",
        &env.namesrv(),
        &[
            "topic=RetryPyT",
            "group=py_retry_cg",
            "count=4",
            "timeout=90000",
        ],
    )
    .await;
    r.assert_ok("retry");
    let times: Vec<&str> = r
        .of("RECV")
        .filter(|l| l[8] == "r0")
        .map(|l| l[10].as_str())
        .collect();
    assert_eq!(times.len(), 17, "{times:?}");
    // weir's view: the failing message, and only it, in the dead-letter topic, intact.
    let client = env.client().await;
    let mut dead = Vec::new();
    eventually("r0 in %DLQ%py_retry_cg", async || {
        dead = client.drain_topic("weir_view", "%DLQ%py_retry_cg", 1).await;
        !dead.is_empty()
    })
    .await;
    assert_eq!(keys(&dead), ["r0".to_owned()].into_iter().collect());
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, b"weir-interop retry #0\n");
    assert_eq!(prop(&dead[0], "color"), Some("red"));
}

/// A delay level (level 1: 1 s); a batch (SEND_BATCH_MESSAGE) stored whole on one queue at
/// consecutive offsets; the package's pull consumer reads it.
#[tokio::test]
async fn python_delay_batch_and_pull() {
    let env = Env::start().await;
    let ns = env.namesrv();
    run(
        Lang::Python,
        "delay",
        &ns,
        &["topic=DelayPyT", "count=2", "level=1"],
    )
    .await
    .assert_ok("delay");

    let b = run(Lang::Python, "batch", &ns, &["topic=BatchPyT", "count=10"]).await;
    b.assert_ok("batch");
    let stored = env
        .client()
        .await
        .drain_topic("weir_view", "BatchPyT", env.config().default_topic_queues)
        .await;
    assert_eq!(stored.len(), 10);
    assert!(stored.iter().all(|m| m.queue_id == stored[0].queue_id));
    let order: Vec<String> = stored.iter().map(|m| m.key().to_owned()).collect();
    let want: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    assert_eq!(order, want, "in batch order");
    assert!(
        stored
            .windows(2)
            .all(|w| w[1].queue_offset == w[0].queue_offset + 1)
    );
    let pulled = run(
        Lang::Python,
        "pull",
        &ns,
        &[
            "topic=BatchPyT",
            "group=py_pull_cg",
            "expect=10",
            "grace=500",
        ],
    )
    .await;
    pulled.assert_ok("pull");
    let keys: BTreeSet<String> = pulled.received_keys().into_iter().collect();
    assert_eq!(keys, want.into_iter().collect());
}

/// A WebAssembly filter uploaded for a group (the fixture of
/// `a_groups_wasm_filter_serves_java_consumers`) runs for that group's Python consumers,
/// after their tag subscription.
#[tokio::test]
async fn a_groups_wasm_filter_serves_python_consumers() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let client = env.client().await;
    client.create_topic("WasmPyT", 4).await;
    let component = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/sql92-filter-before-remoting.wasm"),
    )
    .expect("the fixture component");
    client
        .upload(
            "wasm_py_cg",
            "WasmPyT",
            &component,
            &[("expr", "color = 'red'")],
        )
        .await
        .expect("the filter is accepted");
    run(Lang::Python, "produce", &ns, &["topic=WasmPyT", "count=4"])
        .await
        .assert_ok("produce");
    // Red: the even sequence numbers, 8 of 16.
    let consumed = run(
        Lang::Python,
        "consume",
        &ns,
        &[
            "topic=WasmPyT",
            "group=wasm_py_cg",
            "expr=TagA || TagB",
            "expect=8",
            "grace=1000",
        ],
    )
    .await;
    consumed.assert_ok("consume through the group's filter");
    for line in consumed.of("RECV") {
        assert_eq!(props(line).get("color").map(String::as_str), Some("red"));
    }
    assert_eq!(consumed.of("RECV").count(), 8);
    committed_past_received(&env, "wasm_py_cg", "WasmPyT", &consumed).await;
}

/// What the package lacks is said, not faked: no transaction producer, no SQL92.
#[tokio::test]
async fn python_reports_what_it_lacks() {
    for scenario in ["tx", "sql92"] {
        let r = run(Lang::Python, scenario, "127.0.0.1:1", &[]).await;
        assert!(!r.ok);
        assert_eq!(r.of("UNSUPPORTED").count(), 1, "{scenario}: {:?}", r.lines);
    }
}
