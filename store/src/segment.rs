//! Fixed-size, memory-mapped segment files, and a sequence of them named by start offset.
//! (Over ~600 lines: the segment type and the sequence of them share one unsafe invariant,
//! kept in one file so that every `unsafe` block and the invariant it relies on are read in
//! one place; the segment's ways of bringing pages in and dropping them belong to it.)
//!
//! This module holds the store's only `unsafe` code. The invariant that makes it sound:
//! each segment has one writer at a time (its owner serialises writes behind a lock), a
//! writer only writes at or beyond the segment's `published` mark, and readers only read
//! below it. Bytes below the mark never change while the segment is shared, so a reader
//! can hold a plain `&[u8]` to them. Segments are reference counted: deleting a file does
//! not unmap it while a reader still holds it.

use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapRaw;
use parking_lot::RwLock;

use crate::error::{IoContext, Result, StoreError};
use crate::fsutil;

/// Asks the CPU to bring the cache lines holding `bytes` (at most the first `max` of them)
/// in ahead of use: a hint, never a read or a fault. A reader walking records scattered
/// through the log (one queue's among many) issues it a few records ahead, so that the
/// memory latency of each record overlaps the work on the ones before it.
pub fn prefetch(bytes: &[u8], max: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let end = bytes.len().min(max);
        // One hint per 64-byte line from the start, and one for the last byte (the bytes
        // need not start on a line).
        for at in (0..end).step_by(64).chain(end.checked_sub(1)) {
            // SAFETY: a prefetch neither reads nor writes memory as far as the program is
            // concerned and never faults, whatever the address; SSE, which the instruction
            // needs, is part of every x86_64 CPU. The address lies within `bytes` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes[at..].as_ptr().cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, max);
}

/// [`prefetch`] by address: the lines holding `[addr, addr + len)`. For hints kept as plain
/// numbers (a queue's next write position), which may be stale by the time they are used:
/// the address is never dereferenced, so one that is no longer mapped costs nothing.
pub(crate) fn prefetch_addr(addr: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        if addr == 0 {
            return;
        }
        let last = addr.saturating_add(len.saturating_sub(1));
        for at in (addr..=last).step_by(64).chain(std::iter::once(last)) {
            // SAFETY: as in `prefetch`: the instruction never reads, writes or faults,
            // whatever the address (it is made from a number, not from a reference).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::without_provenance::<i8>(at)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, len);
}

pub(crate) struct Segment {
    /// Absolute offset of the first byte.
    start: u64,
    len: u64,
    path: PathBuf,
    /// The file, for [`Segment::zero_fill`]'s writes (the map outlives no handle).
    file: File,
    map: MmapRaw,
    /// Bytes `[0, published)` are immutable and readable.
    published: AtomicU64,
    /// Bytes `[0, flushed)` are known to be on disk.
    flushed: AtomicU64,
    /// Whole pages `[0, written_back)` had their write-back started
    /// ([`Segment::start_writeback`]): not durable by that, not to be started again.
    written_back: AtomicU64,
    /// Bytes `[0, allocated)` have real blocks (writes there cannot fault on a full disk).
    /// The whole length for a segment made by [`Segment::create`]; a growing segment
    /// ([`Segment::create_growing`]) starts sparse and its writer calls
    /// [`Segment::allocate_to`] before writing past it.
    allocated: AtomicU64,
}

/// Bytes of one write of [`Segment::zero_fill`]: the page cache takes each write as folios
/// of about its size. Measured on a lone master's batched sends (8 s runs): 128 KiB gave
/// the most throughput; 1 MiB writes cost the filling thread about twice as much CPU
/// (large folios are the expensive ones on these VMs: 15 µs a 4 KiB page for 2 MiB pages,
/// 1.8 µs for 4 KiB ones), 32 KiB ones left more work to the syncs.
const ZERO_CHUNK: usize = 128 << 10;

/// A growing segment reserves at least this much at a time, doubling as it fills.
pub(crate) const GROW_STEP: u64 = 64 << 10;

impl Segment {
    /// Creates a new zero-filled segment, with its blocks reserved so that later writes
    /// through the map cannot fail for lack of space, and makes its name durable.
    pub fn create(path: &Path, start: u64, len: u64) -> Result<Self> {
        Self::create_with(path, start, len, false)
    }

    /// Creates a new segment whose file has its full length but no blocks yet: its writer
    /// reserves them as it goes ([`Segment::allocate_to`]), so that thousands of queues
    /// holding a few entries each take a few KiB of disk each, not a whole segment.
    pub fn create_growing(path: &Path, start: u64, len: u64) -> Result<Self> {
        Self::create_with(path, start, len, true)
    }

    fn create_with(path: &Path, start: u64, len: u64, growing: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .ctx("create segment", path)?;
        let sized = if growing {
            file.set_len(len).ctx("size segment", path)
        } else {
            fsutil::preallocate(&file, len).ctx("reserve space for segment", path)
        };
        let made = sized
            .and_then(|()| file.sync_all().ctx("sync new segment", path))
            .and_then(|()| match path.parent() {
                Some(dir) => fsutil::sync_dir(dir),
                None => Ok(()),
            });
        if let Err(e) = made {
            // Never leave a half-made file under a segment's name: the next attempt could
            // not create it, and a restart would take it for part of the log.
            drop(file);
            let _ = fs::remove_file(path);
            return Err(e);
        }
        Self::map(path, file, start, len, if growing { 0 } else { len })
    }

    /// Reserves blocks for `[0, upto)` if they are not yet (at least [`GROW_STEP`] more,
    /// doubling what the segment holds, never past its end). The writer calls it before it
    /// writes past [`Segment::allocated`]; an error (a full disk) means the write must not
    /// happen. Callers serialise it (the owner's write lock).
    pub fn allocate_to(&self, upto: u64) -> Result<()> {
        let have = self.allocated.load(Ordering::Acquire);
        if upto <= have {
            return Ok(());
        }
        let want = upto
            .max(have.saturating_mul(2))
            .max(GROW_STEP)
            .div_ceil(GROW_STEP)
            .saturating_mul(GROW_STEP)
            .min(self.len);
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .ctx("open segment", &self.path)?;
        // From 0, not from `have`: after a restart `have` is 0 and the blocks already
        // there cost nothing to reserve again.
        fsutil::reserve_blocks(&file, want).ctx("reserve space for segment", &self.path)?;
        self.allocated.store(want, Ordering::Release);
        Ok(())
    }

    /// Bytes of the segment with blocks reserved (see [`Segment::allocate_to`]).
    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Acquire)
    }

    /// Opens an existing segment. `published` starts at 0: the owner publishes what
    /// recovery validated. `flushed` starts at 0 too: after a crash of the process the
    /// kernel may still hold dirty pages of it, and the next flush must cover them.
    pub fn open(path: &Path, start: u64, len: u64, growing: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .ctx("open segment", path)?;
        let actual = file.metadata().ctx("stat segment", path)?.len();
        if actual > len {
            return Err(StoreError::Corrupt {
                what: "segment",
                path: path.to_path_buf(),
                detail: format!("size {actual}, expected {len}; was the segment size changed?"),
            });
        }
        if actual < len {
            // Cut short (a crash while the file was created, or a careless copy): what is
            // missing reads as zeros, which recovery treats as the end of the data.
            tracing::warn!(path = %path.display(), actual, expected = len, "segment file is short; extending it with zeros");
            if growing {
                file.set_len(len).ctx("extend short segment", path)?;
            } else {
                fsutil::preallocate(&file, len).ctx("extend short segment", path)?;
            }
            file.sync_all().ctx("sync segment", path)?;
        }
        // A growing segment's reservation is found again by its writer's next
        // `allocate_to` (reserving what already has blocks costs nothing).
        Self::map(path, file, start, len, if growing { 0 } else { len })
    }

    fn map(path: &Path, file: File, start: u64, len: u64, allocated: u64) -> Result<Self> {
        let map = MmapRaw::map_raw(&file).ctx("map segment", path)?;
        Ok(Self {
            start,
            len,
            path: path.to_path_buf(),
            file,
            map,
            published: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            written_back: AtomicU64::new(0),
            allocated: AtomicU64::new(allocated),
        })
    }

    pub fn start(&self) -> u64 {
        self.start
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Faults `[rel, rel + len)` in, writable, ahead of the writer, so that the writer
    /// does not take the faults (and the kernel's zero-filling of fresh blocks) itself,
    /// under its lock. Does not change any byte. Advisory: failures are ignored.
    pub fn prefault(&self, rel: u64, len: u64) {
        let len = len.min(self.len.saturating_sub(rel));
        if len > 0 {
            let _ =
                self.map
                    .advise_range(memmap2::Advice::PopulateWrite, rel as usize, len as usize);
        }
    }

    /// Writes zeros to `[rel, rel + len)` through the file, which brings its pages into the
    /// page cache without read-ahead.
    ///
    /// The range must lie at or past the writer's position, and the writer must be kept
    /// out of it until this returns (`CommitLog`'s fill fence), so that no byte anyone
    /// wrote or will read changes. Advisory: failures are ignored (the writer's own faults
    /// bring the pages in).
    pub fn zero_fill(&self, rel: u64, len: u64) {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
        debug_assert!(rel >= self.published());
        let end = rel.saturating_add(len).min(self.len);
        let mut at = rel;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK as u64) as usize;
            if let Err(e) = self.file.write_all_at(&ZEROS[..n], at) {
                tracing::debug!(segment = %self.path.display(), error = %e, "zero fill failed");
                return;
            }
            at += n as u64;
        }
    }

    /// Tells the kernel how the mapping will be used: `writing` while the segment is the
    /// one a small-entry writer appends to (no read-ahead: a write fault then brings in
    /// the one page it touches, instead of reading ahead a window of not-yet-written
    /// zeros, which across thousands of queues churned the page cache and cost most of a
    /// send's time), normal read-ahead once sealed (readers scan it in order).
    /// Advisory: failures are ignored.
    pub fn advise_writing(&self, writing: bool) {
        let advice = if writing {
            memmap2::Advice::Random
        } else {
            memmap2::Advice::Normal
        };
        if let Err(e) = self.map.advise(advice) {
            tracing::debug!(segment = %self.path.display(), error = %e, "madvise failed");
        }
    }

    /// Drops this process's mapping of the pages in `[from, to)` (rounded inwards to
    /// pages) that are already on disk: the page cache keeps the data, resident memory
    /// stops growing with the backlog, and a later read maps the pages again.
    pub fn release_pages(&self, from: u64, to: u64) {
        let page = rustix::param::page_size() as u64;
        let to = to.min(self.flushed.load(Ordering::Acquire)) / page * page;
        let from = from.div_ceil(page) * page;
        if from >= to {
            return;
        }
        self.unmap_published(from, to);
    }

    /// Drops this process's mapping of the whole pages `[from, to)`, cut at `published`.
    /// Advisory: a failure is logged at debug level and otherwise ignored.
    fn unmap_published(&self, from: u64, to: u64) {
        let to = to.min(self.published());
        if from >= to {
            return;
        }
        // SAFETY: this is a shared mapping of a regular file. MADV_DONTNEED on it only
        // removes page table entries, moving a dirty one's state to the page cache, which a
        // sync then writes out; the next access faults the same bytes back in from the page
        // cache or the file (madvise(2): "subsequent accesses of pages in the range will
        // result in repopulating the memory contents from the up-to-date contents of the
        // underlying mapped file"). The range lies below `published`, so no byte a reader
        // can see ever changes, and the writer, which writes at or past `published`, never
        // touches it.
        let result = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                from as usize,
                (to - from) as usize,
            )
        };
        if let Err(e) = result {
            tracing::debug!(segment = %self.path.display(), error = %e, "madvise(DONTNEED) failed");
        }
    }

    /// Makes `[0, upto)` readable. Called by the single writer after writing the bytes.
    pub fn publish(&self, upto: u64) {
        debug_assert!(upto <= self.len);
        self.published.store(upto, Ordering::Release);
    }

    /// Published bytes `[rel, rel + len)`, or `None` if any of them is not published.
    pub fn read(&self, rel: u64, len: usize) -> Option<&[u8]> {
        let end = rel.checked_add(len as u64)?;
        if end > self.published() {
            return None;
        }
        // SAFETY: `[rel, end)` lies below `published` (checked above), and `published` only
        // grows while the segment is shared, so these bytes are initialised (a mapped file
        // reads as zeros or data), inside the mapping (`published <= len`), and never
        // written again while this borrow of `self` (which keeps the map alive) lasts.
        Some(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(rel as usize), len) })
    }

    /// Any bytes of the segment, published or not, for recovery's scan.
    ///
    /// # Safety
    /// No one may write to the segment while the returned slice lives: only call it before
    /// the segment is shared with readers or writers.
    pub unsafe fn read_unpublished(&self, rel: u64, len: usize) -> &[u8] {
        assert!(rel + len as u64 <= self.len, "read past the segment end");
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(rel as usize), len) }
    }

    /// Copies `data` to `[rel, rel + data.len())`.
    ///
    /// # Safety
    /// The caller must be the segment's only writer at this moment (hold its owner's write
    /// lock), and `rel` must be at or beyond `published` so no reader can see the bytes
    /// while they change.
    pub unsafe fn write(&self, rel: u64, data: &[u8]) {
        assert!(rel >= self.published(), "write below the published mark");
        assert!(
            rel + data.len() as u64 <= self.len,
            "write past the segment end"
        );
        // SAFETY: in bounds (asserted); no reader reads at or beyond `published`, and the
        // caller guarantees it is the only writer, so nothing aliases the destination.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(rel as usize),
                data.len(),
            )
        }
    }

    /// Lets `fill` write `len` bytes in place at `rel` (avoids a staging copy).
    ///
    /// # Safety
    /// Same contract as [`Segment::write`].
    pub unsafe fn write_with(&self, rel: u64, len: usize, fill: impl FnOnce(&mut [u8])) {
        assert!(rel >= self.published(), "write below the published mark");
        assert!(rel + len as u64 <= self.len, "write past the segment end");
        // SAFETY: as in `write`: in bounds, unpublished, single writer, so this is the only
        // reference to these bytes while `fill` runs.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(rel as usize), len) };
        fill(dst)
    }

    /// Makes `[flushed, upto)` durable. Concurrent calls are harmless (msync is idempotent).
    pub fn flush_to(&self, upto: u64) -> Result<()> {
        let from = self.flushed.load(Ordering::Acquire);
        if upto <= from {
            return Ok(());
        }
        self.map
            .flush_range(from as usize, (upto - from) as usize)
            .ctx("sync segment", &self.path)?;
        self.flushed.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// [`Segment::flush_to`], dropping first this process's mapping of the whole pages in
    /// `[flushed, upto)`: written back while mapped writable, each 4 KiB page of a small
    /// folio is write-protected with a TLB flush of its own, an interrupt to every core the
    /// broker runs on; dropped first, the range costs one. The page cache keeps the data
    /// (dirty until the sync below), and a reader maps the pages again, read-only.
    pub fn flush_to_unmapped(&self, upto: u64) -> Result<()> {
        let page = rustix::param::page_size() as u64;
        let from = self.flushed.load(Ordering::Acquire) / page * page;
        let to = upto.min(self.published()) / page * page;
        // In steps, letting other threads run between them: a sync after 500 ms of sends
        // drops tens of MB, milliseconds of work.
        const STEP: u64 = 2 << 20;
        let mut from = from;
        while from < to {
            let step_end = (from + STEP).min(to);
            self.unmap_published(from, step_end);
            from = step_end;
            if from < to {
                std::thread::yield_now();
            }
        }
        self.flush_to(upto)
    }

    /// Starts the write-back of the whole pages in `[flushed, upto)` not started before,
    /// dropping this process's mapping of them first (as [`Segment::flush_to_unmapped`]
    /// does, for the same reason), and does not wait: no device flush, no journal commit,
    /// nothing recorded as durable. The page being written (past the last whole one) is
    /// left alone, mapped and writable. A sync later finds these pages clean or on their
    /// way, so it costs a flush, not the writes.
    pub fn start_writeback(&self, upto: u64) -> Result<()> {
        let page = rustix::param::page_size() as u64;
        let from = self.written_or_flushed() / page * page;
        let to = upto.min(self.published()) / page * page;
        if to <= from {
            return Ok(());
        }
        self.unmap_published(from, to);
        start_file_writeback(&self.file, from, to - from)
            .ctx("start a segment's write-back", &self.path)?;
        self.written_back.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }

    /// Whole pages published and neither synced nor with their write-back started.
    fn pages_to_write(&self) -> u64 {
        const PAGE: u64 = 4096;
        (self.published() / PAGE).saturating_sub(self.written_or_flushed() / PAGE)
    }

    /// How far the bytes are synced or on their way to the disk.
    fn written_or_flushed(&self) -> u64 {
        self.flushed
            .load(Ordering::Acquire)
            .max(self.written_back.load(Ordering::Acquire))
    }

    /// Records that `[0, upto)` is durable, made so by a sync of the whole file system
    /// that began after those bytes were written.
    pub fn flushed_by_file_system(&self, upto: u64) {
        self.flushed.fetch_max(upto, Ordering::AcqRel);
    }

    /// Lowers the durable and written-back marks to `rel` (at most): what is written from
    /// there on is to be written and synced again (recovery rewrites a truncated queue's
    /// entries from there).
    pub fn unflush_from(&self, rel: u64) {
        self.flushed.fetch_min(rel, Ordering::AcqRel);
        self.written_back.fetch_min(rel, Ordering::AcqRel);
    }
}

