//! Transaction processor: half messages, their producers' decisions (commit, rollback),
//! the lists of pending and dead transactions, and resolving dead ones by hand.
//!
//! Invariants:
//! - A half message is stored on [`TRANS_HALF_TOPIC`] (queue 0) with its destination in
//!   `REAL_TOPIC`/`REAL_QID`: no consumer reads that topic, no filter sees it, and no
//!   lookup by key of the real topic finds it.
//! - A transaction is its first half message: its commit log offset (carried by the
//!   half's re-stored and dead copies as `TRANSACTION_HALF_OFFSET`) identifies it, not the
//!   transaction id, which is the producer's and may repeat (a message sent twice, another
//!   group's choice): two halves are two transactions, decided each on its own.
//! - A decision is one op record on [`TRANS_OP_TOPIC`], keyed by that offset. A commit
//!   appends the visible message and its op record in one batch, and a decision is made
//!   only while no op record exists for the transaction, one decision per transaction at a
//!   time: so a message is committed at most once, however often its commit arrives. A crash that
//!   keeps the visible message but not its op record (a torn batch) is repaired at start,
//!   from the records recovery replayed ([`Broker::reconcile_transactions`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use weir_protocol::Message;
use weir_protocol::broker::{
    EndTransaction, ListTransactions, ResolveTransaction, SendMessage, SendResult,
    TransactionDecision, TransactionInfo, TransactionList, TransactionResolved, TransactionState,
};
use weir_protocol::names::{TRANS_DEAD_TOPIC, TRANS_HALF_TOPIC, TRANS_OP_TOPIC, property};
use weir_protocol::record::{NO_PREPARED_TX, RecordView, sys_flag};
use weir_store::{GetStatus, ReadLimits, StoredRecord};

use crate::broker::Broker;
use crate::dispatch::RequestContext;
use crate::error::{ProcessError, Processed};
use crate::service::schedule;
use crate::topics::validate_group_name;

/// The consumer group whose offset on the half topic is the check service's progress
/// (and, on the op topic, marks op records as read for retention).
pub const TRANSACTION_CHECK_GROUP: &str = "%TRANSACTION_CHECK%";
/// Tag of op records.
const OP_TAG: &str = "d";
/// Op record properties: the decision, and where the decided half message is.
const OP_DECISION: &str = "DECISION";
const OP_HALF_OFFSET: &str = "HALF_OFFSET";
/// Properties only the broker sets on half messages and their copies.
const RESERVED: [&str; 6] = [
    property::PRODUCER_GROUP,
    property::TRANSACTION_CHECK_TIMES,
    property::TRANSACTION_CHECKED_BY,
    property::TRANSACTION_FIRST_STORED,
    property::TRANSACTION_HALF_OFFSET,
    property::REAL_TOPIC,
];
/// Most half or dead records one listing examines.
const LIST_SCAN_MAX: usize = 200_000;
/// Most dead copies with one transaction id a resolve looks through (newest first).
const DEAD_COPIES_BY_ID: usize = 16;

/// What became of a transaction, as its newest op record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    Committed,
    RolledBack,
    /// Given up on after too many checks; resolved by hand (or a late decision).
    Dead,
}

impl Decided {
    fn as_str(self) -> &'static str {
        match self {
            Decided::Committed => "commit",
            Decided::RolledBack => "rollback",
            Decided::Dead => "dead",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "commit" => Some(Decided::Committed),
            "rollback" => Some(Decided::RolledBack),
            "dead" => Some(Decided::Dead),
            _ => None,
        }
    }
}

/// One decision per transaction (by [`decision_key`]) at a time.
#[derive(Default)]
pub struct DecisionGuards {
    busy: Mutex<HashMap<String, Arc<Notify>>>,
}

pub struct DecisionGuard<'a> {
    guards: &'a DecisionGuards,
    id: String,
}

impl DecisionGuards {
    /// Waits until no other decision on `id` is under way, then holds `id`.
    pub async fn hold(&self, id: &str) -> DecisionGuard<'_> {
        loop {
            let wait = {
                let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                match busy.get(id) {
                    Some(n) => Arc::clone(n),
                    None => {
                        busy.insert(id.to_owned(), Arc::new(Notify::new()));
                        return DecisionGuard {
                            guards: self,
                            id: id.to_owned(),
                        };
                    }
                }
            };
            let notified = wait.notified();
            // The holder may have let go between the lookup and here: look again soon.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), notified).await;
        }
    }
}

