//! The weir broker: stores what producers send, serves pulls (with long polling), keeps
//! consumer offsets and topic configs, knows its clients, and registers with name servers.
//!
//! Request handling is plain Rust over [`weir_store::MessageStore`]; the wire protocol
//! ([`weir_protocol`]) is the adapter in front of it.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod clients;
mod config;
pub mod filter;
mod holds;
mod locks;
mod schedule;
pub mod subscription;
pub mod topics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use weir_protocol::broker::{
    ConsumeStats, ConsumerConnections, ConsumerList, ConsumerOffset, ConsumerSendMsgBack,
    CreateTopic, DeleteTopic, GetConsumeStats, GetConsumerConnections, GetConsumerList,
    GetQueueOffsets, GetTopicStats, Heartbeat, LockBatchMq, LockedQueues, MessageModel,
    NotifyConsumerIdsChanged, OffsetAnswer, PullMessage, PullResult, PullStatus,
    QueryConsumerOffset, QueryMessageByKey, QueueOffsets, QueueProgress, RecordCount,
    SearchOffsetByTimestamp, SendBatch, SendBatchResult, SendMessage, SendResult, SendStatus,
    SentBack, TopicStats, UnlockBatchMq, UnregisterClient, UpdateConsumerOffset, ViewMessageById,
};
use weir_protocol::filter::{
    FilterRemoved, FilterUploaded, ListFilters, RemoveFilter, UploadFilter,
};
use weir_protocol::names::{self, SCHEDULE_TOPIC, property};
use weir_protocol::net::BoxFuture;
use weir_protocol::record::{self, NO_PREPARED_TX, pos, sys_flag};
use weir_protocol::route::{
    GetAllTopics, RegisterBroker, TopicConfig, TopicList, UnregisterBroker, perm,
};
use weir_protocol::{
    ConnConfig, Connection, ErrorCode, Handler, Message, MessageId, NoHandler, Reply, Request,
    RequestCode, Server,
};
use weir_store::{FlushStatus, GetStatus, MessageStore, ReadLimits, StoreError, StoredRecord};

pub use config::BrokerConfig;
use filter::{BatchContext, FilterError, FilterRegistry, FilterRuntime, LoadedFilter};
use subscription::TagFilter;
use topics::{SYSTEM_PREFIX, TopicManager, validate_group_name, validate_topic_name};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("topic configuration: {0}")]
    Topics(String),
    #[error(transparent)]
    Filters(#[from] FilterError),
}

/// Most messages one pull returns.
const MAX_PULL_MSGS: u32 = 1024;
/// Most record bytes one pull returns.
const PULL_MAX_BYTES: usize = 4 << 20;
/// Longest a pull with a filter keeps reading before it answers with what it has (so a slow
/// filter's pulls still answer well within the clients' request timeout).
const FILTERED_PULL_BUDGET: Duration = Duration::from_secs(1);
/// Longest a pull may be held.
const MAX_SUSPEND: Duration = Duration::from_secs(60);
const NAMESRV_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a membership notice may wait for room on a client's connection.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Broker {
    config: BrokerConfig,
    addr: String,
    store: Arc<MessageStore>,
    topics: TopicManager,
    clients: clients::ClientRegistry,
    holds: Arc<holds::PullHolds>,
    topics_changed: watch::Sender<u64>,
    filters: Arc<FilterRegistry>,
    levels: schedule::DelayLevels,
    locks: locks::QueueLocks,
}

type Outcome<T> = Result<T, Reply>;

fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::error(code, message)
}

fn store_error(e: StoreError) -> Reply {
    match e {
        StoreError::InvalidMessage(m) => err(ErrorCode::MessageIllegal, m),
        e @ StoreError::MessageTooLarge { .. } => err(ErrorCode::MessageIllegal, e.to_string()),
        e @ StoreError::ShutDown => err(ErrorCode::ServiceNotAvailable, e.to_string()),
        e @ StoreError::DiskFull { .. } => err(ErrorCode::DiskFull, e.to_string()),
        e @ (StoreError::WritesStopped { .. } | StoreError::FlushFailed(_)) => {
            err(ErrorCode::WritesStopped, e.to_string())
        }
        e => err(ErrorCode::SystemError, e.to_string()),
    }
}

fn to_reply<T: weir_protocol::bincode::Encode>(r: Outcome<(T, Bytes)>) -> Reply {
    match r {
        Ok((v, body)) => Reply::ok_with_body(&v, body),
        Err(e) => e,
    }
}

fn concat(records: impl Iterator<Item = impl AsRef<[u8]>>) -> Bytes {
    let mut out = BytesMut::new();
    for r in records {
        out.extend_from_slice(r.as_ref());
    }
    out.freeze()
}

impl Broker {
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn store(&self) -> &MessageStore {
        &self.store
    }

    /// Pulls being held (long polling) right now.
    pub fn held_pulls(&self) -> usize {
        self.holds.held()
    }

    fn registration(&self) -> RegisterBroker {
        let mut topics = self.topics.all();
        // While the store refuses writes (disk full, failed sync), producers are routed
        // elsewhere; consumers keep reading here.
        if self.store.write_refusal().is_some() {
            topics.iter_mut().for_each(|t| t.perm &= !perm::WRITE);
        }
        RegisterBroker {
            cluster: self.config.cluster.clone(),
            broker_name: self.config.broker_name.clone(),
            broker_id: self.config.broker_id,
            addr: self.addr.clone(),
            topics,
        }
    }

