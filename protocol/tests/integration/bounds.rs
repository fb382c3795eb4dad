#![cfg(feature = "net")]
//! What a peer can make a connection hold, and for how long: pending work per connection,
//! frame and idle timeouts, the connection cap, cancellation on close, bad frames against
//! ordinary resets. Over real sockets on 127.0.0.1. What the connections hold together:
//! `server_total`, over the fixtures here.

mod server_total;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_protocol::frame::{Frame, Kind};
use weir_protocol::net::BoxFuture;
use weir_protocol::route::{GetRoute, TopicRoute};
use weir_protocol::rpc::encode_header;
use weir_protocol::{
    CallError, ConnConfig, Connection, FAIR_SHARE, Handler, MIN_FAIR_SHARE, NoHandler, Reply,
    Request, RequestCode, Server, ServerConfig, ServerStats,
};

const T: Duration = Duration::from_secs(10);
/// Body of every reply to topic "big".
const BIG: usize = 16 << 10;

/// GetRoute "big": a reply with a BIG body; "huge": 1 MiB; "hold": never answers (counted while held);
/// anything else: an empty route at once.
struct TestHandler {
    held: Arc<AtomicUsize>,
}

struct Held(Arc<AtomicUsize>);
impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handler for TestHandler {
    fn handle<'a>(&'a self, _conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let topic = req
                .decode::<GetRoute>()
                .map(|r| r.topic)
                .unwrap_or_default();
            match topic.as_str() {
                "big" => Reply::ok_with_body(&TopicRoute::default(), Bytes::from(vec![7u8; BIG])),
                "huge" => {
                    Reply::ok_with_body(&TopicRoute::default(), Bytes::from(vec![7u8; 1 << 20]))
                }
                "hold" => {
                    self.held.fetch_add(1, Ordering::SeqCst);
                    let _held = Held(Arc::clone(&self.held));
                    std::future::pending::<()>().await;
                    Reply::ok(&TopicRoute::default())
                }
                _ => Reply::ok(&TopicRoute::default()),
            }
        })
    }
}

struct Fixture {
    server: Server,
    addr: String,
    held: Arc<AtomicUsize>,
}

async fn fixture(config: ServerConfig) -> Fixture {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(TestHandler {
        held: Arc::clone(&held),
    });
    let server = Server::start(listener, handler, config).unwrap();
    let addr = server.local_addr().to_string();
    Fixture { server, addr, held }
}

fn with_conn(conn: ConnConfig) -> ServerConfig {
    ServerConfig {
        conn,
        ..ServerConfig::default()
    }
}

async fn client(addr: &str) -> Connection {
    Connection::connect(addr, Arc::new(NoHandler), ConnConfig::default(), T)
        .await
        .unwrap()
}

async fn route(conn: &Connection, topic: &str) -> Result<(TopicRoute, Bytes), CallError> {
    conn.call(
        &GetRoute {
            topic: topic.into(),
        },
        Bytes::new(),
        T,
    )
    .await
}

/// A GetRoute request for "small" with a `body`-byte body, encoded.
fn big_request(body: usize) -> BytesMut {
    let mut out = BytesMut::new();
    Frame {
        kind: Kind::Request,
        request_id: 1,
        code: RequestCode::GetRoute as u16,
        auth: Bytes::new(),
        header: encode_header(
            &GetRoute {
                topic: "small".into(),
            },
            "test",
        )
        .unwrap(),
        body: Bytes::from(vec![0u8; body]),
    }
    .encode(&mut out, 16 << 20)
    .unwrap();
    out
}

/// A GetRoute request frame, encoded.
fn request(id: u32, topic: &str, out: &mut BytesMut) {
    Frame {
        kind: Kind::Request,
        request_id: id,
        code: RequestCode::GetRoute as u16,
        auth: Bytes::new(),
        header: encode_header(
            &GetRoute {
                topic: topic.into(),
            },
            "test",
        )
        .unwrap(),
        body: Bytes::new(),
    }
    .encode(out, 1 << 20)
    .unwrap();
}

