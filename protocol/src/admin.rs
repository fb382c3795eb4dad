//! Operators' broker requests: resetting and deleting a consumer group, the broker's
//! runtime statistics, its live settings, what it knows of a message's delivery, and a
//! summary of every consumer group it knows.

use bincode::de::Decoder;
use bincode::de::read::Reader;
use bincode::error::DecodeError;
use bincode::{Decode, Encode};

use crate::codes::RequestCode;
use crate::rpc::Rpc;

/// Where a reset puts a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ResetTarget {
    /// Each queue's first stored message.
    Earliest,
    /// Each queue's end: everything stored so far counts as consumed.
    Latest,
    /// Each queue's first message stored at or after this time (ms since the epoch);
    /// the queue's end when none is.
    Timestamp(i64),
}

/// Commits, for every queue of `topic` on this broker, the offset `to` names as `group`'s
/// offset. Refused while the group has live members here (their next commit would undo
/// the reset) unless `force`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ResetOffset {
    pub group: String,
    pub topic: String,
    pub to: ResetTarget,
    pub force: bool,
}

impl Rpc for ResetOffset {
    const CODE: RequestCode = RequestCode::ResetOffset;
    type Response = OffsetsReset;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct QueueReset {
    pub queue_id: u32,
    /// The group's offset before (`None`: it had never committed on this queue).
    pub old: Option<u64>,
    pub new: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OffsetsReset {
    /// One per read queue, by queue id.
    pub queues: Vec<QueueReset>,
}

/// Forgets a consumer group on this broker: its committed offsets (on every topic) and its
/// retry topic. Refused while the group has live members here.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DeleteGroup {
    pub group: String,
}

impl Rpc for DeleteGroup {
    const CODE: RequestCode = RequestCode::DeleteGroup;
    type Response = GroupDeleted;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GroupDeleted {
    /// Committed offsets removed (one per topic and queue).
    pub offsets_removed: u32,
    /// Whether the group's retry topic existed here and was deleted.
    pub retry_topic_deleted: bool,
    /// Filter registrations of the group removed (one per topic).
    pub filters_removed: u32,
}

/// The broker's counters and state now.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetBrokerStats;

impl Rpc for GetBrokerStats {
    const CODE: RequestCode = RequestCode::GetBrokerStats;
    type Response = BrokerStats;
}

/// Decoded by hand: the fields after `uptime_ms` came later, and a broker from before them
/// ends its reply there (they decode as `None`). A client from before them cannot read this
/// reply (headers must be used whole).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Default)]
pub struct BrokerStats {
    pub broker_name: String,
    pub broker_id: u64,
    /// Messages stored by producers since the broker started: sends, each message of a
    /// batch, committed transactional messages (the same totals as the metrics endpoint's
    /// `weir_produced_messages_total`).
    pub messages_in: u64,
    /// Their bodies' bytes.
    pub bytes_in: u64,
    /// Messages delivered by pulls since the broker started.
    pub messages_out: u64,
    /// Open client connections.
    pub connections: u64,
    /// Clients known from their heartbeats.
    pub clients: u64,
    /// Used share of the store's disk in parts per million, when measured.
    pub disk_used_ppm: Option<u32>,
    pub topics: u64,
    /// Pulls being held (long polling) now.
    pub held_pulls: u64,
    pub uptime_ms: u64,
    /// The broker's version (its `weir-broker` package version); `None` from a broker
    /// older than this field.
    pub version: Option<String>,
    /// When the broker started, ms since the Unix epoch; `None` from a broker older than
    /// this field.
    pub started_at_ms: Option<i64>,
}

impl BrokerStats {
    /// [`version`](Self::version), or `unknown` from a broker that does not say.
    pub fn version_or_unknown(&self) -> &str {
        self.version.as_deref().unwrap_or("unknown")
    }
}

impl<C> Decode<C> for BrokerStats {
    fn decode<D: Decoder<Context = C>>(d: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            broker_name: Decode::decode(d)?,
            broker_id: Decode::decode(d)?,
            messages_in: Decode::decode(d)?,
            bytes_in: Decode::decode(d)?,
            messages_out: Decode::decode(d)?,
            connections: Decode::decode(d)?,
            clients: Decode::decode(d)?,
            disk_used_ppm: Decode::decode(d)?,
            topics: Decode::decode(d)?,
            held_pulls: Decode::decode(d)?,
            uptime_ms: Decode::decode(d)?,
            version: added_later(d)?,
            started_at_ms: added_later(d)?,
        })
    }
}

