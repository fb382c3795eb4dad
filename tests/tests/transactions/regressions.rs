//! Broker bugs the client work found, each kept as the minimal test that failed before
//! its fix.

use std::time::Duration;

use weir_client::{TransactionDecision, TransactionState};
use weir_tests::tx_producer::TxProducer;
use weir_tests::{Env, T};

use crate::{SETTLE, admin, create_topic, drain_expr, short_checks, transactions};

/// A dead transaction committed by hand must look like any committed message. The
/// broker's dead copy adds the transaction id as a key (to find it again); the commit used
/// to keep it, giving the message a key its producer never gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_dead_transaction_keeps_only_its_own_keys() {
    let env = Env::start_with(|c| {
        short_checks(c);
        c.transaction_check_max = 1;
    })
    .await;
    let ns = env.namesrv();
    create_topic(&ns, "TxK", 1).await;
    let mut p = TxProducer::start(&ns, "GK2", "TxK", true).await;
    p.send("k~u", "unknown");
    p.until("sent", T, |p| p.sent().len() == 1).await;
    let id = p.sent_of("k~u").expect("sent").transaction_id;
    let admin = admin(&ns);
    weir_tests::eventually_for("dead", SETTLE, async || {
        transactions(&admin, TransactionState::Dead, "GK2")
            .await
            .contains(&id)
    })
    .await;
    admin
        .resolve_transaction(&id, TransactionDecision::Commit)
        .await
        .expect("resolve");
    let got = drain_expr(&env.client().await, "G0", "TxK", 1, "*").await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].keys,
        vec!["k~u".to_owned()],
        "the producer's keys only"
    );
}

/// One check pass examines every half message due, not only the first 256: a run of 256
/// decided halves (the usual case: most transactions commit at once) must not end the
/// pass. `check_transactions` used to break out after any batch of 256 with nothing to
/// ask, so a pass moved 256 halves per interval past committed ones:
/// behind a million committed transactions an Unknown one waited ~65 hours at the default
/// 60 s interval, and a backlog of re-asked halves drained at a few hundred a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_check_pass_goes_past_runs_of_decided_halves() {
    // No check pass of its own (the interval is an hour): the test runs one.
    let env = Env::start_with(|c| {
        c.transaction_timeout_ms = 100;
        c.transaction_check_interval_ms = 3_600_000;
    })
    .await;
    let ns = env.namesrv();
    create_topic(&ns, "TxP", 1).await;
    let mut p = TxProducer::start(&ns, "GP", "TxP", true).await;
    for i in 0..1000 {
        p.send(&format!("done-{i}~c"), "commit");
    }
    p.until("committed", SETTLE, |p| p.sent().len() == 1000)
        .await;
    p.send("late~c", "unknown");
    p.until("sent", T, |p| p.sent().len() == 1001).await;
    // Past the transaction timeout of the last half.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pass = env.broker().broker().check_transactions().await;
    assert!(
        pass.examined >= 1001 && pass.checked == 1,
        "one pass examines every half and asks about the undecided one: {pass:?}"
    );
}
