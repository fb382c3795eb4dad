//! A broker as a child process, for tests that SIGKILL one: the test binary re-run on its
//! ignored test `child_broker` (each binary using this declares one calling [`run`]), which
//! starts a broker from a TOML file (what `weir-broker --config` reads) and prints its
//! addresses on one line of stdout. With no name server in the file, it runs standalone:
//! an embedded name server on an ephemeral port of 127.0.0.1 beside the broker.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use weir_broker::BrokerConfig;

/// The child reads its configuration file from here.
pub const CONFIG_ENV: &str = "WEIR_CHILD_BROKER_CONFIG";
/// The line the child prints once it serves: `<READY> <name server> <broker>`.
const READY: &str = "WEIR-CHILD-BROKER-READY";
/// How long a start (or a restart: recovery) may take.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The body of a test binary's ignored `child_broker` test.
pub fn child_main() {
    if let Some(config) = std::env::var_os(CONFIG_ENV) {
        run(Path::new(&config));
    }
}

/// The child's body: runs a standalone broker until it is killed.
pub fn run(config_path: &Path) {
    // The parent holds our stdin open: should it die without killing us (itself killed,
    // say), stdin ends and so do we.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(3);
    });
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
        let ns = match config.namesrv.is_empty() {
            true => {
                let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
                    listen: "127.0.0.1:0".into(),
                    ..Default::default()
                })
                .await
                .expect("the embedded name server starts");
                config.namesrv = ns.local_addr().to_string();
                Some(ns)
            }
            false => None,
        };
        let namesrv = config.namesrv.clone();
        let broker = weir_broker::start(config)
            .await
            .expect("the broker starts (recovers) on its data folder");
        println!("\n{READY} {namesrv} {}", broker.local_addr());
        std::future::pending::<()>().await;
        drop(ns);
    });
}

/// A running child broker; killed (SIGKILL) when dropped, so a failing test leaves no
/// process behind.
pub struct ChildBroker {
    child: Child,
    /// Dropped after the child is killed: its end tells an orphaned child to exit.
    _stdin: Option<ChildStdin>,
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
            let (mut me, ready) = Self::spawn(&config);
            let served = match ready.recv_timeout(within) {
                Ok(_) => true,
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = me.child.wait();
                    panic!("the child broker exited while starting (exit status {status:?})")
                }
            };
            me.kill();
            served
        })
        .await
        .expect("child start task")
    }

    fn start_blocking(config: &Path) -> ChildBroker {
        let (mut me, ready) = Self::spawn(config);
        let line = match ready.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let status = me.child.try_wait();
                panic!("the child broker did not start ({e}; exit status {status:?})")
            }
        };
        let mut addrs = line.split_whitespace().map(str::to_owned);
        me.namesrv = addrs.next().expect("name server address");
        me.broker = addrs.next().expect("broker address");
        me
    }

    /// Spawns the child; the receiver gets its addresses once it serves.
    fn spawn(config: &Path) -> (ChildBroker, mpsc::Receiver<String>) {
        let mut child = Command::new(std::env::current_exe().expect("current exe"))
            .args([
                "child_broker",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CONFIG_ENV, config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child broker");
        let stdout = child.stdout.take().expect("child stdout");
        let stdin = child.stdin.take();
        let me = ChildBroker {
            child,
            _stdin: stdin,
            namesrv: String::new(),
            broker: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        // Reads the child's stdout to its end (so the child never blocks on a full pipe).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find(READY) {
                    let _ = tx.send(line[at + READY.len()..].trim().to_owned());
                }
            }
        });
        (me, rx)
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the child broker");
        let status = self.child.wait().expect("reap the child broker");
        assert!(!status.success(), "the child was killed, not stopped");
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
