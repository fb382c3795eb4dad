//! Send processor: single messages, batches, and consumers' send-back of messages they
//! could not process (to the group's retry topic, or its dead-letter topic).

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;
use weir_protocol::Message;
use weir_protocol::broker::{
    ConsumerSendMsgBack, SendBatch, SendBatchResult, SendMessage, SendResult, SendStatus, SentBack,
};
use weir_protocol::names::{self, property};
use weir_protocol::record::{NO_PREPARED_TX, sys_flag};
use weir_protocol::route::{TopicConfig, perm};
use weir_store::{Appended, FlushStatus, QueueHandle};

use weir_protocol::ha::BrokerRole;

use crate::acl::Principal;
use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::error::{ProcessError, Processed};
use crate::replication::ReplicaWait;
use crate::service::schedule;
use crate::topics::{SYSTEM_PREFIX, Topic, validate_group_name, validate_topic_name};

/// Most messages in one batch. Its answer carries an id for each (about 40 bytes), and
/// the answer to a write is always sent, whatever the connection holds: this keeps it
/// under 1 MiB.
pub const MAX_BATCH_MESSAGES: usize = 16_384;

impl Broker {
    pub(crate) fn check_send_queue(t: &TopicConfig, queue_id: u32) -> Processed<()> {
        if t.perm & perm::WRITE == 0 {
            return Err(ProcessError::NoPermission(format!(
                "topic {:?} is not writable",
                t.name
            )));
        }
        if queue_id >= t.write_queues {
            return Err(ProcessError::InvalidParameter(format!(
                "queue {queue_id} does not exist: topic {:?} has {} write queues",
                t.name, t.write_queues
            )));
        }
        Ok(())
    }

