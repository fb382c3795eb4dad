//! Refusing a signed request seen before: a time window, and per access key and session
//! the sequence numbers seen (a sliding window of [`SEQ_WINDOW`] numbers, as IPsec's
//! anti-replay window).
//!
//! Memory: at most `max_sessions` sessions per access key, each a fixed 600 bytes or so;
//! a session is forgotten once its newest timestamp has left the time window (a request of
//! it would then be refused by its timestamp). Only requests whose MAC verified reach
//! [`ReplayGuard::admit`], so only known access keys hold entries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::{AuthError, Signature};

/// How far behind its session's newest request a request may arrive (requests signed
/// concurrently on one connection can overtake each other a little).
pub const SEQ_WINDOW: u64 = 4096;
const WORDS: usize = (SEQ_WINDOW / 64) as usize;

struct Session {
    max_seq: u64,
    /// Bit `seq % SEQ_WINDOW`: seen, for the sequence numbers within the window.
    seen: [u64; WORDS],
    newest_ms: u64,
}

impl Session {
    fn new(seq: u64, ts: u64) -> Self {
        let mut s = Session {
            max_seq: seq,
            seen: [0; WORDS],
            newest_ms: ts,
        };
        s.set(seq);
        s
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % SEQ_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, b) = Self::bit(seq);
        self.seen[w] |= b;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (w, b) = Self::bit(seq);
        self.seen[w] & b != 0
    }

    /// Records `seq`; false when it was seen (or is too far behind to tell).
    fn admit(&mut self, seq: u64, ts: u64) -> Result<(), u64> {
        if seq > self.max_seq {
            let ahead = seq - self.max_seq;
            if ahead >= SEQ_WINDOW {
                self.seen = [0; WORDS];
            } else {
                for s in self.max_seq + 1..=seq {
                    let (w, b) = Self::bit(s);
                    self.seen[w] &= !b;
                }
            }
            self.max_seq = seq;
        } else {
            let lag = self.max_seq - seq;
            if lag >= SEQ_WINDOW || self.is_set(seq) {
                return Err(lag);
            }
        }
        self.set(seq);
        self.newest_ms = self.newest_ms.max(ts);
        Ok(())
    }
}

#[derive(Default)]
struct KeySessions {
    sessions: HashMap<u64, Session>,
    last_sweep_ms: u64,
}

impl KeySessions {
    fn sweep(&mut self, now_ms: u64, window_ms: u64) {
        self.sessions
            .retain(|_, s| s.newest_ms.saturating_add(window_ms) >= now_ms);
        self.last_sweep_ms = now_ms;
    }
}

/// The time window and the sequence numbers seen, per access key.
pub struct ReplayGuard {
    window_ms: AtomicU64,
    max_sessions: AtomicUsize,
    keys: Mutex<HashMap<String, KeySessions>>,
    /// Requests signed before this are refused: what was seen before a restart is not
    /// remembered, so a request captured then could otherwise be sent again.
    not_before_ms: u64,
}

impl ReplayGuard {
    /// Requests within `window_ms` of this clock are taken; an access key has at most
    /// `max_sessions` sessions (connections) within the window.
    pub fn new(window_ms: u64, max_sessions: usize) -> Self {
        Self {
            window_ms: AtomicU64::new(window_ms),
            max_sessions: AtomicUsize::new(max_sessions.max(1)),
            keys: Mutex::new(HashMap::new()),
            not_before_ms: 0,
        }
    }

    /// Refuses requests signed before `ms` (a server's start: [`crate::auth::now_ms`]).
    pub fn not_before(mut self, ms: u64) -> Self {
        self.not_before_ms = ms;
        self
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms.load(Ordering::Relaxed)
    }

    /// Changes the window and the session bound, keeping what was seen.
    pub fn set_limits(&self, window_ms: u64, max_sessions: usize) {
        self.window_ms.store(window_ms, Ordering::Relaxed);
        self.max_sessions
            .store(max_sessions.max(1), Ordering::Relaxed);
    }

    /// Refuses a timestamp outside the window (check before the MAC: it is cheaper).
    pub fn check_time(&self, sig: &Signature<'_>, now_ms: u64) -> Result<(), AuthError> {
        let ts = sig.stamp.timestamp_ms;
        let window_ms = self.window_ms();
        if ts.abs_diff(now_ms) > window_ms {
            let skew = i64::try_from(ts.abs_diff(now_ms)).unwrap_or(i64::MAX);
            return Err(AuthError::Expired {
                key: sig.access_key.to_owned(),
                skew_ms: if ts < now_ms { -skew } else { skew },
                window_ms,
            });
        }
        if ts < self.not_before_ms {
            return Err(AuthError::BeforeStart {
                key: sig.access_key.to_owned(),
                early_ms: self.not_before_ms - ts,
            });
        }
        Ok(())
    }

