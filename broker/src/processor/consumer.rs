//! Consumer management processor: heartbeats and unregistering (group membership and its
//! change notices), committed offsets, queue leases of orderly consumers, and what the
//! broker knows of a group (members, progress).

use std::time::{Duration, Instant};

use tracing::{debug, warn};
use weir_protocol::broker::{
    ConsumeStats, ConsumerConnections, ConsumerList, ConsumerOffset, GetConsumeStats,
    GetConsumerConnections, GetConsumerList, Heartbeat, LockBatchMq, LockedQueues, MessageModel,
    QueryConsumerOffset, QueueProgress, UnlockBatchMq, UnregisterClient, UpdateConsumerOffset,
};
use weir_protocol::names;

use crate::broker::Broker;
use crate::clients::{Gone, Link, Notice, RegistryError};
use crate::error::{ProcessError, Processed};
use crate::topics::{validate_group_name, validate_topic_name};

/// Longest a membership notice may wait for room on a client's connection.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(3);

/// A queue is young while its first message lies within this share (percent) of the
/// machine's memory from the commit log's end (RocketMQ's `accessMessageInMemoryMaxRatio`).
const YOUNG_QUEUE_MEMORY_PERCENT: u64 = 40;

/// Whether a queue whose first message lies `behind` bytes from the commit log's end
/// (`None`: it has none) is young on a machine with `memory` bytes.
fn young(behind: Option<u64>, memory: u64) -> bool {
    behind.is_none_or(|b| b <= memory / 100 * YOUNG_QUEUE_MEMORY_PERCENT)
}

/// The machine's memory in bytes (`/proc/meminfo`), or 4 GiB where that cannot be read.
fn physical_memory() -> u64 {
    static MEMORY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kib = m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
                kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
            })
            .map_or(4 << 30, |kib| kib.saturating_mul(1024))
    })
}

impl Broker {
    /// Records a client's heartbeat from `link`; tells the other members of groups it
    /// joined or left.
    /// `owner`: the access key it was signed with, while access control is on.
    pub fn heartbeat(&self, hb: Heartbeat, link: &Link, owner: Option<&str>) -> Processed<()> {
        for d in &hb.consumers {
            validate_group_name(&d.group)?;
        }
        for g in &hb.producer_groups {
            validate_group_name(g)?;
        }
        let limits = self.config.limits.registry();
        let consumers: Vec<_> = hb
            .consumers
            .iter()
            .filter(|d| d.model == MessageModel::Clustering && !d.subscriptions.is_empty())
            .map(|d| d.group.clone())
            .collect();
        let notices = self
            .clients
            .heartbeat(hb, link, &limits, owner)
            .map_err(|e| match e {
                RegistryError::NotYours { .. } => ProcessError::NoPermission(e.to_string()),
                e => ProcessError::Busy(e.to_string()),
            })?;
        // Consumers in clustering mode retry through the group's retry topic: give it a
        // route before the first retry (as RocketMQ does). A pull consumer, which names no
        // subscription, sends nothing back.
        // All of them with one write of the topic file.
        let mut retry_topics = Vec::with_capacity(consumers.len());
        for group in consumers {
            let topic = names::retry_topic(&group);
            match validate_topic_name(&topic) {
                Ok(()) => retry_topics.push(topic),
                Err(e) => self.retry_topics_not_made.record(|count| {
                    warn!(group = %group, error = %e, count, "heartbeats whose consumer groups got no retry topic: {count} since the last report, the latest shown")
                }),
            }
        }
        match self.heartbeat_topics(retry_topics) {
            Ok(no_room) if no_room.is_empty() => {}
            Ok(no_room) => self.retry_topics_not_made.record(|count| {
                let l = &self.config.limits;
                warn!(groups = no_room.len(), first = %no_room[0], max_topics = l.max_topics, kept = l.topic_room_kept_from_heartbeats, count, "heartbeats whose consumer groups got no retry topic, the rest of limits.max_topics being kept from heartbeats (limits.topic_room_kept_from_heartbeats): {count} since the last report; each is made at its group's first send-back")
            }),
            Err(e) => self.retry_topics_not_made.record(|count| {
                warn!(error = %e, count, "heartbeats whose consumer groups got no retry topic: {count} since the last report, the latest shown")
            }),
        }
        self.notify(notices);
        Ok(())
    }

    /// `owner` as for [`Broker::heartbeat`].
    pub fn unregister_client(&self, req: UnregisterClient, owner: Option<&str>) -> Processed<()> {
        let gone = self
            .clients
            .unregister_groups(
                &req.client_id,
                req.producer_group.as_deref(),
                req.consumer_group.as_deref(),
                owner,
            )
            .map_err(|e| ProcessError::NoPermission(e.to_string()))?;
        self.forget(gone, "unregistered");
        Ok(())
    }

    /// A client connection closed: its clients are forgotten.
    pub fn connection_closed(&self, link_id: u64) {
        let gone = self.clients.connection_closed(link_id);
        self.forget(gone, "connection closed");
    }

