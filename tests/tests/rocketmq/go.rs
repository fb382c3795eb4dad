//! RocketMQ's Go client v2 against weir (the probe in `interop/go`).

use weir_tests::Env;

use crate::probe::{Lang, run};

/// The Go client produces and consumes too.
#[tokio::test]
async fn go_producer_and_consumer() {
    let env = Env::start().await;
    let ns = env.namesrv();
    env.client().await.create_topic("GoT", 4).await;
    // One-way sends first: the Go client closes its connection with the answers to them
    // unread, which makes the close a reset that discards whatever it had not sent yet;
    // the sync and async sends after them, each answered, show they all went out.
    let sent = run(
        Lang::Go,
        "produce",
        &ns,
        &["topic=GoT", "count=4", "modes=oneway,sync,async"],
    )
    .await;
    sent.assert_ok("go produce");
    let n = sent.of("SENT").count();
    assert!(n >= 8, "{n} sends");
    let client = env.client().await;
    client.wait_stored("GoT", 4, n as u64).await;
    let stored = client.drain_topic("weir_view", "GoT", 4).await;
    assert_eq!(
        stored.len(),
        n,
        "every send stored: {:?}",
        stored
            .iter()
            .map(|m| m.key().to_owned())
            .collect::<Vec<_>>()
    );
    let expect = format!("expect={n}");
    let consumed = run(
        Lang::Go,
        "consume",
        &ns,
        &["topic=GoT", "group=go_cg", &expect],
    )
    .await;
    consumed.assert_ok("go consume");
}

/// A Go consumer's SQL92 subscription selects on the broker.
#[tokio::test]
async fn go_sql92() {
    let env = Env::start().await;
    let g = run(Lang::Go, "sql92", &env.namesrv(), &["topic=SqlGoT"]).await;
    g.assert_ok("go sql92");
}
