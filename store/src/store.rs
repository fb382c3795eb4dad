//! `MessageStore`: the commit log, its consume queues and key index, recovery, flushing,
//! retention and consumer offsets, behind one handle.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;
use parking_lot::{Mutex, RwLock};
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointFile;
use crate::commitlog::CommitLog;
use crate::config::StoreConfig;
use crate::consume_queue::ConsumeQueue;
use crate::disk::{DiskGuard, DiskUsage};
use crate::error::{IoContext, Result, StoreError};
use crate::flush::{GroupCommit, Shutdown};
use crate::fsutil::{self, FileSystems};
use crate::health::Health;
use crate::index::KeyIndex;
use crate::offsets::ConsumerOffsets;
use crate::recovery::RecoveryReport;
use crate::retention::RetentionReport;

const LOCK_FILE: &str = "lock";
/// Exists while a store is open; found at open, it means the last stop was not clean.
const RUNNING_MARKER: &str = "running";
const CHECKPOINT_FILE: &str = "checkpoint";
const COMMIT_LOG_DIR: &str = "commitlog";
pub(crate) const CONSUME_QUEUE_DIR: &str = "consumequeue";
const INDEX_DIR: &str = "index";
const OFFSETS_FILE: &str = "config/consumer_offsets.json";
/// Where recovery moves commit log segments it cannot explain (never deleted).
pub(crate) const QUARANTINE_DIR: &str = "quarantine";
/// The newest commit log bytes kept mapped (what consumers usually read); older pages are
/// unmapped at each checkpoint so resident memory does not grow with the backlog.
pub(crate) const HOT_TAIL: u64 = 64 << 20;

/// Every consume queue, by topic and queue id; looked up on every append and read.
pub(crate) type QueueTable =
    HashMap<String, HashMap<u32, Arc<ConsumeQueue>, RandomState>, RandomState>;

pub(crate) type ArrivalListener = Arc<dyn Fn(&str, u32, u64) + Send + Sync>;
pub(crate) type SyncListener = Arc<dyn Fn(Duration) + Send + Sync>;

pub(crate) struct Inner {
    pub(crate) config: StoreConfig,
    pub(crate) commit_log: CommitLog,
    pub(crate) queues: RwLock<QueueTable>,
    /// The file systems the queues are on, each synced whole by a checkpoint that syncs
    /// many queues.
    pub(crate) file_systems: FileSystems,
    pub(crate) index: KeyIndex,
    pub(crate) offsets: ConsumerOffsets,
    pub(crate) checkpoint: Mutex<CheckpointFile>,
    pub(crate) group_commit: GroupCommit,
    pub(crate) shutdown: Shutdown,
    pub(crate) arrival: RwLock<Option<ArrivalListener>>,
    /// End of the last record whose queue entry and keys are written. Trails the commit
    /// log's published end by at most the record being dispatched; the checkpoint uses it.
    pub(crate) dispatched: AtomicU64,
    /// The `logic_flushed` of the last thorough checkpoint (see `services.rs`).
    pub(crate) logic_flushed: AtomicU64,
    pub(crate) closed: AtomicBool,
    pub(crate) recovery: RecoveryReport,
    pub(crate) disk: DiskGuard,
    pub(crate) health: Health,
    /// Told how long each successful commit log sync took.
    pub(crate) sync_listener: RwLock<Option<SyncListener>>,
    /// What retention deleted since the store opened.
    pub(crate) retention_counts: crate::retention::RetentionCounters,
    /// One retention pass at a time.
    pub(crate) retention_lock: Mutex<()>,
    /// When retention last warned that it kept unconsumed messages under pressure.
    pub(crate) kept_warned: Mutex<Option<Instant>>,
    /// When a failure to index keys was last logged.
    pub(crate) index_error_logged: Mutex<Option<Instant>>,
    /// The single-owner lock: held until the store is shut down (not until the last
    /// handle goes), so a new store can open the folder as soon as `shutdown` returns.
    pub(crate) lock: Mutex<Option<File>>,
}

/// The message store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct MessageStore {
    pub(crate) inner: Arc<Inner>,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
}

