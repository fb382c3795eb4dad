//! Reading records: [`probe`] decides what sits at a commit log position, [`RecordView`]
//! decodes one whole record, and [`filter_message`] finds what a filter receives by
//! lengths alone.
//!
//! Invariant: nothing here panics on any input, however damaged; a [`RecordView`] exists
//! only for bytes whose every length and string checked out, so its accessors cannot fail.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use super::{
    BLANK_MAGIC, BLANK_MIN_LEN, MESSAGE_MAGIC, Message, MessageId, RECORD_OVERHEAD, RecordError,
    Result, pos, u16_at, u32_at, u64_at,
};

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
    match probe_frame(window, offset) {
        Probe::Message(len) => {
            let rec = &window[..len];
            if !crc_ok(rec) {
                Probe::Invalid("CRC mismatch")
            } else if RecordView::parse(rec).is_err() {
                Probe::Invalid("inconsistent field lengths")
            } else {
                Probe::Message(len)
            }
        }
        other => other,
    }
}

/// What [`probe`] checks of a record's frame alone: its magic, a length within `window`
/// and its recorded position; not its checksum nor its fields. Enough to walk records a
/// log holds intact (a master streaming its own log: the slave checks the rest); a
/// `Message(len)` here is within `window`. Never panics on any input.
pub fn probe_frame(window: &[u8], offset: u64) -> Probe {
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
    if u64_at(window, pos::COMMIT_LOG_OFFSET) != offset {
        return Probe::Invalid("record written for another position");
    }
    Probe::Message(len)
}

/// Whether a whole record's stored checksum matches its bytes (`rec` is a record that
/// [`probe_frame`] found, exactly its length).
pub fn crc_ok(rec: &[u8]) -> bool {
    rec.len() >= RECORD_OVERHEAD && crc32fast::hash(&rec[pos::CRC_START..]) == u32_at(rec, pos::CRC)
}

/// Where a record's attributes (tags, keys and properties exactly as stored: `u16` tag
/// length and tag, `u32` keys length and keys, `u32` properties length and properties) and
/// body are, found by lengths alone: the `attributes` a filter receives
/// (`wit/filter.wit`), one contiguous slice, no re-encoding. Unlike
/// [`RecordView::parse`] it does not check that the text is UTF-8: for the filter path,
/// where the filter decodes and checks what it reads, and every byte of validation counts.
pub fn attributes_and_body(bytes: &[u8]) -> Result<(&[u8], &[u8])> {
    let s = Sections::split(bytes)?;
    // From the tag's length prefix to the end of the properties.
    Ok((&bytes[s.tags.start - 2..s.props.end], &bytes[s.body]))
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

/// Where a record's variable fields lie (each range within the record, after its length
/// prefix): every length checked against the record's size, nothing inside them checked.
/// The one place the layout's lengths are walked.
struct Sections {
    topic: Range<usize>,
    tags: Range<usize>,
    keys: Range<usize>,
    props: Range<usize>,
    body: Range<usize>,
}

impl Sections {
    fn split(bytes: &[u8]) -> Result<Self> {
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
        // A `width`-byte length, then that many bytes: their range.
        let mut field = |width: usize| -> Option<Range<usize>> {
            let len = match *bytes.get(at..at.checked_add(width)?)? {
                [a, b] => usize::from(u16::from_le_bytes([a, b])),
                [a, b, c, d] => u32::from_le_bytes([a, b, c, d]) as usize,
                _ => return None,
            };
            let start = at + width;
            let end = start.checked_add(len).filter(|e| *e <= bytes.len())?;
            at = end;
            Some(start..end)
        };
        let sections = (|| {
            Some(Self {
                topic: field(2)?,
                tags: field(2)?,
                keys: field(4)?,
                props: field(4)?,
                body: field(4)?,
            })
        })();
        match sections {
            Some(s) if s.body.end == bytes.len() => Ok(s),
            Some(_) => bad("trailing bytes after the body"),
            None => bad("field lengths run past the end"),
        }
    }
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
        let s = Sections::split(bytes)?;
        let (Ok(topic), Ok(tags)) = (
            std::str::from_utf8(&bytes[s.topic]),
            std::str::from_utf8(&bytes[s.tags]),
        ) else {
            return bad("topic or tag is not UTF-8");
        };
        let (keys, props) = (&bytes[s.keys], &bytes[s.props]);
        if !walk_keys(keys) || !walk_props(props) {
            return bad("malformed keys or properties");
        }
        Ok(Self {
            bytes,
            topic,
            tags,
            keys,
            props,
            body: &bytes[s.body],
        })
    }

    /// The length of a record's body, reading only the header and the variable fields'
    /// lengths (no string or property is checked): for counting bytes, where a whole parse
    /// per record would cost more than the count is worth.
    pub fn body_len(bytes: &[u8]) -> Result<usize> {
        Sections::split(bytes).map(|s| s.body.len())
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
    /// The keys' section as stored (read with [`Keys::over`]): for a reader that keeps
    /// the record's buffer and reads its keys later, without copying them now.
    pub fn keys_section(&self) -> &'a [u8] {
        self.keys
    }
    /// The properties' section as stored (read with [`Properties::over`]); see
    /// [`RecordView::keys_section`].
    pub fn properties_section(&self) -> &'a [u8] {
        self.props
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
#[derive(Clone)]
pub struct Keys<'a> {
    rest: &'a [u8],
}
impl<'a> Keys<'a> {
    /// The keys in a section taken from a parsed record ([`RecordView::keys_section`]);
    /// over other bytes, it stops at the first malformed key.
    pub fn over(section: &'a [u8]) -> Self {
        Self { rest: section }
    }
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
#[derive(Clone)]
pub struct Properties<'a> {
    rest: &'a [u8],
}
impl<'a> Properties<'a> {
    /// The properties in a section taken from a parsed record
    /// ([`RecordView::properties_section`]); over other bytes, it stops at the first
    /// malformed property.
    pub fn over(section: &'a [u8]) -> Self {
        Self { rest: section }
    }
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
