//! `Admin`'s filter calls (upload, list, reset, remove), and pulls and push consumers of a
//! filtered group, against a real name server and broker.

use crate::common::{broker, broker_with, client, eventually, namesrv, wait_route};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_client::{
    Admin, ClientError, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, ConsumeFrom,
    ErrorCode, FilterFailed, Listener, Message, MessageExt, OnFilterFailure, Producer,
    PullConsumer, PushConsumer, PushConsumerConfig,
};

/// Polls until the name server knows `n` brokers.
async fn wait_brokers(admin: &Admin, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admin.cluster().await.map_or(0, |c| c.brokers.len()) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the name server never knew {n} brokers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_before_any_call() {
    // No name server listens here: every error below comes from the client itself.
    let admin = Admin::new(client("127.0.0.1:1"));
    let wasm = b"\0asm\x0d\0\x01\0".to_vec();
    // Large components travel gzip-compressed: only bytes that do not compress are too big.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for (group, topic, component, want) in [
        ("", "T", wasm.clone(), "consumer group is empty"),
        ("g", " ", wasm.clone(), "topic is empty"),
        ("g", "T", Vec::new(), "component is empty"),
        ("g", "T", noise, "more than a request carries"),
    ] {
        let e = admin
            .upload_filter(group, topic, component, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Invalid(_)), "{e:?}");
        assert!(e.to_string().contains(want), "{e}");
    }
    let e = admin
        .upload_filter("g", "T", wasm.clone(), vec![(String::new(), "v".into())])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("empty name"), "{e}");
    let e = admin
        .upload_filter_with_memory("g", "T", wasm.clone(), Vec::new(), Some(0))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("memory cap is 0 bytes"), "{e}");
    let e = admin.remove_filter("", "T").await.unwrap_err();
    assert!(matches!(e, ClientError::Invalid(_)), "{e:?}");
    let e = admin.remove_filter("g", "").await.unwrap_err();
    assert!(matches!(e, ClientError::Invalid(_)), "{e:?}");
    let e = admin.list_filters(Some("")).await.unwrap_err();
    assert!(matches!(e, ClientError::Invalid(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_calls_report_missing_topics_filters_and_bad_components() {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let ns_addr = ns.local_addr().to_string();
    let _b = broker(dir.path(), "broker-a", &ns_addr).await;
    let admin = Admin::new(client(&ns_addr));
    wait_brokers(&admin, 1).await;

    // A topic no broker serves: nowhere to run the filter.
    let e = admin
        .upload_filter("g", "NoSuchTopic", b"\0asm".to_vec(), Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::NoRoute { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("NoSuchTopic") && msg.contains("create the topic first"),
        "{msg}"
    );
    let e = admin.remove_filter("g", "NoSuchTopic").await.unwrap_err();
    assert!(matches!(e, ClientError::NoRoute { .. }), "{e:?}");

    admin.create_topic("Filtered", 2).await.unwrap();
    wait_route(&admin, "Filtered", 1).await;

    // Nothing registered yet: every master answers, with nothing.
    let lists = admin.list_filters(None).await.unwrap();
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert_eq!(lists[0].0, "broker-a");
    assert!(lists[0].1.filters.is_empty(), "{lists:?}");
    assert!(
        admin
            .list_filters(Some("g"))
            .await
            .unwrap()
            .iter()
            .all(|(_, l)| l.filters.is_empty())
    );

    // Removing what is not there: the broker's FilterNotFound, naming the broker.
    let e = admin.remove_filter("g", "Filtered").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FilterNotFound), "{e:?}");
    assert!(e.to_string().contains("broker-a"), "{e}");

    // Bytes that are not a component: rejected by the broker, nothing stored.
    let e = admin
        .upload_filter("g", "Filtered", b"not wasm at all".to_vec(), Vec::new())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FilterRejected), "{e:?}");
    assert!(e.to_string().contains("broker-a"), "{e}");
    assert!(
        admin.list_filters(None).await.unwrap()[0]
            .1
            .filters
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_reach_every_broker_of_the_route_and_a_failing_filter_fails_pulls() {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let ns_addr = ns.local_addr().to_string();
    let _a = broker(dir.path(), "broker-a", &ns_addr).await;
    let _b = broker(dir.path(), "broker-b", &ns_addr).await;
    let c = client(&ns_addr);
    let admin = Admin::new(c.clone());
    wait_brokers(&admin, 2).await;
    admin.create_topic("Both", 2).await.unwrap();
    wait_route(&admin, "Both", 2).await;

    let keep_all = weir_filter_artifacts::read(weir_filter_artifacts::KEEP_ALL);
    let up = admin
        .upload_filter("g", "Both", keep_all.clone(), Vec::new())
        .await
        .unwrap();
    let names: Vec<&str> = up.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(names, ["broker-a", "broker-b"]);
    assert!(up.iter().all(|(_, u)| u.version == 1 && !u.needs_body));
    assert_eq!(up[0].1.sha256, up[1].1.sha256);
    assert_eq!(up[0].1.sha256.len(), 64);
    let again = admin
        .upload_filter("g", "Both", keep_all, Vec::new())
        .await
        .unwrap();
    assert!(again.iter().all(|(_, u)| u.version == 2), "{again:?}");

    let lists = admin.list_filters(Some("g")).await.unwrap();
    assert_eq!(lists.len(), 2);
    for (_, l) in &lists {
        assert_eq!(l.filters.len(), 1, "{l:?}");
        assert_eq!(
            (l.filters[0].topic.as_str(), l.filters[0].version),
            ("Both", 2)
        );
    }
    assert!(
        admin
            .list_filters(Some("other"))
            .await
            .unwrap()
            .iter()
            .all(|(_, l)| l.filters.is_empty())
    );

    // A filter that fails every batch: the pull is an error the caller sees.
    let hostile = weir_filter_artifacts::read(weir_filter_artifacts::HOSTILE);
    admin
        .upload_filter(
            "bad",
            "Both",
            hostile,
            vec![("mode".into(), "error".into())],
        )
        .await
        .unwrap();
    let producer = Producer::new("pg", c.clone());
    let sent = producer
        .send(&Message::new("Both", "hello").with_tags("A"))
        .await
        .unwrap();
    let consumer = PullConsumer::new("bad", c.clone());
    let mq = consumer
        .queues("Both")
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.broker_name == sent.broker_name && q.queue_id == sent.queue_id)
        .unwrap();
    let e = consumer
        .pull(&mq, "*", 0, 32, None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FilterFailed), "{e:?}");
    let e = consumer
        .pull_raw(&mq, "*", 0, 32, None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FilterFailed), "{e:?}");
    let ClientError::FilterFailed(f) = e else {
        panic!("a typed filter failure: {e:?}")
    };
    assert!(!f.marked, "{f:?}");
    assert_names_filter(&f, "bad", "hostile error");
    // The third failure in a row marks it: pulls then fail without running it.
    consumer
        .pull(&mq, "*", 0, 32, None, None)
        .await
        .unwrap_err();
    let e = consumer
        .pull(&mq, "*", 0, 32, None, None)
        .await
        .unwrap_err();
    let ClientError::FilterFailed(f) = e else {
        panic!("a typed filter failure: {e:?}")
    };
    assert!(f.marked, "{f:?}");
    assert_eq!(f.code(), ErrorCode::FilterMarkedFailed);
    assert_names_filter(&f, "bad", "marked failed");
    // A reset clears the mark where it was set; the filter runs (and fails) again.
    let reset = admin.reset_filter("bad", "Both").await.unwrap();
    assert_eq!(reset.len(), 2, "{reset:?}");
    let cleared: Vec<_> = reset.iter().filter(|(_, r)| r.cleared.is_some()).collect();
    assert_eq!(cleared.len(), 1, "{reset:?}");
    assert_eq!(cleared[0].0, sent.broker_name);
    let e = consumer
        .pull(&mq, "*", 0, 32, None, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FilterFailed), "not marked: {e:?}");
    // The group with the well-behaved filter gets the message.
    let good = PullConsumer::new("g", c.clone());
    let out = good.pull(&mq, "*", 0, 32, None, None).await.unwrap();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(&out.messages[0].body[..], b"hello");
    let raw = good.pull_raw(&mq, "*", 0, 32, None, None).await.unwrap();
    assert_eq!(raw.records.len(), 1);
    let decoded = weir_client::ReceivedMessage::decode(&raw.records[0], &mq.broker_name).unwrap();
    assert_eq!(decoded, out.messages[0]);

    let removed = admin.remove_filter("g", "Both").await.unwrap();
    assert_eq!(removed.len(), 2);
    assert!(removed.iter().all(|(_, r)| r.version == 2), "{removed:?}");
    let e = admin.remove_filter("g", "Both").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FilterNotFound), "{e:?}");
}

