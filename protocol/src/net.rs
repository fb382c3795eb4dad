//! A connection that carries many requests at once in both directions, and a server.
//!
//! Either side may send requests: the client's calls, and the server's own requests to
//! clients (transaction checks, rebalance notices). Responses are matched to calls by
//! request id. Timeouts are the caller's: this module has no I/O policy of its own.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::codes::{ErrorCode, SUCCESS};
use crate::error::{CallError, ProtocolError};
use crate::frame::{self, FIXED_LEN, Frame, Kind};
use crate::rpc::{ErrorHeader, Rpc, decode_header, encode_header};

/// An inbound request, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    pub code: u16,
    pub request_id: u32,
    pub oneway: bool,
    pub header: Bytes,
    pub body: Bytes,
}

impl Request {
    pub fn decode<R: Rpc>(&self) -> Result<R, ProtocolError> {
        decode_header(&self.header, R::CODE.as_str())
    }
}

/// What a handler answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub header: Bytes,
    pub body: Bytes,
}

impl Reply {
    pub fn ok<T: bincode::Encode>(value: &T) -> Reply {
        Self::ok_with_body(value, Bytes::new())
    }

    pub fn ok_with_body<T: bincode::Encode>(value: &T, body: Bytes) -> Reply {
        match encode_header(value, "response header") {
            Ok(header) => Reply {
                status: SUCCESS,
                header,
                body,
            },
            Err(e) => Reply::error(ErrorCode::SystemError, e.to_string()),
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        let header = ErrorHeader {
            message: message.into(),
        };
        Reply {
            status: code as u16,
            header: encode_header(&header, "error header").unwrap_or_default(),
            body: Bytes::new(),
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Serves the requests arriving on connections.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply>;
    /// Called once when a connection closes.
    fn on_close(&self, _conn: &Connection) {}
}

/// Answers every request with "not supported": for clients that serve nothing.
pub struct NoHandler;

impl Handler for NoHandler {
    fn handle<'a>(&'a self, _conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            Reply::error(
                ErrorCode::RequestCodeNotSupported,
                format!("request code {} is not served here", req.code),
            )
        })
    }
}

/// Limits of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    pub max_frame: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            max_frame: frame::DEFAULT_MAX_FRAME,
        }
    }
}

struct Inner {
    id: u64,
    peer: SocketAddr,
    config: ConnConfig,
    out: mpsc::Sender<Bytes>,
    pending: std::sync::Mutex<HashMap<u32, oneshot::Sender<Frame>>>,
    next_id: AtomicU32,
    closed: watch::Sender<bool>,
}

/// One end of a connection; cheap to clone. A connection opened with
/// [`Connection::connect`] closes when its last handle is dropped.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
    /// Present on handles given to the opener; the connection's own tasks hold handles
    /// without it, so they do not keep it open.
    _owner: Option<Arc<Owner>>,
}

/// Closes the connection when the opener's last handle goes.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.mark_closed();
    }
}

