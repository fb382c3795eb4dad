//! The key index: find messages by (topic, key) without scanning the log.
//!
//! A set of hash files, each a slot table plus an append-only array of entries chained
//! newest to oldest per slot (RocketMQ's IndexFile idea, our layout: see FORMAT.md). A full
//! file is closed and a new one started; retention deletes files whose every entry points
//! below the commit log's minimum. Hash matches are candidates only: the caller confirms
//! each against the record itself.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use parking_lot::RwLock;

use crate::error::{IoContext, Result, StoreError};
use crate::fsutil;
use crate::segment::segment_name;
use weir_protocol::record::{fnv1a64_parts, u32_at, u64_at};

const MAGIC: u32 = u32::from_le_bytes(*b"WIX1");
const HEADER: usize = 64;
const ENTRY: usize = 24;

mod hdr {
    pub const MAGIC: usize = 0;
    pub const SLOTS: usize = 4;
    pub const CAPACITY: usize = 8;
    pub const COUNT: usize = 12;
    pub const BEGIN_OFFSET: usize = 16;
    pub const END_OFFSET: usize = 24;
    pub const BEGIN_TS: usize = 32;
    pub const END_TS: usize = 40;
}

/// Hash of an index key: FNV-1a 64 of `topic`, a zero byte, `key`.
pub(crate) fn key_hash(topic: &str, key: &str) -> u64 {
    fnv1a64_parts(&[topic.as_bytes(), &[0], key.as_bytes()])
}

struct IndexFile {
    path: PathBuf,
    map: MmapMut,
    slots: u32,
    capacity: u32,
    dirty: bool,
}

#[derive(Clone, Copy)]
struct Entry {
    hash: u64,
    offset: u64,
    /// Entry number + 1 of the previous entry in the chain; 0 ends it.
    prev: u32,
}

impl IndexFile {
    /// A new file at `path`, whole: made under a temporary name and renamed once its
    /// header is durable, so a crash never leaves a file under an index name without one.
    fn create(path: &Path, slots: u32, capacity: u32, begin_offset: u64, ts: i64) -> Result<Self> {
        let len = HEADER as u64 + u64::from(slots) * 4 + u64::from(capacity) * ENTRY as u64;
        let tmp = path.with_extension("tmp");
        // (Left by a crash while a file of this name was being made.)
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create index file", &tmp)?;
        fsutil::preallocate(&file, len).ctx("reserve space for index file", &tmp)?;
        let mut f = Self::map(path, &file, slots, capacity)?;
        let h = &mut f.map[..HEADER];
        h[hdr::MAGIC..hdr::MAGIC + 4].copy_from_slice(&MAGIC.to_le_bytes());
        h[hdr::SLOTS..hdr::SLOTS + 4].copy_from_slice(&slots.to_le_bytes());
        h[hdr::CAPACITY..hdr::CAPACITY + 4].copy_from_slice(&capacity.to_le_bytes());
        h[hdr::BEGIN_OFFSET..hdr::BEGIN_OFFSET + 8].copy_from_slice(&begin_offset.to_le_bytes());
        h[hdr::END_OFFSET..hdr::END_OFFSET + 8].copy_from_slice(&begin_offset.to_le_bytes());
        h[hdr::BEGIN_TS..hdr::BEGIN_TS + 8].copy_from_slice(&ts.to_le_bytes());
        h[hdr::END_TS..hdr::END_TS + 8].copy_from_slice(&ts.to_le_bytes());
        f.map.flush().ctx("sync index file", &tmp)?;
        fs::rename(&tmp, path).ctx("name index file", path)?;
        if let Some(dir) = path.parent() {
            fsutil::sync_dir(dir)?;
        }
        Ok(f)
    }

    /// Whether the file at `path` has no header: shorter than one, or its magic unwritten.
    fn is_unfinished(path: &Path) -> Result<bool> {
        let mut head = [0u8; 4];
        let mut file = std::fs::File::open(path).ctx("open index file", path)?;
        let len = file.metadata().ctx("stat index file", path)?.len();
        if len < HEADER as u64 {
            return Ok(true);
        }
        std::io::Read::read_exact(&mut file, &mut head).ctx("read index file", path)?;
        Ok(head == [0; 4])
    }

    fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .ctx("open index file", path)?;
        let len = file.metadata().ctx("stat index file", path)?.len();
        let corrupt = |detail: String| StoreError::Corrupt {
            what: "index file",
            path: path.to_path_buf(),
            detail,
        };
        if len < HEADER as u64 {
            return Err(corrupt(format!("{len} bytes is shorter than the header")));
        }
        let f = Self::map(path, &file, 0, 0)?;
        let (magic, slots, capacity) = (
            u32_at(&f.map, hdr::MAGIC),
            u32_at(&f.map, hdr::SLOTS),
            u32_at(&f.map, hdr::CAPACITY),
        );
        if magic != MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let expect = HEADER as u64 + u64::from(slots) * 4 + u64::from(capacity) * ENTRY as u64;
        if slots == 0 || expect != len || f.count_raw() > capacity {
            return Err(corrupt(format!(
                "header ({slots} slots, {capacity} entries) disagrees with size {len}"
            )));
        }
        Ok(Self {
            slots,
            capacity,
            ..f
        })
    }

    fn map(path: &Path, file: &std::fs::File, slots: u32, capacity: u32) -> Result<Self> {
        // SAFETY: the data folder is locked by this process (see `lock`), so no other
        // process changes the file under the map; within the process the map is only
        // touched behind the index's lock.
        let map = unsafe { MmapMut::map_mut(file) }.ctx("map index file", path)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            slots,
            capacity,
            dirty: false,
        })
    }

    fn count_raw(&self) -> u32 {
        u32_at(&self.map, hdr::COUNT)
    }
    fn count(&self) -> u32 {
        self.count_raw().min(self.capacity)
    }
    fn begin_offset(&self) -> u64 {
        u64_at(&self.map, hdr::BEGIN_OFFSET)
    }
    fn end_offset(&self) -> u64 {
        u64_at(&self.map, hdr::END_OFFSET)
    }
    fn begin_ts(&self) -> i64 {
        u64_at(&self.map, hdr::BEGIN_TS) as i64
    }
    fn is_full(&self) -> bool {
        self.count() >= self.capacity
    }

    fn slot_at(&self, hash: u64) -> usize {
        HEADER + (hash % u64::from(self.slots)) as usize * 4
    }
    fn entry_at(&self, n: u32) -> usize {
        HEADER + self.slots as usize * 4 + n as usize * ENTRY
    }

    fn entry(&self, n: u32) -> Entry {
        let at = self.entry_at(n);
        Entry {
            hash: u64_at(&self.map, at),
            offset: u64_at(&self.map, at + 8),
            prev: u32_at(&self.map, at + 16),
        }
    }

    fn put(&mut self, hash: u64, offset: u64, ts: i64) {
        let n = self.count();
        debug_assert!(n < self.capacity);
        let slot = self.slot_at(hash);
        let prev = u32_at(&self.map, slot);
        // Saturating: a replayed record's timestamp is whatever it holds.
        let delta =
            (ts.saturating_sub(self.begin_ts()).max(0) / 1000).min(i64::from(u32::MAX)) as u32;
        let at = self.entry_at(n);
        let e = &mut self.map[at..at + ENTRY];
        e[0..8].copy_from_slice(&hash.to_le_bytes());
        e[8..16].copy_from_slice(&offset.to_le_bytes());
        e[16..20].copy_from_slice(&prev.to_le_bytes());
        e[20..24].copy_from_slice(&delta.to_le_bytes());
        self.map[slot..slot + 4].copy_from_slice(&(n + 1).to_le_bytes());
        self.map[hdr::COUNT..hdr::COUNT + 4].copy_from_slice(&(n + 1).to_le_bytes());
        self.map[hdr::END_OFFSET..hdr::END_OFFSET + 8].copy_from_slice(&offset.to_le_bytes());
        self.map[hdr::END_TS..hdr::END_TS + 8].copy_from_slice(&ts.to_le_bytes());
        self.dirty = true;
    }

    /// Offsets of entries with `hash`, newest first, up to `max`.
    fn lookup(&self, hash: u64, max: usize, out: &mut Vec<u64>) {
        let count = self.count();
        let mut next = u32_at(&self.map, self.slot_at(hash));
        // Entry numbers strictly decrease along a chain; anything else is damage, and
        // stopping there keeps a damaged file from looping.
        let mut bound = count;
        while next != 0 && next <= bound && out.len() < max {
            let e = self.entry(next - 1);
            if e.hash == hash {
                out.push(e.offset);
            }
            bound = next - 1;
            next = e.prev;
        }
    }

    /// Drops entries pointing at or beyond `offset`, newest first, restoring the slot
    /// heads they replaced.
    fn truncate_from(&mut self, offset: u64) {
        let mut n = self.count();
        while n > 0 {
            let e = self.entry(n - 1);
            if e.offset < offset {
                break;
            }
            let slot = self.slot_at(e.hash);
            if u32_at(&self.map, slot) == n {
                self.map[slot..slot + 4].copy_from_slice(&e.prev.to_le_bytes());
            }
            let at = self.entry_at(n - 1);
            self.map[at..at + ENTRY].fill(0);
            n -= 1;
            self.dirty = true;
        }
        self.map[hdr::COUNT..hdr::COUNT + 4].copy_from_slice(&n.to_le_bytes());
        let end = if n == 0 {
            self.begin_offset()
        } else {
            self.entry(n - 1).offset
        };
        self.map[hdr::END_OFFSET..hdr::END_OFFSET + 8].copy_from_slice(&end.to_le_bytes());
    }

    /// Syncs the file, dropping this process's mapping of it first: written back while
    /// mapped writable, each page (the slots keys land in are spread over the whole table)
    /// would be write-protected with a TLB flush of its own, an interrupt to every core the
    /// broker runs on; dropped first, the file costs one. The page cache keeps the data
    /// (dirty until the sync), and puts and lookups map the pages again.
    fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.unmap();
            self.map.flush().ctx("sync index file", &self.path)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Drops this process's page table entries for the file. Advisory.
    fn unmap(&mut self) {
        // SAFETY: a shared mapping of a regular file, and `&mut self` means no slice of it
        // is borrowed. MADV_DONTNEED only drops page table entries, moving a dirty one's
        // state to the page cache (which a sync then writes out): the next access maps the
        // same file bytes.
        let r = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, self.map.len())
        };
        if let Err(e) = r {
            tracing::debug!(file = %self.path.display(), error = %e, "madvise(DONTNEED) failed");
        }
    }
}

