//! Produce and consume rates for the Cluster page's chart: the brokers' counters sampled
//! whenever the page asks (every few seconds while one is open), kept in memory.
//!
//! Bounded: at most [`MAX_BROKERS`] addresses, each with samples spanning at most
//! [`WINDOW`] and spaced at least [`MIN_SPACING`] apart. A rate is the difference of two
//! successive samples over their distance; a counter that went down (a broker restart)
//! gives no rate for that step.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

const MAX_BROKERS: usize = 256;
const WINDOW: Duration = Duration::from_secs(15 * 60);
const MIN_SPACING: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at_ms: u64,
    messages_in: u64,
    messages_out: u64,
}

#[derive(Default)]
pub struct History {
    by_addr: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

/// Rates between two samples: (time of the later, in/s, out/s).
pub type Rate = (u64, f64, f64);

impl History {
    /// Records `addr`'s counters at `at_ms` and returns its rates over the window.
    pub fn record(&self, addr: &str, at_ms: u64, messages_in: u64, messages_out: u64) -> Vec<Rate> {
        let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(addr) && map.len() >= MAX_BROKERS {
            return Vec::new();
        }
        let samples = map.entry(addr.to_owned()).or_default();
        let s = Sample {
            at_ms,
            messages_in,
            messages_out,
        };
        let spaced = samples
            .back()
            .is_none_or(|b| at_ms.saturating_sub(b.at_ms) >= MIN_SPACING.as_millis() as u64);
        if spaced {
            samples.push_back(s);
        }
        let oldest = at_ms.saturating_sub(WINDOW.as_millis() as u64);
        while samples.front().is_some_and(|f| f.at_ms < oldest) {
            samples.pop_front();
        }
        rates(samples)
    }
}

fn rates(samples: &VecDeque<Sample>) -> Vec<Rate> {
    samples
        .iter()
        .zip(samples.iter().skip(1))
        .filter_map(|(a, b)| {
            let secs = b.at_ms.checked_sub(a.at_ms).filter(|d| *d > 0)? as f64 / 1000.0;
            let din = b.messages_in.checked_sub(a.messages_in)? as f64;
            let dout = b.messages_out.checked_sub(a.messages_out)? as f64;
            Some((b.at_ms, din / secs, dout / secs))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_successive_samples() {
        let h = History::default();
        assert!(h.record("a", 10_000, 0, 0).is_empty());
        // Too close to the last: not kept.
        assert!(h.record("a", 10_500, 5, 5).is_empty());
        let r = h.record("a", 12_000, 100, 50);
        assert_eq!(r, vec![(12_000, 50.0, 25.0)]);
        // A restart (counters back to 0) gives no rate for that step.
        let r = h.record("a", 14_000, 10, 10);
        assert_eq!(r.len(), 1);
        // Old samples leave the window.
        let later = 14_000 + WINDOW.as_millis() as u64 + 5_000;
        let r = h.record("a", later, 20, 20);
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn addresses_are_bounded() {
        let h = History::default();
        for i in 0..MAX_BROKERS + 10 {
            h.record(&format!("b{i}"), 1, 0, 0);
        }
        let n = h.by_addr.lock().unwrap().len();
        assert_eq!(n, MAX_BROKERS);
    }
}
