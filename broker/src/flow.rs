//! Flow control for producers' sends (RocketMQ's `waitTimeMillsInSendQueue`): a send that
//! waited longer than `send_queue_wait_ms` between the arrival of its request (stamped by
//! the connection's driver when its frame was read whole) and the start of its append is
//! refused with `StoreBusy` and nothing stored, instead of waiting on for a store that is
//! not keeping up. Refusing is cheap, so a backlog drains at once and producers back off
//! (or go to another broker); what a flood can make the broker hold stays what the
//! connections' bounds allow, not what the store's pace makes of it.
//!
//! Invariant: a send is either refused before its append starts, or appended and answered
//! as usual; never both, so a producer may retry a `StoreBusy` without making a copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};
use tracing::warn;
use weir_protocol::net::Cause;

use crate::error::{ProcessError, Processed};

#[derive(Default)]
pub struct SendQueue {
    /// Test-only: each send's append takes at least this long, one at a time (ns; 0: off),
    /// as a store that cannot keep up would.
    slow_ns: AtomicU64,
    /// Taken only while appends are made slow: sends queue here.
    slow_gate: Mutex<()>,
    /// Sends refused, logged at most once per interval.
    refused: Cause,
}

/// A send's turn at the store: held until its append is done (then the next send's
/// turn, while appends are made slow).
pub struct Turn<'a> {
    _gate: Option<MutexGuard<'a, ()>>,
}

impl SendQueue {
    /// Waits for the send's turn (only while appends are made slow), then refuses it when
    /// it has waited longer than `limit` since `received`.
    pub async fn turn(&self, received: Instant, limit: Duration) -> Processed<Turn<'_>> {
        let slow = self.slow_ns.load(Ordering::Relaxed);
        // (Waiting at the gate ends at the limit: the send is refused then, not later.)
        let gate = match slow {
            0 => None,
            _ => {
                let left = limit.saturating_sub(received.elapsed());
                tokio::time::timeout(left, self.slow_gate.lock()).await.ok()
            }
        };
        let waited = received.elapsed();
        if waited > limit || (slow > 0 && gate.is_none()) {
            self.refused.record(|count| {
                warn!(?waited, ?limit, count, "sends refused as busy (waited longer than send_queue_wait_ms for their turn at the store): {count} since the last report");
            });
            // (The wait counts from the frame's arrival: a store falling behind, a broker
            // short of CPU, or the sender's own unread replies pausing its connection.)
            return Err(ProcessError::StoreBusy(format!(
                "busy: the send waited {} ms from its arrival for its turn at the store, more than send_queue_wait_ms ({} ms): the store or the broker is behind, or replies this connection has not read held it; it was not stored: retry after a pause or on another broker",
                waited.as_millis(),
                limit.as_millis()
            )));
        }
        if slow > 0 {
            tokio::time::sleep(Duration::from_nanos(slow)).await;
        }
        Ok(Turn { _gate: gate })
    }

    /// Sends refused as busy since start.
    pub fn refused(&self) -> u64 {
        self.refused.total()
    }

    /// Test-only: makes each send's append take at least `per_append`, one at a time
    /// (zero: as usual), so tests can make the store fall behind without fixed sleeps.
    #[doc(hidden)]
    pub fn slow_appends_for_tests(&self, per_append: Duration) {
        let ns = u64::try_from(per_append.as_nanos()).unwrap_or(u64::MAX);
        self.slow_ns.store(ns, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_send_that_waited_too_long_is_refused() {
        let q = SendQueue::default();
        let limit = Duration::from_millis(50);
        assert!(q.turn(Instant::now(), limit).await.is_ok());
        let old = Instant::now()
            .checked_sub(Duration::from_millis(60))
            .unwrap();
        let e = q.turn(old, limit).await.err().expect("refused");
        assert!(matches!(e, ProcessError::StoreBusy(_)), "{e}");
        assert!(e.to_string().contains("send_queue_wait_ms (50 ms)"), "{e}");
        assert_eq!(q.refused(), 1);
    }

    #[tokio::test]
    async fn slow_appends_queue_sends_one_at_a_time() {
        let q = SendQueue::default();
        q.slow_appends_for_tests(Duration::from_millis(30));
        let limit = Duration::from_millis(10);
        let first = q.turn(Instant::now(), limit).await.expect("first in line");
        // The second waits for the first's append, past the limit.
        let second = {
            let arrived = Instant::now();
            let q = &q;
            async move { q.turn(arrived, limit).await.err() }
        };
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
        };
        let (refused, ()) = tokio::join!(second, release);
        assert!(matches!(refused, Some(ProcessError::StoreBusy(_))));
    }
}
