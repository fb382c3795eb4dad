//! The push consumer: the client pulls (long polling) every queue its group assigns it and
//! hands the messages to a listener.
//!
//! - **Clustering** (default): the members of a group share its queues, allocated averagely
//!   over the sorted member ids; rebalanced every `rebalance_interval` and at once when a
//!   broker says the members changed. Offsets live on the brokers. A member leases each of
//!   its queues on the broker, and a queue changes hands only after its owner committed and
//!   let go, so the next owner continues exactly where it stopped.
//! - **Broadcasting**: every member consumes every queue; offsets live in a local file.
//! - **Concurrently**: messages go to a thread pool in batches; the committed offset is the
//!   smallest still in flight, so a crash re-delivers and never skips. A failed batch
//!   (`ReconsumeLater`, or a panic) is sent back to the broker for the group's retry topic
//!   (after the delay level `3 + reconsume_times`), or, past `max_reconsume_times`, its
//!   dead-letter topic. The retry topic is consumed along with the subscriptions.
//! - **Orderly**: each queue is consumed on one thread at a time, in order, and only while
//!   its lease is held; a suspended queue is tried again after a pause.

mod allocate;
mod offsets;
mod pool;
mod queue;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
pub use weir_protocol::broker::MessageModel;
use weir_protocol::broker::{
    ConsumerSendMsgBack, GetConsumerList, LockBatchMq, QueueRef, SentBack, UnlockBatchMq,
};
use weir_protocol::names::{self, RETRY_PREFIX, property};

pub use allocate::allocate_averagely;
use offsets::OffsetStore;
use queue::ProcessQueue;

use crate::{
    ClientError, ClientInstance, MessageQueue, PullConsumer, PullStatus, ReceivedMessage, Result,
};

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
    stop: StopHandle,
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
    stop: StopHandle,
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
    fn is_orderly(&self) -> bool {
        matches!(self, Listener::Orderly(_))
    }
}

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
        }
    }

    fn validate(&self) -> Result<()> {
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

/// What a push consumer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumeStats {
    /// Messages whose listener call succeeded.
    pub consumed: u64,
    /// Messages the listener failed (or suspended, orderly).
    pub failed: u64,
    /// Messages handed back to the broker for a retry or the dead-letter topic.
    pub sent_back: u64,
    /// Sends back that failed (the message is then retried locally).
    pub send_back_failed: u64,
    /// Messages pulled and not done yet, now (bounded per queue by
    /// `pull_threshold_for_queue` plus one pull).
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    consumed: AtomicU64,
    failed: AtomicU64,
    sent_back: AtomicU64,
    send_back_failed: AtomicU64,
}

/// Pause after a pull fails before the queue is pulled again.
const PULL_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Pause before messages whose send-back failed are consumed again here.
const LOCAL_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long a release waits for a concurrent listener's calls on the queue before it hands
/// the queue on anyway (an orderly one is always waited for).
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// Rebalance again this soon after one that could not finish (no route yet, a lease held by
/// the previous owner, a broker unreachable).
const REBALANCE_RETRY: Duration = Duration::from_secs(1);

struct Core {
    client: ClientInstance,
    config: PushConsumerConfig,
    /// (topic, expression), with the retry topic for a clustering group.
    subscriptions: Vec<(String, String)>,
    listener: Listener,
    puller: PullConsumer,
    offsets: OffsetStore,
    queues: Mutex<BTreeMap<MessageQueue, Arc<ProcessQueue>>>,
    pool: pool::ConsumePool,
    runtime: tokio::runtime::Handle,
    /// One rebalance at a time.
    rebalancing: tokio::sync::Mutex<()>,
    /// Set by `shutdown` or a [`StopHandle`]: nothing more is handed to the listener.
    stopping: StopHandle,
    counters: Counters,
}

