//! `weir cluster list`: a master and its slave, with roles, replication lag and state.

use std::time::{Duration, Instant};

use crate::common::{env_with, json_lines, ok, weir};
use weir_broker::BrokerConfig;
use weir_protocol::ha::BrokerRole;
use weir_store::StoreConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_list_shows_roles_and_lag() {
    let e = env_with(|c| {
        c.role = BrokerRole::SyncMaster;
        c.ha_listen = Some("127.0.0.1:0".into());
        c.register_interval_ms = 100;
    })
    .await;
    let ns = e.namesrv.as_str();
    let dir = tempfile::tempdir().unwrap();
    let _slave = weir_broker::start(BrokerConfig {
        listen: "127.0.0.1:0".into(),
        namesrv: ns.to_owned(),
        broker_name: "broker-a".into(),
        broker_id: 1,
        role: BrokerRole::Slave,
        register_interval_ms: 100,
        store: StoreConfig {
            disk_max_used_ratio: 1.0,
            disk_full_ratio: 1.0,
            ..StoreConfig::new(dir.path())
        },
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    ok(&weir(ns, &["topic", "create", "Lag", "--queues", "1"], None).await);
    ok(&weir(ns, &["send", "Lag", "--body", "hello"], None).await);
    // Both report themselves replicating, caught up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = json_lines(&ok(&weir(ns, &["cluster", "list", "--json"], None).await));
        let caught_up = rows.len() == 2
            && rows
                .iter()
                .all(|r| r["connected"] == 1 && r["lag_bytes"] == 0);
        if caught_up {
            break rows;
        }
        assert!(Instant::now() < deadline, "not caught up: {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows[0]["id"], 0);
    assert_eq!(rows[0]["role"], "sync-master");
    assert!(
        rows[0]["ha_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    assert_eq!(rows[1]["id"], 1);
    assert_eq!(rows[1]["role"], "slave");
    assert_eq!(rows[1]["lag_seconds"], 0.0);
    assert!(rows[1]["diverged"].is_null());
    let table = ok(&weir(ns, &["cluster", "list"], None).await);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].split_whitespace().eq([
            "CLUSTER",
            "BROKER",
            "ID",
            "ADDRESS",
            "ROLE",
            "LAG_BYTES",
            "LAG_SECONDS",
            "STATE"
        ]),
        "{table}"
    );
    assert!(
        lines[1].contains("sync-master") && lines[1].ends_with("1 slave(s)"),
        "{table}"
    );
    assert!(
        lines[2].contains(" slave ") && lines[2].ends_with("replicating"),
        "{table}"
    );
}
