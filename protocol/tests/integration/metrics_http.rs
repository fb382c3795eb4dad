//! The metrics endpoint against bad clients: garbage, a request head past the limit, a
//! sender that trickles (slowloris) and more connections than the cap. Each is closed
//! without harm, and a good scrape is served afterwards.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_protocol::metrics::{HttpLimits, MetricsServer, RenderFn};

const TEXT: &str = "# HELP weir_up Up.\n# TYPE weir_up gauge\nweir_up 1\n";
const READ_TIMEOUT: Duration = Duration::from_millis(300);
/// Far more than any answer or close takes here: only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(10);

async fn server() -> MetricsServer {
    let render: RenderFn = Arc::new(|| TEXT.to_owned());
    let limits = HttpLimits {
        max_head: 1024,
        read_timeout: READ_TIMEOUT,
        write_timeout: Duration::from_secs(2),
        max_connections: 2,
    };
    MetricsServer::bind("127.0.0.1:0", render, limits)
        .await
        .expect("bind")
}

/// Everything the server sends until it closes (a reset ends it too).
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open past {DEADLINE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn get(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned()
}

async fn good_scrape(addr: SocketAddr) {
    let answer = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("Content-Type: text/plain; version=0.0.4"),
        "{answer}"
    );
    assert!(answer.ends_with(TEXT), "{answer}");
}

#[tokio::test]
async fn garbage_and_oversized_requests_are_answered_and_closed() {
    let m = server().await;
    let addr = m.local_addr();
    let answer = get(addr, b"\x00\x01\xffgarbage\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    let answer = get(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer:?}");

    // A request line of 64 KiB: cut off past 1 KiB. The server may reset the connection
    // (it leaves bytes unread), so the answer may not arrive; the close always does.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut huge = b"GET /".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 << 10));
    let _ = s.write_all(&huge).await;
    let answer = String::from_utf8_lossy(&read_until_closed(&mut s).await).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "{answer:?}"
    );
    assert_eq!(m.stats().rejected.load(Ordering::Relaxed), 3);
    good_scrape(addr).await;
    assert_eq!(m.stats().served.load(Ordering::Relaxed), 1);
    m.shutdown().await;
}

#[tokio::test]
async fn a_trickling_sender_is_cut_off_at_the_read_timeout() {
    let m = server().await;
    let addr = m.local_addr();
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let started = Instant::now();
    // One byte every 20 ms, forever: each read makes progress, the head never ends.
    let trickle = tokio::spawn(async move {
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'z'))
        {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(DEADLINE, rd.read(&mut buf))
        .await
        .expect("closed before the deadline");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let took = started.elapsed();
    assert!(took >= READ_TIMEOUT, "closed after {took:?}");
    trickle.abort();
    assert_eq!(m.stats().dropped.load(Ordering::Relaxed), 1);
    good_scrape(addr).await;
    m.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let m = server().await;
    let addr = m.local_addr();
    // Two silent connections take both slots.
    let _idle: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    let deadline = Instant::now() + DEADLINE;
    // The third is closed without an answer (the accept loop may not have taken the first
    // two yet: retry until one is refused, and the refusal is counted).
    loop {
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let _ = third.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
        let answer = read_until_closed(&mut third).await;
        if m.stats().refused.load(Ordering::Relaxed) >= 1 {
            assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection was refused at the cap"
        );
    }
    // Once the silent ones time out, scrapes are served again.
    while m.stats().dropped.load(Ordering::Relaxed) < 2 {
        assert!(
            Instant::now() < deadline,
            "the silent connections were never cut off"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    good_scrape(addr).await;
    m.shutdown().await;
}
