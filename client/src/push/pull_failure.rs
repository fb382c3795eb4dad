//! What a push consumer does when a pull fails. When the group's filter failed it: it
//! tells the application (an [`OnFilterFailure`] callback, a rate-limited warning by
//! default) and keeps pulling the queue with a growing pause, since a new version may be
//! uploaded or the mark reset at any time. Otherwise (the broker busy or unreachable, a
//! refusal): it tells the application ([`OnPullError`], the same kind of warning by
//! default) and pulls the queue again after a second.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::{ClientError, FilterFailed, MessageQueue};

/// First pause after a filter failure, doubled after each one in a row up to
/// [`FILTER_BACKOFF_MAX`]; a successful pull starts again from here.
pub(super) const FILTER_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub(super) const FILTER_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The default callback repeats a warning about the same failure at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Distinct failures the default callback remembers (older ones are forgotten).
const WARN_REMEMBERED: usize = 64;

/// Called, on the consumer's pull task, each time a pull fails because the group's filter
/// failed (`PushConsumerConfig::on_filter_failure`). It should return quickly.
#[derive(Clone)]
pub struct OnFilterFailure(Arc<dyn Fn(&FilterFailed) + Send + Sync>);

impl OnFilterFailure {
    pub fn new(f: impl Fn(&FilterFailed) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The default: a `tracing` warning naming the filter, its version and the cause, at
    /// most once a minute for the same failure.
    pub fn warn() -> Self {
        let limiter = WarnLimiter::default();
        Self::new(move |f: &FilterFailed| {
            if limiter.allow(&f.message, Instant::now()) {
                warn!(broker = %f.broker, marked = f.marked, "the group's filter failed a pull: {}", f.message);
            }
        })
    }

    pub(super) fn call(&self, f: &FilterFailed) {
        (self.0)(f)
    }
}

impl Default for OnFilterFailure {
    fn default() -> Self {
        Self::warn()
    }
}

impl fmt::Debug for OnFilterFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnFilterFailure(..)")
    }
}

/// Called, on the consumer's pull task, each time a pull of a queue fails for another
/// reason than the group's filter (`PushConsumerConfig::on_pull_error`): the broker is
/// busy, unreachable, or refused the pull. The queue is pulled again after a second. It
/// should return quickly.
#[derive(Clone)]
pub struct OnPullError(Arc<PullErrorFn>);

type PullErrorFn = dyn Fn(&MessageQueue, &ClientError) + Send + Sync;

impl OnPullError {
    pub fn new(f: impl Fn(&MessageQueue, &ClientError) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// The default: a `tracing` warning naming the queue and the error, at most once a
    /// minute for the same error.
    pub fn warn() -> Self {
        let limiter = WarnLimiter::default();
        Self::new(move |mq: &MessageQueue, e: &ClientError| {
            if limiter.allow(&e.to_string(), Instant::now()) {
                warn!(queue = ?mq, error = %e, "pull failed; trying again");
            }
        })
    }

    pub(super) fn call(&self, mq: &MessageQueue, e: &ClientError) {
        (self.0)(mq, e)
    }
}

impl Default for OnPullError {
    fn default() -> Self {
        Self::warn()
    }
}

impl fmt::Debug for OnPullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnPullError(..)")
    }
}

/// Lets a warning about the same failure through at most once per [`WARN_EVERY`],
/// remembering at most [`WARN_REMEMBERED`] failures (beyond that, new ones are let through
/// without being remembered, so the memory stays bounded).
#[derive(Default)]
struct WarnLimiter {
    seen: Mutex<HashMap<String, Instant>>,
}

impl WarnLimiter {
    fn allow(&self, key: &str, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < WARN_EVERY)
        {
            return false;
        }
        if seen.len() >= WARN_REMEMBERED {
            seen.retain(|_, at| now.saturating_duration_since(*at) < WARN_EVERY);
        }
        if seen.len() < WARN_REMEMBERED || seen.contains_key(key) {
            seen.insert(key.to_owned(), now);
        }
        true
    }
}

/// The pause after `failures_in_a_row` filter failures (1 or more).
pub(super) fn backoff(failures_in_a_row: u32) -> Duration {
    let shift = failures_in_a_row.saturating_sub(1).min(16);
    FILTER_BACKOFF_MIN
        .saturating_mul(1 << shift)
        .min(FILTER_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_warning_repeats_once_a_minute_per_failure() {
        let l = WarnLimiter::default();
        let t0 = Instant::now();
        assert!(l.allow("a", t0));
        assert!(!l.allow("a", t0 + Duration::from_secs(59)));
        assert!(l.allow("b", t0 + Duration::from_secs(1)), "another failure");
        assert!(l.allow("a", t0 + WARN_EVERY));
        // Bounded: past the limit, new failures still warn, unremembered.
        for i in 0..WARN_REMEMBERED * 2 {
            assert!(l.allow(&format!("k{i}"), t0 + WARN_EVERY));
        }
        assert!(l.seen.lock().unwrap().len() <= WARN_REMEMBERED);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), FILTER_BACKOFF_MIN);
        assert_eq!(backoff(2), FILTER_BACKOFF_MIN * 2);
        assert_eq!(backoff(3), FILTER_BACKOFF_MIN * 4);
        assert_eq!(backoff(100), FILTER_BACKOFF_MAX);
    }
}
