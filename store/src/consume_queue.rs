//! Consume queues: per (topic, queue id), a dense array of fixed-size entries pointing
//! into the commit log. Logical offset `k` is entry `k`, at byte `k * 20`.
//!
//! (Over 600 lines: the writer, the readers, recovery and retention all keep the marks
//! below, which are private to this type; split up, each part would reach into the others.)
//!
//! Invariant: entries `[min, written)` are in their segments' pages and published;
//! entries `[written, max)` were put and are held back in the queue's write state (at most
//! [`HELD_ENTRIES`], all for one segment) until a run of them is written at once, a
//! reader asks for one of them, or a checkpoint starts. Readers see `max` at once: they
//! write the held entries themselves before reading past `written`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::error::{IoContext, Result, StoreError};
use crate::segment::{MAX_OFFSET, Segment, SegmentedFile, prefetch_addr};
use weir_protocol::record::{u32_at, u64_at};

pub(crate) const ENTRY_SIZE: u64 = 20;

/// Most segments of holes `put` creates to reach an entry. Only a damaged store leaves a
/// gap at all, and a short one; a longer gap means the queue offset itself is damage (a
/// record's queue offset is not covered by anything but its CRC), and filling it would
/// create files until the disk is full.
const MAX_GAP_SEGMENTS: u64 = 64;

/// Most entries a queue holds back before writing them into their page together. With
/// thousands of busy queues, each queue's page is out of the caches and the TLB by the
/// time its next entry comes, and on a VM a TLB miss is a nested page walk: written one by
/// one, 8,192 queues' entries cost each send ~400 ns more than 512 queues' (the floor
/// `scripts/bench-topics` measures); in runs, a fraction of that, while the held entries
/// live in the queue's own memory, which thousands of queues keep within the TLB's reach.
pub(crate) const HELD_ENTRIES: usize = 16;

/// Entries put but not yet in their pages, in order, all for `segment`: each with its
/// byte within the segment.
#[derive(Default)]
struct Held {
    segment: Option<Arc<Segment>>,
    entries: SmallVec<[(u64, [u8; ENTRY_SIZE as usize]); HELD_ENTRIES]>,
}

/// What the queue's write lock guards.
#[derive(Default)]
struct Writer {
    /// The segment the last entry went in (or was made ready in): nearly every put lands
    /// there, found without the segment table's lock. Anything that removes segments
    /// clears it.
    segment: Option<WriteSegment>,
    held: Held,
}

/// The segment a queue writes in, with the bytes known ready in it: a `reserve` and a
/// `put` that land there read only the queue's own lines, not the segment's (with 8,192
/// busy queues, its struct was a cache and TLB miss each time, the first one under the
/// commit log's writer lock).
struct WriteSegment {
    segment: Arc<Segment>,
    /// Its first byte in the queue.
    start: u64,
    /// The end of its bytes with blocks reserved (`allocated` only grows).
    ready_end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CqEntry {
    pub commit_log_offset: u64,
    pub size: u32,
    pub tag_hash: u64,
}

impl CqEntry {
    pub(crate) fn encode(&self) -> [u8; ENTRY_SIZE as usize] {
        let mut b = [0u8; ENTRY_SIZE as usize];
        b[0..8].copy_from_slice(&self.commit_log_offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..20].copy_from_slice(&self.tag_hash.to_le_bytes());
        b
    }
    pub(crate) fn decode(b: &[u8]) -> Self {
        Self {
            commit_log_offset: u64_at(b, 0),
            size: u32_at(b, 8),
            tag_hash: u64_at(b, 12),
        }
    }
    /// The entry of a stored record.
    pub fn of(v: &weir_protocol::record::RecordView<'_>) -> Self {
        Self {
            commit_log_offset: v.commit_log_offset(),
            size: v.total_len() as u32,
            tag_hash: weir_protocol::record::tag_hash(v.tags()),
        }
    }

