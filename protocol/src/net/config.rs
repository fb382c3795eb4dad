//! Limits of connections and servers, and the `[net]` table that servers read them from.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::frame;

/// The most a connection may always hold, whatever the others hold: past the server's
/// `max_pending_bytes_total` only connections holding at least their share pause, and an
/// answer that would take one past its share is refused as busy. The share is the total
/// divided among the connections open, at most this (1 MiB) and at least
/// [`MIN_FAIR_SHARE`] (and at most the connection's own bound), so that however many
/// connections a client opens, together they hold about the total, plus
/// `MIN_FAIR_SHARE` each past `max_pending_bytes_total / MIN_FAIR_SHARE` connections.
pub const FAIR_SHARE: usize = 1 << 20;

/// The least share of a connection (see [`FAIR_SHARE`]): 64 KiB, room for a pull of a
/// few dozen small messages.
pub const MIN_FAIR_SHARE: usize = 64 << 10;

/// Limits of one connection, either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// Largest frame sent or accepted, bytes (default 16 MiB).
    pub max_frame: usize,
    /// Requests of the peer being handled plus their replies queued and not yet written;
    /// at this many the connection reads nothing more until the peer reads (default 1,024).
    pub max_pending_requests: usize,
    /// Bytes of the peer's requests being handled plus everything queued for writing; at
    /// this many the connection reads nothing more (and takes no more replies) until the
    /// peer reads, and local calls wait for room (default 32 MiB). One frame read and one
    /// reply may go past it, each at most `max_frame`: with the defaults a connection
    /// holds at most 64 MiB.
    pub max_pending_bytes: usize,
    /// A frame begun must be whole within this (counted while the connection reads), or
    /// the connection is closed (default 10 s). A server's connection whose peer has read
    /// less than [`MIN_FAIR_SHARE`] of its answers in as long is closed too when another
    /// connection was refused room in `max_pending_bytes_total` within as long.
    pub frame_read_timeout: Duration,
    /// A connection with no frame either way for this long is closed; `None`: never
    /// (default 120 s, RocketMQ's `serverChannelMaxIdleTimeSeconds`).
    pub idle_timeout: Option<Duration>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            max_frame: frame::DEFAULT_MAX_FRAME,
            max_pending_requests: 1024,
            max_pending_bytes: 32 << 20,
            frame_read_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// Limits of a server: those of each connection, and how many connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    pub conn: ConnConfig,
    /// Connections open at once; past it a new connection is closed at once (default
    /// 10,000).
    pub max_connections: usize,
    /// Pending bytes (as `ConnConfig::max_pending_bytes` counts them) of all connections
    /// together; past it a connection holding its [`FAIR_SHARE`] or more reads and takes
    /// nothing more until its own pending bytes go under that share, so every peer keeps
    /// being served, one request at a time, and an answer that would take a connection
    /// past its share is refused as busy (default 256 MiB). The connections together hold
    /// at most this once per runtime worker (each counts the others' bytes as they last
    /// published them), plus each one's fair share and one frame. As much again bounds the
    /// large frames being read (past 64 KiB a frame waits for its length of it).
    pub max_pending_bytes_total: usize,
    /// Whether connections speaking weir's own protocol are served (default true).
    pub weir: bool,
    /// Whether connections speaking RocketMQ's remoting protocol are served, when the
    /// server has a handler for them (default true).
    pub remoting: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            conn: ConnConfig::default(),
            max_connections: 10_000,
            max_pending_bytes_total: 256 << 20,
            weir: true,
            remoting: true,
        }
    }
}

/// A `[net]` setting out of its range.
#[derive(Debug, thiserror::Error)]
#[error("net.{name} = {value} is out of range: it must be within {range}")]
pub struct NetConfigError {
    pub name: &'static str,
    pub value: u64,
    pub range: &'static str,
}

