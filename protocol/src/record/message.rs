//! The message model: what a producer sends and the store keeps ([`Message`]), and the
//! checks that make one storable.
//!
//! Invariant: a message whose [`Message::encoded_len`] is `Ok` fits every length prefix of
//! the record format, and its topic is safe to use as a folder name.

use std::net::SocketAddr;

use super::{NO_PREPARED_TX, RECORD_OVERHEAD, RecordError, Result};

/// A message: what a producer sends and the store keeps, before the store assigns its
/// offsets and timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub queue_id: u32,
    /// User flag, opaque to the store.
    pub flag: u32,
    /// See [`sys_flag`](super::sys_flag).
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