/// Starts writing back the dirty pages of `file` in `[offset, offset + len)` and returns
/// without waiting for them, without the device flush or journal commit a sync makes
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): nothing is durable by it, a later sync
/// finds those pages clean or on their way.
#[cfg(target_os = "linux")]
fn start_file_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range reads no memory of this process: it takes a descriptor,
    // valid for the call as `file` is borrowed, two integers and flags.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Elsewhere nothing is started: the next sync writes everything.
#[cfg(not(target_os = "linux"))]
fn start_file_writeback(_file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    Ok(())
}

/// Segment file name: the start offset, 20 digits, so names sort by offset.
/// No segment reaches past this offset (8 EiB, more than any store writes): a file name
/// or checkpoint that claims one is damage, refused rather than overflowing offsets.
pub(crate) const MAX_OFFSET: u64 = 1 << 63;

pub(crate) fn segment_name(start: u64) -> String {
    format!("{start:020}")
}

/// A sequence of equally sized segments in one folder, each named by its start offset.
pub(crate) struct SegmentedFile {
    dir: PathBuf,
    segment_size: u64,
    /// Segments are made sparse and reserve blocks as they fill (consume queues), instead
    /// of whole (the commit log, whose segments always fill).
    growing: bool,
    segments: RwLock<Vec<Arc<Segment>>>,
}

