use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use weir_protocol::record::BLANK_MIN_LEN;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Return once the record is in the page cache; a flusher syncs every
    /// `async_flush_interval_ms`. A crash of the process loses nothing; a crash of the
    /// machine may lose the last interval.
    #[default]
    Async,
    /// Return only once the record is on disk. Concurrent appends share one fsync
    /// (group commit).
    Sync,
}

/// What retention may do when the disk is fuller than `disk_max_used_ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DiskPressurePolicy {
    /// Delete the oldest sealed segment only once every consumer group that reads its
    /// queues has consumed past it (and some group reads each of them). Messages no group
    /// has consumed are kept; if the disk keeps filling, sends are refused at
    /// `disk_full_ratio` instead.
    #[default]
    KeepUnconsumed,
    /// Delete the oldest sealed segment whatever its consumers: the operator prefers
    /// accepting new messages to keeping old, unconsumed ones.
    DeleteOldest,
}

/// Store settings. Every field has a default; the broker's TOML file can set any of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Root folder of everything the store writes.
    pub data_dir: PathBuf,
    /// Size of one commit log segment file, bytes (default 1 GiB).
    pub commit_log_segment_size: u64,
    /// Entries per consume queue segment file (default 300,000 = 6 MB).
    pub consume_queue_segment_entries: u64,
    /// Hash slots per index file (default 1,000,000).
    pub index_slots: u32,
    /// Entries per index file (default 4,000,000; with the slots, a 100 MB file).
    pub index_entries: u32,
    pub flush_mode: FlushMode,
    /// Async mode: how often the flusher syncs the commit log, ms (default 500).
    pub async_flush_interval_ms: u64,
    /// Sync mode: how long an append waits for its fsync before it reports a timeout, ms
    /// (default 5000). The record is stored either way.
    pub sync_flush_timeout_ms: u64,
    /// How often the commit log and the index are synced, consume queues written back and
    /// the checkpoint written, ms (default 1000).
    pub checkpoint_interval_ms: u64,
    /// At a checkpoint between thorough ones, a consume queue is written once at least
    /// this many whole 4 KiB pages of it are not written yet (default 2, RocketMQ's
    /// `flushConsumeQueueLeastPages`): a page is then written once, full. Such queues are
    /// synced one by one when fewer than 32; from 32 on, their write-back is only started
    /// (not waited for, not synced: the thorough checkpoint syncs them). 0: every queue at
    /// every checkpoint.
    pub consume_queue_flush_least_pages: u32,
    /// How often a checkpoint syncs every consume queue whatever it holds, ms (default
    /// 10,000; RocketMQ's `flushConsumeQueueThoroughInterval`). Only such a checkpoint
    /// moves the point crash recovery rebuilds queues from, so recovery after a crash
    /// replays at most about this long of the log.
    pub consume_queue_thorough_interval_ms: u64,
    /// A sealed commit log segment is deleted once the segment after it started more
    /// than this long ago (its newest record is at least that old), hours (default 72).
    pub retention_hours: u64,
    /// When the disk holding the data folder is fuller than this ratio (measured as `df`
    /// does: used / (used + available to unprivileged users)), retention deletes the oldest
    /// sealed segment, one per disk check, whatever its age, as `disk_pressure_policy`
    /// allows (default 0.75).
    pub disk_max_used_ratio: f64,
    /// Whether disk pressure may delete messages no consumer group has consumed (default
    /// `keep-unconsumed`: it may not).
    pub disk_pressure_policy: DiskPressurePolicy,
    /// Above this ratio appends are refused with "disk full" (reads continue), before the
    /// disk is really full; they resume once usage falls below it (default 0.90). A new
    /// commit log segment is not created if it would take usage above it.
    pub disk_full_ratio: f64,
    /// At most this many bytes for the data folder's store files (segments, queues, index),
    /// checked like the disk ratio against `disk_max_used_ratio` and `disk_full_ratio`:
    /// for a broker sharing a disk, or a test (default: none).
    pub disk_quota_bytes: Option<u64>,
    /// How often disk usage is measured (refusing or resuming appends, and deleting under
    /// pressure), ms (default 1,000).
    pub disk_check_interval_ms: u64,
    /// How often retention by age runs, ms (default 10,000).
    pub retention_check_interval_ms: u64,
    /// Create the next commit log segment in a background thread before the writer needs
    /// it (default true), so a roll-over does not stall appends.
    pub prepare_ahead: bool,
    /// Address written into each record as the store host; part of every message id.
    pub store_host: SocketAddr,
    /// The store copies a master's log (a slave's; set by the broker from its role, not
    /// read from the file). Its recovery then ends the log at the first damage past what
    /// was durable, rather than skipping to the records after it: the master sends those
    /// again, and a skipped record would be a hole the master never fills.
    #[serde(skip)]
    pub replica: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("weir-data"),
            commit_log_segment_size: 1 << 30,
            consume_queue_segment_entries: 300_000,
            index_slots: 1_000_000,
            index_entries: 4_000_000,
            flush_mode: FlushMode::Async,
            async_flush_interval_ms: 500,
            sync_flush_timeout_ms: 5_000,
            checkpoint_interval_ms: 1_000,
            consume_queue_flush_least_pages: 2,
            consume_queue_thorough_interval_ms: 10_000,
            retention_hours: 72,
            disk_max_used_ratio: 0.75,
            disk_pressure_policy: DiskPressurePolicy::KeepUnconsumed,
            disk_full_ratio: 0.90,
            disk_quota_bytes: None,
            disk_check_interval_ms: 1_000,
            retention_check_interval_ms: 10_000,
            prepare_ahead: true,
            store_host: SocketAddr::from((Ipv4Addr::LOCALHOST, 10911)),
            replica: false,
        }
    }
}

