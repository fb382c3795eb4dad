//! Appending: placing a batch of messages in the commit log and making each findable
//! (its consume queue entry and keys) under the commit log's writer lock.
//!
//! A caller that appends to a queue often keeps its [`QueueHandle`] and appends through it
//! (`append_to`), which skips the lookup of the queue by name.
//!
//! Invariant: a batch is refused whole or written whole. Everything it needs (its queues,
//! their segment files, the commit log segments its records go in, room on the disk) is
//! made ready before the first byte is written; a failure after that point (an I/O error
//! writing a queue entry) stops writes for good, since only recovery can then make the
//! queue agree with the log again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smallvec::SmallVec;
use tracing::error;

use crate::commitlog::CommitLogWriter;
use crate::config::FlushMode;
use crate::consume_queue::{ConsumeQueue, CqEntry};
use crate::disk;
use crate::error::{Result, StoreError};
use crate::flush::{Durable, TicketFuture};
use crate::fsutil::now_ms;
use crate::store::{CONSUME_QUEUE_DIR, Inner, MessageStore};
use weir_protocol::names::property;
use weir_protocol::record::{self, Assigned, Message, MessageId, sys_flag, tag_hash};

/// One item per message of an append: held inline for a single send, which is most sends
/// (four lists of one item had cost four allocations a send).
type PerMessage<T> = SmallVec<[T; 1]>;

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

/// Messages appended (readable already) and, in sync mode, the wait for them to be on
/// disk. See [`MessageStore::append`].
pub struct Appended {
    results: Vec<PutResult>,
    durable: Option<TicketFuture>,
}

impl Appended {
    /// Where each message went (`flush` is `Pending` until `wait_durable` says more).
    pub fn results(&self) -> &[PutResult] {
        &self.results
    }

    /// Whether `wait_durable` has anything to wait for (sync mode).
    pub fn needs_wait(&self) -> bool {
        self.durable.is_some()
    }

    /// Sync mode: resolves once the messages are on disk, or with the error of the sync
    /// that should have put them there. At once in async mode. Unbounded: the caller
    /// bounds it (`sync_flush_timeout_ms`) and reports [`FlushStatus::TimedOut`] past it.
    pub async fn wait_durable(&mut self) -> Result<()> {
        if let Some(ticket) = self.durable.as_mut() {
            match ticket.await {
                Durable::Yes => {}
                Durable::Failed(e) => return Err(StoreError::FlushFailed(e)),
            }
            self.durable = None;
            self.results
                .iter_mut()
                .for_each(|r| r.flush = FlushStatus::Durable);
        }
        Ok(())
    }

    /// The results, each marked with `flush` unless already known durable.
    pub fn into_results(mut self, flush: FlushStatus) -> Vec<PutResult> {
        if self.durable.is_some() {
            self.results.iter_mut().for_each(|r| r.flush = flush);
        }
        self.results
    }
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

impl MessageStore {
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

    /// Appends messages in order (a short memory copy under one lock) for async callers,
    /// and returns them with the wait for their durability, which the caller bounds: see
    /// [`Appended::wait_durable`]. An invalid message, a full disk or a store that stopped
    /// writing refuses the whole batch before anything is written.
    pub fn append(&self, msgs: &[Message]) -> Result<Appended> {
        let (results, wait_for) = self.inner.append(msgs)?;
        let durable = wait_for.map(|end| TicketFuture(self.inner.group_commit.request(end)));
        Ok(Appended { results, durable })
    }

    /// The queue `queue_id` of `topic`, made (folder, first segment) if it does not exist,
    /// for a caller that appends to it often: see [`MessageStore::append_to`].
    ///
    /// `topic`: the caller's own copy of the name, if it has one to share: each message
    /// appended is checked against those bytes.
    pub fn queue_handle(&self, topic: impl Into<Arc<str>>, queue_id: u32) -> Result<QueueHandle> {
        let topic = topic.into();
        let queue = self.inner.queue_or_reserve(&topic, queue_id)?;
        Ok(QueueHandle {
            topic,
            queue_id,
            queue,
        })
    }

    /// [`MessageStore::append`] of messages that go to `queue`: they skip the lookup of
    /// their queue by name. A message of another topic or queue id is looked up as usual;
    /// one to a queue deleted since the handle was made goes to its new queue.
    pub fn append_to(&self, queue: &QueueHandle, msgs: &[Message]) -> Result<Appended> {
        let (results, wait_for) = self.inner.append_with(msgs, Some(queue))?;
        let durable = wait_for.map(|end| TicketFuture(self.inner.group_commit.request(end)));
        Ok(Appended { results, durable })
    }

