//! Signed requests: who sent a request, proven with an HMAC-SHA256 over the request, a
//! timestamp and a per-connection sequence number, so a captured request cannot be sent
//! again (RocketMQ's ACL signs with an access key and secret the same way).
//!
//! A signed frame carries an auth section (see [`crate::frame`]):
//! ```text
//! u8   version      1
//! u8   key len      1..=128
//! ...  access key   UTF-8
//! u64  timestamp    ms since the epoch, big-endian
//! u64  session      random per connection
//! u64  sequence     1, 2, ... per session
//! [32] mac          HMAC-SHA256(secret, every field above, kind, code, header, body)
//! ```
//! The receiver refuses a timestamp outside its window (±120 s by default), and keeps per
//! access key and session which sequence numbers it saw ([`ReplayGuard`]), so the same
//! request inside the window is refused too. A session's state is dropped once its newest
//! timestamp has left the window (every request it could replay would be refused by its
//! timestamp then), and an access key holds at most a bounded number of sessions.

mod replay;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use replay::ReplayGuard;

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// Longest access key.
pub const MAX_KEY_LEN: usize = 128;
/// Domain separation: these bytes start every MAC input.
const DOMAIN: &[u8] = b"weir-auth-v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a request's signature was refused (or could not be made).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request is not signed: access control is on here (give an access key and secret)")]
    Unsigned,
    #[error("unreadable signature: {0}")]
    Malformed(&'static str),
    #[error("unknown access key {0:?}")]
    UnknownKey(String),
    #[error(
        "wrong signature for access key {0:?} (a wrong secret, or a request changed on the way)"
    )]
    BadSignature(String),
    #[error(
        "request of access key {key:?} signed {skew_ms} ms away from this server's clock, outside the window of ±{window_ms} ms (a replayed request, or clocks apart)"
    )]
    Expired {
        key: String,
        skew_ms: i64,
        window_ms: u64,
    },
    #[error("replayed request: access key {key:?} sent sequence {seq} of its session already")]
    Replayed { key: String, seq: u64 },
    #[error(
        "request of access key {key:?} arrived after {lag} newer ones of its session: outside the replay window"
    )]
    TooLate { key: String, lag: u64 },
    #[error(
        "request of access key {key:?} signed {early_ms} ms before this server started: a request from before a restart (replayed?), or a clock behind"
    )]
    BeforeStart { key: String, early_ms: u64 },
    #[error("access key {key:?} has {max} sessions within the time window already: refused")]
    TooManySessions { key: String, max: usize },
    #[error("invalid credentials: {0}")]
    InvalidCredentials(&'static str),
}

impl AuthError {
    /// The status a refusal answers with.
    pub fn code(&self) -> crate::ErrorCode {
        use crate::ErrorCode as E;
        match self {
            AuthError::Expired { .. } | AuthError::BeforeStart { .. } => E::RequestExpired,
            AuthError::Replayed { .. } | AuthError::TooLate { .. } => E::RequestReplayed,
            _ => E::AuthFailed,
        }
    }
}

/// Checks signed requests against one secret (whatever access key they name): a name
/// server's cluster secret.
pub struct SharedSecret {
    creds: Credentials,
    guard: ReplayGuard,
}

impl SharedSecret {
    /// `window_ms` as [`ReplayGuard::new`]; a signer may have up to `max_sessions`
    /// connections within the window.
    pub fn new(secret: &str, window_ms: u64, max_sessions: usize) -> Result<Self, AuthError> {
        Ok(Self {
            creds: Credentials::new("shared", secret)?,
            guard: ReplayGuard::new(window_ms, max_sessions).not_before(now_ms()),
        })
    }

    /// Takes a request signed with the secret, in the window, not seen before.
    pub fn check(&self, auth: &[u8], req: &Signed<'_>) -> Result<(), AuthError> {
        let sig = Signature::parse(auth)?;
        let now = now_ms();
        self.guard.check_time(&sig, now)?;
        self.creds.verify(&sig, req)?;
        self.guard.admit(&sig, now)
    }
}

/// An access key and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    access_key: String,
    secret: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    pub fn new(
        access_key: impl Into<String>,
        secret: impl Into<Vec<u8>>,
    ) -> Result<Self, AuthError> {
        let (access_key, secret) = (access_key.into(), secret.into());
        if access_key.is_empty() || access_key.len() > MAX_KEY_LEN {
            return Err(AuthError::InvalidCredentials(
                "an access key is 1 to 128 bytes long",
            ));
        }
        if secret.is_empty() {
            return Err(AuthError::InvalidCredentials("the secret is empty"));
        }
        Ok(Self { access_key, secret })
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length.
        match HmacSha256::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }

    /// The auth section of a request.
    pub fn sign(&self, stamp: Stamp, req: &Signed<'_>) -> Bytes {
        let mut mac = self.mac();
        feed(&mut mac, &self.access_key, stamp, req);
        let tag = mac.finalize().into_bytes();
        let mut out = BytesMut::with_capacity(2 + self.access_key.len() + 24 + MAC_LEN);
        out.put_u8(VERSION);
        out.put_u8(self.access_key.len() as u8);
        out.put_slice(self.access_key.as_bytes());
        out.put_u64(stamp.timestamp_ms);
        out.put_u64(stamp.session);
        out.put_u64(stamp.seq);
        out.put_slice(&tag);
        out.freeze()
    }

    /// Whether `sig` is this principal's signature of `req` (compared in constant time).
    pub fn verify(&self, sig: &Signature<'_>, req: &Signed<'_>) -> Result<(), AuthError> {
        let mut mac = self.mac();
        feed(&mut mac, sig.access_key, sig.stamp, req);
        mac.verify_slice(sig.mac)
            .map_err(|_| AuthError::BadSignature(sig.access_key.to_owned()))
    }

    /// Bytes of the auth section this principal's signatures take.
    pub fn auth_len(&self) -> usize {
        2 + self.access_key.len() + 24 + MAC_LEN
    }
}

