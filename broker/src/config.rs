use serde::{Deserialize, Serialize};
use weir_protocol::NetConfig;
use weir_protocol::TlsConfig;
use weir_protocol::metrics::MetricsConfig;
use weir_store::StoreConfig;

use weir_protocol::ha::BrokerRole;

use crate::acl::AclConfig;
use crate::clients::RegistryLimits;
use crate::error::ConfigError;
use crate::filter::FilterConfig;
use crate::service::schedule::DelayLevels;

/// Broker settings. TOML keys as named here; the store's under `[store]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address to listen on (default 127.0.0.1:10911).
    pub listen: String,
    /// Address clients are told to connect to (default: the address listened on).
    pub advertised_addr: Option<String>,
    /// Name servers, `host:port;host:port`. Empty: the broker registers nowhere (the
    /// standalone binary then runs its own name server).
    pub namesrv: String,
    pub cluster: String,
    pub broker_name: String,
    /// 0 for a master, 1 and up for its slaves.
    pub broker_id: u64,
    /// `async-master` (default), `sync-master` (a send is acknowledged once a slave has
    /// it too) or `slave` (replicates its master; readable, never writable).
    pub role: BrokerRole,
    /// A master: where its slaves connect (RocketMQ's HA port; default none: no slaves).
    pub ha_listen: Option<String>,
    /// A slave: its master's HA address (default: as the name servers report it).
    pub master_ha_addr: Option<String>,
    /// A sync master: how long a send waits for a slave's confirmation, ms (default 3,000);
    /// past it the send answers `FlushSlaveTimeout`.
    pub slave_ack_timeout_ms: u64,
    /// A pull whose last message lies more than this many bytes before the end of the log
    /// answers `suggest_slave` (a master only while a slave is connected; a slave by the
    /// same measure, so its readers return to the master once within reach). Default: 40 %
    /// of the machine's memory (RocketMQ's `accessMessageInMemoryMaxRatio`), read from
    /// `/proc/meminfo` at start (4 GiB where it cannot be read).
    pub slave_read_behind_bytes: Option<u64>,
    /// Create a topic on the first send to it (default true).
    pub auto_create_topic: bool,
    /// Queues of a created topic when none is said (default 8).
    pub default_topic_queues: u32,
    /// Largest message body accepted, bytes (default 4 MiB).
    pub max_message_size: usize,
    /// Flow control: a send that waited longer than this between the arrival of its
    /// request and the start of its append is refused as busy (`StoreBusy`), not stored,
    /// ms (default 200, RocketMQ's `waitTimeMillsInSendQueue`).
    pub send_queue_wait_ms: u64,
    /// How often the broker registers with each name server, ms (default 30,000).
    pub register_interval_ms: u64,
    /// A client not heard from for this long is forgotten, ms (default 120,000).
    pub client_expiry_ms: u64,
    /// Delay of each delay level, 1-based: whole numbers with a unit (ms, s, m, h, d),
    /// space-separated (default RocketMQ's 18, `"1s 5s 10s 30s 1m … 2h"`). A message with
    /// property `DELAY=N` is delivered after level N's delay; retries use levels 3 and up.
    pub delay_levels: String,
    /// How long an orderly consumer's queue lock lasts unless renewed, ms (default 60,000).
    pub queue_lock_lease_ms: u64,
    /// A half message without a decision this long is asked about, ms (default 6,000).
    pub transaction_timeout_ms: u64,
    /// How often undecided half messages are checked, ms (default 60,000).
    pub transaction_check_interval_ms: u64,
    /// Checks of one transaction before it moves to the dead-transaction topic (default 15).
    pub transaction_check_max: u32,
    pub store: StoreConfig,
    /// The WebAssembly filter runtime (`[filter]`).
    pub filter: FilterConfig,
    /// Bounds on what clients can make the broker hold (`[limits]`).
    pub limits: LimitsConfig,
    /// Connection limits (`[net]`): `max_connections` (10,000), per connection
    /// `max_pending_requests` (1,024) and `max_pending_bytes` (32 MiB) past which the broker
    /// stops reading it until its client reads, `max_pending_bytes_total` (256 MiB, all
    /// connections together), `frame_read_timeout_ms` (10,000) and
    /// `idle_timeout_ms` (120,000). Each documented in `weir_protocol::NetConfig`.
    pub net: NetConfig,
    /// Access control (`[acl]`): `file` (the ACL file, reloaded on change; none: off) and
    /// `reload_interval_ms` (2,000).
    pub acl: AclConfig,
    /// The secret this broker signs its registrations with; name servers with a
    /// `cluster_secret` take only brokers that have it (default none). A master with one
    /// takes only slaves whose hello on its HA port is signed with it; a slave signs its
    /// hello with its own.
    pub cluster_secret: Option<String>,
    /// The Prometheus endpoint (`[metrics]`): `listen`, where `GET /metrics` is served
    /// (default none: off).
    pub metrics: MetricsConfig,
    /// TLS (`[tls]`): `mode` (`"disabled"`, the default; `"permissive"`: TLS and
    /// plaintext on the same port; `"enforcing"`: TLS only) with `cert_file` and `key_file`
    /// (PEM) for the client port, a master's HA port and a standalone broker's embedded
    /// name server; `ca_file` (PEM, default none) turns TLS on for the broker's own
    /// connections (registration with name servers, a slave's replication), verifying
    /// those servers against it. Each documented in `weir_protocol::TlsConfig`.
    pub tls: TlsConfig,
}

