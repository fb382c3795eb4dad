//! weir's message store: an append-only, memory-mapped commit log of self-describing
//! records; per-queue consume queues and a key index derived from it (and rebuilt from it
//! after a crash); group-committed sync or periodic async flushing; retention; consumer
//! offsets. The on-disk format is specified byte by byte in `FORMAT.md`.
//!
//! The store knows nothing of the network: the broker calls it.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod checkpoint;
mod commitlog;
mod config;
mod consume_queue;
mod error;
mod flush;
mod fsutil;
mod index;
mod offsets;
mod segment;
mod store;

pub use commitlog::StoredRecord;
pub use config::{FlushMode, MIN_COMMIT_LOG_SEGMENT_SIZE, StoreConfig};
pub use error::{Result, StoreError};
/// Durable replace of a small file (temp file, fsync, rename, fsync of the folder).
pub use fsutil::write_atomic;
pub use offsets::{ConsumerOffsets, OffsetKey};
pub use store::{
    FlushStatus, GetResult, GetStatus, MessageStore, PutResult, ReadLimits, RecoveryReport,
    RetentionReport,
};
/// The record format lives with the message model in `weir-protocol`.
pub use weir_protocol::record;
pub use weir_protocol::record::{Message, MessageId, RecordError, RecordView, tag_hash};
