//! The store's background services and the durability steps they run: the flusher
//! (group commit in sync mode, a periodic sync in async mode), the checkpoint (commit log,
//! queues, index, then the checkpoint file and the consumer offsets), the segment
//! allocator, and retention with the disk check.
//!
//! Invariants: every sync goes through `Health::sync`, so a failure stops writes for good.
//! A checkpoint's `logic_flushed` only moves at a thorough checkpoint, which synced every
//! queue: every record below it has its queue entry on disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use crate::checkpoint::Checkpoint;
use crate::config::FlushMode;
use crate::error::{IoContext, Result};
use crate::fsutil::now_ms;
use crate::store::{HOT_TAIL, Inner, MessageStore};

impl MessageStore {
    pub(crate) fn start_threads(&self) -> Result<()> {
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .ctx("start thread", Path::new(name))
        };
        let mut threads = self.threads.lock();
        let inner = Arc::clone(&self.inner);
        threads.push(spawn(
            "weir-flush",
            Box::new(move || match inner.config.flush_mode {
                FlushMode::Sync => inner
                    .group_commit
                    .run(|| inner.flush_log().map_err(|e| e.to_string())),
                FlushMode::Async => {
                    while !inner.shutdown.sleep(inner.config.async_flush_interval()) {
                        // A failure is logged (once) and stops writes: see `health`.
                        let _ = inner.flush_log();
                    }
                }
            }),
        )?);
        let inner = Arc::clone(&self.inner);
        threads.push(spawn(
            "weir-checkpoint",
            Box::new(move || {
                let mut last_thorough = Instant::now();
                while !inner.shutdown.sleep(inner.config.checkpoint_interval()) {
                    if inner.health.failure().is_some() {
                        continue;
                    }
                    let thorough =
                        last_thorough.elapsed() >= inner.config.consume_queue_thorough_interval();
                    if thorough {
                        last_thorough = Instant::now();
                    }
                    if let Err(e) = inner.checkpoint(thorough) {
                        error!(error = %e, "checkpoint failed");
                    }
                    if let Err(e) = inner.persist_offsets() {
                        error!(error = %e, "persisting consumer offsets failed");
                    }
                }
            }),
        )?);
        if self.inner.config.prepare_ahead {
            let inner = Arc::clone(&self.inner);
            threads.push(spawn(
                "weir-alloc",
                Box::new(move || {
                    let mut last_error: Option<Instant> = None;
                    while !inner.shutdown.sleep(std::time::Duration::from_millis(20)) {
                        let grow = |bytes| inner.disk.check_growth(bytes);
                        if let Err(e) = inner.commit_log.prepare_ahead(grow) {
                            // Retried every 20 ms: say so once a minute.
                            if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                                error!(error = %e, "preparing the next commit log segment failed");
                                last_error = Some(Instant::now());
                            }
                        }
                    }
                }),
            )?);
        }
        let inner = Arc::clone(&self.inner);
        threads.push(spawn(
            "weir-retention",
            Box::new(move || {
                // Disk checks (and deletions under pressure) every disk check interval;
                // deletions by age every retention interval.
                let mut last_by_age = Instant::now();
                while !inner.shutdown.sleep(inner.config.disk_check_interval()) {
                    let by_age = last_by_age.elapsed() >= inner.config.retention_check_interval();
                    if by_age {
                        last_by_age = Instant::now();
                    }
                    if let Err(e) = inner.run_retention(now_ms(), by_age) {
                        error!(error = %e, "retention failed");
                    }
                }
            }),
        )?);
        Ok(())
    }
}

