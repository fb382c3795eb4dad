//! The guest log limit: at most `per_sec` lines in any one-second window.
//!
//! Invariant (the documented rule, exact): a line at time `t` is let through only when
//! fewer than `per_sec` lines were let through in `(t - 1 s, t]`; so no interval of one
//! second ever holds more than `per_sec` lines, and a quiet filter may log `per_sec` lines
//! at once. The times of at most `per_sec` lines are kept.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// A sliding one-second window over the lines let through. The clock is the caller's
/// (`now`), so tests drive it.
#[derive(Debug)]
pub(super) struct LogLimit {
    per_sec: usize,
    /// When the lines let through in the last second went, oldest first.
    recent: VecDeque<Instant>,
}

impl LogLimit {
    pub(super) fn new(per_sec: u32) -> Self {
        Self {
            per_sec: per_sec as usize,
            recent: VecDeque::new(),
        }
    }

    /// Whether a line at `now` may go out; if so it counts against the next second.
    pub(super) fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() < self.per_sec {
            self.recent.push_back(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ten_at_once_then_none_until_a_second_has_passed() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(10);
        // 12 lines within one millisecond: exactly 10 go out.
        let out = (0..12u64)
            .filter(|i| l.allow(t0 + Duration::from_micros(i * 80)))
            .count();
        assert_eq!(out, 10);
        assert!(!l.allow(t0 + ms(999)));
        // One second after the first line, its slot is free again, and only its slot.
        assert!(l.allow(t0 + ms(1000)));
        assert!(!l.allow(t0 + ms(1000)));
        // The nine others (sent during the first ms) free theirs just after.
        assert_eq!((0..20).filter(|_| l.allow(t0 + ms(1001))).count(), 9);
    }

    #[test]
    fn no_one_second_window_holds_more_than_the_limit() {
        for per_sec in [1u32, 3, 10] {
            let t0 = Instant::now();
            let mut l = LogLimit::new(per_sec);
            // Lines every 7 ms for 5 s, with a burst of 50 at 2.5 s.
            let mut times: Vec<u64> = (0..715).map(|i| i * 7).collect();
            times.extend(std::iter::repeat_n(2500, 50));
            times.sort_unstable();
            let passed: Vec<u64> = times.into_iter().filter(|t| l.allow(t0 + ms(*t))).collect();
            for (i, start) in passed.iter().enumerate() {
                let within = passed[i..]
                    .iter()
                    .take_while(|t| **t < start + 1000)
                    .count();
                assert!(
                    within <= per_sec as usize,
                    "{per_sec}/s: {within} from {start} ms"
                );
            }
            // And the limit is reached, not undercut: a steady stream gets `per_sec` a second.
            let first_second = passed.iter().take_while(|t| **t < 1000).count();
            assert_eq!(first_second, per_sec as usize);
            assert!(passed.len() >= 5 * per_sec as usize, "{}", passed.len());
        }
    }

    #[test]
    fn zero_lets_nothing_through() {
        let mut l = LogLimit::new(0);
        assert!(!l.allow(Instant::now()));
    }
}
