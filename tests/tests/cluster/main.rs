//! Clusters of real broker processes (issue 13): masters and slaves replicating, a master
//! SIGKILLed under load and restarted, a slave killed and restarted, a slave whose log
//! differs from its master's, a master down among two, a slave following its master's
//! deletions. Brokers are this test binary re-run as children (`weir_tests::child`); the
//! name server and the clients run here.

mod deletions;
mod nodes;
mod traffic;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use nodes::{Cluster, Node, SETTLE, fast_client};
use traffic::{Ack, Consuming, Seen, Sending};
use weir_client::Admin;
use weir_protocol::ErrorCode;
use weir_tests::{eventually_for, remote_error};

const TOPIC: &str = "ClusterTopic";
const GROUP: &str = "cluster-group";
const LATE: &str = "cluster-late-group";

#[test]
#[ignore = "child process of the cluster tests"]
fn child_broker() {
    if let Some(config) = std::env::var_os(weir_tests::child::CONFIG_ENV) {
        weir_tests::child::run_broker(std::path::Path::new(&config));
    }
}

/// Reads `topic`'s queue `queue_id` on `node` from 0 to its end: offset → body.
async fn read_queue(node: &Node, topic: &str, queue_id: u32) -> BTreeMap<u64, String> {
    let d = node
        .raw()
        .await
        .drain("cluster-reader", topic, queue_id, 0)
        .await;
    assert_eq!(d.next_offset, d.max_offset);
    d.msgs
        .into_iter()
        .map(|m| (m.queue_offset, String::from_utf8(m.body).unwrap()))
        .collect()
}

/// Every ack of `broker` is at its queue offset in `queues` (queue id → offset → body).
fn assert_holds(
    acks: &[Ack],
    broker: &str,
    queues: &BTreeMap<u32, BTreeMap<u64, String>>,
    what: &str,
) {
    for a in acks.iter().filter(|a| a.broker == broker) {
        let got = queues.get(&a.queue_id).and_then(|q| q.get(&a.offset));
        assert_eq!(got, Some(&a.body), "{what}: acknowledged {a:?}");
    }
}

