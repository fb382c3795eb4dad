//! What a connection has to write, in order: small frames encoded into one staging buffer,
//! large bodies kept as they are (no copy) between them, written with vectored writes.
//!
//! Invariant: the bytes on the wire are `chunks` in order, then `staging`; `len` is their
//! total and `written` counts every byte written so far. `held` adds what was written of
//! the front chunk and of the staging buffer, which stay allocated whole until written
//! whole (a peer that reads most of a 4 MiB answer and stops leaves all of it held).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::task::Poll;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::wire::Wire;
use crate::frame::Frame;

/// Bodies up to this are copied into the staging buffer; larger ones are queued as they are.
const COPY_MAX: usize = 16 << 10;
/// Slices handed to one vectored write.
const MAX_SLICES: usize = 64;
/// An empty staging buffer bigger than this is let go (a burst should not stay resident).
const KEEP_CAPACITY: usize = 256 << 10;

#[derive(Default)]
pub(super) struct OutQueue {
    chunks: VecDeque<Bytes>,
    staging: BytesMut,
    len: usize,
    written: u64,
    /// Bytes written of the front chunk, and of the staging buffer since it was last
    /// empty: still allocated.
    front_written: usize,
    staging_written: usize,
    /// How frames are written: weir's frame unless the connection speaks RocketMQ's.
    pub(super) wire: Wire,
}

impl OutQueue {
    pub(super) fn new(wire: Wire) -> Self {
        Self {
            wire,
            ..Self::default()
        }
    }

    /// Bytes queued and not yet written.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory the queue holds: those not yet written, and the written parts of
    /// buffers not yet written whole.
    pub(super) fn held(&self) -> usize {
        self.len + self.front_written + self.staging_written
    }

    /// Bytes written so far.
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    /// Where the end of what is queued will be, counted like `written`.
    pub(super) fn end(&self) -> u64 {
        self.written + self.len as u64
    }

    /// Queues `f`, whose size the caller has checked against the frame limit.
    pub(super) fn push(&mut self, f: &Frame) {
        let len = self.wire.wire_len(f) - 4;
        let copy_body = f.body.len() <= COPY_MAX;
        self.staging
            .reserve(4 + len - if copy_body { 0 } else { f.body.len() });
        // Checked against the frame limit (at most u32::MAX) by the caller.
        self.wire.put_head(f, &mut self.staging);
        if copy_body {
            self.staging.put_slice(&f.body);
        } else {
            self.chunks.push_back(self.staging.split().freeze());
            self.chunks.push_back(f.body.clone());
        }
        self.len += 4 + len;
    }

    /// The slices to offer one vectored write, in order; returns how many.
    fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        for c in self.chunks.iter().take(MAX_SLICES) {
            slices[n] = IoSlice::new(c);
            n += 1;
        }
        // The staging buffer comes after every chunk.
        if n == self.chunks.len() && n < MAX_SLICES && !self.staging.is_empty() {
            slices[n] = IoSlice::new(&self.staging);
            n += 1;
        }
        n
    }

    /// Writes what the socket takes now; `WouldBlock` when it takes nothing. A write that
    /// takes less than offered leaves the socket marked not writable (as tokio's own
    /// `poll_write` does), so the next attempt waits for room instead of failing.
    pub(super) fn try_write(&mut self, stream: &TcpStream) -> std::io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = self.slices(&mut slices);
        let offered: usize = slices[..n].iter().map(|s| s.len()).sum();
        let mut written = 0;
        let r = stream.try_io(Interest::WRITABLE, || {
            written = stream.try_write_vectored(&slices[..n])?;
            if written < offered {
                // The socket is full: clear its readiness, taken before this write.
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(written)
        });
        match r {
            Err(e) if written == 0 || e.kind() != std::io::ErrorKind::WouldBlock => {
                return Err(e);
            }
            _ => {}
        }
        self.advance(written);
        Ok(written)
    }

    /// Offers what is queued to `write` (a vectored `poll_write`), and drops what it took.
    pub(super) fn poll_write_with(
        &mut self,
        write: impl FnOnce(&[IoSlice<'_>]) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = self.slices(&mut slices);
        let r = write(&slices[..n]);
        if let Poll::Ready(Ok(written)) = r {
            self.advance(written);
        }
        r
    }

    fn advance(&mut self, mut n: usize) {
        self.len -= n;
        self.written += n as u64;
        while n > 0 {
            match self.chunks.front_mut() {
                Some(front) if n >= front.len() => {
                    n -= front.len();
                    self.chunks.pop_front();
                    self.front_written = 0;
                }
                Some(front) => {
                    front.advance(n);
                    self.front_written += n;
                    n = 0;
                }
                None => {
                    self.staging.advance(n);
                    self.staging_written += n;
                    n = 0;
                }
            }
        }
        if self.staging.is_empty() {
            self.staging_written = 0;
        }
        if self.len == 0 {
            // (Nothing queued: every buffer was written whole.)
            self.front_written = 0;
        }
        if self.len == 0 && self.staging.capacity() > KEEP_CAPACITY {
            self.staging = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, Kind};

    #[tokio::test]
    async fn frames_come_out_in_order_small_and_large() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut out = Vec::new();
            while let Some(f) = frame::read_frame(&mut s, 1 << 24).await.unwrap() {
                out.push(f);
            }
            out
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let frames: Vec<Frame> = (0..300u32)
            .map(|i| Frame {
                kind: Kind::Response,
                request_id: i,
                code: 0,
                auth: if i % 5 == 0 {
                    Bytes::from(vec![9u8; 40])
                } else {
                    Bytes::new()
                },
                header: Bytes::from(vec![1u8; (i % 7) as usize]),
                body: Bytes::from(vec![i as u8; if i % 3 == 0 { 40_000 } else { 100 }]),
            })
            .collect();
        let mut q = OutQueue::default();
        let mut total = 0;
        for f in &frames {
            q.push(f);
            total += f.wire_len();
        }
        assert_eq!(q.len(), total);
        while !q.is_empty() {
            stream.writable().await.unwrap();
            match q.try_write(&stream) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(q.written(), total as u64);
        drop(stream);
        assert_eq!(reader.await.unwrap(), frames);
    }

    /// A large answer partly written is held whole (its buffer is freed only when its last
    /// byte is written): a peer reading all but its end must not make it look small.
    #[test]
    fn a_large_answer_partly_written_is_held_whole() {
        let mut q = OutQueue::default();
        let f = Frame {
            kind: Kind::Response,
            request_id: 1,
            code: 0,
            auth: Bytes::new(),
            header: Bytes::from_static(b"h"),
            body: Bytes::from(vec![7u8; 1 << 20]),
        };
        q.push(&f);
        let whole = q.len();
        let write = |q: &mut OutQueue, n: usize| {
            let r = q.poll_write_with(|slices| {
                let offered: usize = slices.iter().map(|s| s.len()).sum();
                Poll::Ready(Ok(n.min(offered)))
            });
            assert!(matches!(r, Poll::Ready(Ok(_))));
        };
        // The frame's head (written whole, let go), then all of the body but its end.
        write(&mut q, whole - 1000);
        assert_eq!(q.len(), 1000);
        assert_eq!(q.held(), 1 << 20);
        // The rest: nothing held.
        write(&mut q, 1000);
        assert_eq!((q.len(), q.held()), (0, 0));
    }
}
