//! `MessageStore`: the commit log, its consume queues and key index, recovery, flushing,
//! retention and consumer offsets, behind one handle.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use tracing::{error, info, warn};

use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::commitlog::{CommitLog, StoredRecord};
use crate::config::{FlushMode, StoreConfig};
use crate::consume_queue::{ConsumeQueue, CqEntry};
use crate::error::{IoContext, Result, StoreError};
use crate::flush::{Durable, GroupCommit, Shutdown, TicketFuture};
use crate::fsutil::{self, now_ms};
use crate::index::KeyIndex;
use crate::offsets::ConsumerOffsets;
use weir_protocol::record::{self, Assigned, Message, MessageId, RecordView, sys_flag, tag_hash};

const LOCK_FILE: &str = "lock";
/// Exists while a store is open; found at open, it means the last stop was not clean.
const RUNNING_MARKER: &str = "running";
const CHECKPOINT_FILE: &str = "checkpoint";
const COMMIT_LOG_DIR: &str = "commitlog";
const CONSUME_QUEUE_DIR: &str = "consumequeue";
const INDEX_DIR: &str = "index";
const OFFSETS_FILE: &str = "config/consumer_offsets.json";
/// The newest commit log bytes kept mapped (what consumers usually read); older pages are
/// unmapped at each checkpoint so resident memory does not grow with the backlog.
const HOT_TAIL: u64 = 64 << 20;

/// Whether an append is known durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStatus {
    /// Synced to disk (sync mode).
    Durable,
    /// In the page cache; the async flusher syncs it shortly (async mode).
    Pending,
    /// Sync mode, but the fsync did not finish within `sync_flush_timeout_ms`. The record is
    /// stored and will be synced; the producer may retry (and so duplicate).
    TimedOut,
}

/// Where an appended message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub commit_log_offset: u64,
    pub size: u32,
    /// Logical offset in its consume queue (meaningless for half and rollback records,
    /// which are not dispatched).
    pub queue_offset: u64,
    pub store_timestamp: i64,
    pub msg_id: MessageId,
    pub flush: FlushStatus,
}

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

#[derive(Debug)]
pub struct GetResult {
    pub status: GetStatus,
    pub messages: Vec<StoredRecord>,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub commit_log_min_offset: u64,
}

/// What opening the store found and did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    /// Records validated from the checkpoint on (half and rollback records included,
    /// though only plain and committed ones enter a queue).
    pub records_replayed: u64,
    pub commit_log_end: u64,
    /// Why the scan stopped where it did.
    pub stop_reason: &'static str,
}

type ArrivalListener = Arc<dyn Fn(&str, u32, u64) + Send + Sync>;

struct Inner {
    config: StoreConfig,
    commit_log: CommitLog,
    queues: RwLock<HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>>,
    index: KeyIndex,
    offsets: ConsumerOffsets,
    checkpoint: Mutex<CheckpointFile>,
    group_commit: GroupCommit,
    shutdown: Shutdown,
    arrival: RwLock<Option<ArrivalListener>>,
    /// End of the last record whose queue entry and keys are written. Trails the commit
    /// log's published end by at most the record being dispatched; the checkpoint uses it.
    dispatched: AtomicU64,
    closed: AtomicBool,
    recovery: RecoveryReport,
    /// The single-owner lock: held until the store is shut down (not until the last
    /// handle goes), so a new store can open the folder as soon as `shutdown` returns.
    lock: Mutex<Option<File>>,
}

