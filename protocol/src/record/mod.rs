//! The commit log record: how one message is laid out on disk (see `FORMAT.md`).
//!
//! All integers are little-endian. A record is self-describing: it starts with its total
//! length and a magic number, carries a CRC32 of everything after the CRC field, and
//! repeats its own commit log offset so that stale bytes from an earlier life of a file
//! never validate at another position.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

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

/// A message: what a producer sends and the store keeps, before the store assigns its
/// offsets and timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub queue_id: u32,
    /// User flag, opaque to the store.
    pub flag: u32,
    /// See [`sys_flag`].
    pub sys_flag: u32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    /// The message's tag; empty for none.
    pub tags: String,
    /// Keys the message can be found by.
    pub keys: Vec<String>,
    /// Ordered properties.
    pub properties: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub reconsume_times: u32,
    /// Commit log offset of the half message this record commits or rolls back, or
    /// [`NO_PREPARED_TX`].
    pub prepared_tx_offset: u64,
}

impl Message {
    /// A plain message with the given topic, queue and body; everything else empty.
    pub fn new(topic: impl Into<String>, queue_id: u32, body: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            queue_id,
            flag: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: SocketAddr::from(([0, 0, 0, 0], 0)),
            tags: String::new(),
            keys: Vec::new(),
            properties: Vec::new(),
            body: body.into(),
            reconsume_times: 0,
            prepared_tx_offset: NO_PREPARED_TX,
        }
    }

    pub fn with_tags(mut self, tags: impl Into<String>) -> Self {
        self.tags = tags.into();
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    pub fn with_property(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.properties.push((k.into(), v.into()));
        self
    }

    /// The value of property `name`, if set.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Removes every property named in `names`.
    pub fn remove_properties(&mut self, names: &[&str]) {
        self.properties
            .retain(|(k, _)| !names.contains(&k.as_str()));
    }

    /// The encoded size of this message, after checking every field fits its length
    /// prefix and the topic is safe to use as a folder name.
    pub fn encoded_len(&self) -> Result<usize> {
        validate_topic(&self.topic)?;
        let bad = |m: String| Err(RecordError::InvalidMessage(m));
        if self.tags.len() > u16::MAX as usize {
            return bad(format!("tags of {} bytes exceed 65535", self.tags.len()));
        }
        let mut keys_len = 0usize;
        for k in &self.keys {
            if k.is_empty() || k.len() > u16::MAX as usize {
                return bad(format!("key of {} bytes is not within 1..=65535", k.len()));
            }
            keys_len += 2 + k.len();
        }
        let mut props_len = 0usize;
        for (k, v) in &self.properties {
            if k.is_empty() || k.len() > u16::MAX as usize {
                return bad(format!(
                    "property name of {} bytes is not within 1..=65535",
                    k.len()
                ));
            }
            props_len += 2 + k.len() + 4 + v.len();
        }
        let total = RECORD_OVERHEAD
            + self.topic.len()
            + self.tags.len()
            + keys_len
            + props_len
            + self.body.len();
        if total > u32::MAX as usize / 2 {
            return bad(format!("message of {total} bytes is too large"));
        }
        Ok(total)
    }
}

/// A topic is a folder name in the store, so it must be one.
pub fn validate_topic(topic: &str) -> Result<()> {
    let bad = |m: String| Err(RecordError::InvalidMessage(m));
    if topic.is_empty() {
        return bad("topic is empty".into());
    }
    if topic.len() > 255 {
        return bad(format!("topic of {} bytes exceeds 255", topic.len()));
    }
    if topic == "." || topic == ".." || topic.contains(['/', '\\', '\0']) {
        return bad(format!(
            "topic {topic:?} cannot be stored (path separator or dot name)"
        ));
    }
    Ok(())
}

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

/// Writes a blank filler covering all of `dst` (at least [`BLANK_MIN_LEN`] bytes).
pub fn encode_blank(dst: &mut [u8]) {
    let len = dst.len() as u32;
    put_u32(dst, pos::TOTAL_LEN, len);
    put_u32(dst, pos::MAGIC, BLANK_MAGIC);
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
fn addr_at(b: &[u8], ip_at: usize, port_at: usize) -> SocketAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[ip_at..ip_at + 16]);
    let v6 = Ipv6Addr::from(o);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16_at(b, port_at))
}

