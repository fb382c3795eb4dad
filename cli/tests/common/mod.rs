//! Shared by the CLI's integration tests: an in-process name server and broker on
//! ephemeral ports with temporary data, and runs of the `weir` binary against them.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use weir_broker::BrokerConfig;
use weir_namesrv::NamesrvConfig;
use weir_store::StoreConfig;

pub struct Env {
    pub namesrv: String,
    _ns: weir_namesrv::RunningNameServer,
    _broker: weir_broker::RunningBroker,
    _dir: tempfile::TempDir,
}

pub async fn env() -> Env {
    let ns = weir_namesrv::start(NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        broker_expiry_ms: 120_000,
        scan_interval_ms: 50,
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = weir_broker::start(BrokerConfig {
        listen: "127.0.0.1:0".into(),
        namesrv: ns.local_addr().to_string(),
        broker_name: "broker-a".into(),
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

/// Runs `weir` off the async threads (the broker runs on them). The name server given is
/// unused by `filter test`.
pub async fn weir(namesrv: &str, args: &[&str], stdin: Option<&str>) -> Output {
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
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            // A run that fails before reading its input closes the pipe early.
            let _ = input.write_all(text.as_bytes());
        }
        drop(input);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "weir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A failed run: its one line on stderr.
pub fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "weir succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("weir: "), "{err}");
    err
}

pub fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls until the name server routes `topic`.
pub async fn wait_route(namesrv: &str, topic: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if weir(namesrv, &["topic", "route", topic], None)
            .await
            .status
            .success()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic} never routed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
