//! What a connection's driver reads from and writes to: a plain TCP stream, or TLS over
//! one. The driver is generic over it, so the plaintext path is the same code as before
//! TLS existed (readiness, then `try_read`/`try_write_vectored` on the socket), and TLS
//! costs only the connections that use it.
//!
//! Invariant: bytes a write took are on their way without another write: a transport
//! that holds some back (TLS records not yet on the socket) says so with
//! [`Transport::has_pending_writes`], and the driver flushes it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use super::outq::OutQueue;

/// Most plaintext one TLS read offers to take (the read buffer's spare room is zeroed
/// first, up to this).
const TLS_READ_MAX: usize = 64 << 10;

pub(super) trait Transport: Send + Unpin + 'static {
    /// Reads what is there into `buf`'s spare room, after `reserve` made room (called
    /// once the stream may have bytes); `Ok(0)` at the end of the stream.
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        reserve: impl FnMut(&mut BytesMut),
    ) -> Poll<io::Result<usize>>;

    /// Writes what `out` has that the stream takes now.
    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut OutQueue,
    ) -> Poll<io::Result<usize>>;

    /// Whether written bytes are still held here, not yet on the socket.
    fn has_pending_writes(&self) -> bool {
        false
    }

    /// Puts held bytes on the socket.
    fn poll_flush_pending(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the stream's writing side (a TLS close first).
    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Transport for TcpStream {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        mut reserve: impl FnMut(&mut BytesMut),
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            reserve(buf);
            match read_some(self, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut OutQueue,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            match out.try_write(self) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
}

/// Reads what the socket has into `buf`'s spare room; `WouldBlock` when nothing. A read
/// that fills less than the room leaves the socket marked not readable (as tokio's own
/// `poll_read` does), which saves a read that would find nothing.
fn read_some(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let offered = buf.capacity() - buf.len();
    let mut read = 0;
    let r = stream.try_io(Interest::READABLE, || {
        read = stream.try_read_buf(buf)?;
        if read > 0 && read < offered {
            // Drained: clear the readiness, taken before this read.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(read)
    });
    match r {
        Err(e) if read > 0 && e.kind() == io::ErrorKind::WouldBlock => Ok(read),
        r => r,
    }
}

impl Transport for TlsStream<TcpStream> {
    fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        mut reserve: impl FnMut(&mut BytesMut),
    ) -> Poll<io::Result<usize>> {
        reserve(buf);
        let start = buf.len();
        let room = (buf.capacity() - start).clamp(1, TLS_READ_MAX);
        buf.resize(start + room, 0);
        let (r, filled) = {
            let mut rb = ReadBuf::new(&mut buf[start..]);
            let r = Pin::new(&mut *self).poll_read(cx, &mut rb);
            (r, rb.filled().len())
        };
        buf.truncate(start + filled);
        match r {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(filled)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut OutQueue,
    ) -> Poll<io::Result<usize>> {
        out.poll_write_with(|slices| Pin::new(&mut *self).poll_write_vectored(cx, slices))
    }

    fn has_pending_writes(&self) -> bool {
        self.get_ref().1.wants_write()
    }

    fn poll_flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_flush(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
}
