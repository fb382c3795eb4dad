//! Transactional messages at the broker, over raw protocol calls: half messages stay
//! invisible, commit makes one visible exactly once, rollback discards it, check-backs go
//! to a live producer of the group, transactions asked about too often go dead and are
//! resolved by hand, and a torn commit is repaired at start.
//!
//! Over ~600 lines on purpose: one scenario per test over the shared helpers at the top;
//! the refusals of forged and broker-owned records belong with the transactions they guard.

use crate::common::{T, connect, drain, env_with, eventually, expect_error, pull, send};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use weir_protocol::broker::{
    CheckTransactionState, EndTransaction, Heartbeat, ListTransactions, ResolveTransaction,
    SendResult, TransactionDecision, TransactionList, TransactionState,
};
use weir_protocol::names::{TRANS_DEAD_TOPIC, TRANS_HALF_TOPIC, property};
use weir_protocol::net::BoxFuture;
use weir_protocol::{
    ConnConfig, Connection, ErrorCode, Handler, MessageId, Reply, Request, RequestCode,
};

fn half(topic: &str, id: &str, key: &str) -> weir_protocol::broker::SendMessage {
    let mut m = send(topic, 0, "TagA", key);
    m.producer_group = "txg".into();
    m.properties
        .push((property::TRANSACTION_PREPARED.into(), "true".into()));
    m.properties
        .push((property::TRANSACTION_ID.into(), id.into()));
    m
}

fn end(id: &str, at: u64, decision: TransactionDecision) -> EndTransaction {
    EndTransaction {
        producer_group: "txg".into(),
        transaction_id: id.into(),
        commit_log_offset: at,
        decision,
        from_check: false,
    }
}

/// Sends `req`; where it was stored (its commit log offset).
async fn stored_at(
    conn: &Connection,
    req: &weir_protocol::broker::SendMessage,
    body: Bytes,
) -> u64 {
    let (r, _): (SendResult, _) = conn.call(req, body, T).await.unwrap();
    r.msg_id.parse::<MessageId>().unwrap().offset
}

