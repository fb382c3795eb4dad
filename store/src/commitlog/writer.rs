//! Appending to the commit log, under its writer lock.
//!
//! A batch is placed in three steps: `reserve` creates every segment the batch will need
//! (or fails, having written nothing), `append` writes each record, `commit` moves the
//! log's committed end past all of them at once. So a batch is either refused whole for
//! want of space, or written whole, and flushes and checkpoints see it whole or not at all.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;

use super::{CommitLog, WRITER_FILL, WriterState};
use crate::error::{Result, StoreError};
use crate::segment::Segment;
use weir_protocol::record::{self, BLANK_MIN_LEN, Probe, RecordView};

/// Exclusive append access to the commit log.
pub(crate) struct CommitLogWriter<'a> {
    log: &'a CommitLog,
    state: MutexGuard<'a, WriterState>,
}

impl<'a> CommitLogWriter<'a> {
    pub(super) fn new(log: &'a CommitLog, state: MutexGuard<'a, WriterState>) -> Self {
        Self { log, state }
    }

    /// Offset the next record will get, if it fits the current segment.
    pub fn position(&self) -> u64 {
        self.state.pos
    }

    /// How far the writer brought pages in itself (see `prepare_write`).
    #[cfg(test)]
    pub(super) fn filled_to(&self) -> u64 {
        self.state.filled_to
    }

    /// Makes sure every segment that records of `lens` bytes, appended in order, will
    /// occupy exists, creating the missing ones now as spares. `may_grow(bytes)` is asked
    /// first whether the disk may take that many more bytes. Nothing is written.
    pub fn reserve(&self, lens: &[usize], may_grow: impl Fn(u64) -> Result<()>) -> Result<()> {
        let size = self.log.segment_size();
        let pos = self.state.pos;
        // Where the current segment ends, or where the first new one starts.
        let (mut rel, next_start, mut needed) = match self.log.files.last() {
            Some(seg) if seg.start() <= pos && pos < seg.end() => (pos - seg.start(), seg.end(), 0),
            Some(seg) if pos == seg.end() => (0, pos, 1),
            None => (pos % size, pos - pos % size, 1),
            Some(seg) => return Err(outside(seg.as_ref(), pos)),
        };
        for &len in lens {
            let record = len as u64 + BLANK_MIN_LEN as u64;
            if record > size {
                return Err(StoreError::MessageTooLarge {
                    size: len as u64,
                    segment_size: size,
                });
            }
            if rel + record > size {
                needed += 1;
                rel = 0;
            }
            rel += len as u64;
        }
        let have = self.log.spares_from(next_start);
        if needed > have {
            may_grow((needed - have) as u64 * size)?;
            self.log.add_spares(next_start, needed)?;
        }
        Ok(())
    }

    /// Appends one record of `len` bytes, written in place by `fill(offset, buf)`, and
    /// publishes it. Closes the current segment with a blank filler first when the record
    /// (plus room for a filler after it) does not fit. Returns the record's offset.
    pub fn append(&mut self, len: usize, fill: impl FnOnce(u64, &mut [u8])) -> Result<u64> {
        let seg_size = self.log.segment_size();
        let needed = len as u64 + BLANK_MIN_LEN as u64;
        if needed > seg_size {
            return Err(StoreError::MessageTooLarge {
                size: len as u64,
                segment_size: seg_size,
            });
        }
        let mut seg = self.segment_for_write()?;
        let mut rel = self.state.pos - seg.start();
        if rel + needed > seg.len() {
            let remaining = (seg.len() - rel) as usize;
            self.wait_for_fill(self.state.pos, remaining as u64);
            // SAFETY: we hold the writer lock and `rel` is the unpublished end.
            unsafe { seg.write_with(rel, remaining, record::encode_blank) };
            seg.publish(seg.len());
            self.state.pos = seg.end();
            seg = self.segment_for_write()?;
            rel = 0;
        }
        let offset = self.state.pos;
        self.prepare_write(&seg, offset, len as u64);
        // SAFETY: we hold the writer lock and `rel` is the unpublished end.
        unsafe { seg.write_with(rel, len, |buf| fill(offset, buf)) };
        seg.publish(rel + len as u64);
        self.state.pos = offset + len as u64;
        Ok(offset)
    }

    /// Makes everything appended so far the log's committed end, which flushes and
    /// checkpoints go up to. Called once per batch: a crash then never finds a batch's
    /// first records below the durable end and the rest missing without recovery
    /// replaying them (decisions of transactions rely on it).
    pub fn commit(&self) {
        self.log.committed.store(self.state.pos, Ordering::Release);
    }

