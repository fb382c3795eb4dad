//! Messages as RocketMQ clients write and read them (`MessageDecoder`).
//!
//! Pull responses carry messages in the store layout (all big-endian):
//! ```text
//! i32 total size   i32 magic (-626843481)   i32 body CRC   i32 queue id   i32 flag
//! i64 queue offset   i64 commit log offset   i32 sys flag   i64 born timestamp
//! born host: 4-byte IPv4 (16 with sys flag bit 4) + i32 port   i64 store timestamp
//! store host: 4 (16 with bit 5) + i32 port   i32 reconsume times
//! i64 prepared transaction offset   i32 body len + body   u8 topic len + topic
//! i16 properties len + properties
//! ```
//! A batch send's body is `(i32 total, i32 magic 0, i32 body CRC 0, i32 flag, i32 body
//! len + body, i16 properties len + properties)*`. Properties are `name\x01value` pairs
//! joined by `\x02`.
//!
//! The message id a client shows (`offsetMsgId`) is the store host and the commit log
//! offset in upper-case hex; the producer's own id travels as property `UNIQ_KEY`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use crate::{Reader, RemotingError, Result};

/// The magic of a message in the layout 4.x clients read (a 1-byte topic length).
pub const MESSAGE_MAGIC_CODE: i32 = -626_843_481;
/// The 5.x layout's magic (a 2-byte topic length); read, never written.
pub const MESSAGE_MAGIC_CODE_V2: i32 = -626_843_477;
/// Longest topic the 4.x layout carries (its length is a signed byte).
pub const MAX_TOPIC_LEN: usize = 127;
/// Longest properties string (its length is a signed short).
pub const MAX_PROPERTIES_LEN: usize = i16::MAX as usize;

/// `sysFlag` bits (`MessageSysFlag`).
pub mod sys_flag {
    pub const COMPRESSED: i32 = 0x1;
    pub const MULTI_TAGS: i32 = 0x1 << 1;
    pub const TRANSACTION_MASK: i32 = 0x3 << 2;
    pub const TRANSACTION_NOT_TYPE: i32 = 0;
    pub const TRANSACTION_PREPARED: i32 = 0x1 << 2;
    pub const TRANSACTION_COMMIT: i32 = 0x2 << 2;
    pub const TRANSACTION_ROLLBACK: i32 = 0x3 << 2;
    pub const BORNHOST_V6: i32 = 0x1 << 4;
    pub const STOREHOST_V6: i32 = 0x1 << 5;
    /// Bits 8..=10: compression type; 0 (older clients) and 3 are zlib.
    pub const COMPRESSION_TYPE_MASK: i32 = 0x7 << 8;
    pub const COMPRESSION_ZLIB: i32 = 0x3 << 8;
}

/// Property names (`MessageConst`).
pub mod property {
    pub const KEYS: &str = "KEYS";
    pub const TAGS: &str = "TAGS";
    pub const WAIT: &str = "WAIT";
    pub const DELAY: &str = "DELAY";
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    pub const REAL_QUEUE_ID: &str = "REAL_QID";
    pub const TRANSACTION_PREPARED: &str = "TRAN_MSG";
    pub const PRODUCER_GROUP: &str = "PGROUP";
    pub const MIN_OFFSET: &str = "MIN_OFFSET";
    pub const MAX_OFFSET: &str = "MAX_OFFSET";
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
    pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    pub const TRANSACTION_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
    pub const CHECK_IMMUNITY_TIME_IN_SECONDS: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
    pub const CLUSTER: &str = "CLUSTER";
    pub const MSG_REGION: &str = "MSG_REGION";
    pub const TRACE_ON: &str = "TRACE_ON";
    /// `KEYS` holds several keys separated by this.
    pub const KEY_SEPARATOR: char = ' ';
}

const NAME_VALUE_SEPARATOR: char = '\u{1}';
const PROPERTY_SEPARATOR: char = '\u{2}';

