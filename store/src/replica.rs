//! Replication, the store's part: a master reads its log as stored, a slave appends those
//! same bytes at the same offsets and builds its own queues and index from them.
//!
//! Invariant: a slave's log is a prefix of its master's, byte for byte. Bytes are taken
//! only at the slave's end, only if each record verifies where it lands, and a record is
//! entered in its queue at the queue offset the master gave it, which must be the queue's
//! next one; anything else is a mismatch the slave reports, never serves. (A record that
//! lines up but fails its checksum is damage, not a mismatch: refused, and retried.)
//!
//! The master streams its log in place ([`LogSpan`]) and walks only its records' frames:
//! its bytes were checked when written or recovered, and the slave checks each again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::commitlog::LogSpan;
use crate::config::FlushMode;
use crate::consume_queue::{ConsumeQueue, CqEntry};
use crate::error::{Result, StoreError};
use crate::flush::{Durable, TicketFuture};
use crate::store::MessageStore;
use weir_protocol::names::property;
use weir_protocol::record::{RecordView, sys_flag};

impl MessageStore {
    /// For a master: up to `max` bytes of whole records (and fillers) from `from`, a record
    /// boundary, never past the end of its segment; at least one record whatever its size.
    /// `None` when `from` is the end of the log. Read in place, not copied.
    pub fn read_log(&self, from: u64, max: usize) -> Result<Option<LogSpan>> {
        self.inner.commit_log.read_raw(from, max)
    }

    /// The committed bytes `[from, from + len)` within one segment, if there are such (a
    /// master compares a slave's last bytes with its own).
    pub fn log_bytes(&self, from: u64, len: usize) -> Option<Vec<u8>> {
        self.inner.commit_log.read_exact(from, len)
    }

    /// For a slave: appends the master's `bytes`, stored from `offset` on the master, at
    /// the same offset, which must be this log's end. Returns the log's new end.
    pub fn append_replicated(&self, offset: u64, bytes: &[u8]) -> Result<u64> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::ShutDown);
        }
        inner.health.check_writable()?;
        inner.disk.check_append()?;
        // Each queue's new end, told to the arrival listener once per queue, not per record.
        let mut arrivals: Vec<(&str, u32, u64)> = Vec::new();
        // The queue of the record before: runs of records to one queue look it up once.
        let mut last: Option<(&str, u32, Arc<ConsumeQueue>)> = None;
        let end = {
            let mut w = inner.commit_log.lock_writer();
            let taken = w.append_replicated(offset, bytes, |v: &RecordView<'_>| {
                if !sys_flag::is_dispatched(v.sys_flag()) {
                    return Ok(());
                }
                let cq = match &last {
                    Some((topic, queue_id, cq)) if *topic == v.topic() && *queue_id == v.queue_id() => cq,
                    _ => {
                        let cq = inner.queue_or_create(v.topic(), v.queue_id())?;
                        &last.insert((v.topic(), v.queue_id(), cq)).2
                    }
                };
                let qo = v.queue_offset();
                if qo != cq.max_offset() {
                    return Err(StoreError::ReplicaMismatch {
                        detail: format!(
                            "record at {} is entry {qo} of {}/{}, but that queue's next entry here is {}",
                            v.commit_log_offset(),
                            v.topic(),
                            v.queue_id(),
                            cq.max_offset()
                        ),
                    });
                }
                inner.dispatch(
                    cq,
                    qo,
                    CqEntry::of(v),
                    v.topic(),
                    v.keys()
                            .chain(property::INDEXED.iter().filter_map(|p| v.property(p))),
                    v.store_timestamp(),
                )?;
                match arrivals.last_mut() {
                    Some(last) if last.0 == v.topic() && last.1 == v.queue_id() => last.2 = qo + 1,
                    _ => arrivals.push((v.topic(), v.queue_id(), qo + 1)),
                }
                Ok(())
            });
            // What verified before a failure stays: it is a prefix of the master's log,
            // and is announced below like the rest.
            w.commit();
            inner.dispatched.store(w.position(), Ordering::Release);
            taken.map(|_| w.position())
        };
        if let Some(listener) = inner.arrival.read().clone() {
            // Runs of one queue are folded above; queues taking turns are folded here
            // (sorted with each queue's largest end first, the one `dedup` keeps).
            arrivals.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(b.2.cmp(&a.2)));
            arrivals.dedup_by(|later, kept| later.0 == kept.0 && later.1 == kept.1);
            for (topic, queue_id, max) in arrivals {
                listener(topic, queue_id, max);
            }
        }
        end
    }

    /// Resolves once the log is on disk up to `end` (sync flush: a group commit; async: at
    /// once, the flusher takes it within its interval).
    pub async fn durable(&self, end: u64) -> Result<()> {
        if self.inner.config.flush_mode != FlushMode::Sync {
            return Ok(());
        }
        match TicketFuture(self.inner.group_commit.request(end)).await {
            Durable::Yes => Ok(()),
            Durable::Failed(e) => Err(StoreError::FlushFailed(e)),
        }
    }
}