pub(crate) struct KeyIndex {
    dir: PathBuf,
    slots: u32,
    capacity: u32,
    /// Oldest first; the last one takes new entries.
    files: RwLock<Vec<IndexFile>>,
}

impl KeyIndex {
    pub fn open(dir: &Path, slots: u32, capacity: u32) -> Result<Self> {
        fsutil::create_dir_durable(dir)?;
        let mut named = Vec::new();
        for entry in fs::read_dir(dir).ctx("list folder", dir)? {
            let entry = entry.ctx("list folder", dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A file whose making a crash cut short: never an index file.
                let path = entry.path();
                fs::remove_file(&path).ctx("remove unfinished index file", &path)?;
                continue;
            }
            match name.parse::<u64>() {
                Ok(start) if name.len() == 20 => named.push((start, entry.path())),
                _ => {
                    return Err(StoreError::Corrupt {
                        what: "index folder",
                        path: entry.path(),
                        detail: "unexpected file (index files are named by a 20-digit offset)"
                            .into(),
                    });
                }
            }
        }
        named.sort_unstable_by_key(|(start, _)| *start);
        // The newest file without a header was being made when a crash came (by a version
        // that made it under its own name): nothing was put in it; recovery indexes again
        // what follows the checkpoint.
        if let Some((_, path)) = named.last()
            && IndexFile::is_unfinished(path)?
        {
            tracing::warn!(path = %path.display(), "index file without a header (its making was cut short by a crash); removed");
            fs::remove_file(path).ctx("remove unfinished index file", path)?;
            named.pop();
        }
        let mut files = Vec::with_capacity(named.len());
        for (_, path) in named {
            files.push(IndexFile::open(&path)?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            slots,
            capacity,
            files: RwLock::new(files),
        })
    }

