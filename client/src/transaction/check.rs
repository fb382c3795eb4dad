//! Check-backs: a broker asks what became of a transaction; the listener's
//! `check_local_transaction` answers on a thread of the producer's pool, and a Commit or
//! Rollback goes back to that broker, on the connection the question came on, as an
//! end-transaction `from_check`.
//!
//! Invariants: the connection's task only queues the check (never runs the listener or
//! waits); at most `check_queue_max` checks are taken and not yet answered (queued, running,
//! or their answers under way), more are dropped and counted (the broker asks again at its
//! next interval); a listener that panics answers Unknown, and Unknown is not sent.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};
use weir_protocol::Connection;
use weir_protocol::broker::{CheckTransactionState, EndTransaction};
use weir_protocol::names::property;

use super::{LocalTransactionState, TransactionListener, TransactionProducerConfig};
use crate::push::pool::ConsumePool;
use crate::{Message, MessageExt, ReceivedMessage};

/// What a producer's check-backs came to, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckStats {
    /// Check-backs that arrived.
    pub received: u64,
    /// Answered Commit or Rollback, and the answer sent (with `confirm_end`: applied).
    pub answered: u64,
    /// The listener said Unknown (or panicked): not answered, the broker asks again.
    pub unknown: u64,
    /// Not asked: the queue was full, the producer shutting down, or the half message
    /// unreadable.
    pub dropped: u64,
    /// Answered, but the answer did not reach the broker (or, with `confirm_end`, the
    /// broker refused it).
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    answered: AtomicU64,
    unknown: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// Answers one producer group's check-backs.
pub(crate) struct Checker {
    listener: Arc<dyn TransactionListener>,
    pool: ConsumePool,
    /// Local transactions run inside `block_in_place` (multi-thread runtimes).
    may_block: bool,
    queue_max: usize,
    confirm: bool,
    timeout: Duration,
    /// Checks taken and not done (queued, asking the listener, or answering).
    pending: AtomicUsize,
    idle: tokio::sync::Notify,
    closed: AtomicBool,
    counters: Counters,
    /// When a dropped check was last logged (ms since `born`), so drops log once a while.
    drop_logged_ms: AtomicU64,
    born: Instant,
}