/// What makes each signature unique: when, and which request of which session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub timestamp_ms: u64,
    pub session: u64,
    pub seq: u64,
}

/// The signed parts of a request.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub oneway: bool,
    pub code: u16,
    pub header: &'a [u8],
    pub body: &'a [u8],
}

fn feed(mac: &mut HmacSha256, key: &str, stamp: Stamp, req: &Signed<'_>) {
    mac.update(DOMAIN);
    mac.update(&[key.len() as u8]);
    mac.update(key.as_bytes());
    mac.update(&stamp.timestamp_ms.to_be_bytes());
    mac.update(&stamp.session.to_be_bytes());
    mac.update(&stamp.seq.to_be_bytes());
    mac.update(&[u8::from(req.oneway)]);
    mac.update(&req.code.to_be_bytes());
    mac.update(&(req.header.len() as u64).to_be_bytes());
    mac.update(req.header);
    mac.update(&(req.body.len() as u64).to_be_bytes());
    mac.update(req.body);
}

/// A parsed auth section.
#[derive(Debug, Clone, Copy)]
pub struct Signature<'a> {
    pub access_key: &'a str,
    pub stamp: Stamp,
    mac: &'a [u8],
}

impl<'a> Signature<'a> {
    /// Reads an auth section; [`AuthError::Unsigned`] when it is empty.
    pub fn parse(auth: &'a [u8]) -> Result<Self, AuthError> {
        let Some((&version, rest)) = auth.split_first() else {
            return Err(AuthError::Unsigned);
        };
        if version != VERSION {
            return Err(AuthError::Malformed("unknown signature version"));
        }
        let Some((&key_len, rest)) = rest.split_first() else {
            return Err(AuthError::Malformed("no access key"));
        };
        let key_len = usize::from(key_len);
        if key_len == 0 || rest.len() != key_len + 24 + MAC_LEN {
            return Err(AuthError::Malformed("wrong length"));
        }
        let (key, rest) = rest.split_at(key_len);
        let access_key =
            std::str::from_utf8(key).map_err(|_| AuthError::Malformed("access key not UTF-8"))?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&rest[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Signature {
            access_key,
            stamp: Stamp {
                timestamp_ms: u64_at(0),
                session: u64_at(8),
                seq: u64_at(16),
            },
            mac: &rest[24..],
        })
    }
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Signs the requests of one connection: its own session, numbered in order.
pub struct Signer {
    creds: Arc<Credentials>,
    session: u64,
    /// The last sequence number given; held while a signed request is queued, so requests
    /// are queued in the order of their numbers (a thread descheduled between the two
    /// would let thousands overtake it, past the receiver's replay window).
    seq: Mutex<u64>,
}

impl Signer {
    pub fn new(creds: Arc<Credentials>) -> Self {
        Self {
            creds,
            session: random_u64(),
            seq: Mutex::new(0),
        }
    }

    pub fn auth_len(&self) -> usize {
        self.creds.auth_len()
    }

    /// Signs the next request and hands its auth section to `queue`, which queues the
    /// request: no other request of this signer is numbered until `queue` returns.
    pub fn sign_and<T>(&self, req: &Signed<'_>, queue: impl FnOnce(Bytes) -> T) -> T {
        let mut seq = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        *seq = seq.wrapping_add(1);
        let stamp = Stamp {
            timestamp_ms: now_ms(),
            session: self.session,
            seq: *seq,
        };
        queue(self.creds.sign(stamp, req))
    }
}

/// A random u64 (session ids, client ids, where a producer starts its round of queues:
/// unique, not secret): std's randomly keyed hasher over the time, a process-wide counter
/// and the process id.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(header: &'a [u8], body: &'a [u8]) -> Signed<'a> {
        Signed {
            oneway: false,
            code: 10,
            header,
            body,
        }
    }

    #[test]
    fn sign_parse_verify() {
        let c = Credentials::new("app", "secret").unwrap();
        let stamp = Stamp {
            timestamp_ms: 1_700_000_000_000,
            session: 7,
            seq: 3,
        };
        let auth = c.sign(stamp, &req(b"h", b"body"));
        assert_eq!(auth.len(), c.auth_len());
        let sig = Signature::parse(&auth).unwrap();
        assert_eq!(sig.access_key, "app");
        assert_eq!(sig.stamp, stamp);
        c.verify(&sig, &req(b"h", b"body")).unwrap();
        // Any change of the request, or another secret, fails.
        for (h, b) in [(&b"h"[..], &b"bodY"[..]), (b"H", b"body"), (b"hb", b"ody")] {
            assert!(c.verify(&sig, &req(h, b)).is_err());
        }
        let other = Credentials::new("app", "secreT").unwrap();
        assert_eq!(
            other.verify(&sig, &req(b"h", b"body")),
            Err(AuthError::BadSignature("app".into()))
        );
        // Every truncation is refused, never a panic.
        for cut in 0..auth.len() {
            assert!(Signature::parse(&auth[..cut]).is_err());
        }
        assert!(Credentials::new("", "x").is_err());
        assert!(Credentials::new("k", "").is_err());
        assert!(!format!("{c:?}").contains("\"secret\""));
    }
}
