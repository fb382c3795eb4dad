//! A push consumer's settings, with RocketMQ's names and defaults.

use super::*;

/// Where a group starts on a queue it has no offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeFrom {
    /// New messages only.
    LastOffset,
    /// Everything still stored.
    FirstOffset,
    /// Messages stored at or after this time (ms since the epoch).
    Timestamp(i64),
}

#[derive(Debug, Clone)]
pub struct PushConsumerConfig {
    pub group: String,
    pub model: MessageModel,
    /// Where the group starts on a queue it has no offset for (default `LastOffset`; the
    /// retry topic always starts at its first message).
    pub consume_from: ConsumeFrom,
    /// Listener threads (concurrent and orderly): started at once / at most (20 / 20).
    pub consume_thread_min: usize,
    pub consume_thread_max: usize,
    /// Messages per listener call (default 1).
    pub consume_message_batch_max_size: usize,
    /// Messages per pull (default 32).
    pub pull_batch_size: u32,
    /// A queue is not pulled while this many of its messages are in flight (default 1000)…
    pub pull_threshold_for_queue: usize,
    /// …or this many body bytes (default 100 MiB).
    pub pull_threshold_size_for_queue: usize,
    /// Deliveries after the first before a message goes to the dead-letter topic (16).
    pub max_reconsume_times: u32,
    /// Orderly: the pause before a suspended queue is consumed again (default 1 s).
    pub suspend_current_queue_time: Duration,
    /// How often queues are reallocated without being told (default 20 s).
    pub rebalance_interval: Duration,
    /// How often progress is written (default 5 s); also on release and shutdown.
    pub persist_offset_interval: Duration,
    /// Orderly: how often queue leases are renewed (default 20 s; the broker's last 60 s).
    pub lock_renew_interval: Duration,
    /// How long an empty pull waits at the broker for a message (default 15 s).
    pub long_poll: Duration,
    /// Broadcasting: this member's name; its offsets are kept under
    /// `offset_store_dir/<instance_name>/<group>.offsets` (default `DEFAULT`).
    pub instance_name: String,
    /// Broadcasting: where offsets are kept (default `$WEIR_OFFSET_DIR`, else
    /// `~/.weir/offsets`).
    pub offset_store_dir: PathBuf,
    /// Called when a pull fails because the group's filter for the topic failed (default:
    /// [`OnFilterFailure::warn`], a rate-limited warning). The queue is pulled again after
    /// a pause growing from 1 s to 30 s while the failures go on.
    pub on_filter_failure: OnFilterFailure,
    /// Called when a pull fails otherwise: the broker busy (`SystemBusy`), unreachable,
    /// or refusing it (default: [`OnPullError::warn`], a rate-limited warning). The queue
    /// is pulled again after a second.
    pub on_pull_error: OnPullError,
}

impl PushConsumerConfig {
    pub fn new(group: impl Into<String>) -> Self {
        let offset_store_dir = std::env::var_os("WEIR_OFFSET_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".weir/offsets")))
            .unwrap_or_else(|| PathBuf::from(".weir/offsets"));
        Self {
            group: group.into(),
            model: MessageModel::Clustering,
            consume_from: ConsumeFrom::LastOffset,
            consume_thread_min: 20,
            consume_thread_max: 20,
            consume_message_batch_max_size: 1,
            pull_batch_size: 32,
            pull_threshold_for_queue: 1000,
            pull_threshold_size_for_queue: 100 << 20,
            max_reconsume_times: 16,
            suspend_current_queue_time: Duration::from_secs(1),
            rebalance_interval: Duration::from_secs(20),
            persist_offset_interval: Duration::from_secs(5),
            lock_renew_interval: Duration::from_secs(20),
            long_poll: Duration::from_secs(15),
            instance_name: "DEFAULT".into(),
            offset_store_dir,
            on_filter_failure: OnFilterFailure::default(),
            on_pull_error: OnPullError::default(),
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ClientError::Invalid(m));
        if self.group.is_empty() {
            return bad("consumer group name is empty".into());
        }
        if self.consume_thread_min == 0 || self.consume_thread_max < self.consume_thread_min {
            return bad(format!(
                "consume threads: min {} must be at least 1 and at most max {}",
                self.consume_thread_min, self.consume_thread_max
            ));
        }
        if self.consume_thread_max > 1000 {
            return bad("consume_thread_max must be at most 1000".into());
        }
        if !(1..=1024).contains(&self.consume_message_batch_max_size) {
            return bad("consume_message_batch_max_size must be within 1..=1024".into());
        }
        if !(1..=1024).contains(&self.pull_batch_size) {
            return bad("pull_batch_size must be within 1..=1024".into());
        }
        if self.pull_threshold_for_queue == 0 || self.pull_threshold_size_for_queue == 0 {
            return bad("pull thresholds must be greater than 0".into());
        }
        for (name, d) in [
            ("rebalance_interval", self.rebalance_interval),
            ("persist_offset_interval", self.persist_offset_interval),
            ("lock_renew_interval", self.lock_renew_interval),
        ] {
            if d.is_zero() {
                return bad(format!("{name} must be greater than 0"));
            }
        }
        if self.long_poll > Duration::from_secs(60) {
            return bad("long_poll must be at most 60 s (the broker's limit)".into());
        }
        if self.instance_name.is_empty() || self.instance_name.contains(['/', '\\']) {
            return bad(format!(
                "instance_name {:?} must be non-empty and name no folder",
                self.instance_name
            ));
        }
        Ok(())
    }
}
