//! The commit log: one append-only stream of records over fixed-size segments.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use tracing::{info, warn};

use crate::error::{Result, StoreError};
use crate::segment::{MAX_OFFSET, Segment, SegmentedFile};
use weir_protocol::record::{self, BLANK_MIN_LEN, Probe, RecordView};

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
    /// The next segment, created ahead of need by `prepare_ahead` so that a roll-over does
    /// not pay for creating (and reserving) a whole segment under the writer lock.
    spare: Mutex<Option<Arc<Segment>>>,
    /// Pages are faulted in up to this offset (see `prepare_ahead`).
    faulted: AtomicU64,
}

/// How far ahead of the write position pages are faulted in.
const FAULT_AHEAD: u64 = 16 << 20;

struct WriterState {
    /// Absolute position of the next record.
    pos: u64,
}

/// One record as stored, kept readable for as long as this value lives (even if retention
/// deletes its segment meanwhile).
#[derive(Clone)]
pub struct StoredRecord {
    seg: Arc<Segment>,
    rel: u64,
    len: usize,
}

impl StoredRecord {
    /// The record's bytes exactly as on disk (the wire format of a pull, too).
    pub fn bytes(&self) -> &[u8] {
        // Construction checked that the range is published; published bytes stay so.
        self.seg.read(self.rel, self.len).unwrap_or_default()
    }
    /// Parses the record. Fails only if the stored bytes are damaged.
    pub fn view(&self) -> Result<RecordView<'_>> {
        Ok(RecordView::parse(self.bytes())?)
    }
    pub fn commit_log_offset(&self) -> u64 {
        self.seg.start() + self.rel
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.view() {
            Ok(v) => v.fmt(f),
            Err(_) => write!(f, "StoredRecord(damaged @{})", self.commit_log_offset()),
        }
    }
}

/// What recovery found.
pub(crate) struct ScanOutcome {
    pub end: u64,
    pub records: u64,
    /// Why the scan stopped where it did ("end of data" for zeros).
    pub stop_reason: &'static str,
}