/// A server's connection limits, as the `[net]` table of the broker's and the name
/// server's TOML files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetConfig {
    /// Connections open at once; past it a new connection is closed at once, with a
    /// (rate-limited) log line (default 10,000).
    pub max_connections: usize,
    /// Per connection: requests being handled plus replies not yet written, past which
    /// the server stops reading the connection until its peer reads (default 1,024).
    pub max_pending_requests: usize,
    /// Per connection: bytes of requests being handled plus replies and other frames
    /// not yet written, past which the server stops reading it (default 32 MiB; one
    /// frame read and one reply may go past it).
    pub max_pending_bytes: usize,
    /// All connections together: pending bytes past which a connection holding 1 MiB or
    /// more reads and takes nothing more until it holds less (default 256 MiB). Each
    /// connection may always hold 1 MiB and one reply, so no peer, however many
    /// connections it opens, stops the server answering the others. The frames being read
    /// past their first 64 KiB share as much again: a frame waits, holding 64 KiB, until
    /// its length is free.
    pub max_pending_bytes_total: usize,
    /// A frame must arrive whole within this from its first byte, ms (default 10,000).
    pub frame_read_timeout_ms: u64,
    /// A connection with no frame either way for this long is closed, ms (default
    /// 120,000; keep it well above the clients' 30 s heartbeat interval, and above the
    /// brokers' `register_interval_ms` on a name server).
    pub idle_timeout_ms: u64,
    /// Serve weir's own protocol (default true). Brokers register with name servers in
    /// it, and weir's clients, CLI and slaves speak only it.
    pub weir: bool,
    /// Serve RocketMQ's 4.x remoting protocol on the same port, told apart by a
    /// connection's first bytes (default true): RocketMQ's own clients then connect
    /// unchanged.
    pub remoting: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        let d = ServerConfig::default();
        Self {
            max_connections: d.max_connections,
            max_pending_requests: d.conn.max_pending_requests,
            max_pending_bytes: d.conn.max_pending_bytes,
            max_pending_bytes_total: d.max_pending_bytes_total,
            frame_read_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            weir: d.weir,
            remoting: d.remoting,
        }
    }
}

impl NetConfig {
    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        let checks: [(&'static str, u64, u64, u64, &'static str); 6] = [
            (
                "max_connections",
                self.max_connections as u64,
                1,
                1 << 20,
                "1..=1048576",
            ),
            (
                "max_pending_requests",
                self.max_pending_requests as u64,
                1,
                1 << 20,
                "1..=1048576",
            ),
            (
                "max_pending_bytes",
                self.max_pending_bytes as u64,
                64 << 10,
                1 << 40,
                "65536 (64 KiB)..=1099511627776 (1 TiB)",
            ),
            (
                "max_pending_bytes_total",
                self.max_pending_bytes_total as u64,
                1 << 20,
                1 << 42,
                "1048576 (1 MiB)..=4398046511104 (4 TiB)",
            ),
            (
                "frame_read_timeout_ms",
                self.frame_read_timeout_ms,
                10,
                3_600_000,
                "10..=3600000 (1 h)",
            ),
            (
                "idle_timeout_ms",
                self.idle_timeout_ms,
                100,
                86_400_000,
                "100..=86400000 (1 day)",
            ),
        ];
        for (name, value, min, max, range) in checks {
            if value < min || value > max {
                return Err(NetConfigError { name, value, range });
            }
        }
        if !self.weir && !self.remoting {
            return Err(NetConfigError {
                name: "weir",
                value: 0,
                range: "true, or remoting true: a server must speak one protocol",
            });
        }
        Ok(())
    }

    /// Whether the idle timeout is at or below the clients' heartbeat interval (30 s):
    /// clients that only heartbeat would then be disconnected (they reconnect).
    pub fn idle_below_heartbeat(&self) -> bool {
        self.idle_timeout_ms <= 30_000
    }

    /// The server limits these settings make (frames keep their default maximum).
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            conn: ConnConfig {
                max_pending_requests: self.max_pending_requests,
                max_pending_bytes: self.max_pending_bytes,
                frame_read_timeout: Duration::from_millis(self.frame_read_timeout_ms),
                idle_timeout: Some(Duration::from_millis(self.idle_timeout_ms)),
                ..ConnConfig::default()
            },
            max_connections: self.max_connections,
            max_pending_bytes_total: self.max_pending_bytes_total,
            weir: self.weir,
            remoting: self.remoting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ranges_are_named() {
        NetConfig::default().validate().unwrap();
        assert_eq!(
            NetConfig::default().server_config(),
            ServerConfig::default()
        );
        let e = NetConfig {
            max_connections: 0,
            ..NetConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("net.max_connections = 0"), "{e}");
        let e = NetConfig {
            idle_timeout_ms: 1,
            ..NetConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("idle_timeout_ms"), "{e}");
    }
}
