//! What a read holds: a [`StoredRecord`] (one record, readable while it lives), a
//! [`ReadBatch`] (the records of one read in place, sharing their segments) and a
//! [`LogSpan`] (a run of whole records, for replication).
//!
//! Invariant: each of them holds the segments it reads (reference counted), so its bytes
//! stay mapped and unchanged even if retention deletes the files meanwhile; the bytes it
//! points at lie below the segment's published mark.

use std::sync::Arc;

use crate::error::Result;
use crate::segment::Segment;
use weir_protocol::record::RecordView;

/// One record as stored, kept readable for as long as this value lives (even if retention
/// deletes its segment meanwhile).
#[derive(Clone)]
pub struct StoredRecord {
    pub(super) seg: Arc<Segment>,
    pub(super) rel: u64,
    pub(super) len: usize,
}

impl StoredRecord {
    /// The record's bytes exactly as on disk (the wire format of a pull, too).
    pub fn bytes(&self) -> &[u8] {
        // Construction checked that the range is published; published bytes stay so.
        self.seg.read(self.rel, self.len).unwrap_or_default()
    }
    /// Hints the CPU to load the record's first `max` bytes ahead of reading them (a hint
    /// only: nothing is read, nothing can fault), for a reader about to walk many records.
    pub fn prefetch(&self, max: usize) {
        crate::segment::prefetch(self.bytes(), max);
    }
    /// Parses the record. Fails only if the stored bytes are damaged.
    pub fn view(&self) -> Result<RecordView<'_>> {
        Ok(RecordView::parse(self.bytes())?)
    }
    pub fn commit_log_offset(&self) -> u64 {
        self.seg.start() + self.rel
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Records of one read, in place: the segments they lie in (one, unless the read crossed
/// into the next) and where each record is, so that a read of thousands of records that a
/// filter mostly drops costs no reference count per record. A record becomes a
/// [`StoredRecord`] only when it is kept ([`ReadBatch::record`]).
///
/// Invariant: every span lies within the published bytes of `segments[span.segment]`.
#[derive(Clone, Default)]
pub struct ReadBatch {
    segments: Vec<Arc<Segment>>,
    spans: Vec<RecordSpan>,
}

/// Where one record of a [`ReadBatch`] lies, and its queue offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// The record's position in its consume queue.
    pub queue_offset: u64,
    rel: u64,
    segment: u32,
    len: u32,
}

impl RecordSpan {
    /// The record's size in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl ReadBatch {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            segments: Vec::new(),
            spans: Vec::with_capacity(n),
        }
    }
    /// Adds the record at `[rel, rel + len)` of `seg`, which the caller checked is published.
    pub(crate) fn push(&mut self, seg: &Arc<Segment>, rel: u64, len: usize, queue_offset: u64) {
        let same = self.segments.last().is_some_and(|s| Arc::ptr_eq(s, seg));
        if !same {
            self.segments.push(Arc::clone(seg));
        }
        // A record is far under 4 GiB (a message's size is capped), and a read spans a
        // few segments at most.
        self.spans.push(RecordSpan {
            queue_offset,
            rel,
            segment: (self.segments.len() - 1) as u32,
            len: len as u32,
        });
    }
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
    pub fn spans(&self) -> &[RecordSpan] {
        &self.spans
    }
    /// The record's bytes exactly as stored.
    pub fn bytes(&self, span: &RecordSpan) -> &[u8] {
        span_bytes(&self.segments, span)
    }
    /// The record, kept readable on its own.
    pub fn record(&self, span: &RecordSpan) -> Option<StoredRecord> {
        let seg = self.segments.get(span.segment as usize)?;
        Some(StoredRecord {
            seg: Arc::clone(seg),
            rel: span.rel,
            len: span.len as usize,
        })
    }
    /// Every record, kept readable on its own.
    pub fn records(&self) -> Vec<StoredRecord> {
        self.spans.iter().filter_map(|s| self.record(s)).collect()
    }
    /// Keeps the records `keep` says yes to (given each span and its bytes), in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&RecordSpan, &[u8]) -> bool) {
        let segments = &self.segments;
        self.spans
            .retain(|span| keep(span, span_bytes(segments, span)));
    }
    /// Splits off the records from `at` on (sharing the segments).
    pub fn split_off(&mut self, at: usize) -> Self {
        Self {
            segments: self.segments.clone(),
            spans: self.spans.split_off(at.min(self.spans.len())),
        }
    }
    /// Appends `other`'s records (read from the same store) after these.
    pub fn append(&mut self, other: Self) {
        for span in other.spans {
            if let Some(seg) = other.segments.get(span.segment as usize) {
                self.push(seg, span.rel, span.len as usize, span.queue_offset);
            }
        }
    }
    /// The records at the positions `pick` chooses, as a batch of their own.
    pub fn select(&self, mut pick: impl FnMut(usize) -> bool) -> Self {
        Self {
            segments: self.segments.clone(),
            spans: (0..self.spans.len())
                .filter(|i| pick(*i))
                .map(|i| self.spans[i])
                .collect(),
        }
    }
}

/// Its bytes, as [`StoredRecord::bytes`]: a record handed on as a buffer of its own
/// (`Bytes::from_owner`) without a copy.
impl AsRef<[u8]> for StoredRecord {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// Whole records (and fillers) as stored, one after another within one segment, read in
/// place: kept readable for as long as this value lives, like [`StoredRecord`].
#[derive(Clone)]
pub struct LogSpan {
    pub(super) seg: Arc<Segment>,
    pub(super) rel: u64,
    pub(super) len: usize,
}

impl LogSpan {
    /// The log offset of the first byte.
    pub fn offset(&self) -> u64 {
        self.seg.start() + self.rel
    }
}

impl std::ops::Deref for LogSpan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // Construction checked that the range is published; published bytes stay so.
        self.seg.read(self.rel, self.len).unwrap_or_default()
    }
}

impl AsRef<[u8]> for LogSpan {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for LogSpan {
    fn eq(&self, other: &Self) -> bool {
        self.offset() == other.offset() && **self == **other
    }
}

impl std::fmt::Debug for LogSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogSpan({} bytes @{})", self.len, self.offset())
    }
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.view() {
            Ok(v) => v.fmt(f),
            Err(_) => write!(f, "StoredRecord(damaged @{})", self.commit_log_offset()),
        }
    }
}

/// The bytes of `span` in `segments` (empty if it does not resolve, which the invariant of
/// [`ReadBatch`] rules out).
fn span_bytes<'a>(segments: &'a [Arc<Segment>], span: &RecordSpan) -> &'a [u8] {
    segments
        .get(span.segment as usize)
        .and_then(|s| s.read(span.rel, span.len as usize))
        .unwrap_or_default()
}
