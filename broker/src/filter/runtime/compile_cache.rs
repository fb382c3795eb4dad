//! Cranelift's incremental compilation cache, kept in memory and bounded in bytes.
//!
//! Filters written in JavaScript or Python carry their whole engine (SpiderMonkey,
//! CPython: 12-19 MB of WebAssembly) and differ only in their data: two JavaScript filters
//! share nearly every function. Cranelift keys each compiled function by a hash of its
//! code, so the second filter of a language compiles from this cache in a fraction of the
//! time. Entries are evicted least recently used first once `capacity` bytes are held;
//! a capacity of 0 turns the cache off (nothing is stored).
//!
//! Invariant: `bytes` is the sum of the held keys' and values' lengths, never above
//! `capacity` after an insert returns.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::CacheStore;

/// What the cache holds and how it served, for logs and stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Held {
    /// key → (value, last use).
    map: HashMap<Vec<u8>, (Vec<u8>, u64)>,
    /// last use → key: the eviction order.
    by_use: BTreeMap<u64, Vec<u8>>,
    bytes: usize,
    clock: u64,
}

impl Held {
    fn tick(&mut self) -> u64 {
        self.clock = self.clock.wrapping_add(1);
        self.clock
    }
}

#[derive(Debug)]
pub struct CompileCache {
    capacity: usize,
    held: Mutex<Held>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CompileCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            held: Mutex::new(Held::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> CompileCacheStats {
        let held = self.lock();
        CompileCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: held.map.len() as u64,
            bytes: held.bytes as u64,
        }
    }
}

impl CacheStore for CompileCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let mut held = self.lock();
        let now = held.tick();
        let Some((value, used)) = held.map.get_mut(key) else {
            drop(held);
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let (old, value) = (std::mem::replace(used, now), value.clone());
        if let Some(k) = held.by_use.remove(&old) {
            held.by_use.insert(now, k);
        }
        drop(held);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(Cow::Owned(value))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len().saturating_add(value.len());
        if size > self.capacity {
            return false;
        }
        let mut held = self.lock();
        let now = held.tick();
        if let Some((old_value, old_used)) = held.map.remove(key) {
            held.by_use.remove(&old_used);
            held.bytes = held
                .bytes
                .saturating_sub(key.len().saturating_add(old_value.len()));
        }
        while held.bytes.saturating_add(size) > self.capacity {
            let Some((_, oldest)) = held.by_use.pop_first() else {
                break;
            };
            if let Some((v, _)) = held.map.remove(&oldest) {
                held.bytes = held
                    .bytes
                    .saturating_sub(oldest.len().saturating_add(v.len()));
            }
        }
        held.by_use.insert(now, key.to_vec());
        held.map.insert(key.to_vec(), (value, now));
        held.bytes = held.bytes.saturating_add(size);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_the_bound_holds() {
        let cache = CompileCache::new(30);
        assert!(cache.insert(b"a", vec![0; 9])); // 10 bytes
        assert!(cache.insert(b"b", vec![1; 9]));
        assert!(cache.insert(b"c", vec![2; 9]));
        assert_eq!(cache.stats().bytes, 30);
        // Using "a" makes "b" the oldest: the next insert evicts it.
        assert_eq!(cache.get(b"a").as_deref(), Some(&[0u8; 9][..]));
        assert!(cache.insert(b"d", vec![3; 9]));
        assert!(cache.get(b"b").is_none());
        assert!(cache.get(b"a").is_some() && cache.get(b"c").is_some());
        let s = cache.stats();
        assert_eq!((s.entries, s.bytes, s.hits, s.misses), (3, 30, 3, 1));
        // Replacing an entry counts its new size only; one larger than the whole cache is
        // refused and changes nothing.
        assert!(cache.insert(b"d", vec![4; 4]));
        assert_eq!(cache.stats().bytes, 25);
        assert!(!cache.insert(b"e", vec![5; 30]));
        assert_eq!(cache.stats().entries, 3);
    }

    #[test]
    fn a_runtime_compiles_what_it_saw_from_the_cache() {
        use crate::filter::{FilterConfig, FilterRuntime};
        use weir_filter_artifacts::{JSON_FIELD, SQL92, read};
        let runtime = FilterRuntime::new(FilterConfig::default()).expect("runtime");
        runtime.compile(&read(SQL92)).expect("sql92");
        let first = runtime.compile_cache_stats();
        assert!(first.misses > 0 && first.entries > 0, "{first:?}");
        // The same code again: nearly every function from the cache (a few trampolines
        // name engine-wide type ids, which differ between compiles).
        runtime.compile(&read(SQL92)).expect("sql92 again");
        let again = runtime.compile_cache_stats();
        let (hits, misses) = (again.hits - first.hits, again.misses - first.misses);
        assert!(hits > 4 * misses, "{first:?} then {again:?}");
        // Another filter of the same language shares its standard library's functions.
        runtime.compile(&read(JSON_FIELD)).expect("json field");
        let other = runtime.compile_cache_stats();
        assert!(other.hits > again.hits, "{other:?}");

        let off = FilterRuntime::new(FilterConfig {
            compile_cache_bytes: 0,
            ..FilterConfig::default()
        })
        .expect("runtime");
        off.compile(&read(SQL92)).expect("sql92");
        assert_eq!(off.compile_cache_stats(), CompileCacheStats::default());
    }

    #[test]
    fn a_cache_of_no_bytes_stores_nothing() {
        let cache = CompileCache::new(0);
        assert!(!cache.insert(b"k", vec![1]));
        assert!(cache.get(b"k").is_none());
    }
}
