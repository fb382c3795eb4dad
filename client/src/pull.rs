//! The pull consumer: the application decides which queue, which offset, when.

use std::time::Duration;

use bytes::Bytes;
use weir_protocol::broker::{
    GetQueueOffsets, MessageModel, PullMessage, PullResult, PullStatus, QueryConsumerOffset,
    QueueOffsets, SearchOffsetByTimestamp, UpdateConsumerOffset,
};

use crate::message::{decode_records, split_verified};
use crate::{ClientError, ClientInstance, MessageQueue, ReceivedMessage, Result};

#[derive(Debug, Clone)]
pub struct PullOutcome {
    pub status: PullStatus,
    pub messages: Vec<ReceivedMessage>,
    /// Where the next pull of this queue starts.
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// A pull's records as the broker sent them (each one's CRC checked), for callers that
/// filter or forward records before (or instead of) decoding them; see
/// [`ReceivedMessage::decode`].
#[derive(Debug, Clone)]
pub struct RawPullOutcome {
    pub status: PullStatus,
    /// Encoded records (the store's format, `weir_protocol::record`), in queue order.
    pub records: Vec<Bytes>,
    /// Where the next pull of this queue starts.
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

pub struct PullConsumer {
    group: String,
    client: ClientInstance,
}

impl PullConsumer {
    pub fn new(group: impl Into<String>, client: ClientInstance) -> Self {
        let group = group.into();
        client.register_consumer(&group, MessageModel::Clustering, Vec::new());
        Self { group, client }
    }

    /// A consumer of `group` that does not announce itself (the push consumer announces
    /// the group with its subscriptions and pulls through this).
    pub(crate) fn unannounced(group: String, client: ClientInstance) -> Self {
        Self { group, client }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The readable queues of a topic.
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        let route = self.client.route(topic, true).await?;
        Ok(ClientInstance::queues(&route, topic, false))
    }

    pub(crate) async fn addr(&self, mq: &MessageQueue) -> Result<String> {
        let route = self.client.route(&mq.topic, false).await?;
        match ClientInstance::master_addr(&route, &mq.broker_name) {
            Some(a) => Ok(a),
            None => {
                let route = self.client.route(&mq.topic, true).await?;
                ClientInstance::master_addr(&route, &mq.broker_name).ok_or_else(|| {
                    ClientError::NoRoute {
                        topic: mq.topic.clone(),
                        detail: format!("broker {} is not in the route", mq.broker_name),
                    }
                })
            }
        }
    }

    /// Pulls up to `max` messages at `offset`; with `hold`, an empty pull waits that long
    /// for a message to arrive (long polling).
    ///
    /// When the group has a WebAssembly filter for the topic, the broker returns only the
    /// messages the filter keeps (`next_offset` moves past the others); when the filter
    /// fails, the pull is an error with [`ErrorCode::FilterFailed`](crate::ErrorCode) and
    /// the offset does not move.
    pub async fn pull(
        &self,
        mq: &MessageQueue,
        expression: &str,
        offset: u64,
        max: u32,
        hold: Option<Duration>,
        commit_offset: Option<u64>,
    ) -> Result<PullOutcome> {
        let (r, body) = self
            .pull_body(mq, expression, offset, max, hold, commit_offset)
            .await?;
        let messages = decode_records(&body, &mq.broker_name)?;
        Ok(PullOutcome {
            status: r.status,
            messages,
            next_offset: r.next_offset,
            min_offset: r.min_offset,
            max_offset: r.max_offset,
        })
    }

    /// Like [`pull`](Self::pull), returning the records undecoded.
    pub async fn pull_raw(
        &self,
        mq: &MessageQueue,
        expression: &str,
        offset: u64,
        max: u32,
        hold: Option<Duration>,
        commit_offset: Option<u64>,
    ) -> Result<RawPullOutcome> {
        let (r, body) = self
            .pull_body(mq, expression, offset, max, hold, commit_offset)
            .await?;
        Ok(RawPullOutcome {
            status: r.status,
            records: split_verified(&body)?,
            next_offset: r.next_offset,
            min_offset: r.min_offset,
            max_offset: r.max_offset,
        })
    }

    async fn pull_body(
        &self,
        mq: &MessageQueue,
        expression: &str,
        offset: u64,
        max: u32,
        hold: Option<Duration>,
        commit_offset: Option<u64>,
    ) -> Result<(PullResult, Bytes)> {
        let addr = self.addr(mq).await?;
        let suspend = hold.unwrap_or_default();
        let req = PullMessage {
            group: self.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            offset,
            max_msgs: max,
            expression: expression.to_owned(),
            suspend_ms: suspend.as_millis() as u64,
            commit_offset,
        };
        let timeout = self.client.config().request_timeout + suspend;
        self.client
            .call_with_timeout(&addr, &req, Bytes::new(), timeout)
            .await
    }

    pub async fn commit_offset(&self, mq: &MessageQueue, offset: u64) -> Result<()> {
        let addr = self.addr(mq).await?;
        let req = UpdateConsumerOffset {
            group: self.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            offset,
        };
        self.client
            .call(&addr, &req, Bytes::new())
            .await
            .map(|_| ())
    }

    /// The group's committed offset on the queue, if any.
    pub async fn committed_offset(&self, mq: &MessageQueue) -> Result<Option<u64>> {
        let addr = self.addr(mq).await?;
        let req = QueryConsumerOffset {
            group: self.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
        };
        Ok(self.client.call(&addr, &req, Bytes::new()).await?.0.offset)
    }

    pub async fn queue_offsets(&self, mq: &MessageQueue) -> Result<QueueOffsets> {
        let addr = self.addr(mq).await?;
        let req = GetQueueOffsets {
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
        };
        Ok(self.client.call(&addr, &req, Bytes::new()).await?.0)
    }

    /// The first offset whose message was stored at or after `timestamp_ms`.
    pub async fn offset_for_timestamp(&self, mq: &MessageQueue, timestamp_ms: i64) -> Result<u64> {
        let addr = self.addr(mq).await?;
        let req = SearchOffsetByTimestamp {
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            timestamp: timestamp_ms,
        };
        Ok(self.client.call(&addr, &req, Bytes::new()).await?.0.offset)
    }
}
