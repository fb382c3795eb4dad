//! The accept loop: connections up to a cap, each driven by its own task, and what they
//! hold, counted.
//!
//! Invariant: a connection is in `conns` from before its driver starts until its driver
//! ends; past `max_connections` of them (TLS handshakes under way counted) a new connection
//! is closed at once. A TLS connection's handshake (and, permissive, the look at its first
//! byte) runs in a task of its own, bounded by the frame read timeout, never in the accept
//! loop; none is admitted once the server is shutting down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex as AsyncMutex, Semaphore, watch};
use tokio_rustls::TlsStream;
use tracing::{debug, warn};

use super::config::{FAIR_SHARE, MIN_FAIR_SHARE};
use super::connection::Connection;
use super::events::{Events, NEVER, now_ms};
use super::tls::{ServerTls, TLS_HANDSHAKE_BYTE, TlsMode};
use super::wire::Handlers;
use super::{Handler, Reply, ServerConfig, driver};
use crate::codes::ErrorCode;
use crate::frame::{FIXED_LEN, Frame, Kind};

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
    /// TLS handshakes that failed (or did not finish within the frame read timeout), ever.
    pub tls_handshake_failures: u64,
    /// Plaintext connections refused by a port that takes TLS only, ever.
    pub plaintext_refused: u64,
    /// Times a connection paused because the connections together held
    /// `max_pending_bytes_total`, ever.
    pub budget_pauses: u64,
    /// Times a large frame waited for room to be read (`max_pending_bytes_total` of
    /// large frames being read already), ever.
    pub frame_waits: u64,
    /// Answers refused as busy because they would have taken their connection past its
    /// fair share while the connections together held `max_pending_bytes_total`, ever.
    pub answers_refused: u64,
    /// Connections closed because their peer read less than `MIN_FAIR_SHARE` of their
    /// answers in the frame read timeout while others were refused room in
    /// `max_pending_bytes_total`, ever.
    pub unread_closes: u64,
    /// What each connection may hold whatever the others hold now: the total divided
    /// among the connections open, between `MIN_FAIR_SHARE` and `FAIR_SHARE`.
    pub fair_share: usize,
    /// Pending work of the open connections (see [`ConnLoad`](super::ConnLoad)), summed.
    pub pending_requests: usize,
    pub pending_bytes: usize,
    /// Bytes read and not yet parsed (frames arriving), summed.
    pub reading_bytes: usize,
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
            tls_handshake_failures: s.events.tls_failures.total(),
            plaintext_refused: s.events.plaintext_refused.total(),
            budget_pauses: s.events.budget_pauses.total(),
            frame_waits: s.events.frame_waits.total(),
            answers_refused: s.events.answers_refused.total(),
            unread_closes: s.events.unread_closes.total(),
            fair_share: s.fair_share(),
            peak_pending_requests: s.peak_requests.load(Ordering::Relaxed),
            peak_pending_bytes: s.peak_bytes.load(Ordering::Relaxed),
            ..ServerStats::default()
        };
        for c in s.conns().values() {
            let load = c.load();
            stats.connections += 1;
            stats.pending_requests += load.requests;
            stats.pending_bytes += load.bytes;
            stats.reading_bytes += load.reading;
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
    /// TLS connections between accept and their driver's start.
    handshaking: AtomicUsize,
    /// Set by `shutdown`: connections still handshaking are not admitted.
    closing: AtomicBool,
    /// Peaks of connections gone.
    peak_requests: AtomicUsize,
    peak_bytes: AtomicUsize,
    /// Pending bytes of all connections, as their drivers last published them.
    pub(super) pending_bytes: AtomicUsize,
    pub(super) max_pending_bytes_total: usize,
    /// Bytes of large frames being read, `max_pending_bytes_total` of them: a frame past
    /// [`READ_AHEAD`](super::driver) takes its size (at most all) before more of it is read.
    pub(super) reading: Semaphore,
    /// Connections admitted and not yet ended (`conns`' length, read without its lock).
    open: AtomicUsize,
    /// When an answer was last refused, or a connection paused, for want of room in the
    /// total (`events::now_ms`; `NEVER`: not yet).
    last_shortage_ms: AtomicU64,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Connection>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `conn` in, unless the server is shutting down.
    fn admit(self: &Arc<Self>, conn: &Connection) -> bool {
        let mut conns = self.conns();
        if self.closing.load(Ordering::SeqCst) {
            return false;
        }
        if conns.insert(conn.id(), conn.clone()).is_none() {
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        let _ = conn.inner.server.set(Arc::downgrade(self));
        true
    }

    /// Notes that a connection was short of room in the total.
    pub(super) fn note_shortage(&self) {
        self.last_shortage_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether a connection was short of room in the total within `within`.
    pub(super) fn short_within(&self, within: Duration) -> bool {
        let last = self.last_shortage_ms.load(Ordering::Relaxed);
        last != NEVER
            && now_ms().saturating_sub(last) <= u64::try_from(within.as_millis()).unwrap_or(NEVER)
    }

    /// Refuses an answer of `len` bytes to `peer` past its `room`: counted, logged at most
    /// a line per interval, and noted as a shortage.
    pub(super) fn refuse_answer(&self, peer: SocketAddr, len: usize, room: usize) {
        self.note_shortage();
        let cap = self.max_pending_bytes_total;
        self.events.answers_refused.record(|count| {
            warn!(%peer, len, room, count, "answers refused as busy: the connections together hold net.max_pending_bytes_total ({cap} bytes) of answers not yet read, and these were past their connection's share: {count} since the last report, the latest shown");
        });
    }

    /// What each connection may hold whatever the others hold: the total shared among the
    /// connections open, between [`MIN_FAIR_SHARE`] and [`FAIR_SHARE`].
    pub(super) fn fair_share(&self) -> usize {
        let open = self.open.load(Ordering::Relaxed).max(1);
        (self.max_pending_bytes_total / open).clamp(MIN_FAIR_SHARE, FAIR_SHARE)
    }

    pub(super) fn connection_ended(&self, id: u64, (requests, bytes): (usize, usize)) {
        self.peak_requests.fetch_max(requests, Ordering::Relaxed);
        self.peak_bytes.fetch_max(bytes, Ordering::Relaxed);
        if self.conns().remove(&id).is_some() {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
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
        Self::start_full(listener, handler, None, config, None)
    }

    /// [`Server::start`], taking TLS connections as `tls` says (none: plaintext only).
    pub fn start_with(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
        tls: Option<ServerTls>,
    ) -> std::io::Result<Server> {
        Self::start_full(listener, handler, None, config, tls)
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
        Self::start_full(listener, handler, remoting, config, None)
    }

    /// Both: RocketMQ's remoting beside weir's frames, and TLS as `tls` says (a TLS
    /// connection's protocol is told apart by the first bytes inside TLS).
    pub fn start_full(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        remoting: Option<Arc<dyn Handler>>,
        config: ServerConfig,
        tls: Option<ServerTls>,
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
            handshaking: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            peak_requests: AtomicUsize::new(0),
            peak_bytes: AtomicUsize::new(0),
            pending_bytes: AtomicUsize::new(0),
            max_pending_bytes_total: config.max_pending_bytes_total,
            reading: Semaphore::new(config.max_pending_bytes_total),
            open: AtomicUsize::new(0),
            last_shortage_ms: AtomicU64::new(NEVER),
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
                        let open =
                            tracked.conns().len() + tracked.handshaking.load(Ordering::Relaxed);
                        if open >= config.max_connections {
                            drop(stream);
                            let cap = config.max_connections;
                            tracked.events.refused.record(|count| {
                                warn!(%peer, open, cap, count, "refused connections at the cap of {cap} open connections (setting net.max_connections): {count} since the last report, the latest shown")
                            });
                            continue;
                        }
                        if let Some(tls) = &tls {
                            tracked.handshaking.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(admit_tls(
                                stream,
                                tls.clone(),
                                config,
                                handlers.clone(),
                                Arc::clone(&tracked),
                            ));
                            continue;
                        }
                        match Connection::open(&stream, config.conn) {
                            Ok((conn, rx)) if tracked.admit(&conn) => {
                                driver::spawn(
                                    stream,
                                    conn,
                                    handlers.clone(),
                                    None,
                                    rx,
                                    Some(Arc::clone(&tracked)),
                                );
                            }
                            // (Shutting down: the connection is dropped.)
                            Ok(_) => {}
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
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.lock().await.take() {
            let _ = acceptor.await;
        }
        let conns: Vec<Connection> = self.shared.conns().values().cloned().collect();
        for c in conns {
            c.close();
        }
    }
}

/// Leaves the count of handshakes under way however one ends.
struct Handshaking(Arc<Shared>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes an accepted connection on a port with TLS: plaintext (permissive only: its first
/// byte is not a TLS handshake's) or TLS, within the frame read timeout.
async fn admit_tls(
    stream: TcpStream,
    tls: ServerTls,
    config: ServerConfig,
    handlers: Handlers,
    shared: Arc<Shared>,
) {
    let _counted = Handshaking(Arc::clone(&shared));
    let peer = stream.peer_addr().ok();
    let within = config.conn.frame_read_timeout;
    let mut first = [0u8; 1];
    let first = match tokio::time::timeout(within, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0],
        // Gone before saying anything.
        Ok(Ok(_)) | Ok(Err(_)) => return,
        Err(_) => {
            shared.events.tls_failures.record(|count| {
                warn!(?peer, ?within, count, "closed connections that sent nothing within the frame read timeout on a TLS port: {count} since the last report, the latest shown")
            });
            return;
        }
    };
    if first != TLS_HANDSHAKE_BYTE {
        if tls.mode() == TlsMode::Permissive {
            if let Ok((conn, rx)) = Connection::open(&stream, config.conn)
                && shared.admit(&conn)
            {
                driver::spawn(stream, conn, handlers, None, rx, Some(shared));
            }
            return;
        }
        shared.events.plaintext_refused.record(|count| {
            warn!(?peer, count, "refused plaintext connections on a port that takes TLS only (tls.mode = enforcing): {count} since the last report, the latest shown")
        });
        refuse_plaintext(stream, within).await;
        return;
    }
    let stream = match tokio::time::timeout(within, tls.acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.events.tls_failures.record(|count| {
                warn!(?peer, error = %e, count, "TLS handshakes failed: {count} since the last report, the latest shown")
            });
            return;
        }
        Err(_) => {
            shared.events.tls_failures.record(|count| {
                warn!(?peer, ?within, count, "TLS handshakes not finished within the frame read timeout: {count} since the last report, the latest shown")
            });
            return;
        }
    };
    match Connection::open(stream.get_ref().0, config.conn) {
        Ok((conn, rx)) => {
            if shared.admit(&conn) {
                driver::spawn(
                    TlsStream::from(stream),
                    conn,
                    handlers,
                    None,
                    rx,
                    Some(shared),
                );
            }
        }
        Err(e) => debug!(error = %e, "could not start an accepted TLS connection"),
    }
}

/// Answers a plaintext client's first request on a TLS-only port with an error saying
/// so (under its request id, when its first bytes arrive within a second), then closes.
async fn refuse_plaintext(mut stream: TcpStream, within: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = [0u8; 4 + FIXED_LEN];
    let mut got = 0;
    let read = async {
        while got < head.len() {
            match stream.read(&mut head[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    let _ = tokio::time::timeout(within.min(Duration::from_secs(1)), read).await;
    let request_id = match head.get(6..10) {
        Some(&[a, b, c, d]) if got >= 10 => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    };
    let reply = Reply::error(
        ErrorCode::BadRequest,
        "this port takes TLS connections only (tls.mode = enforcing): connect with TLS, trusting the CA that signed the server's certificate",
    );
    let frame = Frame {
        kind: Kind::Response,
        request_id,
        code: reply.status,
        auth: bytes::Bytes::new(),
        header: reply.header,
        body: reply.body,
    };
    let mut out = bytes::BytesMut::new();
    if frame
        .encode(&mut out, crate::frame::DEFAULT_MAX_FRAME)
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }
}
