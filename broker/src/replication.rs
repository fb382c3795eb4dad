//! A broker's replication state: as a master, its slaves and how far each has the log (the
//! gate sync-master sends wait at); as a slave, how far behind its master it is, and
//! whether its log was found to differ (then it serves nothing).
//!
//! Invariants: a master's `acked` only grows while a slave stays connected; a sync-master
//! send is acknowledged only once `acked` (the furthest connected slave's end) passes its
//! end, or it gets a distinct status. A slave marked diverged stays so until restarted.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use weir_protocol::ha::{BrokerRole, HaStatus, OffsetRow};

/// One connected slave, as the master sees it.
#[derive(Debug, Clone, Copy)]
struct Slave {
    acked: u64,
    /// The end of what was streamed to it: a slave cannot have more, so it cannot confirm
    /// more.
    streamed: u64,
}

/// Why a master did not count what a peer on its HA port confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckRefused {
    #[error("a confirmation from a connection that has not said hello as a slave")]
    NotASlave,
    #[error("a confirmation of the log up to {end}, past the {streamed} streamed to it")]
    PastStreamed { end: u64, streamed: u64 },
}

/// Why a sync-master send was not confirmed by a slave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaWait {
    /// A slave has the bytes.
    Confirmed,
    /// No slave confirmed within `slave_ack_timeout_ms`.
    TimedOut,
    /// No slave is connected.
    NoSlave,
}

