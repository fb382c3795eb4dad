//! What a filter decides on: the batch's [`Context`] and each [`Message`], read in place
//! from the attribute bytes the broker sends (`wit/filter.wit`).
//!
//! Invariant: a [`Message`] exists only for attributes whose three sections are whole;
//! its accessors then stop at anything malformed inside them rather than misread it.

/// What every message of a batch shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub topic: String,
    pub queue_id: u32,
    pub consumer_group: String,
}

/// One message, with typed accessors over the broker's encoding (see `wit/filter.wit`).
#[derive(Clone, Copy)]
pub struct Message<'a> {
    queue_offset: u64,
    born_timestamp: i64,
    store_timestamp: i64,
    reconsume_count: u32,
    tags: &'a [u8],
    keys: &'a [u8],
    properties: &'a [u8],
    body: Option<&'a [u8]>,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("queue_offset", &self.queue_offset)
            .field("born_timestamp", &self.born_timestamp)
            .field("store_timestamp", &self.store_timestamp)
            .field("reconsume_count", &self.reconsume_count)
            .field("tags", &self.tags())
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("properties", &self.properties().collect::<Vec<_>>())
            .field("body_len", &self.body.map(<[u8]>::len))
            .finish()
    }
}

impl<'a> Message<'a> {
    /// Splits the attribute bytes into tag, keys and properties; `None` if they are not in
    /// the documented encoding (the broker only sends valid ones). Keys and properties are
    /// decoded lazily by the accessors, which stop at anything malformed.
    #[inline]
    pub fn decode(
        queue_offset: u64,
        born_timestamp: i64,
        store_timestamp: i64,
        reconsume_count: u32,
        attributes: &'a [u8],
        body: Option<&'a [u8]>,
    ) -> Option<Self> {
        let mut rest = attributes;
        // The tag's text is checked when read (`tags`): most filters never read it.
        let tags = take(&mut rest, 2)?;
        let keys = take(&mut rest, 4)?;
        let properties = take(&mut rest, 4)?;
        if !rest.is_empty() {
            return None;
        }
        Some(Self {
            queue_offset,
            born_timestamp,
            store_timestamp,
            reconsume_count,
            tags,
            keys,
            properties,
            body,
        })
    }

    pub fn queue_offset(&self) -> u64 {
        self.queue_offset
    }
    /// Milliseconds since the Unix epoch, as the producer set it.
    pub fn born_timestamp(&self) -> i64 {
        self.born_timestamp
    }
    /// Milliseconds since the Unix epoch, when the broker stored the message.
    pub fn store_timestamp(&self) -> i64 {
        self.store_timestamp
    }
    pub fn reconsume_count(&self) -> u32 {
        self.reconsume_count
    }
    /// The tag; empty when the message has none (or, which a broker never sends, when it
    /// is not UTF-8).
    pub fn tags(&self) -> &'a str {
        // A broker sends only the UTF-8 it accepted at send time.
        std::str::from_utf8(self.tags).unwrap_or_default()
    }
    pub fn keys(&self) -> impl Iterator<Item = &'a str> + 'a {
        let mut rest = self.keys;
        std::iter::from_fn(move || take_str(&mut rest, 2))
    }
    pub fn properties(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut rest = self.properties;
        std::iter::from_fn(move || Some((take_str(&mut rest, 2)?, take_str(&mut rest, 4)?)))
    }
    /// The value of the first property called `name`.
    #[inline]
    pub fn property(&self, name: &str) -> Option<&'a str> {
        std::str::from_utf8(self.property_bytes(name)?).ok()
    }
    /// [`Message::property`] as the stored bytes, without checking that they are UTF-8
    /// (a broker stores only UTF-8): cheaper where the value is compared with known text
    /// or read as a plain number, as a filter does for every message.
    #[inline]
    pub fn property_bytes(&self, name: &str) -> Option<&'a [u8]> {
        // Compare raw name bytes: this runs per message per looked-up property, and
        // `decode` already checked the encoding.
        let mut rest = self.properties;
        while !rest.is_empty() {
            let k = take(&mut rest, 2)?;
            let v = take(&mut rest, 4)?;
            if same(k, name.as_bytes()) {
                return Some(v);
            }
        }
        None
    }
    /// Looks up several properties in one pass: `values[i]` becomes the value of the first
    /// property named `names[i]` (`None` if absent). Cheaper than [`Message::property`] per
    /// name when a filter reads several; only the values found are decoded.
    pub fn properties_of<N: AsRef<str>>(&self, names: &[N], values: &mut [Option<&'a str>]) {
        let n = names.len().min(values.len());
        // One pass for up to 16 names (their byte values on the stack); more, which no
        // filter in practice reads, are looked up one by one.
        let mut found = [None; 16];
        if n <= found.len() {
            self.properties_bytes_of(&names[..n], &mut found[..n]);
            for (slot, v) in values.iter_mut().zip(&found[..n]) {
                *slot = v.and_then(|v| std::str::from_utf8(v).ok());
            }
            return;
        }
        values[..n].fill(None);
        for (name, slot) in names[..n].iter().zip(values[..n].iter_mut()) {
            *slot = self.property(name.as_ref());
        }
    }
    /// [`Message::properties_of`] as the stored bytes, unchecked (see
    /// [`Message::property_bytes`]).
    #[inline]
    pub fn properties_bytes_of<N: AsRef<str>>(&self, names: &[N], values: &mut [Option<&'a [u8]>]) {
        let n = names.len().min(values.len());
        values[..n].fill(None);
        let mut missing = n;
        let mut rest = self.properties;
        while missing > 0 && !rest.is_empty() {
            let (Some(k), Some(v)) = (take(&mut rest, 2), take(&mut rest, 4)) else {
                return;
            };
            for (name, slot) in names[..n].iter().zip(values[..n].iter_mut()) {
                if slot.is_none() && same(k, name.as_ref().as_bytes()) {
                    *slot = Some(v);
                    missing -= 1;
                }
            }
        }
    }

    /// The body, when the filter asked for bodies ([`Filter::NEEDS_BODY`](crate::Filter::NEEDS_BODY)).
    pub fn body(&self) -> Option<&'a [u8]> {
        self.body
    }
    /// The body as UTF-8 text; `None` when absent or not UTF-8.
    pub fn body_str(&self) -> Option<&'a str> {
        self.body.and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// `a == b`, byte by byte: names are short, and in wasm the `memcmp` call that slice
/// equality makes costs more than the comparison.
#[inline(always)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// Takes a length-prefixed (u16 or u32, little-endian) slice off the front of `rest`.
#[inline(always)]
fn take<'a>(rest: &mut &'a [u8], width: usize) -> Option<&'a [u8]> {
    let (len, tail) = rest.split_at_checked(width)?;
    let len = match *len {
        [a, b] => usize::from(u16::from_le_bytes([a, b])),
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => return None,
    };
    let (value, tail) = tail.split_at_checked(len)?;
    *rest = tail;
    Some(value)
}

fn take_str<'a>(rest: &mut &'a [u8], width: usize) -> Option<&'a str> {
    std::str::from_utf8(take(rest, width)?).ok()
}
