//! Opening after a stop: consume queues and the key index are brought in line with the
//! commit log, which is the only source of truth.
//!
//! Invariant: derived data (queues, index) below the checkpoint's `logic_flushed` is on
//! disk and agrees with the log; everything from there on is dropped and rebuilt from the
//! records the scan validates. The scan itself never deletes a record that verifies, but
//! on a replica past its durable point (see `commitlog::recovery`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{error, info, warn};

use crate::checkpoint::Checkpoint;
use crate::commitlog::DamagedRange;
use crate::consume_queue::CqEntry;
use crate::error::Result;
use crate::store::{Inner, QUARANTINE_DIR};
use weir_protocol::names::property;
use weir_protocol::record::{RecordView, sys_flag, tag_hash};

/// What opening the store found and did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    /// Records validated from the checkpoint on (half and rollback records included,
    /// though only plain and committed ones enter a queue).
    pub records_replayed: u64,
    /// Where the replay started: every record from here to `commit_log_end` was visited.
    /// A batch is never split by it (see `CommitLogWriter::commit`).
    pub replayed_from: u64,
    pub commit_log_end: u64,
    /// Why the scan stopped where it did.
    pub stop_reason: &'static str,
    /// Stretches of the log with no valid record that the scan skipped because valid
    /// records followed them (each also logged at ERROR).
    pub damaged: Vec<DamagedRange>,
    /// Segments past the end of the log that held something other than zeros, moved into
    /// the `quarantine` folder rather than deleted.
    pub quarantined: Vec<PathBuf>,
}

impl RecoveryReport {
    pub(crate) fn empty(clean_shutdown: bool) -> Self {
        Self {
            clean_shutdown,
            records_replayed: 0,
            replayed_from: 0,
            commit_log_end: 0,
            stop_reason: "",
            damaged: Vec::new(),
            quarantined: Vec::new(),
        }
    }
}

impl Inner {
    /// Brings consume queues and the index in line with the commit log: drop what they
    /// hold from the checkpoint on, validate records from there to the last valid one
    /// (the end), re-dispatch each, and cut the log there.
    pub(crate) fn recover(
        &self,
        checkpoint: Option<Checkpoint>,
        clean: bool,
    ) -> Result<RecoveryReport> {
        let started = Instant::now();
        let log_min = self.commit_log.min_offset();
        let from = checkpoint.map(|c| c.logic_flushed.max(log_min));
        if checkpoint.is_none() && self.commit_log.segment_count() > 0 {
            warn!("no valid checkpoint: rebuilding consume queues and index from the whole log");
        }
        let cut = from.unwrap_or(0);
        for qs in self.queues.read().values() {
            for q in qs.values() {
                q.truncate_from(cut)?;
            }
        }
        self.index.truncate_from(cut)?;

        let mut anomalies = 0u64;
        let clean_end = checkpoint.filter(|_| clean).map(|c| c.commit_log_flushed);
        // A replica's log ends at damage past what was durable (see `StoreConfig::replica`);
        // without a checkpoint nothing says where that is, and damage is skipped as on a
        // master (ending the log at bit rot far back could leave it behind what its master
        // still holds).
        let end_at_damage_from = checkpoint
            .filter(|_| self.config.replica)
            .map(|c| c.commit_log_flushed);
        let quarantine = self.config.data_dir.join(QUARANTINE_DIR);
        let scan = self.commit_log.recover(
            from,
            clean_end,
            end_at_damage_from,
            &quarantine,
            |v: &RecordView<'_>| {
                if !sys_flag::is_dispatched(v.sys_flag()) {
                    return Ok(());
                }
                let cq = self.queue_or_create(v.topic(), v.queue_id())?;
                let (qo, max) = (v.queue_offset(), cq.max_offset());
                if qo < max {
                    anomalies += 1;
                    return Ok(());
                }
                if !cq.can_put(qo) {
                    // A CRC-valid record with a queue offset no queue can reach: left in the
                    // log (readable by id), not in its queue, and the store still opens.
                    error!(
                        topic = v.topic(),
                        queue = v.queue_id(),
                        queue_offset = qo,
                        next = max,
                        commit_log_offset = v.commit_log_offset(),
                        "replayed record has an impossible queue offset; not added to its queue"
                    );
                    anomalies += 1;
                    return Ok(());
                }
                if qo > max && max > cq.min_offset() {
                    anomalies += 1;
                }
                let entry = CqEntry {
                    commit_log_offset: v.commit_log_offset(),
                    size: v.total_len() as u32,
                    tag_hash: tag_hash(v.tags()),
                };
                self.dispatch(
                    &cq,
                    qo,
                    entry,
                    v.topic(),
                    v.keys()
                        .chain(property::INDEXED.iter().filter_map(|p| v.property(p))),
                    v.store_timestamp(),
                )
            },
        )?;
        if anomalies > 0 {
            warn!(
                anomalies,
                "replayed records disagreed with their consume queues (gaps or repeats); queues keep the log's offsets"
            );
        }
        if !scan.damaged.is_empty() {
            let bytes: u64 = scan.damaged.iter().map(|d| d.to - d.from).sum();
            error!(
                stretches = scan.damaged.len(),
                bytes,
                "the commit log holds damaged stretches; every record around them verified and is served"
            );
        }
        if let Some(cp) = checkpoint
            && scan.end < cp.commit_log_flushed
        {
            error!(
                end = scan.end,
                durable = cp.commit_log_flushed,
                reason = scan.stop_reason,
                "commit log damaged below its durable point: no valid record follows the damage, so the log ends there"
            );
        }
        self.dispatched.store(scan.end, Ordering::Release);
        let report = RecoveryReport {
            clean_shutdown: clean,
            records_replayed: scan.records,
            replayed_from: from.unwrap_or(log_min).min(scan.end),
            commit_log_end: scan.end,
            stop_reason: scan.stop_reason,
            damaged: scan.damaged,
            quarantined: scan.quarantined,
        };
        self.checkpoint_now()?;
        if !clean {
            warn!(
                checkpoint_written_at_ms = checkpoint.map_or(0, |c| c.written_at),
                replayed = report.records_replayed,
                end = report.commit_log_end,
                stop = report.stop_reason,
                ms = started.elapsed().as_millis() as u64,
                "recovered after an unclean stop"
            );
        } else {
            info!(
                end = report.commit_log_end,
                "store opened after a clean stop"
            );
        }
        Ok(report)
    }
}
