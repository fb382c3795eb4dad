//! Broker requests: send, pull, offsets, topics, lookups, client heartbeats.
//!
//! Over ~600 lines on purpose: one file for the broker family's request and response
//! types, so the wire contract reads in one place.

use bincode::{Decode, Encode};

use crate::codes::RequestCode;
use crate::route::TopicConfig;
use crate::rpc::Rpc;

/// One message; the body travels raw as the frame body.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SendMessage {
    pub producer_group: String,
    pub topic: String,
    pub queue_id: u32,
    /// Empty for none.
    pub tags: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub flag: u32,
    pub born_timestamp: i64,
    pub sys_flag: u32,
    pub reconsume_times: u32,
    /// For a send to a group's retry topic (a consumer re-sending a message it could not
    /// process, as RocketMQ's clients do when a send-back fails): from this many
    /// deliveries on, the message goes to the group's dead-letter topic instead.
    pub max_reconsume_times: Option<u32>,
}

impl Rpc for SendMessage {
    const CODE: RequestCode = RequestCode::SendMessage;
    type Response = SendResult;
}

/// How durable a stored message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum SendStatus {
    /// Stored (and, with sync flush, on disk).
    Ok,
    /// Stored, but the sync flush did not finish in time.
    FlushDiskTimeout,
    /// Stored on a sync master, but no slave confirmed it in time.
    FlushSlaveTimeout,
    /// Stored on a sync master, but no slave is connected to confirm it.
    SlaveNotAvailable,
}