/// Joins properties as `MessageDecoder.messageProperties2String` does.
pub fn encode_properties<'a>(props: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = String::new();
    for (k, v) in props {
        if !s.is_empty() {
            s.push(PROPERTY_SEPARATOR);
        }
        s.push_str(k);
        s.push(NAME_VALUE_SEPARATOR);
        s.push_str(v);
    }
    s
}

/// Splits a properties string as `MessageDecoder.string2messageProperties` does: pairs
/// without a name or a value are dropped; a later duplicate replaces an earlier one.
/// Linear in the string's length, whatever the number of properties (a request may carry
/// hundreds of thousands: a search of the list for each made one cost minutes of CPU).
pub fn decode_properties(s: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    // Where each name went in `out`.
    let mut at: HashMap<&str, usize> = HashMap::new();
    for pair in s.split(PROPERTY_SEPARATOR) {
        let Some((k, v)) = pair.split_once(NAME_VALUE_SEPARATOR) else {
            continue;
        };
        if k.is_empty() || v.is_empty() {
            continue;
        }
        match at.entry(k) {
            Entry::Occupied(e) => out[*e.get()].1 = v.to_owned(),
            Entry::Vacant(e) => {
                e.insert(out.len());
                out.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    out
}

/// `UtilAll.crc32`: CRC32 of the body with the sign bit cleared.
pub fn body_crc(body: &[u8]) -> i32 {
    (crc32fast::hash(body) & 0x7fff_ffff) as i32
}

/// A message as a pull response carries it (`MessageExt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageExt {
    pub topic: String,
    pub queue_id: i32,
    pub flag: i32,
    pub queue_offset: i64,
    pub commit_log_offset: i64,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    pub store_timestamp: i64,
    pub store_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
    pub body: Bytes,
    /// Already joined with [`encode_properties`].
    pub properties: String,
}

fn put_host(out: &mut BytesMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.put_slice(&ip.octets()),
        IpAddr::V6(ip) => out.put_slice(&ip.octets()),
    }
    out.put_i32(i32::from(addr.port()));
}

fn read_host(r: &mut Reader<'_>, v6: bool) -> Result<SocketAddr> {
    let ip = if v6 {
        let mut o = [0u8; 16];
        o.copy_from_slice(r.bytes(16)?);
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        let mut o = [0u8; 4];
        o.copy_from_slice(r.bytes(4)?);
        IpAddr::V4(Ipv4Addr::from(o))
    };
    let port = r.i32()?;
    let port = u16::try_from(port).map_err(|_| RemotingError::Malformed {
        what: "message",
        detail: format!("port {port}"),
    })?;
    Ok(SocketAddr::new(ip, port))
}

impl MessageExt {
    /// The sys flag with the host bits matching the addresses.
    fn wire_sys_flag(&self) -> i32 {
        let mut f = self.sys_flag & !(sys_flag::BORNHOST_V6 | sys_flag::STOREHOST_V6);
        if self.born_host.is_ipv6() {
            f |= sys_flag::BORNHOST_V6;
        }
        if self.store_host.is_ipv6() {
            f |= sys_flag::STOREHOST_V6;
        }
        f
    }

    /// Bytes [`MessageExt::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let host = |a: &SocketAddr| if a.is_ipv6() { 20 } else { 8 };
        4 * 5
            + 8 * 2
            + 4
            + 8
            + host(&self.born_host)
            + 8
            + host(&self.store_host)
            + 4
            + 8
            + 4
            + self.body.len()
            + 1
            + self.topic.len()
            + 2
            + self.properties.len()
    }

    /// Appends the message in the 4.x layout.
    pub fn encode(&self, out: &mut BytesMut) -> Result<()> {
        if self.topic.len() > MAX_TOPIC_LEN {
            return Err(RemotingError::TooLong {
                what: "topic",
                len: self.topic.len(),
                max: MAX_TOPIC_LEN,
            });
        }
        if self.properties.len() > MAX_PROPERTIES_LEN {
            return Err(RemotingError::TooLong {
                what: "properties",
                len: self.properties.len(),
                max: MAX_PROPERTIES_LEN,
            });
        }
        let total = self.encoded_len();
        let total32 = i32::try_from(total).map_err(|_| RemotingError::TooLong {
            what: "message",
            len: total,
            max: i32::MAX as usize,
        })?;
        out.reserve(total);
        out.put_i32(total32);
        out.put_i32(MESSAGE_MAGIC_CODE);
        out.put_i32(body_crc(&self.body));
        out.put_i32(self.queue_id);
        out.put_i32(self.flag);
        out.put_i64(self.queue_offset);
        out.put_i64(self.commit_log_offset);
        out.put_i32(self.wire_sys_flag());
        out.put_i64(self.born_timestamp);
        put_host(out, &self.born_host);
        out.put_i64(self.store_timestamp);
        put_host(out, &self.store_host);
        out.put_i32(self.reconsume_times);
        out.put_i64(self.prepared_transaction_offset);
        // Both lengths fit: checked through `total` and the limits above.
        out.put_i32(self.body.len() as i32);
        out.put_slice(&self.body);
        out.put_u8(self.topic.len() as u8);
        out.put_slice(self.topic.as_bytes());
        out.put_i16(self.properties.len() as i16);
        out.put_slice(self.properties.as_bytes());
        Ok(())
    }

    /// Reads every message of a pull response body (4.x or 5.x layout).
    pub fn decode_all(body: &Bytes) -> Result<Vec<MessageExt>> {
        let mut r = Reader::new(body, "message");
        let mut out = Vec::new();
        while r.remaining() > 0 {
            out.push(Self::decode_one(&mut r, body)?);
        }
        Ok(out)
    }

    fn decode_one(r: &mut Reader<'_>, whole: &Bytes) -> Result<MessageExt> {
        let _total = r.len_i32()?;
        let magic = r.i32()?;
        let _crc = r.i32()?;
        let queue_id = r.i32()?;
        let flag = r.i32()?;
        let queue_offset = r.i64()?;
        let commit_log_offset = r.i64()?;
        let sys_flag = r.i32()?;
        let born_timestamp = r.i64()?;
        let born_host = read_host(r, sys_flag & sys_flag::BORNHOST_V6 != 0)?;
        let store_timestamp = r.i64()?;
        let store_host = read_host(r, sys_flag & sys_flag::STOREHOST_V6 != 0)?;
        let reconsume_times = r.i32()?;
        let prepared_transaction_offset = r.i64()?;
        let body_len = r.len_i32()?;
        let body_at = whole.len() - r.remaining();
        r.bytes(body_len)?;
        let body = whole.slice(body_at..body_at + body_len);
        let topic_len = match magic {
            MESSAGE_MAGIC_CODE_V2 => r.len_i16()?,
            _ => usize::from(r.u8()?),
        };
        let topic = r.utf8(topic_len)?.to_owned();
        let props_len = r.len_i16()?;
        let properties = r.utf8(props_len)?.to_owned();
        Ok(MessageExt {
            topic,
            queue_id,
            flag,
            queue_offset,
            commit_log_offset,
            sys_flag,
            born_timestamp,
            born_host,
            store_timestamp,
            store_host,
            reconsume_times,
            prepared_transaction_offset,
            body,
            properties,
        })
    }

    /// The id a client shows for this message (`offsetMsgId`).
    pub fn offset_msg_id(&self) -> String {
        offset_msg_id(self.store_host, self.commit_log_offset)
    }
}

