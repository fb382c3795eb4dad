//! Buffers that pull answers are assembled in, used again once their answer is written.
//!
//! A pull's answer copies its records into one buffer (tens of KiB to a few MiB) that
//! lives until the connection has written it. Freed to the allocator, such a buffer
//! often sits at the top of a thread's heap, which the allocator then gives back to the
//! kernel: the next answer faults the same amount of memory in again, zero-filled page by
//! page. On glibc's allocator a catch-up read took one page fault per ~10 KiB of records
//! that way; with the buffers kept here, the broker's CPU for that read fell by a quarter.
//! (The binaries use mimalloc, which keeps freed memory for a while itself; the pool keeps
//! the broker library's behaviour the same under any allocator.)
//!
//! Both adapters assemble their answers here ([`AnswerBuffers::shared`]).
//!
//! Invariants: at most `KEPT` buffers, each of capacity at most `KEPT_CAPACITY`, are
//! kept (so at most 16 MiB); a buffer is handed out empty; a larger one, or one returned to
//! a full pool, is freed as before.

use std::convert::Infallible;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::{Bytes, BytesMut};

/// Most buffers kept.
const KEPT: usize = 16;
/// Largest buffer kept (a pull answers at most 4 MiB of records).
const KEPT_CAPACITY: usize = 1 << 20;

type Pool = Arc<Mutex<Vec<BytesMut>>>;

/// The kept buffers. Cheap to clone (one shared pool).
#[derive(Clone, Default)]
pub struct AnswerBuffers {
    free: Pool,
}

static SHARED: LazyLock<AnswerBuffers> = LazyLock::new(AnswerBuffers::default);

impl AnswerBuffers {
    /// The broker's one pool.
    pub fn shared() -> &'static AnswerBuffers {
        &SHARED
    }

    /// `parts` one after another, in a kept buffer when one is free.
    pub fn concat<'a>(&self, parts: impl Iterator<Item = &'a [u8]>, len: usize) -> Bytes {
        let Ok(bytes) = self.fill(len, |buf| {
            parts.for_each(|p| buf.extend_from_slice(p));
            Ok::<_, Infallible>(())
        });
        bytes
    }

    /// What `write` puts in a buffer (a kept one when one is free, with room for `len`
    /// bytes); the buffer goes back to the pool if `write` fails.
    pub fn fill<E>(
        &self,
        len: usize,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<Bytes, E> {
        let mut kept = Kept {
            buf: self
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default(),
            pool: Arc::clone(&self.free),
        };
        kept.buf.reserve(len);
        write(&mut kept.buf)?;
        Ok(Bytes::from_owner(kept))
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A buffer lent to one answer, returned when the answer's last reference goes.
struct Kept {
    buf: BytesMut,
    pool: Pool,
}

impl AsRef<[u8]> for Kept {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if self.buf.capacity() > KEPT_CAPACITY {
            return;
        }
        let mut free = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < KEPT {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_empty_once_its_answer_is_dropped_and_is_used_again() {
        let pool = AnswerBuffers::default();
        let a = pool.concat([&b"ab"[..], b"cd"].into_iter(), 4);
        assert_eq!(&a[..], b"abcd");
        let first = a.as_ptr();
        let copy = a.clone();
        drop(a);
        assert_eq!(pool.kept(), 0, "still referenced");
        drop(copy);
        assert_eq!(pool.kept(), 1);
        let b = pool.concat([&b"xyz"[..]].into_iter(), 3);
        assert_eq!(&b[..], b"xyz");
        assert_eq!(b.as_ptr(), first, "the kept buffer was used again");
        assert_eq!(pool.kept(), 0);
    }

    #[test]
    fn what_is_kept_is_bounded_in_count_and_size() {
        let pool = AnswerBuffers::default();
        let big = vec![0u8; KEPT_CAPACITY + 1];
        drop(pool.concat([&big[..]].into_iter(), big.len()));
        assert_eq!(pool.kept(), 0, "a buffer over the kept size is freed");
        let answers: Vec<Bytes> = (0..KEPT + 5)
            .map(|_| pool.concat([&b"x"[..]].into_iter(), 1))
            .collect();
        drop(answers);
        assert_eq!(pool.kept(), KEPT);
    }
}