/// The smallest commit log segment accepted: small enough for tests to roll often.
pub const MIN_COMMIT_LOG_SEGMENT_SIZE: u64 = 4096;

impl StoreConfig {
    /// A configuration rooted at `data_dir`, other fields default.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::Config(m));
        if self.commit_log_segment_size < MIN_COMMIT_LOG_SEGMENT_SIZE {
            return bad(format!(
                "commit_log_segment_size {} is below the minimum {MIN_COMMIT_LOG_SEGMENT_SIZE}",
                self.commit_log_segment_size
            ));
        }
        if self.commit_log_segment_size > (1 << 40) {
            return bad(format!(
                "commit_log_segment_size {} is above the maximum 1 TiB",
                self.commit_log_segment_size
            ));
        }
        if self.consume_queue_segment_entries < 16
            || self.consume_queue_segment_entries > 50_000_000
        {
            return bad(format!(
                "consume_queue_segment_entries {} is outside 16..=50,000,000",
                self.consume_queue_segment_entries
            ));
        }
        if self.index_slots < 16 || self.index_entries < 16 {
            return bad("index_slots and index_entries must each be at least 16".into());
        }
        if 64 + u64::from(self.index_slots) * 4 + u64::from(self.index_entries) * 24 >= (1 << 34) {
            return bad(
                "an index file (64 + index_slots*4 + index_entries*24 bytes) must stay under 16 GiB"
                    .into(),
            );
        }
        if !(self.disk_max_used_ratio > 0.0 && self.disk_max_used_ratio <= 1.0) {
            return bad(format!(
                "disk_max_used_ratio {} must be in (0, 1]",
                self.disk_max_used_ratio
            ));
        }
        if !(self.disk_full_ratio > 0.0 && self.disk_full_ratio <= 1.0) {
            return bad(format!(
                "disk_full_ratio {} must be in (0, 1]",
                self.disk_full_ratio
            ));
        }
        if self.disk_max_used_ratio > self.disk_full_ratio {
            return bad(format!(
                "disk_max_used_ratio {} is above disk_full_ratio {}: retention must start freeing space before sends are refused",
                self.disk_max_used_ratio, self.disk_full_ratio
            ));
        }
        if self.disk_quota_bytes == Some(0) {
            return bad(
                "disk_quota_bytes must be greater than 0 (leave it out for no quota)".into(),
            );
        }
        for (name, v) in [
            ("async_flush_interval_ms", self.async_flush_interval_ms),
            ("sync_flush_timeout_ms", self.sync_flush_timeout_ms),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            (
                "consume_queue_thorough_interval_ms",
                self.consume_queue_thorough_interval_ms,
            ),
            ("disk_check_interval_ms", self.disk_check_interval_ms),
            (
                "retention_check_interval_ms",
                self.retention_check_interval_ms,
            ),
        ] {
            if v == 0 {
                return bad(format!("{name} must be greater than 0"));
            }
        }
        debug_assert!(BLANK_MIN_LEN < MIN_COMMIT_LOG_SEGMENT_SIZE as usize);
        Ok(())
    }

    pub(crate) fn async_flush_interval(&self) -> Duration {
        Duration::from_millis(self.async_flush_interval_ms)
    }
    pub(crate) fn sync_flush_timeout(&self) -> Duration {
        Duration::from_millis(self.sync_flush_timeout_ms)
    }
    pub(crate) fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }
    pub(crate) fn consume_queue_thorough_interval(&self) -> Duration {
        Duration::from_millis(self.consume_queue_thorough_interval_ms)
    }
    pub(crate) fn disk_check_interval(&self) -> Duration {
        Duration::from_millis(self.disk_check_interval_ms)
    }
    pub(crate) fn retention_check_interval(&self) -> Duration {
        Duration::from_millis(self.retention_check_interval_ms)
    }
    pub(crate) fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention_hours.saturating_mul(3_600_000)).unwrap_or(i64::MAX)
    }
}
