//! The pull consumer: the application decides which queue, which offset, when.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tracing::debug;

use bytes::Bytes;
use weir_protocol::broker::{
    GetQueueOffsets, MessageModel, PullMessage, PullResult, PullStatus, QueryConsumerOffset,
    QueueOffsets, SearchOffsetByTimestamp, UpdateConsumerOffset,
};

use crate::faults::unreachable;
use crate::message::{decode_records, split_verified};
use crate::{ClientError, ClientInstance, FilterFailed, MessageQueue, ReceivedMessage, Result};

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
    /// Queues whose broker said the reader had better read from a slave (it is far
    /// behind); cleared when the broker read from no longer says so.
    from_slave: Mutex<HashSet<MessageQueue>>,
}

impl PullConsumer {
    pub fn new(group: impl Into<String>, client: ClientInstance) -> Self {
        let group = group.into();
        client.register_consumer(&group, MessageModel::Clustering, Vec::new());
        Self::unannounced(group, client)
    }

    /// A consumer of `group` that does not announce itself (the push consumer announces
    /// the group with its subscriptions and pulls through this).
    pub(crate) fn unannounced(group: String, client: ClientInstance) -> Self {
        Self {
            group,
            client,
            from_slave: Mutex::new(HashSet::new()),
        }
    }

    fn slave_reads(&self) -> std::sync::MutexGuard<'_, HashSet<MessageQueue>> {
        self.from_slave.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The readable queues of a topic.
    pub async fn queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        let route = self.client.route(topic, true).await?;
        Ok(ClientInstance::queues(&route, topic, false))
    }

    /// The address of the queue's master (queue leases are taken there only).
    pub(crate) async fn master_addr(&self, mq: &MessageQueue) -> Result<String> {
        let route = self.client.route(&mq.topic, false).await?;
        match ClientInstance::master_addr(&route, &mq.broker_name) {
            Some(a) => Ok(a),
            None => {
                let route = self.client.route(&mq.topic, true).await?;
                ClientInstance::master_addr(&route, &mq.broker_name).ok_or_else(|| {
                    ClientError::NoRoute {
                        topic: mq.topic.clone(),
                        detail: format!("broker {} has no master now", mq.broker_name),
                    }
                })
            }
        }
    }

    /// Where to read the queue (and commit its offset): the master, a slave while the
    /// master cannot be reached, a slave first with `prefer_slave`; with the other
    /// member of the pair, if any, to fall back on when that one cannot be reached.
    async fn read_addrs(
        &self,
        mq: &MessageQueue,
        prefer_slave: bool,
    ) -> Result<(String, Option<String>)> {
        let mut route = self.client.route(&mq.topic, false).await?;
        if !route
            .brokers
            .iter()
            .any(|b| b.broker_name == mq.broker_name)
        {
            route = self.client.route(&mq.topic, true).await?;
        }
        let first = self
            .client
            .read_addr(&route, &mq.broker_name, prefer_slave)
            .ok_or_else(|| ClientError::NoRoute {
                topic: mq.topic.clone(),
                detail: format!("broker {} is not in the route", mq.broker_name),
            })?;
        let other = route
            .brokers
            .iter()
            .find(|b| b.broker_name == mq.broker_name)
            .and_then(|b| {
                [b.master_addr(), b.slave_addr()]
                    .into_iter()
                    .flatten()
                    .find(|a| *a != first)
            })
            .map(str::to_owned);
        Ok((first, other))
    }

    /// Calls the queue's broker (see `read_addrs`), then the other of master and slave
    /// when the first cannot be reached.
    async fn call_read<R: weir_protocol::Rpc>(
        &self,
        mq: &MessageQueue,
        req: &R,
        prefer_slave: bool,
        timeout: Duration,
    ) -> Result<R::Response> {
        Ok(self.call_read_body(mq, req, prefer_slave, timeout).await?.0)
    }

    async fn call_read_body<R: weir_protocol::Rpc>(
        &self,
        mq: &MessageQueue,
        req: &R,
        prefer_slave: bool,
        timeout: Duration,
    ) -> Result<(R::Response, Bytes)> {
        let (first, other) = self.read_addrs(mq, prefer_slave).await?;
        let result = self
            .client
            .call_with_timeout(&first, req, Bytes::new(), timeout)
            .await;
        match (result, other) {
            (Err(ClientError::Broker { error, .. }), Some(other)) if unreachable(&error) => {
                debug!(queue = ?mq, from = %first, to = %other, error = %error, "broker unreachable; reading from the other of master and slave");
                self.client
                    .call_with_timeout(&other, req, Bytes::new(), timeout)
                    .await
            }
            (result, _) => result,
        }
    }

    /// Pulls up to `max` messages at `offset`; with `hold`, an empty pull waits that long
    /// for a message to arrive (long polling).
    ///
    /// When the group has a WebAssembly filter for the topic, the broker returns only the
    /// messages the filter keeps (`next_offset` moves past the others); when the filter
    /// fails, the pull is a [`ClientError::FilterFailed`](crate::ClientError) (marked when
    /// the filter is marked failed and waits for a new version or a reset) and the offset
    /// does not move.
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
        let prefer_slave = self.slave_reads().contains(mq);
        let (r, body) = self
            .call_read_body(mq, &req, prefer_slave, timeout)
            .await
            .map_err(FilterFailed::from_broker)?;
        if r.suggest_slave != prefer_slave {
            debug!(queue = ?mq, from_slave = r.suggest_slave, "the broker suggests reading elsewhere");
            match r.suggest_slave {
                true => self.slave_reads().insert(mq.clone()),
                false => self.slave_reads().remove(mq),
            };
        }
        Ok((r, body))
    }

    fn timeout(&self) -> Duration {
        self.client.config().request_timeout
    }

    /// Commits the group's offset on the queue: on its master, or on a slave while the
    /// master cannot be reached (the master takes it from the slave when it returns).
    pub async fn commit_offset(&self, mq: &MessageQueue, offset: u64) -> Result<()> {
        let req = UpdateConsumerOffset {
            group: self.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            offset,
        };
        self.call_read(mq, &req, false, self.timeout()).await
    }

    /// The group's committed offset on the queue, if any.
    pub async fn committed_offset(&self, mq: &MessageQueue) -> Result<Option<u64>> {
        let req = QueryConsumerOffset {
            group: self.group.clone(),
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
        };
        Ok(self
            .call_read(mq, &req, false, self.timeout())
            .await?
            .offset)
    }

    pub async fn queue_offsets(&self, mq: &MessageQueue) -> Result<QueueOffsets> {
        let req = GetQueueOffsets {
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
        };
        self.call_read(mq, &req, false, self.timeout()).await
    }

    /// The first offset whose message was stored at or after `timestamp_ms`.
    pub async fn offset_for_timestamp(&self, mq: &MessageQueue, timestamp_ms: i64) -> Result<u64> {
        let req = SearchOffsetByTimestamp {
            topic: mq.topic.clone(),
            queue_id: mq.queue_id,
            timestamp: timestamp_ms,
        };
        Ok(self
            .call_read(mq, &req, false, self.timeout())
            .await?
            .offset)
    }
}