/// `MessageDecoder.createMessageId`: the store host (IP and port) and commit log offset, in
/// upper-case hex (32 characters for IPv4, 56 for IPv6).
pub fn offset_msg_id(store_host: SocketAddr, commit_log_offset: i64) -> String {
    let mut b = BytesMut::with_capacity(28);
    put_host(&mut b, &store_host);
    b.put_i64(commit_log_offset);
    hex_upper(&b)
}

/// Reads an `offsetMsgId` back into its store host and commit log offset.
pub fn parse_offset_msg_id(id: &str) -> Result<(SocketAddr, i64)> {
    let bad = |detail: &str| RemotingError::Malformed {
        what: "message id",
        detail: format!("{id:?}: {detail}"),
    };
    let v6 = match id.len() {
        32 => false,
        56 => true,
        _ => return Err(bad("not 32 or 56 hex digits")),
    };
    let bytes = (0..id.len())
        .step_by(2)
        .map(|i| {
            id.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| bad("not hex"))?;
    let mut r = Reader::new(&bytes, "message id");
    let host = read_host(&mut r, v6)?;
    Ok((host, r.i64()?))
}

fn hex_upper(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 0xf)] as char);
    }
    s
}

/// One message of a batch send's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    pub flag: i32,
    pub body: Bytes,
    pub properties: String,
}