pub struct Replication {
    pub role: BrokerRole,
    /// Master: connected slaves by connection id.
    slaves: Mutex<HashMap<u64, Slave>>,
    /// Master: the furthest end a connected slave has confirmed.
    acked: AtomicU64,
    acked_changed: Notify,
    /// Master: sync sends waiting for a slave to confirm the log up to their end, by
    /// (end, arrival): a confirmation wakes exactly the sends it covers, not every waiter.
    waiting: Mutex<BTreeMap<(u64, u64), oneshot::Sender<()>>>,
    next_waiter: AtomicU64,
    /// Master: signalled whenever the log grows (slaves' streams wait on it).
    pub log_grew: Arc<Notify>,
    /// Slave: the master's end as last heard, and when the slave was last caught up.
    master_end: AtomicU64,
    caught_up_ms: AtomicU64,
    connected: AtomicU64,
    diverged: Mutex<Option<String>>,
    /// Slave: the master's HA address as the name servers last told it.
    pub learned_master: Mutex<Option<String>>,
    /// Slave: consumer offsets committed on it (while its master was away, or by a reader
    /// the master sent here) that the master has not confirmed yet: sent with each
    /// metadata sync, kept over the master's older values, dropped once the master has them.
    local_offsets: Mutex<HashMap<(String, String, u32), u64>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replication {
    pub fn new(role: BrokerRole, log_grew: Arc<Notify>) -> Self {
        Self {
            role,
            slaves: Mutex::new(HashMap::new()),
            acked: AtomicU64::new(0),
            acked_changed: Notify::new(),
            waiting: Mutex::new(BTreeMap::new()),
            next_waiter: AtomicU64::new(0),
            log_grew,
            master_end: AtomicU64::new(0),
            caught_up_ms: AtomicU64::new(now_ms()),
            connected: AtomicU64::new(0),
            diverged: Mutex::new(None),
            learned_master: Mutex::new(None),
            local_offsets: Mutex::new(HashMap::new()),
        }
    }

    fn local_offsets(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, u32), u64>> {
        self.local_offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slave: a consumer committed `offset` here.
    pub fn committed_locally(&self, group: &str, topic: &str, queue_id: u32, offset: u64) {
        if self.role.is_master() {
            return;
        }
        self.local_offsets()
            .insert((group.to_owned(), topic.to_owned(), queue_id), offset);
    }

    /// Slave: the offsets committed here that its master has not confirmed.
    pub fn pending_offsets(&self) -> Vec<OffsetRow> {
        self.local_offsets()
            .iter()
            .map(|((g, t, q), o)| (g.clone(), t.clone(), *q, *o))
            .collect()
    }

    /// Slave: the offset to keep for a key the master's snapshot has at `master`: a local
    /// commit ahead of it wins; one the master has caught up with is forgotten.
    pub fn merge_offset(&self, group: &str, topic: &str, queue_id: u32, master: u64) -> u64 {
        let mut local = self.local_offsets();
        let key = (group.to_owned(), topic.to_owned(), queue_id);
        match local.get(&key) {
            Some(&mine) if mine > master => mine,
            Some(_) => {
                local.remove(&key);
                master
            }
            None => master,
        }
    }

    fn slaves(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slave>> {
        self.slaves.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Master: a slave connected with its log ending at `end` (checked against the
    /// master's before). `false`, changing nothing, when the connection already follows.
    pub fn slave_joined(&self, conn: u64, end: u64) -> bool {
        {
            let mut slaves = self.slaves();
            if slaves.contains_key(&conn) {
                return false;
            }
            slaves.insert(
                conn,
                Slave {
                    acked: end,
                    streamed: end,
                },
            );
        }
        self.acked.fetch_max(end, Ordering::AcqRel);
        self.confirm_waiting();
        self.acked_changed.notify_waiters();
        true
    }

    /// Master: the log up to `end` is being streamed to the slave on `conn` (said before
    /// the bytes leave, so that their confirmation is never ahead of it).
    pub fn streaming(&self, conn: u64, end: u64) {
        if let Some(s) = self.slaves().get_mut(&conn) {
            s.streamed = s.streamed.max(end);
        }
    }

    /// Master: a slave's log now ends at `end`. Counted only from a connection that said
    /// hello, and only up to what was streamed to it: a peer cannot confirm sends for
    /// bytes it was never given.
    pub fn slave_acked(&self, conn: u64, end: u64) -> Result<(), AckRefused> {
        {
            let mut slaves = self.slaves();
            let s = slaves.get_mut(&conn).ok_or(AckRefused::NotASlave)?;
            if end > s.streamed {
                return Err(AckRefused::PastStreamed {
                    end,
                    streamed: s.streamed,
                });
            }
            s.acked = s.acked.max(end);
        }
        self.acked.fetch_max(end, Ordering::AcqRel);
        self.confirm_waiting();
        self.acked_changed.notify_waiters();
        Ok(())
    }

    /// Master: a connection on the HA port closed; whether it was a slave's.
    pub fn slave_left(&self, conn: u64) -> bool {
        let mut slaves = self.slaves();
        let was = slaves.remove(&conn).is_some();
        // What confirms sends is what a connected slave has.
        let furthest = slaves.values().map(|s| s.acked).max().unwrap_or(0);
        self.acked.store(furthest, Ordering::Release);
        was
    }

    /// Master: whether the connection `conn` said hello as a slave and follows.
    pub fn is_slave(&self, conn: u64) -> bool {
        self.slaves().contains_key(&conn)
    }

    pub fn slave_count(&self) -> usize {
        self.slaves().len()
    }

    /// Master: how far the slave on connection `conn` has confirmed the log.
    pub fn acked_by(&self, conn: u64) -> Option<u64> {
        self.slaves().get(&conn).map(|s| s.acked)
    }

    /// Master: resolves at the next confirmation from any slave (registered at once, so
    /// create it before looking at what is confirmed).
    pub fn next_ack(&self) -> tokio::sync::futures::Notified<'_> {
        self.acked_changed.notified()
    }

    /// Master: the end of the slowest connected slave.
    pub fn slowest_slave(&self) -> Option<u64> {
        self.slaves().values().map(|s| s.acked).min()
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, u64), oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Master: wakes the sends waiting for what is now confirmed.
    fn confirm_waiting(&self) {
        let acked = self.acked.load(Ordering::Acquire);
        let covered = {
            let mut waiting = self.waiting();
            let rest = waiting.split_off(&(acked.saturating_add(1), 0));
            std::mem::replace(&mut *waiting, rest)
        };
        for (_, send) in covered {
            let _ = send.send(());
        }
    }

    /// Master, sync: waits until a connected slave has the log up to `end`. Many sends
    /// share each confirmation, and each is woken once, by the one that covers it.
    pub async fn wait_replicated(&self, end: u64, timeout: Duration) -> ReplicaWait {
        if self.acked.load(Ordering::Acquire) >= end {
            return ReplicaWait::Confirmed;
        }
        if self.slave_count() == 0 {
            return ReplicaWait::NoSlave;
        }
        let key = (end, self.next_waiter.fetch_add(1, Ordering::Relaxed));
        let (send, confirmed) = oneshot::channel();
        self.waiting().insert(key, send);
        // A confirmation between the first look and the insertion found no one to wake:
        // look again (a confirmation after it finds the entry).
        if self.acked.load(Ordering::Acquire) >= end {
            self.waiting().remove(&key);
            return ReplicaWait::Confirmed;
        }
        // Timed out or cancelled (the sender's connection closed): the entry goes.
        let mut left = WaitEntry {
            replication: self,
            key: Some(key),
        };
        match tokio::time::timeout(timeout, confirmed).await {
            Ok(Ok(())) => {
                left.key = None;
                ReplicaWait::Confirmed
            }
            _ => ReplicaWait::TimedOut,
        }
    }

    /// Slave: heard from its master, whose log ends at `master_end`; its own ends at `end`.
    pub fn heard(&self, master_end: u64, end: u64) {
        self.master_end.fetch_max(master_end, Ordering::AcqRel);
        if end >= self.master_end.load(Ordering::Acquire) {
            self.caught_up_ms.store(now_ms(), Ordering::Release);
        }
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected
            .store(u64::from(connected), Ordering::Release);
    }

    /// Slave: its log differs from its master's; it stops serving.
    pub fn diverge(&self, why: String) {
        let mut d = self.diverged.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            tracing::error!(reason = %why, "this slave's log differs from its master's: it stops replicating and serving; move its data folder aside and restart it to copy the master afresh");
            *d = Some(why);
        }
    }

    pub fn diverged(&self) -> Option<String> {
        self.diverged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What this broker reports to name servers: for a master, its slowest slave's lag;
    /// for a slave, its own. `log_end` is this broker's log end; `age_of` says how old the
    /// record at an offset is (ms).
    pub fn status(
        &self,
        ha_addr: Option<String>,
        log_end: u64,
        age_of: impl Fn(u64) -> Option<u64>,
    ) -> HaStatus {
        let (lag_bytes, lag_ms, connected) = match self.role {
            BrokerRole::Slave => {
                let behind = self
                    .master_end
                    .load(Ordering::Acquire)
                    .saturating_sub(log_end);
                let ms = match behind {
                    0 => 0,
                    _ => now_ms().saturating_sub(self.caught_up_ms.load(Ordering::Acquire)),
                };
                (behind, ms, self.connected.load(Ordering::Acquire) as u32)
            }
            _ => match self.slowest_slave() {
                Some(at) => {
                    let behind = log_end.saturating_sub(at);
                    let ms = if behind == 0 {
                        0
                    } else {
                        age_of(at).unwrap_or(0)
                    };
                    (behind, ms, self.slave_count() as u32)
                }
                None => (0, 0, 0),
            },
        };
        HaStatus {
            role: self.role,
            ha_addr,
            lag_bytes,
            lag_ms,
            connected,
            diverged: self.diverged(),
        }
    }
}

/// Removes a sync send's entry from the waiting list unless it was confirmed.
struct WaitEntry<'a> {
    replication: &'a Replication,
    key: Option<(u64, u64)>,
}

impl Drop for WaitEntry<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.replication.waiting().remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_committed_on_a_slave_win_until_the_master_has_them() {
        let r = Replication::new(BrokerRole::Slave, Arc::new(Notify::new()));
        r.committed_locally("g", "T", 0, 50);
        assert_eq!(r.pending_offsets(), vec![("g".into(), "T".into(), 0, 50)]);
        // The master's older value does not overwrite it, and it stays pending.
        assert_eq!(r.merge_offset("g", "T", 0, 40), 50);
        assert_eq!(r.pending_offsets().len(), 1);
        // Once the master has it (or more), the master's value counts and it is dropped.
        assert_eq!(r.merge_offset("g", "T", 0, 60), 60);
        assert!(r.pending_offsets().is_empty());
        assert_eq!(r.merge_offset("g", "T", 1, 7), 7);
        // A master records nothing.
        let m = Replication::new(BrokerRole::SyncMaster, Arc::new(Notify::new()));
        m.committed_locally("g", "T", 0, 50);
        assert!(m.pending_offsets().is_empty());
    }

    fn waiting_count(r: &Replication) -> usize {
        r.waiting().len()
    }

    #[tokio::test]
    async fn a_confirmation_wakes_exactly_the_sends_it_covers() {
        let r = Arc::new(Replication::new(
            BrokerRole::SyncMaster,
            Arc::new(Notify::new()),
        ));
        let long = Duration::from_secs(30);
        // No slave: said at once.
        assert_eq!(r.wait_replicated(10, long).await, ReplicaWait::NoSlave);
        assert!(r.slave_joined(7, 0));
        r.streaming(7, 300);
        let wait = |end| {
            let r = Arc::clone(&r);
            tokio::spawn(async move { r.wait_replicated(end, long).await })
        };
        let (a, b, c) = (wait(100), wait(200), wait(300));
        while waiting_count(&r) < 3 {
            tokio::task::yield_now().await;
        }
        r.slave_acked(7, 150).unwrap();
        assert_eq!(a.await.unwrap(), ReplicaWait::Confirmed);
        // The others are still waiting, and only they.
        assert_eq!(waiting_count(&r), 2);
        assert!(!b.is_finished() && !c.is_finished());
        r.slave_acked(7, 300).unwrap();
        assert_eq!(b.await.unwrap(), ReplicaWait::Confirmed);
        assert_eq!(c.await.unwrap(), ReplicaWait::Confirmed);
        assert_eq!(waiting_count(&r), 0);
        // What is already confirmed does not wait.
        assert_eq!(r.wait_replicated(300, long).await, ReplicaWait::Confirmed);
        assert_eq!(waiting_count(&r), 0);
    }

    #[tokio::test]
    async fn a_send_not_confirmed_in_time_times_out_and_leaves_nothing_behind() {
        let r = Replication::new(BrokerRole::SyncMaster, Arc::new(Notify::new()));
        assert!(r.slave_joined(1, 0));
        let waited = r.wait_replicated(10, Duration::from_millis(20)).await;
        assert_eq!(waited, ReplicaWait::TimedOut);
        assert_eq!(waiting_count(&r), 0);
        // A send whose connection closed (its future dropped) leaves nothing either.
        let mut wait = Box::pin(r.wait_replicated(10, Duration::from_secs(30)));
        tokio::select! {
            biased;
            _ = &mut wait => panic!("confirmed with no confirmation"),
            _ = std::future::ready(()) => {}
        }
        assert_eq!(waiting_count(&r), 1);
        drop(wait);
        assert_eq!(waiting_count(&r), 0);
    }

    #[tokio::test]
    async fn only_a_slave_confirms_and_only_what_it_was_streamed() {
        let r = Replication::new(BrokerRole::SyncMaster, Arc::new(Notify::new()));
        let short = Duration::from_millis(20);
        // A connection that never said hello confirms nothing.
        assert_eq!(r.slave_acked(9, u64::MAX), Err(AckRefused::NotASlave));
        assert!(r.slave_joined(1, 100));
        // Nor does a second hello on the same connection reset it.
        assert!(!r.slave_joined(1, 50));
        assert!(r.is_slave(1) && !r.is_slave(9));
        r.streaming(1, 400);
        // Past what was streamed: refused, and the sends past it stay unconfirmed.
        assert_eq!(
            r.slave_acked(1, 401),
            Err(AckRefused::PastStreamed {
                end: 401,
                streamed: 400
            })
        );
        assert_eq!(r.slave_acked(9, 1_000), Err(AckRefused::NotASlave));
        assert_eq!(r.wait_replicated(300, short).await, ReplicaWait::TimedOut);
        // Within it: counted.
        r.slave_acked(1, 300).unwrap();
        assert_eq!(r.wait_replicated(300, short).await, ReplicaWait::Confirmed);
        assert_eq!(r.wait_replicated(301, short).await, ReplicaWait::TimedOut);
        // Only a slave's close is a slave leaving.
        assert!(!r.slave_left(9));
        assert!(r.slave_left(1));
        assert_eq!(r.slave_count(), 0);
    }
}
