//! Long polling: pulls that found nothing wait here for their queue to grow.
//!
//! Every append wakes its queue (once per run of messages to it): a shared lock and a
//! cheap hash, so that appends on different worker threads do not queue for each other.
//!
//! Held pulls share `limits.inflight_pull` fairly between connections: a pull that finds
//! the bound full may end one held pull early (answered "no new message", as at the end of
//! its suspend) of the connection holding the most, when that one holds at least two more
//! than its own connection. One connection's flood of long polls then takes the room other
//! connections leave, never theirs; a connection already holding the most is refused.
//! Invariant: `Holders::by_load` holds `(n, peer)` exactly for each peer with `n > 0`
//! tickets in `by_conn`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use foldhash::fast::RandomState;
use tokio::sync::Notify;
use tracing::info;
use weir_protocol::net::Cause;

type ByQueue = HashMap<String, HashMap<u32, Arc<Notify>>, RandomState>;

#[derive(Default)]
pub struct PullHolds {
    queues: RwLock<ByQueue>,
    held: AtomicUsize,
    holders: Mutex<Holders>,
    /// Held pulls ended early to make room for another connection's.
    preempted: Cause,
}

/// Tells one held pull to answer now.
#[derive(Default)]
struct EndEarly {
    told: AtomicBool,
    wake: Notify,
}

/// Held pulls by connection.
#[derive(Default)]
struct Holders {
    by_conn: HashMap<SocketAddr, Vec<Arc<EndEarly>>, RandomState>,
    /// `(held pulls, connection)`, ordered: the last is the connection holding the most.
    by_load: BTreeSet<(usize, SocketAddr)>,
}

impl Holders {
    fn held_by(&self, peer: &SocketAddr) -> usize {
        self.by_conn.get(peer).map_or(0, Vec::len)
    }

    /// Records that `peer` now holds `now` pulls, having held `was`.
    fn moved(&mut self, peer: SocketAddr, was: usize, now: usize) {
        self.by_load.remove(&(was, peer));
        if now > 0 {
            self.by_load.insert((now, peer));
        } else {
            self.by_conn.remove(&peer);
        }
    }
}

impl PullHolds {
    /// The wake-up of (topic, queue), created on first use.
    pub fn notify_of(&self, topic: &str, queue_id: u32) -> Arc<Notify> {
        if let Some(n) = self.find(topic, queue_id) {
            return n;
        }
        let mut q = self.queues.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            q.entry(topic.to_owned())
                .or_default()
                .entry(queue_id)
                .or_default(),
        )
    }

    fn find(&self, topic: &str, queue_id: u32) -> Option<Arc<Notify>> {
        let q = self.queues.read().unwrap_or_else(|e| e.into_inner());
        q.get(topic).and_then(|t| t.get(&queue_id)).cloned()
    }

    /// Wakes every pull held on (topic, queue). Called after each append.
    pub fn wake(&self, topic: &str, queue_id: u32) {
        let q = self.queues.read().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = q.get(topic).and_then(|t| t.get(&queue_id)) {
            n.notify_waiters();
        }
    }

    pub fn forget_topic(&self, topic: &str) {
        self.queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
    }

    /// Pulls being held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Held pulls ended early for another connection's, since start.
    pub fn preempted(&self) -> u64 {
        self.preempted.total()
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pull starts waiting; `peer`, its connection (none: not shared out, never ended
    /// early).
    pub fn enter(&self, peer: Option<SocketAddr>) -> HeldGuard<'_> {
        self.held.fetch_add(1, Ordering::Relaxed);
        let ticket = peer.map(|peer| {
            let end = Arc::new(EndEarly::default());
            let mut h = self.holders();
            let tickets = h.by_conn.entry(peer).or_default();
            tickets.push(Arc::clone(&end));
            let now = tickets.len();
            h.moved(peer, now - 1, now);
            (peer, end)
        });
        HeldGuard {
            holds: self,
            ticket,
        }
    }

    /// Ends one held pull of the connection holding the most, when it holds at least two
    /// more than `peer`: room for `peer`'s pull once that one has answered. Whether one
    /// was ended.
    pub fn preempt_for(&self, peer: SocketAddr) -> bool {
        let mut h = self.holders();
        let own = h.held_by(&peer);
        let Some(&(most, victim)) = h.by_load.last() else {
            return false;
        };
        if most <= own.saturating_add(1) {
            return false;
        }
        let Some(end) = h.by_conn.get_mut(&victim).and_then(Vec::pop) else {
            return false;
        };
        h.moved(victim, most, most - 1);
        drop(h);
        end.told.store(true, Ordering::SeqCst);
        end.wake.notify_waiters();
        self.preempted.record(|count| {
            info!(%victim, held = most, for_peer = %peer, count, "ended held pulls early to give other connections their share of limits.inflight_pull: {count} since the last report, the latest shown");
        });
        true
    }
}

