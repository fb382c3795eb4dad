//! The push consumer against a real name server and broker: rebalancing, orderly and
//! concurrent delivery, broadcasting, retries with delay levels, the dead-letter topic.
//!
//! Over ~600 lines on purpose: one scenario per test over the shared helpers at the top.

use crate::common::{broker_with, client, eventually, namesrv, wait_route};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_client::{
    Admin, ConsumeConcurrentlyStatus, ConsumeFrom, ConsumeOrderlyStatus, Listener, Message,
    MessageExt, MessageModel, MessageQueue, Producer, PullConsumer, PushConsumer,
    PushConsumerConfig,
};

/// Delay levels for tests: level N is N×100 ms + 100 ms.
const LEVELS: &str = "200ms 300ms 400ms 500ms 600ms";

struct Cluster {
    _ns: weir_namesrv::RunningNameServer,
    _broker: weir_broker::RunningBroker,
    _dir: tempfile::TempDir,
    ns: String,
    admin: Admin,
    producer: Producer,
}

async fn cluster(topics: &[(&str, u32)]) -> Cluster {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let addr = ns.local_addr().to_string();
    let broker = broker_with(dir.path(), "broker-a", &addr, |c| {
        c.delay_levels = LEVELS.into();
    })
    .await;
    let c = client(&addr);
    let admin = Admin::new(c.clone());
    for (topic, queues) in topics {
        admin.create_topic(topic, *queues).await.unwrap();
        wait_route(&admin, topic, 1).await;
    }
    Cluster {
        _ns: ns,
        _broker: broker,
        _dir: dir,
        producer: Producer::new("pg", c),
        admin,
        ns: addr,
    }
}

fn config(group: &str) -> PushConsumerConfig {
    let mut c = PushConsumerConfig::new(group);
    c.consume_from = ConsumeFrom::FirstOffset;
    c.consume_thread_min = 4;
    c.consume_thread_max = 4;
    c.long_poll = Duration::from_secs(2);
    c
}

async fn start(
    ns: &str,
    config: PushConsumerConfig,
    topic: &str,
    listener: Listener,
) -> PushConsumer {
    PushConsumer::start(
        client(ns),
        config,
        vec![(topic.into(), "*".into())],
        listener,
    )
    .await
    .unwrap()
}

fn body(m: &MessageExt) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

/// How many queues of `topic` each member holds, smallest first; None while two hold one
/// or one is unheld.
fn partition(members: &[&PushConsumer], topic: &str, queues: usize) -> Option<Vec<usize>> {
    let mut all = BTreeSet::new();
    let mut sizes = Vec::new();
    for m in members {
        let mine: Vec<MessageQueue> = m
            .assigned_queues()
            .into_iter()
            .filter(|q| q.topic == topic)
            .collect();
        sizes.push(mine.len());
        for q in mine {
            if !all.insert(q) {
                return None;
            }
        }
    }
    // Members are ranked by client id, not by their place here.
    sizes.sort_unstable();
    (all.len() == queues).then_some(sizes)
}

// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct OrderLog {
    /// (member, order, step), in consumption order.
    seen: Vec<(usize, u32, u32)>,
    /// Orders a member is consuming right now.
    busy: HashMap<u32, usize>,
    /// An order consumed by two members at once.
    overlaps: Vec<String>,
}

fn orderly_listener(member: usize, log: Arc<Mutex<OrderLog>>) -> Listener {
    Listener::orderly(move |msgs: &[MessageExt], _ctx: &mut _| {
        for m in msgs {
            let text = body(m);
            let (order, step) = text.split_once(':').unwrap();
            let (order, step): (u32, u32) = (order.parse().unwrap(), step.parse().unwrap());
            {
                let mut l = log.lock().unwrap();
                if let Some(other) = l.busy.insert(order, member) {
                    l.overlaps
                        .push(format!("order {order}: members {other} and {member}"));
                }
            }
            // Some work, so a hand-over meets listeners mid-batch.
            std::thread::sleep(Duration::from_millis(1));
            let mut l = log.lock().unwrap();
            l.busy.remove(&order);
            l.seen.push((member, order, step));
        }
        ConsumeOrderlyStatus::Success
    })
}

