//! Recovery's scan of the commit log when the store opens.
//!
//! Invariant: recovery never deletes a record that verifies, except on a replica past its
//! durable point. Each record carries its own offset and a CRC, so after a damaged stretch
//! (bit rot, a torn page) the scan looks for the next record by its magic and resumes there
//! if one verifies; the stretch is reported and left as it is. Only what follows the last
//! valid record of the log (a torn tail) is cut: zeroed in its segment. Segments after that
//! one are deleted only if they hold nothing but zeros (an unused spare); any other is moved
//! to the quarantine folder. A replica's log (a slave's) ends at the first damage past its
//! durable point instead: after a machine crash its unsynced pages may have reached the
//! disk in any order, and its master sends what follows again, where a skipped record
//! would stay a hole in the slave's queue and a difference from the master's log.

use std::fs::File;
use std::path::{Path, PathBuf};

use tracing::{error, warn};

use super::CommitLog;
use crate::error::{IoContext, Result, StoreError};
use crate::fsutil;
use crate::segment::{MAX_OFFSET, Segment};
use weir_protocol::record::{self, Probe, RecordView};

/// A stretch of the log that holds no valid record, skipped because a valid record
/// follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// Commit log offset of the first damaged byte.
    pub from: u64,
    /// Offset of the next valid record.
    pub to: u64,
    /// The segment file holding `from`.
    pub segment: PathBuf,
    /// What was wrong at `from`.
    pub reason: &'static str,
}

/// What recovery found.
pub(crate) struct ScanOutcome {
    pub end: u64,
    pub records: u64,
    /// Why the scan stopped where it did ("end of data" for zeros).
    pub stop_reason: &'static str,
    pub damaged: Vec<DamagedRange>,
    /// Segments past the end that held something other than zeros, moved aside.
    pub quarantined: Vec<PathBuf>,
}

