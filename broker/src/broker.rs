//! The broker's shared state, which every processor and service works on: the store, the
//! topic table, known clients, held pulls, filters, delay levels, queue leases.
//!
//! Nothing here knows a wire protocol: requests arrive typed (see `dispatch`) and clients
//! are reached through [`ClientLink`](crate::clients::ClientLink).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::info;
use weir_protocol::names;
use weir_protocol::route::{RegisterBroker, RegisteredTopics, TopicConfig, perm};
use weir_store::MessageStore;

use crate::clients::ClientRegistry;
use crate::config::BrokerConfig;
use crate::dispatch::FamilyLimits;
use crate::error::{ProcessError, Processed};
use crate::filter::FilterRegistry;
use crate::holds::PullHolds;
use crate::locks::QueueLocks;
use crate::processor::transaction::DecisionGuards;
use crate::replication::Replication;
use crate::service::schedule::DelayLevels;
use crate::topics::{SYSTEM_PREFIX, Topic, TopicError, TopicManager, validate_topic_name};

pub struct Broker {
    pub(crate) config: BrokerConfig,
    /// The address clients are told to use.
    pub(crate) addr: String,
    pub(crate) store: Arc<MessageStore>,
    pub(crate) topics: TopicManager,
    pub(crate) clients: ClientRegistry,
    pub(crate) holds: Arc<PullHolds>,
    /// Bumped when topics change, so registration runs at once.
    pub(crate) topics_changed: watch::Sender<u64>,
    pub(crate) filters: Arc<FilterRegistry>,
    pub(crate) levels: DelayLevels,
    pub(crate) locks: QueueLocks,
    pub(crate) limits: FamilyLimits,
    /// One decision per transaction at a time.
    pub(crate) decisions: DecisionGuards,
    /// Master/slave replication.
    pub(crate) replication: Replication,
    /// Where this master takes slaves, once its HA port listens.
    pub(crate) ha_addr: std::sync::Mutex<Option<String>>,
    /// Access control (off without `[acl] file`).
    pub acl: crate::acl::Acl,
    /// What is counted for the metrics endpoint.
    pub metrics: crate::metrics::BrokerMetrics,
    /// Totals since start, for `weir broker stats`.
    pub(crate) counters: crate::stats::Counters,
    /// Settings that can change while it runs (`weir broker config set`).
    pub(crate) live: crate::live::LiveSettings,
    /// TLS of the broker's own connections (name servers, a slave's master), from
    /// `[tls] ca_file`; none: plaintext.
    pub(crate) tls_client: Option<weir_protocol::net::ClientTls>,
    /// Flow control: sends that waited too long for the store are refused.
    pub send_queue: crate::flow::SendQueue,
    /// Heartbeats whose groups got no retry topic (a client can send them at any rate):
    /// logged at most once per interval.
    pub(crate) retry_topics_not_made: weir_protocol::net::Cause,
}

