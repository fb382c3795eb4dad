//! Keeps a deterministic 1-in-N sample of messages, chosen by a hash of a key: every
//! message with the same key gets the same verdict, on every pull, broker and instance,
//! so a sample follows whole entities (an order, a user) rather than random messages.
//!
//! # Parameters
//!
//! - `n` (required, integer ≥ 1): keep about one key in `n`. `1` keeps every message that
//!   has the key.
//! - `seed` (optional, `u64`, default `0`): picks a different sample of the same size.
//! - `key` (optional, default `first`): what to hash. `first` is the message's first key;
//!   `property:NAME` is the value of the property `NAME` (case-sensitive).
//! - `missing` (optional, default `drop`): what to do with a message that has no such key
//!   (no keys at all, or no such property): `drop` or `keep`. An empty key or property
//!   value is a key like any other.
//!
//! # The hash
//!
//! FNV-1a, 64-bit: start from the offset basis `0xcbf29ce484222325`; for each byte of the
//! seed as 8 bytes little-endian, then each byte of the key's UTF-8 text, XOR the byte into
//! the hash and multiply by the prime `0x100000001b3`, wrapping at 2^64. The message is
//! kept when `hash % n == 0`. In Python:
//!
//! ```text
//! h = 0xcbf29ce484222325
//! for b in seed.to_bytes(8, "little") + key.encode("utf-8"):
//!     h = ((h ^ b) * 0x100000001b3) % 2**64
//! keep = h % n == 0
//! ```
//!
//! The same in Rust, with this crate:
//!
//! ```
//! use weir_filter_key_sample::sample_hash;
//! assert_eq!(sample_hash(0, b"order-42"), 0x2461_14c7_8571_e4f4);
//! assert_eq!(sample_hash(0, b"order-42") % 10, 0); // kept with n = 10
//! assert_eq!(sample_hash(1, b"order-42") % 10, 9); // not with seed = 1
//! ```
//!
//! A property of FNV-1a worth knowing: the hash's low `k` bits depend only on the low `k`
//! bits of each byte. So with an even `n`, part of the verdict (`hash` even) depends only
//! on the parity of the key's bytes. The kept share stays about `1/n` over varied keys,
//! but keys that differ only in, say, one digit by 2 (`a1`, `a3`) share that part; an odd
//! `n` (9, 99, 999) avoids it.

use weir_filter_sdk::{Filter, Message, ParamError, Params};

/// FNV-1a 64 offset basis.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64 prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues an FNV-1a 64 hash from `state` over `bytes`.
pub fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

/// The hash this filter samples by: FNV-1a 64 over `seed` (8 bytes, little-endian), then
/// `key`.
pub fn sample_hash(seed: u64, key: &[u8]) -> u64 {
    fnv1a64(seeded(seed), key)
}

fn seeded(seed: u64) -> u64 {
    fnv1a64(FNV_OFFSET_BASIS, &seed.to_le_bytes())
}

/// Where a message's sampling key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The message's first key.
    First,
    /// The value of this property.
    Property(String),
}

/// The filter.
#[derive(Debug, Clone)]
pub struct KeySample {
    n: u64,
    key: KeySource,
    keep_missing: bool,
    /// The hash after the seed bytes, computed once.
    start: u64,
}

impl Filter for KeySample {
    fn init(params: &Params) -> Result<Self, ParamError> {
        params.allow_only(&["n", "seed", "key", "missing"])?;
        let n: u64 = params.require_parsed("n")?;
        if n == 0 {
            return Err(ParamError::new(
                "parameter \"n\": must be at least 1, got 0",
            ));
        }
        let seed: u64 = params.parse("seed")?.unwrap_or(0);
        let key = match params.get("key").map(str::trim) {
            None => KeySource::First,
            Some(v) if v.eq_ignore_ascii_case("first") => KeySource::First,
            Some(v) => match v.strip_prefix("property:") {
                Some("") => {
                    return Err(ParamError::new(
                        "parameter \"key\": property:NAME needs a property name",
                    ));
                }
                Some(name) => KeySource::Property(name.to_owned()),
                None => {
                    return Err(ParamError::new(format!(
                        "parameter \"key\": expected first or property:NAME, got {v:?}"
                    )));
                }
            },
        };
        let keep_missing = match params.get("missing").map(str::trim) {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("drop") => false,
            Some(v) if v.eq_ignore_ascii_case("keep") => true,
            Some(v) => {
                return Err(ParamError::new(format!(
                    "parameter \"missing\": expected drop or keep, got {v:?}"
                )));
            }
        };
        Ok(KeySample {
            n,
            key,
            keep_missing,
            start: seeded(seed),
        })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        let key = match &self.key {
            KeySource::First => msg.keys().next(),
            KeySource::Property(name) => msg.property(name),
        };
        match key {
            Some(k) => fnv1a64(self.start, k.as_bytes()).is_multiple_of(self.n),
            None => self.keep_missing,
        }
    }
}

weir_filter_sdk::export_filter!(KeySample);

#[cfg(test)]
mod tests {
    use weir_filter_sdk::testing::{TestMessage, run};

    use super::*;

