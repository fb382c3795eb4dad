//! The client against real name servers and brokers.

use crate::common::{broker, client, namesrv, wait_route};

use std::time::Duration;

use weir_client::{
    Admin, ClientConfig, ClientInstance, Message, Producer, PullConsumer, PullStatus,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_pull_with_order_keys_batches_and_offsets() {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let ns_addr = ns.local_addr().to_string();
    let _b = broker(dir.path(), "broker-a", &ns_addr).await;
    let c = client(&ns_addr);
    let admin = Admin::new(c.clone());
    assert_eq!(
        admin.create_topic("Orders", 4).await.unwrap(),
        vec!["broker-a".to_string()]
    );
    wait_route(&admin, "Orders", 1).await;

    let producer = Producer::new("pg", c.clone());
    // All steps of one order go to one queue, in order.
    let mut queue_of = std::collections::HashMap::new();
    for step in ["create", "pay", "ship"] {
        for order in 0..10 {
            let msg = Message::new("Orders", format!("order-{order}:{step}"))
                .with_tags(step)
                .with_key(format!("order-{order}"));
            let r = producer
                .send_with_order_key(&msg, &format!("order-{order}"))
                .await
                .unwrap();
            assert_eq!(
                *queue_of.entry(order).or_insert(r.queue_id),
                r.queue_id,
                "order {order} changed queue"
            );
        }
    }
    let batch: Vec<Message> = (0..20)
        .map(|i| Message::new("Orders", format!("batch-{i}")).with_tags("batch"))
        .collect();
    let results = producer.send_batch(&batch).await.unwrap();
    assert_eq!(results.len(), 20);
    assert!(
        results
            .windows(2)
            .all(|w| w[1].queue_offset == w[0].queue_offset + 1 && w[0].queue_id == w[1].queue_id)
    );
    producer
        .send_oneway(&Message::new("Orders", "oneway").with_tags("oneway"))
        .await
        .unwrap();
    // A queue selector picks among the writable queues by index.
    let picked = producer
        .send_with_selector(&Message::new("Orders", "selected"), |qs| qs.len() - 1)
        .await
        .unwrap();
    assert_eq!(picked.queue_id, 3);
    let err = producer
        .send_with_selector(&Message::new("Orders", "nowhere"), |qs| qs.len())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("queue index 4 of 4"), "{err}");

    let consumer = PullConsumer::new("cg", c.clone());
    let queues = consumer.queues("Orders").await.unwrap();
    assert_eq!(queues.len(), 4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut steps: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut others = 0;
    // Pull until the one-way message has also landed.
    while others < 21 {
        others = 0;
        steps.clear();
        for mq in &queues {
            let mut offset = 0;
            loop {
                let out = consumer
                    .pull(mq, "*", offset, 32, None, None)
                    .await
                    .unwrap();
                for m in &out.messages {
                    let body = String::from_utf8(m.body.to_vec()).unwrap();
                    match body.split_once(':') {
                        Some((order, step)) => steps
                            .entry(order.to_owned())
                            .or_default()
                            .push(step.to_owned()),
                        None => others += 1,
                    }
                }
                if out.status == PullStatus::NoNewMessage {
                    break;
                }
                offset = out.next_offset;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "one-way message never arrived"
        );
    }
    assert_eq!(steps.len(), 10);
    assert!(
        steps.values().all(|s| s == &["create", "pay", "ship"]),
        "{steps:?}"
    );

    // Tag expression, committed offsets, lookups.
    let mq = &queues[results[0].queue_id as usize];
    let out = consumer.pull(mq, "batch", 0, 64, None, None).await.unwrap();
    assert_eq!(out.messages.len(), 20);
    assert!(out.messages.iter().all(|m| m.tags == "batch"));
    consumer.commit_offset(mq, out.next_offset).await.unwrap();
    assert_eq!(
        consumer.committed_offset(mq).await.unwrap(),
        Some(out.next_offset)
    );
    assert_eq!(
        consumer
            .committed_offset(&queues[(results[0].queue_id as usize + 1) % 4])
            .await
            .unwrap(),
        None
    );
    // Queue offsets and offset by timestamp.
    let o = consumer.queue_offsets(mq).await.unwrap();
    assert_eq!(o.min, 0);
    assert!(o.max >= out.next_offset);
    assert_eq!(consumer.offset_for_timestamp(mq, 0).await.unwrap(), 0);
    assert_eq!(
        consumer.offset_for_timestamp(mq, i64::MAX).await.unwrap(),
        o.max
    );
    let later = out.messages[10].store_timestamp;
    let at = consumer.offset_for_timestamp(mq, later).await.unwrap();
    assert!(
        at <= out.messages[10].queue_offset,
        "offset {at} for the store time of #10"
    );
    let found = admin
        .messages_by_key("Orders", "order-3", 10)
        .await
        .unwrap();
    assert_eq!(found.len(), 3);
    assert!(
        out.messages
            .iter()
            .all(|m| m.born_host.ip().is_loopback() && m.born_host.port() != 0)
    );
    let by_id = admin.message_by_id(&results[5].msg_id).await.unwrap();
    assert_eq!(by_id.body, "batch-5");
    assert_eq!(by_id.broker_name, "broker-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_server_down_and_one_broker_down_still_serve() {
    let ns1 = namesrv().await;
    let ns2 = namesrv().await;
    let both = format!("{};{}", ns1.local_addr(), ns2.local_addr());
    let dir = tempfile::tempdir().unwrap();
    let a = broker(dir.path(), "broker-a", &both).await;
    let _b = broker(dir.path(), "broker-b", &both).await;
    let c = client(&both);
    let admin = Admin::new(c.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admin.cluster().await.unwrap().brokers.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "brokers never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(admin.create_topic("Spread", 2).await.unwrap().len(), 2);
    wait_route(&admin, "Spread", 2).await;
    // Brokers tell each name server on their own: wait until the second one knows too.
    let ns2_only = Admin::new(client(&ns2.local_addr().to_string()));
    wait_route(&ns2_only, "Spread", 2).await;

    // The first name server goes away: the client moves on to the second.
    ns1.shutdown().await;
    let fresh = client(&both);
    let route = Admin::new(fresh.clone()).route("Spread").await.unwrap();
    assert_eq!(route.brokers.len(), 2);

    // A broker dies: sends that land on it are retried on the other one.
    a.shutdown().await.unwrap();
    let producer = Producer::new("pg", fresh);
    for i in 0..20 {
        let r = producer
            .send(&Message::new("Spread", format!("m{i}")))
            .await
            .unwrap();
        assert_eq!(r.broker_name, "broker-b");
    }
    let bad = Message::new("", "no topic");
    assert!(producer.send(&bad).await.is_err());
    assert!(ClientInstance::new(ClientConfig::new(" ; ")).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_known_to_brokers_by_heartbeat() {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let ns_addr = ns.local_addr().to_string();
    let _b = broker(dir.path(), "broker-a", &ns_addr).await;
    let admin = Admin::new(client(&ns_addr));
    let member = client(&ns_addr);
    let consumer = PullConsumer::new("members", member.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admin.group_members("members").await.unwrap() != vec![member.client_id().to_string()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never appeared in its group"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // When its connections close, the broker forgets it.
    drop(consumer);
    drop(member);
    while !admin.group_members("members").await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed consumer stayed a member"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Producer futures can run on spawned tasks.
#[allow(dead_code)]
fn producer_futures_are_send(p: std::sync::Arc<Producer>, m: Message) {
    fn is_send<T: Send>(_: T) {}
    is_send(async move {
        let _ = p.send(&m).await;
        let _ = p.send_batch(std::slice::from_ref(&m)).await;
        let _ = p.send_with_order_key(&m, "k").await;
        let _ = p.send_oneway(&m).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_as_idle_is_reopened_on_next_use() {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let ns_addr = ns.local_addr().to_string();
    let b = crate::common::broker_with(dir.path(), "broker-a", &ns_addr, |c| {
        c.net.idle_timeout_ms = 300;
    })
    .await;
    let c = client(&ns_addr);
    let producer = Producer::new("pg", c.clone());
    producer
        .send(&Message::new("Idle", "before"))
        .await
        .unwrap();
    let closes = b.net_stats().idle_closes;
    crate::common::eventually(10, "the broker closing the idle connection", || {
        b.net_stats().idle_closes > closes && b.net_stats().connections == 0
    })
    .await;
    producer.send(&Message::new("Idle", "after")).await.unwrap();
    assert_eq!(b.net_stats().connections, 1, "reconnected");
}
