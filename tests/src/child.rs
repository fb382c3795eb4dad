//! Child processes of a test: the test binary run again on one of its own `#[ignore]`d
//! tests, which reads what to do from the environment. [`ChildProcess`] is the generic
//! part (spawn, collect stdout lines, SIGKILL); [`ChildBroker`] runs a broker from a TOML
//! file (the test binary must have an ignored test [`CHILD_BROKER_TEST`] that calls
//! [`run_broker`]).
//!
//! A child exits when its stdin ends, so one whose parent died (killed itself) does not
//! linger; a handle SIGKILLs its child when dropped, so a failing test leaves no process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_broker::BrokerConfig;

/// The ignored test a broker child runs.
pub const CHILD_BROKER_TEST: &str = "child_broker";
/// The broker child reads its configuration file from here.
pub const CONFIG_ENV: &str = "WEIR_CRASH_CHILD_CONFIG";
/// The line the broker child prints once it serves: `<READY> <name server> <broker>`.
const READY: &str = "WEIR-CRASH-CHILD-READY";
/// How long a start (or a restart: recovery) may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running child: its stdin (ends when dropped) and its stdout lines as they come.
pub struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    /// The thread that collects `lines`: done once the child's stdout ends.
    reader: std::thread::JoinHandle<()>,
}

impl ChildProcess {
    /// Runs this test binary on the ignored test `test` with `envs`.
    pub fn spawn(test: &str, envs: &[(&str, &str)]) -> ChildProcess {
        let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
        cmd.args([
            test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn a child process");
        let stdout = child.stdout.take().expect("child stdout");
        let stdin = child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        // Reads the child's stdout to its end (so the child never blocks on a full pipe).
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                collected.lock().expect("lines").push(line);
            }
        });
        ChildProcess {
            child,
            stdin,
            lines,
            reader,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the child's stdin is open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("write to the child");
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        // (A lock poisoned by a panicking `find` still holds the lines, wanted then most.)
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The first line so far that `pick` maps to something.
    pub fn find<T>(&self, mut pick: impl FnMut(&str) -> Option<T>) -> Option<T> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .find_map(|l| pick(l))
    }

    /// Waits (blocking) for the first line `pick` maps to something; panics with `what`
    /// after `timeout` or when the child exits first.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.find(&mut pick) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Lines may still be on their way.
                std::thread::sleep(Duration::from_millis(50));
                if let Some(v) = self.find(&mut pick) {
                    return v;
                }
                panic!("the child exited ({status}) before {what}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for the child: {what}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Most of a child's last stdout lines shown when a test fails.
const LINES_SHOWN_ON_FAILURE: usize = 200;

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what its children logged (a broker child logs warnings
        // and errors by default, see `run_broker`): otherwise lost with the child.
        if std::thread::panicking() {
            // The last lines, the likeliest to tell why, may still be in the pipe.
            let deadline = Instant::now() + Duration::from_secs(1);
            while !self.reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let lines = self.lines();
            let from = lines.len().saturating_sub(LINES_SHOWN_ON_FAILURE);
            eprintln!(
                "--- child process {} (test failed): its last {} of {} stdout lines ---",
                self.child.id(),
                lines.len() - from,
                lines.len()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }
}

/// Exits the process when stdin ends: a child whose parent is gone ends too. Call first
/// thing in a child (it takes stdin: use `lines_then_exit` for a child that reads it).
pub fn exit_when_stdin_ends() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(3);
    });
}

/// What the broker is run with: what a `weir-broker --config` file would hold.
#[derive(Debug, Clone)]
pub struct ChildSettings {
    pub commit_log_segment_size: u64,
    pub consume_queue_segment_entries: u64,
    /// Whether the next commit log segment is created ahead, in the background, or by the
    /// append that needs it (a different moment for a kill to land in).
    pub prepare_ahead: bool,
    /// `"sync"` or `"async"`.
    pub flush_mode: &'static str,
    /// Where the broker listens (`127.0.0.1:0`: a new ephemeral port each start).
    pub listen: String,
    /// The name servers to register with; `None`: an embedded one on an ephemeral port.
    pub namesrv: Option<String>,
    /// More top-level (broker) keys of the TOML file, e.g. `transaction_timeout_ms = 300`.
    pub broker_keys: String,
}

impl Default for ChildSettings {
    fn default() -> Self {
        ChildSettings {
            commit_log_segment_size: 4 << 20,
            consume_queue_segment_entries: 4096,
            prepare_ahead: true,
            flush_mode: "sync",
            listen: "127.0.0.1:0".into(),
            namesrv: None,
            broker_keys: String::new(),
        }
    }
}

