//! RocketMQ's newest 5.x remoting client (`rocketmq-client` 5.5.0) against weir: the same
//! probe as `java`, built in `interop/java5`. The scenarios run side by side in a few
//! environments, each in its own topics and groups, to keep the whole run short.

use std::collections::BTreeSet;

use weir_tests::Env;

use crate::probe::{Lang, Probe, assert_shared_once, props, run};

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// A 5.x producer's sync, async and one-way sends (one body compressed) are stored as
/// sent; a 5.x push consumer then receives each once, and two 5.x consumers in one
/// clustering group share a topic's queues (each message once in all).
#[tokio::test]
async fn java5_producer_consumer_and_clustering() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let client = env.client().await;
    client.create_topic("Share5T", 4).await;
    let member = |instance: &str| {
        let instance = format!("instance={instance}");
        Probe::start(
            Lang::Java5,
            "consume",
            &ns,
            &[
                "topic=Share5T",
                "group=share5_cg",
                "members=2",
                "grace=1500",
                &instance,
            ],
        )
    };
    // The members settle their rebalance while the first producer runs.
    let (mut a, mut b) = (member("a"), member("b"));
    let sent = run(Lang::Java5, "produce", &ns, &["topic=Java5T", "count=4"]).await;
    sent.assert_ok("produce");
    assert_eq!(sent.of("SENT").count(), 12);
    // weir's view: every message, tag, keys, properties and body as sent.
    let queues = env.config().default_topic_queues;
    client.wait_stored("Java5T", queues, 12).await;
    let got = client.drain_topic("weir_view", "Java5T", queues).await;
    assert_eq!(got.len(), 12, "every send stored, one-way ones too");
    let big = got.iter().find(|m| m.key() == "k0").expect("message k0");
    assert_eq!(
        big.body.len(),
        6000,
        "the compressed body is stored inflated"
    );
    assert_eq!(big.tag, "TagA");
    assert!(big.props.iter().any(|(k, v)| k == "color" && v == "red"));
    let consumer = Probe::start(
        Lang::Java5,
        "consume",
        &ns,
        &["topic=Java5T", "group=java5_cg", "expect=12", "grace=500"],
    );

    a.ready().await;
    b.ready().await;
    run(Lang::Java5, "produce", &ns, &["topic=Share5T", "count=4"])
        .await
        .assert_ok("produce to the shared topic");
    let (ra, rb, consumed) = tokio::join!(a.finish(), b.finish(), consumer.finish());

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

    ra.assert_ok("member a");
    rb.assert_ok("member b");
    let (ka, kb) = (ra.received_keys(), rb.received_keys());
    assert!(
        !ka.is_empty() && !kb.is_empty(),
        "both shared: {ka:?} {kb:?}"
    );
    assert_shared_once(&ra, &rb, 12);
}

/// Orderly consumption (queue locks), transactions with the broker's check-back, and
/// consumer retries through the retry topic into the dead-letter topic, with 5.x clients.
#[tokio::test]
async fn java5_orderly_transactions_and_retries() {
    let env = Env::start_with(|c| {
        c.transaction_timeout_ms = 1000;
        c.transaction_check_interval_ms = 1000;
        c.delay_levels = "1s 1s 1s 1s 1s".into();
    })
    .await;
    let ns = env.namesrv();
    let (orderly, tx, retry) = tokio::join!(
        run(
            Lang::Java5,
            "orderly",
            &ns,
            &["topic=Order5T", "orders=6", "steps=3", "queues=4"],
        ),
        run(Lang::Java5, "tx", &ns, &["topic=Tx5T"]),
        run(Lang::Java5, "retry", &ns, &["topic=Retry5T"]),
    );
    orderly.assert_ok("orderly");
    assert_eq!(orderly.of("RECV").count(), 18);

    tx.assert_ok("tx");
    let keys: BTreeSet<String> = tx.received_keys().into_iter().collect();
    assert_eq!(keys, set(&["commit", "unknown"]));
    assert!(
        tx.of("TX").any(|l| l[3] == "true"),
        "the unknown one was checked back"
    );

    retry.assert_ok("retry");
    // Keys r0 and r1 fail: delivered twice each, then found in the dead-letter topic.
    let dead: BTreeSet<String> = retry
        .of("RECV")
        .filter(|l| l[1] == "dlq")
        .map(|l| l[8].clone())
        .collect();
    assert_eq!(dead, set(&["r0", "r1"]));
}

/// A SQL92 subscription; lookups by `offsetMsgId`, by the producer's id and by key; a
/// topic made through RocketMQ's auto-create route, a batch into it, and 5.x's lite pull
/// consumer reading it (LITE_PULL_MESSAGE).
#[tokio::test]
async fn java5_sql92_lookups_and_lite_pull() {
    let env = Env::start().await;
    let ns = env.namesrv();
    let pulled = async {
        run(Lang::Java5, "admin", &ns, &["topic=Pull5T", "queues=4"])
            .await
            .assert_ok("createTopic through TBW102");
        let b = run(Lang::Java5, "batch", &ns, &["topic=Pull5T", "count=10"]).await;
        b.assert_ok("batch");
        let offsets: Vec<u64> = b
            .of("SENT")
            .map(|l| l[6].parse().expect("queue offset"))
            .collect();
        assert_eq!(offsets.len(), 10);
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
        run(
            Lang::Java5,
            "pull",
            &ns,
            &["topic=Pull5T", "group=lite5_cg", "expect=10", "grace=500"],
        )
        .await
    };
    let (sql, view, pulled) = tokio::join!(
        run(Lang::Java5, "sql92", &ns, &["topic=Sql5T"]),
        run(Lang::Java5, "view", &ns, &["topic=View5T"]),
        pulled,
    );
    sql.assert_ok("sql92");
    let keys: BTreeSet<String> = sql.received_keys().into_iter().collect();
    assert_eq!(keys, set(&["s4", "s6"]));

    view.assert_ok("view");
    let found: BTreeSet<String> = view.of("RECV").map(|l| l[1].clone()).collect();
    assert_eq!(found, set(&["query-key", "view-offset", "view-uniq"]));

    pulled.assert_ok("lite pull");
    let keys: BTreeSet<String> = pulled.received_keys().into_iter().collect();
    assert_eq!(keys, (0..10).map(|i| format!("b{i}")).collect());
}
