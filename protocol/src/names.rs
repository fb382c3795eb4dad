//! Names the broker and clients agree on: system topics and the message properties that
//! carry delays, retries and their origins.

/// Prefix of a consumer group's retry topic: `%RETRY%<group>`.
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of a consumer group's dead-letter topic: `%DLQ%<group>`.
pub const DLQ_PREFIX: &str = "%DLQ%";
/// Where delayed messages wait: queue `level - 1` holds the messages of delay level
/// `level`, in arrival order (so in due order: one level, one delay).
pub const SCHEDULE_TOPIC: &str = "%SCHEDULE%";

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
    /// On send: deliver after delay level N (1-based; the broker's `delay_levels`).
    pub const DELAY_LEVEL: &str = "DELAY";
    /// On a message waiting in [`SCHEDULE_TOPIC`](super::SCHEDULE_TOPIC): the topic and
    /// queue it is delivered to when due.
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    pub const REAL_QUEUE_ID: &str = "REAL_QID";
    /// On a retry or dead-letter message: the topic it was first sent to.
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// On a retry or dead-letter message: the id of the message as first stored.
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
}