    /// A zero entry is a hole: never written.
    pub fn is_hole(&self) -> bool {
        self.size == 0
    }
}

pub(crate) struct ConsumeQueue {
    files: SegmentedFile,
    /// Serialises writers (the dispatcher; recovery and retention before/around it; a
    /// reader or checkpoint writing held entries), and holds their state.
    write: Mutex<Writer>,
    /// Entries `[min, max)` are readable; `[min, written)` are in the pages (see the
    /// module's invariant).
    min: AtomicU64,
    max: AtomicU64,
    written: AtomicU64,
    /// The file system the queue's folder is on (its device number).
    device: u64,
    /// The segment struct the next entry goes through (0: unknown): set by `put` so that
    /// an appender can ask for its cache lines before it takes the writer lock
    /// ([`ConsumeQueue::prefetch_next_put`]). Only ever prefetched, never dereferenced, so
    /// a stale one is harmless.
    next_segment_addr: AtomicUsize,
    /// Its topic was deleted: an append that looked the queue up before that takes a new
    /// one (see `Inner::append`).
    destroyed: AtomicBool,
}

impl ConsumeQueue {
    /// Opens the queue in `dir`, treating entries pointing below `commit_log_min` as
    /// deleted. Runs before the queue is shared.
    pub fn open(dir: &Path, entries_per_segment: u64, commit_log_min: u64) -> Result<Self> {
        let files = SegmentedFile::open_growing(dir, entries_per_segment * ENTRY_SIZE)?;
        let device = std::os::unix::fs::MetadataExt::dev(
            &std::fs::metadata(dir).ctx("read folder metadata", dir)?,
        );
        let cq = Self {
            files,
            write: Mutex::new(Writer::default()),
            min: AtomicU64::new(0),
            max: AtomicU64::new(0),
            written: AtomicU64::new(0),
            device,
            next_segment_addr: AtomicUsize::new(0),
            destroyed: AtomicBool::new(false),
        };
        cq.load(commit_log_min)?;
        Ok(cq)
    }

    /// Finds the valid range from the files: the first entry at or above `commit_log_min`,
    /// and the first hole after the written entries of the last segment (entries are
    /// written in order, so both are binary searches, after a linear skip over leading
    /// holes in a queue that starts mid-segment).
    fn load(&self, commit_log_min: u64) -> Result<()> {
        // Drop whole leading segments that retention emptied.
        while self.files.count() > 1 {
            let Some(first) = self.files.first() else {
                break;
            };
            let last_entry = entry_unpublished(&first, self.entries_per_segment() - 1);
            if !last_entry.is_hole() && last_entry.commit_log_offset < commit_log_min {
                self.files.remove_first()?;
            } else {
                break;
            }
        }
        let (Some(first), Some(last)) = (self.files.first(), self.files.last()) else {
            return Ok(());
        };
        // Before the searches below touch it: the last segment is mostly holes, and with
        // read-ahead each page they touch would bring in (and zero) about 30 more; with
        // 8,192 queues that made a restart take over a minute.
        last.advise_writing(true);
        let per = self.entries_per_segment();
        let hole = |seg: &Segment, i: u64| entry_unpublished(seg, i).is_hole();
        // A queue rebuilt from a trimmed log starts mid-segment, after leading holes.
        let first_written = (0..per).find(|&i| !hole(&first, i)).unwrap_or(per);
        let first_base = first.start() / ENTRY_SIZE;
        let (min, max) = if first_written == per && Arc::ptr_eq(&first, &last) {
            (first_base, first_base)
        } else {
            let min_idx = first_written
                + partition_point(per - first_written, |i| {
                    let e = entry_unpublished(&first, first_written + i);
                    !e.is_hole() && e.commit_log_offset < commit_log_min
                });
            let lo = if Arc::ptr_eq(&first, &last) {
                first_written
            } else {
                0
            };
            let max_idx = lo + partition_point(per - lo, |i| !hole(&last, lo + i));
            let min = first_base + min_idx;
            (min, (last.start() / ENTRY_SIZE + max_idx).max(min))
        };
        self.publish_upto(max);
        self.min.store(min, Ordering::Release);
        Ok(())
    }

