//! Retention: whole sealed commit log segments are deleted, oldest first, when they are
//! older than `retention_hours` or while the disk is fuller than `disk_max_used_ratio`;
//! and the disk check that refuses appends while the disk is full.
//!
//! Invariants: the segment being written is never deleted. Under disk pressure, with the
//! default policy (`keep-unconsumed`), a segment is deleted only when every queue with
//! entries in it has been consumed past them by every group that committed offsets on
//! that queue, and by at least one. Every deletion is logged at WARN with its reason and
//! the queue offsets it dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::DiskPressurePolicy;
use crate::consume_queue::ConsumeQueue;
use crate::disk::DiskUsage;
use crate::error::Result;
use crate::store::Inner;

/// Why a segment was deleted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeletionReason {
    /// The segment stopped growing this long ago, beyond `retention_hours`.
    Age { age_ms: i64 },
    /// The disk was this full, above `disk_max_used_ratio`.
    DiskPressure { used_ratio: f64 },
}

/// Entries `[from, to)` of a queue that a deletion removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedEntries {
    pub topic: String,
    pub queue_id: u32,
    pub from: u64,
    pub to: u64,
}

/// One deleted commit log segment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletedSegment {
    /// Commit log range it held.
    pub start: u64,
    pub end: u64,
    pub reason: DeletionReason,
    pub dropped: Vec<DroppedEntries>,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub commit_log_min_offset: u64,
    pub deleted: Vec<DeletedSegment>,
    /// Under pressure, the oldest segment was kept because it holds messages not yet
    /// consumed (with the default policy): which queue, and how far its groups are.
    pub kept_unconsumed: Option<String>,
    /// The disk as measured by this pass.
    pub disk: Option<DiskUsage>,
}

/// What retention deleted since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionTotals {
    /// Segments deleted for their age, and for disk pressure.
    pub segments_by_age: u64,
    pub segments_by_pressure: u64,
    /// Commit log bytes those segments held.
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct RetentionCounters {
    by_age: AtomicU64,
    by_pressure: AtomicU64,
    bytes: AtomicU64,
}

impl RetentionCounters {
    fn count(&self, d: &DeletedSegment) {
        let by = match d.reason {
            DeletionReason::Age { .. } => &self.by_age,
            DeletionReason::DiskPressure { .. } => &self.by_pressure,
        };
        by.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(d.end.saturating_sub(d.start), Ordering::Relaxed);
    }

