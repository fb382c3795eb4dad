//! Admin processor: topics (create, update, delete, list, stats), queue offsets and
//! lookups (by time, by key, by message id).

use std::collections::BTreeMap;

use tracing::{info, warn};
use weir_protocol::broker::{
    CreateTopic, DeleteTopic, GetQueueOffsets, GetTopicStats, OffsetAnswer, QueryMessageByKey,
    QueueOffsets, SearchOffsetByTimestamp, TopicStats, ViewMessageById,
};
use weir_protocol::net::AnswerRoom;
use weir_protocol::route::{TopicConfig, TopicList, perm};
use weir_protocol::{MessageId, RecordError, names};
use weir_store::StoredRecord;

use crate::broker::Broker;
use crate::error::{ProcessError, Processed};
use crate::processor::pull::readable_in;
use crate::topics::{SYSTEM_PREFIX, Topic};

/// Most messages one lookup by key returns.
const MAX_BY_KEY: u32 = 64;
/// Most bytes of records one lookup by key returns (as a pull), the newest first, at
/// least one.
const MAX_BY_KEY_BYTES: usize = 4 << 20;

impl Broker {
    pub fn create_topic(&self, req: CreateTopic) -> Processed<()> {
        if req.topic.name.starts_with(SYSTEM_PREFIX)
            || weir_protocol::names::is_system_topic(&req.topic.name)
        {
            return Err(ProcessError::NoPermission(format!(
                "{:?} is a system topic, reserved for the broker (names starting with {SYSTEM_PREFIX} or RMQ_SYS_, {}, {}): clients do not create them",
                req.topic.name,
                weir_protocol::names::AUTO_CREATE_TOPIC_KEY,
                weir_protocol::names::TRANS_DEAD_TOPIC,
            )));
        }
        let mut config = req.topic;
        if config.write_queues > config.read_queues {
            return Err(ProcessError::InvalidParameter(format!(
                "topic {:?}: {} write queues but {} read queues: messages sent to the queues past the read ones could not be consumed",
                config.name, config.write_queues, config.read_queues
            )));
        }
        match self.topics.get(&config.name) {
            None => self.check_topic_room()?,
            Some(old) if config.read_queues < old.read_queues => {
                let keep =
                    self.readable_queues_needed(&config.name, config.read_queues, old.read_queues);
                if keep > config.read_queues {
                    info!(topic = %config.name, asked = config.read_queues, kept = keep, "read queues kept: the queues past the asked count still hold unconsumed messages");
                    config.read_queues = keep;
                }
            }
            Some(_) => {}
        }
        let before = self.topics.get(&config.name);
        let t = self.topics.upsert(config).map_err(|e| match e {
            e @ crate::topics::TopicError::Write(_) => ProcessError::Topics(e),
            e => ProcessError::InvalidParameter(e.to_string()),
        })?;
        // An update that changes nothing is answered the same, and neither logged nor
        // registered again (a client repeating it must not flood either).
        if before.as_deref().map(Topic::config) != Some(&t) {
            info!(topic = %t.name, read = t.read_queues, write = t.write_queues, perm = perm::describe(t.perm), "topic created or updated");
            self.topics_updated();
        }
        Ok(())
    }

    /// How many read queues `topic` needs so that no queue from `asked` to `have` holding
    /// unconsumed messages becomes unreadable: one past the highest such queue, at least
    /// `asked`. A queue is drained when it stores nothing, or when some group committed on
    /// it and every group that did is at its end (a queue no group read is not drained:
    /// a group may yet read it from its start).
    fn readable_queues_needed(&self, topic: &str, asked: u32, have: u32) -> u32 {
        let mut lowest: BTreeMap<u32, u64> = BTreeMap::new();
        for (k, offset) in self.store.consumer_offsets().all() {
            if k.topic == topic {
                let slot = lowest.entry(k.queue_id).or_insert(offset);
                *slot = (*slot).min(offset);
            }
        }
        (asked..have)
            .rev()
            .find(|&q| {
                let max = self.store.max_offset(topic, q);
                let stored = max > self.store.min_offset(topic, q);
                stored && lowest.get(&q).is_none_or(|&o| o < max)
            })
            .map_or(asked, |q| q.saturating_add(1).max(asked))
    }

