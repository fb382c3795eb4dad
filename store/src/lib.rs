//! weir's message store: an append-only, memory-mapped commit log of self-describing
//! records; per-queue consume queues and a key index derived from it (and rebuilt from it
//! after a crash); group-committed sync or periodic async flushing; retention; consumer
//! offsets. The on-disk format is specified byte by byte in `FORMAT.md`.
//!
//! The store knows nothing of the network: the broker calls it.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod append;
mod checkpoint;
mod commitlog;
mod config;
mod consume_queue;
mod disk;
mod error;
mod flush;
mod fsutil;
mod health;
mod index;
mod offsets;
mod read;
mod recovery;
mod replica;
mod retention;
mod segment;
mod services;
mod store;
#[cfg(test)]
mod test_util;

/// Pure decoders of the store's own files, reachable by the fuzz targets (`fuzz/`). Not
/// part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::consume_queue::{CqEntry, ENTRY_SIZE};

    /// Bytes of one consume queue entry.
    pub const CQ_ENTRY_SIZE: usize = ENTRY_SIZE as usize;

    /// A consume queue entry's fields: (commit log offset, size, tag hash).
    pub fn decode_cq_entry(bytes: &[u8; CQ_ENTRY_SIZE]) -> (u64, u32, u64) {
        let e = CqEntry::decode(bytes);
        (e.commit_log_offset, e.size, e.tag_hash)
    }

    /// The entry with these fields, as the store writes it.
    pub fn encode_cq_entry(
        commit_log_offset: u64,
        size: u32,
        tag_hash: u64,
    ) -> [u8; CQ_ENTRY_SIZE] {
        CqEntry {
            commit_log_offset,
            size,
            tag_hash,
        }
        .encode()
    }
}

pub use append::{Appended, FlushStatus, PutResult, QueueHandle};
pub use commitlog::{DamagedRange, LogSpan, ReadBatch, RecordSpan, StoredRecord};
pub use config::{DiskPressurePolicy, FlushMode, MIN_COMMIT_LOG_SEGMENT_SIZE, StoreConfig};
pub use disk::{DiskUsage, FsReading, UsageSource};
pub use error::{Result, StoreError};
/// Durable replace of a small file (temp file, fsync, rename, fsync of the folder).
pub use fsutil::write_atomic;
pub use offsets::{ConsumerOffsets, OffsetKey};
pub use read::{GetResult, GetStatus, ReadLimits, ReadResult};
pub use recovery::RecoveryReport;
pub use retention::{
    DeletedSegment, DeletionReason, DroppedEntries, RetentionReport, RetentionTotals,
};
pub use segment::prefetch;
pub use store::MessageStore;
/// The record format lives with the message model in `weir-protocol`.
pub use weir_protocol::record;
pub use weir_protocol::record::{Message, MessageId, RecordError, RecordView, tag_hash};