/// Bounds on what clients can make the broker hold: the `[limits]` table. Past each, the
/// request is refused with a clear error (`SystemBusy`), and the broker goes on serving
/// everyone else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Topics, system topics (`%RETRY%`, `%DLQ%`) included (default 100,000).
    pub max_topics: usize,
    /// Places of `max_topics` that heartbeats leave free (default 10,000): a heartbeat
    /// creates its groups' retry topics only while more than this many are free, so
    /// clients naming ever new groups cannot take the room of topics made by operators,
    /// producers and send-backs (a send-back still creates its group's retry topic).
    pub topic_room_kept_from_heartbeats: usize,
    /// Clients known at once (default 100,000).
    pub max_clients: usize,
    /// Distinct client ids one connection may register (default 16).
    pub max_clients_per_connection: usize,
    /// Consumer groups, and producer groups, in one heartbeat (default 1,024).
    pub max_groups_per_client: usize,
    /// Subscriptions of one consumer group in one heartbeat (default 1,024).
    pub max_subscriptions_per_group: usize,
    /// Consumer offsets held, one per (group, topic, queue) (default 1,000,000): a commit
    /// that would add one more is refused; those already held go on moving.
    pub max_consumer_offsets: usize,
    /// Requests in flight per family, across connections (defaults: send 10,000, pull
    /// 100,000 (held pulls included, shared fairly between connections: see
    /// `crate::holds`), consumer 10,000, admin 1,000, filter 64).
    pub inflight_send: usize,
    pub inflight_pull: usize,
    pub inflight_consumer: usize,
    pub inflight_admin: usize,
    pub inflight_filter: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_topics: 100_000,
            topic_room_kept_from_heartbeats: 10_000,
            max_clients: 100_000,
            max_clients_per_connection: 16,
            max_groups_per_client: 1024,
            max_subscriptions_per_group: 1024,
            max_consumer_offsets: 1_000_000,
            inflight_send: 10_000,
            inflight_pull: 100_000,
            inflight_consumer: 10_000,
            inflight_admin: 1_000,
            inflight_filter: 64,
        }
    }
}

