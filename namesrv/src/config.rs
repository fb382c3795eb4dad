//! The name server's settings: TOML keys as named here, unknown keys refused.

use serde::{Deserialize, Serialize};
use weir_protocol::metrics::MetricsConfig;
use weir_protocol::{NetConfig, TlsConfig};

/// Name server settings (TOML keys as named here).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamesrvConfig {
    /// Address to listen on (default 127.0.0.1:9876).
    pub listen: String,
    /// A broker not heard from for this long is dropped, ms (default 120,000).
    pub broker_expiry_ms: u64,
    /// How often silent brokers are looked for, ms (default 5,000).
    pub scan_interval_ms: u64,
    /// Connection limits (`[net]`): cap, pending work per connection, frame read and idle
    /// timeouts. Keep `idle_timeout_ms` above the brokers' `register_interval_ms`: a
    /// broker whose connection closes is dropped until it registers again.
    pub net: NetConfig,
    /// When set, only brokers signing with this secret (their `cluster_secret`) may
    /// register or unregister: no one else can take a broker name (default none).
    pub cluster_secret: Option<String>,
    /// Broker addresses registered at once, at most (default 4,096): a registration from
    /// one more is refused.
    pub max_brokers: usize,
    /// Topics routed at once, every broker's together, at most (default 250,000; each
    /// takes about 1 KB here): a master's registration that would route more is refused,
    /// and it keeps its earlier routes. Without such bounds one client registering broker
    /// names with 50,000 topics each took 1.8 GB.
    pub max_topics: usize,
    /// The Prometheus endpoint (`[metrics]`): `listen`, where `GET /metrics` is served
    /// (default none: off).
    pub metrics: MetricsConfig,
    /// TLS (`[tls]`): `mode` (`"disabled"`, the default; `"permissive"`: TLS and
    /// plaintext on the same port; `"enforcing"`: TLS only) with `cert_file` and `key_file`
    /// (PEM). (`ca_file` is a broker's: a name server opens no connections.)
    pub tls: TlsConfig,
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9876".into(),
            broker_expiry_ms: 120_000,
            scan_interval_ms: 5_000,
            net: NetConfig::default(),
            cluster_secret: None,
            max_brokers: 4_096,
            max_topics: 250_000,
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}
