//! The producer: picks a queue (round-robin, a chosen one, or by order key), sends, and on
//! failure retries on another broker. A busy answer (`StoreBusy`, flow control: nothing
//! stored) is retried like a refusal, on another broker when one can take it, else on the
//! same one after its pause (`ClientConfig::busy_backoff`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use weir_protocol::broker::{BatchEntry, SendBatch, SendMessage, SendStatus};
use weir_protocol::route::TopicRoute;
use weir_protocol::{CallError, ErrorCode};

use crate::instance::PublishInfo;
use crate::{ClientError, ClientInstance, Message, MessageQueue, Result};

/// Where a message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub status: SendStatus,
    pub msg_id: String,
    pub broker_name: String,
    pub queue_id: u32,
    pub queue_offset: u64,
}

pub struct Producer {
    group: String,
    client: ClientInstance,
    retry_times_when_send_failed: u32,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether another broker might accept what this one refused.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Broker {
            error: CallError::Remote { code, .. },
            ..
        } => matches!(
            code,
            ErrorCode::SystemBusy
                | ErrorCode::StoreBusy
                | ErrorCode::SystemError
                | ErrorCode::ServiceNotAvailable
                | ErrorCode::FlushDiskTimeout
                | ErrorCode::DiskFull
                | ErrorCode::WritesStopped
                | ErrorCode::NotMaster
        ),
        ClientError::Broker { .. } => true,
        _ => false,
    }
}

/// Whether the broker answered busy (flow control: nothing stored).
fn is_busy(e: &ClientError) -> bool {
    matches!(e, ClientError::Broker { error, .. } if crate::faults::busy(error))
}

/// Whether the broker refused a message without storing it (so another broker may take it
/// with no risk of a copy): what a half message is retried on.
fn refused(e: &ClientError) -> bool {
    match e {
        ClientError::Broker {
            error: CallError::Remote { code, .. },
            ..
        } => matches!(
            code,
            ErrorCode::SystemBusy
                | ErrorCode::StoreBusy
                | ErrorCode::ServiceNotAvailable
                | ErrorCode::DiskFull
                | ErrorCode::WritesStopped
        ),
        ClientError::Broker {
            error: CallError::Connect { .. },
            ..
        } => true,
        _ => false,
    }
}