impl LimitsConfig {
    pub(crate) fn registry(&self) -> RegistryLimits {
        RegistryLimits {
            max_clients: self.max_clients,
            max_clients_per_connection: self.max_clients_per_connection,
            max_groups_per_client: self.max_groups_per_client,
            max_subscriptions_per_group: self.max_subscriptions_per_group,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.topic_room_kept_from_heartbeats >= self.max_topics {
            return Err(ConfigError(format!(
                "limits.topic_room_kept_from_heartbeats ({}) must be under limits.max_topics ({}): heartbeats could create no retry topic",
                self.topic_room_kept_from_heartbeats, self.max_topics
            )));
        }
        for (name, v) in [
            ("max_topics", self.max_topics),
            ("max_consumer_offsets", self.max_consumer_offsets),
            ("max_clients", self.max_clients),
            (
                "max_clients_per_connection",
                self.max_clients_per_connection,
            ),
            ("max_groups_per_client", self.max_groups_per_client),
            (
                "max_subscriptions_per_group",
                self.max_subscriptions_per_group,
            ),
            ("inflight_send", self.inflight_send),
            ("inflight_pull", self.inflight_pull),
            ("inflight_consumer", self.inflight_consumer),
            ("inflight_admin", self.inflight_admin),
            ("inflight_filter", self.inflight_filter),
        ] {
            // Semaphores hold at most usize::MAX >> 3 permits.
            if v == 0 || v > 1 << 30 {
                return Err(ConfigError(format!(
                    "limits.{name} must be within 1..=1073741824"
                )));
            }
        }
        Ok(())
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:10911".into(),
            advertised_addr: None,
            namesrv: String::new(),
            cluster: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            role: BrokerRole::AsyncMaster,
            ha_listen: None,
            master_ha_addr: None,
            slave_ack_timeout_ms: 3_000,
            slave_read_behind_bytes: None,
            auto_create_topic: true,
            default_topic_queues: 8,
            max_message_size: 4 << 20,
            send_queue_wait_ms: 200,
            register_interval_ms: 30_000,
            client_expiry_ms: 120_000,
            delay_levels: "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h".into(),
            queue_lock_lease_ms: 60_000,
            transaction_timeout_ms: 6_000,
            transaction_check_interval_ms: 60_000,
            transaction_check_max: 15,
            store: StoreConfig::default(),
            filter: FilterConfig::default(),
            limits: LimitsConfig::default(),
            net: NetConfig::default(),
            acl: AclConfig::default(),
            cluster_secret: None,
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl BrokerConfig {
    pub fn namesrv_addrs(&self) -> Vec<String> {
        self.namesrv
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `slave_read_behind_bytes`, or its default: 40 % of the machine's memory.
    pub fn slave_read_behind(&self) -> u64 {
        self.slave_read_behind_bytes.unwrap_or_else(|| {
            let total = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| mem_total(&t))
                .unwrap_or(10 << 30);
            total / 10 * 4
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_owned()));
        if self.default_topic_queues == 0 || self.default_topic_queues > 1024 {
            return bad("default_topic_queues must be within 1..=1024");
        }
        if self.max_message_size == 0 || self.max_message_size > 15 << 20 {
            return bad("max_message_size must be within 1 byte..=15 MiB (frames are 16 MiB)");
        }
        if self.register_interval_ms == 0 || self.client_expiry_ms == 0 {
            return bad("register_interval_ms and client_expiry_ms must be greater than 0");
        }
        if self.queue_lock_lease_ms == 0 {
            return bad("queue_lock_lease_ms must be greater than 0");
        }
        if self.transaction_timeout_ms == 0 || self.transaction_check_interval_ms == 0 {
            return bad(
                "transaction_timeout_ms and transaction_check_interval_ms must be greater than 0",
            );
        }
        if self.transaction_check_max == 0 {
            return bad("transaction_check_max must be at least 1");
        }
        DelayLevels::parse(&self.delay_levels)?;
        if self.broker_name.is_empty() || self.cluster.is_empty() {
            return bad("cluster and broker_name must not be empty");
        }
        match (self.role, self.broker_id) {
            (BrokerRole::Slave, 0) => {
                return bad("a slave has a broker_id of 1 or more (0 is its master's)");
            }
            (BrokerRole::AsyncMaster | BrokerRole::SyncMaster, id) if id != 0 => {
                return bad("a master has broker_id 0 (or set role = \"slave\")");
            }
            _ => {}
        }
        if self.role == BrokerRole::Slave
            && self.master_ha_addr.is_none()
            && self.namesrv_addrs().is_empty()
        {
            return bad("a slave needs master_ha_addr, or name servers to learn it from");
        }
        if self.send_queue_wait_ms == 0 {
            return bad("send_queue_wait_ms must be greater than 0");
        }
        if self.slave_ack_timeout_ms == 0 {
            return bad("slave_ack_timeout_ms must be greater than 0");
        }
        if self.slave_read_behind_bytes == Some(0) {
            return bad("slave_read_behind_bytes must be greater than 0");
        }
        if self.acl.reload_interval_ms == 0 {
            return bad("acl.reload_interval_ms must be greater than 0");
        }
        if self.cluster_secret.as_deref() == Some("") {
            return bad("cluster_secret must not be empty (leave it out instead)");
        }
        if self.acl.file.is_some()
            && self.ha_listen.is_some()
            && self.role.is_master()
            && self.cluster_secret.is_none()
        {
            // Else access control covers the client port only: any peer saying a hello on
            // the HA port reads every message and offset, and may move a group's offsets.
            return bad(
                "access control is on ([acl] file) but ha_listen would serve the whole log, the topics and the groups' offsets to any peer: set cluster_secret (the same on this master, its slaves and the name servers), which slaves must sign their hello with, or leave ha_listen out",
            );
        }
        self.metrics.validate().map_err(ConfigError)?;
        self.tls
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        self.filter.validate().map_err(ConfigError)?;
        self.limits.validate()?;
        self.net
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        self.store
            .validate()
            .map_err(|e| ConfigError(e.to_string()))
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_meminfo() {
        assert_eq!(
            mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: x kB\n"), None);
        let c = BrokerConfig {
            slave_read_behind_bytes: Some(7),
            ..BrokerConfig::default()
        };
        assert_eq!(c.slave_read_behind(), 7);
        assert!(BrokerConfig::default().slave_read_behind() > 0);
    }

    #[test]
    fn metrics_are_off_unless_a_listen_address_is_given() {
        assert_eq!(BrokerConfig::default().metrics.listen, None);
        let c: BrokerConfig =
            toml::from_str("[metrics]\nlisten = \"127.0.0.1:9100\"\n").expect("parses");
        assert_eq!(c.metrics.listen.as_deref(), Some("127.0.0.1:9100"));
        c.validate().expect("valid");
        let e =
            toml::from_str::<BrokerConfig>("[metrics]\nport = 9100\n").expect_err("unknown key");
        assert!(e.to_string().contains("port"), "{e}");
        let empty: BrokerConfig = toml::from_str("[metrics]\nlisten = \"\"\n").expect("parses");
        assert!(empty.validate().is_err());
    }

    #[test]
    fn access_control_with_an_ha_port_needs_the_cluster_secret() {
        let master = "ha_listen = \"127.0.0.1:0\"\n[acl]\nfile = \"acl.toml\"\n";
        let c: BrokerConfig = toml::from_str(master).expect("parses");
        let e = c
            .validate()
            .expect_err("the HA port would be open")
            .to_string();
        assert!(e.contains("set cluster_secret"), "{e}");
        let c: BrokerConfig =
            toml::from_str(&format!("cluster_secret = \"s\"\n{master}")).expect("parses");
        c.validate().expect("valid with a secret");
        // Without access control, or without an HA port, nothing to cover.
        let c: BrokerConfig = toml::from_str("ha_listen = \"127.0.0.1:0\"\n").expect("parses");
        c.validate().expect("valid");
        let c: BrokerConfig = toml::from_str("[acl]\nfile = \"acl.toml\"\n").expect("parses");
        c.validate().expect("valid");
    }

    #[test]
    fn tls_is_off_by_default_and_needs_its_files() {
        use weir_protocol::TlsMode;
        assert_eq!(BrokerConfig::default().tls.mode, TlsMode::Disabled);
        let c: BrokerConfig = toml::from_str(
            "[tls]\nmode = \"enforcing\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nca_file = \"ca.pem\"\n",
        )
        .expect("parses");
        assert_eq!(c.tls.mode, TlsMode::Enforcing);
        c.validate().expect("valid (the files are read at start)");
        let no_key: BrokerConfig =
            toml::from_str("[tls]\nmode = \"permissive\"\ncert_file = \"c.pem\"\n")
                .expect("parses");
        let e = no_key.validate().expect_err("no key");
        assert!(e.to_string().contains("tls.key_file"), "{e}");
        let e = toml::from_str::<BrokerConfig>("[tls]\nmode = \"on\"\n").expect_err("bad mode");
        assert!(e.to_string().contains("enforcing"), "{e}");
        let e = toml::from_str::<BrokerConfig>("[tls]\ncert = \"c.pem\"\n").expect_err("unknown");
        assert!(e.to_string().contains("cert"), "{e}");
    }
}