impl Inner {
    /// Marks the connection closed and fails pending calls; true the first time.
    fn mark_closed(&self) -> bool {
        let was = self.closed.send_replace(true);
        // Dropping the senders fails every pending call.
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        !was
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection#{}({})", self.inner.id, self.inner.peer)
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

impl Connection {
    /// Connects to `addr`; `handler` serves requests the other side sends us.
    pub async fn connect(
        addr: &str,
        handler: Arc<dyn Handler>,
        config: ConnConfig,
        timeout: Duration,
    ) -> Result<Connection, CallError> {
        let connect_err = |error| CallError::Connect {
            addr: addr.to_owned(),
            error,
        };
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(r) => r.map_err(connect_err)?,
            Err(_) => {
                return Err(connect_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )));
            }
        };
        let conn = Self::start(stream, handler, config).map_err(connect_err)?;
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
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let (rd, wr) = stream.into_split();
        let (out, out_rx) = mpsc::channel(1024);
        let (closed, _) = watch::channel(false);
        let conn = Connection {
            inner: Arc::new(Inner {
                id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
                peer,
                config,
                out,
                pending: std::sync::Mutex::new(HashMap::new()),
                next_id: AtomicU32::new(1),
                closed,
            }),
            _owner: None,
        };
        tokio::spawn(write_loop(wr, out_rx, conn.inner.closed.subscribe()));
        tokio::spawn(read_loop(
            BufReader::with_capacity(64 * 1024, rd),
            conn.clone(),
            handler,
        ));
        Ok(conn)
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }
    pub fn peer(&self) -> SocketAddr {
        self.inner.peer
    }
    pub fn is_closed(&self) -> bool {
        *self.inner.closed.borrow()
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Closes the connection: pending calls fail with `Closed`.
    pub fn close(&self) {
        self.mark_closed();
    }

    fn mark_closed(&self) -> bool {
        self.inner.mark_closed()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<Frame>>> {
        self.inner.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed_error(&self) -> CallError {
        CallError::Closed {
            peer: self.inner.peer.to_string(),
        }
    }

    async fn send(&self, frame: Frame) -> Result<(), CallError> {
        let mut buf = BytesMut::with_capacity(frame.wire_len());
        frame.encode(&mut buf, self.inner.config.max_frame)?;
        self.inner
            .out
            .send(buf.freeze())
            .await
            .map_err(|_| self.closed_error())
    }

    /// Sends a request and waits for its response: the decoded response header and the
    /// raw body.
    pub async fn call<R: Rpc>(
        &self,
        req: &R,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(R::Response, Bytes), CallError> {
        let header = encode_header(req, R::CODE.as_str())?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, tx);
        if self.is_closed() {
            self.pending().remove(&id);
            return Err(self.closed_error());
        }
        let frame = Frame {
            kind: Kind::Request,
            request_id: id,
            code: R::CODE as u16,
            header,
            body,
        };
        if let Err(e) = self.send(frame).await {
            self.pending().remove(&id);
            return Err(e);
        }
        let resp = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => return Err(self.closed_error()),
            Err(_) => {
                self.pending().remove(&id);
                return Err(CallError::Timeout(timeout));
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

    /// Sends a request that gets no response.
    pub async fn oneway<R: Rpc>(&self, req: &R, body: Bytes) -> Result<(), CallError> {
        let frame = Frame {
            kind: Kind::Oneway,
            request_id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            code: R::CODE as u16,
            header: encode_header(req, R::CODE.as_str())?,
            body,
        };
        self.send(frame).await
    }
}

async fn write_loop(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    mut closed: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = closed.wait_for(|c| *c) => None,
        };
        let Some(first) = first else { break };
        buf.extend_from_slice(&first);
        // Coalesce what is already queued into one write.
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => buf.extend_from_slice(&f),
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            debug!(error = %e, "connection write failed");
            break;
        }
        buf.clear();
    }
    // Flush what was queued before the close (e.g. a last error reply).
    while let Ok(f) = rx.try_recv() {
        if wr.write_all(&f).await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

async fn read_loop(
    mut rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    conn: Connection,
    handler: Arc<dyn Handler>,
) {
    let max = conn.inner.config.max_frame;
    let mut closed = conn.inner.closed.subscribe();
    loop {
        let next = tokio::select! {
            r = frame::read_frame(&mut rd, max) => r,
            _ = closed.wait_for(|c| *c) => break,
        };
        match next {
            Ok(Some(f)) => match f.kind {
                Kind::Response => {
                    if let Some(tx) = conn.pending().remove(&f.request_id) {
                        let _ = tx.send(f);
                    }
                }
                Kind::Request | Kind::Oneway => {
                    let (conn, handler) = (conn.clone(), Arc::clone(&handler));
                    tokio::spawn(async move {
                        let oneway = f.kind == Kind::Oneway;
                        let req = Request {
                            code: f.code,
                            request_id: f.request_id,
                            oneway,
                            header: f.header,
                            body: f.body,
                        };
                        let reply = handler.handle(&conn, req).await;
                        if !oneway {
                            let frame = Frame {
                                kind: Kind::Response,
                                request_id: f.request_id,
                                code: reply.status,
                                header: reply.header,
                                body: reply.body,
                            };
                            if let Err(e) = conn.send(frame).await {
                                debug!(error = %e, "could not send a reply");
                            }
                        }
                    });
                }
            },
            Ok(None) => break,
            Err(e) => {
                warn!(peer = %conn.peer(), error = %e, "closing connection on a bad frame");
                // Tell the sender why, under its request id when it can be read.
                let mut fixed = [0u8; FIXED_LEN];
                let request_id = match &e {
                    ProtocolError::FrameTooLarge { .. } => {
                        let read = rd.read_exact(&mut fixed);
                        match tokio::time::timeout(Duration::from_secs(1), read).await {
                            Ok(Ok(_)) => {
                                u32::from_be_bytes([fixed[2], fixed[3], fixed[4], fixed[5]])
                            }
                            _ => 0,
                        }
                    }
                    _ => 0,
                };
                let reply = Reply::error(ErrorCode::BadRequest, e.to_string());
                let frame = Frame {
                    kind: Kind::Response,
                    request_id,
                    code: reply.status,
                    header: reply.header,
                    body: reply.body,
                };
                let _ = conn.send(frame).await;
                break;
            }
        }
    }
    // Runs once per connection, however it closed.
    conn.mark_closed();
    handler.on_close(&conn);
}

/// A running server; dropping it does not stop it, `shutdown` does.
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    conns: Arc<AsyncMutex<HashMap<u64, Connection>>>,
    /// The accept loop; it owns the listener.
    acceptor: AsyncMutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    /// Accepts connections on `listener` and serves them with `handler`.
    pub fn start(
        listener: TcpListener,
        handler: Arc<dyn Handler>,
        config: ConnConfig,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let (stop, mut stop_rx) = watch::channel(false);
        let conns: Arc<AsyncMutex<HashMap<u64, Connection>>> = Arc::default();
        let tracked = Arc::clone(&conns);
        let acceptor = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    biased;
                    _ = stop_rx.wait_for(|s| *s) => break,
                    a = listener.accept() => a,
                };
                match accepted {
                    Ok((stream, _)) => {
                        match Connection::start(stream, Arc::clone(&handler), config) {
                            Ok(conn) => {
                                let (id, tracked) = (conn.id(), Arc::clone(&tracked));
                                tracked.lock().await.insert(id, conn.clone());
                                tokio::spawn(async move {
                                    conn.closed().await;
                                    tracked.lock().await.remove(&id);
                                });
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
            conns,
            acceptor: AsyncMutex::new(Some(acceptor)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes every connection. The listener is closed first, so no
    /// connection is accepted (and served) after this returns.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        if let Some(acceptor) = self.acceptor.lock().await.take() {
            let _ = acceptor.await;
        }
        let conns: Vec<Connection> = self.conns.lock().await.values().cloned().collect();
        for c in conns {
            c.close();
        }
    }
}