async fn send_half(conn: &Connection, topic: &str, id: &str, body: &str) -> u64 {
    stored_at(conn, &half(topic, id, id), Bytes::from(body.to_owned())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_once_rollback_never_and_halves_stay_hidden() {
    let env = env_with(|_| {}).await;
    let conn = env.client().await;
    let a = send_half(&conn, "Orders", "tx-a", "paid").await;
    let b = send_half(&conn, "Orders", "tx-b", "refunded").await;
    // Invisible: not in the topic, not to a lookup by key, not pullable where it waits.
    assert!(drain(&conn, "Orders", 0, "*").await.is_empty());
    expect_error(
        &conn,
        &pull(TRANS_HALF_TOPIC, 0, 0, "*", 0),
        Bytes::new(),
        ErrorCode::NoPermission,
        "never consumed",
    )
    .await;
    // Nor copied out by a send-back into a group's dead-letter topic.
    expect_error(
        &conn,
        &weir_protocol::broker::ConsumerSendMsgBack {
            group: "g".into(),
            commit_log_offset: a,
            delay_level: -1,
            max_reconsume_times: 16,
        },
        Bytes::new(),
        ErrorCode::NoPermission,
        "the broker's own topic",
    )
    .await;

    for _ in 0..3 {
        conn.call(
            &end("tx-a", a, TransactionDecision::Commit),
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    }
    conn.call(
        &end("tx-b", b, TransactionDecision::Rollback),
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    assert_eq!(drain(&conn, "Orders", 0, "TagA").await, vec!["paid"]);
    // A decision is final: the other one is refused, naming what was decided.
    expect_error(
        &conn,
        &end("tx-b", b, TransactionDecision::Commit),
        Bytes::new(),
        ErrorCode::TransactionInvalid,
        "rollback",
    )
    .await;
    // A decision must match its half message.
    let mut wrong = end("tx-a", a, TransactionDecision::Commit);
    wrong.producer_group = "other".into();
    expect_error(
        &conn,
        &wrong,
        Bytes::new(),
        ErrorCode::TransactionInvalid,
        "txg",
    )
    .await;
    expect_error(
        &conn,
        &end("tx-x", a, TransactionDecision::Commit),
        Bytes::new(),
        ErrorCode::TransactionInvalid,
        "tx-a",
    )
    .await;

    // Only the transactional path makes a half message.
    let mut flagged = send("Orders", 0, "", "k");
    flagged.sys_flag = 1;
    expect_error(
        &conn,
        &flagged,
        Bytes::from_static(b"x"),
        ErrorCode::MessageIllegal,
        "transaction",
    )
    .await;
    expect_error(
        &conn,
        &send(TRANS_HALF_TOPIC, 0, "", "k"),
        Bytes::from_static(b"x"),
        ErrorCode::NoPermission,
        "broker's own",
    )
    .await;

    // Nothing pending any more.
    let list = ListTransactions {
        state: TransactionState::Pending,
        producer_group: None,
        max: 100,
    };
    let (pending, _): (TransactionList, _) = conn.call(&list, Bytes::new(), T).await.unwrap();
    assert!(pending.transactions.is_empty(), "{pending:?}");

    // Decisions survive a restart: still once, still refused.
    let mut env = env;
    env.restart().await;
    let conn = env.client().await;
    conn.call(
        &end("tx-a", a, TransactionDecision::Commit),
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    assert_eq!(drain(&conn, "Orders", 0, "*").await, vec!["paid"]);
}

async fn send_plain(conn: &Connection, body: Bytes) -> u64 {
    stored_at(conn, &send("Orders", 0, "", "k"), body).await
}

/// A message's body may hold bytes that read as a whole record of any topic, with its own
/// offset and CRC right: a half message of the producer's choosing. Only a record its
/// queue lists is a half message to decide (or a message to send back or look up by id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_forged_inside_a_body_is_no_half_message() {
    use weir_protocol::record::{Assigned, Message, encode_to_vec};
    let env = env_with(|_| {}).await;
    let conn = env.client().await;
    // Two plain messages give a plain record's length; the next one, whose body is the
    // forgery, starts right after the second.
    let first = send_plain(&conn, Bytes::from_static(b"x")).await;
    let second = send_plain(&conn, Bytes::from_static(b"x")).await;
    let plain_len = second - first;
    let forge = |at: u64| {
        let host = "127.0.0.1:10911".parse().unwrap();
        let half = [
            (property::REAL_TOPIC, "Orders"),
            (property::REAL_QUEUE_ID, "0"),
            (property::TRANSACTION_PREPARED, "true"),
            (property::PRODUCER_GROUP, "txg"),
            (property::TRANSACTION_ID, "tx-forged"),
        ]
        .into_iter()
        .fold(
            Message::new(TRANS_HALF_TOPIC, 0, b"FORGED".to_vec()),
            |m, (k, v)| m.with_property(k, v),
        );
        let a = Assigned {
            queue_offset: 0,
            commit_log_offset: at,
            store_timestamp: 1,
            store_host: host,
        };
        encode_to_vec(&half, &a).unwrap()
    };
    let carrier_at = second + plain_len;
    // The body is a record's last field: the carrier's starts where a one-byte body would.
    let forged_at = carrier_at + plain_len - 1;
    let at = send_plain(&conn, Bytes::from(forge(forged_at))).await;
    assert_eq!(
        at, carrier_at,
        "the carrier is where the forgery expected it"
    );
    let carried = drain(&conn, "Orders", 0, "*").await;
    assert_eq!(carried.len(), 3);

    expect_error(
        &conn,
        &end("tx-forged", forged_at, TransactionDecision::Commit),
        Bytes::new(),
        ErrorCode::TransactionInvalid,
        "no queue lists a message there",
    )
    .await;
    // Nothing was committed, and the offset is no message to send back either.
    let after = drain(&conn, "Orders", 0, "*").await;
    assert_eq!(
        (after.len(), after.iter().any(|b| b == "FORGED")),
        (3, false)
    );
    expect_error(
        &conn,
        &weir_protocol::broker::ConsumerSendMsgBack {
            group: "g".into(),
            commit_log_offset: forged_at,
            delay_level: -1,
            max_reconsume_times: 16,
        },
        Bytes::new(),
        ErrorCode::QueryNotFound,
        "no queue lists a message there",
    )
    .await;
}

/// The broker's progress through its own topics (half messages checked, delayed messages
/// waiting) is its own: a client that moved it far ahead hid every later transaction from
/// the check-backs and from `weir transaction list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_own_offsets_and_topics_are_no_clients_to_touch() {
    use weir_protocol::admin::{DeleteGroup, ResetOffset, ResetTarget};
    use weir_protocol::broker::UpdateConsumerOffset;
    use weir_protocol::names::SCHEDULE_TOPIC;
    let env = env_with(|_| {}).await;
    let conn = env.client().await;
    send_half(&conn, "Orders", "tx-early", "early").await;
    for (group, topic) in [
        ("%TRANSACTION_CHECK%", TRANS_HALF_TOPIC),
        ("%SCHEDULE%", SCHEDULE_TOPIC),
        ("%TRANSACTION_CHECK%", "Orders"),
        ("any-group", TRANS_HALF_TOPIC),
    ] {
        let commit = UpdateConsumerOffset {
            group: group.into(),
            topic: topic.into(),
            queue_id: 0,
            offset: 1 << 40,
        };
        expect_error(
            &conn,
            &commit,
            Bytes::new(),
            ErrorCode::NoPermission,
            "the broker's own",
        )
        .await;
    }
    let reset = ResetOffset {
        group: "%SCHEDULE%".into(),
        topic: SCHEDULE_TOPIC.into(),
        to: ResetTarget::Latest,
        force: true,
    };
    expect_error(
        &conn,
        &reset,
        Bytes::new(),
        ErrorCode::NoPermission,
        "the broker's own",
    )
    .await;
    let delete = DeleteGroup {
        group: "%TRANSACTION_CHECK%".into(),
    };
    expect_error(
        &conn,
        &delete,
        Bytes::new(),
        ErrorCode::NoPermission,
        "the broker's own",
    )
    .await;
    // Nor are the topics whose records the broker acts on a client's to write or read: a
    // record sent to the delayed messages' topic went to whatever topic it named, one sent
    // to the given-up transactions' topic was what `weir transaction resolve` committed.
    for topic in [SCHEDULE_TOPIC, TRANS_DEAD_TOPIC] {
        let mut forged = send(topic, 0, "", "tx-early");
        forged
            .properties
            .push((property::REAL_TOPIC.into(), "Orders".into()));
        expect_error(
            &conn,
            &forged,
            Bytes::from_static(b"forged"),
            ErrorCode::NoPermission,
            "the broker's own",
        )
        .await;
        expect_error(
            &conn,
            &pull(topic, 0, 0, "*", 0),
            Bytes::new(),
            ErrorCode::NoPermission,
            "the broker's own",
        )
        .await;
    }
    // Nor a group's dead-letter topic, which only send-backs write (a console's re-send
    // puts a dead letter back on the topic it names).
    let mut planted = send("%DLQ%g", 0, "", "k");
    planted
        .properties
        .push((property::RETRY_TOPIC.into(), "Orders".into()));
    expect_error(
        &conn,
        &planted,
        Bytes::from_static(b"planted"),
        ErrorCode::NoPermission,
        "dead letters",
    )
    .await;
    // A half sent after the attempts is still pending, for the check-backs to ask about.
    send_half(&conn, "Orders", "tx-late", "late").await;
    let list = ListTransactions {
        state: TransactionState::Pending,
        producer_group: None,
        max: 100,
    };
    let (pending, _): (TransactionList, _) = conn.call(&list, Bytes::new(), T).await.unwrap();
    let ids: Vec<&str> = pending
        .transactions
        .iter()
        .map(|t| t.transaction_id.as_str())
        .collect();
    assert_eq!(ids, ["tx-early", "tx-late"]);
}

/// A producer that answers every check-back with `answer`, counting them.
struct Answering {
    answer: TransactionDecision,
    checks: Arc<AtomicU32>,
}

impl Handler for Answering {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            if req.code == RequestCode::CheckTransactionState as u16
                && let Ok(c) = req.decode::<CheckTransactionState>()
            {
                self.checks.fetch_add(1, Ordering::Relaxed);
                let reply = EndTransaction {
                    producer_group: c.producer_group,
                    transaction_id: c.transaction_id,
                    commit_log_offset: c.commit_log_offset,
                    decision: self.answer,
                    from_check: true,
                };
                let _ = conn.oneway(&reply, Bytes::new()).await;
            }
            Reply::ok(&())
        })
    }
}