async fn send_order(p: &Producer, order: u32, step: u32) {
    let msg = Message::new("Orders", format!("{order}:{step}")).with_key(format!("order-{order}"));
    p.send_with_order_key(&msg, &format!("order-{order}"))
        .await
        .unwrap();
}

/// Every order's steps arrive in order, each once; no order is consumed by two members
/// at once.
fn check_orders(log: &OrderLog, orders: std::ops::Range<u32>) {
    assert!(log.overlaps.is_empty(), "{:?}", log.overlaps);
    let mut steps: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (_, order, step) in &log.seen {
        steps.entry(*order).or_default().push(*step);
    }
    for order in orders {
        assert_eq!(
            steps.get(&order).map(Vec::as_slice),
            Some(&[0, 1, 2][..]),
            "order {order}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orderly_members_keep_orders_whole_and_in_order_through_joins_and_leaves() {
    let c = cluster(&[("Orders", 8)]).await;
    let log = Arc::new(Mutex::new(OrderLog::default()));
    let m0 = start(
        &c.ns,
        config("og"),
        "Orders",
        orderly_listener(0, Arc::clone(&log)),
    )
    .await;
    let m1 = start(
        &c.ns,
        config("og"),
        "Orders",
        orderly_listener(1, Arc::clone(&log)),
    )
    .await;
    eventually(10, "two members split the queues", || {
        partition(&[&m0, &m1], "Orders", 8) == Some(vec![4, 4])
    })
    .await;

    // The seed's scenario: every order created, then paid, then shipped.
    for step in 0..3 {
        for order in 0..10 {
            send_order(&c.producer, order, step).await;
        }
    }
    eventually(20, "30 steps consumed", || {
        log.lock().unwrap().seen.len() >= 30
    })
    .await;
    {
        let l = log.lock().unwrap();
        check_orders(&l, 0..10);
        // Each order went to one member only.
        let mut owner = HashMap::new();
        for (member, order, _) in &l.seen {
            assert_eq!(
                *owner.entry(*order).or_insert(*member),
                *member,
                "order {order}"
            );
        }
    }

    // Mid-stream, a third member joins and the first leaves.
    let sender = {
        let p = Producer::new("pg2", client(&c.ns));
        tokio::spawn(async move {
            for order in 10..60 {
                for step in 0..3 {
                    send_order(&p, order, step).await;
                }
                // A steady stream, so the joins and leaves fall in the middle of it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    eventually(20, "the stream is under way", || {
        log.lock().unwrap().seen.len() >= 60
    })
    .await;
    let m2 = start(
        &c.ns,
        config("og"),
        "Orders",
        orderly_listener(2, Arc::clone(&log)),
    )
    .await;
    eventually(20, "the third member takes queues", || {
        !m2.assigned_queues().is_empty()
    })
    .await;
    m0.shutdown().await.unwrap();
    sender.await.unwrap();
    eventually(30, "every step of 60 orders consumed", || {
        log.lock().unwrap().seen.len() >= 180
    })
    .await;
    eventually(10, "the remaining two split the queues", || {
        partition(&[&m1, &m2], "Orders", 8) == Some(vec![4, 4])
    })
    .await;
    {
        let l = log.lock().unwrap();
        check_orders(&l, 0..60);
        assert_eq!(l.seen.len(), 180, "no step consumed twice");
        assert!(
            l.seen.iter().any(|(m, _, _)| *m == 2),
            "the new member consumed"
        );
    }
    m1.shutdown().await.unwrap();
    m2.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------

type Consumed = Arc<Mutex<Vec<(usize, String)>>>;

fn counting_listener(member: usize, consumed: Consumed) -> Listener {
    Listener::concurrently(move |msgs: &[MessageExt], _ctx: &mut _| {
        let mut c = consumed.lock().unwrap();
        c.extend(msgs.iter().map(|m| (member, body(m))));
        ConsumeConcurrentlyStatus::ConsumeSuccess
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_members_share_the_queues_and_consume_each_message_once() {
    let c = cluster(&[("Share", 8)]).await;
    let consumed: Consumed = Arc::default();
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(
            start(
                &c.ns,
                config("cg"),
                "Share",
                counting_listener(i, Arc::clone(&consumed)),
            )
            .await,
        );
    }
    eventually(10, "three members split 8 queues 3/3/2", || {
        let refs: Vec<&PushConsumer> = members.iter().collect();
        partition(&refs, "Share", 8) == Some(vec![2, 3, 3])
    })
    .await;

    // Seed §4: nine messages over the queues, each consumed once, by their queue's owner.
    for i in 0..9 {
        c.producer
            .send(&Message::new("Share", format!("m{i}")))
            .await
            .unwrap();
    }
    eventually(10, "9 consumed", || consumed.lock().unwrap().len() >= 9).await;

    // 10,000 more, in batches (each to the next queue).
    for b in 0..100 {
        let batch: Vec<Message> = (0..100)
            .map(|i| Message::new("Share", format!("n{}", b * 100 + i)))
            .collect();
        c.producer.send_batch(&batch).await.unwrap();
    }
    eventually(60, "10,009 consumed", || {
        consumed.lock().unwrap().len() >= 10_009
    })
    .await;
    let c2 = consumed.lock().unwrap().clone();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, b) in &c2 {
        *count.entry(b.as_str()).or_default() += 1;
    }
    assert_eq!(count.len(), 10_009);
    assert!(
        count.values().all(|n| *n == 1),
        "a message was consumed twice"
    );
    for i in 0..3 {
        assert!(
            c2.iter().any(|(m, _)| *m == i),
            "member {i} consumed nothing"
        );
    }
    for m in members {
        m.shutdown().await.unwrap();
    }
    // Each leaving member's queues went to the others, which started exactly where it had
    // stopped: nothing was consumed again on the way.
    assert_eq!(consumed.lock().unwrap().len(), 10_009);
    // Progress was committed: the group's lag is zero.
    let progress = c.admin.group_progress("cg").await.unwrap();
    let share: Vec<_> = progress
        .iter()
        .filter(|(_, q)| q.topic == "Share")
        .collect();
    assert_eq!(share.len(), 8);
    assert!(
        share
            .iter()
            .all(|(_, q)| q.consumer_offset == q.broker_offset),
        "{share:?}"
    );
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broadcasting_members_each_get_everything_and_resume_from_local_offsets() {
    let c = cluster(&[("News", 4)]).await;
    let offsets = tempfile::tempdir().unwrap();
    let bcast = |instance: &str| {
        let mut cfg = config("bg");
        cfg.model = MessageModel::Broadcasting;
        cfg.instance_name = instance.into();
        cfg.offset_store_dir = offsets.path().to_path_buf();
        cfg.persist_offset_interval = Duration::from_millis(200);
        cfg
    };
    let (got_a, got_b): (Consumed, Consumed) = Default::default();
    let a = start(
        &c.ns,
        bcast("a"),
        "News",
        counting_listener(0, Arc::clone(&got_a)),
    )
    .await;
    let b = start(
        &c.ns,
        bcast("b"),
        "News",
        counting_listener(1, Arc::clone(&got_b)),
    )
    .await;
    assert_eq!(a.assigned_queues().len(), 4);
    assert_eq!(b.assigned_queues().len(), 4);
    for i in 0..20 {
        c.producer
            .send(&Message::new("News", format!("old{i}")))
            .await
            .unwrap();
    }
    eventually(10, "both got 20", || {
        got_a.lock().unwrap().len() >= 20 && got_b.lock().unwrap().len() >= 20
    })
    .await;
    b.shutdown().await.unwrap();
    for i in 0..10 {
        c.producer
            .send(&Message::new("News", format!("new{i}")))
            .await
            .unwrap();
    }
    let got_b2: Consumed = Arc::default();
    let b = start(
        &c.ns,
        bcast("b"),
        "News",
        counting_listener(1, Arc::clone(&got_b2)),
    )
    .await;
    eventually(10, "a got 30 and b the 10 new", || {
        got_a.lock().unwrap().len() >= 30 && got_b2.lock().unwrap().len() >= 10
    })
    .await;
    let names = |c: &Consumed| -> BTreeSet<String> {
        c.lock().unwrap().iter().map(|(_, b)| b.clone()).collect()
    };
    assert_eq!(got_a.lock().unwrap().len(), 30);
    assert_eq!(names(&got_a).len(), 30);
    assert_eq!(got_b.lock().unwrap().len(), 20);
    let resumed = names(&got_b2);
    assert_eq!(
        resumed,
        (0..10).map(|i| format!("new{i}")).collect(),
        "b resumed where it stopped"
    );
    // Nothing was committed on the brokers for a broadcasting group.
    assert!(c.admin.group_progress("bg").await.unwrap().is_empty());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------

/// (body, reconsume_times, topic as seen, when)
type Delivery = (String, u32, String, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_messages_return_with_delays_then_go_to_the_dead_letter_topic() {
    let c = cluster(&[("Work", 2)]).await;
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let listener = {
        let seen = Arc::clone(&seen);
        Listener::concurrently(move |msgs: &[MessageExt], _ctx: &mut _| {
            let m = &msgs[0];
            let b = body(m);
            seen.lock().unwrap().push((
                b.clone(),
                m.reconsume_times,
                m.topic.clone(),
                Instant::now(),
            ));
            match (b.as_str(), m.reconsume_times) {
                // A panic counts as "later", like an explicit answer.
                ("flaky", 0) => panic!("flaky fails first"),
                ("flaky", 1) | ("doomed", _) => ConsumeConcurrentlyStatus::ReconsumeLater,
                _ => ConsumeConcurrentlyStatus::ConsumeSuccess,
            }
        })
    };
    let mut cfg = config("rg");
    cfg.max_reconsume_times = 2;
    let consumer = start(&c.ns, cfg, "Work", listener).await;
    c.producer
        .send(&Message::new("Work", "flaky").with_key("flaky"))
        .await
        .unwrap();
    let doomed = c
        .producer
        .send(&Message::new("Work", "doomed").with_key("doomed"))
        .await
        .unwrap();
    let sent_delayed = Instant::now();
    c.producer
        .send(&Message::new("Work", "later").with_delay_level(2))
        .await
        .unwrap();

    let dlq_reader = PullConsumer::new("dlq-reader", client(&c.ns));
    let dlq = MessageQueue {
        topic: "%DLQ%rg".into(),
        broker_name: "broker-a".into(),
        queue_id: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        if let Ok(out) = dlq_reader.pull(&dlq, "*", 0, 32, None, None).await
            && !out.messages.is_empty()
        {
            break out.messages;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached the dead-letter topic"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eventually(10, "flaky consumed on its third delivery", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(b, n, _, _)| b == "flaky" && *n == 2)
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let deliveries = |name: &str| -> Vec<(u32, Instant)> {
        seen.iter()
            .filter(|(b, ..)| b == name)
            .map(|(_, n, _, t)| (*n, *t))
            .collect()
    };
    for name in ["flaky", "doomed"] {
        let d = deliveries(name);
        assert_eq!(
            d.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            vec![0, 1, 2],
            "{name}"
        );
        // Delay level 3 + reconsume_times: 400 ms, then 500 ms, counted from store
        // timestamps in whole milliseconds (a millisecond less, measured here, is in them).
        let ms = Duration::from_millis(1);
        assert!(
            d[1].1 - d[0].1 >= Duration::from_millis(400) - ms,
            "{name}: {:?}",
            d[1].1 - d[0].1
        );
        assert!(
            d[2].1 - d[1].1 >= Duration::from_millis(500) - ms,
            "{name}: {:?}",
            d[2].1 - d[1].1
        );
    }
    assert!(
        seen.iter().all(|(_, _, t, _)| t == "Work"),
        "retries show their first topic"
    );
    let later = seen
        .iter()
        .find(|(b, ..)| b == "later")
        .expect("the delayed message arrived");
    assert!(later.3 - sent_delayed >= Duration::from_millis(300));

    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(body(d), "doomed");
    assert_eq!(d.reconsume_times, 3);
    assert_eq!(d.property("RETRY_TOPIC"), Some("Work"));
    assert_eq!(
        d.property("ORIGIN_MESSAGE_ID"),
        Some(doomed.msg_id.as_str())
    );
    let stats = consumer.stats();
    // flaky twice, doomed three times (the third to the dead-letter topic).
    assert_eq!(stats.sent_back, 5, "{stats:?}");
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_the_broker_cannot_take_back_is_consumed_again_here() {
    let c = cluster(&[("Local", 1)]).await;
    // A valid group name too long for a retry topic: the broker refuses every send-back.
    let group = "g".repeat(250);
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let listener = {
        let seen = Arc::clone(&seen);
        Listener::concurrently(move |msgs: &[MessageExt], _ctx: &mut _| {
            let m = &msgs[0];
            seen.lock().unwrap().push((
                body(m),
                m.reconsume_times,
                m.topic.clone(),
                Instant::now(),
            ));
            if m.reconsume_times == 0 {
                ConsumeConcurrentlyStatus::ReconsumeLater
            } else {
                ConsumeConcurrentlyStatus::ConsumeSuccess
            }
        })
    };
    let consumer = start(&c.ns, config(&group), "Local", listener).await;
    c.producer
        .send(&Message::new("Local", "once"))
        .await
        .unwrap();
    eventually(20, "consumed again locally", || {
        seen.lock().unwrap().len() >= 2
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|d| d.1).collect::<Vec<_>>(), vec![0, 1]);
    assert!(
        seen[1].3 - seen[0].3 >= Duration::from_secs(5),
        "retried after 5 s"
    );
    let stats = consumer.stats();
    assert_eq!(
        (stats.sent_back, stats.send_back_failed, stats.consumed),
        (0, 1, 1)
    );
    consumer.shutdown().await.unwrap();
    let progress = c.admin.group_progress(&group).await.unwrap();
    assert!(
        progress
            .iter()
            .any(|(_, q)| q.topic == "Local" && q.consumer_offset == 1),
        "{progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_listener_holds_pulling_back_to_the_queue_threshold() {
    let c = cluster(&[("Slow", 1)]).await;
    let batch: Vec<Message> = (0..300)
        .map(|i| Message::new("Slow", format!("s{i}")))
        .collect();
    c.producer.send_batch(&batch).await.unwrap();
    let listener = Listener::concurrently(|_: &[MessageExt], _: &mut _| {
        std::thread::sleep(Duration::from_millis(2));
        ConsumeConcurrentlyStatus::ConsumeSuccess
    });
    let mut cfg = config("slow");
    cfg.pull_threshold_for_queue = 20;
    cfg.pull_batch_size = 8;
    let consumer = start(&c.ns, cfg, "Slow", listener).await;
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.stats().consumed < 300 {
        let s = consumer.stats();
        most = most.max(s.in_flight);
        assert!(s.in_flight < 20 + 8, "{s:?}");
        assert!(Instant::now() < deadline, "not all consumed: {s:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        most >= 12,
        "the queue was kept busy ({most} in flight at most)"
    );
    consumer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_group_from_the_last_offset_sees_only_what_comes_after_it_joined() {
    let c = cluster(&[("Fresh", 2)]).await;
    for i in 0..10 {
        c.producer
            .send(&Message::new("Fresh", format!("before{i}")))
            .await
            .unwrap();
    }
    let got: Consumed = Arc::default();
    let mut cfg = config("late");
    cfg.consume_from = ConsumeFrom::LastOffset;
    let consumer = start(&c.ns, cfg, "Fresh", counting_listener(0, Arc::clone(&got))).await;
    for i in 0..10 {
        c.producer
            .send(&Message::new("Fresh", format!("after{i}")))
            .await
            .unwrap();
    }
    eventually(10, "the 10 new ones", || got.lock().unwrap().len() >= 10).await;
    consumer.shutdown().await.unwrap();
    let bodies: BTreeSet<String> = got.lock().unwrap().iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(bodies, (0..10).map(|i| format!("after{i}")).collect());
    // Where it started was committed at once: a member starting later continues there.
    let again: Consumed = Arc::default();
    let mut cfg = config("late");
    cfg.consume_from = ConsumeFrom::FirstOffset;
    c.producer
        .send(&Message::new("Fresh", "later"))
        .await
        .unwrap();
    let consumer = start(
        &c.ns,
        cfg,
        "Fresh",
        counting_listener(0, Arc::clone(&again)),
    )
    .await;
    eventually(10, "the one sent while nobody consumed", || {
        !again.lock().unwrap().is_empty()
    })
    .await;
    consumer.shutdown().await.unwrap();
    assert_eq!(
        again
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.as_str())
            .collect::<Vec<_>>(),
        ["later"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_ride_out_a_broker_restart() {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let ns_addr = ns.local_addr().to_string();
    let broker = broker_with(dir.path(), "broker-a", &ns_addr, |_| {}).await;
    let listen = broker.local_addr().to_string();
    let admin = Admin::new(client(&ns_addr));
    admin.create_topic("Steady", 4).await.unwrap();
    wait_route(&admin, "Steady", 1).await;
    let producer = Producer::new("pg", client(&ns_addr));
    let consumed: Consumed = Arc::default();
    let consumer = start(
        &ns_addr,
        config("steady"),
        "Steady",
        counting_listener(0, Arc::clone(&consumed)),
    )
    .await;
    for i in 0..100 {
        producer
            .send(&Message::new("Steady", format!("a{i}")))
            .await
            .unwrap();
    }
    eventually(10, "100 before the restart", || {
        consumed.lock().unwrap().len() >= 100
    })
    .await;

    broker.shutdown().await.unwrap();
    let _broker = broker_with(dir.path(), "broker-a", &ns_addr, |c| c.listen = listen).await;
    wait_route(&admin, "Steady", 1).await;
    for i in 0..100 {
        producer
            .send(&Message::new("Steady", format!("b{i}")))
            .await
            .unwrap();
    }
    eventually(30, "100 more after the restart", || {
        consumed.lock().unwrap().len() >= 200
    })
    .await;
    consumer.shutdown().await.unwrap();
    let got = consumed.lock().unwrap().clone();
    let distinct: BTreeSet<&str> = got.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!((got.len(), distinct.len()), (200, 200), "each once");
    let progress = admin.group_progress("steady").await.unwrap();
    let steady: Vec<_> = progress
        .iter()
        .filter(|(_, q)| q.topic == "Steady")
        .collect();
    assert!(
        steady
            .iter()
            .all(|(_, q)| q.consumer_offset == q.broker_offset),
        "{steady:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_client_holds_one_consumer_of_a_group() {
    let c = cluster(&[("Once", 1)]).await;
    let shared = client(&c.ns);
    let noop = || {
        Listener::concurrently(|_: &[MessageExt], _: &mut _| {
            ConsumeConcurrentlyStatus::ConsumeSuccess
        })
    };
    let subs = || vec![("Once".to_string(), "*".to_string())];
    let first = PushConsumer::start(shared.clone(), config("twice"), subs(), noop())
        .await
        .unwrap();
    let second = PushConsumer::start(shared.clone(), config("twice"), subs(), noop()).await;
    let err = second
        .err()
        .expect("a second consumer of the group on one client");
    assert!(
        err.to_string()
            .contains("already has a consumer of group twice"),
        "{err}"
    );
    first.shutdown().await.unwrap();
    let again = PushConsumer::start(shared, config("twice"), subs(), noop())
        .await
        .unwrap();
    again.shutdown().await.unwrap();
}