/// What sits at a position of a commit log segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// A valid record of this many bytes.
    Message(usize),
    /// A blank filler running to the end of the segment.
    Blank(usize),
    /// Nothing valid: the end of the log (zeros) or damage.
    Invalid(&'static str),
}

/// Checks the bytes at the start of `window` (which runs to the end of the segment) for
/// a complete, intact record written at `offset`. Never panics on any input.
pub fn probe(window: &[u8], offset: u64) -> Probe {
    if window.len() < BLANK_MIN_LEN {
        return Probe::Invalid("segment tail shorter than a header");
    }
    let len = u32_at(window, pos::TOTAL_LEN) as usize;
    let magic = u32_at(window, pos::MAGIC);
    if magic == BLANK_MAGIC {
        return if len == window.len() {
            Probe::Blank(len)
        } else {
            Probe::Invalid("blank filler does not end the segment")
        };
    }
    if magic != MESSAGE_MAGIC {
        return Probe::Invalid(if len == 0 { "end of data" } else { "bad magic" });
    }
    if len < RECORD_OVERHEAD || len > window.len() {
        return Probe::Invalid("record length out of bounds");
    }
    let rec = &window[..len];
    if u64_at(rec, pos::COMMIT_LOG_OFFSET) != offset {
        return Probe::Invalid("record written for another position");
    }
    if crc32fast::hash(&rec[pos::CRC_START..]) != u32_at(rec, pos::CRC) {
        return Probe::Invalid("CRC mismatch");
    }
    if RecordView::parse(rec).is_err() {
        return Probe::Invalid("inconsistent field lengths");
    }
    Probe::Message(len)
}

/// Where a record's attributes (tags, keys and properties exactly as stored: `u16` tag
/// length and tag, `u32` keys length and keys, `u32` properties length and properties) and
/// body are, found by lengths alone: the `attributes` a filter receives
/// (`wit/filter.wit`), one contiguous slice, no re-encoding. Unlike
/// [`RecordView::parse`] it does not check that the text is UTF-8: for the filter path,
/// where the filter decodes and checks what it reads, and every byte of validation counts.
pub fn attributes_and_body(bytes: &[u8]) -> Result<(&[u8], &[u8])> {
    let bad = |m: &str| Err(RecordError::Malformed(m.to_owned()));
    if bytes.len() < RECORD_OVERHEAD
        || u32_at(bytes, pos::MAGIC) != MESSAGE_MAGIC
        || u32_at(bytes, pos::TOTAL_LEN) as usize != bytes.len()
    {
        return bad("not a whole record");
    }
    let len_at = |at: usize, width: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(width)?)?;
        Some(match width {
            2 => usize::from(u16::from_le_bytes([b[0], b[1]])),
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
        })
    };
    let spans = (|| {
        let start = pos::VARIABLE + 2 + len_at(pos::VARIABLE, 2)?;
        let mut at = start;
        for width in [2, 4, 4] {
            at = at.checked_add(width)?.checked_add(len_at(at, width)?)?;
        }
        let body_len = len_at(at, 4)?;
        let body_at = at + 4;
        (body_at.checked_add(body_len)? == bytes.len()).then_some((start, at, body_at))
    })();
    match spans {
        Some((start, end, body_at)) => Ok((&bytes[start..end], &bytes[body_at..])),
        None => bad("field lengths disagree with the record size"),
    }
}

/// One record as a filter receives it (`wit/filter.wit`'s `message`): the fixed fields
/// it reads, its attributes (see [`attributes_and_body`]) and its body. Pure, so the
/// broker's conversion of untrusted stored bytes can be fuzzed without a WebAssembly
/// runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterMessage<'a> {
    pub queue_offset: u64,
    pub born_timestamp: i64,
    pub store_timestamp: i64,
    pub reconsume_count: u32,
    pub attributes: &'a [u8],
    pub body: &'a [u8],
}

