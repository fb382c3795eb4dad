//! Transactional messages end to end (issue 12): a real name server and broker, and
//! transactional producers in child processes (this test binary re-run on the ignored test
//! `child_tx_producer`, see `weir_tests::tx_producer`), each a `TransactionProducer` of the
//! client library driven line by line. Where a broker is SIGKILLed it is a child process
//! too (`child_broker`, see `weir_tests::child`).
//!
//! A message's key says how a check-back about it is answered (`~c` commit, `~r` rollback,
//! else unknown), so each transaction's final outcome is known from its key whatever the
//! producers, brokers and kills do: the committed set is computed from the keys, never from
//! what the broker says.
//!
//! - `basics.rs`: commit, rollback, unknown then checked back, a panicking listener,
//!   repeated and concurrent commits; dead after the most checks, then resolved by hand;
//!   consumer groups with a WebAssembly filter and a tag filter never see a half message.
//! - `producers.rs`: a producer killed after its half message (the check-back goes to
//!   another live producer of the group); 8 producers × 1,000 transactions with random
//!   outcomes against a push consumer.
//! - `broker_kill.rs`: the broker SIGKILLed between a half message and its decision, and
//!   at random moments under a steady stream of transactions.
//! - `regressions.rs`: broker bugs found on the way, each as the test that caught it.
//!
//! Knobs (environment): `WEIR_TX_PER_PRODUCER` (1000): transactions per producer of the
//! concurrency test; `WEIR_TX_KILLS` (5): broker kills under the stream;
//! `WEIR_TX_SEED` (from the clock; printed): repeats a run's random choices.

mod basics;
mod broker_kill;
mod producers;
mod regressions;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use weir_broker::BrokerConfig;
use weir_client::{Admin, ClientConfig, ClientInstance, TransactionState};
use weir_protocol::broker::{PullMessage, PullStatus};
use weir_tests::{Client, Received, eventually_for, keys_once};

#[test]
#[ignore = "child process of the transaction tests"]
fn child_tx_producer() {
    if std::env::var_os("WEIR_TX_CHILD_NAMESRV").is_some() {
        weir_tests::tx_producer::run_child();
    }
}

#[test]
#[ignore = "child process of the broker kill tests"]
fn child_broker() {
    if let Some(config) = std::env::var_os(weir_tests::child::CONFIG_ENV) {
        weir_tests::child::run_broker(Path::new(&config));
    }
}

/// How long a transaction may take to be decided once its producers can answer: its
/// timeout, a few check intervals, and a loaded machine's slack.
const SETTLE: Duration = Duration::from_secs(60);

/// Check-backs in tests: after 300 ms without a decision, every 200 ms.
fn short_checks(c: &mut BrokerConfig) {
    c.transaction_timeout_ms = 300;
    c.transaction_check_interval_ms = 200;
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

/// The run's seed: `WEIR_TX_SEED`, else from the clock (printed, to repeat a run).
fn seed(test: &str) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = env_u64("WEIR_TX_SEED", clock % 1_000_000_007);
    println!("{test}: seed {seed} (WEIR_TX_SEED={seed} repeats it)");
    seed
}

fn admin(namesrv: &str) -> Admin {
    let mut c = ClientConfig::new(namesrv);
    c.request_timeout = Duration::from_secs(5);
    Admin::new(ClientInstance::new(c).expect("client"))
}

/// Creates `topic` on every broker and waits until it routes.
async fn create_topic(namesrv: &str, topic: &str, queues: u32) {
    let a = admin(namesrv);
    eventually_for("a broker registers", SETTLE, async || {
        a.cluster().await.is_ok_and(|c| !c.brokers.is_empty())
    })
    .await;
    a.create_topic(topic, queues).await.expect("create topic");
    eventually_for("the topic routes", SETTLE, async || {
        a.route(topic)
            .await
            .is_ok_and(|r| r.queues.iter().any(|q| q.write_queues == queues))
    })
    .await;
}

/// Ids of the group's pending (or dead) transactions on every broker.
async fn transactions(admin: &Admin, state: TransactionState, group: &str) -> BTreeSet<String> {
    admin
        .list_transactions(state, Some(group), 10_000)
        .await
        .expect("list transactions")
        .into_iter()
        .flat_map(|(_, l)| l.transactions.into_iter().map(|t| t.transaction_id))
        .collect()
}

/// Waits until the group has no pending transaction.
async fn wait_all_decided(namesrv: &str, group: &str) {
    let a = admin(namesrv);
    eventually_for(
        &format!("every transaction of {group} is decided"),
        SETTLE,
        async || {
            a.list_transactions(TransactionState::Pending, Some(group), 10_000)
                .await
                .is_ok_and(|l| l.iter().all(|(_, l)| l.transactions.is_empty()))
        },
    )
    .await;
}

/// Pulls every queue of `topic` from 0 to its end with a tag `expression` (raw pulls,
/// nothing committed).
async fn drain_expr(
    c: &Client,
    group: &str,
    topic: &str,
    queues: u32,
    expression: &str,
) -> Vec<Received> {
    let mut all = Vec::new();
    for q in 0..queues {
        let end = c.queue_offsets(topic, q).await.max;
        let mut offset = 0;
        while offset < end {
            let p = c
                .pull_raw(&PullMessage {
                    group: group.into(),
                    topic: topic.into(),
                    queue_id: q,
                    offset,
                    max_msgs: 256,
                    expression: expression.into(),
                    suspend_ms: 0,
                    commit_offset: None,
                })
                .await
                .unwrap_or_else(|e| panic!("pull of {group} on {topic}/{q} at {offset}: {e}"));
            assert!(
                matches!(p.status, PullStatus::Found | PullStatus::NoMatch),
                "pull of {group} on {topic}/{q} at {offset}: {:?}",
                p.status
            );
            assert!(p.next_offset > offset, "the pull moves on");
            all.extend(p.msgs);
            offset = p.next_offset;
        }
    }
    all
}

fn keys<'a>(k: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    k.into_iter().map(str::to_owned).collect()
}