impl SegmentedFile {
    /// Opens every segment in `dir` (creating `dir` if needed). Files that are not
    /// segments are an error, so nothing is silently ignored; a gap in the sequence is too.
    pub fn open(dir: &Path, segment_size: u64) -> Result<Self> {
        Self::open_with(dir, segment_size, false)
    }

    /// [`SegmentedFile::open`] for segments that reserve their blocks as they fill
    /// ([`Segment::create_growing`]).
    pub fn open_growing(dir: &Path, segment_size: u64) -> Result<Self> {
        Self::open_with(dir, segment_size, true)
    }

    fn open_with(dir: &Path, segment_size: u64, growing: bool) -> Result<Self> {
        fsutil::create_dir_durable(dir)?;
        let mut starts = Vec::new();
        for entry in fs::read_dir(dir).ctx("list folder", dir)? {
            let entry = entry.ctx("list folder", dir)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                continue;
            }
            match name.parse::<u64>() {
                Ok(start) if name.len() == 20 => starts.push(start),
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "segment folder",
                        path: entry.path(),
                        detail: "unexpected file (segments are named by a 20-digit offset)".into(),
                    });
                }
            }
        }
        starts.sort_unstable();
        let mut segments = Vec::with_capacity(starts.len());
        for (i, &start) in starts.iter().enumerate() {
            let path = dir.join(segment_name(start));
            if start > MAX_OFFSET - segment_size {
                return Err(StoreError::Corrupt {
                    what: "segment",
                    path,
                    detail: format!("start {start} is past the largest offset {MAX_OFFSET}"),
                });
            }
            if start % segment_size != 0 {
                return Err(StoreError::Corrupt {
                    what: "segment",
                    path,
                    detail: format!(
                        "start {start} is not a multiple of the segment size {segment_size}; was the segment size changed?"
                    ),
                });
            }
            if i > 0 && starts[i - 1] + segment_size != start {
                return Err(StoreError::Corrupt {
                    what: "segment",
                    path,
                    detail: format!(
                        "gap before this segment (previous starts at {})",
                        starts[i - 1]
                    ),
                });
            }
            segments.push(Arc::new(Segment::open(
                &path,
                start,
                segment_size,
                growing,
            )?));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            segment_size,
            growing,
            segments: RwLock::new(segments),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The segment holding `offset`, if it exists.
    pub fn find(&self, offset: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read();
        let first = segs.first()?.start();
        if offset < first {
            return None;
        }
        let idx = ((offset - first) / self.segment_size) as usize;
        segs.get(idx).cloned()
    }

    pub fn first(&self) -> Option<Arc<Segment>> {
        self.segments.read().first().cloned()
    }
    pub fn last(&self) -> Option<Arc<Segment>> {
        self.segments.read().last().cloned()
    }
    pub fn all(&self) -> Vec<Arc<Segment>> {
        self.segments.read().clone()
    }
    pub fn count(&self) -> usize {
        self.segments.read().len()
    }

    /// Creates the segment starting at `start`, which must follow the last one (or be
    /// the first).
    pub fn create(&self, start: u64) -> Result<Arc<Segment>> {
        let seg = self.create_detached(start)?;
        self.adopt(Arc::clone(&seg))?;
        Ok(seg)
    }

    /// Creates the file of a segment without making it part of the sequence yet (a spare,
    /// prepared ahead of need). If the process stops before adopting it, the next open
    /// finds it after the end of the data, where recovery deletes it.
    pub fn create_detached(&self, start: u64) -> Result<Arc<Segment>> {
        debug_assert_eq!(start % self.segment_size, 0);
        let path = self.dir.join(segment_name(start));
        Ok(Arc::new(if self.growing {
            Segment::create_growing(&path, start, self.segment_size)?
        } else {
            Segment::create(&path, start, self.segment_size)?
        }))
    }

    /// Appends a segment made by `create_detached`; it must follow the last one.
    pub fn adopt(&self, seg: Arc<Segment>) -> Result<()> {
        let mut segs = self.segments.write();
        match segs.last() {
            Some(last) if last.end() != seg.start() => Err(StoreError::Corrupt {
                what: "segment",
                path: seg.path().to_path_buf(),
                detail: format!(
                    "does not follow the last segment (which ends at {})",
                    last.end()
                ),
            }),
            _ => {
                segs.push(seg);
                Ok(())
            }
        }
    }

    /// Deletes the first segment (retention). Readers holding it keep their mapping.
    pub fn remove_first(&self) -> Result<Option<Arc<Segment>>> {
        let seg = {
            let mut segs = self.segments.write();
            if segs.is_empty() {
                return Ok(None);
            }
            segs.remove(0)
        };
        fs::remove_file(seg.path()).ctx("delete segment", seg.path())?;
        Ok(Some(seg))
    }

    /// Takes every segment starting at or after `offset` out of the sequence without
    /// touching its file; the caller decides what becomes of them, in the order given:
    /// the last segment first. Removing files in that order keeps the folder a sequence
    /// without gaps whenever it stops (a kill during recovery, a failed delete): what is
    /// left is a prefix, which the next recovery cuts again. First to last, a stop after
    /// the first delete left a gap that `open` refuses, and the store could not open.
    pub fn detach_from(&self, offset: u64) -> Vec<Arc<Segment>> {
        let mut segs = self.segments.write();
        let keep = segs.iter().take_while(|s| s.start() < offset).count();
        segs.drain(keep..).rev().collect()
    }

    /// Deletes every segment starting at or after `offset` (recovery truncation), the
    /// last first (see [`SegmentedFile::detach_from`]).
    pub fn remove_from(&self, offset: u64) -> Result<()> {
        let removed = self.detach_from(offset);
        for seg in &removed {
            fs::remove_file(seg.path()).ctx("delete segment", seg.path())?;
        }
        if !removed.is_empty() {
            fsutil::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes all segments and the folder itself.
    pub fn destroy(&self) -> Result<()> {
        self.segments.write().clear();
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("delete folder", &self.dir),
        }
    }

    /// Releases the mapped pages of every segment but the last (see
    /// [`Segment::release_pages`]).
    pub fn release_sealed(&self) {
        let segs = self.segments.read();
        if let Some((_, sealed)) = segs.split_last() {
            for seg in sealed {
                seg.release_pages(0, seg.len());
            }
        }
    }

    /// Calls `f(segment, flushed, published)` for each segment with unflushed bytes, last
    /// first. Segments before a fully flushed one were flushed before it was written; one
    /// made ready ahead of its first byte (a queue's `reserve`, maybe for an append refused
    /// after it) is passed over: the segment before it may still hold unsynced bytes.
    fn each_unflushed<E>(
        &self,
        mut f: impl FnMut(&Arc<Segment>, u64, u64) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for seg in self.segments.read().iter().rev() {
            let (flushed, published) = (seg.flushed.load(Ordering::Acquire), seg.published());
            if published == 0 {
                continue;
            }
            if flushed >= published {
                break;
            }
            f(seg, flushed, published)?;
        }
        Ok(())
    }

    /// Whole pages (4 KiB) published since the last flush whose write-back was not
    /// started either, over the segments with unflushed bytes.
    pub fn pages_to_write(&self) -> u64 {
        let mut pages = 0u64;
        let Ok(()) = self.each_unflushed(|seg, _, _| {
            pages = pages.saturating_add(seg.pages_to_write());
            Ok::<(), Infallible>(())
        });
        pages
    }

    /// The segments [`SegmentedFile::flush`] would sync now, each with how far it is
    /// published: what a sync of the whole file system starting after this call makes
    /// durable (then recorded with [`Segment::flushed_by_file_system`]).
    pub fn unflushed(&self) -> Vec<(Arc<Segment>, u64)> {
        let mut out = Vec::new();
        let Ok(()) = self.each_unflushed(|seg, _, published| {
            out.push((Arc::clone(seg), published));
            Ok::<(), Infallible>(())
        });
        out
    }

    /// Flushes the published bytes of every segment that has unflushed ones, dropping
    /// this process's mapping of their whole pages first (see
    /// [`Segment::flush_to_unmapped`]): a consume queue's writer maps its pages writable,
    /// and written back while mapped, each page costs a TLB flush of its own, an
    /// interrupt to every core the broker runs on (5,000 a second for a queue taking 1 M
    /// entries a second). The page being written (past the last whole one) stays mapped.
    pub fn flush(&self) -> Result<()> {
        self.each_unflushed(|seg, _, published| seg.flush_to_unmapped(published))
    }

    /// Starts the write-back of the whole pages [`SegmentedFile::flush`] would sync,
    /// without waiting or recording anything as durable (see [`Segment::start_writeback`]).
    pub fn start_writeback(&self) -> Result<()> {
        self.each_unflushed(|seg, _, published| seg.start_writeback(published))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<u64> {
        let mut starts: Vec<u64> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
            .collect();
        starts.sort_unstable();
        starts
    }

    /// A truncation that stops part way (here a delete that fails; in life a kill during
    /// recovery) must leave the folder a sequence `open` accepts: no gap.
    #[test]
    fn a_truncation_stopped_part_way_leaves_no_gap() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4096;
        let files = SegmentedFile::open_growing(dir.path(), size).unwrap();
        for i in 0..4 {
            files.create(i * size).unwrap();
        }
        // The last segment's name becomes a folder that holds a file: it cannot be deleted
        // as a file, so the truncation fails at that segment.
        let last = dir.path().join(segment_name(3 * size));
        fs::remove_file(&last).unwrap();
        fs::create_dir(&last).unwrap();
        fs::write(last.join("keep"), b"x").unwrap();

        assert!(files.remove_from(size).is_err());
        let left = names_in(dir.path());
        assert!(
            left.windows(2).all(|w| w[1] == w[0] + size),
            "segments left after a failed truncation have a gap: {left:?}"
        );
        // The next truncation finishes the job.
        fs::remove_dir_all(&last).unwrap();
        drop(files);
        let files = SegmentedFile::open_growing(dir.path(), size).unwrap();
        files.remove_from(size).unwrap();
        assert_eq!(names_in(dir.path()), vec![0]);
    }

    #[test]
    fn released_pages_read_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let files = SegmentedFile::open(dir.path(), 1 << 20).unwrap();
        let seg = files.create(0).unwrap();
        let data: Vec<u8> = (0..(256 * 1024u32)).map(|i| (i * 7 % 251) as u8).collect();
        // SAFETY: single writer, nothing published yet.
        unsafe { seg.write(0, &data) };
        seg.publish(data.len() as u64);
        let held = seg.read(0, data.len()).unwrap();
        // Nothing is released beyond what is flushed.
        seg.release_pages(0, data.len() as u64);
        seg.flush_to(seg.published()).unwrap();
        seg.release_pages(0, data.len() as u64);
        assert_eq!(
            held,
            &data[..],
            "a slice held across the release sees the same bytes"
        );
        assert_eq!(seg.read(0, data.len()).unwrap(), &data[..]);
    }

    #[test]
    fn prefetch_takes_any_slice_and_bound() {
        // Every length and start (within a line and across lines), bounds below, at and
        // past the length: a hint never indexes outside the slice.
        let data = vec![7u8; 300];
        for start in [0, 1, 63, 64, 65] {
            for len in [0, 1, 63, 64, 65, 128, 191, 192, 235] {
                for max in [0, 1, 64, 192, 1000] {
                    prefetch(&data[start..start + len], max);
                }
            }
        }
        assert_eq!(data, vec![7u8; 300], "a prefetch changes nothing");
    }
}