    /// Tells groups' members, one way and without waiting, that their membership changed.
    fn notify(&self, notices: Vec<Notice>) {
        for n in notices {
            for link in n.members {
                let group = n.group.clone();
                tokio::spawn(async move {
                    let sent = tokio::time::timeout(
                        NOTIFY_TIMEOUT,
                        link.notify_consumer_ids_changed(&group),
                    );
                    match sent.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            debug!(peer = %link.peer(), group = %group, error = %e, "membership notice not sent")
                        }
                        Err(_) => {
                            debug!(peer = %link.peer(), group = %group, "membership notice timed out")
                        }
                    }
                });
            }
        }
    }

    /// Clients are gone: their queue locks go, and their groups hear of it.
    pub(crate) fn forget(&self, gone: Gone, why: &str) {
        for id in &gone.client_ids {
            // Debug: every short-lived client (each `weir send`) ends here.
            debug!(client = %id, why, "client forgotten");
            self.locks.release_client(id);
        }
        for (id, group) in &gone.left_groups {
            debug!(client = %id, group = %group, why, "client left a group");
            self.locks.release_client_in(group, id);
        }
        self.notify(gone.notices);
    }

    pub fn query_consumer_offset(&self, r: QueryConsumerOffset) -> ConsumerOffset {
        ConsumerOffset {
            offset: self
                .store
                .consumer_offsets()
                .query(&r.group, &r.topic, r.queue_id),
        }
    }

    /// Whether a queue is young: it has lost nothing and its first message (offset 0), if
    /// any, is recent (within `YOUNG_QUEUE_MEMORY_PERCENT` of memory from the commit
    /// log's end; an empty queue is young, as RocketMQ's `checkInDiskByConsumeOffset` says).
    /// RocketMQ starts a new consumer group on such a queue at 0, whatever its
    /// consume-from-where, so a topic's first messages are not skipped.
    pub fn queue_is_young(&self, topic: &str, queue_id: u32) -> bool {
        self.store.min_offset(topic, queue_id) == 0
            && young(
                self.store.bytes_written_since(topic, queue_id, 0),
                physical_memory(),
            )
    }

    /// Commits a group's offset on a queue that exists.
    pub fn update_consumer_offset(&self, r: UpdateConsumerOffset) -> Processed<()> {
        validate_group_name(&r.group)?;
        crate::broker::broker_owned_offsets(&r.group, Some(&r.topic))?;
        let t = self.existing_topic(&r.topic)?;
        if r.queue_id >= t.read_queues {
            return Err(ProcessError::InvalidParameter(format!(
                "queue {} does not exist: topic {:?} has {} read queues",
                r.queue_id, t.name, t.read_queues
            )));
        }
        self.commit_offset(&r.group, &r.topic, r.queue_id, r.offset)
    }

    /// Records a consumer's progress (a commit, or a pull carrying one), within
    /// `limits.max_consumer_offsets`.
    pub(crate) fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
    ) -> Processed<()> {
        crate::broker::broker_owned_offsets(group, Some(topic))?;
        let max = self.config.limits.max_consumer_offsets;
        if !self
            .store
            .consumer_offsets()
            .commit_within(group, topic, queue_id, offset, max)
        {
            return Err(ProcessError::Busy(format!(
                "the broker holds {max} consumer offsets already (limits.max_consumer_offsets): group {group:?} cannot start one on {topic}/{queue_id}"
            )));
        }
        self.replication
            .committed_locally(group, topic, queue_id, offset);
        Ok(())
    }

    /// Leases the asked queues that exist and are free (or already the client's).
    pub fn lock_queues(&self, r: LockBatchMq) -> Processed<LockedQueues> {
        validate_group_name(&r.group)?;
        // As a heartbeat's: each lease keeps its holder's id.
        if r.client_id.is_empty() || r.client_id.len() > 255 {
            return Err(ProcessError::InvalidParameter(format!(
                "a client id is 1 to 255 bytes, not {}",
                r.client_id.len()
            )));
        }
        // Only queues that exist are leased (the table stays as small as the topics make
        // it).
        let queues = r
            .queues
            .into_iter()
            .filter(|q| {
                self.topics
                    .get(&q.topic)
                    .is_some_and(|t| q.queue_id < t.read_queues)
            })
            .collect();
        Ok(LockedQueues {
            queues: self
                .locks
                .lock(&r.group, &r.client_id, queues, Instant::now()),
        })
    }

    pub fn unlock_queues(&self, r: UnlockBatchMq) {
        self.locks.unlock(&r.group, &r.client_id, &r.queues);
    }

    pub fn consumer_connections(&self, r: GetConsumerConnections) -> ConsumerConnections {
        ConsumerConnections {
            members: self.clients.members_of(&r.group),
        }
    }

    pub fn consumer_list(&self, r: GetConsumerList) -> ConsumerList {
        ConsumerList {
            client_ids: self.clients.consumers_of(&r.group),
        }
    }

    /// Per queue the group committed on: the broker's end and the group's offset.
    pub fn consume_stats(&self, r: GetConsumeStats) -> ConsumeStats {
        let queues = self
            .store
            .consumer_offsets()
            .of_group(&r.group)
            .into_iter()
            .map(|(k, offset)| QueueProgress {
                broker_offset: self.store.max_offset(&k.topic, k.queue_id),
                topic: k.topic,
                queue_id: k.queue_id,
                consumer_offset: offset,
            })
            .collect();
        ConsumeStats { queues }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_queues_as_rocketmq_tells_them() {
        let gib = 1u64 << 30;
        // Empty, or its first message within 40 % of 100 GiB of the log's end: young.
        assert!(young(None, 100 * gib));
        assert!(young(Some(40 * gib), 100 * gib));
        // One byte further back: old.
        assert!(!young(Some(40 * gib + 1), 100 * gib));
        assert!(physical_memory() > 0);
    }
}
