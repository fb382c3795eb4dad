//! The cluster under test: a name server in this process, brokers as child processes
//! (`weir_tests::child`) on ephemeral ports of 127.0.0.1, each with its own data folder in
//! one temporary folder; slaves learn their master's HA address from the name server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_client::{ClientConfig, ClientInstance};
use weir_protocol::ha::HaStatus;
use weir_tests::child::ChildBroker;
use weir_tests::eventually_for;

/// How long a cluster may take to settle (start, replicate, fail over).
pub const SETTLE: Duration = Duration::from_secs(30);

pub struct Node {
    pub name: String,
    pub id: u64,
    config: PathBuf,
    child: Option<ChildBroker>,
    /// Where it serves (it changes on a restart: ephemeral ports).
    pub addr: String,
}

impl Node {
    /// Writes `<dir>/<name>-<id>.toml` and starts the broker on it. `namesrv` empty: a
    /// standalone broker (its own name server).
    pub async fn start(dir: &Path, namesrv: &str, name: &str, role: &str) -> Node {
        let id = u64::from(role == "slave");
        Self::start_in(dir, &format!("{name}-{id}"), namesrv, name, role).await
    }

    /// Like `start`, with its files named `stem`.
    pub async fn start_in(dir: &Path, stem: &str, namesrv: &str, name: &str, role: &str) -> Node {
        let id = u64::from(role == "slave");
        let data = dir.join(stem);
        let config = dir.join(format!("{stem}.toml"));
        Self::write_config(&config, &data, namesrv, name, role);
        let child = ChildBroker::start(&config).await;
        Node {
            name: name.to_owned(),
            id,
            config,
            addr: child.broker.clone(),
            child: Some(child),
        }
    }

    /// Runs this node's data folder as `role`, registered with `namesrv`.
    pub async fn restart_as(&mut self, namesrv: &str, role: &str) {
        self.kill();
        let data = self.data_dir();
        Self::write_config(&self.config, &data, namesrv, &self.name, role);
        self.id = u64::from(role == "slave");
        self.restart().await;
    }

    fn data_dir(&self) -> PathBuf {
        let stem = self
            .config
            .file_stem()
            .map(|s| s.to_owned())
            .unwrap_or_default();
        self.config.with_file_name(stem)
    }

    fn write_config(path: &Path, data: &Path, namesrv: &str, name: &str, role: &str) {
        let id = u64::from(role == "slave");
        let ha = match role {
            "slave" => "",
            _ => "ha_listen = \"127.0.0.1:0\"\n",
        };
        let data = data.to_str().expect("a UTF-8 temp path");
        let toml = format!(
            r#"listen = "127.0.0.1:0"
namesrv = "{namesrv}"
cluster = "TestCluster"
broker_name = "{name}"
broker_id = {id}
role = "{role}"
{ha}register_interval_ms = 300
slave_ack_timeout_ms = 3000

[store]
data_dir = "{data}"
commit_log_segment_size = 1048576
consume_queue_segment_entries = 4096
index_slots = 1024
index_entries = 8192
checkpoint_interval_ms = 200
disk_max_used_ratio = 1.0
disk_full_ratio = 1.0

[filter]
workers = 1
"#
        );
        std::fs::write(path, toml).expect("write a broker's config");
    }

    /// SIGKILLs the broker (if running).
    pub fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            c.kill();
        }
    }

    /// Starts the broker again on its data folder.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        let child = ChildBroker::start(&self.config).await;
        self.addr = child.broker.clone();
        self.child = Some(child);
    }

    /// A raw connection to the broker.
    pub async fn raw(&self) -> weir_tests::Client {
        weir_tests::Client::connect(&self.addr).await
    }
}

/// A client that notices failures and returns quickly (short route life, short pauses).
pub fn fast_client(namesrv: &str) -> ClientInstance {
    let mut config = ClientConfig::new(namesrv);
    config.route_refresh = Duration::from_secs(1);
    config.fault_backoff_min = Duration::from_millis(200);
    config.fault_backoff_max = Duration::from_secs(1);
    ClientInstance::new(config).expect("client")
}

pub struct Cluster {
    _ns: weir_namesrv::RunningNameServer,
    pub namesrv: String,
    pub client: ClientInstance,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn new() -> Cluster {
        let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
            listen: "127.0.0.1:0".into(),
            broker_expiry_ms: 10_000,
            scan_interval_ms: 100,
            ..Default::default()
        })
        .await
        .expect("name server starts");
        let namesrv = ns.local_addr().to_string();
        Cluster {
            client: fast_client(&namesrv),
            namesrv,
            _ns: ns,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub async fn node(&self, name: &str, role: &str) -> Node {
        Node::start(self.dir.path(), &self.namesrv, name, role).await
    }

    /// Each broker id's replication status for `name`, as the name server has it.
    pub async fn status(&self, name: &str) -> Vec<(u64, HaStatus)> {
        let info = weir_client::Admin::new(self.client.clone())
            .cluster()
            .await
            .expect("cluster info");
        info.brokers
            .into_iter()
            .find(|b| b.broker_name == name)
            .map(|b| b.status)
            .unwrap_or_default()
    }

    /// Waits until `name`'s master reports a connected slave that is caught up, and the
    /// slave reports itself connected and caught up.
    pub async fn wait_in_sync(&self, name: &str) {
        eventually_for(
            &format!("{name}: slave connected, caught up"),
            SETTLE,
            async || {
                let s = self.status(name).await;
                let master = s.iter().find(|(id, _)| *id == 0);
                let slave = s.iter().find(|(id, _)| *id == 1);
                matches!((master, slave), (Some((_, m)), Some((_, sl)))
                if m.connected >= 1 && m.lag_bytes == 0 && sl.connected == 1 && sl.lag_bytes == 0)
            },
        )
        .await;
    }

    /// Waits until `node` knows `topic` (a slave copies topics from its master).
    pub async fn wait_topic(&self, node: &Node, topic: &str) {
        eventually_for(&format!("{} has {topic}", node.addr), SETTLE, async || {
            node.raw().await.pull("probe", topic, 0, 0, 0).await.is_ok()
        })
        .await;
    }
}
