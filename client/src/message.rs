use bytes::Bytes;
use weir_protocol::{MessageId, RecordView};

use crate::received::{MessageKeys, MessageProperties};

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub tags: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub body: Bytes,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            tags: String::new(),
            keys: Vec::new(),
            properties: Vec::new(),
            body: body.into(),
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
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The transaction this message belongs to (property `__transactionId__`): set by
    /// [`TransactionProducer`](crate::TransactionProducer) on the message its listener sees.
    pub fn transaction_id(&self) -> Option<&str> {
        self.property(weir_protocol::names::property::TRANSACTION_ID)
    }
    /// Delivered after the broker's delay level `level` (1-based: `1s 5s 10s 30s 1m …` by
    /// default); 0 for none.
    pub fn with_delay_level(mut self, level: u32) -> Self {
        let name = weir_protocol::names::property::DELAY_LEVEL;
        self.properties.retain(|(k, _)| k != name);
        if level > 0 {
            self.properties.push((name.to_owned(), level.to_string()));
        }
        self
    }
}

/// One queue of a topic on one broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageQueue {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
}

/// A message as consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    /// Written as text (`to_string`, `{}`) where an id is looked up or logged.
    pub msg_id: MessageId,
    pub tags: String,
    pub keys: MessageKeys,
    pub properties: MessageProperties,
    /// A message pulled shares its pull's buffer: holding it holds those bytes (at most
    /// the pull's size), not a copy of its own; so do its keys and properties.
    pub body: Bytes,
    pub reconsume_times: u32,
    pub born_timestamp: i64,
    /// The producer's address as the broker saw it.
    pub born_host: std::net::SocketAddr,
    pub store_timestamp: i64,
    pub commit_log_offset: u64,
}

impl ReceivedMessage {
    /// `v` is a record of `buffer`, which the message's body, keys and properties share.
    fn from_record(v: &RecordView<'_>, broker_name: &str, buffer: &Bytes) -> Self {
        Self {
            topic: v.topic().to_owned(),
            broker_name: broker_name.to_owned(),
            queue_id: v.queue_id(),
            queue_offset: v.queue_offset(),
            msg_id: v.message_id(),
            tags: v.tags().to_owned(),
            keys: MessageKeys::in_section(buffer.slice_ref(v.keys_section())),
            properties: MessageProperties::in_section(buffer.slice_ref(v.properties_section())),
            body: buffer.slice_ref(v.body()),
            reconsume_times: v.reconsume_times(),
            born_timestamp: v.born_timestamp(),
            born_host: v.born_host(),
            store_timestamp: v.store_timestamp(),
            commit_log_offset: v.commit_log_offset(),
        }
    }

    /// Decodes one record as a pull returns it (see [`RawPullOutcome`](crate::RawPullOutcome)),
    /// checking its CRC; `broker_name` is the broker it came from.
    pub fn decode(record: &[u8], broker_name: &str) -> crate::Result<Self> {
        let copy = Bytes::copy_from_slice(record);
        let v = RecordView::parse_verified(&copy)?;
        Ok(Self::from_record(&v, broker_name, &copy))
    }

    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name)
    }

    /// The transaction of a transactional message (property `__transactionId__`), as sent,
    /// as checked back, and on the committed message.
    pub fn transaction_id(&self) -> Option<&str> {
        self.property(weir_protocol::names::property::TRANSACTION_ID)
    }
}

/// Parses a pull or lookup body (records back to back); the messages' bodies share its
/// buffer.
pub(crate) fn decode_records(
    body: &Bytes,
    broker_name: &str,
) -> crate::Result<Vec<ReceivedMessage>> {
    let records = weir_protocol::broker::split_records(body)?;
    // Sized once: a catch-up consumer decodes hundreds of thousands of messages a second,
    // and growing the vector moved each one again.
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let v = RecordView::parse_verified(r)?;
        out.push(ReceivedMessage::from_record(&v, broker_name, body));
    }
    Ok(out)
}

/// Splits a pull or lookup body into its records, checking each one's CRC; the records
/// share the body's buffer.
pub(crate) fn split_verified(body: &Bytes) -> crate::Result<Vec<Bytes>> {
    weir_protocol::broker::split_records(body)?
        .into_iter()
        .map(|r| {
            RecordView::parse_verified(r)?;
            Ok(body.slice_ref(r))
        })
        .collect()
}