    /// A replica's append: `bytes` are records and fillers exactly as the master stored
    /// them from `offset`, which must be this log's end. Each is verified where it lands
    /// (magic, its own offset, CRC, fields) before it is published; `visit` sees each record
    /// (parsed from `bytes`) after it is published. Stops at the first thing that does not
    /// verify, keeping what came before. Returns how many bytes were taken.
    ///
    /// Per segment the frames and checksums are verified first; then each record is parsed
    /// (once), copied, published and visited in order, so a reader finds a record's queue
    /// entry only once the record is readable, as with [`CommitLogWriter::append`].
    ///
    /// Copied one record at a time, in log order, never as one copy of the chunk: a copy
    /// cut short (the process killed while it waits in a page fault) must leave whole
    /// records and then at most one torn record, with nothing valid after it. `memcpy`
    /// stores the first bytes of a large copy last, so a cut-short copy of a whole chunk
    /// left the chunk's first record with a zero header and the records after it whole;
    /// recovery took that record for damage, skipped it and replayed the ones after it
    /// past their queue's end: a hole in the slave's queue that the master never fills.
    /// Nothing is copied past a record that fails to parse either.
    ///
    /// A frame that does not line up with this log (another position, no record there) is
    /// [`StoreError::ReplicaMismatch`]; a record that lines up but whose checksum or fields
    /// are wrong was damaged on its way or on the master's disk:
    /// [`StoreError::ReplicaDamaged`], which says nothing against this log.
    pub fn append_replicated<'b>(
        &mut self,
        offset: u64,
        bytes: &'b [u8],
        mut visit: impl FnMut(&RecordView<'b>) -> Result<()>,
    ) -> Result<u64> {
        if offset != self.state.pos {
            return Err(StoreError::ReplicaMismatch {
                detail: format!(
                    "the master sent bytes from offset {offset}, this log ends at {}",
                    self.state.pos
                ),
            });
        }
        let mut taken = 0usize;
        while taken < bytes.len() {
            let seg = self.segment_for_write()?;
            let first = self.state.pos;
            let rel = first - seg.start();
            let room = (seg.len() - rel) as usize;
            let window = &bytes[taken..bytes.len().min(taken + room)];
            let mut verified = 0usize;
            let mut refused = None;
            while verified < window.len() {
                let at = first + verified as u64;
                match record::probe_frame(&window[verified..], at) {
                    Probe::Message(len) if !record::crc_ok(&window[verified..verified + len]) => {
                        refused = Some(damaged(at, "CRC mismatch"));
                        break;
                    }
                    Probe::Message(len) | Probe::Blank(len) => verified += len,
                    Probe::Invalid(why) => {
                        refused = Some(StoreError::ReplicaMismatch {
                            detail: format!(
                                "the master's bytes at offset {at} do not line up with this log: {why}"
                            ),
                        });
                        break;
                    }
                }
            }
            self.prepare_write(&seg, first, verified as u64);
            let mut at = 0usize;
            while at < verified {
                let rest = &window[at..verified];
                // Framed above: a length that fits (clamped all the same, so that the walk
                // always moves on).
                let len =
                    (record::u32_at(rest, record::pos::TOTAL_LEN) as usize).clamp(1, rest.len());
                let rec = &rest[..len];
                let view = if record::u32_at(rec, record::pos::MAGIC) == record::MESSAGE_MAGIC {
                    match RecordView::parse(rec) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            return Err(damaged(first + at as u64, "inconsistent field lengths"));
                        }
                    }
                } else {
                    None
                };
                // SAFETY: we hold the writer lock and `rel + at` is the unpublished end.
                unsafe { seg.write(rel + at as u64, rec) };
                seg.publish(rel + (at + len) as u64);
                self.state.pos = first + (at + len) as u64;
                at += len;
                if let Some(v) = view {
                    visit(&v)?;
                }
            }
            taken += verified;
            if let Some(e) = refused {
                return Err(e);
            }
        }
        Ok(taken as u64)
    }

    /// Waits, when `[at, at + len)` meets the range `prepare_ahead` is writing zeros to,
    /// until it is done (rare: the fill runs megabytes ahead of the writer).
    fn wait_for_fill(&self, at: u64, len: u64) {
        let end = self.log.fill_end.load(Ordering::Acquire);
        if end > at && self.log.fill_start.load(Ordering::Acquire) < at.saturating_add(len) {
            drop(self.log.filling.lock());
        }
    }

    /// Before `[at, at + len)` of `seg` is written: waits out a zero fill running there
    /// (`wait_for_fill`), and, when the writer has got ahead of `prepare_ahead` (its thread
    /// starved of CPU under load), brings the pages in itself by writing zeros through the
    /// file, up to `WRITER_FILL` past the write. A write fault there would make the kernel
    /// read ahead and zero large folios, about ten times the CPU per page (see
    /// `CommitLog::prepare_ahead`): 6.7 % of a lone master's samples in batched sends, up
    /// to 14 % of a slave's.
    fn prepare_write(&mut self, seg: &Segment, at: u64, len: u64) {
        self.wait_for_fill(at, len);
        let end = at.saturating_add(len);
        let ready = self
            .log
            .faulted
            .load(Ordering::Relaxed)
            .max(self.state.filled_to);
        if end <= ready {
            return;
        }
        // Whole pages only, from the first one past what is written and ready: the page
        // `at` lies in holds published bytes when `at` is not on a page boundary.
        let page = rustix::param::page_size() as u64;
        let from = at.max(ready).div_ceil(page) * page;
        let to = end.saturating_add(WRITER_FILL).min(seg.end());
        if from < to {
            seg.zero_fill(from - seg.start(), to - from);
        }
        self.state.filled_to = to;
    }

    fn segment_for_write(&self) -> Result<Arc<Segment>> {
        let pos = self.state.pos;
        match self.log.files.last() {
            Some(seg) if seg.start() <= pos && pos < seg.end() => Ok(seg),
            Some(seg) if pos == seg.end() => self.log.next_segment(pos),
            None => self.log.next_segment(pos - pos % self.log.segment_size()),
            Some(seg) => Err(outside(seg.as_ref(), pos)),
        }
    }
}

fn damaged(offset: u64, why: &str) -> StoreError {
    StoreError::ReplicaDamaged {
        offset,
        detail: format!("the master's bytes at offset {offset} do not verify: {why}"),
    }
}

fn outside(seg: &Segment, pos: u64) -> StoreError {
    StoreError::Corrupt {
        what: "commit log",
        path: seg.path().to_path_buf(),
        detail: format!("write position {pos} outside the last segment"),
    }
}