async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads until the peer closes (EOF or reset), within `within`; what was read.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after {within:?} ({} bytes read)", got.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_holds_at_most_the_bound_and_others_are_served() {
    const MAX_REQUESTS: usize = 100;
    const MAX_BYTES: usize = 1 << 20;
    let f = fixture(with_conn(ConnConfig {
        max_pending_requests: MAX_REQUESTS,
        max_pending_bytes: MAX_BYTES,
        ..ConnConfig::default()
    }))
    .await;
    // 20,000 pipelined requests for BIG replies (320 MB of them), never read.
    let mut frames = BytesMut::new();
    for id in 0..20_000 {
        request(id, "big", &mut frames);
    }
    let request_len = frames.len() / 20_000;
    let (hostile_rd, mut hostile_wr) = TcpStream::connect(&f.addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        let _ = hostile_wr.write_all(&frames).await;
        hostile_wr
    });
    // The server fills up to the bound and stops reading.
    let full =
        |s: &ServerStats| s.pending_requests >= MAX_REQUESTS || s.pending_bytes >= MAX_BYTES - BIG;
    eventually("the hostile connection reaching its bound", T, || {
        full(&f.server.stats())
    })
    .await;
    // Another connection is served with normal latency meanwhile.
    let other = client(&f.addr).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..200 {
        let started = Instant::now();
        route(&other, "small").await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest call {slowest:?}"
    );
    let s = f.server.stats();
    assert!(full(&s), "{s:?}");
    assert!(s.peak_pending_requests <= MAX_REQUESTS, "{s:?}");
    // One frame read and one reply may go past the byte bound.
    let reply_len = BIG + 64;
    assert!(
        s.peak_pending_bytes <= MAX_BYTES + reply_len + request_len,
        "{s:?}"
    );
    // The hostile client goes: everything it held is released.
    writer.abort();
    let _ = writer.await;
    drop(hostile_rd);
    eventually("the hostile connection's release", T, || {
        let s = f.server.stats();
        s.connections == 1 && s.pending_requests == 0 && s.pending_bytes == 0
    })
    .await;
    route(&other, "small").await.unwrap();
}

#[tokio::test]
async fn a_trickling_frame_is_dropped_at_the_frame_read_timeout() {
    let timeout = Duration::from_millis(400);
    let f = fixture(with_conn(ConnConfig {
        frame_read_timeout: timeout,
        ..ConnConfig::default()
    }))
    .await;
    let mut one = BytesMut::new();
    request(1, "trickle", &mut one);
    // A frame in two parts well within the timeout is served.
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    let half = one.len() / 2;
    s.write_all(&one[..half]).await.unwrap();
    tokio::time::sleep(timeout / 4).await;
    s.write_all(&one[half..]).await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(T, s.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    // One byte every 100 ms: the whole frame would take seconds.
    let (mut rd, mut wr) = TcpStream::connect(&f.addr).await.unwrap().into_split();
    let started = Instant::now();
    let bytes = one.clone();
    let trickle = tokio::spawn(async move {
        for b in bytes.iter() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, rd.read_to_end(&mut buf))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(buf.is_empty(), "the trickled frame was answered");
    assert!(elapsed >= timeout, "closed after {elapsed:?}");
    assert!(
        elapsed < timeout * 3,
        "closed after {elapsed:?}, past the timeout"
    );
    trickle.abort();
    let s = f.server.stats();
    assert_eq!((s.frame_timeouts, s.bad_frames), (1, 0), "{s:?}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let idle = Duration::from_millis(500);
    let f = fixture(with_conn(ConnConfig {
        idle_timeout: Some(idle),
        ..ConnConfig::default()
    }))
    .await;
    let quiet = client(&f.addr).await;
    route(&quiet, "x").await.unwrap();
    let last = Instant::now();
    let busy = client(&f.addr).await;
    let pinger = {
        let busy = busy.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                route(&busy, "x").await.unwrap();
                tokio::time::sleep(idle / 5).await;
            }
        })
    };
    tokio::time::timeout(T, quiet.closed()).await.unwrap();
    let after = last.elapsed();
    assert!(after >= idle, "closed after {after:?}");
    assert!(after < idle * 2, "closed after {after:?}");
    pinger.await.unwrap();
    assert!(!busy.is_closed());
    assert_eq!(f.server.stats().idle_closes, 1);
    // A call on the closed connection fails clearly; a new connection is served.
    assert!(matches!(
        route(&quiet, "x").await,
        Err(CallError::Closed { .. })
    ));
    route(&client(&f.addr).await, "x").await.unwrap();
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let f = fixture(ServerConfig {
        max_connections: 3,
        ..ServerConfig::default()
    })
    .await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        let c = client(&f.addr).await;
        route(&c, "x").await.unwrap();
        conns.push(c);
    }
    let mut fourth = TcpStream::connect(&f.addr).await.unwrap();
    let mut one = BytesMut::new();
    request(1, "x", &mut one);
    let _ = fourth.write_all(&one).await;
    assert!(read_to_close(&mut fourth, T).await.is_empty());
    assert_eq!(f.server.stats().refused, 1);
    // Below the cap again, connections are served.
    conns.pop().unwrap().close();
    eventually("a connection's close", T, || {
        f.server.stats().connections == 2
    })
    .await;
    route(&client(&f.addr).await, "x").await.unwrap();
    assert_eq!(f.server.stats().refused, 1);
}

#[tokio::test]
async fn a_closed_connection_drops_the_handlers_of_its_requests() {
    let f = fixture(ServerConfig::default()).await;
    let conn = client(&f.addr).await;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let conn = conn.clone();
            tokio::spawn(async move { route(&conn, "hold").await })
        })
        .collect();
    eventually("10 requests held", T, || {
        f.held.load(Ordering::SeqCst) == 10
    })
    .await;
    conn.close();
    eventually("the held requests dropped", Duration::from_secs(1), || {
        f.held.load(Ordering::SeqCst) == 0
    })
    .await;
    for c in calls {
        assert!(matches!(c.await.unwrap(), Err(CallError::Closed { .. })));
    }
    eventually("the connection gone", T, || {
        f.server.stats().connections == 0
    })
    .await;
}

