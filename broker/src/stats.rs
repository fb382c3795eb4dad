//! `weir broker stats`' answer (its message totals are the metrics' own, `crate::metrics`,
//! so the command and the Prometheus endpoint cannot disagree); `weir broker config
//! get|set`'s (see `live`).

use std::sync::{OnceLock, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use weir_protocol::Server;
use weir_protocol::admin::{BrokerSettings, BrokerStats, SetBrokerConfig};

use crate::broker::Broker;
use crate::error::{ProcessError, Processed};

/// This broker's version, as `weir broker stats` and the console show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `weir broker stats` knows besides the metrics.
pub struct Counters {
    started: Instant,
    /// When the broker started, ms since the Unix epoch.
    started_at_ms: i64,
    /// The client port's server, once it listens (for its open connections).
    server: OnceLock<Weak<Server>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            started_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_millis()).ok())
                .unwrap_or(0),
            server: OnceLock::new(),
        }
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Counters {
    pub(crate) fn set_server(&self, server: Weak<Server>) {
        // Set once at start; a second start of the same broker keeps the first.
        let _ = self.server.set(server);
    }

    fn connections(&self) -> u64 {
        self.server
            .get()
            .and_then(Weak::upgrade)
            .map_or(0, |s| to_u64(s.stats().connections))
    }
}

impl Broker {
    pub fn stats(&self) -> BrokerStats {
        let c = &self.counters;
        let (messages_in, bytes_in) = self.metrics.produced_total();
        let (messages_out, _) = self.metrics.consumed_total();
        BrokerStats {
            broker_name: self.config.broker_name.clone(),
            broker_id: self.config.broker_id,
            messages_in,
            bytes_in,
            messages_out,
            connections: c.connections(),
            clients: to_u64(self.clients.count()),
            disk_used_ppm: self.store.disk_usage().map(|d| {
                // A ratio in [0, 1] (clamped), in parts per million.
                (d.ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
            }),
            topics: to_u64(self.topics.count()),
            held_pulls: to_u64(self.holds.held()),
            uptime_ms: u64::try_from(c.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            version: Some(VERSION.to_owned()),
            started_at_ms: Some(c.started_at_ms),
        }
    }
}

impl Broker {
    /// The settings that can change live, with their values now.
    pub fn live_settings(&self) -> BrokerSettings {
        BrokerSettings {
            settings: self.live.all(),
        }
    }

    /// Changes one live setting; the settings afterwards.
    pub fn set_live_setting(&self, r: SetBrokerConfig) -> Processed<BrokerSettings> {
        self.live
            .set(&r.name, &r.value)
            .map_err(|e| ProcessError::InvalidParameter(e.to_string()))?;
        tracing::info!(setting = %r.name, value = %r.value, "live setting changed");
        Ok(self.live_settings())
    }
}
