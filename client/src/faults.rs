//! Brokers found unreachable, and for how long they are left alone (RocketMQ's latency
//! fault tolerance, by address): a producer skips a master in this list when another one
//! can take the send, a consumer reads from a slave while its master is in it. Each
//! consecutive failure doubles the pause, from `fault_backoff_min` to `fault_backoff_max`;
//! one answer from the broker clears it.
//!
//! What counts as a failure: no connection, a closed connection, no answer in time. A
//! broker's error answer is not one (the broker is there).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, info};
use weir_protocol::CallError;

#[derive(Debug, Clone, Copy)]
struct Fault {
    /// Consecutive failures.
    failures: u32,
    /// Left alone until then.
    until: Instant,
}

#[derive(Debug)]
pub(crate) struct Faults {
    min: Duration,
    max: Duration,
    by_addr: Mutex<HashMap<String, Fault>>,
    /// How many addresses are listed: lets every successful call skip the lock when none.
    listed: AtomicUsize,
}

/// Whether `e` says the broker could not be reached (rather than that it answered no).
pub(crate) fn unreachable(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Connect { .. } | CallError::Closed { .. } | CallError::Timeout(_)
    )
}

impl Faults {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            by_addr: Mutex::new(HashMap::new()),
            listed: AtomicUsize::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Fault>> {
        self.by_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker at `addr` could not be reached: leave it alone for a while.
    pub(crate) fn failed(&self, addr: &str) {
        let mut map = self.map();
        let failures = map.get(addr).map_or(1, |f| f.failures.saturating_add(1));
        let pause = self
            .min
            .checked_mul(1u32 << (failures - 1).min(16))
            .unwrap_or(self.max)
            .min(self.max);
        if failures == 1 {
            info!(broker = addr, pause = ?pause, "broker unreachable; avoiding it for now");
        } else {
            debug!(broker = addr, failures, pause = ?pause, "broker still unreachable");
        }
        map.insert(
            addr.to_owned(),
            Fault {
                failures,
                until: Instant::now() + pause,
            },
        );
        self.listed.store(map.len(), Ordering::Release);
    }

    /// The broker at `addr` answered.
    pub(crate) fn answered(&self, addr: &str) {
        if self.listed.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.map();
        if map.remove(addr).is_some() {
            info!(broker = addr, "broker reachable again");
        }
        self.listed.store(map.len(), Ordering::Release);
    }

    /// Whether `addr` may be tried now (not listed, or its pause is over).
    pub(crate) fn available(&self, addr: &str) -> bool {
        if self.listed.load(Ordering::Acquire) == 0 {
            return true;
        }
        self.map()
            .get(addr)
            .is_none_or(|f| f.until <= Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_and_an_answer_clears_them() {
        let f = Faults::new(Duration::from_millis(40), Duration::from_millis(100));
        assert!(f.available("a"));
        f.failed("a");
        assert!(!f.available("a"));
        assert!(f.available("b"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(f.available("a"), "the first pause is the minimum");
        f.failed("a");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!f.available("a"), "the second pause is twice as long");
        for _ in 0..20 {
            f.failed("a");
        }
        let until = f.map()["a"].until;
        assert!(
            until <= Instant::now() + Duration::from_millis(100),
            "capped"
        );
        f.answered("a");
        assert!(f.available("a"));
        assert_eq!(f.listed.load(Ordering::Acquire), 0);
    }

    #[test]
    fn only_unreachable_brokers_count() {
        assert!(unreachable(&CallError::Timeout(Duration::from_secs(1))));
        assert!(unreachable(&CallError::Closed { peer: "x".into() }));
        assert!(!unreachable(&CallError::Remote {
            code: weir_protocol::ErrorCode::SystemBusy,
            message: String::new(),
        }));
    }
}
