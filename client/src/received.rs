//! A received message's keys and properties, read in place from the buffer its pull
//! arrived in: decoding a message copies none of them. A catch-up consumer decodes
//! millions of messages a second, and a `String` per key, name and value (three
//! allocations for a message with one property) was most of what decoding one cost.
//!
//! Invariant: each holds a whole section of a record that [`RecordView`] parsed (every
//! length in bounds, every string UTF-8), so iterating yields every key or property; the
//! section shares its pull's buffer, which it keeps alive.
//!
//! [`RecordView`]: weir_protocol::RecordView

use std::fmt;

use bytes::Bytes;
use weir_protocol::record::{Keys, Properties};

/// A received message's keys, in the order the producer gave them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MessageKeys {
    section: Bytes,
}

impl MessageKeys {
    /// `section` is a parsed record's keys section ([`weir_protocol::RecordView::keys_section`]).
    pub(crate) fn in_section(section: Bytes) -> Self {
        Self { section }
    }
    pub fn iter(&self) -> Keys<'_> {
        Keys::over(&self.section)
    }
    pub fn len(&self) -> usize {
        self.iter().count()
    }
    pub fn is_empty(&self) -> bool {
        self.section.is_empty()
    }
    /// Whether `key` is one of them.
    pub fn contains(&self, key: &str) -> bool {
        self.iter().any(|k| k == key)
    }
    /// The first one, if any.
    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }
    /// Owned copies, in order.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl<'a> IntoIterator for &'a MessageKeys {
    type Item = &'a str;
    type IntoIter = Keys<'a>;
    fn into_iter(self) -> Keys<'a> {
        self.iter()
    }
}

impl fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A received message's properties (name and value), in the order the producer set them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    section: Bytes,
}

impl MessageProperties {
    /// `section` is a parsed record's properties section
    /// ([`weir_protocol::RecordView::properties_section`]).
    pub(crate) fn in_section(section: Bytes) -> Self {
        Self { section }
    }
    pub fn iter(&self) -> Properties<'_> {
        Properties::over(&self.section)
    }
    /// The value of the first property called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
    pub fn len(&self) -> usize {
        self.iter().count()
    }
    pub fn is_empty(&self) -> bool {
        self.section.is_empty()
    }
    /// These and `name` = `value` after them, in a section of their own (a copy: for the
    /// rare message a client amends, as a check-back's); `None` if `name` or `value` is
    /// longer than a property's encoding holds (64 KiB and 4 GiB).
    pub(crate) fn with(&self, name: &str, value: &str) -> Option<Self> {
        let name_len = u16::try_from(name.len()).ok()?;
        let value_len = u32::try_from(value.len()).ok()?;
        let mut section = Vec::with_capacity(self.section.len() + 6 + name.len() + value.len());
        section.extend_from_slice(&self.section);
        section.extend_from_slice(&name_len.to_le_bytes());
        section.extend_from_slice(name.as_bytes());
        section.extend_from_slice(&value_len.to_le_bytes());
        section.extend_from_slice(value.as_bytes());
        Some(Self {
            section: section.into(),
        })
    }
    /// Owned copies, in order.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl<'a> IntoIterator for &'a MessageProperties {
    type Item = (&'a str, &'a str);
    type IntoIter = Properties<'a>;
    fn into_iter(self) -> Properties<'a> {
        self.iter()
    }
}

impl fmt::Debug for MessageProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::RecordView;
    use weir_protocol::record::{Assigned, Message, encode_to_vec};

    fn record(keys: &[&str], properties: &[(&str, &str)]) -> Bytes {
        let host = "127.0.0.1:10911".parse().expect("an address");
        let m = keys
            .iter()
            .fold(Message::new("T", 0, b"body".to_vec()), |m, k| {
                m.with_key(*k)
            });
        let m = properties
            .iter()
            .fold(m, |m, (k, v)| m.with_property(*k, *v));
        let at = Assigned {
            queue_offset: 0,
            commit_log_offset: 0,
            store_timestamp: 2,
            store_host: host,
        };
        Bytes::from(encode_to_vec(&m, &at).expect("a record"))
    }

    #[test]
    fn keys_and_properties_read_in_place_as_sent() {
        let bytes = record(&["k1", "ключ"], &[("a", "1"), ("b", ""), ("a", "2")]);
        let v = RecordView::parse(&bytes).expect("a record");
        let keys = MessageKeys::in_section(bytes.slice_ref(v.keys_section()));
        let props = MessageProperties::in_section(bytes.slice_ref(v.properties_section()));
        assert_eq!(keys.to_vec(), ["k1", "ключ"]);
        assert_eq!((keys.len(), keys.first()), (2, Some("k1")));
        assert!(keys.contains("ключ") && !keys.contains("k"));
        assert_eq!(
            props.to_vec(),
            [("a", "1"), ("b", ""), ("a", "2")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            (props.get("a"), props.get("b"), props.get("c")),
            (Some("1"), Some(""), None)
        );
        assert_eq!(props.len(), 3);
        assert_eq!(format!("{keys:?}"), r#"["k1", "ключ"]"#);
        assert_eq!(format!("{props:?}"), r#"{"a": "1", "b": "", "a": "2"}"#);
    }

    #[test]
    fn none_is_empty() {
        let bytes = record(&[], &[]);
        let v = RecordView::parse(&bytes).expect("a record");
        let keys = MessageKeys::in_section(bytes.slice_ref(v.keys_section()));
        let props = MessageProperties::in_section(bytes.slice_ref(v.properties_section()));
        assert!(keys.is_empty() && props.is_empty());
        assert_eq!((keys.len(), props.len(), keys.first()), (0, 0, None));
        assert_eq!(keys, MessageKeys::default());
    }

    #[test]
    fn a_property_added_comes_after_the_others() {
        let bytes = record(&[], &[("a", "1")]);
        let v = RecordView::parse(&bytes).expect("a record");
        let props = MessageProperties::in_section(bytes.slice_ref(v.properties_section()));
        let more = props.with("b", "two").expect("short enough");
        assert_eq!(
            more.to_vec(),
            [("a", "1"), ("b", "two")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(
            MessageProperties::default()
                .with("x", "")
                .expect("short")
                .get("x"),
            Some("")
        );
        assert!(props.with(&"n".repeat(70_000), "").is_none());
    }
}
