#![cfg(feature = "net")]
//! What a peer can make a connection hold, and for how long: pending work per connection,
//! frame and idle timeouts, the connection cap, cancellation on close, bad frames against
//! ordinary resets. Over real sockets on 127.0.0.1.

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
    CallError, ConnConfig, Connection, FAIR_SHARE, Handler, NoHandler, Reply, Request, RequestCode,
    Server, ServerConfig, ServerStats,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_together_hold_at_most_the_servers_total_and_others_are_served() {
    const PER_CONN: usize = 8 << 20;
    const TOTAL: usize = 4 << 20;
    const HOSTILE: usize = 12;
    let f = fixture(ServerConfig {
        conn: ConnConfig {
            max_pending_requests: 4096,
            max_pending_bytes: PER_CONN,
            ..ConnConfig::default()
        },
        max_pending_bytes_total: TOTAL,
        ..ServerConfig::default()
    })
    .await;
    // Twelve connections, each pipelining 2,000 requests for BIG replies (32 MB of them)
    // and never reading: alone, each would hold its own bound, 96 MiB together.
    let mut frames = BytesMut::new();
    for id in 0..2_000 {
        request(id, "big", &mut frames);
    }
    let request_len = frames.len() / 2_000;
    let frames = frames.freeze();
    let mut hostile = Vec::new();
    for _ in 0..HOSTILE {
        let (rd, mut wr) = TcpStream::connect(&f.addr).await.unwrap().into_split();
        let frames = frames.clone();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&frames).await;
            wr
        });
        hostile.push((rd, writer));
    }
    // Past the total, a connection holding its fair share pauses; one holding less goes
    // on, up to one frame and one reply past it. A connection counts the others' bytes as
    // last published: the one on the other worker may be filling up to the total too.
    let reply_len = BIG + 64;
    let bound = 2 * TOTAL + HOSTILE * (FAIR_SHARE + reply_len + request_len);
    let highest = Arc::new(AtomicUsize::new(0));
    let stats = f.server.stats_handle();
    let sampler = {
        let highest = Arc::clone(&highest);
        tokio::spawn(async move {
            loop {
                highest.fetch_max(stats.stats().pending_bytes, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    eventually("the connections reaching the server's total", T, || {
        f.server.stats().pending_bytes >= TOTAL
    })
    .await;
    // Another connection is served meanwhile, big replies included.
    let other = client(&f.addr).await;
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let started = Instant::now();
        let topic = if i % 2 == 0 { "small" } else { "big" };
        route(&other, topic).await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest call {slowest:?}"
    );
    sampler.abort();
    let highest = highest.load(Ordering::SeqCst);
    let s = f.server.stats();
    assert!(
        highest <= bound,
        "held {highest} bytes at most, past {bound}: {s:?}"
    );
    assert!(s.pending_bytes <= bound, "{s:?}");
    assert!(s.budget_pauses >= 1, "{s:?}");
    // The hostile connections go: everything they held is released.
    for (rd, writer) in hostile {
        writer.abort();
        let _ = writer.await;
        drop(rd);
    }
    eventually("the hostile connections' release", T, || {
        let s = f.server.stats();
        s.connections == 1 && s.pending_bytes == 0
    })
    .await;
    route(&other, "big").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_are_read_within_the_servers_total_and_small_ones_are_not_held_up() {
    const TOTAL: usize = 4 << 20;
    const HOSTILE: usize = 12;
    /// What a frame waiting for its room may have read: 64 KiB and a chunk.
    const WAITING: usize = (64 << 10) + (32 << 10);
    let f = fixture(ServerConfig {
        max_pending_bytes_total: TOTAL,
        ..ServerConfig::default()
    })
    .await;
    // Twelve connections each send the first half of a 15 MiB request and stop: read
    // as it came, that would be 90 MiB held.
    let mut whole = big_request(15 << 20);
    let half = whole.split_to(whole.len() / 2).freeze();
    let hostile: Vec<_> = (0..HOSTILE)
        .map(|_| {
            let (addr, half) = (f.addr.clone(), half.clone());
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                let _ = s.write_all(&half).await;
                std::future::pending::<()>().await;
            })
        })
        .collect();
    // One reads its half (its room is the whole total); the others wait.
    eventually("the others waiting for room", T, || {
        f.server.stats().frame_waits >= (HOSTILE - 1) as u64
    })
    .await;
    eventually("the first half read", T, || {
        f.server.stats().reading_bytes >= half.len()
    })
    .await;
    let s = f.server.stats();
    assert!(
        s.reading_bytes <= half.len() + (HOSTILE - 1) * WAITING,
        "{s:?}"
    );
    // Small requests are not held up; a large one waits its turn.
    let other = client(&f.addr).await;
    for _ in 0..100 {
        route(&other, "small").await.unwrap();
    }
    let (mut legit, mut legit_wr) = TcpStream::connect(&f.addr).await.unwrap().into_split();
    let request = big_request(6 << 20);
    let writer = tokio::spawn(async move {
        legit_wr.write_all(&request).await.unwrap();
        legit_wr
    });
    eventually("the large request waiting", T, || {
        f.server.stats().frame_waits >= HOSTILE as u64
    })
    .await;
    // The half frames' peers go: the room passes on, and the large request is answered.
    for h in hostile {
        h.abort();
        let _ = h.await;
    }
    let mut len = [0u8; 4];
    tokio::time::timeout(T, legit.read_exact(&mut len))
        .await
        .expect("the large request answered once the others went")
        .unwrap();
    // (Its write half kept open: a close would end the connection.)
    let _legit_wr = writer.await.unwrap();
    eventually("everything released", T, || {
        let s = f.server.stats();
        s.connections == 2 && s.reading_bytes == 0
    })
    .await;
}

/// A connection paused at its own bound (replies it does not read) does not take the room
/// of large frames: it could not use it, and the others' large frames would wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_connection_does_not_take_the_room_of_large_frames() {
    let f = fixture(ServerConfig {
        conn: ConnConfig {
            max_pending_bytes: 64 << 10,
            ..ConnConfig::default()
        },
        max_pending_bytes_total: 4 << 20,
        ..ServerConfig::default()
    })
    .await;
    // Eight requests for 1 MiB replies, never read (more than the sockets buffer): the
    // connection pauses at its bound with every request parsed; then the start of a
    // 15 MiB frame.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut hostile = socket.connect(f.addr.parse().unwrap()).await.unwrap();
    let mut frames = BytesMut::new();
    for id in 0..8 {
        request(id, "huge", &mut frames);
    }
    hostile.write_all(&frames).await.unwrap();
    eventually("the connection paused at its bound", T, || {
        f.server.stats().pending_bytes >= 64 << 10
    })
    .await;
    let start = big_request(15 << 20).split_to(70 << 10);
    hostile.write_all(&start).await.unwrap();
    eventually("the frame's start read", T, || {
        f.server.stats().reading_bytes >= 60 << 10
    })
    .await;
    // Another connection's large request is read and answered at once.
    let (mut legit, mut legit_wr) = TcpStream::connect(&f.addr).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        legit_wr.write_all(&big_request(6 << 20)).await.unwrap();
        legit_wr
    });
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), legit.read_exact(&mut len))
        .await
        .expect("the large request answered while the other connection is paused")
        .unwrap();
    drop(writer.await.unwrap());
    assert_eq!(f.server.stats().frame_waits, 0);
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
    const BURST: usize = 64;
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