    fn topics_updated(&self) {
        self.topics_changed.send_modify(|v| *v += 1);
    }

    /// The topic for a send: created on first use when allowed.
    fn topic_for_send(&self, name: &str) -> Outcome<TopicConfig> {
        validate_topic_name(name).map_err(|m| err(ErrorCode::InvalidParameter, m))?;
        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        if !self.config.auto_create_topic {
            return Err(err(
                ErrorCode::TopicNotExist,
                format!(
                    "topic {name:?} does not exist and auto-create is off; create it first (weir topic create {name})"
                ),
            ));
        }
        if name.starts_with(SYSTEM_PREFIX) {
            return Err(err(
                ErrorCode::NoPermission,
                format!("topic {name:?} is a system topic; it is not created by sending"),
            ));
        }
        let t = self
            .topics
            .get_or_create(name, self.config.default_topic_queues)
            .map_err(|m| err(ErrorCode::SystemError, m))?;
        info!(topic = name, queues = t.write_queues, "topic auto-created");
        self.topics_updated();
        Ok(t)
    }

    fn existing_topic(&self, name: &str) -> Outcome<TopicConfig> {
        self.topics.get(name).ok_or_else(|| {
            err(
                ErrorCode::TopicNotExist,
                format!(
                    "topic {name:?} does not exist on broker {}",
                    self.config.broker_name
                ),
            )
        })
    }

    fn check_send_queue(t: &TopicConfig, queue_id: u32) -> Outcome<()> {
        if t.perm & perm::WRITE == 0 {
            return Err(err(
                ErrorCode::NoPermission,
                format!("topic {:?} is not writable", t.name),
            ));
        }
        if queue_id >= t.write_queues {
            return Err(err(
                ErrorCode::InvalidParameter,
                format!(
                    "queue {queue_id} does not exist: topic {:?} has {} write queues",
                    t.name, t.write_queues
                ),
            ));
        }
        Ok(())
    }

    fn check_body(&self, len: usize) -> Outcome<()> {
        if len > self.config.max_message_size {
            return Err(err(
                ErrorCode::MessageIllegal,
                format!(
                    "message body of {len} bytes exceeds the maximum of {} bytes",
                    self.config.max_message_size
                ),
            ));
        }
        Ok(())
    }

    /// Stores `msgs`; in sync flush mode waits for them to be on disk, at most
    /// `sync_flush_timeout_ms`, past which they are reported `FlushDiskTimeout` (stored, and
    /// synced later: the producer may retry and so duplicate).
    async fn store_messages(&self, msgs: &[Message]) -> Outcome<Vec<SendResult>> {
        let mut appended = self.store.append(msgs).map_err(store_error)?;
        let mut flush = FlushStatus::Pending;
        if appended.needs_wait() {
            let limit = Duration::from_millis(self.store.config().sync_flush_timeout_ms);
            flush = match tokio::time::timeout(limit, appended.wait_durable()).await {
                Ok(Ok(())) => FlushStatus::Durable,
                Ok(Err(e)) => return Err(store_error(e)),
                Err(_) => FlushStatus::TimedOut,
            };
        }
        let results = appended.into_results(flush);
        Ok(results
            .into_iter()
            .map(|r| SendResult {
                status: match r.flush {
                    FlushStatus::TimedOut => SendStatus::FlushDiskTimeout,
                    FlushStatus::Durable | FlushStatus::Pending => SendStatus::Ok,
                },
                msg_id: r.msg_id.to_string(),
                queue_id: 0,
                queue_offset: r.queue_offset,
            })
            .collect())
    }

    async fn send(
        &self,
        req: SendMessage,
        body: Bytes,
        peer: SocketAddr,
    ) -> Outcome<(SendResult, Bytes)> {
        self.check_body(body.len())?;
        let t = self.topic_for_send(&req.topic)?;
        Self::check_send_queue(&t, req.queue_id)?;
        let mut msg = Message {
            topic: req.topic,
            queue_id: req.queue_id,
            flag: req.flag,
            sys_flag: req.sys_flag,
            born_timestamp: req.born_timestamp,
            born_host: peer,
            tags: req.tags,
            keys: req.keys,
            properties: req.properties,
            body: body.to_vec(),
            reconsume_times: req.reconsume_times,
            prepared_tx_offset: NO_PREPARED_TX,
        };
        schedule::divert_if_delayed(&mut msg, &self.levels)
            .map_err(|m| err(ErrorCode::MessageIllegal, m))?;
        let mut r = self.store_messages(std::slice::from_ref(&msg)).await?;
        let mut result = r
            .pop()
            .ok_or_else(|| err(ErrorCode::SystemError, "store returned no result"))?;
        result.queue_id = req.queue_id;
        Ok((result, Bytes::new()))
    }

