//! The `weir` binary against an in-process name server and broker.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use weir_broker::BrokerConfig;
use weir_namesrv::NamesrvConfig;
use weir_store::StoreConfig;

struct Env {
    namesrv: String,
    _ns: weir_namesrv::RunningNameServer,
    _broker: weir_broker::RunningBroker,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let ns = weir_namesrv::start(NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = weir_broker::start(BrokerConfig {
        listen: "127.0.0.1:0".into(),
        namesrv: ns.local_addr().to_string(),
        store: StoreConfig {
            commit_log_segment_size: 4 << 20,
            consume_queue_segment_entries: 4096,
            index_slots: 4096,
            index_entries: 65536,
            ..StoreConfig::new(dir.path())
        },
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    Env {
        namesrv: ns.local_addr().to_string(),
        _ns: ns,
        _broker: broker,
        _dir: dir,
    }
}

/// Runs `weir` off the async threads (the broker runs on them).
async fn weir(namesrv: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let (namesrv, args, stdin) = (
        namesrv.to_owned(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        stdin.map(str::to_owned),
    );
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("--namesrv")
            .arg(&namesrv)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

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