async fn producer(
    env: &crate::common::Env,
    answer: TransactionDecision,
) -> (Connection, Arc<AtomicU32>) {
    let checks = Arc::new(AtomicU32::new(0));
    let conn = Connection::connect(
        &env.broker().local_addr().to_string(),
        Arc::new(Answering {
            answer,
            checks: Arc::clone(&checks),
        }),
        ConnConfig::default(),
        T,
    )
    .await
    .unwrap();
    let hb = Heartbeat {
        client_id: format!("producer-{}", rand_id()),
        producer_groups: vec!["txg".into()],
        consumers: vec![],
    };
    conn.call(&hb, Bytes::new(), T).await.unwrap();
    (conn, checks)
}

fn rand_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A transaction is its half message, not its id: a producer that uses an id twice (a
/// message sent again), or another group that picks the same id, gets a transaction of
/// its own, decided on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_that_share_a_transaction_id_are_decided_each_on_their_own() {
    let env = env_with(|_| {}).await;
    let conn = env.client().await;
    let decide = async |group: &str, at: u64, decision| {
        let mut e = end("same", at, decision);
        e.producer_group = group.into();
        conn.call(&e, Bytes::new(), T).await
    };
    // Committed twice under one id: both are delivered.
    let first = send_half(&conn, "Dup", "same", "first").await;
    decide("txg", first, TransactionDecision::Commit)
        .await
        .unwrap();
    let second = send_half(&conn, "Dup", "same", "second").await;
    decide("txg", second, TransactionDecision::Commit)
        .await
        .unwrap();
    // A rollback under the id does not stop a later commit under it.
    let third = send_half(&conn, "Dup", "same", "rolled back").await;
    decide("txg", third, TransactionDecision::Rollback)
        .await
        .unwrap();
    let fourth = send_half(&conn, "Dup", "same", "fourth").await;
    decide("txg", fourth, TransactionDecision::Commit)
        .await
        .unwrap();
    // Another group's rollback under the id leaves this group's commit alone.
    let mut other = half("Dup", "same", "same");
    other.producer_group = "other".into();
    let (r, _): (SendResult, _) = conn
        .call(&other, Bytes::from_static(b"other's"), T)
        .await
        .unwrap();
    let other_at = r.msg_id.parse::<MessageId>().unwrap().offset;
    decide("other", other_at, TransactionDecision::Rollback)
        .await
        .unwrap();
    let fifth = send_half(&conn, "Dup", "same", "fifth").await;
    decide("txg", fifth, TransactionDecision::Commit)
        .await
        .unwrap();
    assert_eq!(
        drain(&conn, "Dup", 0, "*").await,
        vec!["first", "second", "fourth", "fifth"]
    );
    // Each is still decided once: a repeated commit adds nothing, a contrary decision is
    // refused.
    decide("txg", second, TransactionDecision::Commit)
        .await
        .unwrap();
    expect_error(
        &conn,
        &end("same", third, TransactionDecision::Commit),
        Bytes::new(),
        ErrorCode::TransactionInvalid,
        "decided already",
    )
    .await;
    assert_eq!(drain(&conn, "Dup", 0, "*").await.len(), 4);
    let pending = ListTransactions {
        state: TransactionState::Pending,
        producer_group: None,
        max: 100,
    };
    let (l, _): (TransactionList, _) = conn.call(&pending, Bytes::new(), T).await.unwrap();
    assert!(l.transactions.is_empty(), "{:?}", l.transactions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_half_is_checked_back_and_committed_once() {
    let env = env_with(|c| {
        c.transaction_timeout_ms = 100;
        c.transaction_check_interval_ms = 100;
    })
    .await;
    let (prod, checks) = producer(&env, TransactionDecision::Commit).await;
    send_half(&prod, "Checked", "tx-c", "decided later").await;
    let conn = env.client().await;
    eventually("committed through the check-back", async || {
        drain(&conn, "Checked", 0, "*").await == vec!["decided later"]
    })
    .await;
    assert!(checks.load(Ordering::Relaxed) >= 1);
    // Never asked again once decided.
    let asked = checks.load(Ordering::Relaxed);
    env.broker().broker().check_transactions().await;
    env.broker().broker().check_transactions().await;
    assert_eq!(checks.load(Ordering::Relaxed), asked);
    assert_eq!(drain(&conn, "Checked", 0, "*").await, vec!["decided later"]);
}

/// A commit that comes while a check pass gives its transaction up (read as undecided a
/// moment before) stands: the "dead" is not recorded after it, so the producer's retried
/// commit is a repeat, not a second delivery. (A probe saw 14 of 2,000 delivered twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_racing_the_move_to_dead_is_not_undone() {
    const N: usize = 2_000;
    let env = env_with(|c| {
        c.transaction_timeout_ms = 1;
        // Passes run here, not in the background.
        c.transaction_check_interval_ms = 600_000;
        c.transaction_check_max = 1;
    })
    .await;
    let conn = env.client().await;
    let committer = env.client().await;
    let mut halves = Vec::with_capacity(N);
    // Large enough that giving one up takes a while: commits meet the pass mid-batch.
    let pad = "p".repeat(32 << 10);
    for i in 0..N {
        let id = format!("tx-{i}");
        halves.push((
            send_half(&conn, "Race", &id, &format!("{id} {pad}")).await,
            id,
        ));
    }
    // One pass asks about each (no producer is there to answer: a copy with one check is
    // stored), then gives each copy up, while the commits come.
    let broker = Arc::clone(env.broker().broker());
    let pass = tokio::spawn(async move { broker.check_transactions().await });
    for (at, id) in halves.iter().rev() {
        committer
            .call(&end(id, *at, TransactionDecision::Commit), Bytes::new(), T)
            .await
            .unwrap();
    }
    pass.await.unwrap();
    // The producer's commits again, as after a lost answer: repeats, whatever the pass did.
    for (at, id) in &halves {
        committer
            .call(&end(id, *at, TransactionDecision::Commit), Bytes::new(), T)
            .await
            .unwrap();
    }
    let mut got = drain(&conn, "Race", 0, "*").await;
    got.sort();
    let delivered = got.len();
    got.dedup();
    assert_eq!(
        (delivered, got.len()),
        (N, N),
        "each committed message once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_too_often_goes_dead_and_is_resolved_by_hand() {
    let env = env_with(|c| {
        c.transaction_timeout_ms = 50;
        c.transaction_check_interval_ms = 50;
        c.transaction_check_max = 3;
    })
    .await;
    let (prod, checks) = producer(&env, TransactionDecision::Unknown).await;
    send_half(&prod, "Stuck", "tx-d", "unsure").await;
    let conn = env.client().await;
    let dead = ListTransactions {
        state: TransactionState::Dead,
        producer_group: Some("txg".into()),
        max: 10,
    };
    eventually("the transaction goes dead", async || {
        let (l, _): (TransactionList, _) = conn.call(&dead, Bytes::new(), T).await.unwrap();
        l.transactions.len() == 1
    })
    .await;
    assert_eq!(checks.load(Ordering::Relaxed), 3);
    let (l, _): (TransactionList, _) = conn.call(&dead, Bytes::new(), T).await.unwrap();
    let t = &l.transactions[0];
    assert_eq!(
        (t.transaction_id.as_str(), t.topic.as_str()),
        ("tx-d", "Stuck")
    );
    assert_eq!(t.check_times, 3);
    assert!(drain(&conn, "Stuck", 0, "*").await.is_empty());
    // The dead copy is where `weir transaction dead` says.
    let view = conn
        .call(
            &weir_protocol::broker::ViewMessageById {
                msg_id: t.msg_id.clone(),
            },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    let rec = weir_protocol::broker::split_records(&view.1).unwrap();
    assert_eq!(
        weir_protocol::RecordView::parse(rec[0]).unwrap().topic(),
        TRANS_DEAD_TOPIC
    );

    let resolve = ResolveTransaction {
        transaction_id: "tx-d".into(),
        decision: TransactionDecision::Commit,
    };
    conn.call(&resolve, Bytes::new(), T).await.unwrap();
    assert_eq!(drain(&conn, "Stuck", 0, "*").await, vec!["unsure"]);
    expect_error(
        &conn,
        &resolve,
        Bytes::new(),
        ErrorCode::TransactionInvalid,
        "decided already",
    )
    .await;
    let (l, _): (TransactionList, _) = conn.call(&dead, Bytes::new(), T).await.unwrap();
    assert!(l.transactions.is_empty());
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_a_crash_tore_from_its_decision_is_repaired_at_start() {
    // No checkpoint after the start: a crash image replays everything that follows.
    let env = env_with(|c| c.store.checkpoint_interval_ms = 3_600_000).await;
    let conn = env.client().await;
    let at = send_half(&conn, "Torn", "tx-t", "once").await;
    // What a torn batch leaves: the committed message, without its op record.
    let store = env.broker().broker().store();
    let rec = store.get_by_offset(at).unwrap();
    let mut msg = rec.view().unwrap().to_message();
    msg.topic = "Torn".into();
    msg.sys_flag = weir_protocol::record::sys_flag::TX_COMMIT;
    msg.prepared_tx_offset = at;
    msg.remove_properties(&[
        property::REAL_TOPIC,
        property::REAL_QUEUE_ID,
        property::TRANSACTION_PREPARED,
        property::PRODUCER_GROUP,
    ]);
    store.put(&msg).unwrap();
    assert_eq!(drain(&conn, "Torn", 0, "*").await, vec!["once"]);
    // The crash: a copy of the live folder, opened by a new broker.
    let image = tempfile::tempdir().unwrap();
    copy_dir(&env.dir.path().join("data"), &image.path().join("data"));
    let config = crate::common::broker_config(image.path(), &env.ns.local_addr().to_string());
    let broker = weir_broker::start(config).await.unwrap();
    assert!(!broker.broker().store().recovery_report().clean_shutdown);
    let conn = connect(&broker.local_addr().to_string()).await;
    // The producer's own commit now finds it decided: still once.
    conn.call(
        &end("tx-t", at, TransactionDecision::Commit),
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    assert_eq!(drain(&conn, "Torn", 0, "*").await, vec!["once"]);
    broker.shutdown().await.unwrap();
}
