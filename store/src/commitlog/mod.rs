//! The commit log: one append-only stream of records over fixed-size segments.
//!
//! Invariants: bytes below `committed` are whole records or fillers and never change;
//! `flushed ≤ committed`; spare segments follow the last segment in order and hold only
//! zeros until the writer adopts them. Appending is in `writer`, the scan at open in
//! `recovery`.

#[cfg(test)]
mod prepare_tests;
mod records;
mod recovery;
mod writer;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tracing::warn;

use crate::error::{Result, StoreError};
use crate::segment::{Segment, SegmentedFile};
use weir_protocol::record::{self, Probe};

pub use records::{LogSpan, ReadBatch, RecordSpan, StoredRecord};
pub use recovery::DamagedRange;
pub(crate) use writer::CommitLogWriter;

pub(crate) struct CommitLog {
    files: SegmentedFile,
    writer: Mutex<WriterState>,
    /// End of the last published record: everything below is readable.
    committed: AtomicU64,
    /// Everything below is on disk.
    flushed: AtomicU64,
    /// Flushes that had something to sync: with group commit, appends per sync shows how
    /// well concurrent appends share them.
    syncs: AtomicU64,
    /// The next segments, in order, created ahead of need: by `prepare_ahead` so that a
    /// roll-over does not pay for creating (and reserving) a whole segment under the writer
    /// lock, and by `CommitLogWriter::reserve` so that a batch never fails half-way.
    spares: Mutex<VecDeque<Arc<Segment>>>,
    /// Pages are faulted in up to this offset (see `prepare_ahead`).
    faulted: AtomicU64,
    /// The range `prepare_ahead` is writing zeros to without the writer lock, `[start,
    /// end)`, both 0 when none; set under the writer lock, always at or past the writer's
    /// position. The filler holds `filling` while it writes: a writer about to write into
    /// the range waits on it (see `CommitLogWriter::wait_for_fill`).
    fill_start: AtomicU64,
    fill_end: AtomicU64,
    filling: Mutex<()>,
}

/// How far ahead of the write position pages are faulted in.
const FAULT_AHEAD: u64 = 16 << 20;
/// Bytes zero-filled under one fence (see `zero_fill`).
const ZERO_STEP: u64 = 128 << 10;
/// Bytes the writer zero-fills past a write when it finds itself ahead of `prepare_ahead`.
const WRITER_FILL: u64 = 512 << 10;

struct WriterState {
    /// Absolute position of the next record.
    pos: u64,
    /// How far the writer itself brought pages in (zeros written through the file) when it
    /// had got ahead of `prepare_ahead` (see `CommitLogWriter::prepare_write`).
    filled_to: u64,
}

impl CommitLog {
    pub fn open(dir: &Path, segment_size: u64) -> Result<Self> {
        let files = SegmentedFile::open(dir, segment_size)?;
        Ok(Self {
            files,
            writer: Mutex::new(WriterState {
                pos: 0,
                filled_to: 0,
            }),
            committed: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            spares: Mutex::new(VecDeque::new()),
            faulted: AtomicU64::new(0),
            fill_start: AtomicU64::new(0),
            fill_end: AtomicU64::new(0),
            filling: Mutex::new(()),
        })
    }

    pub fn segment_size(&self) -> u64 {
        self.files.segment_size()
    }

    /// Offset of the oldest byte still stored.
    pub fn min_offset(&self) -> u64 {
        self.files.first().map_or(self.committed(), |s| s.start())
    }

    /// Offset just past the last readable record.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// Publishes everything below `end` and points the writer there.
    fn set_end(&self, end: u64, durable: bool) {
        for seg in self.files.all() {
            seg.publish(end.clamp(seg.start(), seg.end()) - seg.start());
        }
        self.writer.lock().pos = end;
        self.committed.store(end, Ordering::Release);
        let flushed = match durable {
            true => end,
            false => self.files.first().map_or(end, |s| s.start()),
        };
        self.flushed.store(flushed, Ordering::Release);
    }

