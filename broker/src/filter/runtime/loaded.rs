//! One uploaded filter version, ready to run ([`LoadedFilter`]), and the state every
//! instance of it shares ([`FilterShared`]): counters, the log limit, the
//! consecutive-failure tally, the failure mark, and the verdicts carried from one pull to
//! the next.
//!
//! Invariants: ids are unique in the process (workers key their instances by them); a
//! version once marked failed stays so until a new upload replaces it or an operator
//! resets the mark (`FilterRegistry::reset`), which the registry also keeps on disk. A
//! carried verdict is this version's own verdict on the message at that queue offset (a
//! stored message never changes), so reusing it instead of judging again changes nothing
//! but the work and the counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use weir_protocol::filter::FilterStats;

use super::log_limit::LogLimit;
use super::{CompiledFilter, FilterLabel, FilterRuntime};

/// Most queues with verdicts carried at once, per filter version (a bound on memory; a
/// carry that does not fit only costs judging those messages again).
const MAX_CARRIES: usize = 1024;

/// State shared by every instance of one filter version: counters, the log limit, and
/// the consecutive-failure tally.
pub(super) struct FilterShared {
    pub(super) label: FilterLabel,
    pub(super) calls: AtomicU64,
    pub(super) messages_in: AtomicU64,
    pub(super) messages_kept: AtomicU64,
    pub(super) call_nanos: AtomicU64,
    pub(super) guest_errors: AtomicU64,
    pub(super) traps: AtomicU64,
    pub(super) deadlines: AtomicU64,
    pub(super) memory_exhausted: AtomicU64,
    pub(super) wrong_verdicts: AtomicU64,
    pub(super) instantiations: AtomicU64,
    pub(super) log_lines_dropped: AtomicU64,
    pub(super) consecutive_failures: AtomicU32,
    pub(super) marked_failed: Mutex<Option<String>>,
    pub(super) log_limit: Mutex<LogLimit>,
    /// By queue id: verdicts a pull computed but could not return, for the pull that
    /// resumes at [`Carry::from`].
    carries: Mutex<HashMap<u32, Carry>>,
}

/// Verdicts judged by one pull beyond what it returned (its answer was cut at the pull's
/// message count): the next pull of the queue from `from` reuses them rather than judging,
/// and counting, those messages again.
struct Carry {
    from: u64,
    /// `(queue offset, keep)`, offsets ascending, each at least `from`.
    verdicts: Vec<(u64, bool)>,
}

/// One uploaded filter version, ready to run.
pub struct LoadedFilter {
    /// Unique in this process: workers key their instances by it.
    pub(super) id: u64,
    pub(super) compiled: CompiledFilter,
    pub(super) params: Vec<(String, String)>,
    pub(super) needs_body: bool,
    /// Linear memory each instance may use, bytes (asked at upload, or the default).
    pub(super) memory: usize,
    pub(super) shared: Arc<FilterShared>,
}