#[tokio::test]
async fn resets_and_ends_mid_frame_are_not_bad_frames() {
    let f = fixture(with_conn(ConnConfig {
        max_frame: 64 << 10,
        ..ConnConfig::default()
    }))
    .await;
    let mut one = BytesMut::new();
    request(1, "x", &mut one);
    // The peer ends mid-frame.
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    s.write_all(&one[..5]).await.unwrap();
    s.shutdown().await.unwrap();
    eventually("an end mid-frame", T, || f.server.stats().resets == 1).await;
    // The peer resets mid-frame.
    let mut s = TcpStream::connect(&f.addr).await.unwrap();
    s.write_all(&one[..5]).await.unwrap();
    eventually("the connection accepted", T, || {
        f.server.stats().connections == 1
    })
    .await;
    // (Blocking on drop is what is wanted: the reset.)
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
    eventually("a reset", T, || f.server.stats().resets == 2).await;
    assert_eq!(f.server.stats().bad_frames, 0);
    // Protocol violations: a bad version, a frame past the maximum.
    let mut bad = one.clone();
    bad[4] = 9;
    let mut huge = BytesMut::new();
    huge.extend_from_slice(&(1u32 << 20).to_be_bytes());
    huge.extend_from_slice(&one[4..]);
    for garbage in [bad, huge] {
        let mut s = TcpStream::connect(&f.addr).await.unwrap();
        s.write_all(&garbage).await.unwrap();
        assert!(!read_to_close(&mut s, T).await.is_empty(), "no error reply");
    }
    let s = f.server.stats();
    assert_eq!((s.bad_frames, s.resets), (2, 2), "{s:?}");
    eventually("every connection gone", T, || {
        f.server.stats().connections == 0
    })
    .await;
}

/// A server that floods its client with requests and never reads: the client holds at
/// most its own bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooded_by_its_server_stays_bounded() {
    const MAX_REQUESTS: usize = 50;
    const MAX_BYTES: usize = 512 << 10;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let flooder = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut frames = BytesMut::new();
        for id in 0..20_000 {
            request(id, "big", &mut frames);
        }
        let _ = wr.write_all(&frames).await;
        (rd, wr)
    });
    let conn = Connection::connect(
        &addr,
        Arc::new(TestHandler {
            held: Arc::default(),
        }),
        ConnConfig {
            max_pending_requests: MAX_REQUESTS,
            max_pending_bytes: MAX_BYTES,
            ..ConnConfig::default()
        },
        T,
    )
    .await
    .unwrap();
    eventually("the client reaching its bound", T, || {
        let l = conn.load();
        l.requests >= MAX_REQUESTS || l.bytes >= MAX_BYTES - BIG
    })
    .await;
    let l = conn.load();
    assert!(l.peak_requests <= MAX_REQUESTS, "{l:?}");
    assert!(l.peak_bytes <= MAX_BYTES + BIG + 1024, "{l:?}");
    flooder.abort();
}

/// Counts the requests it handles and, at the first, wakes whoever waits on `woken`.
struct CountingHandler {
    handled: Arc<AtomicUsize>,
    woken: Arc<tokio::sync::Notify>,
}

impl Handler for CountingHandler {
    fn handle<'a>(&'a self, _conn: &'a Connection, _req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            if self.handled.fetch_add(1, Ordering::SeqCst) == 0 {
                self.woken.notify_one();
            }
            Reply::ok(&TopicRoute::default())
        })
    }
}

#[tokio::test]
async fn a_burst_of_requests_lets_what_they_wake_run_before_the_burst_ends() {
    // One thread: the connection's task and the woken one take turns on it, as a
    // connection's requests and a sync master's replication stream do on a busy worker.
    // A server's connection takes 64 requests a poll: a burst of four times that lets
    // the woken task run after the first of them.
    const BURST: usize = 256;
    let handled = Arc::new(AtomicUsize::new(0));
    let woken = Arc::new(tokio::sync::Notify::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handler = Arc::new(CountingHandler {
        handled: Arc::clone(&handled),
        woken: Arc::clone(&woken),
    });
    let server = Server::start(listener, handler, ServerConfig::default()).unwrap();
    let seen = {
        let handled = Arc::clone(&handled);
        tokio::spawn(async move {
            woken.notified().await;
            handled.load(Ordering::SeqCst)
        })
    };
    let mut frames = BytesMut::new();
    for id in 0..BURST {
        request(id as u32, "burst", &mut frames);
    }
    let mut peer = TcpStream::connect(server.local_addr()).await.unwrap();
    peer.write_all(&frames).await.unwrap();
    let seen = tokio::time::timeout(T, seen).await.unwrap().unwrap();
    assert!(
        seen < BURST / 2,
        "the woken task ran only after {seen} of {BURST} pipelined requests were handled"
    );
    eventually("the whole burst handled", T, || {
        handled.load(Ordering::SeqCst) == BURST
    })
    .await;
}