bincode::impl_borrow_decode!(BrokerStats);

/// An optional field appended to a reply after its first release: `None` when the reply
/// ends before it (an older peer's). A field that starts but is cut short is an error.
fn added_later<C, T: Decode<C>, D: Decoder<Context = C>>(
    d: &mut D,
) -> Result<Option<T>, DecodeError> {
    if d.reader().peek_read(1).is_some() {
        return Option::<T>::decode(d);
    }
    // At the end of the input (or a reader that cannot look ahead: then an end met
    // before the field's first byte is its absence).
    match Option::<T>::decode(d) {
        Err(DecodeError::UnexpectedEnd { .. }) => Ok(None),
        r => r,
    }
}

/// What this broker knows of one stored message's delivery: each consumer group that
/// committed an offset on the message's queue, whether that offset is past the message,
/// and the group's copies of it (retries, waiting for their delay or stored, and dead
/// letters), found by their `ORIGIN_MESSAGE_ID` in the key index. Bounded work: at most
/// `max_groups` groups (the broker caps it at [`MAX_TRAIL_GROUPS`]), two index lookups
/// each, and one in `%SCHEDULE%`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetMessageTrail {
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    /// The id its copies carry as `ORIGIN_MESSAGE_ID` (the message's own id, or for a copy,
    /// its original's).
    pub origin_msg_id: String,
    pub max_groups: u32,
}

impl Rpc for GetMessageTrail {
    const CODE: RequestCode = RequestCode::GetMessageTrail;
    type Response = MessageTrail;
}

