//! Shared by the client's integration tests: an in-process name server and brokers on
//! ephemeral ports with temporary data, and a client of them.

use std::time::Duration;

use weir_broker::{BrokerConfig, RunningBroker};
use weir_client::{Admin, ClientConfig, ClientInstance};
use weir_namesrv::{NamesrvConfig, RunningNameServer};
use weir_store::StoreConfig;

pub async fn namesrv() -> RunningNameServer {
    weir_namesrv::start(NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        broker_expiry_ms: 120_000,
        scan_interval_ms: 50,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[allow(dead_code)]
pub async fn broker(dir: &std::path::Path, name: &str, namesrv: &str) -> RunningBroker {
    broker_with(dir, name, namesrv, |_| {}).await
}

/// A broker whose config `tweak` adjusts (e.g. short delay levels).
#[allow(dead_code)]
pub async fn broker_with(
    dir: &std::path::Path,
    name: &str,
    namesrv: &str,
    tweak: impl FnOnce(&mut BrokerConfig),
) -> RunningBroker {
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".into(),
        namesrv: namesrv.into(),
        broker_name: name.into(),
        default_topic_queues: 4,
        store: StoreConfig {
            commit_log_segment_size: 4 << 20,
            consume_queue_segment_entries: 4096,
            index_slots: 4096,
            index_entries: 65536,
            // The machine's own disk must not decide these tests (a storage test sets its own).
            disk_max_used_ratio: 1.0,
            disk_full_ratio: 1.0,
            ..StoreConfig::new(dir.join(name))
        },
        ..BrokerConfig::default()
    };
    tweak(&mut config);
    weir_broker::start(config).await.unwrap()
}

/// Polls `done` every 10 ms until it holds; fails with `what` after `secs` seconds.
#[allow(dead_code)]
pub async fn eventually(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn client(namesrv: &str) -> ClientInstance {
    let mut c = ClientConfig::new(namesrv);
    c.request_timeout = Duration::from_secs(5);
    ClientInstance::new(c).unwrap()
}

/// Polls until the name server routes `topic` to `brokers` brokers.
pub async fn wait_route(admin: &Admin, topic: &str, brokers: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if admin
            .route(topic)
            .await
            .is_ok_and(|r| r.brokers.len() == brokers)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "route of {topic} never reached {brokers} brokers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
