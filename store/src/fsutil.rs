//! Small file system helpers: durable renames and space reservation.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::consume_queue::ConsumeQueue;
use crate::error::{IoContext, Result};

/// Reserves `len` bytes of real blocks for `file` (so writes through a map cannot hit a
/// full disk later and fault), falling back to a sparse `set_len` on file systems that
/// cannot reserve.
pub(crate) fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    match fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            file.set_len(len)
        }
        Err(e) => Err(e.into()),
    }
}

/// Reserves real blocks for the first `len` bytes of `file`, inside its size (a file made
/// sparse that grows its reservation ahead of its writer). Where the file system cannot
/// reserve, the file stays sparse there, as [`preallocate`] leaves it.
pub(crate) fn reserve_blocks(file: &File, len: u64) -> std::io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    match fallocate(file, FallocateFlags::KEEP_SIZE, 0, len) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes the entries of `dir` (creations, renames, deletions) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync folder", dir)
}

/// Creates `dir` and any missing parents, making each new entry durable in its parent
/// (a folder created but not synced can vanish in a machine crash, with what it held).
pub(crate) fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e).ctx("create folder", dir),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Replaces `path` with `bytes` atomically: write a temporary file, fsync it, rename it
/// over `path`, fsync the folder. A crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir_durable(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    {
        let mut f = File::create(tmp).ctx("create", tmp)?;
        f.write_all(bytes).ctx("write", tmp)?;
        f.sync_all().ctx("sync", tmp)?;
    }
    fs::rename(tmp, path).ctx("rename into place", path)?;
    sync_dir(dir)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One open folder per file system that holds consume queues, through which each such
/// file system is synced whole with one call (`syncfs`): a checkpoint that syncs
/// thousands of queues one by one costs a write, a device cache flush and their waits per
/// queue, which on a virtual disk means a trip to the hypervisor each; one sync of the
/// file system submits their pages together and flushes the cache once.
///
/// Invariant: a file system's folder is opened before any queue on it is written, and
/// kept open: the kernel reports to `syncfs` every write-back error on the file system
/// since the handle was opened or last reported one, so none is missed.
pub(crate) struct FileSystems {
    /// Whether `syncfs` reports write-back errors here (Linux 5.8 on); where it does not,
    /// no handle is kept and every queue syncs its own files.
    reports_errors: bool,
    /// By device number: the open folder and its path.
    handles: parking_lot::Mutex<std::collections::HashMap<u64, (File, PathBuf)>>,
    /// File systems synced so far.
    #[cfg(test)]
    syncs: std::sync::atomic::AtomicU64,
}

impl Default for FileSystems {
    fn default() -> Self {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self {
            reports_errors: syncfs_reports_errors(&release),
            handles: Default::default(),
            #[cfg(test)]
            syncs: Default::default(),
        }
    }
}

/// Whether a kernel of `release` (`uname -r`) reports write-back errors to `syncfs`:
/// Linux 5.8 and later.
fn syncfs_reports_errors(release: &str) -> bool {
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (next(), next()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 8),
        _ => false,
    }
}

impl FileSystems {
    /// Keeps a handle on the file system of `queue` unless one is kept: called when a
    /// queue is opened or made, before anything is written to it.
    pub(crate) fn track(&self, queue: &ConsumeQueue) -> Result<()> {
        if !self.reports_errors {
            return Ok(());
        }
        let mut handles = self.handles.lock();
        if let std::collections::hash_map::Entry::Vacant(slot) = handles.entry(queue.device()) {
            let dir = queue.dir();
            slot.insert((File::open(dir).ctx("open folder", dir)?, dir.to_path_buf()));
        }
        Ok(())
    }

    /// Syncs each of `devices` that has a handle, whole (data, metadata, the device's
    /// cache); returns those synced. The others are the caller's to sync file by file.
    pub(crate) fn sync(
        &self,
        devices: &std::collections::BTreeSet<u64>,
    ) -> Result<std::collections::BTreeSet<u64>> {
        // Duplicates share the handle's report of errors; the lock is not held through
        // the syncs, which take a while, so a queue being made need not wait for them.
        let mut handles = Vec::new();
        for device in devices {
            if let Some((file, dir)) = self.handles.lock().get(device) {
                let file = file.try_clone().ctx("duplicate folder handle", dir)?;
                handles.push((*device, file, dir.clone()));
            }
        }
        let mut synced = std::collections::BTreeSet::new();
        for (device, file, dir) in handles {
            rustix::fs::syncfs(&file)
                .map_err(std::io::Error::from)
                .ctx("sync the file system of", &dir)?;
            synced.insert(device);
            #[cfg(test)]
            self.syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(synced)
    }

    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops every handle, as if no queue's file system could be opened.
    #[cfg(test)]
    pub(crate) fn forget_all(&self) {
        self.handles.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn syncfs_reports_errors_from_linux_5_8_on() {
        use super::syncfs_reports_errors as reports;
        assert!(reports("6.18.44-fc\n"));
        assert!(reports("5.8.0"));
        assert!(reports("5.10.0-28-amd64"));
        assert!(!reports("5.7.19"));
        assert!(!reports("4.19.0-26-amd64"));
        assert!(!reports(""));
        assert!(!reports("weird"));
    }
}
