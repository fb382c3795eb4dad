//! Transactional messages (RocketMQ's transactional producer): a message that becomes
//! visible to consumers only if a local transaction commits.
//!
//! [`TransactionProducer::send_message_in_transaction`] sends a *half* message (stored by
//! the broker, invisible to consumers), runs the listener's local transaction, and reports
//! its outcome to the broker that stored the half: commit makes the message visible on its
//! topic, rollback discards it. An outcome not reported (Unknown, a lost report, a crash)
//! is asked for later: the broker sends a check-back to a live producer of the group, whose
//! listener's [`check_local_transaction`](TransactionListener::check_local_transaction)
//! answers.
//!
//! Invariants:
//! - Every half message carries a transaction id (`__transactionId__`): the message's own
//!   if it has one, else one made here, unique per send. The listener finds it on the
//!   message it runs ([`Message::transaction_id`]) and on the check-back
//!   ([`MessageExt::transaction_id`]).
//! - The local transaction runs once per half message stored with [`SendStatus::Ok`], on the
//!   calling task. A half stored but not durable in time (`FlushDiskTimeout`) is rolled back
//!   without running it, as RocketMQ does; nothing runs when the half was not sent.
//! - A listener that panics answers [`LocalTransactionState::Unknown`]. Unknown is never
//!   reported: the broker asks again.
//! - Check-backs run on the producer's own threads (`check.rs`), never on a connection's
//!   task.

mod check;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;
use weir_protocol::MessageId;
use weir_protocol::auth::random_u64;
use weir_protocol::broker::{EndTransaction, TransactionDecision};
use weir_protocol::names::property;

pub use check::CheckStats;
pub(crate) use check::Checker;

use crate::SendStatus;
use crate::{ClientError, ClientInstance, Message, MessageExt, Producer, Result, SendResult};

/// What became of a local transaction, as the listener says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalTransactionState {
    /// Make the message visible.
    Commit,
    /// Discard the message.
    Rollback,
    /// Not known yet: the broker asks again (a check-back) later.
    Unknown,
}

impl LocalTransactionState {
    /// What the broker is told; nothing for Unknown.
    fn decision(self) -> Option<TransactionDecision> {
        match self {
            LocalTransactionState::Commit => Some(TransactionDecision::Commit),
            LocalTransactionState::Rollback => Some(TransactionDecision::Rollback),
            LocalTransactionState::Unknown => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LocalTransactionState::Commit => "commit",
            LocalTransactionState::Rollback => "rollback",
            LocalTransactionState::Unknown => "unknown",
        }
    }
}

/// The application's side of a transaction.
pub trait TransactionListener: Send + Sync + 'static {
    /// Runs the local transaction of the half message `msg` just stored (its transaction id:
    /// [`Message::transaction_id`]; keep it with the transaction's outcome, the check-back
    /// looks it up). `arg` is what the caller passed to `send_message_in_transaction`.
    /// Runs on the calling task's thread; with `listener_may_block` (the default) inside
    /// `block_in_place` on a multi-thread runtime, so it may block.
    fn execute_local_transaction(
        &self,
        msg: &Message,
        arg: &(dyn Any + Send + Sync),
    ) -> LocalTransactionState;

    /// What became of the transaction of `msg` (a half message whose outcome the broker
    /// has not heard yet; its topic and queue are the ones it goes to once committed).
    /// Runs on the producer's check threads.
    fn check_local_transaction(&self, msg: &MessageExt) -> LocalTransactionState;
}

#[derive(Debug, Clone)]
pub struct TransactionProducerConfig {
    /// The producer group: brokers ask any live producer of it about its transactions.
    pub group: String,
    /// Threads answering check-backs: `check_threads_min` at once, up to
    /// `check_threads_max` while all are busy and checks wait (default 1..4).
    pub check_threads_min: usize,
    pub check_threads_max: usize,
    /// Check-backs waiting for a thread at most (default 2,000, RocketMQ's
    /// `checkRequestHoldMax`); more are dropped, and the broker asks again.
    pub check_queue_max: usize,
    /// Report each outcome as a call and wait for the broker to apply it, instead of one way
    /// (default: one way, as RocketMQ; a lost report is covered by the check-back). A
    /// process that exits right after its last transaction wants this: a one-way report
    /// still queued when it exits is lost.
    pub confirm_end: bool,
    /// The local transaction may block (a database's commit, say): on a multi-thread
    /// runtime it runs inside `tokio::task::block_in_place`, so the runtime's other tasks
    /// go on meanwhile (default). False runs it inline, which costs nothing but stalls the
    /// tasks queued behind it on its thread while it runs: for a listener that never blocks.
    pub listener_may_block: bool,
}

impl TransactionProducerConfig {
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            check_threads_min: 1,
            check_threads_max: 4,
            check_queue_max: 2_000,
            confirm_end: false,
            listener_may_block: true,
        }
    }
}

/// What `send_message_in_transaction` did.
#[derive(Debug)]
pub struct TransactionSendResult {
    /// Where the half message went (its `msg_id` is the half's).
    pub send_result: SendResult,
    pub transaction_id: String,
    /// What the listener said (Rollback, without asking it, for a half not durable in time).
    pub local_state: LocalTransactionState,
    /// Why the outcome did not reach the broker, if it did not (the transaction then stays
    /// pending, and the broker asks again).
    pub end_error: Option<ClientError>,
}

