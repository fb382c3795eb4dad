//! `weir send --transaction`, `weir transaction list|dead|resolve` and
//! `weir bench produce --transaction` against an in-process name server and broker with
//! short check-backs.

use std::time::Duration;

use crate::common::{env_with, failed, json_lines, ok, until, wait_route, weir};

fn short_checks(c: &mut weir_broker::BrokerConfig) {
    c.transaction_timeout_ms = 300;
    c.transaction_check_interval_ms = 200;
    c.transaction_check_max = 2;
}

/// Bodies of everything the topic holds, read by a new group each time.
async fn bodies(ns: &str, topic: &str, group: &str) -> Vec<String> {
    let out = ok(&weir(
        ns,
        &[
            "consume",
            topic,
            "--group",
            group,
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    )
    .await);
    let mut b: Vec<String> = json_lines(&out)
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    b.sort();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_list_dead_resolve() {
    let env = env_with(short_checks).await;
    let ns = env.namesrv.as_str();
    ok(&weir(ns, &["topic", "create", "CliTx", "--queues", "2"], None).await);
    wait_route(ns, "CliTx").await;

    let sent = json_lines(&ok(&weir(
        ns,
        &[
            "send",
            "CliTx",
            "--body",
            "yes",
            "--transaction",
            "commit",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(sent[0]["local_state"], "commit");
    assert_eq!(sent[0]["status"], "SEND_OK");
    assert!(
        sent[0]["transaction_id"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    ok(&weir(
        ns,
        &["send", "CliTx", "--body", "no", "--transaction", "rollback"],
        None,
    )
    .await);
    // Unknown: the run stays up, the broker asks, the run answers and exits.
    let out = weir(
        ns,
        &[
            "send",
            "CliTx",
            "--body",
            "later",
            "--transaction",
            "unknown",
            "--check-answer",
            "commit",
            "--check-timeout",
            "30",
        ],
        None,
    )
    .await;
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("answered 1 check-back"), "{stderr}");
    assert_eq!(bodies(ns, "CliTx", "g1").await, ["later", "yes"]);

    // Needs --check-answer; --queue does not apply.
    let err = failed(
        &weir(
            ns,
            &["send", "CliTx", "--body", "x", "--transaction", "unknown"],
            None,
        )
        .await,
    );
    assert!(err.contains("--check-answer"), "{err}");

    // No answer in time: a clear message, and the transaction stays pending, then dies.
    let out = weir(
        ns,
        &[
            "send",
            "CliTx",
            "--body",
            "orphan",
            "--transaction",
            "unknown",
            "--check-answer",
            "commit",
            "--check-timeout",
            "0",
            "--producer-group",
            "orphans",
            "--json",
        ],
        None,
    )
    .await;
    let err = failed(&out);
    assert!(
        err.contains("no check-back within 0 s") && err.contains("weir transaction list"),
        "{err}"
    );
    let id = json_lines(&String::from_utf8_lossy(&out.stdout))[0]["transaction_id"]
        .as_str()
        .expect("transaction id")
        .to_owned();
    let listed = json_lines(&ok(&weir(
        ns,
        &["transaction", "list", "--group", "orphans", "--json"],
        None,
    )
    .await));
    if let Some(t) = listed.first() {
        // Unless it died already (a slow machine): then it is in the dead list below.
        assert_eq!(t["transaction_id"], id.as_str());
        assert_eq!(t["topic"], "CliTx");
        assert_eq!(t["producer_group"], "orphans");
        assert!(t["age_ms"].as_i64().is_some() && t["check_times"].as_u64().is_some());
    }
    let table = ok(&weir(ns, &["transaction", "list"], None).await);
    assert!(table.starts_with("BROKER"), "{table}");
    until(
        Duration::from_secs(30),
        "the transaction is dead",
        async || {
            let dead = ok(&weir(ns, &["transaction", "dead", "--json"], None).await);
            json_lines(&dead)
                .iter()
                .any(|t| t["transaction_id"] == id.as_str() && t["check_times"] == 2)
        },
    )
    .await;
    let dead = ok(&weir(ns, &["transaction", "dead"], None).await);
    assert!(
        dead.lines()
            .any(|l| l.contains(&id) && l.contains("orphans")),
        "{dead}"
    );

    let resolved = ok(&weir(ns, &["transaction", "resolve", &id, "commit"], None).await);
    assert!(
        resolved.starts_with(&format!("committed {id} on broker-a: msg_id=")),
        "{resolved}"
    );
    let err = failed(&weir(ns, &["transaction", "resolve", &id, "rollback"], None).await);
    assert!(err.contains("decided already"), "{err}");
    assert_eq!(bodies(ns, "CliTx", "g2").await, ["later", "orphan", "yes"]);
    assert!(ok(&weir(ns, &["transaction", "dead", "--json"], None).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_produce_transactions() {
    let env = env_with(short_checks).await;
    let ns = env.namesrv.as_str();
    let out = ok(&weir(
        ns,
        &[
            "bench",
            "produce",
            "BenchTx",
            "--count",
            "300",
            "--transaction",
            "--json",
        ],
        None,
    )
    .await);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(
        (v["messages"].as_u64(), v["transaction"].as_str()),
        (Some(300), Some("commit"))
    );
    let out = ok(&weir(
        ns,
        &[
            "bench",
            "produce",
            "BenchTx",
            "--count",
            "200",
            "--transaction",
            "unknown",
            "--check-timeout",
            "30",
            "--json",
        ],
        None,
    )
    .await);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["check_backs"]["answered"], 200, "{v}");
    assert_eq!(v["check_backs"]["timed_out"], false, "{v}");
    let got = json_lines(&ok(&weir(
        ns,
        &[
            "consume",
            "BenchTx",
            "--group",
            "g",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(got.len(), 500, "every transaction committed once");
    let err = failed(
        &weir(
            ns,
            &[
                "bench",
                "produce",
                "BenchTx",
                "--transaction",
                "--batch",
                "4",
            ],
            None,
        )
        .await,
    );
    assert!(err.contains("--batch"), "{err}");
}
