//! The metrics endpoint: a minimal HTTP/1.x responder. Each connection sends one request
//! head; `GET /metrics` is answered with the text the server renders, anything else with
//! an error status, and the connection is closed. What a client can make it hold is
//! bounded: a request head of at most [`HttpLimits::max_head`] bytes that must arrive
//! whole within [`HttpLimits::read_timeout`] (a slow sender is cut off at the deadline,
//! however it trickles), and at most [`HttpLimits::max_connections`] connections at once
//! (more are closed on accept).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Renders the metrics text; called once per scrape, on a blocking thread.
pub type RenderFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Bounds on what clients of the endpoint can make it hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request head (request line and headers), bytes.
    pub max_head: usize,
    /// How long a client has to send its whole request head.
    pub read_timeout: Duration,
    /// How long the answer may take to be written.
    pub write_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_head: 8 << 10,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }
}

/// What the endpoint did, for tests.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Scrapes answered with the metrics.
    pub served: AtomicU64,
    /// Requests answered with an error status (bad, unknown path, too large).
    pub rejected: AtomicU64,
    /// Connections closed without an answer: head not whole in time, or closed early.
    pub dropped: AtomicU64,
    /// Connections closed on accept at the connection cap.
    pub refused: AtomicU64,
}

/// A running metrics endpoint; stopped by [`MetricsServer::shutdown`] (or dropped).
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    acceptor: JoinHandle<()>,
    stats: Arc<HttpStats>,
}

impl MetricsServer {
    /// Listens on `listen` and serves `render`'s text at `GET /metrics`.
    pub async fn bind(listen: &str, render: RenderFn, limits: HttpLimits) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let stats = Arc::new(HttpStats::default());
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let counted = Arc::clone(&stats);
        let acceptor = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.wait_for(|s| *s) => break,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                            counted.refused.fetch_add(1, Ordering::Relaxed);
                            debug!(%peer, "metrics endpoint at its connection cap: closed");
                            continue;
                        };
                        let (render, stats) = (Arc::clone(&render), Arc::clone(&counted));
                        tokio::spawn(async move {
                            serve(stream, render, limits, &stats).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Self {
            local_addr,
            stop,
            acceptor,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// Stops accepting; connections being served end within their timeouts.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        let _ = (&mut self.acceptor).await;
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// What a request head asked for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    Status(u16, &'static str),
}

async fn serve(mut stream: TcpStream, render: RenderFn, limits: HttpLimits, stats: &HttpStats) {
    let head =
        match tokio::time::timeout(limits.read_timeout, read_head(&mut stream, limits.max_head))
            .await
        {
            Ok(Ok(Some(head))) => parse(&head),
            Ok(Ok(None)) => Asked::Status(431, "Request Header Fields Too Large"),
            Ok(Err(_)) | Err(_) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
    let answer = match head {
        Asked::Metrics => match tokio::task::spawn_blocking(move || render()).await {
            Ok(text) => {
                stats.served.fetch_add(1, Ordering::Relaxed);
                response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", &text)
            }
            Err(e) => {
                warn!(error = %e, "rendering the metrics failed");
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                response(
                    500,
                    "Internal Server Error",
                    "text/plain",
                    "rendering failed\n",
                )
            }
        },
        Asked::Status(code, reason) => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            response(code, reason, "text/plain", &format!("{reason}\n"))
        }
    };
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    if tokio::time::timeout(limits.write_timeout, write)
        .await
        .is_err()
    {
        debug!("metrics endpoint: a client did not read its answer in time");
    }
}

/// Reads up to the blank line ending the head: `Ok(None)` when it grows past `max`, an
/// error when the client goes first.
async fn read_head(stream: &mut TcpStream, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > max {
            return Ok(None);
        }
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse(head: &[u8]) -> Asked {
    let bad = Asked::Status(400, "Bad Request");
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad;
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return bad;
    }
    if method != "GET" {
        return Asked::Status(405, "Method Not Allowed");
    }
    match target.split('?').next() {
        Some("/metrics") => Asked::Metrics,
        _ => Asked::Status(404, "Not Found"),
    }
}

fn response(code: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_judged() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x"), Asked::Metrics);
        assert_eq!(parse(b"GET /metrics?x=1 HTTP/1.0"), Asked::Metrics);
        assert_eq!(parse(b"GET / HTTP/1.1"), Asked::Status(404, "Not Found"));
        assert_eq!(
            parse(b"POST /metrics HTTP/1.1"),
            Asked::Status(405, "Method Not Allowed")
        );
        for garbage in [
            &b"\xff\xfe"[..],
            b"GET /metrics",
            b"GET  /metrics HTTP/1.1",
            b"",
        ] {
            assert_eq!(parse(garbage), Asked::Status(400, "Bad Request"));
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