    fn entries_per_segment(&self) -> u64 {
        self.files.segment_size() / ENTRY_SIZE
    }

    fn publish_upto(&self, max: u64) {
        let byte = max * ENTRY_SIZE;
        for seg in self.files.all() {
            seg.publish(byte.clamp(seg.start(), seg.end()) - seg.start());
        }
        self.set_ends(max);
    }

    /// Both ends at `max`: nothing held back. Callers hold the write lock with nothing
    /// held, or the queue is not shared yet.
    fn set_ends(&self, max: u64) {
        self.written.store(max, Ordering::Release);
        self.max.store(max, Ordering::Release);
    }

    pub fn min_offset(&self) -> u64 {
        self.min.load(Ordering::Acquire)
    }
    /// The next logical offset to be written.
    pub fn max_offset(&self) -> u64 {
        self.max.load(Ordering::Acquire)
    }

    /// Creates the segment file that will hold logical offset `at` if it does not exist
    /// yet, so that the `put` there cannot fail for want of a file (the store calls this
    /// before it appends the record the entry points at).
    pub fn reserve(&self, at: u64) -> Result<()> {
        let mut w = self.write.lock();
        match self.writable(&mut w.segment, at)? {
            Some(_) => Ok(()),
            None => Err(StoreError::Corrupt {
                what: "consume queue",
                path: self.files.dir().to_path_buf(),
                detail: format!("queue offset {at} cannot be stored: too large"),
            }),
        }
    }

    /// The segment entry `at` goes in, with blocks for it reserved: the one the last write
    /// used when it holds the entry, else found or made (and remembered in `cached`).
    /// `None` when [`ConsumeQueue::can_put`] refuses `at`. Callers hold the write lock, whose
    /// guarded value `cached` is.
    ///
    /// Returns the segment and the entry's byte within it.
    fn writable<'w>(
        &self,
        cached: &'w mut Option<WriteSegment>,
        at: u64,
    ) -> Result<Option<(&'w Arc<Segment>, u64)>> {
        let Some(byte) = at.checked_mul(ENTRY_SIZE) else {
            return Ok(None);
        };
        let end = byte.saturating_add(ENTRY_SIZE);
        let ready = cached
            .as_ref()
            .is_some_and(|c| c.start <= byte && end <= c.ready_end);
        if ready {
            return Ok(cached.as_ref().map(|c| (&c.segment, byte - c.start)));
        }
        let holds = |seg: &Segment| seg.start() <= byte && end <= seg.end();
        let seg = match cached.take() {
            Some(c) if holds(&c.segment) => c.segment,
            _ if !self.can_put(at) => return Ok(None),
            _ => self.segment_for(byte)?,
        };
        let start = seg.start();
        seg.allocate_to(end - start)?;
        let c = cached.insert(WriteSegment {
            start,
            ready_end: start.saturating_add(seg.allocated()),
            segment: seg,
        });
        Ok(Some((&c.segment, byte - start)))
    }

    /// The segment holding byte `byte`, created (with any missing ones before it) if
    /// needed. Callers hold the write lock.
    fn segment_for(&self, byte: u64) -> Result<Arc<Segment>> {
        if let Some(seg) = self.files.find(byte) {
            return Ok(seg);
        }
        let size = self.files.segment_size();
        let mut next = match self.files.last() {
            Some(last) => last.end(),
            None => byte - byte % size,
        };
        if let Some(last) = self.files.last() {
            last.advise_writing(false);
        }
        loop {
            let seg = self.files.create(next)?;
            if seg.end() > byte {
                seg.advise_writing(true);
                return Ok(seg);
            }
            seg.publish(seg.len());
            next = seg.end();
        }
    }

    /// Bytes of disk the queue's files hold.
    pub fn allocated_bytes(&self) -> u64 {
        self.files
            .all()
            .iter()
            .map(|s| s.allocated())
            .fold(0, u64::saturating_add)
    }