/// From this many queues to sync, a thorough checkpoint syncs their file system whole (one
/// call, see `FileSystems`) rather than each queue's files: a broker's thousands of queues
/// (1,024 topics) then cost one device flush, not one each (measured: 0.2–0.7 s of the
/// checkpoint thread's CPU, mostly trips to the hypervisor, against 10–20 ms).
///
/// Only a thorough one (every `consume_queue_thorough_interval_ms`): the file system's sync
/// also writes back the zeros the commit log keeps ahead of its writer (see
/// `CommitLog::prepare_ahead`), and write-protects them, so the writer then takes a fault
/// per page there, under its lock, and the zeros go to the disk (up to 16 MB each time).
/// Done every second (at partial checkpoints too), that took a broker's page faults under
/// single sends over 64 topics from 6 K to 17 K a run (`perf stat`).
///
/// Between thorough checkpoints, from this many queues due their write-back is only
/// started (see [`Inner::checkpoint`]).
const SYNC_FILE_SYSTEM_FROM: usize = 32;

impl Inner {
    /// Syncs the commit log up to what is committed; returns the durable offset. After a
    /// failure, refused for good (see `health`).
    pub(crate) fn flush_log(&self) -> Result<u64> {
        let started = Instant::now();
        let durable = self
            .health
            .sync("commit log sync", || self.commit_log.flush())?;
        if let Some(f) = self.sync_listener.read().as_ref() {
            f(started.elapsed());
        }
        Ok(durable)
    }

    /// Writes the consumer offsets if they changed, after syncing the commit log: an
    /// offset on disk never counts a copy (a due delayed message, a retry) that is not.
    pub(crate) fn persist_offsets(&self) -> Result<()> {
        self.health.check_writable()?;
        self.offsets.persist_after(|| self.flush_log().map(drop))
    }

    /// Syncs every queue and the index, then records what is durable.
    pub(crate) fn checkpoint_now(&self) -> Result<()> {
        self.checkpoint(true)
    }

