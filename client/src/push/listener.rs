//! What an application gives a push consumer: a listener, concurrent or orderly, and the
//! statuses and contexts its calls see.

use super::*;

/// A message as a listener gets it. A message from the group's retry topic shows the topic
/// it was first sent to, and how often it was consumed before (`reconsume_times`).
pub type MessageExt = ReceivedMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeConcurrentlyStatus {
    ConsumeSuccess,
    /// Deliver the batch again later (through the retry topic, after a delay).
    ReconsumeLater,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeOrderlyStatus {
    Success,
    /// Consume this queue's messages again, from the same one, after a pause.
    SuspendCurrentQueueAMoment,
}

#[derive(Debug, Clone)]
pub struct ConsumeConcurrentlyContext {
    pub queue: MessageQueue,
    /// For `ReconsumeLater`: 0 lets the broker choose (`3 + reconsume_times`); N > 0 is delay
    /// level N; -1 sends the batch straight to the dead-letter topic.
    pub delay_level_when_next_consume: i32,
    pub(super) stop: StopHandle,
}

impl ConsumeConcurrentlyContext {
    /// Stops the consumer handing out messages (see [`StopHandle`]); a batch answered
    /// `ReconsumeLater` from now on stays uncommitted instead of being sent back.
    pub fn stop_consumer(&self) {
        self.stop.stop();
    }
}

#[derive(Debug, Clone)]
pub struct ConsumeOrderlyContext {
    pub queue: MessageQueue,
    /// The pause after `SuspendCurrentQueueAMoment` (default: the consumer's
    /// `suspend_current_queue_time`).
    pub suspend_current_queue_time: Duration,
    pub(super) stop: StopHandle,
}

impl ConsumeOrderlyContext {
    /// Stops the consumer handing out messages (see [`StopHandle`]).
    pub fn stop_consumer(&self) {
        self.stop.stop();
    }
}

/// Consumes batches of messages from any queue, on several threads at once.
pub trait MessageListenerConcurrently: Send + Sync + 'static {
    fn consume(
        &self,
        msgs: &[MessageExt],
        ctx: &mut ConsumeConcurrentlyContext,
    ) -> ConsumeConcurrentlyStatus;
}

impl<F> MessageListenerConcurrently for F
where
    F: Fn(&[MessageExt], &mut ConsumeConcurrentlyContext) -> ConsumeConcurrentlyStatus
        + Send
        + Sync
        + 'static,
{
    fn consume(
        &self,
        msgs: &[MessageExt],
        ctx: &mut ConsumeConcurrentlyContext,
    ) -> ConsumeConcurrentlyStatus {
        self(msgs, ctx)
    }
}

/// Consumes each queue's messages in queue order, one batch of a queue at a time.
pub trait MessageListenerOrderly: Send + Sync + 'static {
    fn consume(&self, msgs: &[MessageExt], ctx: &mut ConsumeOrderlyContext)
    -> ConsumeOrderlyStatus;
}

impl<F> MessageListenerOrderly for F
where
    F: Fn(&[MessageExt], &mut ConsumeOrderlyContext) -> ConsumeOrderlyStatus
        + Send
        + Sync
        + 'static,
{
    fn consume(
        &self,
        msgs: &[MessageExt],
        ctx: &mut ConsumeOrderlyContext,
    ) -> ConsumeOrderlyStatus {
        self(msgs, ctx)
    }
}

#[derive(Clone)]
pub enum Listener {
    Concurrently(Arc<dyn MessageListenerConcurrently>),
    Orderly(Arc<dyn MessageListenerOrderly>),
}

impl Listener {
    pub fn concurrently(l: impl MessageListenerConcurrently) -> Self {
        Listener::Concurrently(Arc::new(l))
    }
    pub fn orderly(l: impl MessageListenerOrderly) -> Self {
        Listener::Orderly(Arc::new(l))
    }
    pub(super) fn is_orderly(&self) -> bool {
        matches!(self, Listener::Orderly(_))
    }
}
