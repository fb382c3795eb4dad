//! Names the broker and clients agree on: system topics and the message properties that
//! carry delays, retries and their origins.

/// Prefix of a consumer group's retry topic: `%RETRY%<group>`.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic: `%DLQ%<group>`.
pub const DLQ_PREFIX: &str = "%DLQ%";
/// Where delayed messages wait: queue `level - 1` holds the messages of delay level
/// `level`, in arrival order (so in due order: one level, one delay).
pub const SCHEDULE_TOPIC: &str = "%SCHEDULE%";

/// Where half (prepared) transactional messages wait for their producer's decision, as
/// RocketMQ names it: queue 0, in arrival order.
pub const TRANS_HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// The decisions on half messages (commit, rollback, dead), one record each, keyed by the
/// transaction id: queue 0.
pub const TRANS_OP_TOPIC: &str = "RMQ_SYS_TRANS_OP_HALF_TOPIC";
/// Half messages checked back too often (or too old) without a decision: queue 0.
pub const TRANS_DEAD_TOPIC: &str = "TRANS_CHECK_MAX_TIME_TOPIC";

/// The route RocketMQ producers copy for a topic that does not exist yet
/// (`TopicValidator.AUTO_CREATE_TOPIC_KEY_TOPIC`): brokers that create topics on first
/// send register it (with RocketMQ's clients connected), so those producers can send to
/// new topics. Never a topic messages are stored in.
pub const AUTO_CREATE_TOPIC_KEY: &str = "TBW102";

/// Whether `topic` is the broker's own, not a client's: `%`-prefixed topics and RocketMQ's
/// system topics. Clients neither send to them nor create them.
pub fn is_system_topic(topic: &str) -> bool {
    topic.starts_with('%')
        || topic.starts_with("RMQ_SYS_")
        || topic == TRANS_DEAD_TOPIC
        || topic == AUTO_CREATE_TOPIC_KEY
}

/// The retry topic of `group`.
pub fn retry_topic(group: &str) -> String {
    format!("{RETRY_PREFIX}{group}")
}

/// The dead-letter topic of `group`.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// Message properties with a meaning to the broker or the client.
pub mod property {
    /// A RocketMQ producer's own id of the message: indexed like a key, so the message
    /// can be looked up by it (RocketMQ's `viewMessage(topic, msgId)`).
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    /// On send: deliver after delay level N (1-based; the broker's `delay_levels`).
    pub const DELAY_LEVEL: &str = "DELAY";
    /// On a message waiting in [`SCHEDULE_TOPIC`](super::SCHEDULE_TOPIC): the topic and
    /// queue it is delivered to when due.
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    pub const REAL_QUEUE_ID: &str = "REAL_QID";
    /// On a retry or dead-letter message: the topic it was first sent to.
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// On a retry or dead-letter message: the id of the message as first stored. Indexed
    /// like a key, so a message's copies in its groups' `%RETRY%` and `%DLQ%` topics (and
    /// `%SCHEDULE%`, while a retry waits) are found by its id.
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    /// The properties a broker indexes like keys (their values, under the record's topic).
    pub const INDEXED: [&str; 2] = [UNIQ_KEY, ORIGIN_MESSAGE_ID];
    /// On send: `true` makes the message a half message of a transaction (only the
    /// transactional send sets it).
    pub const TRANSACTION_PREPARED: &str = "TRAN_MSG";
    /// On a half message: the producer group whose producers decide it (and are asked).
    pub const PRODUCER_GROUP: &str = "PGROUP";
    /// The transaction's id: set by the producer, else the half message's id. Kept on the
    /// committed message.
    pub const TRANSACTION_ID: &str = "__transactionId__";
    /// On a half message: how often its producer group was asked about it so far.
    pub const TRANSACTION_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
    /// On a re-stored half message: the client id last asked about it (the next check goes
    /// to another producer of the group when there is one).
    pub const TRANSACTION_CHECKED_BY: &str = "TRANSACTION_CHECKED_BY";
    /// On a re-stored half message: when the first half was stored (ms), for its age.
    pub const TRANSACTION_FIRST_STORED: &str = "TRANSACTION_FIRST_STORED";
    /// On a re-stored half message and a dead copy: the commit log offset of the
    /// transaction's first half, which is what identifies the transaction (its id is the
    /// producer's, and producers may use one twice).
    pub const TRANSACTION_HALF_OFFSET: &str = "TRANSACTION_HALF_OFFSET";
}
