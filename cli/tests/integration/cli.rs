//! The `weir` binary against an in-process name server and broker.

use crate::common::{env, json_lines, ok, weir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_consume_through_the_binary() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    ok(&weir(ns, &["topic", "create", "Cli", "--queues", "2"], None).await);
    assert!(
        ok(&weir(ns, &["topic", "list"], None).await)
            .lines()
            .any(|l| l == "Cli")
    );

    let sent = json_lines(&ok(&weir(
        ns,
        &[
            "send",
            "Cli",
            "--tag",
            "A",
            "--key",
            "k1",
            "--prop",
            "color=red",
            "--body",
            "hello",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["status"], "SEND_OK");
    for field in ["msg_id", "broker", "queue", "queue_offset"] {
        assert!(sent[0].get(field).is_some(), "missing {field}");
    }
    let lines = json_lines(&ok(&weir(
        ns,
        &["send", "Cli", "--queue", "1", "--lines", "--json"],
        Some("one\ntwo\nthree\n"),
    )
    .await));
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["queue"] == 1));

    // Two messages, then the rest in a second run: offsets are committed in between.
    let first = json_lines(&ok(&weir(
        ns,
        &[
            "consume",
            "Cli",
            "--group",
            "g",
            "--count",
            "2",
            "--idle-exit",
            "5",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(first.len(), 2);
    let rest = json_lines(&ok(&weir(
        ns,
        &[
            "consume",
            "Cli",
            "--group",
            "g",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(rest.len(), 2);
    let mut bodies: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["hello", "one", "three", "two"]);
    let hello = first
        .iter()
        .chain(&rest)
        .find(|m| m["body"] == "hello")
        .unwrap();
    assert_eq!(hello["tags"], "A");
    assert_eq!(hello["keys"][0], "k1");
    assert_eq!(hello["props"]["color"], "red");
    for field in [
        "topic",
        "broker",
        "queue",
        "queue_offset",
        "msg_id",
        "reconsume_times",
        "born_ts",
        "store_ts",
    ] {
        assert!(hello.get(field).is_some(), "missing {field}");
    }
    // Tag expressions.
    let tagged = json_lines(&ok(&weir(
        ns,
        &[
            "consume",
            "Cli",
            "--group",
            "h",
            "--expr",
            "A",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(tagged.len(), 1);

    let progress = ok(&weir(ns, &["group", "progress", "g"], None).await);
    assert!(progress.contains("total lag: 0"), "{progress}");
    let stats = ok(&weir(ns, &["topic", "stats", "Cli"], None).await);
    assert_eq!(stats.lines().count(), 3, "{stats}");
    assert!(ok(&weir(ns, &["topic", "route", "Cli"], None).await).contains("broker-a"));
    assert!(ok(&weir(ns, &["cluster", "list"], None).await).contains("DefaultCluster"));
    let by_key = json_lines(&ok(&weir(ns, &["message", "key", "Cli", "k1"], None).await));
    assert_eq!(by_key[0]["body"], "hello");
    let by_id = json_lines(&ok(&weir(
        ns,
        &["message", "id", sent[0]["msg_id"].as_str().unwrap()],
        None,
    )
    .await));
    assert_eq!(by_id[0]["body"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_fail() {
    let env = env().await;
    for args in [
        vec!["topic", "route", "NoSuchTopic"],
        vec!["send", "bad topic!", "--body", "x"],
        vec!["message", "id", "not-an-id"],
        vec!["group", "progress", "nobody"],
    ] {
        let out = weir(&env.namesrv, &args, None).await;
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("weir: "), "{err}");
    }
    let out = weir("127.0.0.1:1", &["topic", "list"], None).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name server"));
}

/// A run whose reader goes away (`weir topic list | head -1`) ends quietly, with the
/// status of a process ended by SIGPIPE, not with a panic's report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_run_quietly() {
    let env = env().await;
    ok(&weir(&env.namesrv, &["topic", "create", "Listed"], None).await);
    let namesrv = env.namesrv.clone();
    let out = tokio::task::spawn_blocking(move || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["--namesrv", &namesrv, "topic", "list"])
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--json-lines`: each line its own key, tag, properties and body; `--key`/`--prop` add to
/// every line's; a bad line stops the run naming it, after the lines before it were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_json_lines_gives_each_message_its_own_fields() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    ok(&weir(ns, &["topic", "create", "Jl", "--queues", "1"], None).await);
    let input = concat!(
        r#"{"key": "order-1", "tag": "paid", "props": {"region": "eu"}, "body": "one"}"#,
        "\n\n",
        r#"{"keys": ["order-2", "x"], "body": "two"}"#,
        "\n",
    );
    let sent = json_lines(&ok(&weir(
        ns,
        &[
            "send",
            "Jl",
            "--lines",
            "--json-lines",
            "--tag",
            "default",
            "--prop",
            "src=cli",
            "--json",
        ],
        Some(input),
    )
    .await));
    assert_eq!(sent.len(), 2);
    let got = json_lines(&ok(&weir(
        ns,
        &[
            "consume",
            "Jl",
            "--group",
            "jl",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    )
    .await));
    assert_eq!(got.len(), 2);
    // A concurrent listener may print them in either order.
    let mut got = got;
    got.sort_by_key(|m| m["body"].as_str().map(str::to_owned));
    assert_eq!(got[0]["body"], "one");
    assert_eq!(got[0]["tags"], "paid");
    assert_eq!(got[0]["keys"], serde_json::json!(["order-1"]));
    assert_eq!(got[0]["props"]["region"], "eu");
    assert_eq!(got[0]["props"]["src"], "cli");
    assert_eq!(got[1]["body"], "two");
    assert_eq!(got[1]["tags"], "default");
    assert_eq!(got[1]["keys"], serde_json::json!(["order-2", "x"]));

    let out = weir(
        ns,
        &["send", "Jl", "--lines", "--json-lines", "--json"],
        Some("{\"body\": \"three\"}\n{\"body\": 3}\n{\"body\": \"never\"}\n"),
    )
    .await;
    let err = crate::common::failed(&out);
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(json_lines(&String::from_utf8_lossy(&out.stdout)).len(), 1);
}
