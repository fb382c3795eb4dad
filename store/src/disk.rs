//! Disk space: how full the data folder's file system is, measured as `df` measures it,
//! and the guard that refuses appends before the disk is really full.
//!
//! Invariant: while the guard says full, no append starts. It is set by the disk check
//! (every `disk_check_interval_ms`), by a commit log segment that would take usage past
//! `disk_full_ratio`, and by a file the file system refused for want of space; it is
//! cleared only by a measurement below the limit.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tracing::{info, warn};

use crate::error::{IoContext, Result, StoreError};

/// One `statvfs` reading of a file system, in its fragment-size blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsReading {
    /// Size of a block, bytes (`f_frsize`).
    pub block_size: u64,
    /// Blocks in all (`f_blocks`).
    pub blocks: u64,
    /// Free blocks, counting those reserved for the superuser (`f_bfree`).
    pub free: u64,
    /// Free blocks an unprivileged process may use (`f_bavail`).
    pub available: u64,
}

impl FsReading {
    /// Reads the file system holding `dir`.
    pub fn of(dir: &Path) -> Result<Self> {
        let st = rustix::fs::statvfs(dir)
            .map_err(std::io::Error::from)
            .ctx("stat file system", dir)?;
        Ok(Self {
            block_size: st.f_frsize.max(1),
            blocks: st.f_blocks,
            free: st.f_bfree,
            available: st.f_bavail,
        })
    }

    /// Blocks in use: all but the free ones.
    pub fn used_blocks(&self) -> u64 {
        self.blocks.saturating_sub(self.free)
    }

    /// `used / (used + available)`, as `df` computes its Use% (before rounding up): the
    /// blocks reserved for the superuser count neither as used nor as room, so a disk
    /// `df` shows at 36 % is at 0.36 here, not at `1 − available / blocks` (0.77 on the
    /// machine that showed this: 5 % of a large disk is reserved).
    pub fn used_ratio(&self) -> f64 {
        let used = self.used_blocks() as f64;
        let room = used + self.available as f64;
        if room <= 0.0 { 0.0 } else { used / room }
    }
}

/// Where a measurement of used space came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The file system holding the data folder.
    FileSystem,
    /// The store's own files against `disk_quota_bytes`.
    Quota,
}

/// How full the store's disk is: the worse of the file system and the quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskUsage {
    pub used_bytes: u64,
    /// Used plus what may still be used.
    pub capacity_bytes: u64,
    pub ratio: f64,
    pub source: UsageSource,
}

impl DiskUsage {
    /// The ratio after `extra` more bytes are taken.
    pub fn ratio_with(&self, extra: u64) -> f64 {
        if self.capacity_bytes == 0 {
            return 1.0;
        }
        self.used_bytes.saturating_add(extra) as f64 / self.capacity_bytes as f64
    }
}

impl fmt::Display for DiskUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.source {
            UsageSource::FileSystem => "disk",
            UsageSource::Quota => "store quota",
        };
        write!(
            f,
            "{what} {:.1} % used ({} of {})",
            self.ratio * 100.0,
            Bytes(self.used_bytes),
            Bytes(self.capacity_bytes)
        )
    }
}

/// A byte count for people: `1.5 GiB`, `12.0 MiB`, `300 B`.
pub(crate) struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut v = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        write!(f, "{v:.1} {}", UNITS[unit])
    }
}

/// Measures usage and decides whether appends may go on.
pub(crate) struct DiskGuard {
    dir: PathBuf,
    quota: Option<u64>,
    full_ratio: f64,
    full: AtomicBool,
    /// Why appends are refused, while `full`.
    why: Mutex<String>,
    last: Mutex<Option<DiskUsage>>,
    /// The last readings of both the file system and the quota.
    readings: Mutex<Option<(DiskUsage, Option<DiskUsage>)>>,
    /// Bytes of the store's own files at the last measurement (for the quota).
    store_bytes: AtomicU64,
    /// How the file system is read (`FsReading::of`; tests give fixed readings).
    read_fs: fn(&Path) -> Result<FsReading>,
}