impl Drop for DecisionGuard<'_> {
    fn drop(&mut self) {
        let mut busy = self.guards.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.remove(&self.id) {
            n.notify_waiters();
        }
    }
}

/// The transaction id of a half message (or a copy of one): the producer's, else the
/// first half message's id.
pub fn transaction_id(view: &RecordView<'_>) -> String {
    view.property(property::TRANSACTION_ID)
        .filter(|id| !id.is_empty())
        .map_or_else(|| view.message_id().to_text(), str::to_owned)
}

/// Which transaction a half message (or a copy of one) is: its first half's commit log
/// offset.
pub fn transaction_half(view: &RecordView<'_>) -> u64 {
    view.property(property::TRANSACTION_HALF_OFFSET)
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| view.commit_log_offset())
}

/// The key of the op records of the transaction whose first half is at `half`.
pub fn decision_key(half: u64) -> String {
    format!("half@{half}")
}

impl Broker {
    /// Stores a half message: durable, invisible until its producer commits it.
    pub(crate) async fn send_half(
        &self,
        req: SendMessage,
        body: Bytes,
        ctx: &RequestContext,
    ) -> Processed<SendResult> {
        let peer = ctx.peer;
        validate_group_name(&req.producer_group)?;
        crate::broker::refuse_dead_letter_send(&req.topic)?;
        let real = self.topic_for_send(&req.topic, ctx.auto_create_queues)?;
        Self::check_send_queue(&real, req.queue_id)?;
        self.system_topic(TRANS_HALF_TOPIC)?;
        let mut properties = req.properties;
        properties.retain(|(k, _)| !RESERVED.contains(&k.as_str()) && k != property::REAL_QUEUE_ID);
        properties.push((property::REAL_TOPIC.into(), req.topic.clone()));
        properties.push((property::REAL_QUEUE_ID.into(), req.queue_id.to_string()));
        properties.push((property::PRODUCER_GROUP.into(), req.producer_group));
        let half = Message {
            topic: TRANS_HALF_TOPIC.to_owned(),
            queue_id: 0,
            flag: req.flag,
            sys_flag: sys_flag::TX_NONE,
            born_timestamp: req.born_timestamp,
            born_host: peer,
            tags: req.tags,
            keys: req.keys,
            properties,
            body: body.to_vec(),
            reconsume_times: 0,
            prepared_tx_offset: NO_PREPARED_TX,
        };
        let mut r = self.store_sent([half], ctx.received, None).await?;
        let mut result = r
            .pop()
            .ok_or_else(|| ProcessError::Internal("the store returned no result".into()))?;
        result.queue_id = req.queue_id;
        Ok(result)
    }

    /// The newest decision on the transaction whose first half is at `half`, if any.
    pub(crate) fn decision_of(&self, half: u64) -> Option<Decided> {
        let ops = self
            .store
            .query_by_key(TRANS_OP_TOPIC, &decision_key(half), 4);
        ops.first().and_then(|op| {
            let v = op.view().ok()?;
            Decided::parse(v.property(OP_DECISION)?)
        })
    }

    /// The op record of a decision on the half message (or copy) at `half_offset`, of the
    /// transaction whose first half is at `first_half`.
    pub(crate) fn op_record(
        first_half: u64,
        decided: Decided,
        half_offset: u64,
        born_host: SocketAddr,
    ) -> Message {
        let mut op = Message::new(TRANS_OP_TOPIC, 0, half_offset.to_string().into_bytes())
            .with_tags(OP_TAG)
            .with_key(decision_key(first_half))
            .with_property(OP_DECISION, decided.as_str())
            .with_property(OP_HALF_OFFSET, half_offset.to_string());
        op.born_host = born_host;
        op
    }