    pub fn lock_writer(&self) -> CommitLogWriter<'_> {
        CommitLogWriter::new(self, self.writer.lock())
    }

    /// Adds the record at `offset` of `len` bytes, as given by a consume queue entry, to
    /// `batch`; `false` when it is gone (or not published). For records read one after
    /// another, `last` is the segment of the previous one (start with `None`), reused while
    /// it holds this one, so that a read of many records takes the segment table's lock
    /// once per segment rather than per record.
    pub(crate) fn push_near(
        &self,
        batch: &mut ReadBatch,
        last: &mut Option<Arc<Segment>>,
        offset: u64,
        len: usize,
        queue_offset: u64,
    ) -> bool {
        if !last
            .as_ref()
            .is_some_and(|s| (s.start()..s.end()).contains(&offset))
        {
            *last = self.files.find(offset);
        }
        let Some(seg) = last.as_ref() else {
            return false;
        };
        let rel = offset - seg.start();
        if seg.read(rel, len).is_none() {
            return false;
        }
        batch.push(seg, rel, len, queue_offset);
        true
    }

    /// The record starting at `offset`, from untrusted input (a message id): checks that a
    /// whole, intact record starts exactly there.
    pub fn record_starting_at(&self, offset: u64) -> Result<StoredRecord> {
        let no = |detail: &str| StoreError::NoMessageAt {
            offset,
            detail: detail.to_owned(),
        };
        if offset < self.min_offset() {
            return Err(no("below the oldest stored offset (deleted by retention?)"));
        }
        if offset >= self.committed() {
            return Err(no("beyond the end of the log"));
        }
        let seg = self
            .files
            .find(offset)
            .ok_or_else(|| no("no segment holds it"))?;
        let rel = offset - seg.start();
        let available = seg.published().saturating_sub(rel) as usize;
        let window = seg.read(rel, available).ok_or_else(|| no("not readable"))?;
        match record::probe(window, offset) {
            Probe::Message(len) => Ok(StoredRecord { seg, rel, len }),
            Probe::Blank(_) => Err(no("segment filler, not a message")),
            Probe::Invalid(why) => Err(no(why)),
        }
    }

    /// The record at `offset`, or the length of the filler there (`Err`); `None` if neither
    /// a valid record nor a filler starts there.
    pub fn record_or_blank_at(
        &self,
        offset: u64,
    ) -> Option<std::result::Result<StoredRecord, u64>> {
        let seg = self.files.find(offset)?;
        let rel = offset - seg.start();
        let available = seg.published().saturating_sub(rel) as usize;
        let window = seg.read(rel, available)?;
        match record::probe(window, offset) {
            Probe::Message(len) => Some(Ok(StoredRecord { seg, rel, len })),
            Probe::Blank(len) => Some(Err(len as u64)),
            Probe::Invalid(_) => None,
        }
    }

    /// Up to `max` bytes of whole records and fillers from `from` (a record boundary below
    /// the committed end), never past the end of `from`'s segment; at least one record or
    /// filler, whatever its size. `None` when `from` is the end.
    pub fn read_raw(&self, from: u64, max: usize) -> Result<Option<LogSpan>> {
        let end = self.committed();
        if from >= end {
            return Ok(None);
        }
        let no = |detail: String| StoreError::NoMessageAt {
            offset: from,
            detail,
        };
        let seg = self
            .files
            .find(from)
            .ok_or_else(|| no("no segment holds it (deleted by retention?)".into()))?;
        let rel = from - seg.start();
        let available = (end.min(seg.end()) - from) as usize;
        let window = seg
            .read(rel, available)
            .ok_or_else(|| no("not readable".into()))?;
        // Frames only: these bytes were checked when written or recovered, and whoever
        // takes them (a slave) checks each record's checksum and fields again. The
        // committed end is a record boundary, so when all of it fits, only the first frame
        // is looked at (that `from` is a boundary); otherwise frames are walked up to `max`.
        let mut took = 0usize;
        if window.len() <= max {
            if let Probe::Invalid(why) = record::probe_frame(window, from) {
                return Err(no(why.into()));
            }
            took = window.len();
        }
        while took < window.len() {
            match record::probe_frame(&window[took..], from + took as u64) {
                Probe::Message(len) | Probe::Blank(len) if took == 0 || took + len <= max => {
                    took += len
                }
                Probe::Message(_) | Probe::Blank(_) => break,
                Probe::Invalid(why) => {
                    if took == 0 {
                        return Err(no(why.into()));
                    }
                    break;
                }
            }
        }
        Ok(Some(LogSpan {
            seg,
            rel,
            len: took,
        }))
    }

    /// The bytes `[from, from + len)`, when they are committed and in one segment.
    pub fn read_exact(&self, from: u64, len: usize) -> Option<Vec<u8>> {
        let end = from.checked_add(len as u64)?;
        if end > self.committed() {
            return None;
        }
        let seg = self.files.find(from)?;
        if end > seg.end() {
            return None;
        }
        seg.read(from - seg.start(), len).map(<[u8]>::to_vec)
    }

    /// Store timestamp of the record at `offset` (trusted position from a queue entry).
    pub fn store_timestamp_at(&self, offset: u64) -> Option<i64> {
        let seg = self.files.find(offset)?;
        let b = seg.read(offset - seg.start(), record::pos::STORE_TS + 8)?;
        Some(record::u64_at(b, record::pos::STORE_TS) as i64)
    }

    /// Syncs everything committed so far; returns the new durable offset.
    pub fn flush(&self) -> Result<u64> {
        let target = self.committed();
        let from = self.flushed();
        if target <= from {
            return Ok(from);
        }
        for seg in self.files.all() {
            if seg.end() <= from || seg.start() >= target {
                continue;
            }
            seg.flush_to_unmapped(target.min(seg.end()) - seg.start())?;
        }
        self.flushed.fetch_max(target, Ordering::AcqRel);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(target)
    }

    /// Background work ahead of the writer: create the next segment (if `may_grow` allows
    /// taking a segment's worth of disk), and bring the pages just past the write position
    /// into the page cache and this process's page tables, so the writer takes no faults.
    ///
    /// The pages come in by writing zeros through the file (`zero_fill`), then are faulted
    /// in writable (now without read-ahead work: they are cached). Faulting them in
    /// directly makes the kernel read ahead and zero-fill large folios, measured at 10–13 µs
    /// of CPU per 4 KiB page on this project's Firecracker VMs (ext4, Linux 6.18): half a
    /// master's CPU at 1 M batched sends a second. Zeros written in 128 KiB writes cost
    /// about 1 µs a page. (Faulting with read-ahead off costs 2.5 µs, but leaves 4 KiB
    /// folios whose write-back write-protects and flushes the TLB page by page: no gain.)
    pub fn prepare_ahead(&self, may_grow: impl Fn(u64) -> Result<()>) -> Result<()> {
        let (last, spare) = {
            // The last segment read under the spares lock: the writer adopts a spare under
            // it, and one read before could be a segment it had just left, whose successor
            // (the adopted spare) would then be created again.
            let mut spares = self.spares.lock();
            let Some(last) = self.files.last() else {
                return Ok(());
            };
            if spares.front().map(|s| s.start()) != Some(last.end()) {
                discard_spares(&mut spares);
                may_grow(self.segment_size())?;
                spares.push_back(self.files.create_detached(last.end())?);
            }
            (last, spares.front().cloned())
        };
        let pos = self.committed();
        let window = FAULT_AHEAD.min(self.segment_size());
        let from = self.faulted.load(Ordering::Relaxed).max(pos);
        // Refill once less than half the window is left.
        if from < pos + window / 2 {
            let to = pos + window;
            for seg in std::iter::once(last).chain(spare) {
                let (lo, hi) = (from.max(seg.start()), to.min(seg.end()));
                if lo < hi {
                    self.zero_fill(&seg, lo, hi);
                    seg.prefault(lo - seg.start(), hi - lo);
                }
            }
            self.faulted.store(to, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Brings `[lo, hi)` of `seg` into the page cache by writing zeros, a step at a time,
    /// each step past the writer's position and fenced: the step's range is published to
    /// the writer under its lock, then written without it (the kernel may block a while
    /// allocating pages or throttling dirty ones, and the writer must not wait on that
    /// unless it reaches the range).
    fn zero_fill(&self, seg: &Segment, lo: u64, hi: u64) {
        let page = rustix::param::page_size() as u64;
        let mut at = lo;
        while at < hi {
            let step_end = (at + ZERO_STEP).min(hi);
            let (fence, start) = {
                let w = self.lock_writer();
                // Whole pages past the writer only: the page it writes in is in already.
                let start = at.max(w.position()).div_ceil(page) * page;
                if start >= step_end {
                    at = step_end;
                    continue;
                }
                let fence = self.filling.lock();
                self.fill_start.store(start, Ordering::Release);
                self.fill_end.store(step_end, Ordering::Release);
                (fence, start)
            };
            seg.zero_fill(start - seg.start(), step_end - start);
            self.fill_end.store(0, Ordering::Release);
            self.fill_start.store(0, Ordering::Release);
            drop(fence);
            at = step_end;
        }
    }

    /// How many spare segments follow in order from `start` (the first starting there).
    fn spares_from(&self, start: u64) -> usize {
        let mut spares = self.spares.lock();
        if spares.front().is_some_and(|s| s.start() != start) {
            discard_spares(&mut spares);
        }
        spares.len()
    }

    /// Creates spare segments after the existing ones until `count` follow from `start`.
    fn add_spares(&self, start: u64, count: usize) -> Result<()> {
        let mut spares = self.spares.lock();
        while spares.len() < count {
            let next = spares.back().map_or(start, |s| s.end());
            spares.push_back(self.files.create_detached(next)?);
        }
        Ok(())
    }

    /// The segment starting at `start` for the writer: the first spare if it is the one,
    /// else a new one created now.
    fn next_segment(&self, start: u64) -> Result<Arc<Segment>> {
        let mut spares = self.spares.lock();
        match spares.front() {
            Some(seg) if seg.start() == start => {
                let seg = Arc::clone(seg);
                self.files.adopt(Arc::clone(&seg))?;
                spares.pop_front();
                Ok(seg)
            }
            _ => {
                discard_spares(&mut spares);
                self.files.create(start)
            }
        }
    }

    /// Whether the segment after the last one exists already (a spare).
    pub fn next_segment_ready(&self) -> bool {
        let next = self.files.last().map(|s| s.end());
        next.is_some() && self.spares.lock().front().map(|s| s.start()) == next
    }

    /// Bytes of disk the log holds: its segments and spares (each fully reserved).
    pub fn allocated_bytes(&self) -> u64 {
        let n = self.files.count() + self.spares.lock().len();
        (n as u64).saturating_mul(self.segment_size())
    }

    /// Unmaps flushed pages more than `keep` bytes behind the durable end: the recent
    /// tail, which consumers read, stays mapped; older data lives in the page cache only.
    pub fn release_cold_pages(&self, keep: u64) {
        let upto = self.flushed().saturating_sub(keep);
        for seg in self.files.all() {
            if seg.start() >= upto {
                break;
            }
            seg.release_pages(0, upto.min(seg.end()) - seg.start());
        }
    }

    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Segments other than the one being written, oldest first, each with the store
    /// timestamp of the record that follows it (when the segment stopped growing).
    pub fn sealed_segments(&self) -> Vec<(u64, Option<i64>)> {
        let segs = self.files.all();
        let mut out = Vec::new();
        for pair in segs.windows(2) {
            let next_start = pair[1].start();
            out.push((pair[0].start(), self.first_store_timestamp_from(next_start)));
        }
        out
    }

    fn first_store_timestamp_from(&self, start: u64) -> Option<i64> {
        let seg = self.files.find(start)?;
        let available = seg.published() as usize;
        let window = seg.read(0, available)?;
        match record::probe(window, start) {
            Probe::Message(_) => Some(record::u64_at(window, record::pos::STORE_TS) as i64),
            _ => None,
        }
    }

    /// Deletes the oldest segment unless it is the one being written. Returns the range it
    /// held and its file, or `None` if nothing was deleted. The caller logs why.
    pub fn delete_oldest_segment(&self) -> Result<Option<(u64, u64, std::path::PathBuf)>> {
        if self.files.count() < 2 {
            return Ok(None);
        }
        let Some(seg) = self.files.remove_first()? else {
            return Ok(None);
        };
        Ok(Some((seg.start(), seg.end(), seg.path().to_path_buf())))
    }

    pub fn segment_count(&self) -> usize {
        self.files.count()
    }
}

/// Deletes spare segments that will not be used (never adopted, so no one reads them).
fn discard_spares(spares: &mut VecDeque<Arc<Segment>>) {
    for seg in spares.drain(..) {
        if let Err(e) = std::fs::remove_file(seg.path()) {
            warn!(segment = %seg.path().display(), error = %e, "could not delete an unused spare segment");
        }
    }
}