impl DiskGuard {
    pub fn new(dir: &Path, quota: Option<u64>, full_ratio: f64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            quota,
            full_ratio,
            full: AtomicBool::new(false),
            why: Mutex::new(String::new()),
            last: Mutex::new(None),
            readings: Mutex::new(None),
            store_bytes: AtomicU64::new(0),
            read_fs: FsReading::of,
        }
    }

    /// Measures now, with the store's files taking `store_bytes`: the worse of the file
    /// system and the quota.
    pub fn measure(&self, store_bytes: u64) -> Result<DiskUsage> {
        let (fs, quota) = self.readings(store_bytes)?;
        let usage = match quota {
            Some(q) if q.ratio > fs.ratio => q,
            _ => fs,
        };
        *self.last.lock() = Some(usage);
        *self.readings.lock() = Some((fs, quota));
        Ok(usage)
    }

    /// The file system's usage and, with a quota, the store's against it.
    fn readings(&self, store_bytes: u64) -> Result<(DiskUsage, Option<DiskUsage>)> {
        self.store_bytes.store(store_bytes, Ordering::Relaxed);
        let fs = (self.read_fs)(&self.dir)?;
        let usage = DiskUsage {
            used_bytes: fs.used_blocks().saturating_mul(fs.block_size),
            capacity_bytes: fs
                .used_blocks()
                .saturating_add(fs.available)
                .saturating_mul(fs.block_size),
            ratio: fs.used_ratio(),
            source: UsageSource::FileSystem,
        };
        let quota = self.quota.map(|quota| DiskUsage {
            used_bytes: store_bytes,
            capacity_bytes: quota,
            ratio: store_bytes as f64 / quota as f64,
            source: UsageSource::Quota,
        });
        Ok((usage, quota))
    }

    /// Decides from the last measurement: appends stop when usage, plus the `headroom` the
    /// next commit log segment will take, passes the limit (of the file system or of the
    /// quota), and resume below it.
    pub fn update(&self, headroom: u64) {
        let Some((fs, quota)) = *self.readings.lock() else {
            return;
        };
        let over = std::iter::once(fs)
            .chain(quota)
            .find(|u| u.ratio_with(headroom) > self.full_ratio);
        if let Some(usage) = over {
            let why = match headroom {
                0 => format!(
                    "{usage}, above the limit of {:.1} %",
                    self.full_ratio * 100.0
                ),
                n => format!(
                    "{usage}; the next commit log segment ({}) would pass the limit of {:.1} %",
                    Bytes(n),
                    self.full_ratio * 100.0
                ),
            };
            self.set_full(why);
        } else if self.full.swap(false, Ordering::AcqRel) {
            info!(usage = %fs, "disk usage below the limit again: accepting sends");
        }
    }

    fn set_full(&self, why: String) {
        *self.why.lock() = why.clone();
        if !self.full.swap(true, Ordering::AcqRel) {
            warn!(reason = %why, "disk full: refusing sends until space is freed; reads continue");
        }
    }

    /// The last measurement, if any.
    pub fn last(&self) -> Option<DiskUsage> {
        *self.last.lock()
    }

    /// Refuses an append while the disk is full.
    pub fn check_append(&self) -> Result<()> {
        if self.full.load(Ordering::Acquire) {
            return Err(StoreError::DiskFull {
                usage: self.why.lock().clone(),
            });
        }
        Ok(())
    }

    /// Whether the store may take `extra` more bytes of disk now (a new segment): measured
    /// at once, refused (and appends stopped) if that would pass the limit.
    pub fn check_growth(&self, extra: u64) -> Result<()> {
        let store_bytes = self.store_bytes.load(Ordering::Relaxed);
        let (fs, quota) = self.readings(store_bytes)?;
        // Either limit refuses: the bytes count against both.
        let over = std::iter::once(fs)
            .chain(quota)
            .find(|u| u.ratio_with(extra) > self.full_ratio);
        if let Some(usage) = over {
            let why = format!(
                "{usage}; {} more would pass the limit of {:.1} %",
                Bytes(extra),
                self.full_ratio * 100.0
            );
            self.set_full(why.clone());
            return Err(StoreError::DiskFull { usage: why });
        }
        self.store_bytes
            .store(store_bytes.saturating_add(extra), Ordering::Relaxed);
        Ok(())
    }

    /// The file system refused a file for want of space: stop appends now.
    pub fn out_of_space(&self, what: &StoreError) -> StoreError {
        let why = format!("the file system refused to grow the store ({what})");
        self.set_full(why.clone());
        StoreError::DiskFull { usage: why }
    }
}

