//! What the end-to-end tests check and wait with: key sets and their differences, a
//! remote error's code, polling a condition with a deadline (never a fixed sleep), a
//! deterministic generator, and gzip as the client compresses a component.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use weir_protocol::{CallError, ErrorCode};

use crate::{Received, T};

/// `bytes` gzip-compressed, as the client sends a large filter component.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// The keys of `msgs` as a set; panics on a key received twice.
pub fn key_set(msgs: &[Received]) -> BTreeSet<String> {
    keys_once(msgs, "key")
}

/// The keys of `msgs` as a set; panics naming `what` and a key received twice.
pub fn keys_once(msgs: &[Received], what: &str) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for m in msgs {
        assert!(
            set.insert(m.key().to_owned()),
            "{what}: {} received twice",
            m.key()
        );
    }
    set
}

/// The error of `r`, which must be a remote error with `code`; returns its message.
pub fn remote_error<T: std::fmt::Debug>(r: Result<T, CallError>, code: ErrorCode) -> String {
    match r {
        Err(CallError::Remote { code: c, message }) => {
            assert_eq!(c, code, "expected {code}, got {c}: {message}");
            message
        }
        other => panic!("expected a {code} error, got {other:?}"),
    }
}

/// Waits until `cond` holds, polling every 5 ms; panics after [`T`].
pub async fn eventually(what: &str, cond: impl AsyncFnMut() -> bool) {
    eventually_for(what, T, cond).await;
}

/// Waits until `cond` holds, polling every 5 ms; panics after `timeout`.
pub async fn eventually_for(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A small deterministic generator (SplitMix64), so test data is the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Asserts that `got` equals `want`, reporting the difference (not both sets) if not.
pub fn assert_keys(got: &BTreeSet<String>, want: &BTreeSet<String>, what: &str) {
    if got == want {
        return;
    }
    let missing: Vec<&String> = want.difference(got).take(10).collect();
    let unexpected: Vec<&String> = got.difference(want).take(10).collect();
    panic!(
        "{what}: got {} keys, want {}; missing {} (first: {missing:?}), unexpected {} (first: {unexpected:?})",
        got.len(),
        want.len(),
        want.difference(got).count(),
        got.difference(want).count(),
    );
}
