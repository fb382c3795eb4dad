//! One end of a connection: the handle that calls and sends, and what it shares with the
//! task that drives the connection (`driver`).
//!
//! Invariant: the bytes of frames queued by calls and one-ways for the driver (`queued`)
//! stay within `max_pending_bytes` (a frame bigger than that alone still goes); a sender
//! past it waits until the driver takes frames, the call's timeout, or the close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_rustls::TlsStream;

use super::server::Shared;
use super::tls::ClientTls;
use super::wire::{Handlers, Wire};
use super::{ConnConfig, Handler, driver};
use crate::auth::{Credentials, Signed, Signer};
use crate::codes::{ErrorCode, SUCCESS};
use crate::error::{CallError, ProtocolError};
use crate::frame::{Frame, Kind, auth_section_len};
use crate::rpc::{ErrorHeader, Rpc, decode_header, encode_header};

/// What a frame waiting for the driver costs beyond its bytes (the queue's own memory).
const QUEUED_OVERHEAD: usize = 64;

/// What `f` counts for while it waits for the driver.
pub(super) fn queued_cost(f: &Frame) -> usize {
    f.wire_len().saturating_add(QUEUED_OVERHEAD)
}

/// What a connection holds for its peer now, and the most it held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnLoad {
    /// The peer's requests being handled plus their replies not yet written.
    pub requests: usize,
    /// Bytes of the peer's requests being handled plus everything queued for writing.
    pub bytes: usize,
    pub peak_requests: usize,
    pub peak_bytes: usize,
    /// Bytes read and not yet parsed: a frame arriving.
    pub reading: usize,
}

/// The most bytes an answer to a connection's peer may take, as of the last time its
/// driver ran the handlers: unbounded until a server's connections together hold
/// `max_pending_bytes_total`, then what is left of the connection's fair share (an answer
/// past its room is refused as busy by the driver). A pull reads only this much, so that
/// it is answered with fewer messages rather than refused.
#[derive(Clone, Default)]
pub struct AnswerRoom(Room);

#[derive(Clone, Default)]
enum Room {
    #[default]
    Unbounded,
    Fixed(usize),
    Of(Arc<Inner>),
}

impl AnswerRoom {
    /// No bound (a request made in-process, without a connection).
    pub fn unbounded() -> Self {
        Self(Room::Unbounded)
    }

    /// Always `bytes` (another adapter's own bound, or a test's).
    pub fn fixed(bytes: usize) -> Self {
        Self(Room::Fixed(bytes))
    }

    /// The room now, in bytes.
    pub fn bytes(&self) -> usize {
        match &self.0 {
            Room::Unbounded => usize::MAX,
            Room::Fixed(bytes) => *bytes,
            Room::Of(c) => c.answer_room.load(Ordering::Relaxed),
        }
    }

    /// Tells the server that an answer of `len` bytes was refused for want of this room:
    /// counted and logged with the answers the driver refuses, and a shortage that lets
    /// it close connections whose peers read nothing of theirs.
    pub fn refused(&self, len: usize) {
        if let Room::Of(c) = &self.0
            && let Some(server) = c.server.get().and_then(Weak::upgrade)
        {
            server.refuse_answer(c.peer, len, self.bytes());
        }
    }
}

impl std::fmt::Debug for AnswerRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnswerRoom({})", self.bytes())
    }
}

/// [`ConnLoad`] as the driver publishes it.
#[derive(Default)]
pub(super) struct LoadCell {
    pub(super) requests: AtomicUsize,
    pub(super) bytes: AtomicUsize,
    pub(super) peak_requests: AtomicUsize,
    pub(super) peak_bytes: AtomicUsize,
    pub(super) reading: AtomicUsize,
}

impl LoadCell {
    pub(super) fn get(&self) -> ConnLoad {
        ConnLoad {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            peak_requests: self.peak_requests.load(Ordering::Relaxed),
            peak_bytes: self.peak_bytes.load(Ordering::Relaxed),
            reading: self.reading.load(Ordering::Relaxed),
        }
    }
}