    async fn send_batch(
        &self,
        req: SendBatch,
        body: Bytes,
        peer: SocketAddr,
    ) -> Outcome<(SendBatchResult, Bytes)> {
        let total: u64 = req.messages.iter().map(|m| u64::from(m.body_len)).sum();
        if total != body.len() as u64 {
            return Err(err(
                ErrorCode::BadRequest,
                format!(
                    "batch declares {total} body bytes but carries {}",
                    body.len()
                ),
            ));
        }
        if req.messages.is_empty() {
            return Err(err(ErrorCode::BadRequest, "empty batch"));
        }
        let t = self.topic_for_send(&req.topic)?;
        Self::check_send_queue(&t, req.queue_id)?;
        let mut msgs = Vec::with_capacity(req.messages.len());
        let mut at = 0usize;
        for m in req.messages {
            let len = m.body_len as usize;
            self.check_body(len)?;
            let mut msg = Message {
                topic: req.topic.clone(),
                queue_id: req.queue_id,
                flag: m.flag,
                sys_flag: 0,
                born_timestamp: m.born_timestamp,
                born_host: peer,
                tags: m.tags,
                keys: m.keys,
                properties: m.properties,
                body: body[at..at + len].to_vec(),
                reconsume_times: 0,
                prepared_tx_offset: NO_PREPARED_TX,
            };
            schedule::divert_if_delayed(&mut msg, &self.levels)
                .map_err(|m| err(ErrorCode::MessageIllegal, m))?;
            msgs.push(msg);
            at += len;
        }
        let mut results = self.store_messages(&msgs).await?;
        results.iter_mut().for_each(|r| r.queue_id = req.queue_id);
        Ok((SendBatchResult { results }, Bytes::new()))
    }

    /// A system topic of one read/write queue (retry, dead-letter), created if absent;
    /// routed at once when created.
    fn system_topic(&self, name: &str) -> Result<TopicConfig, String> {
        let (t, created) = self.topics.create_if_absent(TopicConfig {
            name: name.to_owned(),
            read_queues: 1,
            write_queues: 1,
            perm: perm::READ_WRITE,
        })?;
        if created {
            info!(topic = name, "system topic created");
            self.topics_updated();
        }
        Ok(t)
    }

    /// Stores a copy of a message a consumer could not process on the group's retry
    /// topic (after a delay) or, past its retries or when asked, its dead-letter topic.
    async fn send_back(&self, req: ConsumerSendMsgBack) -> Outcome<(SentBack, Bytes)> {
        validate_group_name(&req.group).map_err(|m| err(ErrorCode::InvalidParameter, m))?;
        let rec = self
            .store
            .get_by_offset(req.commit_log_offset)
            .map_err(|e| err(ErrorCode::QueryNotFound, format!("cannot send back: {e}")))?;
        let view = rec
            .view()
            .map_err(|e| err(ErrorCode::SystemError, format!("cannot send back: {e}")))?;
        if view.topic() == SCHEDULE_TOPIC {
            return Err(err(
                ErrorCode::InvalidParameter,
                format!(
                    "commit log offset {} holds a message waiting for its delay, not one delivered to a consumer",
                    req.commit_log_offset
                ),
            ));
        }
        let mut msg = view.to_message();
        // A retry of a retry keeps naming the topic the message was first sent to.
        let origin_topic = match msg.property(property::RETRY_TOPIC) {
            Some(t) if msg.topic.starts_with(SYSTEM_PREFIX) => t.to_owned(),
            _ => msg.topic.clone(),
        };
        let origin_id = msg
            .property(property::ORIGIN_MESSAGE_ID)
            .map_or_else(|| view.message_id().to_string(), str::to_owned);
        msg.remove_properties(&schedule::SCHEDULING_PROPERTIES);
        msg.remove_properties(&[property::RETRY_TOPIC, property::ORIGIN_MESSAGE_ID]);
        msg.properties
            .push((property::RETRY_TOPIC.into(), origin_topic));
        msg.properties
            .push((property::ORIGIN_MESSAGE_ID.into(), origin_id));
        let delivered = view.reconsume_times();
        msg.reconsume_times = delivered.saturating_add(1);
        msg.sys_flag &= !sys_flag::TX_MASK;
        msg.prepared_tx_offset = NO_PREPARED_TX;
        let dead = req.delay_level < 0 || msg.reconsume_times > req.max_reconsume_times;
        let (topic, what) = if dead {
            (names::dlq_topic(&req.group), "dead-letter")
        } else {
            (names::retry_topic(&req.group), "retry")
        };
        validate_topic_name(&topic).map_err(|m| {
            err(
                ErrorCode::InvalidParameter,
                format!("group {:?} cannot have a {what} topic: {m}", req.group),
            )
        })?;
        self.system_topic(&topic)
            .map_err(|m| err(ErrorCode::SystemError, m))?;
        msg.topic = topic.clone();
        msg.queue_id = 0;
        if !dead {
            let level = match req.delay_level {
                0 => delivered.saturating_add(3),
                n => n.unsigned_abs(),
            };
            schedule::divert(&mut msg, self.levels.clamp(level));
        }
        let r = self
            .store_messages(std::slice::from_ref(&msg))
            .await?
            .pop()
            .ok_or_else(|| err(ErrorCode::SystemError, "store returned no result"))?;
        debug!(group = %req.group, topic = %topic, reconsume_times = msg.reconsume_times, "message sent back");
        Ok((
            SentBack {
                topic,
                msg_id: r.msg_id,
                reconsume_times: msg.reconsume_times,
            },
            Bytes::new(),
        ))
    }