impl CommitLog {
    /// Walks records from `from` (a record boundary, or the start of the log when `None`)
    /// to the last valid one, calling `visit` for each and skipping damaged stretches that
    /// a valid record follows, then makes the end of the last one the end of the log.
    ///
    /// Runs before the log is shared.
    ///
    /// `end_at_damage_from`: a replica's durable point; damage at or past it ends the log
    /// instead of being skipped (see the module's invariant).
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
        end_at_damage_from: Option<u64>,
        quarantine: &Path,
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
                damaged: Vec::new(),
                quarantined: Vec::new(),
            });
        };
        let last_end = segs.last().map_or(first.start(), |s| s.end());
        let mut pos = from.unwrap_or(first.start()).clamp(first.start(), last_end);
        let mut records = 0u64;
        let mut damaged = Vec::new();
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
                // A clean stop ended exactly here: zeros follow, nothing to look for.
                Probe::Invalid(why) if clean_end == Some(pos) => break why,
                // A replica's log ends at damage past what was durable: its master sends
                // what follows again (see `StoreConfig::replica`).
                Probe::Invalid(why) if end_at_damage_from.is_some_and(|d| pos >= d) => {
                    warn!(
                        end = pos,
                        reason = why,
                        "this replica's log ends at damage past what it had synced: what follows is dropped, and its master sends it again"
                    );
                    break why;
                }
                Probe::Invalid(why) => match self.next_valid_record(pos)? {
                    Some(next) => {
                        error!(
                            from = pos,
                            to = next,
                            bytes = next - pos,
                            segment = %seg.path().display(),
                            reason = why,
                            "commit log damaged: skipping a stretch with no valid record; the records after it verify and are kept"
                        );
                        damaged.push(DamagedRange {
                            from: pos,
                            to: next,
                            segment: seg.path().to_path_buf(),
                            reason: why,
                        });
                        pos = next;
                    }
                    None => break why,
                },
            }
        };
        // Zero whatever follows the end in its segment, so that no stale record there can
        // ever validate again, and set aside later segments.
        let clean = clean_end == Some(pos);
        let later = match self.files.find(pos) {
            // The end is a segment's start: that whole segment holds no valid record.
            Some(seg) if seg.start() == pos => pos,
            Some(seg) => {
                if !clean {
                    zero_tail(&seg, pos - seg.start())?;
                }
                seg.end()
            }
            None => pos,
        };
        let quarantined = self.set_aside_from(later, quarantine)?;
        self.set_end(pos, clean);
        Ok(ScanOutcome {
            end: pos,
            records,
            stop_reason,
            damaged,
            quarantined,
        })
    }

    /// The offset of the first valid record after `after`, in its segment or a later one.
    fn next_valid_record(&self, after: u64) -> Result<Option<u64>> {
        let magic = record::MESSAGE_MAGIC.to_le_bytes();
        let finder = memchr::memmem::Finder::new(&magic);
        for seg in self.files.all() {
            if seg.end() <= after + 1 {
                continue;
            }
            let from_rel = (after + 1).max(seg.start()) - seg.start();
            // SAFETY: recovery runs before the log is shared; nothing writes meanwhile.
            let bytes = unsafe { seg.read_unpublished(0, seg.len() as usize) };
            for (lo, hi) in data_ranges(seg.path(), from_rel, seg.len())? {
                // The magic sits 4 bytes into a record.
                let search_from = (lo + record::pos::MAGIC as u64) as usize;
                let search_to = (hi as usize).min(bytes.len());
                if search_from >= search_to {
                    continue;
                }
                for hit in finder.find_iter(&bytes[search_from..search_to]) {
                    let rel = search_from + hit - record::pos::MAGIC;
                    if (rel as u64) < from_rel {
                        continue;
                    }
                    let at = seg.start() + rel as u64;
                    if let Probe::Message(_) = record::probe(&bytes[rel..], at) {
                        return Ok(Some(at));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Takes the segments starting at or after `offset` out of the log: those holding only
    /// zeros are deleted, any other is moved into `quarantine` (never deleted: recovery
    /// cannot explain its bytes), the last first, so that a stop part way leaves no gap
    /// (see `SegmentedFile::detach_from`). Returns where the moved ones went.
    fn set_aside_from(&self, offset: u64, quarantine: &Path) -> Result<Vec<PathBuf>> {
        let mut moved = Vec::new();
        let detached = self.files.detach_from(offset);
        for seg in &detached {
            if is_all_zero(seg)? {
                std::fs::remove_file(seg.path()).ctx("delete empty segment", seg.path())?;
                continue;
            }
            fsutil::create_dir_durable(quarantine)?;
            let name = format!(
                "commitlog-{}-{}",
                seg.path()
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                fsutil::now_ms()
            );
            let to = quarantine.join(name);
            std::fs::rename(seg.path(), &to).ctx("move damaged segment aside", seg.path())?;
            fsutil::sync_dir(quarantine)?;
            error!(
                segment = %seg.path().display(),
                moved_to = %to.display(),
                "a commit log segment after the end of the log holds no valid record but is not empty; moved aside, not deleted"
            );
            moved.push(to);
        }
        if !detached.is_empty() {
            fsutil::sync_dir(self.files.dir())?;
        }
        Ok(moved)
    }
}

/// The stretches of `[from, len)` of a file that may hold data: holes (and, on file
/// systems that say so, reserved but never written blocks) read as zeros and are skipped.
/// Where the file system cannot tell, the whole range.
fn data_ranges(path: &Path, from: u64, len: u64) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let file = File::open(path).ctx("open segment", path)?;
    let mut out = Vec::new();
    let mut at = from;
    while at < len {
        let start = match seek(&file, SeekFrom::Data(at)) {
            Ok(p) => p,
            // No data at or after `at`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => {
                out.push((at, len));
                break;
            }
        };
        if start >= len {
            break;
        }
        let end = seek(&file, SeekFrom::Hole(start)).map_or(len, |p| p.min(len));
        if end <= start {
            out.push((start, len));
            break;
        }
        out.push((start, end));
        at = end;
    }
    Ok(out)
}

fn is_all_zero(seg: &Segment) -> Result<bool> {
    // SAFETY: recovery runs before the log is shared; nothing writes meanwhile.
    let bytes = unsafe { seg.read_unpublished(0, seg.len() as usize) };
    for (lo, hi) in data_ranges(seg.path(), 0, seg.len())? {
        if bytes[lo as usize..hi as usize].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
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
