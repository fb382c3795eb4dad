//! Filter requests: upload, list, reset and remove a consumer group's WebAssembly filter for a
//! topic (the contract a filter implements is `wit/filter.wit`).

use bincode::{Decode, Encode};

use crate::codes::RequestCode;
use crate::rpc::Rpc;

/// Registers a filter for (group, topic); the component's bytes are the frame body, as
/// they are or gzip-compressed (the broker inflates a body that starts with gzip's magic
/// bytes, `1f 8b`: a WebAssembly component starts with `\0asm`). Components of
/// JavaScript and Python filters carry their engine (10-20 MB) and fit a frame only
/// compressed. Uploading again for the same pair makes a new version, which replaces the
/// old one at the next batch.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UploadFilter {
    pub group: String,
    pub topic: String,
    /// Passed to the filter's `init`, in order.
    pub params: Vec<(String, String)>,
    /// The linear memory the filter's instances may use, bytes; `None` takes the broker's
    /// default (`filter.memory_limit`). Refused above the broker's `filter.max_memory_limit`.
    pub memory: Option<u64>,
}

impl Rpc for UploadFilter {
    const CODE: RequestCode = RequestCode::UploadFilter;
    type Response = FilterUploaded;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FilterUploaded {
    /// Lower-case hex SHA-256 of the component's bytes.
    pub sha256: String,
    /// 1 for the first upload for (group, topic), then one more per upload.
    pub version: u64,
    /// Whether the broker compiled the component (false: an identical component was
    /// already compiled and cached).
    pub compiled: bool,
    /// Whether the filter asked for message bodies.
    pub needs_body: bool,
}

/// Filters registered on the broker; all groups when `group` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ListFilters {
    pub group: Option<String>,
}

impl Rpc for ListFilters {
    const CODE: RequestCode = RequestCode::ListFilters;
    type Response = FilterList;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FilterList {
    /// Sorted by (group, topic).
    pub filters: Vec<FilterInfo>,
    /// Components this broker process compiled (uploads of new code, and artifacts missing
    /// from the on-disk cache at start).
    pub compilations: u64,
    /// Compiled artifacts loaded from the on-disk cache instead of compiling.
    pub cache_loads: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FilterInfo {
    pub group: String,
    pub topic: String,
    pub sha256: String,
    pub version: u64,
    pub params: Vec<(String, String)>,
    /// Size of the component, bytes.
    pub size: u64,
    pub needs_body: bool,
    /// The memory cap of each instance, bytes: what the upload asked, or the broker's
    /// default when it asked none.
    pub memory: u64,
    /// Unix ms of the upload.
    pub uploaded_at: i64,
    /// `Some(cause)` once the filter failed too many batches in a row; pulls of the group
    /// then fail (`FilterMarkedFailed`) until a new version is uploaded or the mark is
    /// reset ([`ResetFilter`]). Kept across restarts.
    pub failed: Option<String>,
    pub stats: FilterStats,
}

/// Counters since the broker started (or since this version was uploaded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct FilterStats {
    /// Batch calls that returned verdicts.
    pub calls: u64,
    pub messages_in: u64,
    pub messages_kept: u64,
    /// Time spent in successful calls, ns.
    pub call_nanos: u64,
    /// Failed calls, by cause.
    pub guest_errors: u64,
    pub traps: u64,
    pub deadlines: u64,
    pub memory_exhausted: u64,
    pub wrong_verdicts: u64,
    /// Instances created (the first, and one after each failure or upgrade).
    pub instantiations: u64,
    /// Guest log lines dropped by the rate or length limit.
    pub log_lines_dropped: u64,
}

impl FilterStats {
    /// Average time per message in successful calls, ns.
    pub fn nanos_per_message(&self) -> Option<u64> {
        (self.messages_in > 0).then(|| self.call_nanos / self.messages_in)
    }
    pub fn failures(&self) -> u64 {
        self.guest_errors
            + self.traps
            + self.deadlines
            + self.memory_exhausted
            + self.wrong_verdicts
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RemoveFilter {
    pub group: String,
    pub topic: String,
}

impl Rpc for RemoveFilter {
    const CODE: RequestCode = RequestCode::RemoveFilter;
    type Response = FilterRemoved;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FilterRemoved {
    /// The version that was removed.
    pub version: u64,
}

/// Clears the failed mark of (group, topic)'s filter: its pulls run it again (the same
/// version, with fresh instances). Uploading a new version clears the mark too.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ResetFilter {
    pub group: String,
    pub topic: String,
}

impl Rpc for ResetFilter {
    const CODE: RequestCode = RequestCode::ResetFilter;
    type Response = FilterReset;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct FilterReset {
    /// The filter's version (unchanged by a reset).
    pub version: u64,
    /// The cause it was marked failed for; `None` if it was not marked.
    pub cleared: Option<String>,
}