impl LoadedFilter {
    pub fn label(&self) -> &FilterLabel {
        &self.shared.label
    }
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }
    /// The memory cap of each instance, bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory
    }
    /// How many candidates to read to get about `wanted` kept messages, at the keep rate
    /// seen so far (all of them, before any call).
    pub fn candidates_for(&self, wanted: usize) -> usize {
        let s = &self.shared;
        let (seen, kept) = (
            s.messages_in.load(Ordering::Relaxed),
            s.messages_kept.load(Ordering::Relaxed),
        );
        if seen < 64 || kept == 0 {
            return usize::MAX;
        }
        // A little over the estimate, so one round usually suffices.
        ((wanted as u64 * seen).div_ceil(kept) * 5 / 4).max(wanted as u64) as usize
    }

    /// `Some(cause)` once the filter failed too many batches in a row.
    pub fn marked_failed(&self) -> Option<String> {
        self.shared
            .marked_failed
            .lock()
            .ok()
            .and_then(|g| g.clone())
    }
    /// Marks the filter failed (a mark restored at start); its pulls fail until reset.
    pub fn mark_failed(&self, cause: String) {
        if let Ok(mut marked) = self.shared.marked_failed.lock() {
            *marked = Some(cause);
        }
    }

    /// Clears the failed mark and the tally of failures in a row; returns the cause it
    /// was marked for. The next batch runs on a fresh instance (a failed one is never
    /// kept).
    pub fn clear_mark(&self) -> Option<String> {
        let cleared = self
            .shared
            .marked_failed
            .lock()
            .ok()
            .and_then(|mut g| g.take());
        self.shared.consecutive_failures.store(0, Ordering::Relaxed);
        cleared
    }

    /// Keeps the verdicts of messages judged but not returned by a pull that answers with
    /// next offset `from` on queue `queue_id` (replacing any older carry of that queue).
    pub fn carry_verdicts(&self, queue_id: u32, from: u64, verdicts: Vec<(u64, bool)>) {
        let Ok(mut carries) = self.shared.carries.lock() else {
            return;
        };
        if verdicts.is_empty() {
            carries.remove(&queue_id);
            return;
        }
        if carries.len() >= MAX_CARRIES
            && !carries.contains_key(&queue_id)
            && let Some(any) = carries.keys().next().copied()
        {
            carries.remove(&any);
        }
        carries.insert(queue_id, Carry { from, verdicts });
    }

    /// The verdicts carried for a pull of `queue_id` from `from`, taken (a pull from any
    /// other offset leaves them for the pull they were kept for).
    pub fn take_verdicts(&self, queue_id: u32, from: u64) -> Vec<(u64, bool)> {
        let Ok(mut carries) = self.shared.carries.lock() else {
            return Vec::new();
        };
        match carries.get(&queue_id) {
            Some(c) if c.from == from => carries
                .remove(&queue_id)
                .map(|c| c.verdicts)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The mean time of one successful call so far; `None` before the first.
    pub fn mean_call_nanos(&self) -> Option<u64> {
        let s = &self.shared;
        let calls = s.calls.load(Ordering::Relaxed);
        (calls > 0).then(|| s.call_nanos.load(Ordering::Relaxed) / calls)
    }

    pub fn stats(&self) -> FilterStats {
        let s = &self.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FilterStats {
            calls: get(&s.calls),
            messages_in: get(&s.messages_in),
            messages_kept: get(&s.messages_kept),
            call_nanos: get(&s.call_nanos),
            guest_errors: get(&s.guest_errors),
            traps: get(&s.traps),
            deadlines: get(&s.deadlines),
            memory_exhausted: get(&s.memory_exhausted),
            wrong_verdicts: get(&s.wrong_verdicts),
            instantiations: get(&s.instantiations),
            log_lines_dropped: get(&s.log_lines_dropped),
        }
    }
}

impl FilterRuntime {
    pub(super) fn loaded(
        &self,
        compiled: CompiledFilter,
        params: Vec<(String, String)>,
        needs_body: bool,
        memory: usize,
        label: FilterLabel,
    ) -> Arc<LoadedFilter> {
        Arc::new(LoadedFilter {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            compiled,
            params,
            needs_body,
            memory,
            shared: Arc::new(FilterShared {
                label,
                calls: AtomicU64::new(0),
                messages_in: AtomicU64::new(0),
                messages_kept: AtomicU64::new(0),
                call_nanos: AtomicU64::new(0),
                guest_errors: AtomicU64::new(0),
                traps: AtomicU64::new(0),
                deadlines: AtomicU64::new(0),
                memory_exhausted: AtomicU64::new(0),
                wrong_verdicts: AtomicU64::new(0),
                instantiations: AtomicU64::new(0),
                log_lines_dropped: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                marked_failed: Mutex::new(None),
                log_limit: Mutex::new(LogLimit::new(self.inner.config.log_lines_per_sec)),
                carries: Mutex::new(HashMap::new()),
            }),
        })
    }
}