/// A held pull, counted (and, with its connection, shared out) until dropped.
pub struct HeldGuard<'a> {
    holds: &'a PullHolds,
    ticket: Option<(SocketAddr, Arc<EndEarly>)>,
}

impl HeldGuard<'_> {
    /// Whether this pull is to answer now to give another connection room.
    pub fn is_ended_early(&self) -> bool {
        self.ticket
            .as_ref()
            .is_some_and(|(_, end)| end.told.load(Ordering::SeqCst))
    }

    /// Resolves once [`is_ended_early`](Self::is_ended_early).
    pub async fn ended_early(&self) {
        let Some((_, end)) = &self.ticket else {
            return std::future::pending().await;
        };
        loop {
            // Registered before looking, so a tell in between is not missed.
            let woken = end.wake.notified();
            let mut woken = std::pin::pin!(woken);
            woken.as_mut().enable();
            if end.told.load(Ordering::SeqCst) {
                return;
            }
            woken.await;
        }
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.holds.held.fetch_sub(1, Ordering::Relaxed);
        if let Some((peer, end)) = self.ticket.take() {
            let mut h = self.holds.holders();
            let Some(tickets) = h.by_conn.get_mut(&peer) else {
                return;
            };
            // (Gone already when it was ended early.)
            if let Some(i) = tickets.iter().position(|t| Arc::ptr_eq(t, &end)) {
                tickets.swap_remove(i);
                let now = tickets.len();
                h.moved(peer, now + 1, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(f: impl std::future::Future<Output = ()>) -> bool {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.as_mut().poll(&mut cx).is_ready()
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn the_connection_holding_the_most_gives_way_until_shares_are_even() {
        let holds = PullHolds::default();
        let (heavy, light) = (peer(1), peer(2));
        let heavies: Vec<_> = (0..4).map(|_| holds.enter(Some(heavy))).collect();
        assert_eq!(holds.held(), 4);
        // 4 against 0, then 3 against 1: one ended each time.
        assert!(holds.preempt_for(light));
        let l1 = holds.enter(Some(light));
        assert!(holds.preempt_for(light));
        let _l2 = holds.enter(Some(light));
        // 2 against 2: the light one is refused, and so is the heavy one.
        assert!(!holds.preempt_for(light));
        assert!(!holds.preempt_for(heavy));
        assert_eq!(holds.preempted(), 2);
        // The two ended were told (the last two entered), the others were not.
        let told: Vec<bool> = heavies.iter().map(|g| ready(g.ended_early())).collect();
        assert_eq!(told, [false, false, true, true]);
        assert!(heavies[3].is_ended_early() && !heavies[0].is_ended_early());
        // Pulls that end leave no trace, ended early or not.
        drop(heavies);
        drop(l1);
        assert!(!holds.preempt_for(heavy), "1 against 0 is even enough");
        drop(_l2);
        let h = holds.holders();
        assert!(h.by_conn.is_empty() && h.by_load.is_empty());
        drop(h);
        assert_eq!(holds.held(), 0);
        // A pull without a connection is never ended early nor counted for anyone.
        let anonymous = holds.enter(None);
        assert!(!holds.preempt_for(light));
        assert!(!ready(anonymous.ended_early()));
    }
}