    /// `append`, then an unbounded wait for durability (sync mode).
    pub async fn put_batch_async(&self, msgs: &[Message]) -> Result<Vec<PutResult>> {
        let mut appended = self.append(msgs)?;
        appended.wait_durable().await?;
        Ok(appended.into_results(FlushStatus::Durable))
    }
}

/// A consume queue looked up once by a caller that appends to it often
/// ([`MessageStore::queue_handle`]): with 1,024 busy topics, the lookup of a send's queue
/// by name (two tables, the name's bytes) was a tenth of the broker's time, most of it
/// cache misses. Its topic's name is kept to check each message against.
#[derive(Clone)]
pub struct QueueHandle {
    topic: Arc<str>,
    queue_id: u32,
    queue: Arc<ConsumeQueue>,
}

impl QueueHandle {
    /// Whether `msg` goes to this queue.
    pub fn holds(&self, msg: &Message) -> bool {
        msg.queue_id == self.queue_id && *msg.topic == *self.topic
    }

    /// Asks the CPU for the queue's memory an append touches, for a caller with other
    /// work to do before it appends (the lines then come in meanwhile). A hint.
    pub fn prefetch(&self) {
        self.queue.prefetch_struct();
    }
}

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandle")
            .field("topic", &self.topic)
            .field("queue_id", &self.queue_id)
            .finish_non_exhaustive()
    }
}

/// Where a dispatched message's entry goes: its queue and logical offset.
type QueueSlot = (Arc<ConsumeQueue>, u64);

