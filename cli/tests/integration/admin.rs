//! The operator's daily commands against an in-process name server and broker: topic
//! update and delete, group reset-offset and delete, broker stats.

use std::time::Duration;

use crate::common::{Running, env, failed, json_lines, ok, until, wait_route, weir};

/// Consumes `topic` as `group` until idle: the bodies, sorted.
async fn consume_all(ns: &str, topic: &str, group: &str) -> Vec<String> {
    let out = json_lines(&ok(&weir(
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
    .await));
    let mut bodies: Vec<String> = out
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    bodies
}

async fn send_lines(
    ns: &str,
    topic: &str,
    queue: Option<&str>,
    lines: &str,
) -> Vec<serde_json::Value> {
    let mut args = vec!["send", topic, "--lines", "--json"];
    if let Some(q) = queue {
        args.extend(["--queue", q]);
    }
    json_lines(&ok(&weir(ns, &args, Some(lines)).await))
}

/// Waits until the group has no live member left (a consumer that ended unregistered).
async fn no_members(ns: &str, group: &str) {
    until(
        Duration::from_secs(10),
        "the group to have no member",
        async || {
            !weir(ns, &["group", "members", group], None)
                .await
                .status
                .success()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_update_keeps_unconsumed_queues_readable_and_delete_forgets_the_topic() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    ok(&weir(ns, &["topic", "create", "Upd", "--queues", "4"], None).await);
    wait_route(ns, "Upd").await;
    send_lines(ns, "Upd", Some("3"), "in-q3\n").await;
    send_lines(ns, "Upd", Some("0"), "in-q0\n").await;

    // Queue 3 holds a message no group consumed: it stays readable; sends stop at once.
    let upd = json_lines(&ok(&weir(
        ns,
        &["topic", "update", "Upd", "--queues", "2", "--json"],
        None,
    )
    .await));
    assert_eq!(upd.len(), 1);
    assert_eq!(upd[0]["broker"], "broker-a");
    assert_eq!(upd[0]["write_queues"], 2);
    assert_eq!(upd[0]["read_queues"], 4, "{upd:?}");
    assert_eq!(upd[0]["perm"], "rw");
    until(
        Duration::from_secs(10),
        "the route to show 2 write queues",
        async || {
            let route = ok(&weir(ns, &["topic", "route", "Upd"], None).await);
            route
                .lines()
                .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["broker-a", "4", "2"])
        },
    )
    .await;
    // Consumed: the next update drops the queues.
    assert_eq!(consume_all(ns, "Upd", "g").await, ["in-q0", "in-q3"]);
    no_members(ns, "g").await;
    let upd = json_lines(&ok(&weir(
        ns,
        &["topic", "update", "Upd", "--queues", "2", "--json"],
        None,
    )
    .await));
    assert_eq!(upd[0]["read_queues"], 2, "{upd:?}");

    // Read only: sends are refused (no writable queue), consuming goes on.
    let upd = json_lines(&ok(&weir(
        ns,
        &["topic", "update", "Upd", "--perm", "r", "--json"],
        None,
    )
    .await));
    assert_eq!(upd[0]["perm"], "r-");
    assert_eq!(upd[0]["read_queues"], 2);
    until(
        Duration::from_secs(10),
        "the route to be read only",
        async || ok(&weir(ns, &["topic", "route", "Upd"], None).await).contains(" r- "),
    )
    .await;
    failed(&weir(ns, &["send", "Upd", "--body", "x"], None).await);
    ok(&weir(ns, &["topic", "update", "Upd", "--perm", "rw"], None).await);
    failed(&weir(ns, &["topic", "update", "Upd"], None).await);
    failed(&weir(ns, &["topic", "update", "Nope", "--queues", "2"], None).await);

    // Delete: no longer routed nor listed, its offsets gone; created again it starts at 0.
    let del = json_lines(&ok(
        &weir(ns, &["topic", "delete", "Upd", "--json"], None).await
    ));
    assert_eq!(
        del,
        [serde_json::json!({"broker": "broker-a", "topic": "Upd", "deleted": true})]
    );
    until(
        Duration::from_secs(10),
        "the name server to drop the topic",
        async || {
            !ok(&weir(ns, &["topic", "list"], None).await)
                .lines()
                .any(|l| l == "Upd")
        },
    )
    .await;
    failed(&weir(ns, &["topic", "stats", "Upd"], None).await);
    let progress = weir(ns, &["group", "progress", "g"], None).await;
    if progress.status.success() {
        let text = ok(&progress);
        assert!(!text.contains("Upd"), "offsets on a deleted topic: {text}");
    }
    let err = failed(&weir(ns, &["topic", "delete", "Upd"], None).await);
    assert!(err.contains("does not exist"), "{err}");
    ok(&weir(ns, &["topic", "create", "Upd", "--queues", "1"], None).await);
    wait_route(ns, "Upd").await;
    let sent = send_lines(ns, "Upd", None, "again\n").await;
    assert_eq!(sent[0]["queue_offset"], 0);
    assert_eq!(consume_all(ns, "Upd", "g").await, ["again"]);
    // The broker's own topics cannot go.
    let err = failed(&weir(ns, &["topic", "delete", "RMQ_SYS_TRANS_HALF_TOPIC"], None).await);
    assert!(
        err.contains("does not exist") || err.contains("broker's own"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_reset_offset_replays_and_is_refused_while_members_live() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    ok(&weir(ns, &["topic", "create", "Rst", "--queues", "2"], None).await);
    wait_route(ns, "Rst").await;
    send_lines(ns, "Rst", None, "a\nb\nc\n").await;
    assert_eq!(consume_all(ns, "Rst", "g").await, ["a", "b", "c"]);
    no_members(ns, "g").await;
    assert!(consume_all(ns, "Rst", "g").await.is_empty());
    no_members(ns, "g").await;

    let reset = json_lines(&ok(&weir(
        ns,
        &[
            "group",
            "reset-offset",
            "g",
            "--topic",
            "Rst",
            "--to",
            "earliest",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(reset.len(), 2, "one line per queue: {reset:?}");
    assert!(
        reset.iter().all(|r| r["new"] == 0 && r["group"] == "g"),
        "{reset:?}"
    );
    let olds: u64 = reset.iter().map(|r| r["old"].as_u64().unwrap()).sum();
    assert_eq!(olds, 3);
    // The list shows the group (no live member now) three behind on its two queues.
    let listed = json_lines(&ok(&weir(
        ns,
        &["group", "list", "--contains", "g", "--json"],
        None,
    )
    .await));
    let g = listed
        .iter()
        .find(|r| r["group"] == "g")
        .unwrap_or_else(|| panic!("no group g in {listed:?}"));
    assert_eq!(
        (&g["members"], &g["lag"], &g["model"]),
        (
            &serde_json::json!(0),
            &serde_json::json!(3),
            &serde_json::json!("-")
        ),
        "{g}"
    );
    assert!(g["queues"].as_u64().unwrap() >= 2, "{g}");
    assert_eq!(
        consume_all(ns, "Rst", "g").await,
        ["a", "b", "c"],
        "consumed again"
    );
    no_members(ns, "g").await;

    // By time: only what was stored at or after it.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1;
    until(
        Duration::from_secs(5),
        "the clock to pass the stamp",
        async || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
                > stamp
        },
    )
    .await;
    send_lines(ns, "Rst", None, "d\n").await;
    ok(&weir(
        ns,
        &[
            "group",
            "reset-offset",
            "g",
            "--topic",
            "Rst",
            "--to",
            "latest",
        ],
        None,
    )
    .await);
    assert!(consume_all(ns, "Rst", "g").await.is_empty());
    no_members(ns, "g").await;
    let text = ok(&weir(
        ns,
        &[
            "group",
            "reset-offset",
            "g",
            "--topic",
            "Rst",
            "--to-time",
            &stamp.to_string(),
        ],
        None,
    )
    .await);
    assert!(text.starts_with("BROKER"), "{text}");
    assert_eq!(consume_all(ns, "Rst", "g").await, ["d"]);
    no_members(ns, "g").await;

    // A live member: refused, unless forced.
    let mut live = Running::spawn(ns, &["consume", "Rst", "--group", "g", "--json"]);
    until(
        Duration::from_secs(10),
        "the consumer to join",
        async || {
            weir(ns, &["group", "members", "g"], None)
                .await
                .status
                .success()
        },
    )
    .await;
    let err = failed(
        &weir(
            ns,
            &[
                "group",
                "reset-offset",
                "g",
                "--topic",
                "Rst",
                "--to",
                "earliest",
            ],
            None,
        )
        .await,
    );
    assert!(
        err.contains("live member") && err.contains("stop its consumers"),
        "{err}"
    );
    ok(&weir(
        ns,
        &[
            "group",
            "reset-offset",
            "g",
            "--topic",
            "Rst",
            "--to",
            "earliest",
            "--force",
        ],
        None,
    )
    .await);
    let err = failed(&weir(ns, &["group", "delete", "g"], None).await);
    assert!(err.contains("live member"), "{err}");
    live.kill();
    // Usage errors (clap's, several lines): no target, a time that does not parse.
    for args in [
        &["group", "reset-offset", "g", "--topic", "Rst"][..],
        &[
            "group",
            "reset-offset",
            "g",
            "--topic",
            "Rst",
            "--to-time",
            "yesterday",
        ],
    ] {
        let out = weir(ns, args, None).await;
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--to-time"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_delete_forgets_offsets_and_retry_topic() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    ok(&weir(ns, &["topic", "create", "Del", "--queues", "1"], None).await);
    wait_route(ns, "Del").await;
    send_lines(ns, "Del", None, "a\nb\n").await;
    assert_eq!(consume_all(ns, "Del", "gone").await, ["a", "b"]);
    no_members(ns, "gone").await;
    assert!(ok(&weir(ns, &["topic", "list"], None).await).contains("%RETRY%gone"));

    let del = json_lines(&ok(
        &weir(ns, &["group", "delete", "gone", "--json"], None).await
    ));
    assert_eq!(del.len(), 1);
    assert_eq!(del[0]["broker"], "broker-a");
    assert!(del[0]["offsets_removed"].as_u64().unwrap() >= 1, "{del:?}");
    assert_eq!(del[0]["retry_topic_deleted"], true);
    let err = failed(&weir(ns, &["group", "progress", "gone"], None).await);
    assert!(err.contains("no committed offset"), "{err}");
    until(
        Duration::from_secs(10),
        "the retry topic to leave the routes",
        async || !ok(&weir(ns, &["topic", "list"], None).await).contains("%RETRY%gone"),
    )
    .await;
    // A group with nothing: nothing removed, not an error.
    let again = json_lines(&ok(
        &weir(ns, &["group", "delete", "gone", "--json"], None).await
    ));
    assert_eq!(again[0]["offsets_removed"], 0);
    // Deleted, the group starts over from the first message.
    assert_eq!(consume_all(ns, "Del", "gone").await, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stats_count_what_went_in_and_out() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    ok(&weir(ns, &["topic", "create", "Sts", "--queues", "1"], None).await);
    wait_route(ns, "Sts").await;
    send_lines(ns, "Sts", None, "12345\n6789\n").await;
    assert_eq!(consume_all(ns, "Sts", "s").await, ["12345", "6789"]);
    let stats = json_lines(&ok(&weir(ns, &["broker", "stats", "--json"], None).await));
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!(s["broker"], "broker-a");
    assert_eq!(s["id"], 0);
    assert_eq!(s["messages_in"], 2, "{s}");
    assert_eq!(s["bytes_in"], 9, "{s}");
    assert_eq!(s["messages_out"], 2, "{s}");
    assert!(
        s["connections"].as_u64().unwrap() >= 1,
        "this run's own: {s}"
    );
    assert!(s["topics"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["held_pulls"], 0);
    assert!(s["uptime_ms"].as_u64().unwrap() > 0);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert!(
        s["started_at_ms"].as_i64().unwrap() > 1_600_000_000_000,
        "{s}"
    );
    let ratio = s["disk_used_ratio"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ratio), "{s}");
    let table = ok(&weir(ns, &["broker", "stats"], None).await);
    assert!(table.starts_with("BROKER"), "{table}");
    assert!(
        table.lines().next().unwrap().ends_with("VERSION"),
        "{table}"
    );
    assert!(
        table.lines().nth(1).unwrap().starts_with("broker-a"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_config_changes_live_settings_and_refuses_others() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    let got = json_lines(&ok(
        &weir(ns, &["broker", "config", "get", "--json"], None).await
    ));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["broker"], "broker-a");
    assert_eq!(got[0]["settings"]["max_message_size"], "4194304");
    assert_eq!(got[0]["settings"]["auto_create_topic"], "true");

    let set = json_lines(&ok(&weir(
        ns,
        &[
            "broker",
            "config",
            "set",
            "max_message_size",
            "10",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(set[0]["settings"]["max_message_size"], "10");
    ok(&weir(ns, &["send", "Live", "--body", "0123456789"], None).await);
    let err = failed(&weir(ns, &["send", "Live", "--body", "0123456789A"], None).await);
    assert!(err.contains("exceeds the maximum of 10"), "{err}");

    ok(&weir(
        ns,
        &[
            "broker",
            "config",
            "set",
            "auto_create_topic",
            "false",
            "--broker",
            "broker-a",
        ],
        None,
    )
    .await);
    let err = failed(&weir(ns, &["send", "Unmade", "--body", "x"], None).await);
    assert!(err.contains("Unmade"), "{err}");
    let table = ok(&weir(ns, &["broker", "config", "get"], None).await);
    assert!(
        table
            .lines()
            .any(|l| l.contains("auto_create_topic") && l.ends_with("false")),
        "{table}"
    );

    let err = failed(
        &weir(
            ns,
            &["broker", "config", "set", "listen", "0.0.0.0:1"],
            None,
        )
        .await,
    );
    assert!(
        err.contains("cannot change while the broker runs") && err.contains("max_message_size"),
        "{err}"
    );
    let err = failed(
        &weir(
            ns,
            &["broker", "config", "set", "default_topic_queues", "0"],
            None,
        )
        .await,
    );
    assert!(err.contains("1..=1024"), "{err}");
    let err = failed(&weir(ns, &["broker", "config", "get", "--broker", "nope"], None).await);
    assert!(err.contains("no broker named nope"), "{err}");
}