/// A TOML string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes `<dir>/broker.toml` (data in `<dir>/data`) and returns its path.
pub fn write_config(dir: &Path, s: &ChildSettings) -> PathBuf {
    let data = dir.join("data");
    let data = data.to_str().expect("a UTF-8 temp path");
    let namesrv = s
        .namesrv
        .as_deref()
        .map(|n| format!("namesrv = {}\n", toml_str(n)))
        .unwrap_or_default();
    let toml = format!(
        r#"# weir test: a broker in a child process.
listen = {listen}
{namesrv}{extra}

[store]
data_dir = {data}
flush_mode = "{flush}"
commit_log_segment_size = {seg}
consume_queue_segment_entries = {cq}
index_slots = 256
index_entries = 1024
# Consumer offsets and the checkpoint are written this often: several times a round.
checkpoint_interval_ms = 200
prepare_ahead = {ahead}
# Never delete for disk pressure: every message must stay readable from offset 0.
disk_max_used_ratio = 1.0
disk_full_ratio = 1.0

[filter]
workers = 1
"#,
        listen = toml_str(&s.listen),
        extra = s.broker_keys,
        data = toml_str(data),
        flush = s.flush_mode,
        seg = s.commit_log_segment_size,
        cq = s.consume_queue_segment_entries,
        ahead = s.prepare_ahead,
    );
    let path = dir.join("broker.toml");
    std::fs::write(&path, toml).expect("write the broker's config");
    path
}

/// The broker child's body: runs a broker (with an embedded name server unless the file
/// names one) until it is killed. It logs to stdout when `RUST_LOG` is set, as
/// [`ChildBroker`] sets it (`warn`) unless the test's own is.
pub fn run_broker(config_path: &Path) {
    exit_when_stdin_ends();
    if std::env::var_os("RUST_LOG").is_some() {
        weir_namesrv::server_main::init_logging();
    }
    let mut config: BrokerConfig =
        weir_namesrv::server_main::read_toml(config_path).expect("the broker's config parses");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut embedded = None;
        if config.namesrv.is_empty() {
            let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            })
            .await
            .expect("the embedded name server starts");
            config.namesrv = ns.local_addr().to_string();
            embedded = Some(ns);
        }
        let namesrv = config.namesrv.clone();
        let broker = weir_broker::start(config)
            .await
            .expect("the broker starts (recovers) on its data folder");
        println!("\n{READY} {namesrv} {}", broker.local_addr());
        std::future::pending::<()>().await;
        drop(embedded);
    });
}

/// A running child broker; killed (SIGKILL) when dropped.
pub struct ChildBroker {
    child: ChildProcess,
    pub namesrv: String,
    pub broker: String,
}

impl ChildBroker {
    /// Starts the child on `config` and waits until it serves.
    pub async fn start(config: &Path) -> ChildBroker {
        let config = config.to_owned();
        tokio::task::spawn_blocking(move || Self::start_blocking(&config))
            .await
            .expect("child start task")
    }

    /// Starts the child on `config` and SIGKILLs it once it serves or `within` has passed,
    /// whichever comes first (a kill during start-up and recovery). True if it served.
    pub async fn start_and_kill_within(config: &Path, within: Duration) -> bool {
        let config = config.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut child = Self::spawn(&config);
            let deadline = Instant::now() + within;
            let served = loop {
                if child.find(ready).is_some() {
                    break true;
                }
                if !child.is_running() {
                    panic!("the child broker exited while starting");
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            child.kill();
            served
        })
        .await
        .expect("child start task")
    }

    fn start_blocking(config: &Path) -> ChildBroker {
        let mut child = Self::spawn(config);
        let line = child.wait_for("the broker serves", START_TIMEOUT, ready);
        let mut addrs = line.split_whitespace().map(str::to_owned);
        ChildBroker {
            namesrv: addrs.next().expect("name server address"),
            broker: addrs.next().expect("broker address"),
            child,
        }
    }

    fn spawn(config: &Path) -> ChildProcess {
        let config = config.to_str().expect("a UTF-8 config path");
        // Warnings and errors at least, kept to be shown if the test fails (the parent's
        // `RUST_LOG`, inherited, when set).
        match std::env::var_os("RUST_LOG") {
            Some(_) => ChildProcess::spawn(CHILD_BROKER_TEST, &[(CONFIG_ENV, config)]),
            None => ChildProcess::spawn(
                CHILD_BROKER_TEST,
                &[(CONFIG_ENV, config), ("RUST_LOG", "warn")],
            ),
        }
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(mut self) {
        self.child.kill();
    }
}

/// The addresses of a READY line.
fn ready(line: &str) -> Option<String> {
    line.find(READY)
        .map(|at| line[at + READY.len()..].trim().to_owned())
}
