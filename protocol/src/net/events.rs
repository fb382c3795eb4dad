//! What peers can make a server do that is worth counting: bad frames, timeouts, refused
//! connections. Each cause is counted, and logged at most once per [`LOG_INTERVAL`] with
//! the count since its previous line, so a flood of them costs one line per interval.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one log line per cause this often.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) const NEVER: u64 = u64::MAX;

/// Milliseconds since the first call (a clock for atomics).
pub(crate) fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(NEVER - 1)
}

/// One cause: a total, and a rate-limited log line (also for what clients cause beyond
/// the connection, such as the broker's access refusals).
pub struct Cause {
    total: AtomicU64,
    unlogged: AtomicU64,
    last_log_ms: AtomicU64,
}

impl Default for Cause {
    fn default() -> Self {
        Self::new()
    }
}

impl Cause {
    pub const fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            last_log_ms: AtomicU64::new(NEVER),
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one; calls `log` with the count since the last line when a line is due.
    pub fn record(&self, log: impl FnOnce(u64)) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let interval = LOG_INTERVAL.as_millis() as u64;
        if last != NEVER && now.saturating_sub(last) < interval {
            return;
        }
        // One thread wins the line.
        if self
            .last_log_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            log(self.unlogged.swap(0, Ordering::Relaxed));
        }
    }
}

/// The causes a server (or, together, every client connection) counts.
pub(crate) struct Events {
    /// Protocol violations: bad version or kind, frame too large, inconsistent lengths.
    pub(crate) bad_frames: Cause,
    /// Frames not whole within the frame read timeout.
    pub(crate) frame_timeouts: Cause,
    /// Connections closed after the idle timeout.
    pub(crate) idle_closes: Cause,
    /// Connections refused at the cap.
    pub(crate) refused: Cause,
    /// Peers gone mid-frame or with a reset: ordinary, only counted (debug log).
    pub(crate) resets: AtomicU64,
    /// TLS handshakes that failed or did not finish in time.
    pub(crate) tls_failures: Cause,
    /// Plaintext connections to a port that takes TLS only.
    pub(crate) plaintext_refused: Cause,
    /// Connections paused at the server's `max_pending_bytes_total` (each time one
    /// starts waiting).
    pub(crate) budget_pauses: Cause,
    /// Large frames that waited for room to be read.
    pub(crate) frame_waits: Cause,
    /// Answers refused past the server's total (see `ServerStats::answers_refused`).
    pub(crate) answers_refused: Cause,
    /// Connections closed with their answers unread (see `ServerStats::unread_closes`).
    pub(crate) unread_closes: Cause,
}

impl Events {
    pub const fn new() -> Self {
        Self {
            bad_frames: Cause::new(),
            frame_timeouts: Cause::new(),
            idle_closes: Cause::new(),
            refused: Cause::new(),
            resets: AtomicU64::new(0),
            tls_failures: Cause::new(),
            plaintext_refused: Cause::new(),
            budget_pauses: Cause::new(),
            frame_waits: Cause::new(),
            answers_refused: Cause::new(),
            unread_closes: Cause::new(),
        }
    }
}

/// Events of connections that belong to no server (clients).
pub(crate) static CLIENT_EVENTS: Events = Events::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_since_the_last() {
        let c = Cause::new();
        let mut lines = Vec::new();
        for _ in 0..1000 {
            c.record(|n| lines.push(n));
        }
        assert_eq!(lines, vec![1], "the first is logged at once, the rest wait");
        assert_eq!(c.total(), 1000);
        // Due again (as if the interval had passed): the next line carries the rest.
        c.last_log_ms.store(NEVER, Ordering::Relaxed);
        c.record(|n| lines.push(n));
        assert_eq!(lines, vec![1, 1000]);
    }
}