/// No body twice within a queue.
fn assert_no_duplicates(queues: &BTreeMap<u32, BTreeMap<u64, String>>, what: &str) {
    for (q, msgs) in queues {
        let mut bodies = HashSet::new();
        for b in msgs.values() {
            assert!(bodies.insert(b), "{what}: {b} twice in queue {q}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_master_killed_under_load_then_restarted_loses_nothing() {
    let c = Cluster::new().await;
    let mut a0 = c.node("broker-a", "sync-master").await;
    let a1 = c.node("broker-a", "slave").await;
    let _b0 = c.node("broker-b", "sync-master").await;
    let _b1 = c.node("broker-b", "slave").await;
    c.wait_in_sync("broker-a").await;
    c.wait_in_sync("broker-b").await;
    Admin::new(c.client.clone())
        .create_topic(TOPIC, 2)
        .await
        .unwrap();
    c.wait_topic(&a1, TOPIC).await;

    // GROUP consumes all along; LATE starts once broker-a's master is down (so every offset
    // it commits on broker-a goes to the slave).
    let sending = Sending::start(fast_client(&c.namesrv), TOPIC, "m");
    let all_along = Consuming::start(fast_client(&c.namesrv), TOPIC, GROUP);
    eventually_for("acks on both masters", SETTLE, async || {
        sending.acked_on("broker-a") >= 150 && sending.acked_on("broker-b") >= 150
    })
    .await;

    // SIGKILL broker-a's master under load: the other master takes every send.
    a0.kill();
    let b_at_kill = sending.acked_on("broker-b");
    eventually_for("broker-b takes the sends", SETTLE, async || {
        sending.acked_on("broker-b") >= b_at_kill + 300
    })
    .await;
    // Every acknowledged message of broker-a is on its slave...
    let acked = sending.acked();
    let mut on_slave = BTreeMap::new();
    for q in 0..2 {
        on_slave.insert(q, read_queue(&a1, TOPIC, q).await);
    }
    assert_holds(
        &acked,
        "broker-a",
        &on_slave,
        "broker-a's slave after its master was killed",
    );
    // ...and consumers, reading it there, are handed all of it.
    wait_handed(
        &all_along,
        &acked,
        "the group consuming all along, master down",
    )
    .await;
    let late = Consuming::start(fast_client(&c.namesrv), TOPIC, LATE);
    wait_handed(&late, &acked, "a group started with the master down").await;
    let (late_seen, late_committed) = late.stop().await;
    for q in 0..2u32 {
        let want = late_committed.get(&("broker-a".to_owned(), q)).copied();
        assert!(want.is_some(), "queue {q}: committed");
        let on_slave = a1.raw().await.committed(LATE, TOPIC, q).await;
        assert_eq!(on_slave, want, "the slave holds queue {q}'s offset");
    }

    // The master returns: it catches up, takes the offsets committed on its slave, and
    // takes sends again.
    a0.restart().await;
    c.wait_in_sync("broker-a").await;
    for q in 0..2u32 {
        let want = late_committed.get(&("broker-a".to_owned(), q)).copied();
        eventually_for(
            &format!("the master takes queue {q}'s offset {want:?} from its slave"),
            SETTLE,
            async || a0.raw().await.committed(LATE, TOPIC, q).await == want,
        )
        .await;
    }
    let a_back = sending.acked_on("broker-a");
    eventually_for("broker-a takes sends again", SETTLE, async || {
        sending.acked_on("broker-a") >= a_back + 100
    })
    .await;
    // LATE, started again, continues where it stopped on the slave.
    let late = Consuming::start(fast_client(&c.namesrv), TOPIC, LATE);
    let acked = sending.stop().await;
    wait_handed(
        &all_along,
        &acked,
        "the group consuming all along, at the end",
    )
    .await;
    let rest: Vec<Ack> = acked
        .iter()
        .filter(|a| {
            let key = (a.broker.clone(), a.queue_id);
            late_seen
                .get(&key)
                .is_none_or(|q| !q.contains_key(&a.offset))
        })
        .cloned()
        .collect();
    wait_handed(&late, &rest, "the late group, started again, at the end").await;
    let (all_seen, _) = all_along.stop().await;
    let (late_seen2, _) = late.stop().await;

    // Nothing lost or twice: each queue read back from its master holds every ack at its
    // offset, no body twice; the group was handed each queue without a gap, each message
    // once across both consumers.
    c.wait_in_sync("broker-a").await;
    c.wait_in_sync("broker-b").await;
    for (name, master) in [("broker-a", &a0), ("broker-b", &_b0)] {
        let mut queues = BTreeMap::new();
        for q in 0..2 {
            queues.insert(q, read_queue(master, TOPIC, q).await);
        }
        assert_holds(&acked, name, &queues, name);
        assert_no_duplicates(&queues, name);
        for (q, msgs) in &queues {
            let empty = Seen::new();
            for (what, handed) in [
                ("all along", handed_once(&all_seen, &empty, name, *q)),
                ("late", handed_once(&late_seen, &late_seen2, name, *q)),
            ] {
                for (o, body) in &handed {
                    assert_eq!(msgs.get(o), Some(body), "{what}: {name}/{q} at {o}");
                }
                let offsets: Vec<u64> = handed.keys().copied().collect();
                let want: Vec<u64> = (0..offsets.len() as u64).collect();
                assert_eq!(
                    offsets, want,
                    "{what}: {name}/{q} handed from 0 without a gap"
                );
            }
        }
    }
    let slave_queues = {
        let mut m = BTreeMap::new();
        for q in 0..2 {
            m.insert(q, read_queue(&a1, TOPIC, q).await);
        }
        m
    };
    let mut master_queues = BTreeMap::new();
    for q in 0..2 {
        master_queues.insert(q, read_queue(&a0, TOPIC, q).await);
    }
    assert_eq!(
        slave_queues, master_queues,
        "broker-a's slave equals its master"
    );
}

/// Waits until `consuming` was handed every ack; says what is missing if it times out.
async fn wait_handed(consuming: &Consuming, acks: &[Ack], what: &str) {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let missing = consuming.missing(acks);
        if missing.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            let seen = consuming.seen.lock().unwrap();
            let ranges: Vec<_> = seen
                .iter()
                .map(|(k, v)| (k.clone(), v.keys().next_back().copied(), v.len()))
                .collect();
            panic!(
                "{what}: {} acks not handed, first {:?}, last {:?}; handed (queue, last, count): {ranges:?}",
                missing.len(),
                missing.first(),
                missing.last()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// What the two consumers were handed of one queue; panics on an offset handed to both.
fn handed_once(first: &Seen, second: &Seen, broker: &str, q: u32) -> BTreeMap<u64, String> {
    let key = (broker.to_owned(), q);
    let mut all = first.get(&key).cloned().unwrap_or_default();
    for (o, b) in second.get(&key).cloned().unwrap_or_default() {
        assert!(
            all.insert(o, b).is_none(),
            "{broker}/{q} at {o} handed to both consumers"
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_slave_lag_converges_and_a_restarted_slave_resumes() {
    let c = Cluster::new().await;
    let m = c.node("broker-c", "async-master").await;
    let mut s = c.node("broker-c", "slave").await;
    c.wait_in_sync("broker-c").await;
    let raw = m.raw().await;
    raw.create_topic(TOPIC, 2).await;
    c.wait_topic(&s, TOPIC).await;
    let batch: Vec<weir_tests::Msg> = (0..100)
        .map(|i| weir_tests::Msg::new(format!("k{i}")))
        .collect();
    // Many senders at once: the log reaches the slave in many small chunks (which its
    // connection handles concurrently; they must still be appended in order).
    let senders: Vec<_> = (0..8u32)
        .map(|t| {
            let (raw, batch) = (raw.clone(), batch.clone());
            tokio::spawn(async move {
                for round in 0..40u32 {
                    raw.send(TOPIC, (t + round) % 2, &batch).await;
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    // Lag is reported, and converges to 0.
    c.wait_in_sync("broker-c").await;
    // The slave killed; the master goes on alone, and says no slave follows it.
    s.kill();
    eventually_for("the master reports no slave", SETTLE, async || {
        c.status("broker-c")
            .await
            .iter()
            .any(|(id, st)| *id == 0 && st.connected == 0)
    })
    .await;
    for round in 0..10 {
        raw.send(TOPIC, round % 2, &batch).await;
    }
    // Restarted, it resumes from its own end and catches up.
    s.restart().await;
    c.wait_in_sync("broker-c").await;
    for q in 0..2 {
        let (on_m, on_s) = (
            read_queue(&m, TOPIC, q).await,
            read_queue(&s, TOPIC, q).await,
        );
        assert_eq!(on_m.len(), 16_500);
        assert_eq!(on_m, on_s, "queue {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_whose_log_differs_refuses_to_serve() {
    let c = Cluster::new().await;
    // A log of broker-d written elsewhere: a standalone master, with messages of its own.
    let mut other = Node::start_in(c.dir.path(), "elsewhere", "", "broker-d", "async-master").await;
    let raw = other.raw().await;
    raw.create_topic(TOPIC, 1).await;
    raw.send(
        TOPIC,
        0,
        &[weir_tests::Msg::new("theirs").body(vec![b'x'; 300])],
    )
    .await;
    drop(raw);
    // The real master, with different messages.
    let m = c.node("broker-d", "async-master").await;
    let raw = m.raw().await;
    raw.create_topic(TOPIC, 1).await;
    raw.send(
        TOPIC,
        0,
        &[weir_tests::Msg::new("ours").body(vec![b'y'; 200])],
    )
    .await;
    // That log joins as the master's slave: refused, it says so and serves nothing.
    other.restart_as(&c.namesrv, "slave").await;
    eventually_for("the slave reports it diverged", SETTLE, async || {
        c.status("broker-d")
            .await
            .iter()
            .any(|(id, st)| *id == 1 && st.diverged.is_some())
    })
    .await;
    let r = other.raw().await.pull("g", TOPIC, 0, 0, 0).await;
    let msg = remote_error(r, ErrorCode::ReplicaDiverged);
    assert!(msg.contains("differs"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_master_down_producers_send_to_the_other() {
    let c = Cluster::new().await;
    let mut e = c.node("broker-e", "async-master").await;
    let _f = c.node("broker-f", "async-master").await;
    Admin::new(c.client.clone())
        .create_topic(TOPIC, 2)
        .await
        .unwrap();
    let sending = Sending::start(fast_client(&c.namesrv), TOPIC, "m");
    eventually_for("acks on both masters", SETTLE, async || {
        sending.acked_on("broker-e") >= 50 && sending.acked_on("broker-f") >= 50
    })
    .await;
    e.kill();
    let e_at = sending.acked_on("broker-e");
    let f_at = sending.acked_on("broker-f");
    eventually_for("broker-f takes every send", SETTLE, async || {
        sending.acked_on("broker-f") >= f_at + 500
    })
    .await;
    let failures = sending.failures.load(Ordering::Relaxed);
    let acked = sending.stop().await;
    // The send in flight at the kill may have been acknowledged just after it was read.
    let e_after = acked.iter().filter(|a| a.broker == "broker-e").count();
    assert!(
        e_after <= e_at + 1,
        "no acknowledgement from a dead master ({e_at} then {e_after})"
    );
    assert_eq!(failures, 0, "every send failed over to the other master");
}