    pub(crate) fn totals(&self) -> RetentionTotals {
        RetentionTotals {
            segments_by_age: self.by_age.load(Ordering::Relaxed),
            segments_by_pressure: self.by_pressure.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A warning repeated while the condition lasts goes out at most this often.
const REPEAT_WARNING: Duration = Duration::from_secs(60);

impl Inner {
    /// Bytes of disk the store's files hold (each file is fully reserved when created).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        let queues: u64 = self
            .all_queues()
            .iter()
            .map(|q| q.allocated_bytes())
            .fold(0, u64::saturating_add);
        self.commit_log
            .allocated_bytes()
            .saturating_add(queues)
            .saturating_add(self.index.allocated_bytes())
    }

    /// Measures the disk and lets the guard stop or resume appends.
    pub(crate) fn check_disk(&self) -> Result<DiskUsage> {
        let usage = self.disk.measure(self.allocated_bytes())?;
        // Room for the next segment, unless it is made already.
        let headroom = match self.commit_log.next_segment_ready() {
            true => 0,
            false => self.commit_log.segment_size(),
        };
        self.disk.update(headroom);
        Ok(usage)
    }

    /// One pass: measures the disk; deletes the sealed segments older than the retention
    /// age when `by_age`; then, if the disk is fuller than `disk_max_used_ratio`, deletes
    /// at most one more (space held by readers' maps frees only when they let go, so the
    /// ratio lags the deletions), as the pressure policy allows.
    pub(crate) fn run_retention(&self, now: i64, by_age: bool) -> Result<RetentionReport> {
        let _one = self.retention_lock.lock();
        let disk = self.check_disk()?;
        let mut report = RetentionReport {
            disk: Some(disk),
            ..RetentionReport::default()
        };
        if by_age {
            report.deleted = self.delete_expired(now)?;
        }
        if disk.ratio > self.config.disk_max_used_ratio && self.commit_log.segment_count() > 1 {
            let unconsumed = match self.config.disk_pressure_policy {
                DiskPressurePolicy::DeleteOldest => None,
                DiskPressurePolicy::KeepUnconsumed => self.oldest_segment_unconsumed(),
            };
            match unconsumed {
                None => {
                    let reason = DeletionReason::DiskPressure {
                        used_ratio: disk.ratio,
                    };
                    if let Some(d) = self.delete_oldest(reason)? {
                        report.deleted.push(d);
                    }
                }
                Some(which) => {
                    self.warn_kept_unconsumed(&disk, &which);
                    report.kept_unconsumed = Some(which);
                }
            }
        }
        report
            .deleted
            .iter()
            .for_each(|d| self.retention_counts.count(d));
        report.segments_deleted = report.deleted.len();
        report.commit_log_min_offset = self.commit_log.min_offset();
        Ok(report)
    }

    /// Deletes the sealed segments older than the retention age, oldest first.
    fn delete_expired(&self, now: i64) -> Result<Vec<DeletedSegment>> {
        let retention = self.config.retention_ms();
        let mut deleted = Vec::new();
        loop {
            let sealed = self.commit_log.sealed_segments();
            let Some(&(_, Some(sealed_at))) = sealed.first() else {
                break;
            };
            let age_ms = now.saturating_sub(sealed_at);
            if age_ms <= retention {
                break;
            }
            match self.delete_oldest(DeletionReason::Age { age_ms })? {
                Some(d) => deleted.push(d),
                None => break,
            }
        }
        Ok(deleted)
    }

    /// Deletes the oldest sealed segment, trims every queue and the index below the new
    /// minimum, and logs what went and why.
    fn delete_oldest(&self, reason: DeletionReason) -> Result<Option<DeletedSegment>> {
        let Some((start, end, path)) = self.commit_log.delete_oldest_segment()? else {
            return Ok(None);
        };
        let min = self.commit_log.min_offset();
        let mut dropped = Vec::new();
        for (topic, queue_id, q) in self.named_queues() {
            let from = q.min_offset();
            q.trim_below(min)?;
            let to = q.min_offset();
            if to > from {
                dropped.push(DroppedEntries {
                    topic,
                    queue_id,
                    from,
                    to,
                });
            }
        }
        self.index.trim_below(min)?;
        let queues = describe_dropped(&dropped);
        match reason {
            DeletionReason::Age { age_ms } => warn!(
                segment = %path.display(),
                from = start,
                to = end,
                reason = "age",
                age_hours = age_ms / 3_600_000,
                retention_hours = self.config.retention_hours,
                queues = %queues,
                "retention deleted a commit log segment"
            ),
            DeletionReason::DiskPressure { used_ratio } => warn!(
                segment = %path.display(),
                from = start,
                to = end,
                reason = "disk pressure",
                used_percent = format!("{:.1}", used_ratio * 100.0),
                limit_percent = format!("{:.1}", self.config.disk_max_used_ratio * 100.0),
                policy = ?self.config.disk_pressure_policy,
                queues = %queues,
                "retention deleted a commit log segment"
            ),
        }
        self.warn_consumers_behind(&dropped);
        Ok(Some(DeletedSegment {
            start,
            end,
            reason,
            dropped,
        }))
    }

    /// With the default policy, why the oldest segment may not go: the first queue with
    /// entries in it that some group has not consumed (or that no group reads). `None`
    /// when every such queue was consumed past it.
    fn oldest_segment_unconsumed(&self) -> Option<String> {
        let first = self.commit_log.sealed_segments().first().map(|&(s, _)| s)?;
        let end = first.saturating_add(self.commit_log.segment_size());
        let lowest = self.offsets.lowest_by_queue();
        for (topic, queue_id, q) in self.named_queues() {
            let upto = q.first_at_or_after(end);
            if upto <= q.min_offset() {
                continue;
            }
            match lowest.get(&(topic.clone(), queue_id)) {
                Some((offset, _)) if *offset >= upto => {}
                Some((offset, group)) => {
                    return Some(format!(
                        "{topic}/{queue_id}: group {group:?} has consumed up to {offset}, the segment holds entries up to {upto}"
                    ));
                }
                None => {
                    return Some(format!(
                        "{topic}/{queue_id}: no consumer group has consumed its entries up to {upto}"
                    ));
                }
            }
        }
        None
    }

    fn warn_kept_unconsumed(&self, disk: &DiskUsage, which: &str) {
        let mut last = self.kept_warned.lock();
        if last.is_some_and(|t| t.elapsed() < REPEAT_WARNING) {
            return;
        }
        *last = Some(Instant::now());
        warn!(
            disk = %disk,
            limit_percent = format!("{:.1}", self.config.disk_max_used_ratio * 100.0),
            full_percent = format!("{:.1}", self.config.disk_full_ratio * 100.0),
            unconsumed = which,
            "disk pressure, but the oldest commit log segment holds messages not yet consumed: keeping it (disk_pressure_policy = \"delete-oldest\" would delete it); sends will be refused above the full ratio"
        );
    }

    /// Groups whose committed offset is now below a queue's minimum lost messages they had
    /// not consumed: say so, once per group and queue.
    fn warn_consumers_behind(&self, dropped: &[DroppedEntries]) {
        if dropped.is_empty() {
            return;
        }
        let by_queue: HashMap<(&str, u32), &DroppedEntries> = dropped
            .iter()
            .map(|d| ((d.topic.as_str(), d.queue_id), d))
            .collect();
        for (key, committed) in self.offsets.all() {
            if let Some(d) = by_queue.get(&(key.topic.as_str(), key.queue_id))
                && committed < d.to
            {
                warn!(
                    group = %key.group,
                    topic = %key.topic,
                    queue = key.queue_id,
                    committed,
                    lost_from = committed.max(d.from),
                    lost_to = d.to,
                    "retention deleted messages this group had not consumed; its next pull is told the offset moved"
                );
            }
        }
    }

    pub(crate) fn all_queues(&self) -> Vec<Arc<ConsumeQueue>> {
        self.queues
            .read()
            .values()
            .flat_map(|qs| qs.values().cloned())
            .collect()
    }

    fn named_queues(&self) -> Vec<(String, u32, Arc<ConsumeQueue>)> {
        let mut out: Vec<_> = self
            .queues
            .read()
            .iter()
            .flat_map(|(t, qs)| qs.iter().map(|(id, q)| (t.clone(), *id, Arc::clone(q))))
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }
}

/// `topic/queue: from..to` for each queue, at most 32 named.
fn describe_dropped(dropped: &[DroppedEntries]) -> String {
    const SHOWN: usize = 32;
    let mut s: Vec<String> = dropped
        .iter()
        .take(SHOWN)
        .map(|d| format!("{}/{}: {}..{}", d.topic, d.queue_id, d.from, d.to))
        .collect();
    if dropped.len() > SHOWN {
        s.push(format!("and {} more queues", dropped.len() - SHOWN));
    }
    if s.is_empty() {
        "no queue entries".into()
    } else {
        s.join(", ")
    }
}
