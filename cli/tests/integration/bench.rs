//! `weir bench produce|consume` against an in-process name server and broker.

use std::process::Command;

/// Runs `weir … --json` off the async threads (the broker runs on them) and returns its
/// one JSON line.
async fn weir(namesrv: &str, args: &[&str]) -> serde_json::Value {
    let (namesrv, args): (String, Vec<String>) = (
        namesrv.to_owned(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || weir_blocking(&namesrv, &args))
        .await
        .unwrap()
}

fn weir_blocking(namesrv: &str, args: &[String]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--namesrv")
        .arg(namesrv)
        .args(args)
        .output()
        .expect("running weir");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "weir {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = stdout.trim();
    assert_eq!(
        line.lines().count(),
        1,
        "one JSON line expected, got: {stdout}"
    );
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {stdout}"))
}

fn rate(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_consume_2000() {
    let env = crate::common::env_with(|c| c.store.commit_log_segment_size = 16 << 20).await;
    let ns_addr = env.namesrv.clone();

    let produced = weir(
        &ns_addr,
        &[
            "bench",
            "produce",
            "BenchT",
            "--count",
            "2000",
            "--size",
            "64",
            "--concurrency",
            "8",
            "--queues",
            "4",
            "--json",
        ],
    )
    .await;
    assert_eq!(produced["mode"], "produce", "{produced}");
    assert_eq!(produced["messages"], 2000, "{produced}");
    assert_eq!(produced["bytes"], 2000 * 64, "{produced}");
    assert_eq!(produced["requests"], 2000, "{produced}");
    assert_eq!(produced["topic_created"], true, "{produced}");
    assert_eq!(
        produced["threads"], 1,
        "one runtime worker unless asked: {produced}"
    );
    assert!(rate(&produced, "msgs_per_sec") > 0.0, "{produced}");
    assert!(rate(&produced, "mb_per_sec") > 0.0, "{produced}");
    let lat = &produced["latency_ms"];
    assert!(lat["p50"].as_f64().unwrap() > 0.0, "{produced}");
    assert!(lat["p50"].as_f64() <= lat["p99"].as_f64(), "{produced}");
    assert!(lat["p99"].as_f64() <= lat["max"].as_f64(), "{produced}");

    // Batched sends to the (now existing) topic: 500 more in requests of 32 (and a last 20).
    let batched = weir(
        &ns_addr,
        &[
            "bench",
            "produce",
            "BenchT",
            "--count",
            "500",
            "--size",
            "64",
            "--batch",
            "32",
            "--threads",
            "3",
            "--json",
        ],
    )
    .await;
    assert_eq!(batched["messages"], 500, "{batched}");
    assert_eq!(batched["requests"], 16, "{batched}");
    assert_eq!(batched["topic_created"], false, "{batched}");
    assert_eq!(batched["threads"], 3, "{batched}");

    // Spread over 3 topics, one request to each in turn: 100 messages each.
    let spread = weir(
        &ns_addr,
        &[
            "bench",
            "produce",
            "Spread",
            "--topics",
            "3",
            "--count",
            "300",
            "--queues",
            "2",
            "--concurrency",
            "3",
            "--json",
        ],
    )
    .await;
    assert_eq!(spread["topics"], 3, "{spread}");
    assert_eq!(spread["topics_created"], 3, "{spread}");
    assert_eq!(spread["messages"], 300, "{spread}");
    for t in ["Spread-0", "Spread-1", "Spread-2"] {
        let got = weir(
            &ns_addr,
            &["bench", "consume", t, "--idle-exit", "1", "--json"],
        )
        .await;
        assert_eq!(got["messages"], 100, "{t}: {got}");
    }

    let consumed = weir(
        &ns_addr,
        &["bench", "consume", "BenchT", "--count", "2000", "--json"],
    )
    .await;
    assert_eq!(consumed["mode"], "consume", "{consumed}");
    assert_eq!(consumed["messages"], 2000, "{consumed}");
    assert_eq!(consumed["bytes"], 2000 * 64, "{consumed}");
    assert_eq!(consumed["queues"], 4, "{consumed}");
    assert!(rate(&consumed, "msgs_per_sec") > 0.0, "{consumed}");
    assert!(rate(&consumed, "mb_per_sec") > 0.0, "{consumed}");
    assert!(consumed["pulls"].as_u64().unwrap() >= 4, "{consumed}");

    // Everything, then 1 s of nothing.
    let all = weir(
        &ns_addr,
        &["bench", "consume", "BenchT", "--idle-exit", "1", "--json"],
    )
    .await;
    assert_eq!(all["messages"], 2500, "{all}");
    assert!(
        all["elapsed_secs"].as_f64().unwrap() < 1.0,
        "the idle second is not counted: {all}"
    );

    // A topic with nothing: one clear error line.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--namesrv", &ns_addr, "bench", "consume", "NoSuchTopic"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NoSuchTopic") && err.lines().count() == 1,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consume_with_two_members() {
    let env = crate::common::env_with(|c| c.store.commit_log_segment_size = 16 << 20).await;
    let ns_addr = env.namesrv.clone();

    let produced = weir(
        &ns_addr,
        &[
            "bench", "produce", "PushT", "--count", "3000", "--size", "64", "--queues", "8",
            "--json",
        ],
    )
    .await;
    assert_eq!(produced["messages"], 3000, "{produced}");

    let consumed = weir(
        &ns_addr,
        &[
            "bench",
            "consume",
            "PushT",
            "--group",
            "push-bench",
            "--members",
            "2",
            "--json",
        ],
    )
    .await;
    assert_eq!(consumed["mode"], "consume", "{consumed}");
    assert_eq!(consumed["consumer"], "push", "{consumed}");
    assert_eq!(consumed["members"], 2, "{consumed}");
    assert_eq!(consumed["queues"], 8, "{consumed}");
    assert_eq!(consumed["backlog"], 3000, "{consumed}");
    assert_eq!(consumed["messages"], 3000, "{consumed}");
    assert_eq!(consumed["drained"], true, "{consumed}");
    assert_eq!(consumed["failed"], 0, "{consumed}");
    let total = consumed["consumed"].as_u64().unwrap();
    assert!(total >= 3000, "{consumed}");
    assert_eq!(
        consumed["redelivered"].as_u64().unwrap(),
        total - 3000,
        "{consumed}"
    );
    let per_member = consumed["per_member"].as_array().unwrap();
    assert_eq!(per_member.len(), 2, "{consumed}");
    assert_eq!(
        per_member
            .iter()
            .map(|m| m["consumed"].as_u64().unwrap())
            .sum::<u64>(),
        total,
        "{consumed}"
    );
    assert!(rate(&consumed, "msgs_per_sec") > 0.0, "{consumed}");

    // Drained: the group has nothing left, so a second run has nothing to do.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "--namesrv",
            &ns_addr,
            "bench",
            "consume",
            "PushT",
            "--group",
            "push-bench",
            "--members",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing to consume"), "{err}");
}
