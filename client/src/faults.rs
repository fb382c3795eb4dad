//! Brokers found unreachable, and for how long they are left alone (RocketMQ's latency
//! fault tolerance, by address): a producer skips a master in this list when another one
//! can take the send, a consumer reads from a slave while its master is in it. Each
//! consecutive failure doubles the pause, from `fault_backoff_min` to `fault_backoff_max`;
//! one answer from the broker clears it.
//!
//! What counts as a failure: no connection, a closed connection, no answer in time. A
//! broker's error answer is not one (the broker is there), except `StoreBusy` (flow
//! control: its store is behind): that broker is left alone for `busy_backoff`, doubling
//! with each further busy answer in a row (up to 32 times that), so sends go to
//! other brokers meanwhile, and a retry on the same one waits the pause out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, info};
use weir_protocol::{CallError, ErrorCode};

/// A busy broker's pause grows to at most this many times `busy_backoff`.
const BUSY_DOUBLINGS: u32 = 32;

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
    /// The first pause after a busy answer.
    busy_min: Duration,
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

/// Whether `e` is a broker's flow-control refusal: busy, nothing stored, retry.
pub(crate) fn busy(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Remote {
            code: ErrorCode::StoreBusy,
            ..
        }
    )
}

impl Faults {
    pub(crate) fn new(min: Duration, max: Duration, busy_min: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            busy_min,
            by_addr: Mutex::new(HashMap::new()),
            listed: AtomicUsize::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Fault>> {
        self.by_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker at `addr` could not be reached: leave it alone for a while.
    pub(crate) fn failed(&self, addr: &str) {
        let (failures, pause) = self.list(addr, self.min, self.max);
        if failures == 1 {
            info!(broker = addr, pause = ?pause, "broker unreachable; avoiding it for now");
        } else {
            debug!(broker = addr, failures, pause = ?pause, "broker still unreachable");
        }
    }

    /// The broker at `addr` answered busy (flow control): leave it alone for a moment.
    pub(crate) fn busy(&self, addr: &str) {
        let cap = self.busy_min.saturating_mul(BUSY_DOUBLINGS).min(self.max);
        let (times, pause) = self.list(addr, self.busy_min, cap);
        debug!(broker = addr, times, pause = ?pause, "broker busy (its store is behind); avoiding it for a moment");
    }

    /// Lists `addr` for a pause of `base` doubled for each earlier listing in a row (up to
    /// `cap`); the listings in a row and the pause.
    fn list(&self, addr: &str, base: Duration, cap: Duration) -> (u32, Duration) {
        let mut map = self.map();
        let failures = map.get(addr).map_or(1, |f| f.failures.saturating_add(1));
        let pause = base
            .checked_mul(1u32 << (failures - 1).min(16))
            .unwrap_or(cap)
            .min(cap);
        map.insert(
            addr.to_owned(),
            Fault {
                failures,
                until: Instant::now() + pause,
            },
        );
        self.listed.store(map.len(), Ordering::Release);
        (failures, pause)
    }

    /// How long `addr` is still left alone (zero: it may be tried now).
    pub(crate) fn pause_left(&self, addr: &str) -> Duration {
        if self.listed.load(Ordering::Acquire) == 0 {
            return Duration::ZERO;
        }
        self.map().get(addr).map_or(Duration::ZERO, |f| {
            f.until.saturating_duration_since(Instant::now())
        })
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
        let f = Faults::new(
            Duration::from_millis(40),
            Duration::from_millis(100),
            Duration::from_millis(5),
        );
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
    fn a_busy_broker_is_paused_briefly_and_longer_while_it_stays_busy() {
        let f = Faults::new(
            Duration::from_secs(10),
            Duration::from_secs(60),
            Duration::from_millis(400),
        );
        f.busy("a");
        assert!(!f.available("a"));
        let first = f.pause_left("a");
        assert!(first > Duration::ZERO && first <= Duration::from_millis(400));
        f.busy("a");
        assert!(f.pause_left("a") > Duration::from_millis(400), "doubled");
        for _ in 0..10 {
            f.busy("a");
        }
        assert!(
            f.pause_left("a") <= Duration::from_millis(400 * 32),
            "capped"
        );
        assert_eq!(f.pause_left("b"), Duration::ZERO);
        f.answered("a");
        assert!(f.available("a"));
        assert_eq!(f.pause_left("a"), Duration::ZERO);
        assert!(busy(&CallError::Remote {
            code: ErrorCode::StoreBusy,
            message: String::new(),
        }));
        assert!(!busy(&CallError::Timeout(Duration::from_secs(1))));
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
