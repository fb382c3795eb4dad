//! The broker as a child process, SIGKILLed and restarted on its data folder (on the same
//! port, so the producers' half message addresses stay valid, and registering with a name
//! server that lives in this process throughout).
//!
//! A kill between a commit and its dispatch cannot be timed from outside: the stream test
//! kills at random moments while transactions are being decided, many times a second, and
//! checks exactly-once of the committed set after each restart's repairs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_tests::child::{ChildBroker, ChildSettings, write_config};
use weir_tests::tx_producer::TxProducer;
use weir_tests::{Client, Rng, T, assert_keys};

use crate::{SETTLE, create_topic, drain_expr, env_u64, keys, keys_once, seed, wait_all_decided};

/// A name server here, a broker in a child process on a fixed port.
struct KillEnv {
    _ns: weir_namesrv::RunningNameServer,
    ns: String,
    config: PathBuf,
    broker: Option<ChildBroker>,
    _dir: tempfile::TempDir,
}

/// A port free right now (bound, then let go): the broker's across restarts.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl KillEnv {
    async fn start() -> KillEnv {
        let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
            listen: "127.0.0.1:0".into(),
            broker_expiry_ms: 120_000,
            scan_interval_ms: 50,
            ..Default::default()
        })
        .await
        .expect("name server starts");
        let addr = ns.local_addr().to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(
            dir.path(),
            &ChildSettings {
                // A SIGKILL keeps what is in the page cache: async flush loses nothing here
                // (the store's own kill test covers sync flush).
                flush_mode: "async",
                commit_log_segment_size: 1 << 20,
                listen: format!("127.0.0.1:{}", free_port()),
                namesrv: Some(addr.clone()),
                broker_keys: "transaction_timeout_ms = 300\ntransaction_check_interval_ms = 200\n"
                    .into(),
                ..ChildSettings::default()
            },
        );
        let broker = ChildBroker::start(&config).await;
        KillEnv {
            _ns: ns,
            ns: addr,
            config,
            broker: Some(broker),
            _dir: dir,
        }
    }

    fn broker_addr(&self) -> String {
        self.broker.as_ref().expect("broker running").broker.clone()
    }

    /// SIGKILLs the broker and starts it again (recovery included).
    async fn kill_and_restart(&mut self) -> Duration {
        if let Some(b) = self.broker.take() {
            b.kill();
        }
        let started = Instant::now();
        self.broker = Some(ChildBroker::start(&self.config).await);
        started.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_between_half_and_decision() {
    let mut k = KillEnv::start().await;
    create_topic(&k.ns, "TxB", 2).await;
    let mut p = TxProducer::start(&k.ns, "GB", "TxB", true).await;
    p.send("a~u", "block");
    p.send("b~u", "block");
    p.send("c~c", "unknown");
    p.send("d~r", "unknown");
    p.until("two halves held, two sent", T, |p| {
        p.half_stored("a~u") && p.half_stored("b~u") && p.sent().len() == 2
    })
    .await;

    k.kill_and_restart().await;
    // The local transactions end after the restart: their decisions go to the restarted
    // broker (the connection is opened again), the other two are asked about.
    p.release("a~u", "commit");
    p.release("b~u", "rollback");
    p.until("both decisions sent", T, |p| p.sent().len() == 4)
        .await;
    for key in ["a~u", "b~u"] {
        let s = p.sent_of(key).expect("sent");
        assert!(
            s.end_ok,
            "{key}: the decision reached the restarted broker: {s:?}"
        );
    }
    wait_all_decided(&k.ns, "GB").await;
    let expected = keys(["a~u", "c~c"]);
    let c = Client::connect(&k.broker_addr()).await;
    let got = drain_expr(&c, "G0", "TxB", 2, "*").await;
    assert_keys(&keys_once(&got, "G0"), &expected, "after the restart");

    // Restarted again: no rolled back message comes back, no committed one twice, nothing
    // pending again.
    k.kill_and_restart().await;
    let c = Client::connect(&k.broker_addr()).await;
    let got = drain_expr(&c, "G0", "TxB", 2, "*").await;
    assert_keys(&keys_once(&got, "G0"), &expected, "after another restart");
    wait_all_decided(&k.ns, "GB").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_under_a_stream_of_transactions() {
    let kills = env_u64("WEIR_TX_KILLS", 5);
    let seed = seed("broker_killed_under_a_stream_of_transactions");
    let mut rng = Rng::new(seed);
    let mut k = KillEnv::start().await;
    create_topic(&k.ns, "TxS", 4).await;
    // One-way decisions, as RocketMQ sends them: a kill loses some, and the check-back
    // recovers them.
    let p = Arc::new(Mutex::new(
        TxProducer::start(&k.ns, "GS", "TxS", false).await,
    ));

    // The stream: a few transactions every millisecond or so (the producer runs up to 64 at
    // once), until stopped.
    const PER_TICK: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (p, stop) = (Arc::clone(&p), Arc::clone(&stop));
        let mut rng = Rng::new(seed ^ 0x5eed);
        tokio::spawn(async move {
            let mut keys = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..PER_TICK {
                    let (answer, outcome) = match rng.below(100) {
                        0..50 => ("c", "commit"),
                        50..70 => ("r", "rollback"),
                        70..85 => ("c", "unknown"),
                        _ => ("r", "unknown"),
                    };
                    let key = format!("s{}~{answer}", keys.len());
                    p.lock().expect("producer").send(&key, outcome);
                    keys.push(key);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            keys
        })
    };
    let mut restarts = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
        restarts.push(k.kill_and_restart().await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let sent_keys = feeder.await.expect("feeder");

    let total = sent_keys.len();
    let mut p = Arc::into_inner(p)
        .expect("the feeder is done")
        .into_inner()
        .expect("producer");
    p.until("every send ended", SETTLE, |p| {
        p.sent().len() + p.failed().len() == total
    })
    .await;
    // Its groups are known to the restarted broker already (its sends reconnected); one
    // more heartbeat does no harm.
    p.heartbeat();
    wait_all_decided(&k.ns, "GS").await;

    let c = Client::connect(&k.broker_addr()).await;
    let got = drain_expr(&c, "G0", "TxS", 4, "*").await;
    let visible = keys_once(&got, "the topic");
    let acked: BTreeSet<String> = p.sent().into_iter().map(|s| s.key).collect();
    let failed: BTreeSet<String> = p.failed().into_iter().collect();
    let wrong: Vec<&String> = visible.iter().filter(|k| !k.ends_with("~c")).collect();
    assert!(wrong.is_empty(), "rolled back yet visible: {wrong:?}");
    let must: BTreeSet<String> = acked
        .iter()
        .filter(|k| k.ends_with("~c"))
        .cloned()
        .collect();
    let lost: Vec<&String> = must.difference(&visible).collect();
    assert!(
        lost.is_empty(),
        "committed (the half acknowledged) yet not visible: {lost:?}"
    );
    let unknown_visible = visible.iter().filter(|k| failed.contains(*k)).count();
    println!(
        "broker kills: {kills} (restarts {restarts:.1?}); {total} transactions, {} acknowledged, {} failed ({unknown_visible} of them committed anyway), {} visible once each, {} check-backs; seed {seed}",
        acked.len(),
        failed.len(),
        visible.len(),
        p.checked().len()
    );
}