pub(super) struct Inner {
    pub(super) id: u64,
    pub(super) peer: SocketAddr,
    pub(super) config: ConnConfig,
    /// Frames of calls and one-ways, for the driver to write.
    out: mpsc::UnboundedSender<Frame>,
    /// Cost of the frames in `out` (bytes plus [`QUEUED_OVERHEAD`] each).
    queued: AtomicUsize,
    /// Senders waiting for room in `out`, and their wake-up.
    room_waiters: AtomicUsize,
    room: Notify,
    calls: std::sync::Mutex<HashMap<u32, PendingCall>>,
    /// Whether the task that times out calls runs (started by the first call).
    sweeper: AtomicBool,
    next_id: AtomicU32,
    /// Set once, on close; `closed` tells waiters, `close_waker` the driver.
    is_closed: AtomicBool,
    closed: watch::Sender<bool>,
    pub(super) close_waker: AtomicWaker,
    pub(super) load: LoadCell,
    /// The most bytes an answer to the peer may take now (see [`AnswerRoom`]); set by a
    /// server connection's driver before it runs the handlers, unbounded otherwise.
    pub(super) answer_room: AtomicUsize,
    /// The server that admitted it (none: a client's), told of answers refused for room.
    pub(super) server: OnceLock<Weak<Shared>>,
    /// Signs the requests sent, once set.
    signer: OnceLock<Signer>,
}

impl Inner {
    /// Marks the connection closed and fails pending calls; true the first time.
    pub(super) fn mark_closed(&self) -> bool {
        self.is_closed.store(true, Ordering::SeqCst);
        let was = self.closed.send_replace(true);
        self.close_waker.wake();
        // Dropping the senders fails every pending call.
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clear();
        !was
    }

    pub(super) fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::SeqCst)
    }

    /// The driver took frames costing `cost` out of the queue.
    pub(super) fn took(&self, cost: usize) {
        self.queued.fetch_sub(cost, Ordering::SeqCst);
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Hands a response to the call waiting for it (a late one is dropped).
    pub(super) fn complete_call(&self, f: Frame) {
        let tx = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&f.request_id);
        if let Some(call) = tx {
            let _ = call.tx.send(Ok(f));
        }
    }

    /// Fails the calls whose deadline passed.
    fn time_out_calls(&self, now: Instant) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.values().all(|c| c.deadline > now) {
            return;
        }
        let late: Vec<u32> = calls
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(c) = calls.remove(&id) {
                let _ = c.tx.send(Err(CallError::Timeout(c.timeout)));
            }
        }
    }
}

/// A call waiting for its response, failed by the sweeper once its deadline passes (one
/// timer per connection, not one per call: calls are the hot path of a client).
struct PendingCall {
    tx: oneshot::Sender<Result<Frame, CallError>>,
    deadline: Instant,
    timeout: Duration,
}

/// How often a connection with calls looks for ones past their deadline: a call's timeout
/// fires within this after it.
const CALL_SWEEP: Duration = Duration::from_millis(50);

/// Times out the calls of `inner` until it closes.
async fn sweep_calls(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(CALL_SWEEP).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.is_closed() {
            return;
        }
        inner.time_out_calls(Instant::now());
    }
}

/// One end of a connection; cheap to clone. A connection opened with
/// [`Connection::connect`] closes when its last handle is dropped.
#[derive(Clone)]
pub struct Connection {
    pub(super) inner: Arc<Inner>,
    /// Present on handles given to the opener; the connection's own task holds a handle
    /// without it, so it does not keep the connection open.
    _owner: Option<Arc<Owner>>,
}

