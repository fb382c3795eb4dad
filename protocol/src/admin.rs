//! Operators' broker requests: resetting and deleting a consumer group, the broker's
//! runtime statistics, and its live settings.

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

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Default)]
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