    #[test]
    fn fnv_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
        // The seed goes first, as 8 little-endian bytes.
        let mut bytes = 7_u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"key");
        assert_eq!(sample_hash(7, b"key"), fnv1a64(FNV_OFFSET_BASIS, &bytes));
    }

    fn keyed(keys: &[String]) -> Vec<TestMessage> {
        keys.iter()
            .map(|k| TestMessage::new().key(k.as_str()))
            .collect()
    }

    #[test]
    fn keeps_about_one_in_n() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("order-{i}")).collect();
        for (n, lo, hi) in [(10, 900, 1100), (4, 2300, 2700), (100, 70, 130)] {
            let n_text = n.to_string();
            let kept = run::<KeySample>(&[("n", &n_text)], &keyed(&keys))
                .unwrap()
                .into_iter()
                .filter(|&k| k)
                .count();
            assert!((lo..=hi).contains(&kept), "n = {n}: kept {kept} of 10,000");
        }
        let all = run::<KeySample>(&[("n", "1")], &keyed(&keys)).unwrap();
        assert!(all.iter().all(|&k| k));
    }

    #[test]
    fn same_key_same_verdict() {
        let keys: Vec<String> = (0..500).map(|i| format!("user-{}", i % 50)).collect();
        let params = [("n", "3"), ("seed", "42")];
        let first = run::<KeySample>(&params, &keyed(&keys)).unwrap();
        // Within a batch, and again in a fresh instance.
        for (i, verdict) in first.iter().enumerate() {
            assert_eq!(*verdict, first[i % 50], "{}", keys[i]);
        }
        assert_eq!(run::<KeySample>(&params, &keyed(&keys)).unwrap(), first);
        // And it is the documented hash.
        for (key, verdict) in keys.iter().zip(&first) {
            assert_eq!(*verdict, sample_hash(42, key.as_bytes()).is_multiple_of(3));
        }
    }

    #[test]
    fn seed_changes_the_sample() {
        let keys: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
        let a = run::<KeySample>(&[("n", "10")], &keyed(&keys)).unwrap();
        let b = run::<KeySample>(&[("n", "10"), ("seed", "1")], &keyed(&keys)).unwrap();
        assert_ne!(a, b);
        let explicit_zero = run::<KeySample>(&[("n", "10"), ("seed", "0")], &keyed(&keys));
        assert_eq!(explicit_zero.unwrap(), a);
    }

    #[test]
    fn key_sources() {
        // Find a key this sample keeps and one it drops, by the documented hash.
        let pick = |want: bool| {
            (0..)
                .map(|i| format!("k{i}"))
                .find(|k| sample_hash(0, k.as_bytes()).is_multiple_of(2) == want)
                .unwrap_or_default()
        };
        let (kept, dropped) = (pick(true), pick(false));
        let msgs = [
            TestMessage::new().key(kept.as_str()).key(dropped.as_str()),
            TestMessage::new().key(dropped.as_str()).key(kept.as_str()),
            TestMessage::new().property("user", kept.as_str()),
            TestMessage::new().property("user", dropped.as_str()),
            TestMessage::new(),
        ];
        let first = run::<KeySample>(&[("n", "2")], &msgs).unwrap();
        assert_eq!(first, [true, false, false, false, false]);
        let by_prop = run::<KeySample>(&[("n", "2"), ("key", "property:user")], &msgs).unwrap();
        assert_eq!(by_prop, [false, false, true, false, false]);
        let keep_missing = run::<KeySample>(
            &[("n", "2"), ("key", "property:user"), ("missing", "keep")],
            &msgs,
        )
        .unwrap();
        assert_eq!(keep_missing, [true, true, true, false, true]);
        let first_explicit = run::<KeySample>(&[("n", "2"), ("key", "FIRST")], &msgs);
        assert_eq!(first_explicit.unwrap(), first);
    }

    #[test]
    fn bad_params() {
        let msgs = [TestMessage::new()];
        for (params, want) in [
            (vec![], "missing parameter \"n\""),
            (
                vec![("n", "0")],
                "parameter \"n\": must be at least 1, got 0",
            ),
            (
                vec![("n", "-1")],
                "parameter \"n\": cannot read \"-1\" as u64",
            ),
            (vec![("n", "ten")], "parameter \"n\": cannot read \"ten\""),
            (
                vec![("n", "2"), ("seed", "x")],
                "parameter \"seed\": cannot read \"x\"",
            ),
            (
                vec![("n", "2"), ("key", "last")],
                "parameter \"key\": expected first or property:NAME, got \"last\"",
            ),
            (
                vec![("n", "2"), ("key", "property:")],
                "parameter \"key\": property:NAME needs a property name",
            ),
            (
                vec![("n", "2"), ("missing", "maybe")],
                "parameter \"missing\": expected drop or keep, got \"maybe\"",
            ),
            (
                vec![("n", "2"), ("N", "2")],
                "unknown parameter \"N\" (this filter takes: n, seed, key, missing)",
            ),
        ] {
            let e = run::<KeySample>(&params, &msgs).unwrap_err();
            assert!(e.contains(want), "{params:?}: got {e:?}, want {want:?}");
        }
    }
}
