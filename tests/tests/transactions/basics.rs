//! One producer, one in-process broker: what each outcome makes visible, repeated
//! decisions, dead transactions, and filters.

use std::time::Duration;

use bytes::Bytes;
use weir_client::{TransactionDecision, TransactionState};
use weir_protocol::ErrorCode;
use weir_protocol::broker::EndTransaction;
use weir_protocol::names::property;
use weir_tests::tx_producer::TxProducer;
use weir_tests::{Env, T, artifacts, assert_keys, remote_error};

use crate::{
    SETTLE, admin, create_topic, drain_expr, keys, keys_once, short_checks, transactions,
    wait_all_decided,
};

/// A raw end-transaction for a half message of `group`.
fn end(
    group: &str,
    id: &str,
    half: u64,
    decision: TransactionDecision,
    check: bool,
) -> EndTransaction {
    EndTransaction {
        producer_group: group.into(),
        transaction_id: id.into(),
        commit_log_offset: half,
        decision,
        from_check: check,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_and_repeated_commits() {
    let env = Env::start_with(short_checks).await;
    let ns = env.namesrv();
    create_topic(&ns, "Tx", 2).await;
    let c = env.client().await;
    let mut p = TxProducer::start(&ns, "G", "Tx", true).await;

    // A half message whose local transaction is still running is invisible; then commits.
    p.send("held~u", "block");
    p.until("the half of held~u is stored", T, |p| {
        p.half_stored("held~u")
    })
    .await;
    assert!(
        drain_expr(&c, "G0", "Tx", 2, "*").await.is_empty(),
        "a half message is not visible"
    );
    p.release("held~u", "commit");
    p.until("held~u is sent", T, |p| p.sent_of("held~u").is_some())
        .await;

    for (key, outcome) in [
        ("commit~c", "commit"),
        ("rollback~r", "rollback"),
        ("unknown-then-commit~c", "unknown"),
        ("unknown-then-rollback~r", "unknown"),
        ("panics-then-commit~c", "panic"),
        ("repeat~c", "commit"),
        ("racing~c", "unknown"),
    ] {
        p.send(key, outcome);
    }
    p.until("every transaction is sent", T, |p| p.sent().len() == 8)
        .await;
    let sent = p.sent();
    let state = |k: &str| {
        let s = sent.iter().find(|s| s.key == k).expect("sent");
        assert!(s.end_ok, "{k}: the outcome reached the broker");
        s.local_state.clone()
    };
    assert_eq!(state("commit~c"), "commit");
    assert_eq!(state("rollback~r"), "rollback");
    assert_eq!(state("unknown-then-commit~c"), "unknown");
    assert_eq!(
        state("panics-then-commit~c"),
        "unknown",
        "a panic is unknown"
    );

    // Commits repeated and concurrent, while the broker may be checking back too: each
    // message is committed once.
    let repeat = p.sent_of("repeat~c").expect("sent");
    let racing = p.sent_of("racing~c").expect("sent");
    let mut calls = tokio::task::JoinSet::new();
    for (s, check) in [
        (&repeat, false),
        (&repeat, true),
        (&racing, false),
        (&racing, true),
    ] {
        for _ in 0..4 {
            let (conn, req) = (
                c.conn.clone(),
                end(
                    "G",
                    &s.transaction_id,
                    s.half_offset,
                    TransactionDecision::Commit,
                    check,
                ),
            );
            calls.spawn(async move { conn.call(&req, Bytes::new(), T).await });
        }
    }
    while let Some(r) = calls.join_next().await {
        r.expect("task").expect("a repeated commit is accepted");
    }
    // A decision against the one made is refused.
    let msg = remote_error(
        c.conn
            .call(
                &end(
                    "G",
                    &repeat.transaction_id,
                    repeat.half_offset,
                    TransactionDecision::Rollback,
                    false,
                ),
                Bytes::new(),
                T,
            )
            .await,
        ErrorCode::TransactionInvalid,
    );
    assert!(msg.contains("decided already"), "{msg}");
    // Another group may not decide it.
    remote_error(
        c.conn
            .call(
                &end(
                    "Other",
                    &repeat.transaction_id,
                    repeat.half_offset,
                    TransactionDecision::Commit,
                    false,
                ),
                Bytes::new(),
                T,
            )
            .await,
        ErrorCode::TransactionInvalid,
    );

    wait_all_decided(&ns, "G").await;
    let got = drain_expr(&c, "G0", "Tx", 2, "*").await;
    let committed = keys([
        "held~u",
        "commit~c",
        "unknown-then-commit~c",
        "panics-then-commit~c",
        "repeat~c",
        "racing~c",
    ]);
    assert_keys(
        &keys_once(&got, "G0"),
        &committed,
        "visible: the committed, once each",
    );
    // The broker has its answers; the producer's report of them may still be in its pipe.
    for k in [
        "unknown-then-commit~c",
        "unknown-then-rollback~r",
        "panics-then-commit~c",
    ] {
        p.until(&format!("{k} was checked back"), T, |p| {
            p.checked().iter().any(|c| c == k)
        })
        .await;
    }
    let checked = p.checked();
    for k in ["commit~c", "rollback~r", "held~u"] {
        assert!(
            !checked.iter().any(|c| c == k),
            "{k} was decided: never checked back"
        );
    }
    // The committed message: its topic, its transaction id, none of the half's bookkeeping.
    for m in &got {
        let s = sent.iter().find(|s| s.key == m.key()).expect("sent");
        let prop = |name: &str| {
            m.props
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            prop(property::TRANSACTION_ID),
            Some(s.transaction_id.as_str())
        );
        for gone in [
            property::TRANSACTION_PREPARED,
            property::PRODUCER_GROUP,
            property::REAL_TOPIC,
        ] {
            assert_eq!(prop(gone), None, "{}: {gone}", m.key());
        }
        assert_eq!(m.keys, vec![m.key().to_owned()]);
        assert_eq!(m.body, m.key().as_bytes());
    }

    // Later checks and commits change nothing.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = drain_expr(&c, "G0", "Tx", 2, "*").await;
    assert_keys(
        &keys_once(&again, "G0 again"),
        &committed,
        "still once each",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_after_the_most_checks_then_resolved() {
    let env = Env::start_with(|c| {
        short_checks(c);
        c.transaction_check_max = 2;
    })
    .await;
    let ns = env.namesrv();
    create_topic(&ns, "TxD", 1).await;
    let mut p = TxProducer::start(&ns, "GD", "TxD", true).await;
    p.send("dead-commit~u", "unknown");
    p.send("dead-rollback~u", "unknown");
    p.until("both sent", T, |p| p.sent().len() == 2).await;
    let id = |k: &str| p.sent_of(k).expect("sent").transaction_id;
    let (a, b) = (id("dead-commit~u"), id("dead-rollback~u"));

    let admin = admin(&ns);
    weir_tests::eventually_for("both are dead", SETTLE, async || {
        transactions(&admin, TransactionState::Dead, "GD").await == keys([a.as_str(), b.as_str()])
    })
    .await;
    assert!(
        transactions(&admin, TransactionState::Pending, "GD")
            .await
            .is_empty()
    );
    let dead = admin
        .list_transactions(TransactionState::Dead, None, 100)
        .await
        .expect("list");
    for t in dead.iter().flat_map(|(_, l)| &l.transactions) {
        assert_eq!(
            (t.check_times, t.topic.as_str(), t.producer_group.as_str()),
            (2, "TxD", "GD")
        );
    }
    // The producer's report of the last check may still be in its pipe.
    p.until("four check-backs reported", T, |p| p.checked().len() >= 4)
        .await;
    assert_eq!(p.checked().len(), 4, "asked twice each, then given up on");

    let (broker, r) = admin
        .resolve_transaction(&a, TransactionDecision::Commit)
        .await
        .expect("resolve commit");
    assert_eq!(broker, env.config().broker_name);
    assert!(r.msg_id.is_some());
    admin
        .resolve_transaction(&b, TransactionDecision::Rollback)
        .await
        .expect("resolve rollback");
    let again = admin
        .resolve_transaction(&a, TransactionDecision::Commit)
        .await;
    assert!(
        again
            .as_ref()
            .is_err_and(|e| e.code() == Some(ErrorCode::TransactionInvalid)),
        "{again:?}"
    );
    assert!(
        transactions(&admin, TransactionState::Dead, "GD")
            .await
            .is_empty()
    );
    let c = env.client().await;
    let got = drain_expr(&c, "G0", "TxD", 1, "*").await;
    assert_keys(
        &keys_once(&got, "G0"),
        &keys(["dead-commit~u"]),
        "the resolved commit, once",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_groups_never_see_a_half() {
    let env = Env::start_with(short_checks).await;
    let ns = env.namesrv();
    create_topic(&ns, "TxF", 2).await;
    let c = env.client().await;
    c.upload("GW", "TxF", &artifacts::read(artifacts::KEEP_ALL), &[])
        .await
        .expect("upload keep-all");
    let mut p = TxProducer::start(&ns, "GF", "TxF", true).await;
    let sends = [
        ("a-commit~c", "commit", "TagA"),
        ("b-commit~c", "commit", "TagB"),
        ("a-rollback~r", "rollback", "TagA"),
        ("a-checked~c", "unknown", "TagA"),
        ("a-checked-rollback~r", "unknown", "TagA"),
        ("a-pending~u", "unknown", "TagA"),
        ("a-held~u", "block", "TagA"),
    ];
    for (key, outcome, tag) in sends {
        p.send_tagged(key, outcome, tag);
    }
    p.until("sent", T, |p| {
        p.sent().len() == 6 && p.half_stored("a-held~u")
    })
    .await;
    // Until the two checked back are decided; two stay pending.
    let admin = admin(&ns);
    weir_tests::eventually_for("two pending left", SETTLE, async || {
        transactions(&admin, TransactionState::Pending, "GF")
            .await
            .len()
            == 2
    })
    .await;

    let committed = keys(["a-commit~c", "b-commit~c", "a-checked~c"]);
    let wasm = drain_expr(&c, "GW", "TxF", 2, "*").await;
    assert_keys(
        &keys_once(&wasm, "GW"),
        &committed,
        "the WebAssembly-filtered group",
    );
    let tagged = drain_expr(&c, "GT", "TxF", 2, "TagA").await;
    assert_keys(
        &keys_once(&tagged, "GT"),
        &keys(["a-commit~c", "a-checked~c"]),
        "the TagA group",
    );
    let info = c.filter_info("GW", "TxF").await.expect("registered");
    assert_eq!(
        info.stats.messages_in,
        committed.len() as u64,
        "the filter was never called with a half message: {:?}",
        info.stats
    );
    // Nor does a lookup by key of the real topic find a half.
    for key in ["a-pending~u", "a-held~u", "a-rollback~r"] {
        let found = admin.messages_by_key("TxF", key, 8).await.expect("lookup");
        assert!(found.is_empty(), "{key}: {found:?}");
    }
    assert_eq!(
        admin
            .messages_by_key("TxF", "a-commit~c", 8)
            .await
            .expect("lookup")
            .len(),
        1
    );
    p.release("a-held~u", "rollback");
}
