//! The commit log record: how one message is laid out on disk (see `FORMAT.md`).
//!
//! All integers are little-endian. A record is self-describing: it starts with its total
//! length and a magic number, carries a CRC32 of everything after the CRC field, and
//! repeats its own commit log offset so that stale bytes from an earlier life of a file
//! never validate at another position.
//!
//! This module holds the layout (magics, byte positions, `sys_flag` bits) and the
//! little-endian readers; the rest, one job each:
//! - `message`: the message model ([`Message`]) and what makes one storable;
//! - `encode`: writing a record or a blank filler;
//! - `view`: reading one back ([`RecordView`]), checking a log position ([`probe`]), and
//!   the filter path's view by lengths alone ([`filter_message`]);
//! - `id`: message ids and the on-disk hashes.

mod encode;
mod id;
mod message;
mod view;

pub use encode::{Assigned, canonical_addr, encode_blank, encode_into, encode_to_vec};
pub use id::{MessageId, fnv1a64, fnv1a64_parts, tag_hash};
pub use message::{Message, validate_topic};
pub use view::{
    FilterMessage, Keys, Probe, Properties, RecordView, attributes_and_body, crc_ok,
    filter_message, probe, probe_frame,
};

/// A message or record that breaks the format's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("invalid message id {id:?}: {detail}")]
    InvalidMessageId { id: String, detail: String },
}

type Result<T, E = RecordError> = std::result::Result<T, E>;

/// Magic of a message record, "WMR1" in a hex dump.
pub const MESSAGE_MAGIC: u32 = u32::from_le_bytes(*b"WMR1");
/// Magic of the filler that closes a segment when the next record does not fit: "WBLK".
pub const BLANK_MAGIC: u32 = u32::from_le_bytes(*b"WBLK");
/// A blank filler is at least its length and magic.
pub const BLANK_MIN_LEN: usize = 8;

/// Byte positions of the fixed header.
pub mod pos {
    pub const TOTAL_LEN: usize = 0;
    pub const MAGIC: usize = 4;
    pub const CRC: usize = 8;
    /// The CRC covers `[CRC_START, total_len)`.
    pub const CRC_START: usize = 12;
    pub const QUEUE_ID: usize = 12;
    pub const QUEUE_OFFSET: usize = 16;
    pub const COMMIT_LOG_OFFSET: usize = 24;
    pub const FLAG: usize = 32;
    pub const SYS_FLAG: usize = 36;
    pub const BORN_TS: usize = 40;
    pub const STORE_TS: usize = 48;
    pub const BORN_IP: usize = 56;
    pub const BORN_PORT: usize = 72;
    pub const STORE_IP: usize = 74;
    pub const STORE_PORT: usize = 90;
    pub const RECONSUME_TIMES: usize = 92;
    pub const PREPARED_TX_OFFSET: usize = 96;
    /// Start of the variable part (topic length).
    pub const VARIABLE: usize = 104;
}

/// Fixed bytes of every record: header plus the five length prefixes.
pub const RECORD_OVERHEAD: usize = pos::VARIABLE + 2 + 2 + 4 + 4 + 4;

/// `prepared_tx_offset` when the record is not tied to a half message.
pub const NO_PREPARED_TX: u64 = u64::MAX;

/// `sys_flag` bits 0..=1: the transaction type of the record.
pub mod sys_flag {
    pub const TX_MASK: u32 = 0b11;
    pub const TX_NONE: u32 = 0;
    /// A half message: stored, never dispatched to its topic's consume queue.
    pub const TX_PREPARED: u32 = 1;
    pub const TX_COMMIT: u32 = 2;
    pub const TX_ROLLBACK: u32 = 3;
    /// Bit 2: the body is compressed (the store does not interpret it).
    pub const COMPRESSED: u32 = 1 << 2;

    /// Only plain and committed records become visible in a consume queue.
    pub fn is_dispatched(sys_flag: u32) -> bool {
        matches!(sys_flag & TX_MASK, TX_NONE | TX_COMMIT)
    }
}

pub fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(x)
}
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests;