/// Most groups one trail answers for.
pub const MAX_TRAIL_GROUPS: u32 = 100;
/// Most copies of each kind one trail lists per group.
pub const MAX_TRAIL_COPIES: u32 = 16;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct MessageTrail {
    /// By group name.
    pub groups: Vec<GroupTrail>,
    /// Groups with an offset on the queue left out past `max_groups`.
    pub more_groups: u32,
    /// The queue's max offset (the next message's) now.
    pub queue_max_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GroupTrail {
    pub group: String,
    /// The group's committed offset on the message's queue (the next offset it consumes):
    /// past the message's offset means the group is done with it (consumed, dropped by its
    /// filter, or skipped by a reset).
    pub consumer_offset: u64,
    /// Newest first; at most [`MAX_TRAIL_COPIES`] of each kind.
    pub copies: Vec<MessageCopy>,
}

impl GroupTrail {
    /// Whether the group's committed offset is past the message at `queue_offset`.
    pub fn past(&self, queue_offset: u64) -> bool {
        self.consumer_offset > queue_offset
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum CopyKind {
    /// A retry waiting in `%SCHEDULE%` for its delay.
    RetryWaiting,
    /// A retry in the group's `%RETRY%` topic.
    Retry,
    /// A dead letter in the group's `%DLQ%` topic.
    DeadLetter,
}

impl CopyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyKind::RetryWaiting => "retry waiting for its delay",
            CopyKind::Retry => "retry",
            CopyKind::DeadLetter => "dead letter",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MessageCopy {
    pub kind: CopyKind,
    /// The topic it is stored under (`%SCHEDULE%` while a retry waits).
    pub topic: String,
    pub msg_id: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub store_timestamp: i64,
    pub reconsume_times: u32,
    /// A retry: whether the group's committed offset on the retry queue is past it (`None`:
    /// no offset committed there). `None` for the other kinds.
    pub consumed: Option<bool>,
}

/// The consumer groups this broker knows, from its members' heartbeats and from its
/// committed offsets (so a group of pull consumers that only commit, or a broadcasting
/// group, is known too): one request for a whole list, where per-group requests would
/// make a list of 1,000 groups cost 1,000 round trips per broker. Names containing
/// `contains` (all when empty), sorted, at most `limit` (capped at
/// [`MAX_GROUP_SUMMARIES`]) and [`MAX_GROUP_SUMMARIES_BYTES`] of names. The answer's body
/// is a [`GroupSummaries`] (more than a header's 1 MiB).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetGroupSummaries {
    pub contains: String,
    pub limit: u32,
}

impl Rpc for GetGroupSummaries {
    const CODE: RequestCode = RequestCode::GetGroupSummaries;
    type Response = ();
}

/// Most groups one [`GetGroupSummaries`] answers with.
pub const MAX_GROUP_SUMMARIES: u32 = 10_000;
/// Most member client ids one [`GroupSummary`] lists (`members` counts them all).
pub const MAX_SUMMARY_MEMBER_IDS: usize = 64;
/// Most subscribed topics one [`GroupSummary`] lists (the first, sorted).
pub const MAX_SUMMARY_TOPICS: usize = 64;
/// Bytes of names one [`GroupSummaries`] answer carries at most, far below a frame's limit
/// whatever its groups hold; the groups past it count in `more`.
pub const MAX_GROUP_SUMMARIES_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct GroupSummaries {
    /// By group name.
    pub groups: Vec<GroupSummary>,
    /// Matching groups left out past the limit (or past [`MAX_GROUP_SUMMARIES_BYTES`]).
    pub more: u32,
}

impl GroupSummaries {
    pub fn encode(&self) -> Result<bytes::Bytes, crate::ProtocolError> {
        crate::rpc::encode_body(self, "group summaries")
    }
    pub fn decode(body: &[u8]) -> Result<Self, crate::ProtocolError> {
        crate::rpc::decode_body(body, "group summaries")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GroupSummary {
    pub group: String,
    /// As its live members' heartbeats say; `None` with no live member here.
    pub model: Option<crate::broker::MessageModel>,
    /// Live members here.
    pub members: u32,
    /// The first [`MAX_SUMMARY_MEMBER_IDS`] of their client ids, sorted.
    pub member_ids: Vec<String>,
    /// Topics its members subscribe to, sorted (retry topics included), the first
    /// [`MAX_SUMMARY_TOPICS`].
    pub subscriptions: Vec<String>,
    /// Queues of this broker the group committed an offset on.
    pub queues: u32,
    /// Over those queues: messages stored past the group's offset.
    pub lag: u64,
}

/// The broker's settings that can change while it runs, by name, with their values.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetBrokerConfig;

impl Rpc for GetBrokerConfig {
    const CODE: RequestCode = RequestCode::GetBrokerConfig;
    type Response = BrokerSettings;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
pub struct BrokerSettings {
    /// (name, value as text), sorted by name.
    pub settings: Vec<(String, String)>,
}

/// Changes one live setting (not persisted: the configuration file still says what a
/// restart uses). Refused for settings that cannot change live, naming those that can.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SetBrokerConfig {
    pub name: String,
    pub value: String,
}

impl Rpc for SetBrokerConfig {
    const CODE: RequestCode = RequestCode::SetBrokerConfig;
    type Response = BrokerSettings;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{decode_header, encode_header};

    /// `BrokerStats` as brokers before `version` encoded it.
    #[derive(Encode)]
    struct OldStats {
        broker_name: String,
        broker_id: u64,
        messages_in: u64,
        bytes_in: u64,
        messages_out: u64,
        connections: u64,
        clients: u64,
        disk_used_ppm: Option<u32>,
        topics: u64,
        held_pulls: u64,
        uptime_ms: u64,
    }

    #[test]
    fn broker_stats_of_an_older_broker_decode_without_a_version() {
        let old = OldStats {
            broker_name: "b".into(),
            broker_id: 1,
            messages_in: 2,
            bytes_in: 3,
            messages_out: 4,
            connections: 5,
            clients: 6,
            disk_used_ppm: Some(7),
            topics: 8,
            held_pulls: 9,
            uptime_ms: 10,
        };
        let bytes = encode_header(&old, "old stats").unwrap();
        let s: BrokerStats = decode_header(&bytes, "stats").unwrap();
        assert_eq!((s.broker_name.as_str(), s.uptime_ms), ("b", 10));
        assert_eq!(s.disk_used_ppm, Some(7));
        assert_eq!((s.version, s.started_at_ms), (None, None));
        assert_eq!(BrokerStats::default().version_or_unknown(), "unknown");

        let new = BrokerStats {
            version: Some("0.1.0".into()),
            started_at_ms: Some(1_700_000_000_000),
            ..s
        };
        let bytes = encode_header(&new, "stats").unwrap();
        assert_eq!(decode_header::<BrokerStats>(&bytes, "stats").unwrap(), new);
        assert_eq!(new.version_or_unknown(), "0.1.0");
        // Cut inside the new fields: an error, not a missing field.
        for cut in 1..4 {
            let short = &bytes[..bytes.len() - cut];
            assert!(
                decode_header::<BrokerStats>(short, "stats").is_err(),
                "cut {cut}"
            );
        }
    }
}
