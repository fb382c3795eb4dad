//! Queue leases of clustering consumers: per (group, topic, queue) one holder at a time, on
//! a lease the holder renews by locking again. A queue changes hands only when its holder
//! lets go (after committing) or its lease runs out.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weir_protocol::broker::QueueRef;

struct Lease {
    client_id: String,
    expires: Instant,
}

pub struct QueueLocks {
    lease: Duration,
    /// group → queue → lease.
    table: Mutex<HashMap<String, HashMap<QueueRef, Lease>>>,
}

impl QueueLocks {
    pub fn new(lease: Duration) -> Self {
        Self {
            lease,
            table: Mutex::default(),
        }
    }

    fn lock_table(&self) -> MutexGuard<'_, HashMap<String, HashMap<QueueRef, Lease>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants each asked queue that is free, expired, or already `client_id`'s (renewing
    /// its lease); returns the asked queues `client_id` now holds, in the order asked.
    pub fn lock(
        &self,
        group: &str,
        client_id: &str,
        queues: Vec<QueueRef>,
        now: Instant,
    ) -> Vec<QueueRef> {
        let mut table = self.lock_table();
        let leases = table.entry(group.to_owned()).or_default();
        let mut held = Vec::with_capacity(queues.len());
        for q in queues {
            if held.contains(&q) {
                continue;
            }
            let lease = Lease {
                client_id: client_id.to_owned(),
                expires: now + self.lease,
            };
            match leases.get_mut(&q) {
                Some(l) if l.client_id != client_id && l.expires > now => continue,
                Some(l) => *l = lease,
                None => {
                    leases.insert(q.clone(), lease);
                }
            }
            held.push(q);
        }
        held
    }

    /// Releases those of `queues` that `client_id` holds; others are left alone.
    pub fn unlock(&self, group: &str, client_id: &str, queues: &[QueueRef]) {
        let mut table = self.lock_table();
        if let Some(leases) = table.get_mut(group) {
            for q in queues {
                if leases.get(q).is_some_and(|l| l.client_id == client_id) {
                    leases.remove(q);
                }
            }
            if leases.is_empty() {
                table.remove(group);
            }
        }
    }

    /// Releases every lock of a client that is gone.
    pub fn release_client(&self, client_id: &str) {
        let mut table = self.lock_table();
        table.retain(|_, leases| {
            leases.retain(|_, l| l.client_id != client_id);
            !leases.is_empty()
        });
    }

    /// Releases every lock a client holds in one group (it left that group only).
    pub fn release_client_in(&self, group: &str, client_id: &str) {
        let mut table = self.lock_table();
        if let Some(leases) = table.get_mut(group) {
            leases.retain(|_, l| l.client_id != client_id);
            if leases.is_empty() {
                table.remove(group);
            }
        }
    }

    /// The current holder of a queue, if its lease is live.
    #[cfg(test)]
    fn holder(&self, group: &str, q: &QueueRef, now: Instant) -> Option<String> {
        self.lock_table()
            .get(group)?
            .get(q)
            .filter(|l| l.expires > now)
            .map(|l| l.client_id.clone())
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
