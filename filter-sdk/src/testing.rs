//! Runs a filter natively, the way the broker would, for unit tests.
//!
//! Invariant: a [`TestMessage`] reaches the filter encoded exactly as the broker encodes
//! attributes, and through the same batch glue as in the component.

use super::*;

/// A message to feed a filter in a test.
#[derive(Debug, Clone, Default)]
pub struct TestMessage {
    pub queue_offset: u64,
    pub born_timestamp: i64,
    pub store_timestamp: i64,
    pub reconsume_count: u32,
    pub tags: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl TestMessage {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn tags(mut self, tags: impl Into<String>) -> Self {
        self.tags = tags.into();
        self
    }
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
    pub fn queue_offset(mut self, offset: u64) -> Self {
        self.queue_offset = offset;
        self
    }
    /// Milliseconds since the Unix epoch.
    pub fn born_timestamp(mut self, ms: i64) -> Self {
        self.born_timestamp = ms;
        self
    }
    /// Milliseconds since the Unix epoch.
    pub fn store_timestamp(mut self, ms: i64) -> Self {
        self.store_timestamp = ms;
        self
    }
    pub fn reconsume_count(mut self, n: u32) -> Self {
        self.reconsume_count = n;
        self
    }

    /// The attribute bytes the broker would send for this message.
    pub fn attributes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, self.tags.as_bytes(), 2);
        let mut keys = Vec::new();
        for k in &self.keys {
            put(&mut keys, k.as_bytes(), 2);
        }
        put(&mut out, &keys, 4);
        let mut props = Vec::new();
        for (k, v) in &self.properties {
            put(&mut props, k.as_bytes(), 2);
            put(&mut props, v.as_bytes(), 4);
        }
        put(&mut out, &props, 4);
        out
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8], width: usize) {
    let len = bytes.len() as u32;
    out.extend_from_slice(&len.to_le_bytes()[..width]);
    out.extend_from_slice(bytes);
}

/// Builds the filter from `params` and decides `messages` as one batch (topic `test`,
/// queue 0, group `test`). Bodies are passed only if the filter asks for them.
pub fn run<F: Filter>(
    params: &[(&str, &str)],
    messages: &[TestMessage],
) -> Result<Vec<bool>, String> {
    let params = Params::new(
        params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    let mut filter = F::init(&params).map_err(|e| e.0)?;
    // Packed as the broker packs them (`wit/filter.wit`, `packed-filter.filter`).
    let (mut entries, mut data) = (Vec::new(), Vec::new());
    for m in messages {
        let attrs = m.attributes();
        let attributes_at = data.len() as u32;
        data.extend_from_slice(&attrs);
        let (mut body_at, mut body_len) = (0u32, 0u32);
        if F::NEEDS_BODY {
            body_at = data.len() as u32;
            body_len = m.body.len() as u32;
            data.extend_from_slice(&m.body);
        }
        entries.extend_from_slice(&m.queue_offset.to_le_bytes());
        entries.extend_from_slice(&m.born_timestamp.to_le_bytes());
        entries.extend_from_slice(&m.store_timestamp.to_le_bytes());
        entries.extend_from_slice(&m.reconsume_count.to_le_bytes());
        entries.extend_from_slice(&attributes_at.to_le_bytes());
        entries.extend_from_slice(&(attrs.len() as u32).to_le_bytes());
        entries.extend_from_slice(&body_at.to_le_bytes());
        entries.extend_from_slice(&body_len.to_le_bytes());
    }
    debug_assert_eq!(entries.len(), messages.len() * __private::ENTRY_BYTES);
    let ctx = wit::BatchContext {
        topic: "test".into(),
        queue_id: 0,
        consumer_group: "test".into(),
    };
    __private::run_batch(&mut filter, ctx, &entries, &data).map_err(|e| match e {
        wit::FilterError::BadParams(m) | wit::FilterError::Failed(m) => m,
    })
}
