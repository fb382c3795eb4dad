//! Queue leases of clustering consumers: per (group, topic, queue) one holder at a time, on
//! a lease the holder renews by locking again. A queue changes hands only when its holder
//! lets go (after committing) or its lease runs out.
//!
//! Invariants: only queues that exist are leased (the caller filters), at most
//! [`MAX_LEASES`] at once, and expired leases are dropped at least once a lease period. A
//! client that leased every queue under a megabyte-long id for one group name after another
//! once held 200 bytes for each byte it sent, for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::warn;
use weir_protocol::broker::QueueRef;
use weir_protocol::net::Cause;

/// Leases held at once, every group together: ~200 bytes each at the longest names. An
/// orderly group leases each queue of its topics once, so this is room for hundreds of
/// such groups over thousands of queues.
pub const MAX_LEASES: usize = 262_144;

struct Lease {
    client_id: Arc<str>,
    expires: Instant,
}

#[derive(Default)]
struct Table {
    /// group → queue → lease.
    groups: HashMap<String, HashMap<QueueRef, Lease>>,
    /// Leases in `groups`.
    leases: usize,
    /// When expired leases were last dropped.
    swept: Option<Instant>,
}

impl Table {
    /// Drops expired leases, once a `period` at most (the walk is over every lease).
    fn sweep(&mut self, now: Instant, period: Duration) {
        if self
            .swept
            .is_some_and(|at| now.saturating_duration_since(at) < period)
        {
            return;
        }
        self.swept = Some(now);
        self.groups.retain(|_, leases| {
            leases.retain(|_, l| l.expires > now);
            !leases.is_empty()
        });
        self.leases = self.groups.values().map(HashMap::len).sum();
    }

    /// Removes the leases of `group` that `drop` says so of (the whole group if empty after).
    fn remove_in(&mut self, group: &str, mut drop: impl FnMut(&QueueRef, &Lease) -> bool) {
        if let Some(leases) = self.groups.get_mut(group) {
            let before = leases.len();
            leases.retain(|q, l| !drop(q, l));
            self.leases = self.leases.saturating_sub(before - leases.len());
            if leases.is_empty() {
                self.groups.remove(group);
            }
        }
    }
}

pub struct QueueLocks {
    lease: Duration,
    max_leases: usize,
    table: Mutex<Table>,
    /// Leases refused because [`MAX_LEASES`] were held: logged once per interval.
    refused_at_cap: Cause,
}

impl QueueLocks {
    pub fn new(lease: Duration) -> Self {
        Self::with_max(lease, MAX_LEASES)
    }

    fn with_max(lease: Duration, max_leases: usize) -> Self {
        Self {
            lease,
            max_leases,
            table: Mutex::default(),
            refused_at_cap: Cause::new(),
        }
    }

    fn lock_table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants each asked queue that is free, expired, or already `client_id`'s (renewing
    /// its lease); returns the asked queues `client_id` now holds, in the order asked. A
    /// free queue is not granted while [`MAX_LEASES`] are held.
    pub fn lock(
        &self,
        group: &str,
        client_id: &str,
        queues: Vec<QueueRef>,
        now: Instant,
    ) -> Vec<QueueRef> {
        let mut table = self.lock_table();
        table.sweep(now, self.lease);
        let client: Arc<str> = Arc::from(client_id);
        let Table {
            groups,
            leases: count,
            ..
        } = &mut *table;
        let leases = groups.entry(group.to_owned()).or_default();
        let mut held = Vec::with_capacity(queues.len());
        let mut refused = 0u64;
        for q in queues {
            if held.contains(&q) {
                continue;
            }
            let lease = Lease {
                client_id: Arc::clone(&client),
                expires: now + self.lease,
            };
            match leases.get_mut(&q) {
                Some(l) if *l.client_id != *client_id && l.expires > now => continue,
                Some(l) => *l = lease,
                None if *count >= self.max_leases => {
                    refused += 1;
                    continue;
                }
                None => {
                    leases.insert(q.clone(), lease);
                    *count += 1;
                }
            }
            held.push(q);
        }
        if leases.is_empty() {
            groups.remove(group);
        }
        drop(table);
        for _ in 0..refused {
            self.refused_at_cap.record(|n| {
                warn!(group, client = client_id, refused = n, max = self.max_leases, "queue leases refused: the broker holds its most (they free as their holders let go or stop renewing)");
            });
        }
        held
    }

    /// Releases those of `queues` that `client_id` holds; others are left alone.
    pub fn unlock(&self, group: &str, client_id: &str, queues: &[QueueRef]) {
        self.lock_table().remove_in(group, |q, l| {
            *l.client_id == *client_id && queues.contains(q)
        });
    }

    /// Releases every lock of a client that is gone.
    pub fn release_client(&self, client_id: &str) {
        let mut table = self.lock_table();
        let groups: Vec<String> = table.groups.keys().cloned().collect();
        for g in groups {
            table.remove_in(&g, |_, l| *l.client_id == *client_id);
        }
    }

    /// Releases every lock a client holds in one group (it left that group only).
    pub fn release_client_in(&self, group: &str, client_id: &str) {
        self.lock_table()
            .remove_in(group, |_, l| *l.client_id == *client_id);
    }