impl Broker {
    /// What this broker signs with toward its cluster (name servers, a master's HA port):
    /// its `cluster_secret`, under the access key `broker:NAME`. `None` without a secret.
    pub(crate) fn cluster_credentials(&self) -> Option<Arc<weir_protocol::auth::Credentials>> {
        use weir_protocol::auth::Credentials;
        let secret = self.config.cluster_secret.as_deref()?;
        Credentials::new(format!("broker:{}", self.config.broker_name), secret)
            .or_else(|_| Credentials::new("broker", secret))
            .ok()
            .map(Arc::new)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn store(&self) -> &MessageStore {
        &self.store
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Pulls being held (long polling) right now.
    pub fn held_pulls(&self) -> usize {
        self.holds.held()
    }

    /// Held pulls answered early to give another connection its share, since start.
    pub fn held_pulls_ended_early(&self) -> u64 {
        self.holds.preempted()
    }
}

/// Topics only the broker reads and writes, whose records it acts on: half messages, their
/// decisions, transactions given up on, delayed messages waiting. No client sends to them,
/// pulls them, looks them up by key or commits offsets on them: a record sent to the
/// delayed messages' topic was delivered to whatever topic it named, and one sent to the
/// given-up transactions' topic was what an operator's `weir transaction resolve` committed.
pub(crate) fn is_internal_topic(name: &str) -> bool {
    name == names::TRANS_HALF_TOPIC
        || name == names::TRANS_OP_TOPIC
        || name == names::TRANS_DEAD_TOPIC
        || name == names::SCHEDULE_TOPIC
}

/// Refuses a client's send to a group's dead-letter topic: only the broker writes there
/// (a consumer's send-back, or a retry past its most deliveries), and a record a client put
/// there named the topic a console's "re-send" put it in, whatever its sender may write to.
pub(crate) fn refuse_dead_letter_send(topic: &str) -> Processed<()> {
    if topic.starts_with(names::DLQ_PREFIX) {
        return Err(ProcessError::NoPermission(format!(
            "topic {topic:?} holds a group's dead letters, written only by the broker when a consumer gives a message up; clients do not send to it"
        )));
    }
    Ok(())
}

/// Consumer offsets that are the broker's own progress through its own topics (delayed
/// messages waiting, half messages checked): never a client's to commit, reset or delete.
/// A client that moved `%TRANSACTION_CHECK%` far ahead on the half topic hid every later
/// transaction from the check-backs and from `weir transaction list`, for good.
pub(crate) fn broker_owned_offsets(group: &str, topic: Option<&str>) -> Processed<()> {
    let owned_group = group == crate::processor::transaction::TRANSACTION_CHECK_GROUP
        || group == crate::service::schedule::SCHEDULE_GROUP;
    let owned_topic = topic.is_some_and(is_internal_topic);
    if owned_group || owned_topic {
        return Err(ProcessError::NoPermission(format!(
            "the offsets of group {group:?}{} are the broker's own progress: no client commits, resets or deletes them",
            topic
                .map(|t| format!(" on topic {t:?}"))
                .unwrap_or_default()
        )));
    }
    Ok(())
}

impl Broker {
    /// What the broker tells name servers about itself: the header, and its topics as the
    /// body.
    pub(crate) fn registration(&self) -> (RegisterBroker, Bytes) {
        let mut topics = self.topics.all();
        // While the store refuses writes (disk full, failed sync), producers are routed
        // elsewhere; consumers keep reading here.
        if self.store.write_refusal().is_some() {
            topics.iter_mut().for_each(|t| t.perm &= !perm::WRITE);
        }
        // RocketMQ's producers send to a new topic along the route of TBW102: announce it
        // while topics are created on first send (perm 7: read, write, inherit).
        if self.live.auto_create_topic()
            && self.config.net.remoting
            && self.store.write_refusal().is_none()
        {
            let queues = self.live.default_topic_queues();
            topics.push(weir_protocol::route::TopicConfig {
                name: names::AUTO_CREATE_TOPIC_KEY.to_owned(),
                read_queues: queues,
                write_queues: queues,
                perm: perm::READ_WRITE | 1,
            });
        }
        let header = RegisterBroker {
            cluster: self.config.cluster.clone(),
            broker_name: self.config.broker_name.clone(),
            broker_id: self.config.broker_id,
            addr: self.addr.clone(),
            ha: self.ha_status(),
        };
        // A topic list that cannot be encoded (over a frame's 16 MiB: max_topics keeps it
        // well below) registers the broker with no topics rather than not at all.
        let body = RegisteredTopics { topics }.encode().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the topic list does not fit a registration");
            Bytes::new()
        });
        (header, body)
    }

    /// This broker's replication, as it reports it.
    pub fn ha_status(&self) -> weir_protocol::ha::HaStatus {
        let ha_addr = self
            .ha_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let store = &self.store;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.replication
            .status(ha_addr, store.commit_log_max_offset(), |at| {
                store.get_by_offset(at).ok().and_then(|r| {
                    r.view()
                        .ok()
                        .map(|v| now.saturating_sub(v.store_timestamp()) as u64)
                })
            })
    }

    /// Refuses a write on a slave.
    pub(crate) fn check_master(&self) -> Processed<()> {
        if !self.replication.role.is_master() {
            return Err(ProcessError::NotMaster(format!(
                "broker {} (id {}) is a slave: it takes no writes; send to its master",
                self.config.broker_name, self.config.broker_id
            )));
        }
        Ok(())
    }