/// Splits a batch send's body (`MessageDecoder.encodeMessages`).
pub fn decode_batch(body: &Bytes) -> Result<Vec<BatchEntry>> {
    let mut r = Reader::new(body, "batch message");
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let total = r.len_i32()?;
        let _magic = r.i32()?;
        let _crc = r.i32()?;
        let flag = r.i32()?;
        let body_len = r.len_i32()?;
        let at = body.len() - r.remaining();
        r.bytes(body_len)?;
        let msg_body = body.slice(at..at + body_len);
        let props_len = r.len_i16()?;
        let properties = r.utf8(props_len)?.to_owned();
        let expected = 4 * 5 + body_len + 2 + props_len;
        if total != expected {
            return Err(RemotingError::Malformed {
                what: "batch message",
                detail: format!("total size {total}, its parts make {expected}"),
            });
        }
        out.push(BatchEntry {
            flag,
            body: msg_body,
            properties,
        });
    }
    Ok(out)
}

/// Writes a batch send's body, as a RocketMQ producer does.
pub fn encode_batch(entries: &[BatchEntry]) -> Result<Bytes> {
    let mut out = BytesMut::new();
    for e in entries {
        if e.properties.len() > MAX_PROPERTIES_LEN {
            return Err(RemotingError::TooLong {
                what: "properties",
                len: e.properties.len(),
                max: MAX_PROPERTIES_LEN,
            });
        }
        let total = 4 * 5 + e.body.len() + 2 + e.properties.len();
        let total32 = i32::try_from(total).map_err(|_| RemotingError::TooLong {
            what: "message",
            len: total,
            max: i32::MAX as usize,
        })?;
        out.put_i32(total32);
        out.put_i32(0);
        out.put_i32(0);
        out.put_i32(e.flag);
        out.put_i32(e.body.len() as i32);
        out.put_slice(&e.body);
        out.put_i16(e.properties.len() as i16);
        out.put_slice(e.properties.as_bytes());
    }
    Ok(out.freeze())
}

/// The body of a message whose sys flag says compressed, inflated (zlib, the only type
/// 4.x clients write), refusing to produce more than `limit` bytes.
pub fn decompress(sys_flag: i32, body: &[u8], limit: usize) -> Result<Vec<u8>> {
    match (sys_flag & sys_flag::COMPRESSION_TYPE_MASK) >> 8 {
        0 | 3 => {}
        1 => return Err(RemotingError::Decompress("LZ4 is not supported".into())),
        2 => return Err(RemotingError::Decompress("ZSTD is not supported".into())),
        t => return Err(RemotingError::Decompress(format!("unknown type {t}"))),
    }
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::ZlibDecoder::new(body)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| RemotingError::Decompress(e.to_string()))?;
    if out.len() > limit {
        return Err(RemotingError::TooLong {
            what: "decompressed body",
            len: out.len(),
            max: limit,
        });
    }
    Ok(out)
}

/// Java's `String.hashCode` (over UTF-16 code units, wrapping): what RocketMQ consumers
/// put in a subscription's `codeSet` and brokers compare tags by.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
