//! Reading: batches from a consume queue (with tag-hash filtering that never touches the
//! commit log), offsets by time, lookups by key and by id.
//!
//! Invariant: a read only returns published records, and a record stays readable for as
//! long as its `StoredRecord` lives, even if retention deletes its segment meanwhile.

use crate::commitlog::{ReadBatch, StoredRecord};
use crate::error::{Result, StoreError};
use crate::store::MessageStore;
use weir_protocol::names::property;
use weir_protocol::record::{MessageId, RecordView};

/// Most records a read makes room for before it finds them.
const MAX_PREALLOCATED: usize = 4096;

/// Bounds of one read.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_count: usize,
    /// Bytes of records; the first matching record is returned even if larger.
    pub max_bytes: usize,
    /// Queue entries examined at most, so a very selective filter returns (empty, with
    /// an advanced offset) instead of walking the whole queue.
    pub max_scan: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_count: 32,
            max_bytes: 256 * 1024,
            max_scan: 16_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    /// At least one message.
    Found,
    /// Entries were examined but none matched the filter; resume at `next_offset`.
    NoMatch,
    /// `offset` is the queue's end: nothing new yet.
    NoNewMessage,
    /// `offset` is outside `[min, max]` (e.g. deleted by retention): resume at
    /// `next_offset`.
    OffsetMoved,
}

/// What [`MessageStore::read`] found: as [`GetResult`], the records in place.
pub struct ReadResult {
    pub status: GetStatus,
    /// The records, each with its queue offset.
    pub records: ReadBatch,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

#[derive(Debug)]
pub struct GetResult {
    pub status: GetStatus,
    pub messages: Vec<StoredRecord>,
    /// Each message's queue offset (`queue_offsets[i]` is `messages[i]`'s), from the
    /// consume queue: a reader that needs them does not touch the records to learn them.
    pub queue_offsets: Vec<u64>,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

impl MessageStore {
    /// Reads from (topic, queue) at `offset`, skipping entries whose tag hash `filter`
    /// rejects without touching the commit log.
    pub fn get_messages(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        limits: ReadLimits,
        filter: impl Fn(u64) -> bool,
    ) -> GetResult {
        let r = self.read(topic, queue_id, offset, limits, filter);
        GetResult {
            status: r.status,
            messages: r.records.records(),
            queue_offsets: r.records.spans().iter().map(|s| s.queue_offset).collect(),
            next_offset: r.next_offset,
            min_offset: r.min_offset,
            max_offset: r.max_offset,
        }
    }

    /// As [`MessageStore::get_messages`], the records in place ([`ReadBatch`]): for a
    /// reader that keeps few of many (a filtered pull), each kept one made a
    /// [`StoredRecord`] afterwards.
    pub fn read(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        limits: ReadLimits,
        filter: impl Fn(u64) -> bool,
    ) -> ReadResult {
        let Some(cq) = self.inner.queue(topic, queue_id) else {
            return ReadResult {
                status: if offset == 0 {
                    GetStatus::NoNewMessage
                } else {
                    GetStatus::OffsetMoved
                },
                records: ReadBatch::default(),
                next_offset: 0,
                min_offset: 0,
                max_offset: 0,
            };
        };
        let (min, max) = (cq.min_offset(), cq.max_offset());
        let result = |status, records, next_offset| ReadResult {
            status,
            records,
            next_offset,
            min_offset: min,
            max_offset: max,
        };
        if offset < min {
            return result(GetStatus::OffsetMoved, ReadBatch::default(), min);
        }
        if offset == max {
            return result(GetStatus::NoNewMessage, ReadBatch::default(), max);
        }
        if offset > max {
            return result(GetStatus::OffsetMoved, ReadBatch::default(), max);
        }
        // Room for what was asked for (a read usually fills it: growing by doubling copied
        // a filtered pull's 2,048 records five times), within reason.
        let room = limits.max_count.min(limits.max_scan).min(MAX_PREALLOCATED);
        let mut records = ReadBatch::with_capacity(room);
        let mut bytes = 0usize;
        let mut next = offset;
        let mut scanned = 0usize;
        let mut gone = false;
        let mut segment = None;
        cq.scan(offset, |at, e| {
            if scanned >= limits.max_scan
                || records.len() >= limits.max_count
                || (!records.is_empty() && bytes + e.size as usize > limits.max_bytes)
            {
                return false;
            }
            scanned += 1;
            if !e.is_hole() && filter(e.tag_hash) {
                let len = e.size as usize;
                let commit_log = &self.inner.commit_log;
                if !commit_log.push_near(&mut records, &mut segment, e.commit_log_offset, len, at) {
                    // Retention removed the record after the queue bound was read.
                    gone = true;
                    return false;
                }
                bytes += len;
            }
            next = at + 1;
            true
        });
        if gone && records.is_empty() {
            let min = cq.min_offset();
            return result(GetStatus::OffsetMoved, ReadBatch::default(), min.max(next));
        }
        let status = if records.is_empty() {
            GetStatus::NoMatch
        } else {
            GetStatus::Found
        };
        result(status, records, next)
    }

    /// Lowest readable offset of a queue (0 for an unknown queue).
    pub fn min_offset(&self, topic: &str, queue_id: u32) -> u64 {
        self.inner
            .queue(topic, queue_id)
            .map_or(0, |q| q.min_offset())
    }