    pub(crate) fn topics_updated(&self) {
        self.topics_changed.send_modify(|v| *v += 1);
    }

    /// The topic a send goes to; created, when auto-create is on, with `queues` queues (at
    /// most the broker's default, which `None` means).
    pub(crate) fn topic_for_send(&self, name: &str, queues: Option<u32>) -> Processed<Arc<Topic>> {
        validate_topic_name(name)?;
        if is_internal_topic(name) || name == names::AUTO_CREATE_TOPIC_KEY {
            return Err(ProcessError::NoPermission(format!(
                "topic {name:?} is the broker's own; clients do not send to it"
            )));
        }

        if let Some(t) = self.topics.get(name) {
            return Ok(t);
        }
        if !self.live.auto_create_topic() {
            return Err(ProcessError::TopicNotFound(format!(
                "topic {name:?} does not exist and auto-create is off; create it first (weir topic create {name})"
            )));
        }
        if name.starts_with(SYSTEM_PREFIX) || names::is_system_topic(name) {
            return Err(ProcessError::NoPermission(format!(
                "topic {name:?} is a system topic; it is not created by sending"
            )));
        }
        self.check_topic_room()?;
        let default = self.live.default_topic_queues();
        let queues = queues.map_or(default, |q| q.clamp(1, default));
        let t = self.topics.get_or_create(name, queues)?;
        info!(topic = name, queues = t.write_queues, "topic auto-created");
        self.topics_updated();
        // The table's own entry, which keeps what its sends go through (a new one if the
        // topic was deleted since: this send still goes where it was made).
        Ok(self
            .topics
            .get(name)
            .unwrap_or_else(|| Arc::new(Topic::new(t))))
    }

    /// A topic that must exist.
    pub(crate) fn existing_topic(&self, name: &str) -> Processed<Arc<Topic>> {
        self.topics.get(name).ok_or_else(|| {
            ProcessError::TopicNotFound(format!(
                "topic {name:?} does not exist on broker {}",
                self.config.broker_name
            ))
        })
    }

    /// Refuses a new topic once the broker holds `max_topics`.
    pub(crate) fn check_topic_room(&self) -> Processed<()> {
        let max = self.config.limits.max_topics;
        if self.topics.count() >= max {
            return Err(ProcessError::Busy(TopicError::TooMany { max }.to_string()));
        }
        Ok(())
    }

    /// [`Broker::system_topic`] for many names at once (a heartbeat's retry topics): one
    /// write of the topic file, one log line and one registration for all, while more than
    /// `limits.topic_room_kept_from_heartbeats` places of `limits.max_topics` are free.
    /// Returns the names left uncreated for want of room.
    pub(crate) fn heartbeat_topics(&self, names: Vec<String>) -> Processed<Vec<String>> {
        let configs = names.into_iter().map(system_topic_config).collect();
        let l = &self.config.limits;
        let room = l
            .max_topics
            .saturating_sub(l.topic_room_kept_from_heartbeats);
        let (created, no_room) = self.topics.create_all_absent(configs, room)?;
        if let Some(first) = created.first() {
            info!(count = created.len(), first = %first, "system topics created");
            self.topics_updated();
        }
        Ok(no_room)
    }

    /// A system topic of one read/write queue (retry, dead-letter), created if absent;
    /// routed at once when created.
    pub(crate) fn system_topic(&self, name: &str) -> Processed<TopicConfig> {
        if self.topics.get(name).is_none() {
            self.check_topic_room()?;
        }
        let (t, created) = self
            .topics
            .create_if_absent(system_topic_config(name.to_owned()))?;
        if created {
            info!(topic = name, "system topic created");
            self.topics_updated();
        }
        Ok(t)
    }
}

/// A system topic (retry, dead-letter): one queue, read and write.
fn system_topic_config(name: String) -> TopicConfig {
    TopicConfig {
        name,
        read_queues: 1,
        write_queues: 1,
        perm: perm::READ_WRITE,
    }
}
