//! Writing records: a message with what the commit log assigned it, or a blank filler.
//!
//! Invariant: what [`encode_into`] writes, [`probe`](super::probe) accepts at the same
//! commit log offset and [`RecordView::parse`](super::RecordView::parse) reads back as the
//! same message, addresses in their canonical form ([`canonical_addr`]).

use std::net::{IpAddr, SocketAddr};

use super::{BLANK_MAGIC, MESSAGE_MAGIC, Message, Result, pos};

/// What the commit log assigns to a record when it is appended.
#[derive(Debug, Clone, Copy)]
pub struct Assigned {
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    pub store_timestamp: i64,
    pub store_host: SocketAddr,
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_ip(b: &mut [u8], at: usize, addr: &SocketAddr) {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    b[at..at + 16].copy_from_slice(&v6.octets());
}

/// The address as records store it and message ids show it: an IPv4-mapped IPv6 address
/// becomes plain IPv4 (scope ids and flow labels are not kept).
pub fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => SocketAddr::new(IpAddr::V6(v6), addr.port()),
        },
        IpAddr::V4(_) => addr,
    }
}

/// Writes `msg` into `dst`, which must be exactly `msg.encoded_len()` bytes.
pub fn encode_into(msg: &Message, a: &Assigned, dst: &mut [u8]) {
    let total = dst.len();
    put_u32(dst, pos::TOTAL_LEN, total as u32);
    put_u32(dst, pos::MAGIC, MESSAGE_MAGIC);
    put_u32(dst, pos::QUEUE_ID, msg.queue_id);
    put_u64(dst, pos::QUEUE_OFFSET, a.queue_offset);
    put_u64(dst, pos::COMMIT_LOG_OFFSET, a.commit_log_offset);
    put_u32(dst, pos::FLAG, msg.flag);
    put_u32(dst, pos::SYS_FLAG, msg.sys_flag);
    put_u64(dst, pos::BORN_TS, msg.born_timestamp as u64);
    put_u64(dst, pos::STORE_TS, a.store_timestamp as u64);
    put_ip(dst, pos::BORN_IP, &msg.born_host);
    put_u16(dst, pos::BORN_PORT, msg.born_host.port());
    put_ip(dst, pos::STORE_IP, &a.store_host);
    put_u16(dst, pos::STORE_PORT, a.store_host.port());
    put_u32(dst, pos::RECONSUME_TIMES, msg.reconsume_times);
    put_u64(dst, pos::PREPARED_TX_OFFSET, msg.prepared_tx_offset);

    let mut at = pos::VARIABLE;
    let put_bytes = |dst: &mut [u8], at: &mut usize, bytes: &[u8]| {
        dst[*at..*at + bytes.len()].copy_from_slice(bytes);
        *at += bytes.len();
    };
    put_u16(dst, at, msg.topic.len() as u16);
    at += 2;
    put_bytes(dst, &mut at, msg.topic.as_bytes());
    put_u16(dst, at, msg.tags.len() as u16);
    at += 2;
    put_bytes(dst, &mut at, msg.tags.as_bytes());

    let keys_at = at;
    at += 4;
    for k in &msg.keys {
        put_u16(dst, at, k.len() as u16);
        at += 2;
        put_bytes(dst, &mut at, k.as_bytes());
    }
    put_u32(dst, keys_at, (at - keys_at - 4) as u32);

    let props_at = at;
    at += 4;
    for (k, v) in &msg.properties {
        put_u16(dst, at, k.len() as u16);
        at += 2;
        put_bytes(dst, &mut at, k.as_bytes());
        put_u32(dst, at, v.len() as u32);
        at += 4;
        put_bytes(dst, &mut at, v.as_bytes());
    }
    put_u32(dst, props_at, (at - props_at - 4) as u32);

    put_u32(dst, at, msg.body.len() as u32);
    at += 4;
    put_bytes(dst, &mut at, &msg.body);
    debug_assert_eq!(at, total);

    let crc = crc32fast::hash(&dst[pos::CRC_START..total]);
    put_u32(dst, pos::CRC, crc);
}

/// Encodes `msg` as a standalone record (what a pull returns), e.g. to feed a filter
/// messages that never went through a store.
pub fn encode_to_vec(msg: &Message, a: &Assigned) -> Result<Vec<u8>> {
    let mut out = vec![0u8; msg.encoded_len()?];
    encode_into(msg, a, &mut out);
    Ok(out)
}

/// Writes a blank filler covering all of `dst` (at least
/// [`BLANK_MIN_LEN`](super::BLANK_MIN_LEN) bytes).
pub fn encode_blank(dst: &mut [u8]) {
    let len = dst.len() as u32;
    put_u32(dst, pos::TOTAL_LEN, len);
    put_u32(dst, pos::MAGIC, BLANK_MAGIC);
}