/// Closes the connection when the opener's last handle goes.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.mark_closed();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection#{}({})", self.inner.id, self.inner.peer)
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Leaves the count of waiting senders however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connection {
    /// Connects to `addr`; `handler` serves requests the other side sends us.
    pub async fn connect(
        addr: &str,
        handler: Arc<dyn Handler>,
        config: ConnConfig,
        timeout: Duration,
    ) -> Result<Connection, CallError> {
        Self::connect_with(addr, handler, config, timeout, None).await
    }

    /// [`Connection::connect`], over TLS when `tls` is given: the server's certificate is
    /// verified against its CA file for the host part of `addr`. `timeout` bounds the TCP
    /// connect and the handshake, each.
    pub async fn connect_with(
        addr: &str,
        handler: Arc<dyn Handler>,
        config: ConnConfig,
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Connection, CallError> {
        let connect_err = |error| CallError::Connect {
            addr: addr.to_owned(),
            error,
        };
        let timed_out = |what: &str| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no {what} within {timeout:?}"),
            ))
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(r) => r.map_err(connect_err)?,
            Err(_) => return Err(timed_out("connection")),
        };
        let conn = match tls {
            None => Self::start(stream, handler, config).map_err(connect_err)?,
            Some(tls) => {
                let (conn, rx) = Self::open(&stream, config).map_err(connect_err)?;
                let stream = match tokio::time::timeout(timeout, tls.connect(addr, stream)).await {
                    Ok(r) => r.map_err(connect_err)?,
                    Err(_) => return Err(timed_out("TLS handshake")),
                };
                driver::spawn(
                    TlsStream::from(stream),
                    conn.clone(),
                    Handlers::weir(handler),
                    Some(Wire::Weir),
                    rx,
                    None,
                );
                conn
            }
        };
        let owner = Arc::new(Owner(Arc::clone(&conn.inner)));
        Ok(Connection {
            inner: conn.inner,
            _owner: Some(owner),
        })
    }

    /// Runs a connection over an accepted or connected stream.
    pub fn start(
        stream: TcpStream,
        handler: Arc<dyn Handler>,
        config: ConnConfig,
    ) -> std::io::Result<Connection> {
        let (conn, rx) = Self::open(&stream, config)?;
        driver::spawn(
            stream,
            conn.clone(),
            Handlers::weir(handler),
            Some(Wire::Weir),
            rx,
            None,
        );
        Ok(conn)
    }

    /// A connection's handle and the queue its driver writes from.
    pub(super) fn open(
        stream: &TcpStream,
        config: ConnConfig,
    ) -> std::io::Result<(Connection, mpsc::UnboundedReceiver<Frame>)> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let (out, rx) = mpsc::unbounded_channel();
        let (closed, _) = watch::channel(false);
        let conn = Connection {
            inner: Arc::new(Inner {
                id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
                peer,
                config,
                out,
                queued: AtomicUsize::new(0),
                room_waiters: AtomicUsize::new(0),
                room: Notify::new(),
                calls: std::sync::Mutex::new(HashMap::new()),
                sweeper: AtomicBool::new(false),
                next_id: AtomicU32::new(1),
                is_closed: AtomicBool::new(false),
                closed,
                close_waker: AtomicWaker::new(),
                load: LoadCell::default(),
                answer_room: AtomicUsize::new(usize::MAX),
                server: OnceLock::new(),
                signer: OnceLock::new(),
            }),
            _owner: None,
        };
        Ok((conn, rx))
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// What this connection holds for its peer (requests being handled, replies and
    /// frames not yet written), and the most it held.
    pub fn load(&self) -> ConnLoad {
        self.inner.load.get()
    }

    /// How many bytes an answer to this connection's peer may take, read when the
    /// answer is made (see [`AnswerRoom`]).
    pub fn answer_room(&self) -> AnswerRoom {
        AnswerRoom(Room::Of(Arc::clone(&self.inner)))
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Closes the connection: the handlers of its requests are dropped, pending calls fail
    /// with `Closed`.
    pub fn close(&self) {
        self.inner.mark_closed();
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<u32, PendingCall>> {
        self.inner.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_error(&self) -> CallError {
        CallError::Closed {
            peer: self.inner.peer.to_string(),
        }
    }

    /// Signs every request and one-way sent from now on with `creds` (each connection is
    /// a session of its own, numbered from 1; see [`crate::auth`]). A connection's signer
    /// is set once: later calls change nothing.
    pub fn sign_with(&self, creds: Arc<Credentials>) {
        let _ = self.inner.signer.set(Signer::new(creds));
    }

    /// Queues `frame` for the driver, waiting while the queue is full; signs it last, so
    /// requests leave in about the order of their sequence numbers.
    async fn send(&self, mut frame: Frame) -> Result<(), CallError> {
        let signer = self.inner.signer.get();
        let auth = signer.map_or(0, |s| auth_section_len(s.auth_len()));
        let len = frame.len() + auth;
        let max = self.inner.config.max_frame;
        if len > max {
            return Err(ProtocolError::FrameTooLarge { len, max }.into());
        }
        let cost = queued_cost(&frame) + auth;
        self.reserve(cost).await?;
        let queued = match signer {
            Some(s) => {
                let (header, body) = (frame.header.clone(), frame.body.clone());
                let req = Signed {
                    oneway: frame.kind == Kind::Oneway,
                    code: frame.code,
                    header: &header,
                    body: &body,
                };
                s.sign_and(&req, |auth| {
                    frame.auth = auth;
                    self.inner.out.send(frame)
                })
            }
            None => self.inner.out.send(frame),
        };
        if queued.is_err() {
            self.inner.took(cost);
            return Err(self.closed_error());
        }
        Ok(())
    }

    /// Counts `cost` into the queue once it fits.
    async fn reserve(&self, cost: usize) -> Result<(), CallError> {
        let limit = self.inner.config.max_pending_bytes;
        let queued = &self.inner.queued;
        let fits = |cur: usize| cur == 0 || cur.saturating_add(cost) <= limit;
        loop {
            let cur = queued.load(Ordering::SeqCst);
            if fits(cur) {
                let next = cur.saturating_add(cost);
                if queued
                    .compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if self.is_closed() {
                return Err(self.closed_error());
            }
            // Register first, then look again, so a wake-up in between is not missed.
            let mut room = pin!(self.inner.room.notified());
            room.as_mut().enable();
            self.inner.room_waiters.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&self.inner.room_waiters);
            if fits(queued.load(Ordering::SeqCst)) {
                continue;
            }
            let mut closed = self.inner.closed.subscribe();
            tokio::select! {
                _ = room => {}
                _ = closed.wait_for(|c| *c) => {}
            }
        }
    }

    /// Sends a request and waits for its response: the decoded response header and the
    /// raw body. The timeout covers waiting for room to send too.
    pub async fn call<R: Rpc>(
        &self,
        req: &R,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(R::Response, Bytes), CallError> {
        let header = encode_header(req, R::CODE.as_str())?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        if !self.inner.sweeper.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep_calls(Arc::downgrade(&self.inner)));
        }
        let call = PendingCall {
            tx,
            deadline: Instant::now() + timeout,
            timeout,
        };
        self.calls().insert(id, call);
        if self.is_closed() {
            self.calls().remove(&id);
            return Err(self.closed_error());
        }
        let frame = Frame {
            kind: Kind::Request,
            request_id: id,
            code: R::CODE as u16,
            auth: Bytes::new(),
            header,
            body,
        };
        // The sweeper fails the call at its deadline, also while it waits for room to send.
        let exchange = async {
            tokio::select! {
                sent = self.send(frame) => sent?,
                answered = &mut rx => return answered.map_err(|_| self.closed_error())?,
            }
            (&mut rx).await.map_err(|_| self.closed_error())?
        };
        let resp = match exchange.await {
            Ok(frame) => frame,
            Err(e) => {
                self.calls().remove(&id);
                return Err(e);
            }
        };
        if resp.code != SUCCESS {
            let message = decode_header::<ErrorHeader>(&resp.header, "error header")
                .map(|h| h.message)
                .unwrap_or_else(|e| format!("(unreadable error message: {e})"));
            return Err(CallError::Remote {
                code: ErrorCode::from_u16(resp.code).unwrap_or(ErrorCode::SystemError),
                message,
            });
        }
        let value = decode_header(&resp.header, "response header")?;
        Ok((value, resp.body))
    }

    /// Sends a request that gets no response (waiting, while the connection's queue is
    /// full, for room or the close).
    /// Sends a one-way request whose header is already encoded (another protocol's, as
    /// its adapter wrote it; see `weir_remoting::RemotingCommand::header_parts`).
    pub async fn oneway_raw(&self, code: u16, header: Bytes, body: Bytes) -> Result<(), CallError> {
        let frame = Frame {
            kind: Kind::Oneway,
            request_id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            code,
            auth: Bytes::new(),
            header,
            body,
        };
        self.send(frame).await
    }

    pub async fn oneway<R: Rpc>(&self, req: &R, body: Bytes) -> Result<(), CallError> {
        let frame = Frame {
            kind: Kind::Oneway,
            request_id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            code: R::CODE as u16,
            auth: Bytes::new(),
            header: encode_header(req, R::CODE.as_str())?,
            body,
        };
        self.send(frame).await
    }
}