/// Whether `e` is the file system saying it has no room (or the user's quota is spent).
pub(crate) fn is_out_of_space(e: &StoreError) -> bool {
    match e {
        StoreError::Io { error, .. } => matches!(
            error.raw_os_error(),
            Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
                || code == rustix::io::Errno::DQUOT.raw_os_error()
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_ratio_is_what_df_shows_not_one_minus_available_over_blocks() {
        // This machine's data disk, read with statvfs: df showed 36 % used.
        let r = FsReading {
            block_size: 4096,
            blocks: 66_053_021,
            free: 57_660_976,
            available: 15_429_427,
        };
        let ratio = r.used_ratio();
        assert!((0.35..=0.36).contains(&ratio), "{ratio}");
        // df rounds up: 36 %.
        assert_eq!((ratio * 100.0).ceil(), 36.0);
        // The old rule saw 77 % and deleted unconsumed data at its 75 % default.
        let old = 1.0 - r.available as f64 / r.blocks as f64;
        assert!(old > 0.76, "{old}");
    }

    #[test]
    fn an_empty_or_reserved_only_file_system_is_not_full() {
        let empty = FsReading {
            block_size: 4096,
            blocks: 0,
            free: 0,
            available: 0,
        };
        assert_eq!(empty.used_ratio(), 0.0);
        // Everything free is reserved for root: nothing used, nothing available.
        let reserved = FsReading {
            block_size: 4096,
            blocks: 100,
            free: 100,
            available: 0,
        };
        assert_eq!(reserved.used_ratio(), 0.0);
        let full = FsReading {
            block_size: 4096,
            blocks: 100,
            free: 5,
            available: 0,
        };
        assert_eq!(full.used_ratio(), 1.0);
    }

    #[test]
    fn the_guard_refuses_above_the_limit_and_resumes_below() {
        let dir = tempfile::tempdir().unwrap();
        // A quota makes the numbers the test's own, whatever the machine's disk.
        let mut guard = DiskGuard::new(dir.path(), Some(1000), 0.9);
        // An idle disk, whatever the machine's own.
        guard.read_fs = |_| {
            Ok(FsReading {
                block_size: 4096,
                blocks: 1000,
                free: 900,
                available: 850,
            })
        };
        let u = guard.measure(950).unwrap();
        assert_eq!(u.source, UsageSource::Quota);
        guard.update(0);
        let e = guard.check_append().unwrap_err();
        assert!(matches!(e, StoreError::DiskFull { .. }), "{e}");
        assert!(e.to_string().contains("store quota 95.0 % used"), "{e}");
        guard.measure(100).unwrap();
        guard.update(0);
        guard.check_append().unwrap();
        // Growth past the limit is refused and stops appends.
        assert!(guard.check_growth(850).is_err());
        assert!(guard.check_append().is_err());
        // And stays refused while the next segment would not fit.
        guard.measure(100).unwrap();
        guard.update(850);
        assert!(guard.check_append().is_err());
        guard.measure(100).unwrap();
        guard.update(700);
        guard.check_append().unwrap();
        guard.check_growth(700).unwrap();
    }
}