    fn heartbeat(&self, hb: Heartbeat, conn: &Connection) {
        // Consumers in clustering mode retry through the group's retry topic: give it a
        // route before the first retry (as RocketMQ does). A pull consumer, which names no
        // subscription, sends nothing back.
        for d in &hb.consumers {
            if d.model != MessageModel::Clustering || d.subscriptions.is_empty() {
                continue;
            }
            let topic = names::retry_topic(&d.group);
            if let Err(m) = validate_group_name(&d.group)
                .and_then(|()| validate_topic_name(&topic))
                .and_then(|()| self.system_topic(&topic).map(drop))
            {
                warn!(client = %hb.client_id, group = %d.group, error = %m, "no retry topic for this consumer group");
            }
        }
        let notices = self.clients.heartbeat(hb, conn);
        self.notify(notices);
    }

    /// Tells groups' members, one way and without waiting, that their membership changed.
    fn notify(&self, notices: Vec<clients::Notice>) {
        for n in notices {
            let req = NotifyConsumerIdsChanged { group: n.group };
            for conn in n.members {
                let req = req.clone();
                tokio::spawn(async move {
                    let sent =
                        tokio::time::timeout(NOTIFY_TIMEOUT, conn.oneway(&req, Bytes::new()));
                    match sent.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            debug!(peer = %conn.peer(), group = %req.group, error = %e, "membership notice not sent")
                        }
                        Err(_) => {
                            debug!(peer = %conn.peer(), group = %req.group, "membership notice timed out")
                        }
                    }
                });
            }
        }
    }

    /// Clients are gone: their queue locks go, and their groups hear of it.
    fn forget(&self, gone: clients::Gone, why: &str) {
        for id in &gone.client_ids {
            info!(client = %id, why, "client forgotten");
            self.locks.release_client(id);
        }
        self.notify(gone.notices);
    }

    async fn pull(&self, req: PullMessage) -> Outcome<(PullResult, Bytes)> {
        let t = self.existing_topic(&req.topic)?;
        if t.perm & perm::READ == 0 {
            return Err(err(
                ErrorCode::NoPermission,
                format!("topic {:?} is not readable", t.name),
            ));
        }
        if req.queue_id >= t.read_queues {
            return Err(err(
                ErrorCode::InvalidParameter,
                format!(
                    "queue {} does not exist: topic {:?} has {} read queues",
                    req.queue_id, t.name, t.read_queues
                ),
            ));
        }
        let tags = TagFilter::parse(&req.expression)
            .map_err(|m| err(ErrorCode::SubscriptionParseFailed, m))?;
        // The consumer's progress counts even when its filter then fails the pull.
        if let Some(c) = req.commit_offset {
            self.store
                .consumer_offsets()
                .commit(&req.group, &req.topic, req.queue_id, c);
        }
        let wasm = self.filter_for(&req.group, &req.topic)?;
        let max = req.max_msgs.clamp(1, MAX_PULL_MSGS) as usize;
        let fc = self.filters.runtime().config();
        // With a wasm filter, candidates go to it in batches, and a pull keeps reading
        // until it has `max` kept messages, reaches the end, or has examined
        // `max_scan_per_pull` entries: a selective filter answers with an advanced offset
        // rather than nothing, or rather than walking the whole backlog in one pull.
        let max_scan = fc.max_scan_per_pull;
        // Bodies go into the filter's memory: keep a batch well inside its cap.
        let round_bytes = match &wasm {
            Some(f) if f.needs_body() => PULL_MAX_BYTES.min(fc.memory_limit / 4),
            _ => PULL_MAX_BYTES,
        };
        let budget_end = tokio::time::Instant::now() + FILTERED_PULL_BUDGET;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(req.suspend_ms).min(MAX_SUSPEND);
        let notify = (req.suspend_ms > 0).then(|| self.holds.notify_of(&req.topic, req.queue_id));
        let _held = notify.as_ref().map(|_| self.holds.enter());
        let mut cursor = req.offset;
        let mut out: Vec<StoredRecord> = Vec::new();
        let mut out_bytes = 0usize;
        let answer = |status, next_offset, (min_offset, max_offset), out: &[StoredRecord]| {
            Ok((
                PullResult {
                    status,
                    next_offset,
                    min_offset,
                    max_offset,
                },
                concat(out.iter().map(|rec| rec.bytes())),
            ))
        };
        loop {
            // Register for the wake-up before looking, so an append in between is not missed.
            let notified = notify.as_ref().map(|n| {
                let mut f = Box::pin(Arc::clone(n).notified_owned());
                f.as_mut().enable();
                f
            });
            // Without a filter, what was asked for; with one, enough candidates for what is
            // missing at the filter's keep rate so far (few calls, little judged twice).
            let round = match &wasm {
                None => max,
                Some(f) => f.candidates_for(max - out.len()).min(fc.batch_size),
            };
            let limits = ReadLimits {
                max_count: round,
                max_bytes: round_bytes.saturating_sub(out_bytes).max(1),
                max_scan: max_scan
                    .saturating_sub((cursor - req.offset) as usize)
                    .max(1),
            };
            let r = self
                .store
                .get_messages(&req.topic, req.queue_id, cursor, limits, |h| {
                    tags.matches_hash(h)
                });
            let bounds = (r.min_offset, r.max_offset);
            match r.status {
                GetStatus::NoNewMessage | GetStatus::OffsetMoved if !out.is_empty() => {
                    return answer(PullStatus::Found, cursor, bounds, &out);
                }
                GetStatus::NoNewMessage => {
                    if let Some(notified) = notified
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::select! {
                            _ = notified => {}
                            _ = tokio::time::sleep_until(deadline) => {}
                        }
                        continue;
                    }
                    // Entries passed over (filtered out) still move the consumer on.
                    let status = if cursor == req.offset {
                        PullStatus::NoNewMessage
                    } else {
                        PullStatus::NoMatch
                    };
                    return answer(status, cursor, bounds, &out);
                }
                GetStatus::OffsetMoved if cursor == req.offset => {
                    return answer(PullStatus::OffsetMoved, r.next_offset, bounds, &out);
                }
                GetStatus::OffsetMoved => return answer(PullStatus::NoMatch, cursor, bounds, &out),
                GetStatus::Found | GetStatus::NoMatch => {}
            }
            // The store compared tag hashes; confirm the tag itself (hashes collide).
            let candidates: Vec<StoredRecord> = r
                .messages
                .into_iter()
                .filter(|rec| match (&tags, rec.view()) {
                    (TagFilter::All, _) | (_, Err(_)) => true,
                    (_, Ok(v)) => tags.matches_tag(v.tags()),
                })
                .collect();
            let kept = match &wasm {
                None => candidates,
                Some(f) => match self.run_filter(f, &req, cursor, candidates).await {
                    Ok(kept) => kept,
                    // Earlier rounds' progress stands; the next pull meets the failure.
                    Err(_) if cursor != req.offset => {
                        let status = if out.is_empty() {
                            PullStatus::NoMatch
                        } else {
                            PullStatus::Found
                        };
                        return answer(status, cursor, bounds, &out);
                    }
                    Err(e) => return Err(e),
                },
            };
            let round_end = r.next_offset;
            cursor = round_end;
            let room = max - out.len();
            if kept.len() > room {
                // The filter kept more than asked for: resume right after the last message
                // returned, read from its header; if that is not a sane offset (damage),
                // return them all rather than skip any.
                let resume = kept[room - 1]
                    .bytes()
                    .get(..pos::QUEUE_OFFSET + 8)
                    .map(|b| record::u64_at(b, pos::QUEUE_OFFSET) + 1)
                    .filter(|o| (req.offset + 1..round_end).contains(o));
                let take = if let Some(o) = resume {
                    cursor = o;
                    room
                } else {
                    kept.len()
                };
                out.extend(kept.into_iter().take(take));
                return answer(PullStatus::Found, cursor, bounds, &out);
            }
            out_bytes += kept.iter().map(StoredRecord::len).sum::<usize>();
            out.extend(kept);
            let scanned = (cursor - req.offset) as usize;
            if wasm.is_none()
                || out.len() == max
                || out_bytes >= round_bytes
                || scanned >= max_scan
                || tokio::time::Instant::now() >= budget_end
            {
                let status = if out.is_empty() {
                    PullStatus::NoMatch
                } else {
                    PullStatus::Found
                };
                return answer(status, cursor, bounds, &out);
            }
        }
    }

    /// The group's wasm filter for the topic, if one is registered and usable.
    fn filter_for(&self, group: &str, topic: &str) -> Outcome<Option<Arc<LoadedFilter>>> {
        if self.filters.is_empty() {
            return Ok(None);
        }
        match self.filters.lookup(group, topic) {
            None => Ok(None),
            Some(Ok(f)) => match f.marked_failed() {
                None => Ok(Some(f)),
                Some(cause) => Err(err(
                    ErrorCode::FilterFailed,
                    format!(
                        "the {} is marked failed ({cause}); upload a new version or remove it",
                        f.label()
                    ),
                )),
            },
            Some(Err(cause)) => Err(err(
                ErrorCode::FilterFailed,
                format!("the filter of group {group:?} on topic {topic:?}: {cause}"),
            )),
        }
    }

    /// Runs the group's filter over a batch of candidates; returns the kept ones, in order.
    async fn run_filter(
        &self,
        filter: &Arc<LoadedFilter>,
        req: &PullMessage,
        at: u64,
        candidates: Vec<StoredRecord>,
    ) -> Outcome<Vec<StoredRecord>> {
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let ctx = BatchContext {
            topic: req.topic.clone(),
            queue_id: req.queue_id,
            consumer_group: req.group.clone(),
        };
        let (records, verdicts) = self
            .filters
            .runtime()
            .run(filter, ctx, candidates)
            .await
            .map_err(|f| {
                err(
                    ErrorCode::FilterFailed,
                    format!(
                        "the {} failed on queue {} of {:?} at offset {at}: {f}; the offset did not move",
                        filter.label(),
                        req.queue_id,
                        req.topic
                    ),
                )
            })?;
        Ok(records
            .into_iter()
            .zip(verdicts)
            .filter_map(|(r, keep)| keep.then_some(r))
            .collect())
    }

    async fn upload_filter(
        &self,
        req: UploadFilter,
        component: Bytes,
    ) -> Outcome<(FilterUploaded, Bytes)> {
        validate_group_name(&req.group).map_err(|m| err(ErrorCode::InvalidParameter, m))?;
        validate_topic_name(&req.topic).map_err(|m| err(ErrorCode::InvalidParameter, m))?;
        let filters = Arc::clone(&self.filters);
        // Compiling takes tens of ms to seconds: never on the network threads.
        let uploaded = tokio::task::spawn_blocking(move || {
            filters.upload(&req.group, &req.topic, &component, req.params)
        })
        .await
        .map_err(|e| {
            err(
                ErrorCode::SystemError,
                format!("filter upload task failed: {e}"),
            )
        })?
        .map_err(|e| match e {
            e @ (FilterError::Storage(_) | FilterError::Runtime(_)) => {
                err(ErrorCode::SystemError, e.to_string())
            }
            e => err(ErrorCode::FilterRejected, e.to_string()),
        })?;
        Ok((uploaded, Bytes::new()))
    }

    async fn remove_filter(&self, req: RemoveFilter) -> Outcome<(FilterRemoved, Bytes)> {
        let filters = Arc::clone(&self.filters);
        let (group, topic) = (req.group.clone(), req.topic.clone());
        let removed = tokio::task::spawn_blocking(move || filters.remove(&group, &topic))
            .await
            .map_err(|e| {
                err(
                    ErrorCode::SystemError,
                    format!("filter remove task failed: {e}"),
                )
            })?
            .map_err(|e| err(ErrorCode::SystemError, e.to_string()))?;
        match removed {
            Some(version) => Ok((FilterRemoved { version }, Bytes::new())),
            None => Err(err(
                ErrorCode::FilterNotFound,
                format!(
                    "group {:?} has no filter on topic {:?}",
                    req.group, req.topic
                ),
            )),
        }
    }

    fn create_topic(&self, req: CreateTopic) -> Outcome<((), Bytes)> {
        if req.topic.name.starts_with(SYSTEM_PREFIX) {
            return Err(err(
                ErrorCode::NoPermission,
                format!(
                    "{:?}: names starting with {SYSTEM_PREFIX} are reserved for system topics",
                    req.topic.name
                ),
            ));
        }
        let t = self
            .topics
            .upsert(req.topic)
            .map_err(|m| err(ErrorCode::InvalidParameter, m))?;
        info!(topic = %t.name, read = t.read_queues, write = t.write_queues, perm = perm::describe(t.perm), "topic created or updated");
        self.topics_updated();
        Ok(((), Bytes::new()))
    }

    fn delete_topic(&self, req: DeleteTopic) -> Outcome<((), Bytes)> {
        if !self
            .topics
            .remove(&req.topic)
            .map_err(|m| err(ErrorCode::SystemError, m))?
        {
            return Err(err(
                ErrorCode::TopicNotExist,
                format!("topic {:?} does not exist", req.topic),
            ));
        }
        self.store.delete_topic(&req.topic).map_err(store_error)?;
        self.holds.forget_topic(&req.topic);
        info!(topic = %req.topic, "topic deleted");
        self.topics_updated();
        Ok(((), Bytes::new()))
    }

    fn topic_stats(&self, req: GetTopicStats) -> Outcome<(TopicStats, Bytes)> {
        let config = self.existing_topic(&req.topic)?;
        let queues = (0..config.read_queues)
            .map(|q| QueueOffsets {
                min: self.store.min_offset(&req.topic, q),
                max: self.store.max_offset(&req.topic, q),
            })
            .collect();
        Ok((TopicStats { config, queues }, Bytes::new()))
    }

    fn query_by_key(&self, req: QueryMessageByKey) -> Outcome<(RecordCount, Bytes)> {
        let found = self
            .store
            .query_by_key(&req.topic, &req.key, req.max.clamp(1, 64) as usize);
        if found.is_empty() {
            return Err(err(
                ErrorCode::QueryNotFound,
                format!("no message of topic {:?} has key {:?}", req.topic, req.key),
            ));
        }
        Ok((
            RecordCount {
                count: found.len() as u32,
            },
            concat(found.iter().map(|r| r.bytes())),
        ))
    }

    fn view_by_id(&self, req: ViewMessageById) -> Outcome<(RecordCount, Bytes)> {
        let id: MessageId = req
            .msg_id
            .parse()
            .map_err(|e: weir_protocol::RecordError| {
                err(ErrorCode::InvalidParameter, e.to_string())
            })?;
        let rec = self
            .store
            .get_by_id(&id)
            .map_err(|e| err(ErrorCode::QueryNotFound, e.to_string()))?;
        Ok((
            RecordCount { count: 1 },
            Bytes::copy_from_slice(rec.bytes()),
        ))
    }

    async fn dispatch(&self, conn: &Connection, req: Request) -> Reply {
        macro_rules! decode {
            ($t:ty) => {
                match req.decode::<$t>() {
                    Ok(v) => v,
                    Err(e) => return err(ErrorCode::BadRequest, e.to_string()),
                }
            };
        }
        let body = req.body.clone();
        match RequestCode::from_u16(req.code) {
            Some(RequestCode::SendMessage) => {
                to_reply(self.send(decode!(SendMessage), body, conn.peer()).await)
            }
            Some(RequestCode::SendBatch) => {
                to_reply(self.send_batch(decode!(SendBatch), body, conn.peer()).await)
            }
            Some(RequestCode::PullMessage) => to_reply(self.pull(decode!(PullMessage)).await),
            Some(RequestCode::QueryConsumerOffset) => {
                let r = decode!(QueryConsumerOffset);
                Reply::ok(&ConsumerOffset {
                    offset: self
                        .store
                        .consumer_offsets()
                        .query(&r.group, &r.topic, r.queue_id),
                })
            }
            Some(RequestCode::UpdateConsumerOffset) => {
                let r = decode!(UpdateConsumerOffset);
                self.store
                    .consumer_offsets()
                    .commit(&r.group, &r.topic, r.queue_id, r.offset);
                Reply::ok(&())
            }
            Some(RequestCode::GetQueueOffsets) => {
                let r = decode!(GetQueueOffsets);
                Reply::ok(&QueueOffsets {
                    min: self.store.min_offset(&r.topic, r.queue_id),
                    max: self.store.max_offset(&r.topic, r.queue_id),
                })
            }
            Some(RequestCode::SearchOffsetByTimestamp) => {
                let r = decode!(SearchOffsetByTimestamp);
                Reply::ok(&OffsetAnswer {
                    offset: self
                        .store
                        .offset_for_timestamp(&r.topic, r.queue_id, r.timestamp),
                })
            }
            Some(RequestCode::CreateTopic) => to_reply(self.create_topic(decode!(CreateTopic))),
            Some(RequestCode::DeleteTopic) => to_reply(self.delete_topic(decode!(DeleteTopic))),
            Some(RequestCode::GetTopicStats) => to_reply(self.topic_stats(decode!(GetTopicStats))),
            Some(RequestCode::GetAllTopics) => {
                decode!(GetAllTopics);
                Reply::ok(&TopicList {
                    topics: self.topics.all().into_iter().map(|t| t.name).collect(),
                })
            }
            Some(RequestCode::QueryMessage) => {
                to_reply(self.query_by_key(decode!(QueryMessageByKey)))
            }
            Some(RequestCode::ViewMessageById) => {
                to_reply(self.view_by_id(decode!(ViewMessageById)))
            }
            Some(RequestCode::Heartbeat) => {
                self.heartbeat(decode!(Heartbeat), conn);
                Reply::ok(&())
            }
            Some(RequestCode::UnregisterClient) => {
                let gone = self
                    .clients
                    .unregister(&decode!(UnregisterClient).client_id);
                self.forget(gone, "unregistered");
                Reply::ok(&())
            }
            Some(RequestCode::ConsumerSendMsgBack) => {
                to_reply(self.send_back(decode!(ConsumerSendMsgBack)).await)
            }
            Some(RequestCode::LockBatchMq) => {
                let r = decode!(LockBatchMq);
                if let Err(m) = validate_group_name(&r.group) {
                    return err(ErrorCode::InvalidParameter, m);
                }
                if r.client_id.is_empty() {
                    return err(ErrorCode::InvalidParameter, "client id is empty");
                }
                // Only queues that exist are leased (the table stays as small as the
                // topics make it).
                let queues = r
                    .queues
                    .into_iter()
                    .filter(|q| {
                        self.topics
                            .get(&q.topic)
                            .is_some_and(|t| q.queue_id < t.read_queues)
                    })
                    .collect();
                Reply::ok(&LockedQueues {
                    queues: self
                        .locks
                        .lock(&r.group, &r.client_id, queues, Instant::now()),
                })
            }
            Some(RequestCode::UnlockBatchMq) => {
                let r = decode!(UnlockBatchMq);
                self.locks.unlock(&r.group, &r.client_id, &r.queues);
                Reply::ok(&())
            }
            Some(RequestCode::GetConsumerConnections) => {
                let r = decode!(GetConsumerConnections);
                Reply::ok(&ConsumerConnections {
                    members: self.clients.members_of(&r.group),
                })
            }
            Some(RequestCode::GetConsumeStats) => {
                let r = decode!(GetConsumeStats);
                let queues = self
                    .store
                    .consumer_offsets()
                    .of_group(&r.group)
                    .into_iter()
                    .map(|(k, offset)| QueueProgress {
                        broker_offset: self.store.max_offset(&k.topic, k.queue_id),
                        topic: k.topic,
                        queue_id: k.queue_id,
                        consumer_offset: offset,
                    })
                    .collect();
                Reply::ok(&ConsumeStats { queues })
            }
            Some(RequestCode::GetConsumerList) => {
                let r = decode!(GetConsumerList);
                Reply::ok(&ConsumerList {
                    client_ids: self.clients.consumers_of(&r.group),
                })
            }
            Some(RequestCode::UploadFilter) => {
                to_reply(self.upload_filter(decode!(UploadFilter), body).await)
            }
            Some(RequestCode::ListFilters) => {
                let r = decode!(ListFilters);
                Reply::ok(&self.filters.list(r.group.as_deref()))
            }
            Some(RequestCode::RemoveFilter) => {
                to_reply(self.remove_filter(decode!(RemoveFilter)).await)
            }
            _ => err(
                ErrorCode::RequestCodeNotSupported,
                format!("the broker does not serve request code {}", req.code),
            ),
        }
    }
}