/// A check taken: counted in `pending` until dropped (done, or never run).
struct Slot(Arc<Checker>);

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn panic_text(p: &(dyn Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// Runs a listener call; a panic is Unknown.
fn guarded(
    what: &str,
    id: &str,
    call: impl FnOnce() -> LocalTransactionState,
) -> LocalTransactionState {
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|p| {
        warn!(transaction = %id, panic = panic_text(&*p), "transaction listener panicked in {what}; counted as unknown");
        LocalTransactionState::Unknown
    })
}

/// The half message of a check-back as the listener sees it: at the topic and queue it
/// goes to once committed, with its transaction id.
fn checked_message(half: &[u8], broker: &str, id: &str) -> crate::Result<MessageExt> {
    let mut m = ReceivedMessage::decode(half, broker)?;
    if let Some(t) = m.property(property::REAL_TOPIC).filter(|t| !t.is_empty()) {
        m.topic = t.to_owned();
    }
    if let Some(q) = m
        .property(property::REAL_QUEUE_ID)
        .and_then(|q| q.parse().ok())
    {
        m.queue_id = q;
    }
    if m.transaction_id().is_none() {
        m.properties = m
            .properties
            .with(property::TRANSACTION_ID, id)
            .ok_or_else(|| {
                crate::ClientError::Invalid(format!(
                    "a check-back's transaction id of {} bytes is past what a property holds",
                    id.len()
                ))
            })?;
    }
    Ok(m)
}

impl Checker {
    pub(crate) fn new(
        config: &TransactionProducerConfig,
        listener: Arc<dyn TransactionListener>,
        timeout: Duration,
    ) -> Self {
        Self {
            listener,
            pool: ConsumePool::new(
                &format!("weir-tx-check-{}", config.group),
                config.check_threads_min,
                config.check_threads_max,
            ),
            may_block: config.listener_may_block,
            queue_max: config.check_queue_max.max(1),
            confirm: config.confirm_end,
            timeout,
            pending: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            drop_logged_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// The local transaction of a half message just stored.
    pub(crate) fn execute(
        &self,
        msg: &Message,
        arg: &(dyn Any + Send + Sync),
    ) -> LocalTransactionState {
        let id = msg.transaction_id().unwrap_or_default();
        let run = || {
            guarded("execute_local_transaction", id, || {
                self.listener.execute_local_transaction(msg, arg)
            })
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if self.may_block && multi_thread {
            tokio::task::block_in_place(run)
        } else {
            run()
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Takes no more checks; the pool finishes those queued.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pool.close();
    }

    /// Ends the pool's threads (blocking; after `close`).
    pub(crate) fn join(&self) {
        self.pool.shutdown();
    }

    pub(crate) fn stats(&self) -> CheckStats {
        let c = &self.counters;
        CheckStats {
            received: c.received.load(Ordering::Relaxed),
            answered: c.answered.load(Ordering::Relaxed),
            unknown: c.unknown.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    fn dropped(&self, check: &CheckTransactionState, why: &str) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.drop_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && self
                .drop_logged_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(transaction = %check.transaction_id, group = %check.producer_group,
                "transaction check-back dropped ({why}); the broker asks again (logged once per 10 s)");
        } else {
            debug!(transaction = %check.transaction_id, "transaction check-back dropped ({why})");
        }
    }

    /// Queues a check-back that arrived on `conn` (called on the connection's task: only
    /// queues).
    pub(crate) fn submit(
        self: &Arc<Self>,
        conn: &Connection,
        check: CheckTransactionState,
        half: Bytes,
    ) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if self.is_closed() {
            return self.dropped(&check, "the producer is shutting down");
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.dropped(&check, "no async runtime");
        };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.queue_max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return self.dropped(&check, "check_queue_max checks wait already");
        }
        let slot = Slot(Arc::clone(self));
        let conn = conn.clone();
        let me = Arc::clone(self);
        self.pool
            .submit(move || me.answer(&rt, conn, check, half, slot));
    }

    /// On a pool thread: asks the listener, and sends a Commit or Rollback back.
    fn answer(
        &self,
        rt: &tokio::runtime::Handle,
        conn: Connection,
        check: CheckTransactionState,
        half: Bytes,
        slot: Slot,
    ) {
        let broker = conn.peer().to_string();
        let msg = match checked_message(&half, &broker, &check.transaction_id) {
            Ok(m) => m,
            Err(e) => {
                warn!(transaction = %check.transaction_id, broker = %broker, error = %e, "unreadable half message in a check-back");
                return self.dropped(&check, "unreadable half message");
            }
        };
        let state = guarded("check_local_transaction", &check.transaction_id, || {
            self.listener.check_local_transaction(&msg)
        });
        let Some(decision) = state.decision() else {
            self.counters.unknown.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let end = EndTransaction {
            producer_group: check.producer_group,
            transaction_id: check.transaction_id,
            commit_log_offset: check.commit_log_offset,
            decision,
            from_check: true,
        };
        let (confirm, timeout) = (self.confirm, self.timeout);
        rt.spawn(async move {
            let sent = match confirm {
                true => conn.call(&end, Bytes::new(), timeout).await.map(drop),
                false => conn.oneway(&end, Bytes::new()).await,
            };
            let c = &slot.0.counters;
            match sent {
                Ok(()) => c.answered.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    warn!(transaction = %end.transaction_id, broker = %conn.peer(), error = %e,
                        "the answer to a transaction check-back did not reach the broker; it asks again");
                    c.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            drop(slot);
        });
    }

    /// Waits until every check taken is done, at most `limit`.
    pub(crate) async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                warn!(
                    pending = self.pending.load(Ordering::Acquire),
                    "transactional producer shut down with check-backs unanswered"
                );
                return;
            }
        }
    }
}
