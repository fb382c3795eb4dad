//! What a server's connections hold together: the total of pending bytes
//! (`max_pending_bytes_total`, each connection keeping its fair share) and the room of
//! large frames being read. Over real sockets on 127.0.0.1, with the fixtures of `bounds`.

use super::*;

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

/// Many connections, each with answers it never reads: past the total, an answer that
/// would take its connection past its share (the total shared among the connections, at
/// least `MIN_FAIR_SHARE`) is refused as busy instead of held, so together they hold about
/// the total however many they are. (Before, each still took one answer past the total,
/// whatever its size: 2,000 such connections held 3.9 GB of pulls.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_past_the_total_fit_their_connections_share_or_are_refused_as_busy() {
    const TOTAL: usize = 4 << 20;
    const HOSTILE: usize = 64;
    const PER_CONN: usize = 8;
    let f = fixture(ServerConfig {
        max_pending_bytes_total: TOTAL,
        ..ServerConfig::default()
    })
    .await;
    let mut frames = BytesMut::new();
    for id in 0..PER_CONN as u32 {
        request(id, "huge", &mut frames);
    }
    let request_len = frames.len() / PER_CONN;
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
    // Each asks for eight 1 MiB answers and reads none (a 4 KiB receive buffer; the
    // kernel still takes a few MiB of each connection's answers off the server's hands).
    let mut hostile = Vec::new();
    for _ in 0..HOSTILE {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(f.addr.parse().unwrap()).await.unwrap();
        s.write_all(&frames).await.unwrap();
        hostile.push(s);
    }
    // Past what the sockets take, the first few connections' answers fill the total, and
    // the others' are refused (each connection's share is the least, 64 KiB, with 64
    // open): at least a quarter of them.
    let refusals = (HOSTILE * PER_CONN / 4) as u64;
    eventually("the answers past the total refused", T, || {
        f.server.stats().answers_refused >= refusals
    })
    .await;
    // Two workers each count the other's bytes as last published: up to the total each.
    let bound = 2 * TOTAL + HOSTILE * (MIN_FAIR_SHARE + PER_CONN * request_len);
    let s = f.server.stats();
    assert!(s.pending_bytes <= bound, "{s:?}");
    // Another connection is answered within its share; past it, answered when the total
    // has room (the sockets take answers off the server's hands), else refused as busy.
    let other = client(&f.addr).await;
    for _ in 0..20 {
        route(&other, "big").await.unwrap();
    }
    match route(&other, "huge").await {
        Ok((_, body)) => assert_eq!(body.len(), 1 << 20),
        Err(e) => assert!(e.to_string().contains("net.max_pending_bytes_total"), "{e}"),
    }
    sampler.abort();
    let highest = highest.load(Ordering::SeqCst);
    assert!(
        highest <= bound,
        "held {highest} bytes at most, past {bound}"
    );
    // The hostile connections go: the total is free, and large answers go again.
    drop(hostile);
    eventually("the hostile connections' release", T, || {
        let s = f.server.stats();
        s.connections == 1 && s.pending_bytes == 0
    })
    .await;
    let (_, body) = route(&other, "huge").await.unwrap();
    assert_eq!(body.len(), 1 << 20);
}

/// A connection whose peer has read none of its answers for the frame read timeout, while
/// others are refused room in the total, is closed: the room it holds is the others' too
/// (without this, they waited for the idle timeout, 120 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reading_none_of_their_answers_at_the_total_are_closed() {
    const TOTAL: usize = 4 << 20;
    const HOSTILE: usize = 16;
    let f = with_read_timeout(TOTAL, Duration::from_secs(1)).await;
    let frames = requests(64, "huge");
    // Each asks for 1 MiB answers without end and reads none, until it is closed.
    let addr: std::net::SocketAddr = f.addr.parse().unwrap();
    let hostile: Vec<_> = (0..HOSTILE)
        .map(|_| {
            let frames = frames.clone();
            tokio::spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                let mut s = socket.connect(addr).await.unwrap();
                while s.write_all(&frames).await.is_ok() {}
            })
        })
        .collect();
    // Once the sockets take no more, their answers fill the total, and the rest are
    // refused; then the connections holding them are closed.
    eventually("answers refused", T, || {
        f.server.stats().answers_refused >= 1
    })
    .await;
    eventually("connections with unread answers closed", T, || {
        f.server.stats().unread_closes >= 1
    })
    .await;
    // Another connection's large answers go again.
    a_large_answer_served(&f).await;
    for h in hostile {
        h.abort();
    }
}

