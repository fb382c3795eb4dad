//! The README's run command, for real: the `weir-broker` binary standalone (its own name
//! server), stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_protocol::broker::{PullMessage, PullStatus, SendMessage, split_records};
use weir_protocol::route::GetRoute;
use weir_protocol::{ConnConfig, Connection, NoHandler, RecordView};

/// Kills the child if the test fails before stopping it.
struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name))
}

#[test]
fn standalone_broker_binary_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_weir-broker"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--standalone-namesrv",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        // The CLI's variable, exported as the README suggests: the broker stays standalone.
        .env("WEIR_NAMESRV", "127.0.0.1:1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut broker = Running(child);
    let mut lines = BufReader::new(broker.0.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (broker_addr, namesrv) = loop {
        assert!(
            Instant::now() < deadline,
            "the broker never said it was listening"
        );
        let line = lines.next().expect("broker exited").unwrap();
        if line.contains("listening") {
            assert!(line.contains("embedded_name_server=true"), "{line}");
            assert!(line.contains("data="), "{line}");
            break (
                field(&line, "broker=").unwrap().to_owned(),
                field(&line, "name_servers=").unwrap().to_owned(),
            );
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let t = Duration::from_secs(10);
        let conn = Connection::connect(&broker_addr, Arc::new(NoHandler), ConnConfig::default(), t)
            .await
            .unwrap();
        let send = SendMessage {
            producer_group: "pg".into(),
            topic: "Hello".into(),
            queue_id: 0,
            tags: String::new(),
            keys: vec![],
            properties: vec![],
            flag: 0,
            born_timestamp: 0,
            sys_flag: 0,
            reconsume_times: 0,
            max_reconsume_times: None,
        };
        conn.call(&send, Bytes::from_static(b"hi there"), t)
            .await
            .unwrap();
        let pull = PullMessage {
            group: "g".into(),
            topic: "Hello".into(),
            queue_id: 0,
            offset: 0,
            max_msgs: 8,
            expression: "*".into(),
            suspend_ms: 0,
            commit_offset: None,
        };
        let (r, body) = conn.call(&pull, Bytes::new(), t).await.unwrap();
        assert_eq!(r.status, PullStatus::Found);
        let records = split_records(&body).unwrap();
        assert_eq!(RecordView::parse(records[0]).unwrap().body(), b"hi there");
        // The embedded name server routes the auto-created topic to this broker.
        let ns = Connection::connect(&namesrv, Arc::new(NoHandler), ConnConfig::default(), t)
            .await
            .unwrap();
        let deadline = Instant::now() + t;
        loop {
            if let Ok((route, _)) = ns
                .call(
                    &GetRoute {
                        topic: "Hello".into(),
                    },
                    Bytes::new(),
                    t,
                )
                .await
            {
                assert_eq!(route.brokers[0].master_addr(), Some(broker_addr.as_str()));
                break;
            }
            assert!(Instant::now() < deadline, "no route for Hello");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&broker.0),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = broker.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("stopped cleanly")),
        "{rest:?}"
    );
    assert!(
        !dir.path().join("data/running").exists(),
        "the clean-stop marker was not cleared"
    );
}

#[test]
fn broker_binary_reads_a_toml_config_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-toml");
    let cfg = dir.path().join("broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nbroker_name = \"from-file\"\nnamesrv = \"127.0.0.1:1\"\n\n[store]\ndata_dir = {:?}\nflush_mode = \"sync\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_weir-broker"))
        .arg("--config")
        .arg(&cfg)
        .args(["--cluster", "FromFlag"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut broker = Running(child);
    let mut lines = BufReader::new(broker.0.stdout.take().unwrap()).lines();
    let line = loop {
        let line = lines.next().expect("broker exited").unwrap();
        if line.contains("listening") {
            break line;
        }
    };
    assert!(line.contains("FromFlag/from-file"), "{line}");
    assert!(line.contains("flush=Sync"), "{line}");
    assert!(line.contains("embedded_name_server=false"), "{line}");
    assert!(data.join("commitlog").exists());

    // A bad key is refused with the file named.
    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir-broker"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.toml") && err.contains("no_such_key"),
        "{err}"
    );
}

/// Starts the binary standalone on a data folder under `dir`, logging at info, with `envs`;
/// returns once it says it is starting, with the rest of its stdout.
fn start_standalone(
    dir: &std::path::Path,
    envs: &[(&str, &str)],
) -> (
    Running,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-broker"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--standalone-namesrv",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir.join("data"))
    .env("RUST_LOG", "info")
    .env_remove("MIMALLOC_ALLOW_THP")
    .envs(envs.iter().copied())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut broker = Running(cmd.spawn().unwrap());
    let mut lines = BufReader::new(broker.0.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("broker exited").unwrap();
        if line.contains("starting") {
            break;
        }
    }
    (broker, lines)
}

#[test]
fn a_sigterm_while_starting_stops_cleanly() {
    // Each run is stopped right after the broker says it is starting: while its store
    // opens and its name server and listener come up.
    for delay_us in [0u64, 500, 2_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let (mut broker, lines) = start_standalone(dir.path(), &[]);
        std::thread::sleep(Duration::from_micros(delay_us));
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&broker.0),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let status = broker.0.wait().unwrap();
        assert!(
            status.success(),
            "stopped {delay_us} µs into its start: {status:?}"
        );
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(
            rest.iter().any(|l| l.contains("stopped cleanly")),
            "{delay_us} µs: {rest:?}"
        );
        assert!(
            !dir.path().join("data/running").exists(),
            "{delay_us} µs into its start: the store was left open"
        );
    }
}

/// The kernel's `THP_enabled` line of a process (`None` on kernels without it, before 5.0).
fn thp_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim() == "1")
}

#[test]
fn the_heap_stays_on_small_pages_unless_mimalloc_is_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _lines) = start_standalone(dir.path(), &[]);
    let Some(enabled) = thp_enabled(broker.0.id()) else {
        return;
    };
    assert!(
        !enabled,
        "transparent huge pages are still on for the broker"
    );
    drop(broker);

    // mimalloc's own switch, when set, decides (here: huge pages allowed, as the system
    // has them, where the kernel has them at all).
    if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, _lines) = start_standalone(dir.path(), &[("MIMALLOC_ALLOW_THP", "1")]);
        assert_eq!(thp_enabled(broker.0.id()), Some(true));
    }
}