    /// Deletes a topic here: its entry (so the next registration stops the name servers
    /// routing it), its consume queues, and every group's offsets on it (a topic created
    /// again under the name starts at offset 0). Its records leave the commit log with
    /// retention. The broker's own topics are refused; a group's retry and dead-letter
    /// topics may go.
    pub async fn delete_topic(&self, req: DeleteTopic) -> Processed<()> {
        let name = req.topic.as_str();
        if weir_protocol::names::is_system_topic(name)
            && !name.starts_with(names::RETRY_PREFIX)
            && !name.starts_with(names::DLQ_PREFIX)
        {
            return Err(ProcessError::NoPermission(format!(
                "topic {name:?} is the broker's own: it cannot be deleted"
            )));
        }
        if !self.topics.remove(name)? {
            return Err(ProcessError::TopicNotFound(format!(
                "topic {name:?} does not exist on broker {}",
                self.config.broker_name
            )));
        }
        self.topics_updated();
        let offsets = self.drop_topic_data(name).await?;
        info!(topic = name, offsets, "topic deleted");
        Ok(())
    }

    /// What a deleted topic leaves (its config already removed): held pulls, every
    /// group's offsets on it, its queues (its messages leave with retention). A master's
    /// delete, and a slave following it. How many offsets were removed.
    pub(crate) async fn drop_topic_data(&self, name: &str) -> Processed<usize> {
        self.holds.forget_topic(name);
        // Persisted below with the queues' removal.
        let offsets = self.store.consumer_offsets().remove_topic(name);
        let store = std::sync::Arc::clone(&self.store);
        let topic = name.to_owned();
        tokio::task::spawn_blocking(move || {
            store.delete_topic(&topic)?;
            // The periodic persist retries what fails here.
            if let Err(e) = store.persist_offsets() {
                warn!(topic, error = %e, "consumer offsets not persisted after deleting the topic");
            }
            Ok::<_, weir_store::StoreError>(())
        })
        .await
        .map_err(|e| ProcessError::Internal(format!("deleting topic {name:?}: {e}")))??;
        Ok(offsets)
    }

    pub fn all_topics(&self) -> TopicList {
        TopicList {
            topics: self.topics.all().into_iter().map(|t| t.name).collect(),
        }
    }

    pub fn topic_stats(&self, req: GetTopicStats) -> Processed<TopicStats> {
        let config = self.existing_topic(&req.topic)?;
        let queues = (0..config.read_queues)
            .map(|q| QueueOffsets {
                min: self.store.min_offset(&req.topic, q),
                max: self.store.max_offset(&req.topic, q),
            })
            .collect();
        Ok(TopicStats {
            config: TopicConfig::clone(&config),
            queues,
        })
    }

    pub fn queue_offsets(&self, r: GetQueueOffsets) -> QueueOffsets {
        QueueOffsets {
            min: self.store.min_offset(&r.topic, r.queue_id),
            max: self.store.max_offset(&r.topic, r.queue_id),
        }
    }

    pub fn search_offset(&self, r: SearchOffsetByTimestamp) -> OffsetAnswer {
        OffsetAnswer {
            offset: self
                .store
                .offset_for_timestamp(&r.topic, r.queue_id, r.timestamp),
        }
    }

    /// Messages of a topic carrying a key, newest first.
    /// `room`: the most bytes the answer may take (see [`AnswerRoom`]).
    pub fn query_by_key(
        &self,
        req: QueryMessageByKey,
        room: &AnswerRoom,
    ) -> Processed<Vec<StoredRecord>> {
        if crate::broker::is_internal_topic(&req.topic) {
            return Err(ProcessError::NoPermission(format!(
                "topic {:?} is the broker's own; see weir transaction list",
                req.topic
            )));
        }
        let found =
            self.store
                .query_by_key(&req.topic, &req.key, req.max.clamp(1, MAX_BY_KEY) as usize);
        let Some(first) = found.first() else {
            return Err(ProcessError::NotFound(format!(
                "no message of topic {:?} has key {:?}",
                req.topic, req.key
            )));
        };
        // Within a pull's bytes (64 messages of 4 MiB made 268 MB answers, refused then
        // as past the frame maximum), and within the connection's room.
        let fits = readable_in(room.bytes());
        if first.len() > fits {
            room.refused(first.len());
            return Err(ProcessError::Busy(format!(
                "busy: the newest message with key {:?} ({} bytes) does not fit in this connection's room for answers ({fits} bytes of records) while the broker's connections together hold net.max_pending_bytes_total of answers their clients have not read; retry later",
                req.key,
                first.len()
            )));
        }
        let cap = fits.min(MAX_BY_KEY_BYTES).max(first.len());
        let mut bytes = 0usize;
        Ok(found
            .into_iter()
            .take_while(|r| {
                bytes = bytes.saturating_add(r.len());
                bytes <= cap
            })
            .collect())
    }

    pub fn view_by_id(&self, req: ViewMessageById) -> Processed<StoredRecord> {
        let id: MessageId = req
            .msg_id
            .parse()
            .map_err(|e: RecordError| ProcessError::InvalidParameter(e.to_string()))?;
        self.store
            .get_by_id(&id)
            .map_err(|e| ProcessError::NotFound(e.to_string()))
    }
}