    /// The store's queue `queue_id` of `t`, kept in `t`, its lines asked for: they come
    /// in while the message is made. (A message diverted to another topic, a delayed one,
    /// is not stored through it: the store checks each message against it.)
    fn queue_of<'t>(&self, t: &'t Topic, queue_id: u32) -> Processed<Option<&'t QueueHandle>> {
        let queue = t.queue(&self.store, queue_id).transpose()?;
        if let Some(q) = queue {
            q.prefetch();
        }
        Ok(queue)
    }

    fn check_body(&self, len: usize) -> Processed<()> {
        let max = self.live.max_message_size();
        if len > max {
            return Err(ProcessError::MessageIllegal(format!(
                "message body of {len} bytes exceeds the maximum of {max} bytes"
            )));
        }
        Ok(())
    }

    /// Stores `msgs`; in sync flush mode waits for them to be on disk, at most
    /// `sync_flush_timeout_ms`, past which they are reported `FlushDiskTimeout` (stored, and
    /// synced later: the producer may retry and so duplicate).
    pub(crate) async fn store_messages(&self, msgs: &[Message]) -> Processed<Vec<SendResult>> {
        let appended = self.store.append(msgs)?;
        self.await_stored(appended).await
    }

    /// `store_messages` for what a producer sent, received at `received`: refused as busy,
    /// unstored, when it waited longer than `send_queue_wait_ms` for its append to start
    /// (see `crate::flow`).
    ///
    /// The messages are dropped once appended, before the waits for a flush or a slave: a
    /// sync master holds many sends at once, and freeing what it no longer needs where it
    /// was allocated keeps the allocator's per-thread caches doing the work.
    ///
    /// `queue`: where the messages go, looked up already (see [`Broker::queue_of`]).
    pub(crate) async fn store_sent(
        &self,
        msgs: impl AsRef<[Message]>,
        received: Instant,
        queue: Option<&QueueHandle>,
    ) -> Processed<Vec<SendResult>> {
        let appended = {
            let _turn = self
                .send_queue
                .turn(received, self.live.send_queue_wait())
                .await?;
            match queue {
                Some(q) => self.store.append_to(q, msgs.as_ref())?,
                None => self.store.append(msgs.as_ref())?,
            }
        };
        drop(msgs);
        self.await_stored(appended).await
    }

    /// Waits for what was appended to be durable (sync flush) and replicated (sync
    /// master), as far as the settings say, and reports each message.
    async fn await_stored(&self, mut appended: Appended) -> Processed<Vec<SendResult>> {
        let end = appended
            .results()
            .iter()
            .map(|r| r.commit_log_offset + u64::from(r.size))
            .max()
            .unwrap_or(0);
        let mut flush = FlushStatus::Pending;
        if appended.needs_wait() {
            let limit = Duration::from_millis(self.store.config().sync_flush_timeout_ms);
            flush = match tokio::time::timeout(limit, appended.wait_durable()).await {
                Ok(Ok(())) => FlushStatus::Durable,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => FlushStatus::TimedOut,
            };
        }
        // A sync master acknowledges once a slave has the bytes too (many sends share each
        // confirmation).
        let replica = match self.replication.role {
            BrokerRole::SyncMaster => {
                let limit = Duration::from_millis(self.live.slave_ack_timeout_ms());
                self.replication.wait_replicated(end, limit).await
            }
            _ => ReplicaWait::Confirmed,
        };
        Ok(appended
            .into_results(flush)
            .into_iter()
            .map(|r| SendResult {
                status: match (r.flush, replica) {
                    (FlushStatus::TimedOut, _) => SendStatus::FlushDiskTimeout,
                    (_, ReplicaWait::TimedOut) => SendStatus::FlushSlaveTimeout,
                    (_, ReplicaWait::NoSlave) => SendStatus::SlaveNotAvailable,
                    (FlushStatus::Durable | FlushStatus::Pending, ReplicaWait::Confirmed) => {
                        SendStatus::Ok
                    }
                },
                msg_id: r.msg_id.to_text(),
                queue_id: 0,
                queue_offset: r.queue_offset,
            })
            .collect())
    }

    /// Stores one message sent by a producer (`ctx`: from where, and when it arrived).
    pub async fn send(
        &self,
        req: SendMessage,
        body: Bytes,
        ctx: &RequestContext,
    ) -> Processed<SendResult> {
        let peer = ctx.peer;
        self.check_body(body.len())?;
        if req.sys_flag & sys_flag::TX_MASK != 0 {
            return Err(ProcessError::MessageIllegal(format!(
                "sys_flag {:#x} carries a transaction type: only a transactional send makes a half message (property {}=true, as send_message_in_transaction does)",
                req.sys_flag,
                property::TRANSACTION_PREPARED
            )));
        }
        if req
            .properties
            .iter()
            .any(|(k, v)| k == property::TRANSACTION_PREPARED && v == "true")
        {
            return self.send_half(req, body, ctx).await;
        }
        crate::broker::refuse_dead_letter_send(&req.topic)?;
        let (topic, queue_id) = self.retry_or_dead(&req)?;
        let t = self.topic_for_send(&topic, ctx.auto_create_queues)?;
        Self::check_send_queue(&t, queue_id)?;
        let queue = self.queue_of(&t, queue_id)?;
        let dead = topic != req.topic;
        let mut msg = Message {
            topic,
            queue_id,
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
        if dead {
            // A dead letter waits for nobody.
            msg.remove_properties(&[property::DELAY_LEVEL]);
        } else {
            schedule::divert_if_delayed(&mut msg, &self.levels)
                .map_err(|e| ProcessError::MessageIllegal(e.to_string()))?;
        }
        let mut r = self.store_sent([msg], ctx.received, queue).await?;
        self.metrics
            .produced_into(t.produced(&self.metrics), 1, body.len() as u64);
        let mut result = r
            .pop()
            .ok_or_else(|| ProcessError::Internal("the store returned no result".into()))?;
        result.queue_id = queue_id;
        Ok(result)
    }

    /// Where a send goes: where it says, except a send to a group's retry topic whose
    /// deliveries reached the most it allows (`reconsume_times >= max_reconsume_times`,
    /// RocketMQ's rule for such sends), which goes to queue 0 of the group's dead-letter
    /// topic, made if need be.
    fn retry_or_dead(&self, req: &SendMessage) -> Processed<(String, u32)> {
        let same = || Ok((req.topic.clone(), req.queue_id));
        let Some(group) = req.topic.strip_prefix(names::RETRY_PREFIX) else {
            return same();
        };
        match req.max_reconsume_times {
            Some(max) if req.reconsume_times >= max => {}
            _ => return same(),
        }
        validate_group_name(group)?;
        // Only a group that has a retry topic gets a dead-letter topic this way.
        self.existing_topic(&req.topic)?;
        let dlq = names::dlq_topic(group);
        self.system_topic(&dlq)?;
        debug!(
            group,
            reconsume_times = req.reconsume_times,
            "a retry send goes to the dead-letter topic"
        );
        Ok((dlq, 0))
    }

    /// Stores a batch for one queue; the bodies are `body`, concatenated in order. Refused
    /// as busy as a whole, or stored as a whole.
    pub async fn send_batch(
        &self,
        req: SendBatch,
        body: Bytes,
        ctx: &RequestContext,
    ) -> Processed<SendBatchResult> {
        let peer = ctx.peer;
        let total = req
            .messages
            .iter()
            .map(|m| u64::from(m.body_len))
            .fold(0u64, u64::saturating_add);
        if total != body.len() as u64 {
            return Err(ProcessError::BadRequest(format!(
                "batch declares {total} body bytes but carries {}",
                body.len()
            )));
        }
        if req.messages.is_empty() {
            return Err(ProcessError::BadRequest("empty batch".into()));
        }
        // Refused before anything is stored: the answer names every message (an id
        // each), and must fit in a frame and be small enough to be always sent.
        if req.messages.len() > MAX_BATCH_MESSAGES {
            return Err(ProcessError::BadRequest(format!(
                "a batch carries at most {MAX_BATCH_MESSAGES} messages; this one has {}",
                req.messages.len()
            )));
        }
        if req.messages.iter().any(|m| {
            m.properties
                .iter()
                .any(|(k, v)| k == property::TRANSACTION_PREPARED && v == "true")
        }) {
            return Err(ProcessError::MessageIllegal(
                "transactional messages are sent one at a time, not in a batch".into(),
            ));
        }
        crate::broker::refuse_dead_letter_send(&req.topic)?;
        let t = self.topic_for_send(&req.topic, ctx.auto_create_queues)?;
        Self::check_send_queue(&t, req.queue_id)?;
        let queue = self.queue_of(&t, req.queue_id)?;
        let mut msgs = Vec::with_capacity(req.messages.len());
        let mut at = 0usize;
        for m in req.messages {
            let len = m.body_len as usize;
            self.check_body(len)?;
            // `total` equals the body's length, so every slice is in bounds.
            let bytes = body
                .get(at..at + len)
                .ok_or_else(|| ProcessError::BadRequest("batch bodies overrun the frame".into()))?;
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
                body: bytes.to_vec(),
                reconsume_times: 0,
                prepared_tx_offset: NO_PREPARED_TX,
            };
            schedule::divert_if_delayed(&mut msg, &self.levels)
                .map_err(|e| ProcessError::MessageIllegal(e.to_string()))?;
            msgs.push(msg);
            at += len;
        }
        let mut results = self.store_sent(msgs, ctx.received, queue).await?;
        self.metrics.produced_into(
            t.produced(&self.metrics),
            results.len() as u64,
            body.len() as u64,
        );
        results.iter_mut().for_each(|r| r.queue_id = req.queue_id);
        Ok(SendBatchResult { results })
    }

    /// Stores a copy of a message a consumer could not process on the group's retry
    /// topic (after a delay) or, past its retries or when asked, its dead-letter topic.
    ///
    /// The record sent back must be one the group could have been delivered: not the
    /// broker's own (half messages, decisions, delayed messages waiting), and, while access
    /// control is on, of a topic `principal` may read (`sub`; a group's own retry and
    /// dead-letter topics: `sub` on the group). Otherwise a send-back would copy any record
    /// by its offset into the group's dead-letter topic, for it to read.
    pub async fn send_back(
        &self,
        req: ConsumerSendMsgBack,
        principal: Option<&Principal>,
    ) -> Processed<SentBack> {
        validate_group_name(&req.group)?;
        let rec = self
            .store
            .get_queued(req.commit_log_offset)
            .map_err(|e| ProcessError::NotFound(format!("cannot send back: {e}")))?;
        let view = rec
            .view()
            .map_err(|e| ProcessError::Internal(format!("cannot send back: {e}")))?;
        if crate::broker::is_internal_topic(view.topic()) {
            return Err(ProcessError::NoPermission(format!(
                "commit log offset {} holds a record of the broker's own topic {:?}, never delivered to a consumer",
                req.commit_log_offset,
                view.topic()
            )));
        }
        if let Some(p) = principal {
            self.acl
                .require(p, [crate::acl::needs::read_need(view.topic())])?;
        }
        let mut msg = view.to_message();
        // A retry of a retry keeps naming the topic the message was first sent to.
        let origin_topic = match msg.property(property::RETRY_TOPIC) {
            Some(t) if msg.topic.starts_with(SYSTEM_PREFIX) => t.to_owned(),
            _ => msg.topic.clone(),
        };
        let origin_id = msg
            .property(property::ORIGIN_MESSAGE_ID)
            .map_or_else(|| view.message_id().to_text(), str::to_owned);
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
        validate_topic_name(&topic).map_err(|e| {
            ProcessError::InvalidParameter(format!(
                "group {:?} cannot have a {what} topic: {e}",
                req.group
            ))
        })?;
        self.system_topic(&topic)?;
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
            .ok_or_else(|| ProcessError::Internal("the store returned no result".into()))?;
        debug!(group = %req.group, topic = %topic, reconsume_times = msg.reconsume_times, "message sent back");
        Ok(SentBack {
            topic,
            msg_id: r.msg_id,
            reconsume_times: msg.reconsume_times,
        })
    }
}