/// The message store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct MessageStore {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
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
        let index = KeyIndex::open(
            &root.join(INDEX_DIR),
            config.index_slots,
            config.index_entries,
        )?;
        let offsets = ConsumerOffsets::open(&root.join(OFFSETS_FILE))?;

        let inner = Inner {
            commit_log,
            queues: RwLock::new(queues),
            index,
            offsets,
            checkpoint: Mutex::new(checkpoint_file),
            group_commit: GroupCommit::default(),
            shutdown: Shutdown::default(),
            arrival: RwLock::new(None),
            dispatched: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            recovery: RecoveryReport {
                clean_shutdown,
                records_replayed: 0,
                commit_log_end: 0,
                stop_reason: "",
            },
            lock: Mutex::new(Some(lock)),
            config,
        };
        let mut inner = inner;
        inner.recovery = inner.recover(checkpoint, clean_shutdown)?;
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

    /// Appends one message. In sync mode, returns once it is on disk (or the sync timed
    /// out: see [`FlushStatus`]). Blocking: call from a thread that may block.
    pub fn put(&self, msg: &Message) -> Result<PutResult> {
        let mut r = self.put_batch(std::slice::from_ref(msg))?;
        r.pop().ok_or(StoreError::ShutDown)
    }

    /// Appends messages in order under one lock and waits once for their durability. An
    /// invalid message rejects the whole batch before anything is written.
    pub fn put_batch(&self, msgs: &[Message]) -> Result<Vec<PutResult>> {
        let (mut results, wait_for) = self.inner.append(msgs)?;
        if let Some(end) = wait_for {
            let timeout = self.inner.config.sync_flush_timeout();
            let status = match self.inner.group_commit.wait_durable(end, timeout) {
                Some(Durable::Yes) => FlushStatus::Durable,
                Some(Durable::Failed(e)) => return Err(StoreError::FlushFailed(e)),
                None => FlushStatus::TimedOut,
            };
            results.iter_mut().for_each(|r| r.flush = status);
        }
        Ok(results)
    }

    /// `put_batch` for async callers: the append itself is a short memory copy; only the
    /// durability wait is awaited. (The caller bounds the wait, e.g. with a timeout.)
    pub async fn put_batch_async(&self, msgs: &[Message]) -> Result<Vec<PutResult>> {
        let (mut results, wait_for) = self.inner.append(msgs)?;
        if let Some(end) = wait_for {
            match TicketFuture(self.inner.group_commit.request(end)).await {
                Durable::Yes => results
                    .iter_mut()
                    .for_each(|r| r.flush = FlushStatus::Durable),
                Durable::Failed(e) => return Err(StoreError::FlushFailed(e)),
            }
        }
        Ok(results)
    }

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
        let Some(cq) = self.inner.queue(topic, queue_id) else {
            return GetResult {
                status: if offset == 0 {
                    GetStatus::NoNewMessage
                } else {
                    GetStatus::OffsetMoved
                },
                messages: Vec::new(),
                next_offset: 0,
                min_offset: 0,
                max_offset: 0,
            };
        };
        let (min, max) = (cq.min_offset(), cq.max_offset());
        let result = |status, messages, next_offset| GetResult {
            status,
            messages,
            next_offset,
            min_offset: min,
            max_offset: max,
        };
        if offset < min {
            return result(GetStatus::OffsetMoved, Vec::new(), min);
        }
        if offset == max {
            return result(GetStatus::NoNewMessage, Vec::new(), max);
        }
        if offset > max {
            return result(GetStatus::OffsetMoved, Vec::new(), max);
        }
        let mut messages = Vec::with_capacity(limits.max_count.min(64));
        let mut bytes = 0usize;
        let mut next = offset;
        let mut scanned = 0usize;
        let mut gone = false;
        cq.scan(offset, |at, e| {
            if scanned >= limits.max_scan
                || messages.len() >= limits.max_count
                || (!messages.is_empty() && bytes + e.size as usize > limits.max_bytes)
            {
                return false;
            }
            scanned += 1;
            if !e.is_hole() && filter(e.tag_hash) {
                match self
                    .inner
                    .commit_log
                    .record_at(e.commit_log_offset, e.size as usize)
                {
                    Some(rec) => {
                        bytes += rec.len();
                        messages.push(rec);
                    }
                    None => {
                        // Retention removed the record after the queue bound was read.
                        gone = true;
                        return false;
                    }
                }
            }
            next = at + 1;
            true
        });
        if gone && messages.is_empty() {
            let min = cq.min_offset();
            return result(GetStatus::OffsetMoved, messages, min.max(next));
        }
        let status = if messages.is_empty() {
            GetStatus::NoMatch
        } else {
            GetStatus::Found
        };
        result(status, messages, next)
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
        let mut out = Vec::new();
        for offset in self
            .inner
            .index
            .lookup(topic, key, max.saturating_mul(2).max(max))
        {
            if out.len() >= max {
                break;
            }
            let Ok(rec) = self.inner.commit_log.record_starting_at(offset) else {
                continue;
            };
            let matches = rec
                .view()
                .is_ok_and(|v| v.topic() == topic && v.keys().any(|k| k == key));
            if matches {
                out.push(rec);
            }
        }
        out
    }

    /// The message with this id (store address + commit log offset).
    pub fn get_by_id(&self, id: &MessageId) -> Result<StoredRecord> {
        self.inner.commit_log.record_starting_at(id.offset)
    }

    /// The record at a commit log offset, checked to be a whole, intact record.
    pub fn get_by_offset(&self, commit_log_offset: u64) -> Result<StoredRecord> {
        self.inner.commit_log.record_starting_at(commit_log_offset)
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
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let removed = self.inner.queues.write().remove(topic);
        if let Some(qs) = removed {
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

    /// Called after each append with (topic, queue id, new max offset): how long polling
    /// learns that a queue has something new.
    pub fn set_arrival_listener(&self, f: impl Fn(&str, u32, u64) + Send + Sync + 'static) {
        *self.inner.arrival.write() = Some(Arc::new(f));
    }

    /// Syncs the commit log, consume queues and index and writes the checkpoint now.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint_now()
    }

    /// Applies retention as of `now_ms`: deletes sealed segments older than the retention
    /// age, and the oldest one if the disk is fuller than allowed.
    pub fn run_retention(&self, now_ms: i64) -> Result<RetentionReport> {
        self.inner.run_retention(now_ms)
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
        self.inner.commit_log.flush()?;
        self.inner.checkpoint_now()?;
        self.inner.offsets.persist()?;
        let marker = self.inner.config.data_dir.join(RUNNING_MARKER);
        fs::remove_file(&marker).ctx("remove marker", &marker)?;
        fsutil::sync_dir(&self.inner.config.data_dir)?;
        // Appends are refused from here on: the folder is free for another store.
        self.inner.lock.lock().take();
        info!(data_dir = %self.inner.config.data_dir.display(), "store closed cleanly");
        Ok(())
    }

    fn start_threads(&self) -> Result<()> {
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
                    .run(|| inner.commit_log.flush().map_err(|e| e.to_string())),
                FlushMode::Async => {
                    while !inner.shutdown.sleep(inner.config.async_flush_interval()) {
                        if let Err(e) = inner.commit_log.flush() {
                            error!(error = %e, "async flush failed");
                        }
                    }
                }
            }),
        )?);
        let inner = Arc::clone(&self.inner);
        threads.push(spawn(
            "weir-checkpoint",
            Box::new(move || {
                while !inner.shutdown.sleep(inner.config.checkpoint_interval()) {
                    if let Err(e) = inner.checkpoint_now() {
                        error!(error = %e, "checkpoint failed");
                    }
                    if let Err(e) = inner.offsets.persist() {
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
                    while !inner.shutdown.sleep(std::time::Duration::from_millis(20)) {
                        if let Err(e) = inner.commit_log.prepare_ahead() {
                            error!(error = %e, "preparing the next commit log segment failed");
                        }
                    }
                }),
            )?);
        }
        let inner = Arc::clone(&self.inner);
        threads.push(spawn(
            "weir-retention",
            Box::new(move || {
                while !inner
                    .shutdown
                    .sleep(inner.config.retention_check_interval())
                {
                    if let Err(e) = inner.run_retention(now_ms()) {
                        error!(error = %e, "retention failed");
                    }
                }
            }),
        )?);
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

impl Inner {
    fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.queues.read().get(topic)?.get(&queue_id).cloned()
    }

    fn queue_or_create(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.queue(topic, queue_id) {
            return Ok(q);
        }
        let mut queues = self.queues.write();
        let per_topic = queues.entry(topic.to_owned()).or_default();
        if let Some(q) = per_topic.get(&queue_id) {
            return Ok(Arc::clone(q));
        }
        let dir = queue_dir(&self.config.data_dir, topic, queue_id);
        let q = Arc::new(ConsumeQueue::open(
            &dir,
            self.config.consume_queue_segment_entries,
            self.commit_log.min_offset(),
        )?);
        per_topic.insert(queue_id, Arc::clone(&q));
        Ok(q)
    }

    /// Makes a record findable: its consume queue entry and its keys. The one place both
    /// appends and recovery build derived data from a record.
    fn dispatch<'k>(
        &self,
        cq: &ConsumeQueue,
        queue_offset: u64,
        entry: CqEntry,
        topic: &str,
        keys: impl Iterator<Item = &'k str>,
        store_ts: i64,
    ) -> Result<()> {
        cq.put(queue_offset, entry)?;
        self.index
            .put(topic, keys, entry.commit_log_offset, store_ts)
    }

    /// Appends and dispatches `msgs`; returns their results and, in sync mode, the offset
    /// the caller must wait to be durable.
    fn append(&self, msgs: &[Message]) -> Result<(Vec<PutResult>, Option<u64>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::ShutDown);
        }
        let lens = msgs
            .iter()
            .map(|m| m.encoded_len().map_err(StoreError::from))
            .collect::<Result<Vec<_>>>()?;
        let store_host = record::canonical_addr(self.config.store_host);
        let mut results = Vec::with_capacity(msgs.len());
        let mut arrivals = Vec::new();
        let end = {
            let mut w = self.commit_log.lock_writer();
            let now = now_ms();
            for (msg, &len) in msgs.iter().zip(&lens) {
                let dispatched = sys_flag::is_dispatched(msg.sys_flag);
                let cq = if dispatched {
                    Some(self.queue_or_create(&msg.topic, msg.queue_id)?)
                } else {
                    None
                };
                let queue_offset = cq.as_ref().map_or(0, |q| q.max_offset());
                let offset = w.append(len, |offset, buf| {
                    let a = Assigned {
                        queue_offset,
                        commit_log_offset: offset,
                        store_timestamp: now,
                        store_host,
                    };
                    record::encode_into(msg, &a, buf)
                })?;
                if let Some(cq) = &cq {
                    let entry = CqEntry {
                        commit_log_offset: offset,
                        size: len as u32,
                        tag_hash: tag_hash(&msg.tags),
                    };
                    let keys = msg.keys.iter().map(String::as_str);
                    self.dispatch(cq, queue_offset, entry, &msg.topic, keys, now)?;
                    arrivals.push((queue_offset + 1, &msg.topic, msg.queue_id));
                }
                self.dispatched
                    .store(offset + len as u64, Ordering::Release);
                results.push(PutResult {
                    commit_log_offset: offset,
                    size: len as u32,
                    queue_offset,
                    store_timestamp: now,
                    msg_id: MessageId { store_host, offset },
                    flush: FlushStatus::Pending,
                });
            }
            w.position()
        };
        if let Some(listener) = self.arrival.read().clone() {
            for (max, topic, queue_id) in arrivals {
                listener(topic, queue_id, max);
            }
        }
        let wait_for = match self.config.flush_mode {
            FlushMode::Sync if !results.is_empty() => Some(end),
            _ => None,
        };
        Ok((results, wait_for))
    }

    /// Brings consume queues and the index in line with the commit log: drop what they
    /// hold from the checkpoint on, validate records from there to the first invalid one
    /// (the end), re-dispatch each, and cut the log there.
    fn recover(&self, checkpoint: Option<Checkpoint>, clean: bool) -> Result<RecoveryReport> {
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
        let scan = self
            .commit_log
            .recover(from, clean_end, |v: &RecordView<'_>| {
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
                self.dispatch(&cq, qo, entry, v.topic(), v.keys(), v.store_timestamp())
            })?;
        if anomalies > 0 {
            warn!(
                anomalies,
                "replayed records disagreed with their consume queues (gaps or repeats); queues keep the log's offsets"
            );
        }
        if let Some(cp) = checkpoint
            && scan.end < cp.commit_log_flushed
        {
            error!(
                end = scan.end,
                durable = cp.commit_log_flushed,
                reason = scan.stop_reason,
                "commit log damaged below its durable point: records after the damage are dropped"
            );
        }
        self.dispatched.store(scan.end, Ordering::Release);
        let report = RecoveryReport {
            clean_shutdown: clean,
            records_replayed: scan.records,
            commit_log_end: scan.end,
            stop_reason: scan.stop_reason,
        };
        self.checkpoint_now()?;
        if !clean {
            warn!(
                checkpoint_written_at_ms = checkpoint.map_or(0, |c| c.written_at),
                replayed = scan.records,
                end = scan.end,
                stop = scan.stop_reason,
                ms = started.elapsed().as_millis() as u64,
                "recovered after an unclean stop"
            );
        } else {
            info!(end = scan.end, "store opened after a clean stop");
        }
        Ok(report)
    }

    /// Syncs queues and index, then records what is durable.
    fn checkpoint_now(&self) -> Result<()> {
        // Every record below this has its queue entry and keys in the files synced next.
        let dispatched = self.dispatched.load(Ordering::Acquire);
        let queues: Vec<Arc<ConsumeQueue>> = self
            .queues
            .read()
            .values()
            .flat_map(|qs| qs.values().cloned())
            .collect();
        for q in queues {
            q.flush()?;
            q.release_sealed_pages();
        }
        self.index.flush()?;
        // A no-op in sync mode under load (group commit keeps up), but it also covers an
        // idle store, whose checkpoint must not stay behind.
        let flushed = self.commit_log.flush()?;
        self.commit_log.release_cold_pages(HOT_TAIL);
        let cp = Checkpoint {
            commit_log_flushed: flushed,
            logic_flushed: dispatched.min(flushed),
            written_at: now_ms(),
        };
        self.checkpoint.lock().write(&cp)
    }

    fn run_retention(&self, now: i64) -> Result<RetentionReport> {
        let mut deleted = 0usize;
        let retention = self.config.retention_ms();
        let mut pressure_deleted = false;
        loop {
            let sealed = self.commit_log.sealed_segments();
            let Some(&(_, sealed_at)) = sealed.first() else {
                break;
            };
            let expired = sealed_at.is_some_and(|t| now.saturating_sub(t) > retention);
            // Under disk pressure delete one segment per pass: space held by readers'
            // maps only frees when they let go, so the ratio lags the deletions.
            let pressure =
                !pressure_deleted && self.disk_used_ratio()? > self.config.disk_max_used_ratio;
            if !expired && !pressure {
                break;
            }
            if self.commit_log.delete_oldest_segment()?.is_none() {
                break;
            }
            pressure_deleted |= !expired;
            deleted += 1;
        }
        let min = self.commit_log.min_offset();
        if deleted > 0 {
            let queues: Vec<Arc<ConsumeQueue>> = self
                .queues
                .read()
                .values()
                .flat_map(|qs| qs.values().cloned())
                .collect();
            for q in queues {
                q.trim_below(min)?;
            }
            self.index.trim_below(min)?;
        }
        Ok(RetentionReport {
            segments_deleted: deleted,
            commit_log_min_offset: min,
        })
    }

    fn disk_used_ratio(&self) -> Result<f64> {
        let dir = self.commit_log.dir();
        let st = rustix::fs::statvfs(dir)
            .map_err(std::io::Error::from)
            .ctx("stat file system", dir)?;
        if st.f_blocks == 0 {
            return Ok(0.0);
        }
        Ok(1.0 - st.f_bavail as f64 / st.f_blocks as f64)
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
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: root.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(e).ctx("lock data folder", &path),
    }
}

fn queue_dir(root: &Path, topic: &str, queue_id: u32) -> PathBuf {
    root.join(CONSUME_QUEUE_DIR)
        .join(topic)
        .join(queue_id.to_string())
}

fn open_queues(
    dir: &Path,
    config: &StoreConfig,
    log_min: u64,
) -> Result<HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>> {
    let mut out: HashMap<String, HashMap<u32, Arc<ConsumeQueue>>> = HashMap::new();
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