    /// Leases held (expired ones not yet dropped included).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock_table().leases
    }

    /// The current holder of a queue, if its lease is live.
    #[cfg(test)]
    fn holder(&self, group: &str, q: &QueueRef, now: Instant) -> Option<String> {
        self.lock_table()
            .groups
            .get(group)?
            .get(q)
            .filter(|l| l.expires > now)
            .map(|l| l.client_id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(topic: &str, queue_id: u32) -> QueueRef {
        QueueRef {
            topic: topic.into(),
            queue_id,
        }
    }

    #[test]
    fn second_holder_is_refused_and_groups_are_separate() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(
            locks.lock("g", "a", vec![q("T", 0), q("T", 1)], t),
            [q("T", 0), q("T", 1)]
        );
        assert_eq!(
            locks.lock("g", "b", vec![q("T", 1), q("T", 2)], t),
            [q("T", 2)]
        );
        assert_eq!(locks.lock("other", "b", vec![q("T", 0)], t), [q("T", 0)]);
        assert_eq!(locks.holder("g", &q("T", 0), t).as_deref(), Some("a"));
    }

    #[test]
    fn expiry_hands_over_and_renewal_extends() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t = Instant::now();
        locks.lock("g", "a", vec![q("T", 0), q("T", 1)], t);
        // Renew queue 0 only, half way through the lease.
        let half = t + Duration::from_secs(30);
        assert_eq!(locks.lock("g", "a", vec![q("T", 0)], half), [q("T", 0)]);
        let after_first = t + Duration::from_secs(61);
        assert_eq!(
            locks.lock("g", "b", vec![q("T", 0), q("T", 1)], after_first),
            [q("T", 1)],
            "queue 0 was renewed, queue 1 expired"
        );
        let after_renewal = half + Duration::from_secs(61);
        assert_eq!(
            locks.lock("g", "b", vec![q("T", 0)], after_renewal),
            [q("T", 0)]
        );
        assert_eq!(
            locks.holder("g", &q("T", 0), after_renewal).as_deref(),
            Some("b")
        );
    }

    #[test]
    fn leases_stop_at_the_most_and_expired_ones_are_dropped() {
        let lease = Duration::from_secs(60);
        let locks = QueueLocks::with_max(lease, 3);
        let t = Instant::now();
        let all = || (0..5).map(|i| q("T", i)).collect::<Vec<_>>();
        assert_eq!(locks.lock("g1", "a", all(), t).len(), 3);
        // Another group finds no room, but a holder renews what it holds.
        assert_eq!(locks.lock("g2", "b", all(), t), []);
        assert_eq!(locks.lock("g1", "a", all(), t).len(), 3);
        assert_eq!(locks.len(), 3);
        // Let go of one: room for one more.
        locks.unlock("g1", "a", &[q("T", 0)]);
        assert_eq!(locks.lock("g2", "b", all(), t), [q("T", 0)]);
        // Expired leases (no renewal for a lease period) make room for everyone.
        let later = t + lease + Duration::from_secs(1);
        assert_eq!(locks.lock("g3", "c", all(), later).len(), 3);
        assert_eq!(locks.len(), 3);
        locks.release_client("c");
        assert_eq!(locks.len(), 0);
    }

    #[test]
    fn unlock_by_a_non_holder_is_ignored() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t = Instant::now();
        locks.lock("g", "a", vec![q("T", 0), q("T", 1)], t);
        locks.unlock("g", "b", &[q("T", 0)]);
        assert_eq!(locks.lock("g", "b", vec![q("T", 0)], t), []);
        locks.unlock("g", "a", &[q("T", 0)]);
        assert_eq!(locks.lock("g", "b", vec![q("T", 0)], t), [q("T", 0)]);
        assert_eq!(locks.holder("g", &q("T", 1), t).as_deref(), Some("a"));
    }

    #[test]
    fn a_gone_client_loses_its_locks() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t = Instant::now();
        locks.lock("g", "a", vec![q("T", 0)], t);
        locks.lock("h", "a", vec![q("T", 0)], t);
        locks.lock("g", "b", vec![q("T", 1)], t);
        locks.release_client("a");
        assert_eq!(
            locks.lock("g", "c", vec![q("T", 0), q("T", 1)], t),
            [q("T", 0)]
        );
        assert_eq!(locks.lock("h", "c", vec![q("T", 0)], t), [q("T", 0)]);
    }

    #[test]
    fn leaving_one_group_keeps_the_locks_of_others() {
        let locks = QueueLocks::new(Duration::from_secs(60));
        let t = Instant::now();
        locks.lock("g", "a", vec![q("T", 0)], t);
        locks.lock("h", "a", vec![q("T", 0)], t);
        locks.release_client_in("g", "a");
        assert_eq!(locks.lock("g", "c", vec![q("T", 0)], t), [q("T", 0)]);
        assert_eq!(locks.lock("h", "c", vec![q("T", 0)], t), []);
        assert_eq!(locks.holder("h", &q("T", 0), t).as_deref(), Some("a"));
    }
}