impl Inner {
    pub(crate) fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.queues.read().get(topic)?.get(&queue_id).cloned()
    }

    pub(crate) fn queue_or_create(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>> {
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
        self.file_systems.track(&q)?;
        per_topic.insert(queue_id, Arc::clone(&q));
        Ok(q)
    }

    /// Makes a record findable: its consume queue entry and its keys. The one place both
    /// appends and recovery build derived data from a record.
    ///
    /// An index file that cannot be made (a full disk) costs lookups by key of this record,
    /// not the record: it is logged and the entry stays in its queue.
    pub(crate) fn dispatch<'k>(
        &self,
        cq: &ConsumeQueue,
        queue_offset: u64,
        entry: CqEntry,
        topic: &str,
        keys: impl Iterator<Item = &'k str>,
        store_ts: i64,
    ) -> Result<()> {
        cq.put(queue_offset, entry)?;
        if let Err(e) = self
            .index
            .put(topic, keys, entry.commit_log_offset, store_ts)
        {
            let mut last = self.index_error_logged.lock();
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                *last = Some(Instant::now());
                error!(error = %e, offset = entry.commit_log_offset, "indexing keys failed: the message is stored and consumable, but lookups by key will miss it");
            }
        }
        Ok(())
    }

    /// Appends and dispatches `msgs`; returns their results and, in sync mode, the offset
    /// the caller must wait to be durable.
    ///
    /// First everything the batch needs is made ready: its queues, the queue segments its
    /// entries go in, and the commit log segments its records go in (if the disk may take
    /// them). Only then is anything written, so the batch is refused whole or written whole.
    pub(crate) fn append(&self, msgs: &[Message]) -> Result<(Vec<PutResult>, Option<u64>)> {
        self.append_with(msgs, None)
    }

    /// `append`, with the queue of the messages that match `known` already looked up.
    pub(crate) fn append_with(
        &self,
        msgs: &[Message],
        known: Option<&QueueHandle>,
    ) -> Result<(Vec<PutResult>, Option<u64>)> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::ShutDown);
        }
        if let Some(k) = known {
            // Its segment's lines come in while the messages are measured.
            k.queue.prefetch_next_put();
        }
        self.health.check_writable()?;
        self.disk.check_append()?;
        let lens = msgs
            .iter()
            .map(|m| m.encoded_len().map_err(StoreError::from))
            .collect::<Result<PerMessage<_>>>()?;
        let store_host = record::canonical_addr(self.config.store_host);
        // Each message's queue, looked up (a new one made: folders, files, a directory
        // sync) before the writer lock, so that no other append waits on that.
        let mut queues = self.queues_of(msgs, known)?;
        let mut results = Vec::with_capacity(msgs.len());
        let mut arrivals: PerMessage<(u64, &str, u32)> = SmallVec::new();
        let end = {
            let mut w = self.commit_log.lock_writer();
            // A queue whose topic was deleted since the lookup: a new one (the delete held
            // this lock until its folder was gone).
            for (q, msg) in queues.iter_mut().zip(msgs) {
                if q.as_ref().is_some_and(|cq| cq.is_destroyed()) {
                    let fresh = self.queue_or_create(&msg.topic, msg.queue_id)?;
                    fresh.reserve(fresh.max_offset())?;
                    *q = Some(fresh);
                }
            }
            let targets =
                self.prepare(queues, &lens, &w)
                    .map_err(|e| match disk::is_out_of_space(&e) {
                        true => self.disk.out_of_space(&e),
                        false => e,
                    })?;
            let now = now_ms();
            for ((msg, &len), target) in msgs.iter().zip(&lens).zip(targets) {
                let queue_offset = target.as_ref().map_or(0, |(_, at)| *at);
                let offset = w.append(len, |offset, buf| {
                    let a = Assigned {
                        queue_offset,
                        commit_log_offset: offset,
                        store_timestamp: now,
                        store_host,
                    };
                    record::encode_into(msg, &a, buf)
                })?;
                if let Some((cq, _)) = &target {
                    let entry = CqEntry {
                        commit_log_offset: offset,
                        size: len as u32,
                        tag_hash: tag_hash(&msg.tags),
                    };
                    // A RocketMQ producer's own message id, and a retry or dead-letter
                    // copy's original id, are found like keys.
                    let keys = msg
                        .keys
                        .iter()
                        .map(String::as_str)
                        .chain(property::INDEXED.iter().filter_map(|p| msg.property(p)));
                    if let Err(e) = self.dispatch(cq, queue_offset, entry, &msg.topic, keys, now) {
                        // The record is in the log but not in its queue: only recovery
                        // can make them agree again.
                        self.health.fail("consume queue write", &e);
                        return Err(e);
                    }
                    // A run of messages to one queue (a batch) is announced once, at its end.
                    match arrivals.last_mut() {
                        Some((max, topic, queue_id))
                            if *queue_id == msg.queue_id && *topic == msg.topic.as_str() =>
                        {
                            *max = queue_offset + 1;
                        }
                        _ => arrivals.push((queue_offset + 1, msg.topic.as_str(), msg.queue_id)),
                    }
                }

                results.push(PutResult {
                    commit_log_offset: offset,
                    size: len as u32,
                    queue_offset,
                    store_timestamp: now,
                    msg_id: MessageId { store_host, offset },
                    flush: FlushStatus::Pending,
                });
            }
            w.commit();
            // Checkpoints cover the batch whole or not at all (see `CommitLogWriter::commit`).
            self.dispatched.store(w.position(), Ordering::Release);
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

    /// The queue, made with its first segment if it does not exist.
    pub(crate) fn queue_or_reserve(&self, topic: &str, queue_id: u32) -> Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.queue(topic, queue_id) {
            return Ok(q);
        }
        let q = self.queue_or_create(topic, queue_id)?;
        q.reserve(q.max_offset())?;
        Ok(q)
    }

    /// Each message's queue (`None` if it is not dispatched), made when new with its first
    /// segment: `known`'s for the messages it holds, otherwise one lookup per run of
    /// messages to the same queue.
    fn queues_of(
        &self,
        msgs: &[Message],
        known: Option<&QueueHandle>,
    ) -> Result<PerMessage<Option<Arc<ConsumeQueue>>>> {
        let mut queues: PerMessage<Option<Arc<ConsumeQueue>>> = SmallVec::with_capacity(msgs.len());
        let mut last: Option<(&Message, Arc<ConsumeQueue>)> = None;
        for msg in msgs {
            if !sys_flag::is_dispatched(msg.sys_flag) {
                queues.push(None);
                continue;
            }
            let cq = match (&last, known) {
                (Some((m, q)), _) if m.queue_id == msg.queue_id && m.topic == msg.topic => {
                    Arc::clone(q)
                }
                // Its lines were asked for when this append started.
                (_, Some(k)) if k.holds(msg) => Arc::clone(&k.queue),
                _ => {
                    let q = self.queue_or_reserve(&msg.topic, msg.queue_id)?;
                    // Its lines come in while this append waits for the writer lock and
                    // encodes, instead of inside `put`, where every other appender waits.
                    q.prefetch_next_put();
                    q
                }
            };
            last = Some((msg, Arc::clone(&cq)));
            queues.push(Some(cq));
        }
        Ok(queues)
    }

    /// For each message, its queue and queue offset (`None` if it is not dispatched), with
    /// the queue segment for that offset made; then the commit log segments the batch needs.
    fn prepare(
        &self,
        queues: PerMessage<Option<Arc<ConsumeQueue>>>,
        lens: &[usize],
        w: &CommitLogWriter<'_>,
    ) -> Result<PerMessage<Option<QueueSlot>>> {
        let mut targets: PerMessage<Option<QueueSlot>> = SmallVec::with_capacity(queues.len());
        for cq in queues {
            let Some(cq) = cq else {
                targets.push(None);
                continue;
            };
            // After an earlier message of the batch to the same queue, or at its end.
            let at = targets
                .iter()
                .rev()
                .flatten()
                .find(|(q, _)| Arc::ptr_eq(q, &cq))
                .map_or_else(|| cq.max_offset(), |(_, at)| at + 1);
            cq.reserve(at)?;
            targets.push(Some((cq, at)));
        }
        w.reserve(lens, |bytes| self.disk.check_growth(bytes))?;
        Ok(targets)
    }
}

pub(crate) fn queue_dir(root: &Path, topic: &str, queue_id: u32) -> PathBuf {
    root.join(CONSUME_QUEUE_DIR)
        .join(topic)
        .join(queue_id.to_string())
}