struct BrokerHandler(Arc<Broker>);

impl Handler for BrokerHandler {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(self.0.dispatch(conn, req))
    }
    fn on_close(&self, conn: &Connection) {
        let gone = self.0.clients.connection_closed(conn.id());
        self.0.forget(gone, "connection closed");
    }
}

/// A running broker.
pub struct RunningBroker {
    broker: Arc<Broker>,
    server: Server,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningBroker {
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops accepting, unregisters from the name servers, and closes the store cleanly.
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.server.shutdown().await;
        self.broker.filters.runtime().shutdown();
        let store = Arc::clone(&self.broker.store);
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .map_err(|e| BrokerError::Config(format!("store shutdown task failed: {e}")))??;
        Ok(())
    }
}

/// Opens the store and starts serving (on the current tokio runtime).
pub async fn start(mut config: BrokerConfig) -> Result<RunningBroker, BrokerError> {
    config.validate().map_err(BrokerError::Config)?;
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|error| BrokerError::Listen {
                addr: config.listen.clone(),
                error,
            })?;
    let local = listener.local_addr().map_err(|error| BrokerError::Listen {
        addr: config.listen.clone(),
        error,
    })?;
    let addr = config
        .advertised_addr
        .clone()
        .unwrap_or_else(|| local.to_string());
    config.store.store_host = addr.parse().unwrap_or(local);
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || MessageStore::open(store_config))
        .await
        .map_err(|e| BrokerError::Config(format!("store open task failed: {e}")))??;
    let store = Arc::new(store);
    let topics = TopicManager::open(&config.store.data_dir).map_err(BrokerError::Topics)?;
    let filters = {
        let (filter_config, data_dir) = (config.filter.clone(), config.store.data_dir.clone());
        tokio::task::spawn_blocking(move || {
            FilterRegistry::open(FilterRuntime::new(filter_config)?, &data_dir)
        })
        .await
        .map_err(|e| BrokerError::Config(format!("filter registry task failed: {e}")))??
    };
    let holds = Arc::new(holds::PullHolds::default());
    {
        let holds = Arc::clone(&holds);
        store.set_arrival_listener(move |topic, queue, _| holds.wake(topic, queue));
    }
    let (topics_changed, _) = watch::channel(0u64);
    let levels = schedule::DelayLevels::parse(&config.delay_levels).map_err(BrokerError::Config)?;
    let locks = locks::QueueLocks::new(Duration::from_millis(config.queue_lock_lease_ms));
    let broker = Arc::new(Broker {
        addr,
        store,
        topics,
        clients: clients::ClientRegistry::default(),
        holds,
        topics_changed,
        filters: Arc::new(filters),
        levels,
        locks,
        config,
    });
    let server = Server::start(
        listener,
        Arc::new(BrokerHandler(Arc::clone(&broker))),
        ConnConfig::default(),
    )
    .map_err(|error| BrokerError::Listen {
        addr: broker.config.listen.clone(),
        error,
    })?;
    let (stop, _) = watch::channel(false);
    let mut tasks = schedule::start(&broker, &stop);
    // Started means routable: wait for the first registration attempt with each name
    // server (each bounded by its timeouts; an unreachable one is retried in the loop).
    let mut first_rounds = Vec::new();
    for ns in broker.config.namesrv_addrs() {
        let (done, first) = tokio::sync::oneshot::channel();
        first_rounds.push(first);
        tasks.push(tokio::spawn(register_loop(
            Arc::clone(&broker),
            ns,
            stop.subscribe(),
            done,
        )));
    }
    for first in first_rounds {
        let _ = first.await;
    }
    {
        let (broker, mut stop) = (Arc::clone(&broker), stop.subscribe());
        let expiry = Duration::from_millis(broker.config.client_expiry_ms);
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10).min(expiry)) => {
                        broker.forget(broker.clients.expire(expiry), "no heartbeat");
                    }
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
        }));
    }
    tasks.push(tokio::spawn(watch_writability(
        Arc::clone(&broker),
        stop.subscribe(),
    )));
    Ok(RunningBroker {
        broker,
        server,
        stop,
        tasks,
    })
}