impl SendStatus {
    /// RocketMQ's name for the status (`SEND_OK`, `FLUSH_DISK_TIMEOUT`, …), as tools print it.
    pub fn as_str(self) -> &'static str {
        match self {
            SendStatus::Ok => "SEND_OK",
            SendStatus::FlushDiskTimeout => "FLUSH_DISK_TIMEOUT",
            SendStatus::FlushSlaveTimeout => "FLUSH_SLAVE_TIMEOUT",
            SendStatus::SlaveNotAvailable => "SLAVE_NOT_AVAILABLE",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SendResult {
    pub status: SendStatus,
    pub msg_id: String,
    pub queue_id: u32,
    pub queue_offset: u64,
}

/// Several messages for one queue; bodies concatenated in the frame body, in order.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SendBatch {
    pub producer_group: String,
    pub topic: String,
    pub queue_id: u32,
    pub messages: Vec<BatchEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct BatchEntry {
    pub tags: String,
    pub keys: Vec<String>,
    pub properties: Vec<(String, String)>,
    pub flag: u32,
    pub born_timestamp: i64,
    pub body_len: u32,
}

impl Rpc for SendBatch {
    const CODE: RequestCode = RequestCode::SendBatch;
    type Response = SendBatchResult;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SendBatchResult {
    pub results: Vec<SendResult>,
}

/// Pull from one queue. An empty result is held up to `suspend_ms` (long polling).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PullMessage {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
    pub max_msgs: u32,
    /// `*` (or empty) for everything, or `TagA || TagB`.
    pub expression: String,
    /// 0 answers at once.
    pub suspend_ms: u64,
    /// Committed along with the pull (the consumer's progress on this queue).
    pub commit_offset: Option<u64>,
}

impl Rpc for PullMessage {
    const CODE: RequestCode = RequestCode::PullMessage;
    type Response = PullResult;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum PullStatus {
    /// Messages in the body.
    Found,
    /// Nothing new (after holding the pull, if asked).
    NoNewMessage,
    /// Entries were examined, none matched; resume at `next_offset`.
    NoMatch,
    /// The offset is outside the queue (e.g. removed by retention); resume at `next_offset`.
    OffsetMoved,
}

/// The body holds the stored records verbatim, one after another (see `record`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PullResult {
    pub status: PullStatus,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    /// The broker suggests pulling this queue from a slave: the last message returned lies
    /// more than the broker's `slave_read_behind_bytes` before the end of its log (no
    /// longer likely in memory; RocketMQ's `suggestPullingFromSlave`). A master says so only
    /// while a slave is connected to it; a slave says so by the same measure, and a client
    /// reading from a slave goes back to the master when it no longer does.
    pub suggest_slave: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct QueryConsumerOffset {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
}

impl Rpc for QueryConsumerOffset {
    const CODE: RequestCode = RequestCode::QueryConsumerOffset;
    type Response = ConsumerOffset;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ConsumerOffset {
    /// `None`: the group never committed on this queue.
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UpdateConsumerOffset {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub offset: u64,
}

impl Rpc for UpdateConsumerOffset {
    const CODE: RequestCode = RequestCode::UpdateConsumerOffset;
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetQueueOffsets {
    pub topic: String,
    pub queue_id: u32,
}

impl Rpc for GetQueueOffsets {
    const CODE: RequestCode = RequestCode::GetQueueOffsets;
    type Response = QueueOffsets;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct QueueOffsets {
    pub min: u64,
    /// The offset the next message will get.
    pub max: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SearchOffsetByTimestamp {
    pub topic: String,
    pub queue_id: u32,
    /// ms since the epoch.
    pub timestamp: i64,
}

impl Rpc for SearchOffsetByTimestamp {
    const CODE: RequestCode = RequestCode::SearchOffsetByTimestamp;
    type Response = OffsetAnswer;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct OffsetAnswer {
    pub offset: u64,
}

/// Creates a topic, or updates its queue counts and permission.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CreateTopic {
    pub topic: TopicConfig,
}

impl Rpc for CreateTopic {
    const CODE: RequestCode = RequestCode::CreateTopic;
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DeleteTopic {
    pub topic: String,
}

impl Rpc for DeleteTopic {
    const CODE: RequestCode = RequestCode::DeleteTopic;
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetTopicStats {
    pub topic: String,
}

impl Rpc for GetTopicStats {
    const CODE: RequestCode = RequestCode::GetTopicStats;
    type Response = TopicStats;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TopicStats {
    pub config: TopicConfig,
    /// One per read queue, by queue id.
    pub queues: Vec<QueueOffsets>,
}

/// Messages of a topic by key, newest first; records in the body.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct QueryMessageByKey {
    pub topic: String,
    pub key: String,
    pub max: u32,
}

impl Rpc for QueryMessageByKey {
    const CODE: RequestCode = RequestCode::QueryMessage;
    type Response = RecordCount;
}

/// The message with this id; its record in the body.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ViewMessageById {
    pub msg_id: String,
}

impl Rpc for ViewMessageById {
    const CODE: RequestCode = RequestCode::ViewMessageById;
    type Response = RecordCount;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct RecordCount {
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum MessageModel {
    Clustering,
    Broadcasting,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ConsumerData {
    pub group: String,
    pub model: MessageModel,
    /// (topic, expression).
    pub subscriptions: Vec<(String, String)>,
}

/// A client says it is alive, and what it produces and consumes; every 30 s.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Heartbeat {
    pub client_id: String,
    pub producer_groups: Vec<String>,
    pub consumers: Vec<ConsumerData>,
}

impl Rpc for Heartbeat {
    const CODE: RequestCode = RequestCode::Heartbeat;
    type Response = ();
}

/// Forgets a client: in every group when neither group is named, else only in the named
/// ones (one producer or consumer of a client instance that goes on serving others).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UnregisterClient {
    pub client_id: String,
    pub producer_group: Option<String>,
    pub consumer_group: Option<String>,
}

impl UnregisterClient {
    /// The whole client, in every group.
    pub fn whole(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            producer_group: None,
            consumer_group: None,
        }
    }
}

impl Rpc for UnregisterClient {
    const CODE: RequestCode = RequestCode::UnregisterClient;
    type Response = ();
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetConsumerList {
    pub group: String,
}

impl Rpc for GetConsumerList {
    const CODE: RequestCode = RequestCode::GetConsumerList;
    type Response = ConsumerList;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ConsumerList {
    /// Sorted.
    pub client_ids: Vec<String>,
}

/// Everything the broker knows of a group's members (`weir group members`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetConsumerConnections {
    pub group: String,
}

impl Rpc for GetConsumerConnections {
    const CODE: RequestCode = RequestCode::GetConsumerConnections;
    type Response = ConsumerConnections;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ConsumerConnections {
    /// Sorted by client id.
    pub members: Vec<ConsumerMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ConsumerMember {
    pub client_id: String,
    /// The client's address as the broker sees it.
    pub addr: String,
    pub model: MessageModel,
    /// (topic, expression).
    pub subscriptions: Vec<(String, String)>,
    /// Since the last heartbeat.
    pub last_heartbeat_ms_ago: u64,
}

/// Broker to client, one way: the members of `group` changed; rebalance now.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NotifyConsumerIdsChanged {
    pub group: String,
}

impl Rpc for NotifyConsumerIdsChanged {
    const CODE: RequestCode = RequestCode::NotifyConsumerIdsChanged;
    type Response = ();
}

/// A message the consumer could not process, handed back: the broker stores a copy for
/// the group's retry topic (after a delay) or, past `max_reconsume_times`, for its
/// dead-letter topic. The original stays where it is.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ConsumerSendMsgBack {
    pub group: String,
    /// The message's place in this broker's commit log (as pulled).
    pub commit_log_offset: u64,
    /// 0: the broker's choice, `3 + reconsume_times`; N > 0: delay level N; -1: straight
    /// to the dead-letter topic.
    pub delay_level: i32,
    /// Deliveries after the first before the message goes to the dead-letter topic.
    pub max_reconsume_times: u32,
}

impl Rpc for ConsumerSendMsgBack {
    const CODE: RequestCode = RequestCode::ConsumerSendMsgBack;
    type Response = SentBack;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SentBack {
    /// `%RETRY%<group>` or `%DLQ%<group>`.
    pub topic: String,
    pub msg_id: String,
    /// The copy's reconsume count (the original's plus one).
    pub reconsume_times: u32,
}

/// A queue of a topic on the broker asked; locks are per broker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct QueueRef {
    pub topic: String,
    pub queue_id: u32,
}

/// An orderly consumer takes (or renews) exclusive leases on queues for its group.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LockBatchMq {
    pub group: String,
    pub client_id: String,
    pub queues: Vec<QueueRef>,
}

impl Rpc for LockBatchMq {
    const CODE: RequestCode = RequestCode::LockBatchMq;
    type Response = LockedQueues;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LockedQueues {
    /// The asked queues this client now holds; the others are held by another member.
    pub queues: Vec<QueueRef>,
}

/// Gives leases back (a queue handed to another member, or shutdown).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct UnlockBatchMq {
    pub group: String,
    pub client_id: String,
    pub queues: Vec<QueueRef>,
}

impl Rpc for UnlockBatchMq {
    const CODE: RequestCode = RequestCode::UnlockBatchMq;
    type Response = ();
}

/// A group's progress on this broker: every queue it committed an offset on.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetConsumeStats {
    pub group: String,
}

impl Rpc for GetConsumeStats {
    const CODE: RequestCode = RequestCode::GetConsumeStats;
    type Response = ConsumeStats;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ConsumeStats {
    /// Sorted by (topic, queue id).
    pub queues: Vec<QueueProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct QueueProgress {
    pub topic: String,
    pub queue_id: u32,
    /// The group's committed offset.
    pub consumer_offset: u64,
    /// The queue's max offset (the next message's).
    pub broker_offset: u64,
}

/// Splits a body of concatenated records.
pub fn split_records(mut body: &[u8]) -> Result<Vec<&[u8]>, crate::RecordError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 4 {
            return Err(crate::RecordError::Malformed(
                "trailing bytes after the last record".into(),
            ));
        }
        let len = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if len < 4 || len > body.len() {
            return Err(crate::RecordError::Malformed(format!(
                "record length {len} does not fit the {} bytes left",
                body.len()
            )));
        }
        out.push(&body[..len]);
        body = &body[len..];
    }
    Ok(out)
}

/// A producer's decision on a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum TransactionDecision {
    Commit,
    Rollback,
    /// Not known yet: the broker asks again later.
    Unknown,
}

/// The producer's decision on its half message (RocketMQ's END_TRANSACTION): commit makes
/// the message visible on its topic, rollback discards it. Sent one way by a producer (a
/// lost one is covered by the check-back), or as a call.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct EndTransaction {
    pub producer_group: String,
    pub transaction_id: String,
    /// Where the half message is (from its send result or the check-back).
    pub commit_log_offset: u64,
    pub decision: TransactionDecision,
    /// Whether this answers a check-back.
    pub from_check: bool,
}

impl Rpc for EndTransaction {
    const CODE: RequestCode = RequestCode::EndTransaction;
    type Response = ();
}

/// Broker → a live producer of the half message's group, one way: what became of this
/// transaction? The body is the half message's record. Answered with [`EndTransaction`]
/// (`from_check`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CheckTransactionState {
    pub producer_group: String,
    pub transaction_id: String,
    pub commit_log_offset: u64,
    /// Checks so far, this one included.
    pub check_times: u32,
}

impl Rpc for CheckTransactionState {
    const CODE: RequestCode = RequestCode::CheckTransactionState;
    type Response = ();
}

/// Which transactions to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum TransactionState {
    /// Half messages waiting for a decision.
    Pending,
    /// Half messages given up on after too many checks (or too old); resolved by hand.
    Dead,
}

/// Lists transactions of a state, oldest first, at most `max`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ListTransactions {
    pub state: TransactionState,
    pub producer_group: Option<String>,
    pub max: u32,
}

impl Rpc for ListTransactions {
    const CODE: RequestCode = RequestCode::ListTransactions;
    type Response = TransactionList;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TransactionInfo {
    pub transaction_id: String,
    pub producer_group: String,
    /// Where the message goes once committed.
    pub topic: String,
    pub queue_id: u32,
    /// Where the half message (or, when dead, its dead copy) is.
    pub commit_log_offset: u64,
    pub msg_id: String,
    /// When the transaction's first half message was stored (ms since the epoch).
    pub first_stored_ms: i64,
    pub check_times: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TransactionList {
    pub transactions: Vec<TransactionInfo>,
    /// More matched than `max`.
    pub truncated: bool,
}

/// Decides a dead transaction by hand (`weir transaction resolve`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ResolveTransaction {
    pub transaction_id: String,
    pub decision: TransactionDecision,
}

impl Rpc for ResolveTransaction {
    const CODE: RequestCode = RequestCode::ResolveTransaction;
    type Response = TransactionResolved;
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TransactionResolved {
    /// The committed message's id, when committed.
    pub msg_id: Option<String>,
}
