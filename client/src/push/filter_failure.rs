//! What a push consumer does when the group's filter fails its pulls: it tells the
//! application (an [`OnFilterFailure`] callback, a rate-limited warning by default) and
//! keeps pulling the queue with a growing pause, since a new version may be uploaded or
//! the mark reset at any time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::FilterFailed;

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
        let seen: Mutex<HashMap<String, Instant>> = Mutex::new(HashMap::new());
        Self::new(move |f: &FilterFailed| {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if seen
                .get(&f.message)
                .is_some_and(|at| now.duration_since(*at) < WARN_EVERY)
            {
                return;
            }
            if seen.len() >= WARN_REMEMBERED {
                seen.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
            }
            if seen.len() < WARN_REMEMBERED {
                seen.insert(f.message.clone(), now);
            }
            warn!(broker = %f.broker, marked = f.marked, "the group's filter failed a pull: {}", f.message);
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
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), FILTER_BACKOFF_MIN);
        assert_eq!(backoff(2), FILTER_BACKOFF_MIN * 2);
        assert_eq!(backoff(3), FILTER_BACKOFF_MIN * 4);
        assert_eq!(backoff(100), FILTER_BACKOFF_MAX);
    }
}