/// A stable hash for order keys: the same key always maps to the same queue.
fn order_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Producer {
    pub fn new(group: impl Into<String>, client: ClientInstance) -> Self {
        let group = group.into();
        client.register_producer(&group);
        Self {
            group,
            client,
            retry_times_when_send_failed: 2,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Extra attempts on other brokers after a failed send (default 2).
    pub fn set_retry_times_when_send_failed(&mut self, n: u32) {
        self.retry_times_when_send_failed = n;
    }

    fn check(msg: &Message) -> Result<()> {
        if msg.topic.is_empty() {
            return Err(ClientError::Invalid("message has no topic".into()));
        }
        Ok(())
    }

    /// Picks the topic's next queue round-robin (its index, from a random start) among those whose master is known
    /// and was not found unreachable lately, avoiding `avoid` (the broker that just
    /// failed) when another one exists; when every master is avoided, any queue with a
    /// master (one may have come back). Never a queue without a master: sends never go
    /// to a slave.
    fn pick(&self, info: &PublishInfo, avoid: Option<&str>) -> Option<usize> {
        let queues = &info.queues;
        let n = queues.len();
        if n == 0 {
            return None;
        }
        let start = info.next_queue.fetch_add(1, Ordering::Relaxed);
        let order = || (0..n).map(move |i| (start.wrapping_add(i)) % n);
        let has_master = |i: &usize| info.addrs[*i].is_some();
        let up = |i: &usize| {
            info.addrs[*i]
                .as_deref()
                .is_some_and(|a| self.client.available(a))
        };
        let not_avoided = |i: &usize| avoid != Some(queues[*i].broker_name.as_str());
        order()
            .find(|i| up(i) && not_avoided(i))
            .or_else(|| order().find(up))
            .or_else(|| order().find(|i| has_master(i) && not_avoided(i)))
            .or_else(|| order().find(has_master))
    }

    fn request(&self, msg: &Message, queue_id: u32) -> SendMessage {
        SendMessage {
            producer_group: self.group.clone(),
            topic: msg.topic.clone(),
            queue_id,
            tags: msg.tags.clone(),
            keys: msg.keys.clone(),
            properties: msg.properties.clone(),
            flag: 0,
            born_timestamp: now_ms(),
            sys_flag: 0,
            reconsume_times: 0,
            max_reconsume_times: None,
        }
    }

    fn broker_addr(route: &TopicRoute, mq: &MessageQueue) -> Result<String> {
        ClientInstance::master_addr(route, &mq.broker_name).ok_or_else(|| ClientError::NoRoute {
            topic: mq.topic.clone(),
            detail: format!("broker {} has no master", mq.broker_name),
        })
    }

    async fn send_on(
        &self,
        msg: &Message,
        mq: &MessageQueue,
        route: &TopicRoute,
    ) -> Result<SendResult> {
        let addr = Self::broker_addr(route, mq)?;
        self.send_to(msg, mq, &addr).await
    }

    async fn send_to(&self, msg: &Message, mq: &MessageQueue, addr: &str) -> Result<SendResult> {
        let (r, _) = self
            .client
            .call(addr, &self.request(msg, mq.queue_id), msg.body.clone())
            .await?;
        Ok(SendResult {
            status: r.status,
            msg_id: r.msg_id,
            broker_name: mq.broker_name.clone(),
            queue_id: r.queue_id,
            queue_offset: r.queue_offset,
        })
    }

    /// Runs `attempt` on queues picked round-robin, retrying on another broker when it
    /// fails in a way another broker might not.
    async fn with_retries<T, F, Fut>(&self, topic: &str, attempt: F) -> Result<T>
    where
        F: Fn(Arc<PublishInfo>, usize, Arc<str>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.with_retries_if(topic, retryable, attempt).await
    }

    /// `with_retries`, retrying only the failures `retry` accepts.
    async fn with_retries_if<T, F, Fut>(
        &self,
        topic: &str,
        retry: fn(&ClientError) -> bool,
        attempt: F,
    ) -> Result<T>
    where
        F: Fn(Arc<PublishInfo>, usize, Arc<str>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut avoid: Option<String> = None;
        let mut last = None;
        for n in 0..=self.retry_times_when_send_failed {
            // After a failure the routing may be stale: fetch it again (or keep the old).
            let info = self.client.publish_info(topic, n > 0).await?;
            let Some(i) = self.pick(&info, avoid.as_deref()) else {
                let detail = match info.queues.is_empty() {
                    true => "no writable queue".to_owned(),
                    false => "no broker of the topic has a master now".to_owned(),
                };
                last = Some(ClientError::NoRoute {
                    topic: topic.to_owned(),
                    detail,
                });
                continue;
            };
            let Some(addr) = info.addrs[i].clone() else {
                continue;
            };
            // Back off: a broker that answered busy, picked again (no other could take
            // the send), is retried once its pause is over.
            if last.as_ref().is_some_and(is_busy) {
                let pause = self.client.pause_left(&addr);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            match attempt(Arc::clone(&info), i, addr).await {
                Ok(v) => return Ok(v),
                Err(e) if retry(&e) => {
                    let broker = info.queues[i].broker_name.clone();
                    tracing::debug!(topic, broker = %broker, error = %e, "send failed; retrying on another broker");
                    avoid = Some(broker);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Invalid("no send attempt was made".into())))
    }

    /// Sends to the next queue round-robin; on failure, up to
    /// `retry_times_when_send_failed` more tries on other brokers.
    pub async fn send(&self, msg: &Message) -> Result<SendResult> {
        Self::check(msg)?;
        self.with_retries(&msg.topic, |info, i, addr| async move {
            self.send_to(msg, &info.queues[i], &addr).await
        })
        .await
    }

    /// Sends a half message of a transaction to the next queue round-robin, retrying on
    /// another broker only when one refused it unstored (never after a timeout or a closed
    /// connection: the half may be stored, and a second one elsewhere would be checked back
    /// on its own). Returns where it went and the address of the broker that stored it.
    pub(crate) async fn send_half(&self, msg: &Message) -> Result<(SendResult, Arc<str>)> {
        Self::check(msg)?;
        self.with_retries_if(&msg.topic, refused, |info, i, addr| async move {
            let r = self.send_to(msg, &info.queues[i], &addr).await?;
            Ok((r, addr))
        })
        .await
    }

    /// Sends to one chosen queue (no retry elsewhere: the queue is the point).
    pub async fn send_to_queue(&self, msg: &Message, mq: &MessageQueue) -> Result<SendResult> {
        Self::check(msg)?;
        let route = self.client.route_for_send(&msg.topic).await?;
        self.send_on(msg, mq, &route).await
    }

    /// Sends every message of an order key to the same queue (ordered messages): the
    /// queue is `hash(order_key) mod` the topic's write queues.
    pub async fn send_with_order_key(&self, msg: &Message, order_key: &str) -> Result<SendResult> {
        let hash = order_hash(order_key);
        self.send_with_selector(msg, |queues| (hash % queues.len() as u64) as usize)
            .await
    }

    /// Sends to the queue `select` picks (by index) among the topic's writable queues, in
    /// their stable order: RocketMQ's queue selector. No retry elsewhere.
    pub async fn send_with_selector(
        &self,
        msg: &Message,
        select: impl FnOnce(&[MessageQueue]) -> usize,
    ) -> Result<SendResult> {
        Self::check(msg)?;
        let info = self.client.publish_info(&msg.topic, false).await?;
        if info.queues.is_empty() {
            return Err(ClientError::NoRoute {
                topic: msg.topic.clone(),
                detail: "no writable queue".into(),
            });
        }
        let i = select(&info.queues);
        let mq = info.queues.get(i).ok_or_else(|| {
            ClientError::Invalid(format!(
                "the queue selector picked queue index {i} of {} queues",
                info.queues.len()
            ))
        })?;
        let addr = info.addrs[i].clone().ok_or_else(|| ClientError::NoRoute {
            topic: msg.topic.clone(),
            detail: format!("broker {} has no master", mq.broker_name),
        })?;
        self.send_to(msg, mq, &addr).await
    }

    /// Sends messages of one topic to one queue in one request.
    pub async fn send_batch(&self, msgs: &[Message]) -> Result<Vec<SendResult>> {
        let Some(first) = msgs.first() else {
            return Err(ClientError::Invalid("empty batch".into()));
        };
        Self::check(first)?;
        if let Some(m) = msgs.iter().find(|m| m.topic != first.topic) {
            return Err(ClientError::Invalid(format!(
                "a batch takes one topic; got {:?} and {:?}",
                first.topic, m.topic
            )));
        }
        let mut body = BytesMut::new();
        let entries: Vec<BatchEntry> = msgs
            .iter()
            .map(|m| {
                body.extend_from_slice(&m.body);
                BatchEntry {
                    tags: m.tags.clone(),
                    keys: m.keys.clone(),
                    properties: m.properties.clone(),
                    flag: 0,
                    born_timestamp: now_ms(),
                    body_len: m.body.len() as u32,
                }
            })
            .collect();
        let body: Bytes = body.freeze();
        let (entries, body) = (&entries, &body);
        self.with_retries(&first.topic, |info, i, addr| async move {
            let mq = &info.queues[i];
            let req = SendBatch {
                producer_group: self.group.clone(),
                topic: first.topic.clone(),
                queue_id: mq.queue_id,
                messages: entries.clone(),
            };
            let (r, _) = self.client.call(&addr, &req, body.clone()).await?;
            Ok(r.results
                .into_iter()
                .map(|s| SendResult {
                    status: s.status,
                    msg_id: s.msg_id,
                    broker_name: mq.broker_name.clone(),
                    queue_id: s.queue_id,
                    queue_offset: s.queue_offset,
                })
                .collect())
        })
        .await
    }

    /// Sends without waiting for the broker's answer (no result, no retry).
    pub async fn send_oneway(&self, msg: &Message) -> Result<()> {
        Self::check(msg)?;
        let info = self.client.publish_info(&msg.topic, false).await?;
        let Some(i) = self.pick(&info, None) else {
            return Err(ClientError::NoRoute {
                topic: msg.topic.clone(),
                detail: "no writable queue".into(),
            });
        };
        let mq = &info.queues[i];
        let addr = Self::broker_addr(&info.route, mq)?;
        let conn = self
            .client
            .connection(&addr)
            .await
            .map_err(|error| ClientError::Broker {
                broker: addr.clone(),
                error,
            })?;
        conn.oneway(&self.request(msg, mq.queue_id), msg.body.clone())
            .await
            .map_err(|error| ClientError::Broker {
                broker: addr,
                error,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PublishInfo {
        let mq = |b: &str, q| MessageQueue {
            topic: "T".into(),
            broker_name: b.into(),
            queue_id: q,
        };
        PublishInfo::with_queues(
            Arc::new(TopicRoute::default()),
            vec![mq("a", 0), mq("a", 1), mq("b", 0), mq("b", 1), mq("c", 0)],
            vec![
                Some("A".into()),
                Some("A".into()),
                Some("B".into()),
                Some("B".into()),
                None,
            ],
        )
    }

    fn picks(p: &Producer, info: &PublishInfo, avoid: Option<&str>) -> Vec<String> {
        (0..20)
            .map(|_| {
                info.queues[p.pick(info, avoid).unwrap()]
                    .broker_name
                    .clone()
            })
            .collect()
    }

    #[tokio::test]
    async fn sends_skip_masters_that_are_down_and_brokers_without_one() {
        let client = ClientInstance::new(crate::ClientConfig::new("127.0.0.1:1")).unwrap();
        let p = Producer::new("g", client.clone());
        let info = info();
        let all = picks(&p, &info, None);
        assert!(
            !all.contains(&"c".to_owned()),
            "never a broker without a master"
        );
        assert!(all.contains(&"a".to_owned()) && all.contains(&"b".to_owned()));
        assert!(picks(&p, &info, Some("a")).iter().all(|b| b == "b"));
        client.mark_unreachable("A");
        assert!(picks(&p, &info, None).iter().all(|b| b == "b"));
        // Every master avoided: still one with a master (it may be back).
        client.mark_unreachable("B");
        assert!(picks(&p, &info, Some("b")).iter().all(|b| b == "a"));
        let none = PublishInfo::with_queues(info.route, info.queues, vec![None; 5]);
        assert_eq!(p.pick(&none, None), None);
    }

    /// A topic of 8 queues on broker "a".
    fn eight_queues(topic: &str) -> PublishInfo {
        let mq = |q| MessageQueue {
            topic: topic.into(),
            broker_name: "a".into(),
            queue_id: q,
        };
        PublishInfo::with_queues(
            Arc::new(TopicRoute::default()),
            (0..8).map(mq),
            vec![Some("A".into()); 8],
        )
    }

    #[tokio::test]
    async fn fresh_routes_start_at_random_queues() {
        let client = ClientInstance::new(crate::ClientConfig::new("127.0.0.1:1")).unwrap();
        let p = Producer::new("g", client.clone());
        let firsts: std::collections::BTreeSet<usize> = (0..32)
            .map(|_| p.pick(&eight_queues("T"), None).unwrap())
            .collect();
        // 32 fresh routes all starting at the same queue of 8: chance 8^-31.
        assert!(firsts.len() > 1, "every fresh route started at {firsts:?}");
        // And each then goes round-robin from its start.
        let info = eight_queues("T");
        let a = p.pick(&info, None).unwrap();
        assert_eq!(p.pick(&info, None).unwrap(), (a + 1) % 8);
    }

    #[tokio::test]
    async fn a_producer_taking_turns_between_topics_spreads_each_over_all_its_queues() {
        let client = ClientInstance::new(crate::ClientConfig::new("127.0.0.1:1")).unwrap();
        let p = Producer::new("g", client.clone());
        let (a, b) = (eight_queues("A"), eight_queues("B"));
        let (mut on_a, mut on_b) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for _ in 0..8 {
            on_a.insert(p.pick(&a, None).unwrap());
            on_b.insert(p.pick(&b, None).unwrap());
        }
        assert_eq!(on_a.len(), 8, "topic A's queues used: {on_a:?}");
        assert_eq!(on_b.len(), 8, "topic B's queues used: {on_b:?}");
    }
}