    /// Records a verified request, refusing one seen before. Call after the MAC verified.
    pub fn admit(&self, sig: &Signature<'_>, now_ms: u64) -> Result<(), AuthError> {
        self.check_time(sig, now_ms)?;
        let (window_ms, max_sessions) =
            (self.window_ms(), self.max_sessions.load(Ordering::Relaxed));
        let key = sig.access_key;
        let (ts, session, seq) = (sig.stamp.timestamp_ms, sig.stamp.session, sig.stamp.seq);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.contains_key(key) {
            keys.insert(key.to_owned(), KeySessions::default());
        }
        let Some(k) = keys.get_mut(key) else {
            return Err(AuthError::UnknownKey(key.to_owned()));
        };
        if let Some(s) = k.sessions.get_mut(&session) {
            return s.admit(seq, ts).map_err(|lag| {
                if lag >= SEQ_WINDOW {
                    AuthError::TooLate {
                        key: key.to_owned(),
                        lag,
                    }
                } else {
                    AuthError::Replayed {
                        key: key.to_owned(),
                        seq,
                    }
                }
            });
        }
        if k.sessions.len() >= max_sessions || now_ms.saturating_sub(k.last_sweep_ms) > window_ms {
            k.sweep(now_ms, window_ms);
        }
        if k.sessions.len() >= max_sessions {
            return Err(AuthError::TooManySessions {
                key: key.to_owned(),
                max: max_sessions,
            });
        }
        k.sessions.insert(session, Session::new(seq, ts));
        Ok(())
    }

    /// Sessions held now, all keys together.
    pub fn sessions(&self) -> usize {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.values().map(|k| k.sessions.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Credentials, Signed, Stamp};
    use super::*;

    fn signed(session: u64, seq: u64, ts: u64) -> bytes::Bytes {
        let c = Credentials::new("k", "s").unwrap();
        let req = Signed {
            oneway: false,
            code: 1,
            header: b"",
            body: b"",
        };
        c.sign(
            Stamp {
                timestamp_ms: ts,
                session,
                seq,
            },
            &req,
        )
    }

    #[test]
    fn replays_refused_out_of_order_taken_memory_bounded() {
        let now = 1_000_000;
        let g = ReplayGuard::new(120_000, 3);
        let admit = |session, seq, ts| {
            let auth = signed(session, seq, ts);
            g.admit(&Signature::parse(&auth).unwrap(), now)
        };
        admit(1, 1, now).unwrap();
        assert!(matches!(admit(1, 1, now), Err(AuthError::Replayed { .. })));
        // Out of order within the window: each once.
        admit(1, 5, now).unwrap();
        admit(1, 3, now).unwrap();
        admit(1, 2, now).unwrap();
        assert!(matches!(admit(1, 3, now), Err(AuthError::Replayed { .. })));
        admit(1, 5 + SEQ_WINDOW, now).unwrap();
        assert!(matches!(admit(1, 4, now), Err(AuthError::TooLate { .. })));
        // Another session has its own numbers.
        admit(2, 1, now).unwrap();
        // Outside the time window either way.
        assert!(matches!(
            admit(3, 1, now - 120_001),
            Err(AuthError::Expired {
                skew_ms: -120_001,
                ..
            })
        ));
        assert!(matches!(
            admit(3, 1, now + 120_001),
            Err(AuthError::Expired { .. })
        ));
        admit(3, 1, now - 120_000).unwrap();
        assert!(matches!(
            admit(4, 1, now),
            Err(AuthError::TooManySessions { max: 3, .. })
        ));
        assert_eq!(g.sessions(), 3);
        // Sessions whose newest request left the window are forgotten.
        let later = now + 120_001;
        let auth = signed(4, 1, later);
        g.admit(&Signature::parse(&auth).unwrap(), later).unwrap();
        assert_eq!(g.sessions(), 1, "the old sessions dropped, session 4 added");
    }

    #[test]
    fn requests_signed_before_the_start_are_refused() {
        let start = 5_000_000;
        let g = ReplayGuard::new(120_000, 3).not_before(start);
        let check = |ts| g.check_time(&Signature::parse(&signed(1, 1, ts)).unwrap(), start + 10);
        assert!(matches!(
            check(start - 1),
            Err(AuthError::BeforeStart { early_ms: 1, .. })
        ));
        check(start).unwrap();
        check(start + 5).unwrap();
    }
}