/// Reading a trickle of its answers (less than `MIN_FAIR_SHARE` per frame read timeout)
/// does not keep a connection's room while others are refused room: it is closed as one
/// reading none. (Over loopback the kernel wakes the writer only once half its buffer is
/// free, so this trickle shows as progress on few ticks; that any byte read kept a
/// connection open was shown by a probe reading 8 KB every 3 s against the defaults.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reading_a_trickle_of_its_answers_is_closed_as_one_reading_none() {
    const TOTAL: usize = 4 << 20;
    const HOSTILE: usize = 8;
    let f = with_read_timeout(TOTAL, Duration::from_secs(2)).await;
    let frames = requests(1000, "big");
    // Each asks for 16 MB of answers and reads 2 KiB of them every 100 ms (20 KiB a
    // second): with a small segment size, the server writes a little of its answers on
    // every tick of its clock.
    let addr: std::net::SocketAddr = f.addr.parse().unwrap();
    let hostile: Vec<_> = (0..HOSTILE)
        .map(|_| {
            let frames = frames.clone();
            tokio::spawn(async move {
                let (mut rd, mut wr) = narrow_socket().connect(addr).await.unwrap().into_split();
                let _ = wr.write_all(&frames).await;
                let mut buf = [0u8; 2048];
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if matches!(rd.read(&mut buf).await, Ok(0) | Err(_)) {
                        break;
                    }
                }
                drop(wr);
            })
        })
        .collect();
    eventually("the connections reaching the server's total", T, || {
        f.server.stats().pending_bytes >= TOTAL
    })
    .await;
    // Another connection asks for a large answer until it gets one.
    a_large_answer_served(&f).await;
    let s = f.server.stats();
    assert!(s.unread_closes >= 1, "{s:?}");
    for h in hostile {
        h.abort();
    }
}

/// The fair share is the total divided among the connections open, whichever way they
/// came and went (plaintext connections were not counted in, but were counted out: after
/// one closed, the share stayed at its least).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fair_share_follows_the_connections_open() {
    const TOTAL: usize = 2 << 20;
    let f = fixture(ServerConfig {
        max_pending_bytes_total: TOTAL,
        ..ServerConfig::default()
    })
    .await;
    let first = client(&f.addr).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(client(&f.addr).await);
    }
    for c in others.iter().chain([&first]) {
        route(c, "small").await.unwrap();
    }
    eventually("four connections", T, || f.server.stats().connections == 4).await;
    assert_eq!(f.server.stats().fair_share, TOTAL / 4);
    drop(others);
    eventually("three closed", T, || f.server.stats().connections == 1).await;
    assert_eq!(f.server.stats().fair_share, weir_protocol::FAIR_SHARE);
    route(&first, "small").await.unwrap();
}

/// A socket with a 4 KiB receive buffer and a 1,400-byte segment size (as over a real
/// network): the kernel takes little of the answers it is sent off the server's hands.
fn narrow_socket() -> tokio::net::TcpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_tcp_mss(1400).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_nonblocking(true).unwrap();
    tokio::net::TcpSocket::from_std_stream(socket.into())
}

/// A server of `total` bytes of pending answers and the given frame read timeout.
async fn with_read_timeout(total: usize, frame_read_timeout: Duration) -> Fixture {
    fixture(ServerConfig {
        conn: ConnConfig {
            frame_read_timeout,
            ..ConnConfig::default()
        },
        max_pending_bytes_total: total,
        ..ServerConfig::default()
    })
    .await
}

/// `n` requests for `topic`'s answer, encoded one after another.
fn requests(n: u32, topic: &str) -> Bytes {
    let mut frames = BytesMut::new();
    for id in 0..n {
        request(id, topic, &mut frames);
    }
    frames.freeze()
}

/// Asks `f`, on a connection of its own, for a 1 MiB answer until it gets one (within
/// `T`); each refusal must be the busy one naming the total.
async fn a_large_answer_served(f: &Fixture) {
    let other = client(&f.addr).await;
    let deadline = Instant::now() + T;
    loop {
        match route(&other, "huge").await {
            Ok((_, body)) => {
                assert_eq!(body.len(), 1 << 20);
                return;
            }
            Err(e) => {
                assert!(e.to_string().contains("net.max_pending_bytes_total"), "{e}");
                assert!(Instant::now() < deadline, "still refused: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