/// Sends messages in transactions and answers the brokers' check-backs for its group (one
/// per group in a [`ClientInstance`]). Dropping it (or [`shutdown`](Self::shutdown)) stops
/// answering.
pub struct TransactionProducer {
    producer: Producer,
    client: ClientInstance,
    checker: Arc<Checker>,
    confirm_end: bool,
    /// Transaction ids: this prefix (process, random, start time) and a counter.
    id_prefix: String,
    next_id: AtomicU64,
}

impl TransactionProducer {
    pub fn new(
        config: TransactionProducerConfig,
        client: ClientInstance,
        listener: impl TransactionListener,
    ) -> Result<Self> {
        Self::with_listener(config, client, Arc::new(listener))
    }

    pub fn with_listener(
        config: TransactionProducerConfig,
        client: ClientInstance,
        listener: Arc<dyn TransactionListener>,
    ) -> Result<Self> {
        if config.group.is_empty() {
            return Err(ClientError::Invalid("the producer group is empty".into()));
        }
        let checker = Arc::new(Checker::new(
            &config,
            listener,
            client.config().request_timeout,
        ));
        if !client
            .served()
            .check_backs
            .register(&config.group, &checker)
        {
            checker.close();
            return Err(ClientError::Invalid(format!(
                "this client has a transactional producer of group {:?} already",
                config.group
            )));
        }
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(Self {
            producer: Producer::new(config.group.clone(), client.clone()),
            client,
            checker,
            confirm_end: config.confirm_end,
            id_prefix: format!(
                "{:08X}{:08X}{:012X}",
                std::process::id(),
                random_u64() as u32,
                start & 0xFFFF_FFFF_FFFF
            ),
            next_id: AtomicU64::new(0),
        })
    }

    pub fn group(&self) -> &str {
        self.producer.group()
    }

    /// The plain producer of the same group (non-transactional sends).
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// What check-backs this producer has seen and answered.
    pub fn check_stats(&self) -> CheckStats {
        self.checker.stats()
    }

    fn new_transaction_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:08X}", self.id_prefix)
    }

    /// Sends `msg` as a half message, runs the listener's local transaction with `arg`
    /// (`&()` for none), and reports its outcome (Commit or Rollback; one way unless
    /// `confirm_end`) to the broker that stored the half. Errors only when the half was not
    /// sent; a failed report is in the result's `end_error`.
    pub async fn send_message_in_transaction(
        &self,
        msg: &Message,
        arg: &(dyn Any + Send + Sync),
    ) -> Result<TransactionSendResult> {
        if self.checker.is_closed() {
            return Err(ClientError::Invalid(
                "the transactional producer is shut down".into(),
            ));
        }
        let id = msg
            .transaction_id()
            .filter(|id| !id.is_empty())
            .map_or_else(|| self.new_transaction_id(), str::to_owned);
        let mut half = msg.clone();
        half.properties.retain(|(k, _)| {
            k != property::TRANSACTION_PREPARED
                && k != property::PRODUCER_GROUP
                && k != property::TRANSACTION_ID
        });
        half.properties
            .push((property::TRANSACTION_PREPARED.into(), "true".into()));
        half.properties
            .push((property::PRODUCER_GROUP.into(), self.group().to_owned()));
        half.properties
            .push((property::TRANSACTION_ID.into(), id.clone()));
        let (sent, addr) = self.producer.send_half(&half).await?;
        let at: MessageId = sent.msg_id.parse()?;
        let local_state = match sent.status {
            SendStatus::Ok => self.checker.execute(&half, arg),
            // As RocketMQ: a half not safely stored is rolled back, not executed.
            SendStatus::FlushDiskTimeout
            | SendStatus::FlushSlaveTimeout
            | SendStatus::SlaveNotAvailable => LocalTransactionState::Rollback,
        };
        let end_error = match local_state.decision() {
            None => None,
            Some(decision) => {
                let end = EndTransaction {
                    producer_group: self.group().to_owned(),
                    transaction_id: id.clone(),
                    commit_log_offset: at.offset,
                    decision,
                    from_check: false,
                };
                self.report(&addr, &end).await.err()
            }
        };
        if let Some(e) = &end_error {
            warn!(transaction = %id, state = local_state.as_str(), error = %e,
                "the outcome of a local transaction did not reach the broker; it will ask back");
        }
        Ok(TransactionSendResult {
            send_result: sent,
            transaction_id: id,
            local_state,
            end_error,
        })
    }

    async fn report(&self, addr: &str, end: &EndTransaction) -> Result<()> {
        let broker = |error| ClientError::Broker {
            broker: addr.to_owned(),
            error,
        };
        if self.confirm_end {
            return self.client.call(addr, end, Bytes::new()).await.map(drop);
        }
        let conn = self.client.connection(addr).await.map_err(broker)?;
        conn.oneway(end, Bytes::new()).await.map_err(broker)
    }

    /// Stops answering check-backs (later ones are dropped), lets the ones taken finish
    /// and their answers go out (up to twice the request timeout), and ends the threads.
    pub async fn shutdown(&self) {
        self.close();
        let limit = self.client.config().request_timeout * 2;
        self.checker.drain(limit.max(Duration::from_secs(1))).await;
        let checker = Arc::clone(&self.checker);
        let _ = tokio::task::spawn_blocking(move || checker.join()).await;
    }

    fn close(&self) {
        self.checker.close();
        self.client
            .served()
            .check_backs
            .unregister(self.group(), &self.checker);
    }
}

impl Drop for TransactionProducer {
    fn drop(&mut self) {
        self.close();
    }
}