/// [`FilterMessage`] of a whole record, by lengths alone (no UTF-8 or CRC check).
pub fn filter_message(bytes: &[u8]) -> Result<FilterMessage<'_>> {
    let (attributes, body) = attributes_and_body(bytes)?;
    // `attributes_and_body` checked the record is at least `RECORD_OVERHEAD` long, so
    // the fixed fields are in bounds.
    Ok(FilterMessage {
        queue_offset: u64_at(bytes, pos::QUEUE_OFFSET),
        born_timestamp: u64_at(bytes, pos::BORN_TS) as i64,
        store_timestamp: u64_at(bytes, pos::STORE_TS) as i64,
        reconsume_count: u32_at(bytes, pos::RECONSUME_TIMES),
        attributes,
        body,
    })
}

/// A decoded view over one record's bytes. Constructing it validates every length and
/// every string, so the accessors cannot fail.
#[derive(Clone, Copy)]
pub struct RecordView<'a> {
    bytes: &'a [u8],
    topic: &'a str,
    tags: &'a str,
    keys: &'a [u8],
    props: &'a [u8],
    body: &'a [u8],
}

impl fmt::Debug for RecordView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordView")
            .field("commit_log_offset", &self.commit_log_offset())
            .field("topic", &self.topic)
            .field("queue_id", &self.queue_id())
            .field("queue_offset", &self.queue_offset())
            .field("tags", &self.tags)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl<'a> RecordView<'a> {
    /// Parses one whole record (`bytes.len()` must equal its total length). Does not check
    /// the CRC: use [`RecordView::verify_crc`] where bytes come from an untrusted place.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let bad = |m: &str| Err(RecordError::Malformed(m.to_owned()));
        if bytes.len() < RECORD_OVERHEAD {
            return bad("shorter than the fixed header");
        }
        if u32_at(bytes, pos::MAGIC) != MESSAGE_MAGIC {
            return bad("bad magic");
        }
        if u32_at(bytes, pos::TOTAL_LEN) as usize != bytes.len() {
            return bad("length field disagrees with the record size");
        }
        let mut at = pos::VARIABLE;
        let mut take = |n: usize| -> Option<&'a [u8]> {
            let s = bytes.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        let parsed = (|| {
            let tl = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
            let topic = std::str::from_utf8(take(tl)?).ok()?;
            let gl = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
            let tags = std::str::from_utf8(take(gl)?).ok()?;
            let kl = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let keys = take(kl)?;
            let pl = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let props = take(pl)?;
            let bl = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let body = take(bl)?;
            Some((topic, tags, keys, props, body))
        })();
        let Some((topic, tags, keys, props, body)) = parsed else {
            return bad("field lengths run past the end");
        };
        if at != bytes.len() {
            return bad("trailing bytes after the body");
        }
        if !walk_keys(keys) || !walk_props(props) {
            return bad("malformed keys or properties");
        }
        Ok(Self {
            bytes,
            topic,
            tags,
            keys,
            props,
            body,
        })
    }

    /// Parses and checks the CRC.
    pub fn parse_verified(bytes: &'a [u8]) -> Result<Self> {
        let v = Self::parse(bytes)?;
        if !v.verify_crc() {
            return Err(RecordError::Malformed("CRC mismatch".into()));
        }
        Ok(v)
    }

    pub fn verify_crc(&self) -> bool {
        crc32fast::hash(&self.bytes[pos::CRC_START..]) == u32_at(self.bytes, pos::CRC)
    }

    /// The raw record, exactly as stored.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn total_len(&self) -> usize {
        self.bytes.len()
    }
    pub fn queue_id(&self) -> u32 {
        u32_at(self.bytes, pos::QUEUE_ID)
    }
    pub fn queue_offset(&self) -> u64 {
        u64_at(self.bytes, pos::QUEUE_OFFSET)
    }
    pub fn commit_log_offset(&self) -> u64 {
        u64_at(self.bytes, pos::COMMIT_LOG_OFFSET)
    }
    pub fn flag(&self) -> u32 {
        u32_at(self.bytes, pos::FLAG)
    }
    pub fn sys_flag(&self) -> u32 {
        u32_at(self.bytes, pos::SYS_FLAG)
    }
    pub fn born_timestamp(&self) -> i64 {
        u64_at(self.bytes, pos::BORN_TS) as i64
    }
    pub fn store_timestamp(&self) -> i64 {
        u64_at(self.bytes, pos::STORE_TS) as i64
    }
    pub fn born_host(&self) -> SocketAddr {
        addr_at(self.bytes, pos::BORN_IP, pos::BORN_PORT)
    }
    pub fn store_host(&self) -> SocketAddr {
        addr_at(self.bytes, pos::STORE_IP, pos::STORE_PORT)
    }
    pub fn reconsume_times(&self) -> u32 {
        u32_at(self.bytes, pos::RECONSUME_TIMES)
    }
    pub fn prepared_tx_offset(&self) -> u64 {
        u64_at(self.bytes, pos::PREPARED_TX_OFFSET)
    }
    pub fn topic(&self) -> &'a str {
        self.topic
    }
    pub fn tags(&self) -> &'a str {
        self.tags
    }
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
    pub fn keys(&self) -> Keys<'a> {
        Keys { rest: self.keys }
    }
    pub fn properties(&self) -> Properties<'a> {
        Properties { rest: self.props }
    }
    pub fn property(&self, name: &str) -> Option<&'a str> {
        self.properties().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
    /// The id a client can look this message up by.
    pub fn message_id(&self) -> MessageId {
        MessageId {
            store_host: self.store_host(),
            offset: self.commit_log_offset(),
        }
    }

    /// An owned copy of the message as it was handed to the store.
    pub fn to_message(&self) -> Message {
        Message {
            topic: self.topic.to_owned(),
            queue_id: self.queue_id(),
            flag: self.flag(),
            sys_flag: self.sys_flag(),
            born_timestamp: self.born_timestamp(),
            born_host: self.born_host(),
            tags: self.tags.to_owned(),
            keys: self.keys().map(str::to_owned).collect(),
            properties: self
                .properties()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body: self.body.to_vec(),
            reconsume_times: self.reconsume_times(),
            prepared_tx_offset: self.prepared_tx_offset(),
        }
    }
}

