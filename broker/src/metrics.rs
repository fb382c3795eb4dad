//! What the broker counts as it serves, for its metrics endpoint
//! (`service::metrics` renders it with the rest of the broker's state) and for
//! `weir broker stats` (`crate::stats` reads the totals here): produced and consumed
//! messages and bytes per topic (and group) and in all, send, pull and flush latencies,
//! and error answers by status. The one place sends and pulls are counted.
//!
//! Recording is a map lookup under a read lock and relaxed atomic adds. Label values are
//! only names the broker has already checked: a topic that exists (or was just created by
//! the send) and a valid group name; series are bounded by `limits.max_topics` per map,
//! past which new ones are not created (counted as dropped).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use foldhash::fast::RandomState;
use weir_protocol::ErrorCode;
use weir_protocol::metrics::{Histogram, LATENCY_BUCKETS};
use weir_protocol::record::RecordView;
use weir_store::StoredRecord;

/// The first bytes of a record, where its body's length usually is (after the fixed
/// header, the topic, tags, keys and properties).
const BODY_LEN_WITHIN: usize = 192;

/// Messages and bytes (message bodies) that went one way.
#[derive(Debug, Default)]
pub struct Flow {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

impl Flow {
    fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (messages, bytes) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.messages.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Error statuses counted one by one (every status weir has is below this).
const ERROR_SLOTS: usize = 256;

type ByTopic = HashMap<String, Arc<Flow>, RandomState>;

pub struct BrokerMetrics {
    max_series: usize,
    /// Every produced message, whatever its series: `weir broker stats`' `messages_in`.
    produced_total: Flow,
    /// Every delivered message: `weir broker stats`' `messages_out`.
    consumed_total: Flow,
    produced: RwLock<ByTopic>,
    /// topic → group → flow.
    consumed: RwLock<HashMap<String, ByTopic, RandomState>>,
    consumed_series: AtomicUsize,
    /// Series not created because their map was full.
    pub dropped_series: AtomicU64,
    pub send_latency: Histogram,
    pub pull_latency: Histogram,
    /// Commit log syncs (fed by the store's sync listener).
    pub flush_latency: Arc<Histogram>,
    errors: Box<[AtomicU64]>,
}

impl BrokerMetrics {
    pub fn new(max_series: usize) -> Self {
        Self {
            max_series,
            produced_total: Flow::default(),
            consumed_total: Flow::default(),
            produced: RwLock::default(),
            consumed: RwLock::default(),
            consumed_series: AtomicUsize::new(0),
            dropped_series: AtomicU64::new(0),
            send_latency: Histogram::new(LATENCY_BUCKETS),
            pull_latency: Histogram::new(LATENCY_BUCKETS),
            flush_latency: Arc::new(Histogram::new(LATENCY_BUCKETS)),
            errors: (0..ERROR_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// `messages` with bodies of `bytes` stored on `topic` (an existing topic) by a
    /// producer: a send, a batch, a committed transaction.
    pub fn produced(&self, topic: &str, messages: u64, bytes: u64) {
        self.produced_total.add(messages, bytes);
        if let Some(f) = read(&self.produced).get(topic) {
            return f.add(messages, bytes);
        }
        let mut map = write(&self.produced);
        if !map.contains_key(topic) && map.len() >= self.max_series {
            self.dropped_series.fetch_add(1, Ordering::Relaxed);
            return;
        }
        map.entry(topic.to_owned())
            .or_default()
            .add(messages, bytes);
    }

    /// The produced counter of `topic` (an existing topic), made if there is room for its
    /// series, for a caller that keeps it: see [`BrokerMetrics::produced_into`].
    pub fn produced_flow(&self, topic: &str) -> Option<Arc<Flow>> {
        if let Some(f) = read(&self.produced).get(topic) {
            return Some(Arc::clone(f));
        }
        let mut map = write(&self.produced);
        if !map.contains_key(topic) && map.len() >= self.max_series {
            self.dropped_series.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Arc::clone(map.entry(topic.to_owned()).or_default()))
    }

    /// [`BrokerMetrics::produced`] into a topic's counter kept from `produced_flow`
    /// (`None`: its series could not be made, counted in the totals only).
    pub fn produced_into(&self, flow: Option<&Flow>, messages: u64, bytes: u64) {
        self.produced_total.add(messages, bytes);
        if let Some(f) = flow {
            f.add(messages, bytes);
        }
    }

    /// `records` of `topic` (an existing topic) delivered to `group` (a valid name; none:
    /// counted in the totals only).
    pub fn consumed(&self, topic: &str, group: Option<&str>, records: &[StoredRecord]) {
        if records.is_empty() {
            return;
        }
        // A filtered pull's records were last read by a filter thread, on the other core,
        // or by nobody: ask for the lines their lengths are in all at once, so that their
        // cache misses overlap instead of coming one after another.
        for r in records {
            weir_store::prefetch(r.bytes(), BODY_LEN_WITHIN);
        }
        let bytes = records
            .iter()
            .filter_map(|r| RecordView::body_len(r.bytes()).ok().map(|n| n as u64))
            .fold(0u64, u64::saturating_add);
        let messages = records.len() as u64;
        self.consumed_total.add(messages, bytes);
        let Some(group) = group else {
            return;
        };
        if let Some(f) = read(&self.consumed).get(topic).and_then(|g| g.get(group)) {
            return f.add(messages, bytes);
        }
        let mut map = write(&self.consumed);
        let groups = map.entry(topic.to_owned()).or_default();
        if let Some(f) = groups.get(group) {
            return f.add(messages, bytes);
        }
        if self.consumed_series.load(Ordering::Relaxed) >= self.max_series {
            self.dropped_series.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.consumed_series.fetch_add(1, Ordering::Relaxed);
        groups
            .entry(group.to_owned())
            .or_default()
            .add(messages, bytes);
    }

    /// An error answer.
    pub fn error(&self, code: ErrorCode) {
        let slot = usize::from(code as u16).min(ERROR_SLOTS - 1);
        if let Some(c) = self.errors.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Error answers so far, by status.
    pub fn errors(&self) -> Vec<(ErrorCode, u64)> {
        self.errors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                let code = ErrorCode::from_u16(u16::try_from(i).ok()?)?;
                (n > 0).then_some((code, n))
            })
            .collect()
    }

    /// (messages, bytes) produced since start, every topic.
    pub fn produced_total(&self) -> (u64, u64) {
        self.produced_total.get()
    }

    /// (messages, bytes) delivered by pulls since start, every topic and group.
    pub fn consumed_total(&self) -> (u64, u64) {
        self.consumed_total.get()
    }

    pub fn observe_send(&self, d: Duration) {
        self.send_latency.observe(d);
    }

    pub fn observe_pull(&self, d: Duration) {
        self.pull_latency.observe(d);
    }

    /// Produced flows by topic, sorted; topics `exists` denies are forgotten.
    pub fn produced_by_topic(&self, exists: impl Fn(&str) -> bool) -> Vec<(String, (u64, u64))> {
        let mut map = write(&self.produced);
        map.retain(|t, _| exists(t));
        let mut out: Vec<_> = map.iter().map(|(t, f)| (t.clone(), f.get())).collect();
        out.sort();
        out
    }

    /// Consumed flows by (topic, group), sorted; topics `exists` denies are forgotten.
    pub fn consumed_by_group(
        &self,
        exists: impl Fn(&str) -> bool,
    ) -> Vec<((String, String), (u64, u64))> {
        let mut map = write(&self.consumed);
        map.retain(|t, _| exists(t));
        let series = map.values().map(HashMap::len).sum();
        self.consumed_series.store(series, Ordering::Relaxed);
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|(t, groups)| {
                groups
                    .iter()
                    .map(move |(g, f)| ((t.clone(), g.clone()), f.get()))
            })
            .collect();
        out.sort();
        out
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_bounded_and_errors_counted() {
        let m = BrokerMetrics::new(2);
        m.produced("a", 2, 10);
        m.produced("b", 1, 1);
        m.produced("c", 1, 1);
        m.produced("a", 1, 5);
        assert_eq!(m.dropped_series.load(Ordering::Relaxed), 1);
        assert_eq!(m.produced_total(), (5, 17), "totals count what series drop");
        assert_eq!(
            m.produced_by_topic(|t| t != "b"),
            vec![("a".to_owned(), (3, 15))]
        );
        // "b" was forgotten: room for "c" now.
        m.produced("c", 1, 1);
        assert_eq!(m.produced_by_topic(|_| true).len(), 2);
        m.error(ErrorCode::SystemBusy);
        m.error(ErrorCode::SystemBusy);
        m.error(ErrorCode::AccessDenied);
        assert_eq!(
            m.errors(),
            vec![(ErrorCode::SystemBusy, 2), (ErrorCode::AccessDenied, 1)]
        );
    }
}