    /// Indexes `keys` of the record at `offset`.
    pub fn put<'k>(
        &self,
        topic: &str,
        keys: impl Iterator<Item = &'k str>,
        offset: u64,
        ts: i64,
    ) -> Result<()> {
        let mut keys = keys.peekable();
        if keys.peek().is_none() {
            return Ok(());
        }
        let mut files = self.files.write();
        for key in keys {
            if files.last().is_none_or(IndexFile::is_full) {
                if files.last().is_some_and(|f| f.begin_offset() == offset) {
                    // One record with more keys than a file holds: the rest stay unindexed
                    // rather than open a second file under the same name.
                    tracing::warn!(
                        offset,
                        "record has more keys than an index file holds; extra keys not indexed"
                    );
                    break;
                }
                let path = self.dir.join(segment_name(offset));
                files.push(IndexFile::create(
                    &path,
                    self.slots,
                    self.capacity,
                    offset,
                    ts,
                )?);
            }
            if let Some(f) = files.last_mut() {
                f.put(key_hash(topic, key), offset, ts);
            }
        }
        Ok(())
    }

    /// Bytes of disk the index files hold.
    pub fn allocated_bytes(&self) -> u64 {
        self.files
            .read()
            .iter()
            .map(|f| f.map.len() as u64)
            .fold(0, u64::saturating_add)
    }

    /// Candidate commit log offsets for (topic, key), newest first, at most `max`.
    pub fn lookup(&self, topic: &str, key: &str, max: usize) -> Vec<u64> {
        let hash = key_hash(topic, key);
        let mut out = Vec::new();
        for f in self.files.read().iter().rev() {
            if out.len() >= max {
                break;
            }
            f.lookup(hash, max, &mut out);
        }
        // Replayed entries may repeat an offset.
        let mut seen = std::collections::HashSet::new();
        out.retain(|o| seen.insert(*o));
        out
    }

    /// Recovery: forget entries at or beyond `offset`.
    pub fn truncate_from(&self, offset: u64) -> Result<()> {
        let mut files = self.files.write();
        while let Some(last) = files.last_mut() {
            if last.begin_offset() >= offset {
                let path = last.path.clone();
                files.pop();
                fs::remove_file(&path).ctx("delete index file", &path)?;
                continue;
            }
            if last.end_offset() >= offset {
                last.truncate_from(offset);
                last.flush()?;
            }
            break;
        }
        Ok(())
    }

    /// Retention: delete files whose newest entry is below `commit_log_min`.
    pub fn trim_below(&self, commit_log_min: u64) -> Result<()> {
        let mut files = self.files.write();
        while files.len() > 1 && files[0].end_offset() < commit_log_min {
            let f = files.remove(0);
            fs::remove_file(&f.path).ctx("delete index file", &f.path)?;
        }
        Ok(())
    }

    /// Syncs every file, then unmaps the pages of the full ones (they only take lookups,
    /// which map again what they touch).
    pub fn flush(&self) -> Result<()> {
        let mut files = self.files.write();
        for f in files.iter_mut() {
            f.flush()?;
        }
        if let Some((_, full)) = files.split_last_mut() {
            for f in full {
                f.unmap();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::minor_faults;

    /// A sync drops the file's mapping first (so that writing it back costs no TLB flush
    /// per page); every key is found again after it, and puts go on.
    /// What a crash while an index file was being made leaves: a temporary file, or (by
    /// earlier versions) the newest file without its header. Opening drops either and
    /// keeps every key of the files before; a headerless file that is not the newest is
    /// still refused as damage.
    #[test]
    fn a_file_whose_making_a_crash_cut_short_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let index = KeyIndex::open(dir.path(), 16, 4).unwrap();
        for i in 0..6u64 {
            let key = format!("k{i}");
            index
                .put("T", std::iter::once(key.as_str()), 100 + i, 1)
                .unwrap();
        }
        index.flush().unwrap();
        drop(index);
        let tmp = dir.path().join(format!("{}.tmp", segment_name(200)));
        std::fs::write(&tmp, b"").unwrap();
        let headerless = dir.path().join(segment_name(300));
        std::fs::write(&headerless, b"").unwrap();
        let index = KeyIndex::open(dir.path(), 16, 4).unwrap();
        assert!(!tmp.exists() && !headerless.exists());
        assert_eq!(index.lookup("T", "k1", 10), vec![101]);
        assert_eq!(index.lookup("T", "k5", 10), vec![105]);
        // New keys go on.
        index.put("T", std::iter::once("k6"), 300, 1).unwrap();
        assert_eq!(index.lookup("T", "k6", 10), vec![300]);
        drop(index);
        // Not the newest: damage.
        std::fs::write(dir.path().join(segment_name(102)), vec![0u8; 10]).unwrap();
        let damaged = KeyIndex::open(dir.path(), 16, 4).map(|_| ());
        assert!(
            matches!(damaged, Err(StoreError::Corrupt { .. })),
            "{damaged:?}"
        );
    }

    #[test]
    fn a_sync_drops_the_mapping_and_keeps_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let index = KeyIndex::open(dir.path(), 1_000, 10_000).unwrap();
        let keys: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            index
                .put("T", std::iter::once(key.as_str()), 100 + i as u64, 1)
                .unwrap();
        }
        // (A lookup's result vector comes from the heap; one unmeasured lookup first, so
        // that the measured ones reuse its memory rather than touch a fresh page.)
        index.lookup("T", &keys[7], 10);
        let lookup = |key: &str| {
            let before = minor_faults();
            let found = index.lookup("T", key, 10);
            (found, minor_faults() - before)
        };
        assert_eq!(lookup(&keys[7]), (vec![107], 0), "found, its pages mapped");
        index.flush().unwrap();
        let (found, faults) = lookup(&keys[7]);
        assert_eq!(found, vec![107]);
        assert!(faults > 0, "the mapping was dropped before the sync");
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(index.lookup("T", key, 10), vec![100 + i as u64]);
        }
        index.put("T", std::iter::once("later"), 5_000, 2).unwrap();
        assert_eq!(index.lookup("T", "later", 10), vec![5_000]);
    }
}