impl MessageStore {
    /// Opens (or creates) the store in `config.data_dir`, recovering from an unclean stop,
    /// and starts its flusher, checkpoint and retention threads.
    pub fn open(config: StoreConfig) -> Result<Self> {
        config.validate()?;
        let root = config.data_dir.clone();
        fs::create_dir_all(&root).ctx("create data folder", &root)?;
        let lock = lock_data_dir(&root)?;

        let marker = root.join(RUNNING_MARKER);
        let clean_shutdown = !marker.exists();
        File::create(&marker).ctx("create marker", &marker)?;
        fsutil::sync_dir(&root)?;

        let (checkpoint_file, checkpoint) = CheckpointFile::open(&root.join(CHECKPOINT_FILE))?;
        fsutil::create_dir_durable(&root.join(CONSUME_QUEUE_DIR))?;
        fsutil::sync_dir(&root)?;
        let commit_log =
            CommitLog::open(&root.join(COMMIT_LOG_DIR), config.commit_log_segment_size)?;
        let log_min = commit_log.min_offset();
        let queues = open_queues(&root.join(CONSUME_QUEUE_DIR), &config, log_min)?;
        let file_systems = FileSystems::default();
        for q in queues.values().flat_map(|per_topic| per_topic.values()) {
            file_systems.track(q)?;
        }
        let index = KeyIndex::open(
            &root.join(INDEX_DIR),
            config.index_slots,
            config.index_entries,
        )?;
        let offsets = ConsumerOffsets::open(&root.join(OFFSETS_FILE))?;

        let inner = Inner {
            commit_log,
            queues: RwLock::new(queues),
            file_systems,
            index,
            offsets,
            checkpoint: Mutex::new(checkpoint_file),
            group_commit: GroupCommit::default(),
            shutdown: Shutdown::default(),
            arrival: RwLock::new(None),
            dispatched: AtomicU64::new(0),
            logic_flushed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            recovery: RecoveryReport::empty(clean_shutdown),
            disk: DiskGuard::new(&root, config.disk_quota_bytes, config.disk_full_ratio),
            health: Health::default(),
            sync_listener: RwLock::new(None),
            retention_counts: Default::default(),
            retention_lock: Mutex::new(()),
            kept_warned: Mutex::new(None),
            index_error_logged: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
            config,
        };
        let mut inner = inner;
        inner.recovery = inner.recover(checkpoint, clean_shutdown)?;
        // Appends start refused if the disk is already full.
        inner.check_disk()?;
        let store = Self {
            inner: Arc::new(inner),
            threads: Mutex::new(Vec::new()),
        };
        store.start_threads()?;
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    pub fn commit_log_min_offset(&self) -> u64 {
        self.inner.commit_log.min_offset()
    }
    pub fn commit_log_max_offset(&self) -> u64 {
        self.inner.commit_log.committed()
    }
    /// How many times the commit log was synced since open (each sync may cover many
    /// appends: group commit).
    pub fn commit_log_sync_count(&self) -> u64 {
        self.inner.commit_log.sync_count()
    }
    /// Commit log bytes known to be on disk.
    pub fn commit_log_flushed_offset(&self) -> u64 {
        self.inner.commit_log.flushed()
    }

    /// Every (topic, queue ids) with a consume queue.
    pub fn queues(&self) -> Vec<(String, Vec<u32>)> {
        let q = self.inner.queues.read();
        let mut out: Vec<_> = q
            .iter()
            .map(|(t, qs)| {
                let mut ids: Vec<u32> = qs.keys().copied().collect();
                ids.sort_unstable();
                (t.clone(), ids)
            })
            .collect();
        out.sort();
        out
    }

    /// Deletes a topic's consume queues (its records leave the log with retention).
    ///
    /// Under the commit log's writer lock and the queue table's, so no append dispatches
    /// into the queues, and none makes a queue, while they and their folder go: an append
    /// that looked a queue up before finds it destroyed and takes a new one, made after
    /// the folder is gone (before, a send racing the delete could be acknowledged into a
    /// file the delete then removed, or make the delete fail "Directory not empty").
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let _no_appends = self.inner.commit_log.lock_writer();
        let mut queues = self.inner.queues.write();
        if let Some(qs) = queues.remove(topic) {
            for q in qs.values() {
                q.destroy()?;
            }
        }
        let dir = self
            .inner
            .config
            .data_dir
            .join(CONSUME_QUEUE_DIR)
            .join(topic);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("delete topic folder", &dir),
        }
    }

    pub fn consumer_offsets(&self) -> &ConsumerOffsets {
        &self.inner.offsets
    }

    /// Writes the consumer offsets now if they changed (after syncing the commit log, as
    /// the periodic persist does): for changes an operator made, which a crash must not undo.
    pub fn persist_offsets(&self) -> Result<()> {
        self.inner.persist_offsets()
    }

    /// Called after each append with (topic, queue id, new max offset), once per run of
    /// messages to one queue (a batch: once): how long polling learns that a queue has
    /// something new.
    pub fn set_arrival_listener(&self, f: impl Fn(&str, u32, u64) + Send + Sync + 'static) {
        *self.inner.arrival.write() = Some(Arc::new(f));
    }

    /// Called after each successful commit log sync (group commit, periodic flush,
    /// checkpoint) with how long it took.
    pub fn set_sync_listener(&self, f: impl Fn(Duration) + Send + Sync + 'static) {
        *self.inner.sync_listener.write() = Some(Arc::new(f));
    }

    /// What retention deleted since the store opened.
    pub fn retention_totals(&self) -> crate::retention::RetentionTotals {
        self.inner.retention_counts.totals()
    }

    /// Syncs the commit log, consume queues and index and writes the checkpoint now.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint_now()
    }

    /// Applies retention as of `now_ms`: deletes sealed segments older than the retention
    /// age, and the oldest one if the disk is fuller than allowed (as the pressure policy
    /// allows). Also measures the disk, stopping or resuming appends.
    pub fn run_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        self.inner.run_retention(now_ms, true)
    }

    /// Measures the disk now, stopping appends above `disk_full_ratio` and resuming them
    /// below (the store does this every `disk_check_interval_ms` by itself).
    pub fn check_disk(&self) -> Result<DiskUsage> {
        self.inner.check_disk()
    }

    /// The last disk measurement.
    pub fn disk_usage(&self) -> Option<DiskUsage> {
        self.inner.disk.last()
    }

    /// Why appends are refused now (a full disk, or a failed sync), if they are.
    pub fn write_refusal(&self) -> Option<StoreError> {
        self.inner
            .health
            .check_writable()
            .and_then(|()| self.inner.disk.check_append())
            .err()
    }

    /// The failed sync that stopped writes for good (until the store is reopened), if any.
    pub fn sync_failure(&self) -> Option<String> {
        self.inner.health.failure().map(str::to_owned)
    }

    /// Test hook: every sync from now on fails with `cause`, as a disk error would.
    #[doc(hidden)]
    pub fn inject_sync_failure(&self, cause: &str) {
        self.inner.health.inject_failure(cause);
    }

    /// Test hook: every sync from now on takes `delay` longer, as a slow disk would.
    #[doc(hidden)]
    pub fn inject_sync_delay(&self, delay: Duration) {
        self.inner.health.inject_delay(delay);
    }

    /// Flushes everything, writes the checkpoint, and marks a clean stop. Also done on
    /// drop; call it to see errors.
    pub fn shutdown(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.shutdown.trigger();
        self.inner.group_commit.stop();
        for t in self.threads.lock().drain(..) {
            if t.join().is_err() {
                error!("a store thread panicked");
            }
        }
        if let Err(e) = self.inner.health.check_writable() {
            // Not a clean stop: the marker stays, so the next open recovers from what is
            // really on disk.
            self.inner.lock.lock().take();
            error!(error = %e, "store closed after a failed sync; the next open recovers");
            return Err(e);
        }
        self.inner.flush_log()?;
        self.inner.checkpoint_now()?;
        self.inner.persist_offsets()?;
        let marker = self.inner.config.data_dir.join(RUNNING_MARKER);
        fs::remove_file(&marker).ctx("remove marker", &marker)?;
        fsutil::sync_dir(&self.inner.config.data_dir)?;
        // Appends are refused from here on: the folder is free for another store.
        self.inner.lock.lock().take();
        info!(data_dir = %self.inner.config.data_dir.display(), "store closed cleanly");
        Ok(())
    }
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            error!(error = %e, "store shutdown failed; the next open will recover");
        }
    }
}