    /// Syncs the log, queues and index, then records what is durable. `thorough`: every
    /// queue is synced, and the point recovery rebuilds queues from moves up. Otherwise
    /// that point stays (a queue may hold unsynced entries below it), so nothing there
    /// needs a queue synced. The queues with at least `consume_queue_flush_least_pages`
    /// whole pages not yet written are synced one by one when they are few; from
    /// [`SYNC_FILE_SYSTEM_FROM`] of them on, they only have their write-back started (no
    /// wait, no device flush), which spreads the writes over the interval and leaves the
    /// thorough sync little to write. Synced one by one each second, the queues of 64 busy
    /// topics took a tenth of a core in device flushes (trips to the hypervisor here), and
    /// each sync write-protected the page being written, which the next append faulted
    /// back in. (A few are kept synced: a filtered catch-up read of 8 queues right after
    /// their produce was slower with their write-back left to run beside it.)
    pub(crate) fn checkpoint(&self, thorough: bool) -> Result<()> {
        self.health.check_writable()?;
        // Every record below this has its queue entry and keys in the files synced next.
        let dispatched = self.dispatched.load(Ordering::Acquire);
        let least_pages = if thorough {
            0
        } else {
            u64::from(self.config.consume_queue_flush_least_pages)
        };
        // The log first (a no-op in sync mode under load, as group commit keeps up; it
        // also covers an idle store, whose checkpoint must not stay behind): its pages are
        // synced unmapped (see `CommitLog::flush`), not written back while mapped by the
        // sync of the whole file system below.
        let flushed = self.flush_log()?;
        let queues = self.all_queues();
        // Entries a queue held back (see `ConsumeQueue::put`) go into their pages first:
        // every record below `dispatched` then has its entry in the files synced next.
        for q in &queues {
            q.write_held();
        }
        // Due: at a thorough checkpoint every queue with unsynced entries; otherwise those
        // with enough whole pages not written yet.
        let due: Vec<_> = queues
            .iter()
            .filter(|q| q.pages_to_write() >= least_pages)
            .map(|q| (q, q.unflushed()))
            .filter(|(_, segments)| !segments.is_empty())
            .collect();
        // Between thorough checkpoints, a few queues are synced (cheap, and the thorough sync
        // then has little of theirs to write); many only have their write-back started.
        let write_back_only = !thorough && due.len() >= SYNC_FILE_SYSTEM_FROM;
        self.health.sync("consume queue sync", || {
            let by_file_system = if thorough && due.len() >= SYNC_FILE_SYSTEM_FROM {
                let devices = due.iter().map(|(q, _)| q.device()).collect();
                match self.file_systems.sync(&devices) {
                    Ok(synced) => synced,
                    // A write-back error anywhere on the file system, another program's
                    // file's too: each queue syncs its own files instead, which report
                    // only their own (and fail the store if one of them failed).
                    Err(e) => {
                        warn!(error = %e, "syncing the consume queues' file system failed; syncing each queue on its own");
                        Default::default()
                    }
                }
            } else {
                Default::default()
            };
            for (q, segments) in &due {
                if write_back_only {
                    q.start_writeback()?;
                } else if by_file_system.contains(&q.device()) {
                    for (segment, published) in segments {
                        segment.flushed_by_file_system(*published);
                    }
                } else {
                    q.flush()?;
                }
            }
            Ok(())
        })?;
        // (A write-back started leaves the page being written alone.)
        if !write_back_only {
            for (q, _) in &due {
                q.prefault_after_sync();
            }
        }
        for q in &queues {
            q.release_sealed_pages();
        }
        self.health.sync("key index sync", || self.index.flush())?;
        self.commit_log.release_cold_pages(HOT_TAIL);
        let logic_flushed = if thorough {
            let point = dispatched.min(flushed);
            self.logic_flushed.fetch_max(point, Ordering::AcqRel);
            point
        } else {
            self.logic_flushed.load(Ordering::Acquire).min(flushed)
        };
        let cp = Checkpoint {
            commit_log_flushed: flushed,
            logic_flushed,
            written_at: now_ms(),
        };
        self.health
            .sync("checkpoint write", || self.checkpoint.lock().write(&cp))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use crate::{FlushMode, Message, MessageStore, StoreConfig};

    #[test]
    fn a_partial_checkpoint_writes_filled_queues_back_and_keeps_the_recovery_point() {
        let dir = tempfile::tempdir().unwrap();
        let store = MessageStore::open(StoreConfig {
            async_flush_interval_ms: 3_600_000,
            checkpoint_interval_ms: 3_600_000,
            consume_queue_flush_least_pages: 2,
            ..StoreConfig::new(dir.path())
        })
        .unwrap();
        let at_open = store.inner.logic_flushed.load(Ordering::Acquire);
        // 20-byte entries: 500 fill two whole 4 KiB pages, 300 one.
        let fill = |topic: &str, n| {
            for _ in 0..n {
                store.put(&Message::new(topic, 0, b"x".to_vec())).unwrap();
            }
            store.inner.queue(topic, 0).unwrap()
        };
        let (busy, slow) = (fill("Busy", 500), fill("Slow", 300));
        assert_eq!((busy.pages_to_write(), slow.pages_to_write()), (2, 1));

        // A few filled queues are synced; the others wait.
        store.inner.checkpoint(false).unwrap();
        assert_eq!((busy.pages_to_write(), slow.pages_to_write()), (0, 1));
        assert!(busy.unflushed().is_empty() && !slow.unflushed().is_empty());

        // Many only have their whole pages' write-back started: nothing recorded as synced.
        let many: Vec<_> = (0..super::SYNC_FILE_SYSTEM_FROM)
            .map(|i| fill(&format!("Busy{i}"), 500))
            .collect();
        store.inner.checkpoint(false).unwrap();
        for q in &many {
            assert_eq!(q.pages_to_write(), 0, "a filled queue left unwritten");
            assert!(
                !q.unflushed().is_empty(),
                "a partial checkpoint of many queues recorded one as synced"
            );
        }
        assert_eq!(slow.pages_to_write(), 1);
        assert_eq!(
            store.inner.logic_flushed.load(Ordering::Acquire),
            at_open,
            "a partial checkpoint moved the point recovery rebuilds queues from"
        );

        store.inner.checkpoint(true).unwrap();
        assert_eq!(slow.pages_to_write(), 0);
        assert!(
            std::iter::once(&slow)
                .chain(&many)
                .all(|q| q.unflushed().is_empty())
        );
        assert_eq!(
            store.inner.logic_flushed.load(Ordering::Acquire),
            store.commit_log_max_offset()
        );
    }

    /// Many queues to sync at a thorough checkpoint are synced with their file system, at
    /// once; each records what became durable, and the point recovery rebuilds queues from
    /// moves as when they are synced one by one, which is what happens without a handle on
    /// their file system, and at a partial checkpoint.
    #[test]
    fn many_queues_are_synced_with_their_file_system_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = MessageStore::open(StoreConfig {
            async_flush_interval_ms: 3_600_000,
            checkpoint_interval_ms: 3_600_000,
            ..StoreConfig::new(dir.path())
        })
        .unwrap();
        let topics = super::SYNC_FILE_SYSTEM_FROM + 8;
        let put_one_each = || {
            for i in 0..topics {
                store
                    .put(&Message::new(format!("T{i}"), 0, b"x".to_vec()))
                    .unwrap();
            }
        };
        let systems = &store.inner.file_systems;
        // A partial checkpoint syncs no file system, however many queues are due.
        put_one_each();
        let syncs = systems.syncs();
        store.inner.checkpoint(false).unwrap();
        assert_eq!(systems.syncs(), syncs);
        for round in 0..2 {
            if round == 1 {
                systems.forget_all();
            }
            put_one_each();
            let queues = store.inner.all_queues();
            assert_eq!(queues.len(), topics);
            // Each new entry held back (see `ConsumeQueue::put`): the checkpoint writes it.
            assert!(queues.iter().all(|q| q.held() == 1));
            let syncs = systems.syncs();
            store.inner.checkpoint(true).unwrap();
            assert_eq!(
                systems.syncs(),
                syncs + u64::from(round == 0),
                "round {round}: one sync of the file system, or none without its handle"
            );
            assert!(
                queues
                    .iter()
                    .all(|q| q.held() == 0 && q.unflushed().is_empty()),
                "round {round}: a queue's entries were not all written and synced"
            );
            assert_eq!(
                store.inner.logic_flushed.load(Ordering::Acquire),
                store.commit_log_max_offset()
            );
        }
    }

