//! The broker's running totals (atomics, bumped on the send and pull paths) and
//! `weir broker stats`' answer; `weir broker config get|set`'s (see `live`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::time::Instant;

use weir_protocol::Server;
use weir_protocol::admin::{BrokerSettings, BrokerStats, SetBrokerConfig};

use crate::broker::Broker;
use crate::error::{ProcessError, Processed};

/// Totals since the broker started.
pub struct Counters {
    started: Instant,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    /// The client port's server, once it listens (for its open connections).
    server: OnceLock<Weak<Server>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            server: OnceLock::new(),
        }
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Counters {
    /// `messages` stored, of `bytes` of bodies in all.
    pub(crate) fn stored(&self, messages: usize, bytes: usize) {
        self.messages_in
            .fetch_add(to_u64(messages), Ordering::Relaxed);
        self.bytes_in.fetch_add(to_u64(bytes), Ordering::Relaxed);
    }

    /// `messages` handed out by a pull.
    pub(crate) fn delivered(&self, messages: usize) {
        self.messages_out
            .fetch_add(to_u64(messages), Ordering::Relaxed);
    }

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
        BrokerStats {
            broker_name: self.config.broker_name.clone(),
            broker_id: self.config.broker_id,
            messages_in: c.messages_in.load(Ordering::Relaxed),
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
            connections: c.connections(),
            clients: to_u64(self.clients.count()),
            disk_used_ppm: self.store.disk_usage().map(|d| {
                // A ratio in [0, 1] (clamped), in parts per million.
                (d.ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
            }),
            topics: to_u64(self.topics.count()),
            held_pulls: to_u64(self.holds.held()),
            uptime_ms: u64::try_from(c.started.elapsed().as_millis()).unwrap_or(u64::MAX),
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