fn lock_data_dir(root: &Path) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx("open lock file", &path)?;
    // A lock held by another store stays held; one held for an instant by a child this
    // process is starting (its copy of our descriptors lives from the fork to the exec,
    // which closes it) goes at once: look again for a short while before refusing.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: root.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).ctx("lock data folder", &path),
        }
    }
}

/// How long [`lock_data_dir`] looks again at a held lock before refusing.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

fn open_queues(dir: &Path, config: &StoreConfig, log_min: u64) -> Result<QueueTable> {
    let mut out = QueueTable::default();
    if !dir.exists() {
        return Ok(out);
    }
    for topic_entry in fs::read_dir(dir).ctx("list folder", dir)? {
        let topic_entry = topic_entry.ctx("list folder", dir)?;
        let topic_path = topic_entry.path();
        let Some(topic) = topic_entry.file_name().to_str().map(str::to_owned) else {
            warn!(path = %topic_path.display(), "skipping a consume queue folder whose name is not UTF-8");
            continue;
        };
        for q_entry in fs::read_dir(&topic_path).ctx("list folder", &topic_path)? {
            let q_entry = q_entry.ctx("list folder", &topic_path)?;
            let Some(queue_id) = q_entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                return Err(StoreError::Corrupt {
                    what: "consume queue folder",
                    path: q_entry.path(),
                    detail: "expected a queue id".into(),
                });
            };
            let q = ConsumeQueue::open(
                &q_entry.path(),
                config.consume_queue_segment_entries,
                log_min,
            )?;
            out.entry(topic.clone())
                .or_default()
                .insert(queue_id, Arc::new(q));
        }
    }
    Ok(out)
}