    /// Offset the next message of a queue will get (0 for an unknown queue).
    pub fn max_offset(&self, topic: &str, queue_id: u32) -> u64 {
        self.inner
            .queue(topic, queue_id)
            .map_or(0, |q| q.max_offset())
    }

    /// Commit-log bytes written after the queue's message at `offset` began: how far back
    /// it lies (`None` when the queue has no message there).
    pub fn bytes_written_since(&self, topic: &str, queue_id: u32, offset: u64) -> Option<u64> {
        let entry = self
            .inner
            .queue(topic, queue_id)?
            .get(offset)
            .filter(|e| !e.is_hole())?;
        Some(
            self.commit_log_max_offset()
                .saturating_sub(entry.commit_log_offset),
        )
    }

    /// The first offset of the queue whose message was stored at or after `timestamp_ms`
    /// (the queue's max offset if none was).
    pub fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> u64 {
        let Some(cq) = self.inner.queue(topic, queue_id) else {
            return 0;
        };
        let (mut lo, mut hi) = (cq.min_offset(), cq.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ts = cq.get(mid).filter(|e| !e.is_hole()).and_then(|e| {
                self.inner
                    .commit_log
                    .store_timestamp_at(e.commit_log_offset)
            });
            match ts {
                Some(ts) if ts < timestamp_ms => lo = mid + 1,
                Some(_) => hi = mid,
                // A hole or a record retention just removed: treat as older.
                None => lo = mid + 1,
            }
        }
        lo
    }

    /// Messages of `topic` carrying `key`, newest first, at most `max`.
    pub fn query_by_key(&self, topic: &str, key: &str, max: usize) -> Vec<StoredRecord> {
        self.query_index(topic, key, max, |v| {
            v.keys().any(|k| k == key) || v.property(property::UNIQ_KEY) == Some(key)
        })
    }

    /// Messages of `topic` whose property `name` (one of
    /// [`property::INDEXED`]) is `value`, newest first, at most `max`: one index lookup.
    pub fn query_by_property(
        &self,
        topic: &str,
        name: &str,
        value: &str,
        max: usize,
    ) -> Vec<StoredRecord> {
        self.query_index(topic, value, max, |v| v.property(name) == Some(value))
    }

    /// The records of `topic` the key index holds under `value` that `matches` confirms
    /// (the index stores hashes, which collide), newest first, at most `max`.
    fn query_index(
        &self,
        topic: &str,
        value: &str,
        max: usize,
        matches: impl Fn(&RecordView<'_>) -> bool,
    ) -> Vec<StoredRecord> {
        let mut out = Vec::new();
        for offset in self.inner.index.lookup(topic, value, max.saturating_mul(2)) {
            if out.len() >= max {
                break;
            }
            let Ok(rec) = self.inner.commit_log.record_starting_at(offset) else {
                continue;
            };
            if rec.view().is_ok_and(|v| v.topic() == topic && matches(&v)) {
                out.push(rec);
            }
        }
        out
    }

    /// Calls `f` with each record from `from` (a record's offset, or a segment's start) up
    /// to `until` or the log's end, in order, while it returns true. Fillers are skipped;
    /// the walk stops at the first offset that holds no valid record.
    pub fn scan_records(&self, from: u64, until: u64, mut f: impl FnMut(&StoredRecord) -> bool) {
        let end = until.min(self.commit_log_max_offset());
        let mut at = from.max(self.commit_log_min_offset());
        while at < end {
            match self.inner.commit_log.record_or_blank_at(at) {
                Some(Ok(rec)) => {
                    at += rec.len() as u64;
                    if !f(&rec) {
                        return;
                    }
                }
                Some(Err(blank_len)) => at += blank_len,
                None => return,
            }
        }
    }

    /// The message with this id (store address + commit log offset).
    pub fn get_by_id(&self, id: &MessageId) -> Result<StoredRecord> {
        self.get_queued(id.offset)
    }

    /// The record at a commit log offset, checked to be a whole, intact record.
    pub fn get_by_offset(&self, commit_log_offset: u64) -> Result<StoredRecord> {
        self.inner.commit_log.record_starting_at(commit_log_offset)
    }

    /// The record at a commit log offset, only if it is a message its queue lists there.
    /// Where the offset comes from a client, a whole, intact record starting at it is not
    /// enough: a message's body may hold bytes that look like a record (with a
    /// self-consistent offset and CRC) of any topic, and [`get_by_offset`](Self::get_by_offset)
    /// would read them as one.
    pub fn get_queued(&self, commit_log_offset: u64) -> Result<StoredRecord> {
        let rec = self
            .inner
            .commit_log
            .record_starting_at(commit_log_offset)?;
        let view = rec.view().map_err(|e| StoreError::NoMessageAt {
            offset: commit_log_offset,
            detail: format!("unreadable record: {e}"),
        })?;
        let listed = self
            .inner
            .queue(view.topic(), view.queue_id())
            .and_then(|q| q.get(view.queue_offset()))
            .is_some_and(|e| {
                e.commit_log_offset == commit_log_offset && e.size as usize == view.total_len()
            });
        if !listed {
            return Err(StoreError::NoMessageAt {
                offset: commit_log_offset,
                detail: "no queue lists a message there".to_owned(),
            });
        }
        Ok(rec)
    }
}
