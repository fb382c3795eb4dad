//! `weir consume` (a push consumer), `weir send --delay-level` and `weir group members`
//! against an in-process name server and broker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::common::{Running, env, env_with, failed, json_lines, ok, until, wait_route, weir};

/// Short delay levels: level 1 (a delayed send in these tests) is 1 s; a first retry
/// (level 3 + 0) comes after 400 ms.
const LEVELS: &str = "1s 300ms 400ms 500ms";

/// Sends `bodies`, one message each; returns their message ids.
async fn send_lines(ns: &str, topic: &str, bodies: &[String]) -> Vec<String> {
    let input = bodies.join("\n") + "\n";
    json_lines(&ok(&weir(
        ns,
        &["send", topic, "--lines", "--json"],
        Some(&input),
    )
    .await))
    .iter()
    .map(|s| s["msg_id"].as_str().unwrap().to_owned())
    .collect()
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

async fn create(ns: &str, topic: &str, queues: u32) {
    ok(&weir(
        ns,
        &["topic", "create", topic, "--queues", &queues.to_string()],
        None,
    )
    .await);
    wait_route(ns, topic).await;
}

/// `weir group progress`: (topic, queue) → consumer offset.
async fn progress(ns: &str, group: &str) -> (BTreeMap<(String, u32), u64>, String) {
    let text = ok(&weir(ns, &["group", "progress", group], None).await);
    let mut rows = BTreeMap::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 6 {
            rows.insert(
                (cols[1].to_owned(), cols[2].parse().unwrap()),
                cols[4].parse().unwrap(),
            );
        }
    }
    (rows, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_commits_exactly_what_it_printed() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    create(ns, "Cnt", 4).await;
    let sent = bodies("m", 20);
    send_lines(ns, "Cnt", &sent).await;

    let run = |count: Option<&'static str>| async move {
        let mut args = vec!["consume", "Cnt", "--group", "g", "--json"];
        match count {
            Some(c) => args.extend(["--count", c]),
            None => args.extend(["--idle-exit", "2"]),
        }
        json_lines(&ok(&weir(ns, &args, None).await))
    };
    let first = run(Some("7")).await;
    assert_eq!(first.len(), 7);
    assert!(first.iter().all(|m| m["result"] == "consumed"), "{first:?}");
    let (rows, text) = progress(ns, "g").await;
    let committed: u64 = rows
        .iter()
        .filter(|((t, _), _)| t == "Cnt")
        .map(|(_, o)| o)
        .sum();
    assert_eq!(committed, 7, "{text}");

    let second = run(Some("5")).await;
    assert_eq!(second.len(), 5);
    // The group's retry topic, created by the first run's heartbeat, is routed by now
    // (the first runs may have ended before it was): the last run consumes it too.
    until(
        Duration::from_secs(10),
        "the retry topic's route",
        async || {
            weir(ns, &["topic", "route", "%RETRY%g"], None)
                .await
                .status
                .success()
        },
    )
    .await;
    let rest = run(None).await;
    assert_eq!(rest.len(), 8);
    let seen: Vec<String> = first
        .iter()
        .chain(&second)
        .chain(&rest)
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 20, "a message came twice: {seen:?}");
    assert_eq!(distinct, sent.iter().collect());
    let (rows, text) = progress(ns, "g").await;
    assert!(text.contains("total lag: 0"), "{text}");
    // The push consumer commits where it starts on the group's retry topic too.
    assert!(
        rows.keys().any(|(t, _)| t == "%RETRY%g"),
        "no retry topic row: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_comes_back_with_reconsume_times_1() {
    let env = env_with(|c| c.delay_levels = LEVELS.into()).await;
    let ns = env.namesrv.as_str();
    create(ns, "Retry", 2).await;
    let sent = bodies("r", 3);
    send_lines(ns, "Retry", &sent).await;

    // The 3rd delivery fails; its retry (the 4th delivery) succeeds: 3 consumed in all.
    let began = Instant::now();
    let lines = json_lines(&ok(&weir(
        ns,
        &[
            "consume",
            "Retry",
            "--group",
            "rg",
            "--fail-every",
            "3",
            "--count",
            "3",
            "--idle-exit",
            "20",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(lines.len(), 4, "{lines:?}");
    let failed: Vec<_> = lines
        .iter()
        .filter(|m| m["result"] == "reconsume_later")
        .collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    assert_eq!(failed[0]["reconsume_times"], 0);
    assert_eq!(lines[2]["result"], "reconsume_later", "{lines:?}");
    let again = &lines[3];
    assert_eq!(again["result"], "consumed");
    assert_eq!(again["body"], failed[0]["body"]);
    assert_eq!(again["reconsume_times"], 1);
    // The listener sees the topic the message was sent to, not the retry topic.
    assert_eq!(again["topic"], "Retry");
    assert!(
        began.elapsed() >= Duration::from_millis(400),
        "the retry came before its delay"
    );
    let consumed: BTreeSet<&str> = lines
        .iter()
        .filter(|m| m["result"] == "consumed")
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(consumed, sent.iter().map(String::as_str).collect());
    let (_, text) = progress(ns, "rg").await;
    assert!(text.contains("%RETRY%rg"), "{text}");
    assert!(text.contains("total lag: 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_consumed() {
    let env = env_with(|c| c.delay_levels = LEVELS.into()).await;
    let ns = env.namesrv.as_str();
    create(ns, "Dead", 1).await;
    send_lines(ns, "Dead", &["doomed".to_owned()]).await;
    // Failed on its first delivery and its one retry: then it is a dead letter.
    let lines = json_lines(&ok(&weir(
        ns,
        &[
            "consume",
            "Dead",
            "--group",
            "dlg",
            "--fail-every",
            "1",
            "--max-reconsume-times",
            "1",
            "--idle-exit",
            "2",
            "--json",
        ],
        None,
    )
    .await));
    let times: Vec<&serde_json::Value> = lines.iter().map(|m| &m["reconsume_times"]).collect();
    assert_eq!(times, [0, 1], "{lines:?}");
    assert!(lines.iter().all(|m| m["result"] == "reconsume_later"));
    wait_route(ns, "%DLQ%dlg").await;
    let dead = json_lines(&ok(&weir(
        ns,
        &[
            "consume",
            "%DLQ%dlg",
            "--group",
            "some-group",
            "--from",
            "first",
            "--count",
            "1",
            "--idle-exit",
            "20",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["body"], "doomed");
    assert_eq!(dead[0]["topic"], "%DLQ%dlg");
    assert_eq!(dead[0]["reconsume_times"], 2);
    assert_eq!(dead[0]["props"]["RETRY_TOPIC"], "Dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_waits_for_its_level() {
    let env = env_with(|c| c.delay_levels = LEVELS.into()).await;
    let ns = env.namesrv.as_str();
    create(ns, "Later", 2).await;
    let consumer = Running::spawn(ns, &["consume", "Later", "--group", "dg", "--json"]);
    until(
        Duration::from_secs(10),
        "the consumer to join",
        async || {
            weir(ns, &["group", "members", "dg"], None)
                .await
                .status
                .success()
        },
    )
    .await;
    let began = Instant::now();
    let sent = json_lines(&ok(&weir(
        ns,
        &[
            "send",
            "Later",
            "--body",
            "late",
            "--delay-level",
            "1",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(sent[0]["status"], "SEND_OK");
    until(Duration::from_secs(15), "the delayed message", async || {
        !consumer.lines().is_empty()
    })
    .await;
    let waited = began.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "delivered after {waited:?}, before its 1 s delay"
    );
    let got = consumer.json();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["body"], "late");
    assert_eq!(got[0]["topic"], "Later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_shows_a_running_consumer() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    create(ns, "Mem", 2).await;
    let err = failed(&weir(ns, &["group", "members", "mg"], None).await);
    assert!(err.contains("no member"), "{err}");

    let mut consumer = Running::spawn(ns, &["consume", "Mem", "--group", "mg", "--expr", "A || B"]);
    let mut members = Vec::new();
    until(
        Duration::from_secs(10),
        "the consumer to join",
        async || {
            let out = weir(ns, &["group", "members", "mg", "--json"], None).await;
            members = if out.status.success() {
                json_lines(&ok(&out))
            } else {
                Vec::new()
            };
            !members.is_empty()
        },
    )
    .await;
    assert_eq!(members.len(), 1, "{members:?}");
    let m = &members[0];
    assert_eq!(m["broker"], "broker-a");
    assert_eq!(m["model"], "clustering");
    assert!(m["client_id"].as_str().unwrap().contains('@'), "{m}");
    assert!(m["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{m}");
    assert!(m["last_heartbeat_ms_ago"].as_u64().is_some(), "{m}");
    let subs = m["subscriptions"].as_array().unwrap();
    assert!(
        subs.iter()
            .any(|s| s["topic"] == "Mem" && s["expr"] == "A || B"),
        "{m}"
    );
    assert!(subs.iter().any(|s| s["topic"] == "%RETRY%mg"), "{m}");

    let table = ok(&weir(ns, &["group", "members", "mg"], None).await);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "BROKER",
            "CLIENT_ID",
            "ADDRESS",
            "MODEL",
            "SUBSCRIPTIONS",
            "LAST_HEARTBEAT"
        ]
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("broker-a"), "{table}");
    assert!(row.contains(m["client_id"].as_str().unwrap()), "{table}");
    assert!(
        row.contains("CLUSTERING") && row.contains("Mem(A || B)"),
        "{table}"
    );
    assert!(row.ends_with("ms ago"), "{table}");

    // Gone with its process: the broker notices the closed connection.
    consumer.kill();
    until(Duration::from_secs(10), "the member to leave", async || {
        !weir(ns, &["group", "members", "mg"], None)
            .await
            .status
            .success()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_commits_and_exits_cleanly() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    create(ns, "Sig", 2).await;
    let sent = bodies("s", 10);
    send_lines(ns, "Sig", &sent).await;
    let mut consumer = Running::spawn(ns, &["consume", "Sig", "--group", "sg", "--json"]);
    until(Duration::from_secs(15), "10 messages", async || {
        consumer.lines().len() >= 10
    })
    .await;
    consumer.interrupt();
    let status = consumer.wait(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}: {}", consumer.stderr());
    let (rows, text) = progress(ns, "sg").await;
    let committed: u64 = rows
        .iter()
        .filter(|((t, _), _)| t == "Sig")
        .map(|(_, o)| o)
        .sum();
    assert_eq!(committed, 10, "{text}");
}

/// Three members; one is killed while consuming; the others take its queues over (the
/// broker notices the closed connection and tells them to rebalance) and every message is
/// consumed at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_s_queues_move_to_the_others() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    create(ns, "Kill", 8).await;
    let args = ["consume", "Kill", "--group", "kg", "--json"];
    let mut members: Vec<Running> = (0..3).map(|_| Running::spawn(ns, &args)).collect();
    until(Duration::from_secs(20), "three members", async || {
        let out = weir(ns, &["group", "members", "kg", "--json"], None).await;
        out.status.success() && json_lines(&ok(&out)).len() == 3
    })
    .await;

    let ns_owned = ns.to_owned();
    let sending = tokio::spawn(async move {
        let mut ids = Vec::new();
        for chunk in bodies("k", 3000).chunks(500) {
            ids.extend(send_lines(&ns_owned, "Kill", chunk).await);
        }
        ids
    });
    // The victim: whichever member prints first (each holds some of the 8 queues).
    let mut victim = None;
    until(Duration::from_secs(30), "a member to consume", async || {
        victim = members.iter().position(|m| m.lines().len() >= 20);
        victim.is_some()
    })
    .await;
    let mut victim = members.remove(victim.unwrap());
    victim.kill();
    let sent: BTreeSet<String> = sending.await.unwrap().into_iter().collect();
    assert_eq!(sent.len(), 3000);
    let printed_by = |m: &Running| -> BTreeSet<String> {
        m.lines()
            .iter()
            // A line cut by the kill does not parse; it counts for nothing.
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["msg_id"].as_str().map(str::to_owned))
            .collect()
    };
    let by_victim = printed_by(&victim);
    assert!(by_victim.len() >= 20);
    let mut missing = sent.len();
    until(
        Duration::from_secs(60),
        "every message consumed",
        async || {
            let mut seen = by_victim.clone();
            for m in &members {
                seen.extend(printed_by(m));
            }
            missing = sent.difference(&seen).count();
            missing == 0
        },
    )
    .await;
    // The survivors consumed what the victim had not (and may repeat some it had).
    let survivors: BTreeSet<String> = members.iter().flat_map(printed_by).collect();
    assert!(
        sent.difference(&by_victim).all(|id| survivors.contains(id)),
        "{missing} missing"
    );
    eprintln!(
        "victim printed {}, survivors {:?}",
        by_victim.len(),
        members.iter().map(|m| m.lines().len()).collect::<Vec<_>>()
    );
    for m in &mut members {
        assert!(m.try_wait().is_none(), "a survivor exited: {}", m.stderr());
    }
}

/// Pulls the broker refuses (here: busy, `limits.inflight_pull` taken by the consumer's
/// own held pull) are said on stderr, each distinct error once, while the consumer goes
/// on pulling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_pulls_are_said_once_on_stderr() {
    let env = env_with(|c| c.limits.inflight_pull = 1).await;
    let ns = env.namesrv.as_str();
    create(ns, "Crowded", 2).await;
    let out = weir(
        ns,
        &["consume", "Crowded", "--group", "cg", "--idle-exit", "3"],
        None,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("weir consume: pull failed, trying again:"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].contains("limits.inflight_pull"), "{stderr}");
}
