//! Shared by the CLI's integration tests: an in-process name server and broker on
//! ephemeral ports with temporary data, and runs of the `weir` binary against them.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
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
    env_with(|_| {}).await
}

/// An environment whose broker's settings `adjust` changes first.
pub async fn env_with(adjust: impl FnOnce(&mut BrokerConfig)) -> Env {
    let ns = weir_namesrv::start(NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        broker_expiry_ms: 120_000,
        scan_interval_ms: 50,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".into(),
        namesrv: ns.local_addr().to_string(),
        broker_name: "broker-a".into(),
        store: StoreConfig {
            commit_log_segment_size: 4 << 20,
            consume_queue_segment_entries: 4096,
            index_slots: 4096,
            index_entries: 65536,
            // The machine's own disk must not decide these tests (a storage test sets its own).
            disk_max_used_ratio: 1.0,
            disk_full_ratio: 1.0,
            ..StoreConfig::new(dir.path())
        },
        ..BrokerConfig::default()
    };
    adjust(&mut config);
    let broker = weir_broker::start(config).await.unwrap();
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
    weir_env(namesrv, args, stdin, &[]).await
}

/// [`weir`] with environment variables set for it (the access key and TLS variables are
/// removed unless given).
pub async fn weir_env(
    namesrv: &str,
    args: &[&str],
    stdin: Option<&str>,
    vars: &[(&str, &str)],
) -> Output {
    let (namesrv, args, stdin) = (
        namesrv.to_owned(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        stdin.map(str::to_owned),
    );
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("--namesrv")
            .arg(&namesrv)
            .args(&args)
            .env_remove("WEIR_ACCESS_KEY")
            .env_remove("WEIR_SECRET_KEY")
            .env_remove("WEIR_TLS_CA")
            .envs(vars)
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

/// A `weir` process left running (a consumer), its output collected line by line as it
/// comes. Killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn spawn(namesrv: &str, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .arg("--namesrv")
            .arg(namesrv)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, lines) = (child.stdout.take().unwrap(), Arc::clone(&stdout));
        let mut readers = vec![std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                lines.lock().unwrap().push(line);
            }
        })];
        let (err, text) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        }));
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// After the process ended: waits until its output is all collected.
    fn drain(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The lines printed so far, as JSON.
    pub fn json(&self) -> Vec<serde_json::Value> {
        json_lines(&self.lines().join("\n"))
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGINT, as Ctrl-C sends.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and waits for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
    }

    /// Whether the process has ended, with its status.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to end on its own, up to `limit`.
    pub async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.try_wait() {
                self.drain();
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "weir did not end within {limit:?}; stderr: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