    /// The first logical offset in `[min, max]` whose entry points at or beyond
    /// `commit_log_offset` (`max` if none does): the entries below it are in older data.
    pub fn first_at_or_after(&self, commit_log_offset: u64) -> u64 {
        let (mut lo, mut hi) = (self.min_offset(), self.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(e) if e.is_hole() || e.commit_log_offset < commit_log_offset => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// Whether [`ConsumeQueue::put`] can place an entry at `at`: its segment ends below
    /// [`MAX_OFFSET`], and a gap after the last segment spans at most [`MAX_GAP_SEGMENTS`].
    pub fn can_put(&self, at: u64) -> bool {
        let size = self.files.segment_size();
        // Below MAX_OFFSET, which opening the files again requires.
        let Some(byte) = at
            .checked_mul(ENTRY_SIZE)
            .filter(|b| *b <= MAX_OFFSET - size)
        else {
            return false;
        };
        match self.files.last() {
            Some(last) if byte >= last.end() => (byte - last.end()) / size <= MAX_GAP_SEGMENTS,
            _ => true,
        }
    }

    /// Appends an entry at logical offset `at` (≥ `max_offset`). A gap, which only a
    /// damaged store produces, is left as holes that readers skip; an offset
    /// [`ConsumeQueue::can_put`] refuses is an error.
    pub fn put(&self, at: u64, entry: CqEntry) -> Result<()> {
        let mut guard = self.write.lock();
        let w = &mut *guard;
        let max = self.max_offset();
        debug_assert!(at >= max);
        // `writable` finds the segment holding the whole entry.
        let Some((seg, rel)) = self.writable(&mut w.segment, at)? else {
            return Err(StoreError::Corrupt {
                what: "consume queue",
                path: self.files.dir().to_path_buf(),
                detail: format!(
                    "queue offset {at} cannot be stored (next offset {max}): too large or too far ahead"
                ),
            });
        };
        // Held back: written with the entries after it, into a page touched once for all.
        let full = w.held.entries.len() >= HELD_ENTRIES;
        let elsewhere = w
            .held
            .segment
            .as_ref()
            .is_some_and(|s| !Arc::ptr_eq(s, seg));
        if full || elsewhere {
            self.write_run(&mut w.held);
        }
        if w.held.segment.is_none() {
            w.held.segment = Some(Arc::clone(seg));
        }
        w.held.entries.push((rel, entry.encode()));
        self.next_segment_addr
            .store(Arc::as_ptr(seg) as usize, Ordering::Relaxed);
        if max == 0 && self.min_offset() == 0 && self.files.count() == 1 {
            // First entry of a queue that starts mid-way (rebuilt from a trimmed log).
            self.min.store(at, Ordering::Release);
            self.written.store(at, Ordering::Release);
        }
        self.max.store(at + 1, Ordering::Release);
        Ok(())
    }

    /// Writes the held entries into their pages and publishes them. Callers hold the
    /// write lock, whose guarded value `held` is.
    fn write_run(&self, held: &mut Held) {
        let Some(seg) = held.segment.take() else {
            return;
        };
        let mut end = None;
        for (rel, bytes) in held.entries.drain(..) {
            // SAFETY: we hold this queue's write lock; `rel` is at or beyond the published
            // mark (entries are put, and written, in order); its blocks were reserved by
            // `writable` when the entry was put (so a write through the map into a hole of
            // a full disk cannot fault), and `seg`, held here, keeps the map alive.
            unsafe { seg.write(rel, &bytes) };
            end = Some(rel + ENTRY_SIZE);
        }
        if let Some(end) = end {
            seg.publish(end);
            self.written
                .store((seg.start() + end) / ENTRY_SIZE, Ordering::Release);
        }
    }

    /// Writes the entries `put` held back into their pages (see [`HELD_ENTRIES`]): what
    /// a reader past them and a checkpoint do first.
    pub fn write_held(&self) {
        if self.written.load(Ordering::Acquire) >= self.max_offset() {
            return;
        }
        let mut w = self.write.lock();
        self.write_run(&mut w.held);
    }

    /// How many entries are held back now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        self.max_offset()
            .saturating_sub(self.written.load(Ordering::Acquire))
    }

    /// Asks the CPU for this queue's own lines (marks, lock, held entries). A hint.
    pub fn prefetch_struct(&self) {
        prefetch_addr(self as *const Self as usize, std::mem::size_of::<Self>());
    }

    /// Asks the CPU for the memory the next `put` touches: this queue's lock, marks and
    /// held entries, and its segment's struct. A hint, called before the writer lock.
    pub fn prefetch_next_put(&self) {
        self.prefetch_struct();
        prefetch_addr(
            self.next_segment_addr.load(Ordering::Relaxed),
            std::mem::size_of::<Segment>(),
        );
    }

    /// The entry at logical offset `at`, if it is in `[min, max)`.
    pub fn get(&self, at: u64) -> Option<CqEntry> {
        if at < self.min_offset() || at >= self.max_offset() {
            return None;
        }
        if at >= self.written.load(Ordering::Acquire) {
            self.write_held();
        }
        let byte = at * ENTRY_SIZE;
        let seg = self.files.find(byte)?;
        seg.read(byte - seg.start(), ENTRY_SIZE as usize)
            .map(CqEntry::decode)
    }

    /// Calls `f(offset, entry)` for entries from `from` while it returns true.
    pub fn scan(&self, from: u64, mut f: impl FnMut(u64, CqEntry) -> bool) {
        let max = self.max_offset();
        if max > self.written.load(Ordering::Acquire) {
            self.write_held();
        }
        let mut at = from.max(self.min_offset());
        while at < max {
            let byte = at * ENTRY_SIZE;
            let Some(seg) = self.files.find(byte) else {
                return;
            };
            let rel = byte - seg.start();
            let n = ((seg.len() - rel) / ENTRY_SIZE).min(max - at) as usize;
            let Some(bytes) = seg.read(rel, n * ENTRY_SIZE as usize) else {
                return;
            };
            for chunk in bytes.chunks_exact(ENTRY_SIZE as usize) {
                if !f(at, CqEntry::decode(chunk)) {
                    return;
                }
                at += 1;
            }
        }
    }

    /// Recovery: drops every entry that points at or beyond `commit_log_offset`. Runs
    /// before the queue is shared.
    pub fn truncate_from(&self, commit_log_offset: u64) -> Result<()> {
        let mut w = self.write.lock();
        // Held entries first: `get` below then reads without the lock held here.
        self.write_run(&mut w.held);
        w.segment = None;
        let min = self.min_offset();
        let mut max = self.max_offset();
        while max > min {
            match self.get(max - 1) {
                Some(e) if e.is_hole() || e.commit_log_offset >= commit_log_offset => max -= 1,
                _ => break,
            }
        }
        if max == self.max_offset() {
            return Ok(());
        }
        // Zero the dropped entries so a later load does not resurrect them. Only up to the
        // old end: past it the file was never written (zeros already, and maybe holes that
        // writing would fill with blocks).
        let byte = max * ENTRY_SIZE;
        let old_end = self.max_offset().saturating_mul(ENTRY_SIZE);
        self.files
            .remove_from(byte.div_ceil(self.files.segment_size()) * self.files.segment_size())?;
        for seg in self.files.all() {
            if seg.end() <= byte {
                continue;
            }
            let rel = byte.max(seg.start()) - seg.start();
            seg.publish(rel);
            let written_end = old_end.clamp(seg.start(), seg.end()) - seg.start();
            let zeros = vec![0u8; written_end.saturating_sub(rel) as usize];
            // SAFETY: recovery holds the write lock and the queue is not shared yet;
            // `rel` is the published mark just set.
            unsafe { seg.write(rel, &zeros) };
            seg.flush_to(seg.len())?;
            // The zeros are on disk; the entries replay writes over them are not yet.
            seg.unflush_from(rel);
        }
        if max == min && self.files.count() == 0 {
            self.min.store(0, Ordering::Release);
        }
        self.set_ends(max);
        Ok(())
    }

    /// Retention: forgets entries pointing below `commit_log_min` and deletes leading
    /// segments made only of them (never the last segment).
    pub fn trim_below(&self, commit_log_min: u64) -> Result<()> {
        let mut w = self.write.lock();
        // Held entries first: `first_at_or_after` below then reads without the lock held
        // here.
        self.write_run(&mut w.held);
        w.segment = None;
        loop {
            let Some(first) = self.files.first() else {
                break;
            };
            if self.files.count() < 2 {
                break;
            }
            let last_idx = self.entries_per_segment() - 1;
            let last = first
                .read(last_idx * ENTRY_SIZE, ENTRY_SIZE as usize)
                .map(CqEntry::decode);
            match last {
                Some(e) if !e.is_hole() && e.commit_log_offset < commit_log_min => {
                    self.files.remove_first()?;
                }
                _ => break,
            }
        }
        if let Some(first) = self.files.first() {
            self.min
                .fetch_max(first.start() / ENTRY_SIZE, Ordering::AcqRel);
        }
        // The first entry still in the log.
        let first_kept = self.first_at_or_after(commit_log_min);
        self.min.store(first_kept, Ordering::Release);
        Ok(())
    }

    /// Syncs the queue's files, the entries it held back written into them first.
    pub fn flush(&self) -> Result<()> {
        self.write_held();
        self.files.flush()
    }

    /// After a sync: brings the page the next entries go in back into the page tables
    /// writable. Writing it back write-protected it (with the rest of its folio), so the
    /// next `put` here would take the fault (ext4's `page_mkwrite`) under the commit log's
    /// writer lock, where every appender waits: 8,192 such faults in a row after a thorough
    /// checkpoint of 1,024 topics. Only within the blocks the queue reserved (a hole's
    /// page is left to `put`, after `allocate_to`). Advisory.
    pub fn prefault_after_sync(&self) {
        let page = rustix::param::page_size() as u64;
        let Some(byte) = self.max_offset().checked_mul(ENTRY_SIZE) else {
            return;
        };
        let Some(seg) = self.files.find(byte) else {
            return;
        };
        let rel = (byte - seg.start()) / page * page;
        let end = rel.saturating_add(page).min(seg.allocated());
        if end > rel {
            seg.prefault(rel, end - rel);
        }
    }

    /// The file system the queue's files are on (its device number).
    pub fn device(&self) -> u64 {
        self.device
    }

    /// The queue's folder.
    pub fn dir(&self) -> &Path {
        self.files.dir()
    }

    /// What [`ConsumeQueue::flush`] would sync now (see [`SegmentedFile::unflushed`]).
    pub fn unflushed(&self) -> Vec<(Arc<Segment>, u64)> {
        self.files.unflushed()
    }

    /// Whole pages written since the last flush whose write-back was not started either
    /// (what a partial checkpoint weighs).
    pub fn pages_to_write(&self) -> u64 {
        self.files.pages_to_write()
    }

    /// Starts writing back the whole pages written since the last flush, without waiting
    /// (see [`SegmentedFile::start_writeback`]): what a partial checkpoint does.
    pub fn start_writeback(&self) -> Result<()> {
        self.files.start_writeback()
    }

    pub fn release_sealed_pages(&self) {
        self.files.release_sealed()
    }

    /// Whether its topic was deleted ([`ConsumeQueue::destroy`]).
    pub fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }

    pub fn destroy(&self) -> Result<()> {
        let mut w = self.write.lock();
        self.destroyed.store(true, Ordering::Release);
        // Held entries go with their files.
        *w = Writer::default();
        self.files.destroy()?;
        self.min.store(0, Ordering::Release);
        self.set_ends(0);
        Ok(())
    }
}

fn entry_unpublished(seg: &Segment, idx: u64) -> CqEntry {
    // SAFETY: only called from `load`, before the queue is shared.
    CqEntry::decode(unsafe { seg.read_unpublished(idx * ENTRY_SIZE, ENTRY_SIZE as usize) })
}

/// First `i` in `0..n` for which `pred(i)` is false, given `pred` is true then false.
fn partition_point(n: u64, pred: impl Fn(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests;