/// A running push consumer. Call [`shutdown`](Self::shutdown) to commit progress and leave
/// the group cleanly; dropping it stops it without committing.
///
/// ```no_run
/// use weir_client::{
///     ClientConfig, ClientInstance, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
///     ConsumeFrom, Listener, MessageExt, PushConsumer, PushConsumerConfig,
/// };
///
/// # async fn run() -> weir_client::Result<()> {
/// let mut config = PushConsumerConfig::new("orders-app");
/// config.consume_from = ConsumeFrom::FirstOffset;
/// let consumer = PushConsumer::start(
///     ClientInstance::new(ClientConfig::new("127.0.0.1:9876"))?,
///     config,
///     vec![("Orders".into(), "TagA || TagB".into())],
///     Listener::concurrently(|msgs: &[MessageExt], _ctx: &mut ConsumeConcurrentlyContext| {
///         for m in msgs {
///             println!("{} {}", m.topic, m.reconsume_times);
///         }
///         ConsumeConcurrentlyStatus::ConsumeSuccess
///     }),
/// )
/// .await?;
/// // …
/// consumer.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub struct PushConsumer {
    core: Arc<Core>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Stops a consumer handing messages to its listener, from anywhere (a listener too, with
/// its context's `stop_consumer`): what is not consumed yet stays uncommitted, for the next
/// run. `shutdown` still has to follow.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl PushConsumer {
    /// Joins the group, allocates queues and starts consuming `subscriptions`
    /// (topic, `*` or `TagA || TagB`).
    pub async fn start(
        client: ClientInstance,
        config: PushConsumerConfig,
        subscriptions: Vec<(String, String)>,
        listener: Listener,
    ) -> Result<Self> {
        config.validate()?;
        if subscriptions.is_empty() {
            return Err(ClientError::Invalid(
                "a push consumer needs a subscription".into(),
            ));
        }
        let mut subs = Vec::new();
        for (topic, expr) in subscriptions {
            if topic.is_empty() {
                return Err(ClientError::Invalid(
                    "subscription with an empty topic".into(),
                ));
            }
            if topic.starts_with(RETRY_PREFIX) {
                return Err(ClientError::Invalid(format!(
                    "{topic}: retry topics are consumed by their group automatically"
                )));
            }
            if subs.iter().any(|(t, _)| t == &topic) {
                return Err(ClientError::Invalid(format!(
                    "topic {topic} subscribed twice"
                )));
            }
            subs.push((
                topic,
                if expr.trim().is_empty() {
                    "*".into()
                } else {
                    expr
                },
            ));
        }
        let offsets = match config.model {
            MessageModel::Clustering => {
                subs.push((names::retry_topic(&config.group), "*".into()));
                OffsetStore::remote()
            }
            MessageModel::Broadcasting => OffsetStore::local(
                config.offset_store_dir.clone(),
                &config.instance_name,
                &config.group,
            )?,
        };
        if client.consumes(&config.group) {
            // Brokers know a member by its client id: two consumers of one group on one
            // client would be one member to them.
            return Err(ClientError::Invalid(format!(
                "this client already has a consumer of group {}; give each member its own ClientInstance",
                config.group
            )));
        }
        let trigger = client.rebalance_trigger(&config.group);
        client.register_consumer(&config.group, config.model.clone(), subs.clone());
        // The brokers must know this member before it asks them who the members are.
        if let Err(e) = client.heartbeat().await {
            warn!(group = %config.group, error = %e, "first heartbeat failed; rebalancing anyway");
        }
        let core = Arc::new(Core {
            pool: pool::ConsumePool::new(
                &format!("weir-consume-{}", config.group),
                config.consume_thread_min,
                config.consume_thread_max,
            ),
            puller: PullConsumer::unannounced(config.group.clone(), client.clone()),
            client,
            subscriptions: subs,
            listener,
            offsets,
            queues: Mutex::new(BTreeMap::new()),
            runtime: tokio::runtime::Handle::current(),
            rebalancing: tokio::sync::Mutex::new(()),
            stopping: StopHandle::default(),
            counters: Counters::default(),
            config,
        });
        let (stop, _) = watch::channel(false);
        let first_retry = core.rebalance().await;
        let mut tasks = vec![tokio::spawn(rebalance_loop(
            Arc::clone(&core),
            trigger,
            stop.subscribe(),
            first_retry,
        ))];
        tasks.push(tokio::spawn(every(
            core.config.persist_offset_interval,
            stop.subscribe(),
            Arc::clone(&core),
            |core| async move { core.offsets.persist_all(&core.puller).await },
        )));
        if core.leased() {
            tasks.push(tokio::spawn(every(
                core.config.lock_renew_interval,
                stop.subscribe(),
                Arc::clone(&core),
                |core| async move { core.renew_leases().await },
            )));
        }
        Ok(Self { core, stop, tasks })
    }

    pub fn group(&self) -> &str {
        &self.core.config.group
    }

    pub fn client_id(&self) -> &str {
        self.core.client.client_id()
    }

    /// The queues this member consumes now.
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        self.core.queues().keys().cloned().collect()
    }

    pub fn stats(&self) -> ConsumeStats {
        let c = &self.core.counters;
        ConsumeStats {
            consumed: c.consumed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            sent_back: c.sent_back.load(Ordering::Relaxed),
            send_back_failed: c.send_back_failed.load(Ordering::Relaxed),
            in_flight: self
                .core
                .queues()
                .values()
                .map(|pq| pq.in_flight() as u64)
                .sum(),
        }
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.core.stopping.clone()
    }

    /// Rebalances now (normally on a timer and when the brokers say members changed).
    pub async fn rebalance_now(&self) {
        self.core.rebalance().await;
    }

    /// Stops pulling, lets running listener calls finish, commits progress, gives queue
    /// leases back, and leaves the group (its other members then rebalance).
    pub async fn shutdown(mut self) -> Result<()> {
        self.core.stopping.stop();
        self.stop.send_replace(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let _one = self.core.rebalancing.lock().await;
        let queues = std::mem::take(&mut *self.core.queues());
        for pq in queues.values() {
            pq.drop_now();
        }
        let core = Arc::clone(&self.core);
        // Listener calls under way finish; queued ones see `stopping` and leave their
        // messages uncommitted.
        let _ = tokio::task::spawn_blocking(move || core.pool.shutdown()).await;
        for (mq, pq) in &queues {
            self.core.offsets.update(mq, pq.commit_offset());
        }
        self.core.offsets.persist_all(&self.core.puller).await;
        if self.core.leased() {
            self.core
                .unlock(queues.keys().cloned().collect::<Vec<_>>())
                .await;
        }
        self.core
            .client
            .unregister_consumer(&self.core.config.group)
            .await
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.core.stopping.stop();
        self.stop.send_replace(true);
        for pq in self.core.queues().values() {
            pq.drop_now();
        }
        self.core.client.forget_consumer(&self.core.config.group);
    }
}

