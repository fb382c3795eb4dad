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
mod config;
mod consume;
mod listener;
mod offsets;
pub(crate) mod pool;
mod pull_failure;
mod queue;
mod rebalance;

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

pub use config::{ConsumeFrom, PushConsumerConfig};
use consume::{pull_loop, queue_ref};
pub use listener::*;
pub use pull_failure::{OnFilterFailure, OnPullError};
use rebalance::rebalance_loop;

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
}