fn assert_names_filter(f: &FilterFailed, group: &str, cause: &str) {
    for part in [&format!("group {group:?}"), "version 1", cause] {
        assert!(f.message.contains(part), "no {part:?} in {f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_reports_filter_failures_and_goes_on() {
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let ns_addr = ns.local_addr().to_string();
    // Marked at the first failure: the consumer sees both kinds within a pause or two.
    let _b = broker_with(dir.path(), "broker-a", &ns_addr, |c| {
        c.filter.failures_before_marked = 1;
    })
    .await;
    let c = client(&ns_addr);
    let admin = Admin::new(c.clone());
    admin.create_topic("Pushed", 1).await.unwrap();
    wait_route(&admin, "Pushed", 1).await;
    let hostile = weir_filter_artifacts::read(weir_filter_artifacts::HOSTILE);
    let mode = |m: &str| vec![("mode".to_owned(), m.to_owned())];
    admin
        .upload_filter("pushers", "Pushed", hostile.clone(), mode("trap"))
        .await
        .unwrap();
    Producer::new("pg", c.clone())
        .send(&Message::new("Pushed", "hello"))
        .await
        .unwrap();

    let failures: Arc<Mutex<Vec<FilterFailed>>> = Arc::default();
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut config = PushConsumerConfig::new("pushers");
    config.consume_from = ConsumeFrom::FirstOffset;
    config.on_filter_failure = {
        let failures = Arc::clone(&failures);
        OnFilterFailure::new(move |f| failures.lock().unwrap().push(f.clone()))
    };
    let listener = {
        let bodies = Arc::clone(&bodies);
        Listener::concurrently(
            move |msgs: &[MessageExt], _: &mut ConsumeConcurrentlyContext| {
                let mut b = bodies.lock().unwrap();
                b.extend(
                    msgs.iter()
                        .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
                );
                ConsumeConcurrentlyStatus::ConsumeSuccess
            },
        )
    };
    let consumer = PushConsumer::start(
        client(&ns_addr),
        config,
        vec![("Pushed".into(), "*".into())],
        listener,
    )
    .await
    .unwrap();

    eventually(20, "the callback hears the filter is marked failed", || {
        failures.lock().unwrap().iter().any(|f| f.marked)
    })
    .await;
    {
        let seen = failures.lock().unwrap();
        assert!(
            !seen[0].marked,
            "the failure that marked it comes first: {seen:?}"
        );
        for f in seen.iter() {
            assert_names_filter(f, "pushers", "unreachable");
        }
        // Backing off: a pause of a second or more after each failure, never a spin.
        assert!(seen.len() <= 3, "{seen:?}");
    }
    assert!(
        bodies.lock().unwrap().is_empty(),
        "nothing delivered unfiltered"
    );

    // A new version: the consumer, still pulling, gets the message.
    admin
        .upload_filter("pushers", "Pushed", hostile, mode("keep"))
        .await
        .unwrap();
    eventually(40, "the new version delivers the message", || {
        *bodies.lock().unwrap() == ["hello"]
    })
    .await;
    consumer.shutdown().await.unwrap();
}