impl CommitLog {
    pub fn open(dir: &Path, segment_size: u64) -> Result<Self> {
        let files = SegmentedFile::open(dir, segment_size)?;
        Ok(Self {
            files,
            writer: Mutex::new(WriterState { pos: 0 }),
            committed: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            spare: Mutex::new(None),
            faulted: AtomicU64::new(0),
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

    /// Walks records from `from` (a record boundary, or the start of the log when `None`)
    /// to the first invalid one, calling `visit` for each, then makes that point the end
    /// of the log: the rest of its segment is zeroed and later segments are deleted.
    ///
    /// Runs before the log is shared.
    ///
    /// `clean_end` is where a clean stop left the log. Only when the scan ends exactly
    /// there is the tail known to be zeros (nothing is ever written past the end) and
    /// everything durable. Otherwise (an unclean stop, or damage found even after a clean
    /// one) the tail is zeroed, so no stale record beyond the cut can validate later, and
    /// the next flush covers every segment (the kernel may still hold dirty pages of a
    /// dead process).
    pub fn recover(
        &self,
        from: Option<u64>,
        clean_end: Option<u64>,
        mut visit: impl FnMut(&RecordView<'_>) -> Result<()>,
    ) -> Result<ScanOutcome> {
        let segs = self.files.all();
        let Some(first) = segs.first() else {
            // Nothing stored: continue after the last known offset, at a segment boundary,
            // so offsets (and so message ids) are never reused.
            let from = from.unwrap_or(0);
            let size = self.segment_size();
            let start = from
                .checked_next_multiple_of(size)
                .filter(|s| *s <= MAX_OFFSET - size)
                .ok_or_else(|| StoreError::Corrupt {
                    what: "commit log",
                    path: self.files.dir().to_path_buf(),
                    detail: format!(
                        "the checkpoint says offsets up to {from} were used: past the largest offset {MAX_OFFSET}"
                    ),
                })?;
            self.set_end(start, true);
            return Ok(ScanOutcome {
                end: self.committed(),
                records: 0,
                stop_reason: "empty log",
            });
        };
        let last_end = segs.last().map_or(first.start(), |s| s.end());
        let mut pos = from.unwrap_or(first.start()).clamp(first.start(), last_end);
        let mut records = 0u64;
        let stop_reason = loop {
            let Some(seg) = self.files.find(pos) else {
                break "end of the last segment";
            };
            let rel = pos - seg.start();
            // SAFETY: recovery runs before the log is shared; nothing writes meanwhile.
            let window = unsafe { seg.read_unpublished(rel, (seg.len() - rel) as usize) };
            match record::probe(window, pos) {
                Probe::Message(len) => {
                    let view = RecordView::parse(&window[..len])?;
                    visit(&view)?;
                    records += 1;
                    pos += len as u64;
                }
                Probe::Blank(len) => pos += len as u64,
                Probe::Invalid(why) => break why,
            }
        };
        // Zero whatever follows the end in its segment, so that no stale record there can
        // ever validate again, and drop later segments.
        let clean = clean_end == Some(pos);
        if let Some(seg) = self.files.find(pos) {
            if !clean {
                zero_tail(&seg, pos - seg.start())?;
            }
            self.files.remove_from(seg.end())?;
        } else {
            self.files.remove_from(pos)?;
        }
        self.set_end(pos, clean);
        Ok(ScanOutcome {
            end: pos,
            records,
            stop_reason,
        })
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
        CommitLogWriter {
            log: self,
            state: self.writer.lock(),
        }
    }

    /// The record at `offset` of `len` bytes, as given by a consume queue entry.
    pub fn record_at(&self, offset: u64, len: usize) -> Option<StoredRecord> {
        let seg = self.files.find(offset)?;
        let rel = offset - seg.start();
        seg.read(rel, len)?;
        Some(StoredRecord { seg, rel, len })
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
            seg.flush_to(target.min(seg.end()) - seg.start())?;
        }
        self.flushed.fetch_max(target, Ordering::AcqRel);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(target)
    }

    /// Background work ahead of the writer: create the next segment, and fault in the
    /// pages just past the write position. (Warming them with read-ahead instead was
    /// measured slower on ext4; faulting a bounded window, writable, moves the kernel's
    /// zero-filling of fresh blocks off the writer without filling the page cache.)
    pub fn prepare_ahead(&self) -> Result<()> {
        let Some(last) = self.files.last() else {
            return Ok(());
        };
        let spare = {
            let mut spare = self.spare.lock();
            if spare.as_ref().map(|s| s.start()) != Some(last.end()) {
                discard_spare(spare.take());
                *spare = Some(self.files.create_detached(last.end())?);
            }
            spare.clone()
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
                    seg.prefault(lo - seg.start(), hi - lo);
                }
            }
            self.faulted.store(to, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The segment starting at `start` for the writer: the spare if it is the one, else a
    /// new one created now.
    fn next_segment(&self, start: u64) -> Result<Arc<Segment>> {
        let mut spare = self.spare.lock();
        match spare.take() {
            Some(seg) if seg.start() == start => {
                self.files.adopt(Arc::clone(&seg))?;
                Ok(seg)
            }
            other => {
                discard_spare(other);
                self.files.create(start)
            }
        }
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

    /// Deletes the oldest segment unless it is the one being written. Returns the new
    /// minimum offset, or `None` if nothing was deleted.
    pub fn delete_oldest_segment(&self) -> Result<Option<u64>> {
        if self.files.count() < 2 {
            return Ok(None);
        }
        let Some(seg) = self.files.remove_first()? else {
            return Ok(None);
        };
        info!(segment = %seg.path().display(), "retention deleted commit log segment");
        Ok(Some(self.min_offset()))
    }

    pub fn segment_count(&self) -> usize {
        self.files.count()
    }

    pub fn dir(&self) -> &Path {
        self.files.dir()
    }
}

/// Deletes a spare segment that will not be used (never adopted, so no one reads it).
fn discard_spare(spare: Option<Arc<Segment>>) {
    if let Some(seg) = spare
        && let Err(e) = std::fs::remove_file(seg.path())
    {
        warn!(segment = %seg.path().display(), error = %e, "could not delete an unused spare segment");
    }
}

/// Zeroes `[rel, len)` of a segment after an unclean stop, so that no stale record there
/// can validate again. Recovery only.
fn zero_tail(seg: &Segment, rel: u64) -> Result<()> {
    let len = seg.len() - rel;
    // Fast path: let the file system turn the range back into reserved zeros (no reads,
    // and the page cache is updated by the kernel).
    let zeroed = std::fs::OpenOptions::new()
        .write(true)
        .open(seg.path())
        .ok()
        .is_some_and(|f| {
            use rustix::fs::{FallocateFlags, fallocate};
            fallocate(
                &f,
                FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
                rel,
                len,
            )
            .is_ok()
        });
    if !zeroed {
        // Fallback: overwrite non-zero chunks.
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK as usize];
        let mut at = rel;
        while at < seg.len() {
            let n = CHUNK.min(seg.len() - at) as usize;
            // SAFETY: recovery runs before the segment is shared.
            let cur = unsafe { seg.read_unpublished(at, n) };
            if cur.iter().any(|&b| b != 0) {
                // SAFETY: as above; nothing at or beyond `rel` is published (`set_end`
                // runs after this).
                unsafe { seg.write(at, &zeros[..n]) };
            }
            at += n as u64;
        }
    }
    warn!(segment = %seg.path().display(), from = rel, "zeroed the commit log tail after an unclean stop");
    seg.flush_to(seg.len())
}

/// Exclusive append access to the commit log.
pub(crate) struct CommitLogWriter<'a> {
    log: &'a CommitLog,
    state: MutexGuard<'a, WriterState>,
}

impl CommitLogWriter<'_> {
    /// Offset the next record will get, if it fits the current segment.
    pub fn position(&self) -> u64 {
        self.state.pos
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
            // SAFETY: we hold the writer lock and `rel` is the unpublished end.
            unsafe { seg.write_with(rel, remaining, record::encode_blank) };
            seg.publish(seg.len());
            self.state.pos = seg.end();
            seg = self.segment_for_write()?;
            rel = 0;
        }
        let offset = self.state.pos;
        // SAFETY: we hold the writer lock and `rel` is the unpublished end.
        unsafe { seg.write_with(rel, len, |buf| fill(offset, buf)) };
        seg.publish(rel + len as u64);
        self.state.pos = offset + len as u64;
        self.log.committed.store(self.state.pos, Ordering::Release);
        Ok(offset)
    }

    fn segment_for_write(&self) -> Result<Arc<Segment>> {
        let pos = self.state.pos;
        match self.log.files.last() {
            Some(seg) if seg.start() <= pos && pos < seg.end() => Ok(seg),
            Some(seg) if pos == seg.end() => self.log.next_segment(pos),
            None => self.log.next_segment(pos - pos % self.log.segment_size()),
            Some(seg) => Err(StoreError::Corrupt {
                what: "commit log",
                path: seg.path().to_path_buf(),
                detail: format!("write position {pos} outside the last segment"),
            }),
        }
    }
}