    #[test]
    fn offsets_reach_the_disk_only_after_the_copies_they_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = MessageStore::open(StoreConfig {
            flush_mode: FlushMode::Async,
            async_flush_interval_ms: 3_600_000,
            checkpoint_interval_ms: 3_600_000,
            commit_log_segment_size: 64 * 1024,
            consume_queue_segment_entries: 64,
            index_slots: 64,
            index_entries: 64,
            disk_full_ratio: 1.0,
            disk_max_used_ratio: 1.0,
            ..StoreConfig::new(dir.path())
        })
        .unwrap();
        // A due delayed message put on its real topic: in the page cache only.
        let copy = store.put(&Message::new("T", 0, b"copy".to_vec())).unwrap();
        let end = copy.commit_log_offset + u64::from(copy.size);
        assert!(store.commit_log_flushed_offset() < end);
        // The scheduler's progress counts it.
        store
            .consumer_offsets()
            .commit("%SCHEDULE%", "%SCHEDULE%", 0, 1);
        store.inner.persist_offsets().unwrap();
        assert!(
            store.commit_log_flushed_offset() >= end,
            "the offset reached the disk before the copy it counts"
        );
        let written =
            std::fs::read_to_string(dir.path().join("config/consumer_offsets.json")).unwrap();
        assert!(written.contains("%SCHEDULE%"));
    }
}