    /// The message a committed half (or dead copy) becomes: its destination, its
    /// properties without the transaction's bookkeeping, the commit type.
    fn committed_message(&self, view: &RecordView<'_>, id: &str) -> Processed<Message> {
        let mut msg = view.to_message();
        let topic = msg
            .property(property::REAL_TOPIC)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ProcessError::Internal("half message without REAL_TOPIC".into()))?
            .to_owned();
        let queue_id: u32 = msg
            .property(property::REAL_QUEUE_ID)
            .and_then(|q| q.parse().ok())
            .ok_or_else(|| {
                ProcessError::Internal("half message without a valid REAL_QID".into())
            })?;
        let t = self.existing_topic(&topic)?;
        if queue_id >= t.write_queues {
            return Err(ProcessError::InvalidParameter(format!(
                "the transaction's queue {queue_id} no longer exists: topic {topic:?} has {} write queues",
                t.write_queues
            )));
        }
        if view.topic() == TRANS_DEAD_TOPIC {
            // The dead copy carries the transaction id as an extra key, to be found again.
            if let Some(i) = msg.keys.iter().rposition(|k| k == id) {
                msg.keys.remove(i);
            }
        }
        msg.remove_properties(&RESERVED);
        msg.remove_properties(&[
            property::REAL_QUEUE_ID,
            property::TRANSACTION_PREPARED,
            property::TRANSACTION_ID,
        ]);
        msg.properties
            .push((property::TRANSACTION_ID.into(), id.to_owned()));
        msg.topic = topic;
        msg.queue_id = queue_id;
        msg.sys_flag = (msg.sys_flag & !sys_flag::TX_MASK) | sys_flag::TX_COMMIT;
        msg.prepared_tx_offset = view.commit_log_offset();
        // A delayed transactional message waits its delay after the commit.
        schedule::divert_if_delayed(&mut msg, &self.levels)
            .map_err(|e| ProcessError::MessageIllegal(e.to_string()))?;
        Ok(msg)
    }

    /// Applies `decision` to the half message (or dead copy) `rec` of transaction `id`,
    /// unless the transaction is decided already. Returns the committed message's id.
    async fn decide(
        &self,
        rec: &StoredRecord,
        id: &str,
        decision: Decided,
    ) -> Processed<Option<String>> {
        let view = rec
            .view()
            .map_err(|e| ProcessError::Internal(format!("unreadable half message: {e}")))?;
        let first_half = transaction_half(&view);
        let _one = self.decisions.hold(&decision_key(first_half)).await;
        match self.decision_of(first_half) {
            None | Some(Decided::Dead) => {}
            Some(d) if d == decision => {
                debug!(
                    transaction = id,
                    decision = d.as_str(),
                    "decision repeated; already applied"
                );
                return Ok(None);
            }
            Some(d) => {
                return Err(ProcessError::TransactionInvalid(format!(
                    "transaction {id} was decided already ({}); {} refused",
                    d.as_str(),
                    decision.as_str()
                )));
            }
        }
        self.system_topic(TRANS_OP_TOPIC)?;
        let op = Self::op_record(
            first_half,
            decision,
            rec.commit_log_offset(),
            view.born_host(),
        );
        match decision {
            Decided::Committed => {
                let msg = self.committed_message(&view, id)?;
                let (topic, bytes) = (msg.topic.clone(), msg.body.len() as u64);
                let stored = self.store_messages(&[msg, op]).await?;
                // Produced on its topic now, as a send would have been.
                self.metrics.produced(&topic, 1, bytes);
                Ok(stored.into_iter().next().map(|r| r.msg_id))
            }
            Decided::RolledBack | Decided::Dead => {
                self.store_messages(std::slice::from_ref(&op)).await?;
                Ok(None)
            }
        }
    }

    /// A producer's decision on its half message.
    pub async fn end_transaction(&self, req: EndTransaction) -> Processed<()> {
        validate_group_name(&req.producer_group)?;
        let decision = match req.decision {
            TransactionDecision::Unknown => {
                debug!(transaction = %req.transaction_id, "producer does not know yet; it will be asked again");
                return Ok(());
            }
            TransactionDecision::Commit => Decided::Committed,
            TransactionDecision::Rollback => Decided::RolledBack,
        };
        let rec = self
            .store
            .get_queued(req.commit_log_offset)
            .map_err(|e| ProcessError::TransactionInvalid(format!("no half message there: {e}")))?;
        let view = rec
            .view()
            .map_err(|e| ProcessError::Internal(format!("unreadable half message: {e}")))?;
        if view.topic() != TRANS_HALF_TOPIC {
            return Err(ProcessError::TransactionInvalid(format!(
                "commit log offset {} holds a message of topic {:?}, not a half message",
                req.commit_log_offset,
                view.topic()
            )));
        }
        let group = view.property(property::PRODUCER_GROUP).unwrap_or_default();
        if group != req.producer_group {
            return Err(ProcessError::TransactionInvalid(format!(
                "the half message belongs to producer group {group:?}, not {:?}",
                req.producer_group
            )));
        }
        let id = transaction_id(&view);
        if id != req.transaction_id {
            return Err(ProcessError::TransactionInvalid(format!(
                "the half message is of transaction {id}, not {}",
                req.transaction_id
            )));
        }
        self.decide(&rec, &id, decision).await?;
        Ok(())
    }

    /// Pending (undecided) or dead transactions, oldest first.
    pub fn list_transactions(&self, req: ListTransactions) -> Processed<TransactionList> {
        let max = req.max.clamp(1, 10_000) as usize;
        let (topic, from) = match req.state {
            TransactionState::Pending => (TRANS_HALF_TOPIC, self.check_progress()),
            TransactionState::Dead => {
                (TRANS_DEAD_TOPIC, self.store.min_offset(TRANS_DEAD_TOPIC, 0))
            }
        };
        // By the transaction's first half.
        let mut out: Vec<(u64, TransactionInfo)> = Vec::new();
        let mut truncated = false;
        let mut seen = std::collections::HashSet::new();
        self.scan_queue(topic, from, LIST_SCAN_MAX, |rec| {
            let Ok(v) = rec.view() else { return true };
            let id = transaction_id(&v);
            let half = transaction_half(&v);
            let wanted = match self.decision_of(half) {
                None => req.state == TransactionState::Pending,
                Some(Decided::Dead) => req.state == TransactionState::Dead,
                Some(_) => false,
            };
            let group = v.property(property::PRODUCER_GROUP).unwrap_or_default();
            if !wanted || req.producer_group.as_deref().is_some_and(|g| g != group) {
                return true;
            }
            // A checked half appears once per copy; the newest copy is the one to show.
            if !seen.insert(half) {
                out.retain(|(h, _)| *h != half);
            }
            if out.len() == max {
                truncated = true;
                return false;
            }
            out.push((
                half,
                TransactionInfo {
                    transaction_id: id,
                    producer_group: group.to_owned(),
                    topic: v
                        .property(property::REAL_TOPIC)
                        .unwrap_or_default()
                        .to_owned(),
                    queue_id: v
                        .property(property::REAL_QUEUE_ID)
                        .and_then(|q| q.parse().ok())
                        .unwrap_or(0),
                    commit_log_offset: v.commit_log_offset(),
                    msg_id: v.message_id().to_text(),
                    first_stored_ms: first_stored(&v),
                    check_times: check_times(&v),
                },
            ));
            true
        });
        Ok(TransactionList {
            transactions: out.into_iter().map(|(_, t)| t).collect(),
            truncated,
        })
    }

    /// Decides a dead transaction by hand.
    pub async fn resolve_transaction(
        &self,
        req: ResolveTransaction,
    ) -> Processed<TransactionResolved> {
        let decision = match req.decision {
            TransactionDecision::Commit => Decided::Committed,
            TransactionDecision::Rollback => Decided::RolledBack,
            TransactionDecision::Unknown => {
                return Err(ProcessError::InvalidParameter(
                    "resolve with commit or rollback".into(),
                ));
            }
        };
        // The newest dead copy with this id whose transaction is still dead (an id may
        // have served several transactions).
        let mut decided = None;
        let mut dead = None;
        for copy in
            self.store
                .query_by_key(TRANS_DEAD_TOPIC, &req.transaction_id, DEAD_COPIES_BY_ID)
        {
            let Ok(v) = copy.view() else { continue };
            if transaction_id(&v) != req.transaction_id {
                continue;
            }
            match self.decision_of(transaction_half(&v)) {
                Some(Decided::Dead) => {
                    dead = Some(copy);
                    break;
                }
                d => decided = decided.or(d),
            }
        }
        let Some(dead) = dead else {
            return Err(ProcessError::TransactionInvalid(match decided {
                Some(d) => format!(
                    "transaction {} was decided already ({})",
                    req.transaction_id,
                    d.as_str()
                ),
                None => format!(
                    "transaction {} is not dead: pending (its producers are still asked), or its dead copy is gone (deleted by retention)",
                    req.transaction_id
                ),
            }));
        };
        let msg_id = self.decide(&dead, &req.transaction_id, decision).await?;
        info!(transaction = %req.transaction_id, decision = decision.as_str(), "dead transaction resolved by hand");
        Ok(TransactionResolved { msg_id })
    }

    /// Where the check service has got to on the half topic.
    pub(crate) fn check_progress(&self) -> u64 {
        let min = self.store.min_offset(TRANS_HALF_TOPIC, 0);
        // Never past the queue's end: a progress there would skip every half to come.
        let max = self.store.max_offset(TRANS_HALF_TOPIC, 0).max(min);
        self.store
            .consumer_offsets()
            .query(TRANSACTION_CHECK_GROUP, TRANS_HALF_TOPIC, 0)
            .unwrap_or(min)
            .clamp(min, max)
    }

    /// Calls `f` with the records of queue 0 of `topic` from `from`, while it returns true,
    /// examining at most `max` of them.
    pub(crate) fn scan_queue(
        &self,
        topic: &str,
        from: u64,
        max: usize,
        mut f: impl FnMut(&StoredRecord) -> bool,
    ) {
        let mut at = from;
        let mut examined = 0;
        loop {
            let limits = ReadLimits {
                max_count: 256,
                ..ReadLimits::default()
            };
            let r = self.store.get_messages(topic, 0, at, limits, |_| true);
            match r.status {
                GetStatus::Found => {
                    for rec in &r.messages {
                        examined += 1;
                        if examined > max || !f(rec) {
                            return;
                        }
                    }
                    at = r.next_offset;
                }
                GetStatus::NoMatch | GetStatus::OffsetMoved if r.next_offset > at => {
                    at = r.next_offset
                }
                _ => return,
            }
        }
    }

    /// Repairs what a crash can leave: a committed message whose op record did not make it
    /// (the batch holding both was torn). Looks at the records recovery replayed, which hold
    /// every batch a crash may have cut.
    pub fn reconcile_transactions(&self) -> usize {
        let from = self.store.recovery_report().replayed_from;
        // (first half, the decided half or copy, born host)
        let mut missing: Vec<(u64, u64, SocketAddr)> = Vec::new();
        self.store.scan_records(from, u64::MAX, |rec| {
            if let Ok(v) = rec.view()
                && v.sys_flag() & sys_flag::TX_MASK == sys_flag::TX_COMMIT
                && v.property(property::TRANSACTION_ID).is_some()
            {
                // Which transaction: the one of the half (or copy) it was committed from.
                let decided_at = v.prepared_tx_offset();
                let first_half = match self.store.get_by_offset(decided_at) {
                    Ok(half) => half.view().map_or(decided_at, |h| transaction_half(&h)),
                    Err(_) => decided_at,
                };
                if self.decision_of(first_half).is_none() {
                    missing.push((first_half, decided_at, v.born_host()));
                }
            }
            true
        });
        let n = missing.len();
        if n > 0 {
            let ops: Vec<Message> = missing
                .into_iter()
                .map(|(first, half, host)| Self::op_record(first, Decided::Committed, half, host))
                .collect();
            if let Err(e) = self
                .system_topic(TRANS_OP_TOPIC)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    self.store
                        .put_batch(&ops)
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
            {
                warn!(error = %e, "could not record the decisions of committed transactions found at start");
                return 0;
            }
            warn!(
                transactions = n,
                "recorded the decisions of committed transactions a crash left without one"
            );
        }
        n
    }
}

/// Checks so far of a half message (or copy).
pub(crate) fn check_times(v: &RecordView<'_>) -> u32 {
    v.property(property::TRANSACTION_CHECK_TIMES)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// When the transaction's first half message was stored.
pub(crate) fn first_stored(v: &RecordView<'_>) -> i64 {
    v.property(property::TRANSACTION_FIRST_STORED)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| v.store_timestamp())
}