fn split_str(rest: &[u8], len_bytes: usize) -> Option<(&str, &[u8])> {
    let head = rest.get(..len_bytes)?;
    let n = match len_bytes {
        2 => u16::from_le_bytes(head.try_into().ok()?) as usize,
        _ => u32::from_le_bytes(head.try_into().ok()?) as usize,
    };
    let s = rest.get(len_bytes..len_bytes.checked_add(n)?)?;
    Some((std::str::from_utf8(s).ok()?, &rest[len_bytes + n..]))
}

fn walk_keys(mut rest: &[u8]) -> bool {
    while !rest.is_empty() {
        match split_str(rest, 2) {
            Some((_, r)) => rest = r,
            None => return false,
        }
    }
    true
}

fn walk_props(mut rest: &[u8]) -> bool {
    while !rest.is_empty() {
        let Some((_, r)) = split_str(rest, 2) else {
            return false;
        };
        let Some((_, r)) = split_str(r, 4) else {
            return false;
        };
        rest = r;
    }
    true
}

/// The keys of a record, in the order they were given.
pub struct Keys<'a> {
    rest: &'a [u8],
}
impl<'a> Iterator for Keys<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let (k, r) = split_str(self.rest, 2)?;
        self.rest = r;
        Some(k)
    }
}

/// The properties of a record, in the order they were given.
pub struct Properties<'a> {
    rest: &'a [u8],
}
impl<'a> Iterator for Properties<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        let (k, r) = split_str(self.rest, 2)?;
        let (v, r) = split_str(r, 4)?;
        self.rest = r;
        Some((k, v))
    }
}

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

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.store_host.ip() {
            IpAddr::V4(v4) => {
                for b in v4.octets() {
                    write!(f, "{b:02X}")?;
                }
            }
            IpAddr::V6(v6) => {
                for b in v6.octets() {
                    write!(f, "{b:02X}")?;
                }
            }
        }
        write!(
            f,
            "{:08X}{:016X}",
            u32::from(self.store_host.port()),
            self.offset
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::new("TopicA", 3, b"hello body".to_vec())
            .with_tags("TagA")
            .with_key("k1")
            .with_key("order-42")
            .with_property("a", "1")
            .with_property("empty", "");
        m.born_host = "10.1.2.3:5555".parse().unwrap();
        m.born_timestamp = 1_700_000_000_000;
        m.reconsume_times = 2;
        m.flag = 7;
        m
    }

    fn encode(m: &Message, offset: u64) -> Vec<u8> {
        let mut buf = vec![0u8; m.encoded_len().unwrap()];
        let a = Assigned {
            queue_offset: 9,
            commit_log_offset: offset,
            store_timestamp: 1_700_000_000_123,
            store_host: "[::1]:10911".parse().unwrap(),
        };
        encode_into(m, &a, &mut buf);
        buf
    }

    #[test]
    fn attributes_and_body_agree_with_the_view() {
        let buf = encode(&sample(), 0);
        let v = RecordView::parse(&buf).unwrap();
        let (attributes, body) = attributes_and_body(&buf).unwrap();
        let start = pos::VARIABLE + 2 + v.topic().len();
        assert_eq!(attributes, &buf[start..buf.len() - 4 - v.body().len()]);
        assert_eq!(body, b"hello body");
        // tag "TagA", then the keys and properties sections.
        assert_eq!(&attributes[..6], b"\x04\x00TagA");
        assert_eq!(
            attributes.len(),
            6 + 4 + (2 + 2) + (2 + 8) + 4 + (2 + 1 + 4 + 1) + (2 + 5 + 4)
        );
        // A corrupted length never yields out-of-range slices.
        for at in pos::VARIABLE..buf.len() {
            let mut bad = buf.clone();
            bad[at] ^= 0xff;
            if let Ok((a, b)) = attributes_and_body(&bad) {
                assert!(a.len() + b.len() < bad.len());
            }
        }
        assert!(attributes_and_body(&buf[..buf.len() - 1]).is_err());
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let buf = encode(&m, 4096);
        assert_eq!(probe(&buf, 4096), Probe::Message(buf.len()));
        let v = RecordView::parse_verified(&buf).unwrap();
        assert_eq!(v.to_message(), m);
        assert_eq!(v.queue_offset(), 9);
        assert_eq!(v.commit_log_offset(), 4096);
        assert_eq!(v.store_timestamp(), 1_700_000_000_123);
        assert_eq!(v.store_host(), "[::1]:10911".parse().unwrap());
        assert_eq!(v.property("a"), Some("1"));
        assert_eq!(v.property("zz"), None);
    }

    #[test]
    fn probe_rejects_damage_and_other_positions() {
        let buf = encode(&sample(), 100);
        assert!(matches!(probe(&buf, 101), Probe::Invalid(_)));
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x5a;
            assert!(
                matches!(probe(&b, 100), Probe::Invalid(_)),
                "flip at {i} undetected"
            );
        }
        for cut in 0..buf.len() {
            assert!(matches!(probe(&buf[..cut], 100), Probe::Invalid(_)));
        }
        assert!(matches!(
            probe(&[0u8; 64], 0),
            Probe::Invalid("end of data")
        ));
    }

    #[test]
    fn blank_filler() {
        let mut b = vec![0u8; 40];
        encode_blank(&mut b);
        assert_eq!(probe(&b, 0), Probe::Blank(40));
        assert!(matches!(probe(&b[..39], 0), Probe::Invalid(_)));
    }

    #[test]
    fn rejects_bad_messages() {
        for t in ["", ".", "..", "a/b", "a\0b"] {
            assert!(Message::new(t, 0, vec![]).encoded_len().is_err(), "{t:?}");
        }
        assert!(
            Message::new("t", 0, vec![])
                .with_key("")
                .encoded_len()
                .is_err()
        );
        let long_tag = "x".repeat(70_000);
        assert!(
            Message::new("t", 0, vec![])
                .with_tags(long_tag)
                .encoded_len()
                .is_err()
        );
    }

    #[test]
    fn message_id_round_trips() {
        for host in ["127.0.0.1:10911", "[2001:db8::7]:9"] {
            let id = MessageId {
                store_host: host.parse().unwrap(),
                offset: 0x0123_4567_89ab_cdef,
            };
            let s = id.to_string();
            assert_eq!(s.parse::<MessageId>().unwrap(), id);
        }
        assert_eq!(
            MessageId {
                store_host: "127.0.0.1:10911".parse().unwrap(),
                offset: 5
            }
            .to_string(),
            "7F00000100002A9F0000000000000005"
        );
        for bad in [
            "",
            "zz",
            "7F00000100002A9F000000000000000G",
            "7F000001FFFFFFFF0000000000000005",
        ] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tag_hash_is_stable() {
        assert_eq!(tag_hash(""), 0);
        assert_eq!(tag_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(tag_hash("TagA"), tag_hash("TagB"));
    }
}