/// Runs `f` every `period` until stopped.
async fn every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, core: Arc<Core>, f: F)
where
    F: Fn(Arc<Core>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        f(Arc::clone(&core)).await;
    }
}

async fn rebalance_loop(
    core: Arc<Core>,
    trigger: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
    mut retry_soon: bool,
) {
    loop {
        let wait = if retry_soon {
            REBALANCE_RETRY.min(core.config.rebalance_interval)
        } else {
            core.config.rebalance_interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        retry_soon = core.rebalance().await;
    }
}

/// A message pulled from the group's retry topic is shown with the topic it was sent to.
fn restore_topic(m: &mut MessageExt) {
    if m.topic.starts_with(RETRY_PREFIX)
        && let Some(t) = m.property(property::RETRY_TOPIC)
    {
        m.topic = t.to_owned();
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into())
}

impl Core {
    fn queues(&self) -> std::sync::MutexGuard<'_, BTreeMap<MessageQueue, Arc<ProcessQueue>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A clustering member holds a lease on each of its queues: a queue changes hands
    /// only after its previous owner committed and let go, so the next owner starts
    /// exactly where it stopped (no message consumed twice by a rebalance, and none of an
    /// order consumed by two members at once).
    fn leased(&self) -> bool {
        self.config.model == MessageModel::Clustering
    }

    fn stopping(&self) -> bool {
        self.stopping.is_stopped()
    }

    /// Brings the assigned queues in line with the allocation. True when something could
    /// not be settled and another try should come soon.
    async fn rebalance(self: &Arc<Self>) -> bool {
        let _one = self.rebalancing.lock().await;
        if self.stopping() {
            return false;
        }
        let mut retry = false;
        let mut wanted: BTreeMap<MessageQueue, String> = BTreeMap::new();
        for (topic, expr) in &self.subscriptions {
            match self.allocation(topic).await {
                Ok(queues) => {
                    wanted.extend(queues.into_iter().map(|q| (q, expr.clone())));
                }
                Err(e) => {
                    debug!(group = %self.config.group, topic, error = %e, "cannot allocate the topic's queues now; keeping what this member has");
                    retry = true;
                    for (mq, pq) in self.queues().iter() {
                        if &mq.topic == topic {
                            wanted.insert(mq.clone(), pq.expression.clone());
                        }
                    }
                }
            }
        }
        let current: Vec<(MessageQueue, Arc<ProcessQueue>)> = self
            .queues()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        for (mq, pq) in &current {
            if !wanted.contains_key(mq) {
                self.release(pq).await;
                self.queues().remove(mq);
            }
        }
        for (mq, expression) in wanted {
            if self.queues().contains_key(&mq) {
                continue;
            }
            if self.leased() {
                match self.lock(std::slice::from_ref(&mq)).await {
                    Ok(held) if held.contains(&mq) => {}
                    Ok(_) => {
                        debug!(queue = ?mq, "queue still leased by its previous owner");
                        retry = true;
                        continue;
                    }
                    Err(e) => {
                        warn!(queue = ?mq, error = %e, "cannot lease the queue");
                        retry = true;
                        continue;
                    }
                }
            }
            let start = match self.start_offset(&mq).await {
                Ok(o) => o,
                Err(e) => {
                    warn!(queue = ?mq, error = %e, "cannot find where to start on the queue");
                    retry = true;
                    if self.leased() {
                        self.unlock(vec![mq]).await;
                    }
                    continue;
                }
            };
            debug!(group = %self.config.group, queue = ?mq, start, "queue assigned");
            let pq = Arc::new(ProcessQueue::new(
                mq.clone(),
                expression,
                start,
                self.leased(),
            ));
            pq.set_locked(true);
            self.queues().insert(mq, Arc::clone(&pq));
            tokio::spawn(pull_loop(Arc::clone(self), pq, start));
        }
        retry
    }

    /// The queues of `topic` this member should consume.
    async fn allocation(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        let route = self.client.route(topic, false).await?;
        let all = ClientInstance::queues(&route, topic, false);
        if all.is_empty() || self.config.model == MessageModel::Broadcasting {
            return Ok(all);
        }
        let addr = route
            .brokers
            .iter()
            .filter_map(|b| b.master_addr())
            .next()
            .ok_or_else(|| ClientError::NoRoute {
                topic: topic.to_owned(),
                detail: "no master broker".into(),
            })?
            .to_owned();
        let req = GetConsumerList {
            group: self.config.group.clone(),
        };
        let members = self
            .client
            .call(&addr, &req, Bytes::new())
            .await?
            .0
            .client_ids;
        let me = self.client.client_id();
        if !members.iter().any(|m| m == me) {
            return Err(ClientError::Invalid(format!(
                "broker {addr} does not list this member of {} yet",
                self.config.group
            )));
        }
        Ok(allocate_averagely(&all, &members, me))
    }

    /// Where consumption of a newly assigned queue starts; a start not read from the
    /// store is recorded at once, so a hand-over continues from it.
    async fn start_offset(&self, mq: &MessageQueue) -> Result<u64> {
        if let Some(o) = self.offsets.read(mq, &self.puller).await? {
            return Ok(o);
        }
        let bounds = self.puller.queue_offsets(mq).await?;
        let start = match self.config.consume_from {
            _ if mq.topic.starts_with(RETRY_PREFIX) => bounds.min,
            ConsumeFrom::FirstOffset => bounds.min,
            ConsumeFrom::LastOffset => bounds.max,
            ConsumeFrom::Timestamp(t) => self.puller.offset_for_timestamp(mq, t).await?,
        };
        self.offsets.update(mq, start);
        if self.config.model == MessageModel::Clustering {
            self.puller.commit_offset(mq, start).await?;
        }
        Ok(start)
    }

    /// The queue goes to another member: stop, let the listener calls under way on it end,
    /// commit, give the lease back.
    async fn release(&self, pq: &ProcessQueue) {
        pq.drop_now();
        let waited = tokio::time::Instant::now();
        let mut warned = false;
        while !pq.idle() {
            let long = waited.elapsed() >= RELEASE_WAIT;
            if long && !warned {
                warn!(queue = ?pq.mq, "a listener call on a queue being handed on is taking long");
                warned = true;
            }
            // Concurrently, its messages may be consumed again elsewhere (at least once);
            // orderly, the next owner must not start before the call ends.
            if long && !self.listener.is_orderly() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.offsets.update(&pq.mq, pq.commit_offset());
        self.offsets.persist_and_forget(&pq.mq, &self.puller).await;
        if self.leased() {
            self.unlock(vec![pq.mq.clone()]).await;
        }
        debug!(group = %self.config.group, queue = ?pq.mq, "queue released");
    }

    /// Hands pulled messages to the listener (orderly: starts the queue's runner, which
    /// takes them from the queue in order).
    fn dispatch(self: &Arc<Self>, pq: &Arc<ProcessQueue>, msgs: Vec<MessageExt>) {
        match &self.listener {
            Listener::Concurrently(_) => {
                let n = self.config.consume_message_batch_max_size;
                let mut jobs: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
                let mut msgs = msgs.into_iter().peekable();
                while msgs.peek().is_some() {
                    let batch: Vec<MessageExt> = msgs.by_ref().take(n).collect();
                    let (core, pq) = (Arc::clone(self), Arc::clone(pq));
                    jobs.push(Box::new(move || core.consume_concurrently(&pq, batch)));
                }
                self.pool.submit_all(jobs);
            }
            Listener::Orderly(_) => self.run_orderly_soon(pq, Duration::ZERO),
        }
    }

    fn consume_concurrently(self: &Arc<Self>, pq: &Arc<ProcessQueue>, batch: Vec<MessageExt>) {
        let Listener::Concurrently(listener) = &self.listener else {
            return;
        };
        if self.stopping() {
            return;
        }
        let Some(_call) = pq.enter_call() else {
            return;
        };
        let mut ctx = ConsumeConcurrentlyContext {
            queue: pq.mq.clone(),
            delay_level_when_next_consume: 0,
            stop: self.stopping.clone(),
        };
        let status = catch_unwind(AssertUnwindSafe(|| listener.consume(&batch, &mut ctx)))
            .unwrap_or_else(|p| {
                warn!(group = %self.config.group, panic = %panic_text(p.as_ref()), "listener panicked; the batch is consumed again later");
                ConsumeConcurrentlyStatus::ReconsumeLater
            });
        let n = batch.len() as u64;
        if status == ConsumeConcurrentlyStatus::ConsumeSuccess {
            self.counters.consumed.fetch_add(n, Ordering::Relaxed);
            pq.remove(batch.iter().map(|m| m.queue_offset), &self.offsets);
            return;
        }
        self.counters.failed.fetch_add(n, Ordering::Relaxed);
        if self.stopping() {
            // Left uncommitted: the next run gets them.
            return;
        }
        if self.config.model == MessageModel::Broadcasting {
            for m in &batch {
                warn!(group = %self.config.group, msg_id = %m.msg_id, "broadcasting: a failed message is not retried");
            }
            pq.remove(batch.iter().map(|m| m.queue_offset), &self.offsets);
            return;
        }
        let mut retry_here = Vec::new();
        let mut done = Vec::new();
        for m in batch {
            let sent = self.runtime.block_on(self.send_back(
                &pq.mq,
                &m,
                ctx.delay_level_when_next_consume,
            ));
            match sent {
                Ok(r) => {
                    self.counters.sent_back.fetch_add(1, Ordering::Relaxed);
                    debug!(msg_id = %m.msg_id, to = %r.topic, reconsume_times = r.reconsume_times, "message sent back");
                    done.push(m.queue_offset);
                }
                Err(e) => {
                    self.counters
                        .send_back_failed
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(msg_id = %m.msg_id, error = %e, "cannot send the message back; consuming it again here");
                    retry_here.push(m);
                }
            }
        }
        pq.remove(done, &self.offsets);
        if !retry_here.is_empty() {
            for m in &mut retry_here {
                m.reconsume_times += 1;
            }
            let (core, pq) = (Arc::clone(self), Arc::clone(pq));
            self.runtime.spawn(async move {
                tokio::time::sleep(LOCAL_RETRY_DELAY).await;
                let again = Arc::clone(&core);
                core.pool
                    .submit(move || again.consume_concurrently(&pq, retry_here));
            });
        }
    }

    async fn send_back(
        &self,
        mq: &MessageQueue,
        m: &MessageExt,
        delay_level: i32,
    ) -> Result<SentBack> {
        let addr = self.puller.addr(mq).await?;
        let req = ConsumerSendMsgBack {
            group: self.config.group.clone(),
            commit_log_offset: m.commit_log_offset,
            delay_level,
            max_reconsume_times: self.config.max_reconsume_times,
        };
        Ok(self.client.call(&addr, &req, Bytes::new()).await?.0)
    }

    /// Orderly: makes sure a runner will consume the queue's waiting messages.
    fn run_orderly_soon(self: &Arc<Self>, pq: &Arc<ProcessQueue>, after: Duration) {
        if !pq.claim_runner() {
            return;
        }
        self.submit_orderly(pq, after);
    }

    fn submit_orderly(self: &Arc<Self>, pq: &Arc<ProcessQueue>, after: Duration) {
        let (core, pq) = (Arc::clone(self), Arc::clone(pq));
        if after.is_zero() {
            self.pool.submit(move || core.consume_orderly(&pq));
        } else {
            self.runtime.spawn(async move {
                tokio::time::sleep(after).await;
                let again = Arc::clone(&core);
                core.pool.submit(move || again.consume_orderly(&pq));
            });
        }
    }

    /// Orderly: consumes the queue's waiting messages in order until none wait.
    fn consume_orderly(self: &Arc<Self>, pq: &Arc<ProcessQueue>) {
        let Listener::Orderly(listener) = &self.listener else {
            return;
        };
        loop {
            // Without a valid lease another member may own the queue: wait for the renewal
            // (which restarts the runner).
            if pq.is_dropped() || self.stopping() || !pq.lock_valid() {
                pq.release_runner();
                return;
            }
            let Some(_call) = pq.enter_call() else {
                pq.release_runner();
                return;
            };
            let batch = pq.take_waiting(self.config.consume_message_batch_max_size);
            if batch.is_empty() {
                return;
            }
            let mut ctx = ConsumeOrderlyContext {
                queue: pq.mq.clone(),
                suspend_current_queue_time: self.config.suspend_current_queue_time,
                stop: self.stopping.clone(),
            };
            let status = catch_unwind(AssertUnwindSafe(|| listener.consume(&batch, &mut ctx)))
                .unwrap_or_else(|p| {
                    warn!(group = %self.config.group, panic = %panic_text(p.as_ref()), "orderly listener panicked; the queue is suspended a moment");
                    ConsumeOrderlyStatus::SuspendCurrentQueueAMoment
                });
            let n = batch.len() as u64;
            match status {
                ConsumeOrderlyStatus::Success => {
                    self.counters.consumed.fetch_add(n, Ordering::Relaxed);
                    pq.remove(batch.iter().map(|m| m.queue_offset), &self.offsets);
                }
                ConsumeOrderlyStatus::SuspendCurrentQueueAMoment => {
                    self.counters.failed.fetch_add(n, Ordering::Relaxed);
                    pq.put_back(batch);
                    self.submit_orderly(pq, ctx.suspend_current_queue_time);
                    return;
                }
            }
        }
    }

    /// Leases `queues` (of any brokers) for this member; returns those now held.
    async fn lock(&self, queues: &[MessageQueue]) -> Result<Vec<MessageQueue>> {
        let mut held = Vec::new();
        for (addr, group) in self.by_broker(queues).await? {
            let req = LockBatchMq {
                group: self.config.group.clone(),
                client_id: self.client.client_id().to_owned(),
                queues: group.iter().map(queue_ref).collect(),
            };
            let got = self.client.call(&addr, &req, Bytes::new()).await?.0.queues;
            held.extend(group.into_iter().filter(|mq| got.contains(&queue_ref(mq))));
        }
        Ok(held)
    }

    async fn unlock(&self, queues: Vec<MessageQueue>) {
        let groups = match self.by_broker(&queues).await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "cannot give queue leases back; they expire on their own");
                return;
            }
        };
        for (addr, group) in groups {
            let req = UnlockBatchMq {
                group: self.config.group.clone(),
                client_id: self.client.client_id().to_owned(),
                queues: group.iter().map(queue_ref).collect(),
            };
            if let Err(e) = self.client.call(&addr, &req, Bytes::new()).await {
                warn!(broker = %addr, error = %e, "cannot give queue leases back; they expire on their own");
            }
        }
    }

    /// Queues by the address of their broker's master.
    async fn by_broker(
        &self,
        queues: &[MessageQueue],
    ) -> Result<BTreeMap<String, Vec<MessageQueue>>> {
        let mut out: BTreeMap<String, Vec<MessageQueue>> = BTreeMap::new();
        for mq in queues {
            out.entry(self.puller.addr(mq).await?)
                .or_default()
                .push(mq.clone());
        }
        Ok(out)
    }

    /// Renews the leases of every assigned queue; a queue whose lease was lost pauses
    /// until it is regained.
    async fn renew_leases(self: &Arc<Self>) {
        let current: Vec<Arc<ProcessQueue>> = self.queues().values().cloned().collect();
        let mqs: Vec<MessageQueue> = current.iter().map(|pq| pq.mq.clone()).collect();
        match self.lock(&mqs).await {
            Ok(held) => {
                for pq in &current {
                    let ok = held.contains(&pq.mq);
                    if !ok {
                        warn!(queue = ?pq.mq, "lease lost; the queue pauses until it is regained");
                    }
                    pq.set_locked(ok);
                    if ok && self.listener.is_orderly() {
                        self.run_orderly_soon(pq, Duration::ZERO);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot renew queue leases"),
        }
    }
}

fn queue_ref(mq: &MessageQueue) -> QueueRef {
    QueueRef {
        topic: mq.topic.clone(),
        queue_id: mq.queue_id,
    }
}

/// Pulls one queue for as long as it is assigned, with flow control.
async fn pull_loop(core: Arc<Core>, pq: Arc<ProcessQueue>, mut offset: u64) {
    let mut dropped = pq.dropped_signal();
    let orderly = core.listener.is_orderly();
    let leased = core.leased();
    let cfg = &core.config;
    loop {
        if pq.is_dropped() {
            return;
        }
        if pq.over_limits(
            cfg.pull_threshold_for_queue,
            cfg.pull_threshold_size_for_queue,
        ) {
            tokio::select! {
                _ = pq.space.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = dropped.wait_for(|d| *d) => return,
            }
            continue;
        }
        if leased && !pq.lock_valid() {
            // The lease lapsed (the broker was away at the last renewal, say): take it
            // again now rather than at the next renewal, unless another member holds it.
            let regained = tokio::select! {
                r = core.lock(std::slice::from_ref(&pq.mq)) => r.is_ok_and(|held| held.contains(&pq.mq)),
                _ = dropped.wait_for(|d| *d) => return,
            };
            if regained && !pq.is_dropped() {
                pq.set_locked(true);
                if orderly {
                    core.run_orderly_soon(&pq, Duration::ZERO);
                }
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(PULL_RETRY_DELAY) => {}
                _ = dropped.wait_for(|d| *d) => return,
            }
            continue;
        }
        let pulled = tokio::select! {
            r = core.puller.pull(&pq.mq, &pq.expression, offset, cfg.pull_batch_size, Some(cfg.long_poll), None) => r,
            _ = dropped.wait_for(|d| *d) => return,
        };
        match pulled {
            Ok(out) => {
                if out.status == PullStatus::OffsetMoved {
                    if out.next_offset > offset {
                        warn!(queue = ?pq.mq, from = offset, to = out.next_offset, lost = out.next_offset - offset, "messages this group had not consumed were deleted by the broker's retention; continuing after them");
                    } else {
                        warn!(queue = ?pq.mq, from = offset, to = out.next_offset, "offset beyond the end of the queue; moving back to it");
                    }
                }
                let mut msgs = out.messages;
                msgs.iter_mut().for_each(restore_topic);
                offset = out.next_offset;
                let received = msgs.len();
                let Some(for_listener) = pq.add(msgs, out.next_offset, orderly, &core.offsets)
                else {
                    return;
                };
                if received > 0 {
                    core.dispatch(&pq, for_listener);
                }
            }
            Err(e) => {
                warn!(queue = ?pq.mq, offset, error = %e, "pull failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(PULL_RETRY_DELAY) => {}
                    _ = dropped.wait_for(|d| *d) => return,
                }
            }
        }
    }
}
