//! Several producer processes: one killed mid-transaction, and 8 at once with random
//! outcomes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use weir_client::{
    ClientConfig, ClientInstance, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    ConsumeFrom, Listener, MessageExt, PushConsumer, PushConsumerConfig,
};
use weir_tests::tx_producer::TxProducer;
use weir_tests::{Env, Rng, T, assert_keys, eventually_for};

use crate::{
    SETTLE, create_topic, drain_expr, env_u64, keys, keys_once, seed, short_checks,
    wait_all_decided,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_producer_check_goes_to_another() {
    let env = Env::start_with(short_checks).await;
    let ns = env.namesrv();
    create_topic(&ns, "TxK", 2).await;
    let mut a = TxProducer::start(&ns, "GK", "TxK", true).await;
    let b = TxProducer::start(&ns, "GK", "TxK", true).await;
    // A's local transaction never ends: A dies with its half message stored.
    a.send("orphan~c", "hang");
    a.until("the half is stored", T, |p| p.half_stored("orphan~c"))
        .await;
    a.kill();
    assert!(a.sent().is_empty(), "A never reported an outcome");
    b.until("B is asked about A's transaction", SETTLE, |p| {
        p.checked().iter().any(|k| k == "orphan~c")
    })
    .await;
    wait_all_decided(&ns, "GK").await;
    let c = env.client().await;
    let got = drain_expr(&c, "G0", "TxK", 2, "*").await;
    assert_keys(
        &keys_once(&got, "G0"),
        &keys(["orphan~c"]),
        "committed by B, once",
    );
}

/// The keys a push consumer received, as they came.
#[derive(Default)]
struct Received {
    keys: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_producers_random_outcomes() {
    const PRODUCERS: usize = 8;
    let per = env_u64("WEIR_TX_PER_PRODUCER", 1000) as usize;
    let seed = seed("eight_producers_random_outcomes");
    let env = Env::start_with(short_checks).await;
    let ns = env.namesrv();
    create_topic(&ns, "TxC", 4).await;

    // A consumer group reads while the transactions run.
    let received = Arc::new(Mutex::new(Received::default()));
    let mut config = PushConsumerConfig::new("GC-consumer");
    config.consume_from = ConsumeFrom::FirstOffset;
    let sink = Arc::clone(&received);
    let client = ClientInstance::new(ClientConfig::new(&ns)).expect("client");
    let consumer = PushConsumer::start(
        client,
        config,
        vec![("TxC".into(), "*".into())],
        Listener::concurrently(
            move |msgs: &[MessageExt], _: &mut ConsumeConcurrentlyContext| {
                let mut r = sink.lock().expect("received");
                r.keys.extend(
                    msgs.iter()
                        .filter_map(|m| m.keys.first().map(str::to_owned)),
                );
                ConsumeConcurrentlyStatus::ConsumeSuccess
            },
        ),
    )
    .await
    .expect("consumer starts");

    let mut producers = Vec::new();
    for _ in 0..PRODUCERS {
        producers.push(TxProducer::start(&ns, "GC", "TxC", false).await);
    }
    // Outcomes: 40 % commit, 25 % rollback, 20 % unknown then commit, 10 % unknown then
    // rollback, 5 % a panicking listener then commit.
    let mut rng = Rng::new(seed);
    let mut committed = BTreeSet::new();
    let started = Instant::now();
    for i in 0..per {
        for (n, p) in producers.iter_mut().enumerate() {
            let (answer, outcome) = match rng.below(100) {
                0..40 => ("c", "commit"),
                40..65 => ("r", "rollback"),
                65..85 => ("c", "unknown"),
                85..95 => ("r", "unknown"),
                _ => ("c", "panic"),
            };
            let key = format!("p{n}-{i}~{answer}");
            if answer == "c" {
                committed.insert(key.clone());
            }
            p.send(&key, outcome);
        }
    }
    for p in &producers {
        p.until("every transaction sent", SETTLE, |p| {
            p.sent().len() + p.failed().len() == per
        })
        .await;
        assert!(p.failed().is_empty(), "half sends failed: {:?}", p.failed());
        assert!(p.sent().iter().all(|s| s.end_ok));
    }
    let sent_in = started.elapsed();
    wait_all_decided(&ns, "GC").await;
    let decided_in = started.elapsed();
    eventually_for(
        "the consumer receives every committed message",
        SETTLE,
        async || received.lock().expect("received").keys.len() >= committed.len(),
    )
    .await;
    // Nothing more arrives.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    consumer.shutdown().await.expect("consumer shutdown");
    let got = std::mem::take(&mut received.lock().expect("received").keys);
    let mut seen = BTreeSet::new();
    for k in &got {
        assert!(seen.insert(k.clone()), "the consumer received {k} twice");
    }
    assert_keys(
        &seen,
        &committed,
        "the consumer sees exactly the committed set",
    );
    let c = env.client().await;
    let all = drain_expr(&c, "G0", "TxC", 4, "*").await;
    assert_keys(
        &keys_once(&all, "G0"),
        &committed,
        "the topic holds exactly the committed set",
    );
    let checked: usize = producers.iter().map(|p| p.checked().len()).sum();
    println!(
        "{PRODUCERS} producers x {per} transactions: {} committed, {checked} check-backs; sent in {sent_in:.1?}, all decided in {decided_in:.1?}",
        committed.len()
    );
}
