//! The values callers hand the runtime and get back: which filter a message or a log line
//! is about ([`FilterLabel`]), what a batch shares ([`BatchContext`]), the records
//! ([`RecordBytes`]), and why a batch got no verdicts ([`FailureKind`], [`FilterFailure`]).
//!
//! Invariant: a failure's detail is bounded and printable, since it can come from the
//! guest; [`sanitize`] is the one place that makes guest text safe to log.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use weir_store::{ReadBatch, StoredRecord};

/// Where a filter's log lines go instead of the broker's log (`weir filter test` prints
/// them): each line once, after the rate limit and the length cap, sanitized.
pub type LogSink = Arc<dyn Fn(tracing::Level, &str) + Send + Sync>;

/// Which filter a message or a log line is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterLabel {
    pub group: String,
    pub topic: String,
    pub version: u64,
    pub sha256: String,
}

impl FilterLabel {
    pub fn new(
        group: impl Into<String>,
        topic: impl Into<String>,
        version: u64,
        sha256: String,
    ) -> Self {
        Self {
            group: group.into(),
            topic: topic.into(),
            version,
            sha256,
        }
    }
}

impl fmt::Display for FilterLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filter of group {:?} on topic {:?} (version {}, sha256 {})",
            self.group,
            self.topic,
            self.version,
            self.sha256.get(..12).unwrap_or(&self.sha256)
        )
    }
}

/// What every message of a batch shares.
#[derive(Debug, Clone)]
pub struct BatchContext {
    pub topic: String,
    pub queue_id: u32,
    pub consumer_group: String,
}

/// Why a batch got no verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The filter returned its own error.
    GuestError,
    /// The filter trapped (panic, `unreachable`, bad memory access, stack overflow, a
    /// stubbed import called).
    Trap,
    /// The batch used its CPU-time budget (or ran past the wall-clock safety net).
    Deadline,
    /// The filter wanted more memory than its cap.
    MemoryExhausted,
    /// The filter returned a different number of verdicts than messages.
    WrongVerdicts,
    /// The broker could not run the filter (no instance slot, stopping); not the filter's
    /// fault, so it does not count towards marking it failed.
    Unavailable,
    /// The filter workers are busy: the batch waited past the queue timeout, or its group
    /// already had too many batches waiting. Not the filter's fault; the pull is answered
    /// busy and retried.
    Busy,
    /// The filter already failed too often and waits for a new version.
    MarkedFailed,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            FailureKind::GuestError => "the filter returned an error",
            FailureKind::Trap => "the filter trapped",
            FailureKind::Deadline => "the filter ran past its time budget",
            FailureKind::MemoryExhausted => "the filter ran out of memory",
            FailureKind::WrongVerdicts => "the filter returned the wrong number of verdicts",
            FailureKind::Unavailable => "the filter could not run",
            FailureKind::Busy => "the filter workers are busy",
            FailureKind::MarkedFailed => "the filter is marked failed",
        }
    }
}

/// A batch that got no verdicts; nothing of it is delivered or skipped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct FilterFailure {
    pub kind: FailureKind,
    pub detail: String,
}

impl FilterFailure {
    pub(super) fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        // Details can come from the guest (its error text, names in a backtrace): bounded
        // and printable before they reach replies, logs and the failure mark.
        Self {
            kind,
            detail: sanitize(&detail.into(), MAX_DETAIL),
        }
    }
}

/// Longest failure detail kept, bytes.
const MAX_DETAIL: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary) with control characters
/// escaped, so guest-made text cannot flood or forge log lines.
pub(super) fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 4);
    for c in text.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

/// A stored record's bytes, handed to a filter call and back.
pub trait RecordBytes: Send + 'static {
    fn record_bytes(&self) -> &[u8];
    /// Hints that the first `max` bytes will be read soon (records mapped from the log
    /// are usually not in the cache: see `StoredRecord::prefetch`).
    fn prefetch(&self, _max: usize) {}
}

impl RecordBytes for StoredRecord {
    fn record_bytes(&self) -> &[u8] {
        self.bytes()
    }
    fn prefetch(&self, max: usize) {
        StoredRecord::prefetch(self, max);
    }
}

impl RecordBytes for Vec<u8> {
    fn record_bytes(&self) -> &[u8] {
        self
    }
}

impl RecordBytes for Bytes {
    fn record_bytes(&self) -> &[u8] {
        self
    }
}

/// A record with something the caller keeps beside it (a pull: its queue offset).
impl<T: Send + 'static, R: RecordBytes> RecordBytes for (T, R) {
    fn record_bytes(&self) -> &[u8] {
        self.1.record_bytes()
    }
    fn prefetch(&self, max: usize) {
        self.1.prefetch(max);
    }
}

/// The records of one filter job, by position: a vector of [`RecordBytes`], or a store
/// read ([`ReadBatch`]) whose records are not yet [`StoredRecord`]s of their own.
pub trait RecordBatch: Send + 'static {
    fn count(&self) -> usize;
    /// The record at `i` (empty past the end).
    fn bytes_at(&self, i: usize) -> &[u8];
    /// Hints that the first `max` bytes of the record at `i` will be read soon.
    fn prefetch_at(&self, _i: usize, _max: usize) {}
}

impl<R: RecordBytes> RecordBatch for [R] {
    fn count(&self) -> usize {
        self.len()
    }
    fn bytes_at(&self, i: usize) -> &[u8] {
        self.get(i).map_or(&[], RecordBytes::record_bytes)
    }
    fn prefetch_at(&self, i: usize, max: usize) {
        if let Some(r) = self.get(i) {
            r.prefetch(max);
        }
    }
}

impl<R: RecordBytes> RecordBatch for Vec<R> {
    fn count(&self) -> usize {
        self.len()
    }
    fn bytes_at(&self, i: usize) -> &[u8] {
        self.as_slice().bytes_at(i)
    }
    fn prefetch_at(&self, i: usize, max: usize) {
        self.as_slice().prefetch_at(i, max);
    }
}

impl RecordBatch for ReadBatch {
    fn count(&self) -> usize {
        self.len()
    }
    fn bytes_at(&self, i: usize) -> &[u8] {
        self.spans().get(i).map_or(&[], |s| self.bytes(s))
    }
    fn prefetch_at(&self, i: usize, max: usize) {
        weir_store::prefetch(self.bytes_at(i), max);
    }
}
