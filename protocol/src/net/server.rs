//! The accept loop: connections up to a cap, each driven by its own task, and what they
//! hold, counted.
//!
//! Invariant: a connection is in `conns` from before its driver starts until its driver
//! ends; past `max_connections` of them a new connection is closed at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Mutex as AsyncMutex, watch};
use tracing::{debug, warn};

use super::connection::Connection;
use super::events::Events;
use super::wire::Handlers;
use super::{Handler, ServerConfig, driver};

/// What a server's connections hold and what they did, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections open now.
    pub connections: usize,
    /// Connections closed at once for the cap, ever.
    pub refused: u64,
    /// Connections closed on a bad frame (a protocol violation), ever.
    pub bad_frames: u64,
    /// Connections closed because a frame did not arrive whole in time, ever.
    pub frame_timeouts: u64,
    /// Connections closed as idle, ever.
    pub idle_closes: u64,
    /// Connections whose peer went mid-frame or reset them, ever.
    pub resets: u64,
    /// Pending work of the open connections (see [`ConnLoad`](super::ConnLoad)), summed.
    pub pending_requests: usize,
    pub pending_bytes: usize,
    /// The most any one connection held, ever.
    pub peak_pending_requests: usize,
    pub peak_pending_bytes: usize,
}

/// Reads a server's [`ServerStats`]; cheap to clone, kept apart from the server.
#[derive(Clone)]
pub struct ServerStatsHandle(Arc<Shared>);

impl ServerStatsHandle {
    /// What the connections hold now and what happened to them.
    pub fn stats(&self) -> ServerStats {
        let s = &self.0;
        let mut stats = ServerStats {
            refused: s.events.refused.total(),
            bad_frames: s.events.bad_frames.total(),
            frame_timeouts: s.events.frame_timeouts.total(),
            idle_closes: s.events.idle_closes.total(),
            resets: s.events.resets.load(Ordering::Relaxed),
            peak_pending_requests: s.peak_requests.load(Ordering::Relaxed),
            peak_pending_bytes: s.peak_bytes.load(Ordering::Relaxed),
            ..ServerStats::default()
        };
        for c in s.conns().values() {
            let load = c.load();
            stats.connections += 1;
            stats.pending_requests += load.requests;
            stats.pending_bytes += load.bytes;
            stats.peak_pending_requests = stats.peak_pending_requests.max(load.peak_requests);
            stats.peak_pending_bytes = stats.peak_pending_bytes.max(load.peak_bytes);
        }
        stats
    }
}

/// What a server shares with its connections' drivers.
pub(super) struct Shared {
    pub(super) events: Events,
    conns: std::sync::Mutex<HashMap<u64, Connection>>,
    /// Peaks of connections gone.
    peak_requests: AtomicUsize,
    peak_bytes: AtomicUsize,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn connection_ended(&self, id: u64, (requests, bytes): (usize, usize)) {
        self.peak_requests.fetch_max(requests, Ordering::Relaxed);
        self.peak_bytes.fetch_max(bytes, Ordering::Relaxed);
        self.conns().remove(&id);
    }
}

/// A running server; dropping it does not stop it, `shutdown` does.
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    /// The accept loop; it owns the listener.
    acceptor: AsyncMutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    /// Accepts connections on `listener` and serves them with `handler`.
    pub fn start(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
    ) -> std::io::Result<Server> {
        Self::start_with_remoting(listener, handler, None, config)
    }

    /// Like [`Server::start`], and serves connections speaking RocketMQ's remoting
    /// protocol with `remoting` (while `config.remoting`): each connection's first bytes
    /// say which protocol it speaks (see `wire`).
    pub fn start_with_remoting(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        remoting: Option<Arc<dyn Handler>>,
        config: ServerConfig,
    ) -> std::io::Result<Server> {
        let handlers = Handlers {
            weir: config.weir.then_some(handler),
            remoting: remoting.filter(|_| config.remoting),
        };
        let local_addr = listener.local_addr()?;
        let (stop, mut stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            events: Events::new(),
            conns: std::sync::Mutex::new(HashMap::new()),
            peak_requests: AtomicUsize::new(0),
            peak_bytes: AtomicUsize::new(0),
        });
        let tracked = Arc::clone(&shared);
        let acceptor = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    biased;
                    _ = stop_rx.wait_for(|s| *s) => break,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let open = tracked.conns().len();
                        if open >= config.max_connections {
                            drop(stream);
                            let cap = config.max_connections;
                            tracked.events.refused.record(|count| {
                                warn!(%peer, open, cap, count, "refused connections at the cap of {cap} open connections (setting net.max_connections): {count} since the last report, the latest shown")
                            });
                            continue;
                        }
                        match Connection::open(&stream, config.conn) {
                            Ok((conn, rx)) => {
                                tracked.conns().insert(conn.id(), conn.clone());
                                driver::spawn(
                                    stream,
                                    conn,
                                    handlers.clone(),
                                    None,
                                    rx,
                                    Some(Arc::clone(&tracked)),
                                );
                            }
                            Err(e) => debug!(error = %e, "could not start an accepted connection"),
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Server {
            local_addr,
            stop,
            shared,
            acceptor: AsyncMutex::new(Some(acceptor)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the connections hold now and what happened to them.
    pub fn stats(&self) -> ServerStats {
        self.stats_handle().stats()
    }

    /// A handle that reads [`Server::stats`] without the server (for a metrics endpoint).
    pub fn stats_handle(&self) -> ServerStatsHandle {
        ServerStatsHandle(Arc::clone(&self.shared))
    }

    /// Stops accepting and closes every connection. The listener is closed first, so no
    /// connection is accepted (and served) after this returns.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        if let Some(acceptor) = self.acceptor.lock().await.take() {
            let _ = acceptor.await;
        }
        let conns: Vec<Connection> = self.shared.conns().values().cloned().collect();
        for c in conns {
            c.close();
        }
    }
}