/// Re-registers with the name servers when the store starts or stops refusing writes, so
/// routes say at once whether this broker takes sends; and says so in the log.
async fn watch_writability(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut refused = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = broker.store.write_refusal();
        if now.is_some() == refused {
            continue;
        }
        refused = now.is_some();
        match now {
            Some(why) => {
                tracing::error!(reason = %why, "the store refuses writes: this broker's routes are now read-only; consumers keep reading")
            }
            None => info!("the store accepts writes again: routes writable"),
        }
        broker.topics_updated();
    }
}

/// Keeps the broker registered with one name server: every interval, and at once when
/// topics change. Unregisters on stop.
async fn register_loop(
    broker: Arc<Broker>,
    namesrv: String,
    mut stop: watch::Receiver<bool>,
    first_done: tokio::sync::oneshot::Sender<()>,
) {
    let interval = Duration::from_millis(broker.config.register_interval_ms);
    let mut changed = broker.topics_changed.subscribe();
    let mut conn: Option<Connection> = None;
    let mut first_done = Some(first_done);
    loop {
        if conn.as_ref().is_none_or(Connection::is_closed) {
            match Connection::connect(
                &namesrv,
                Arc::new(NoHandler),
                ConnConfig::default(),
                NAMESRV_TIMEOUT,
            )
            .await
            {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    warn!(namesrv = %namesrv, error = %e, "cannot reach name server; will retry")
                }
            }
        }
        if let Some(c) = &conn
            && let Err(e) = c
                .call(&broker.registration(), Bytes::new(), NAMESRV_TIMEOUT)
                .await
        {
            warn!(namesrv = %namesrv, error = %e, "registration failed; will retry");
            conn = None;
        }
        if let Some(done) = first_done.take() {
            let _ = done.send(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = changed.changed() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(c) = conn {
        let unregister = UnregisterBroker {
            cluster: broker.config.cluster.clone(),
            broker_name: broker.config.broker_name.clone(),
            broker_id: broker.config.broker_id,
            addr: broker.addr.clone(),
        };
        let _ = c.call(&unregister, Bytes::new(), NAMESRV_TIMEOUT).await;
        c.close();
    }
}
