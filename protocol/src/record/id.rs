//! Message ids and the hashes kept on disk.
//!
//! Invariant: both are stable across versions and platforms (ids are handed to clients,
//! hashes are stored in consume queue and index files), so neither may ever change.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::{RecordError, Result};

/// The tag hash kept in consume queue entries: FNV-1a 64 of the tag's UTF-8 bytes, 0 for
/// no tag. Pulls compare it before reading the commit log.
pub fn tag_hash(tag: &str) -> u64 {
    if tag.is_empty() {
        return 0;
    }
    fnv1a64(tag.as_bytes())
}

/// FNV-1a, 64 bit: stable across versions and platforms, which on-disk hashes must be.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_parts(&[bytes])
}

/// FNV-1a 64 of the concatenation of `parts`, without concatenating them.
pub fn fnv1a64_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// A message id: the store's address and the record's commit log offset, so a lookup by
/// id is one read, no index. Written as upper-case hex: IPv4 16 bytes (32 chars), IPv6 28
/// bytes (56 chars): address, port as u32, offset as u64, all big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub store_host: SocketAddr,
    pub offset: u64,
}

impl MessageId {
    /// The id as text, written into a stack buffer: upper-case hex of the address octets,
    /// the port (8 digits) and the offset (16 digits). Sends format one per message, so
    /// this avoids the formatter's per-digit work.
    fn hex(&self) -> ([u8; 56], usize) {
        const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; 56];
        let mut n = 0;
        let mut put = |byte: u8| {
            out[n] = DIGITS[usize::from(byte >> 4)];
            out[n + 1] = DIGITS[usize::from(byte & 0xF)];
            n += 2;
        };
        match self.store_host.ip() {
            IpAddr::V4(v4) => v4.octets().into_iter().for_each(&mut put),
            IpAddr::V6(v6) => v6.octets().into_iter().for_each(&mut put),
        }
        u32::from(self.store_host.port())
            .to_be_bytes()
            .into_iter()
            .for_each(&mut put);
        self.offset.to_be_bytes().into_iter().for_each(&mut put);
        (out, n)
    }

    /// The id as text, as `Display` writes it, in one allocation of the right size
    /// (`to_string` grows its string through the formatter, several allocations; sends and
    /// consumers make one per message).
    pub fn to_text(&self) -> String {
        let (buf, n) = self.hex();
        // Only ASCII hex digits were written: the check cannot fail.
        std::str::from_utf8(&buf[..n])
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (buf, n) = self.hex();
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for MessageId {
    type Err = RecordError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |detail: &str| RecordError::InvalidMessageId {
            id: s.to_owned(),
            detail: detail.to_owned(),
        };
        let ip_len = match s.len() {
            32 => 4,
            56 => 16,
            _ => return Err(bad("expected 32 (IPv4) or 56 (IPv6) hex characters")),
        };
        if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("not hexadecimal"));
        }
        let mut bytes = [0u8; 28];
        for (i, b) in bytes.iter_mut().take(s.len() / 2).enumerate() {
            *b =
                u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad("not hexadecimal"))?;
        }
        let ip = if ip_len == 4 {
            IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(&bytes[..16]);
            IpAddr::from(o)
        };
        let port = u32::from_be_bytes([
            bytes[ip_len],
            bytes[ip_len + 1],
            bytes[ip_len + 2],
            bytes[ip_len + 3],
        ]);
        let port = u16::try_from(port).map_err(|_| bad("port out of range"))?;
        let mut off = [0u8; 8];
        off.copy_from_slice(&bytes[ip_len + 4..ip_len + 12]);
        Ok(MessageId {
            store_host: SocketAddr::new(ip, port),
            offset: u64::from_be_bytes(off),
        })
    }
}
