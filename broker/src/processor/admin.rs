//! Admin processor: topics (create, update, delete, list, stats), queue offsets and
//! lookups (by time, by key, by message id).

use tracing::info;
use weir_protocol::broker::{
    CreateTopic, DeleteTopic, GetQueueOffsets, GetTopicStats, OffsetAnswer, QueryMessageByKey,
    QueueOffsets, SearchOffsetByTimestamp, TopicStats, ViewMessageById,
};
use weir_protocol::route::{TopicConfig, TopicList, perm};
use weir_protocol::{MessageId, RecordError};
use weir_store::StoredRecord;

use crate::broker::Broker;
use crate::error::{ProcessError, Processed};
use crate::topics::SYSTEM_PREFIX;

/// Most messages one lookup by key returns.
const MAX_BY_KEY: u32 = 64;

impl Broker {
    pub fn create_topic(&self, req: CreateTopic) -> Processed<()> {
        if req.topic.name.starts_with(SYSTEM_PREFIX)
            || weir_protocol::names::is_system_topic(&req.topic.name)
        {
            return Err(ProcessError::NoPermission(format!(
                "{:?}: names starting with {SYSTEM_PREFIX} are reserved for system topics",
                req.topic.name
            )));
        }
        if self.topics.get(&req.topic.name).is_none() {
            self.check_topic_room()?;
        }
        let t = self.topics.upsert(req.topic).map_err(|e| match e {
            e @ crate::topics::TopicError::Write(_) => ProcessError::Topics(e),
            e => ProcessError::InvalidParameter(e.to_string()),
        })?;
        info!(topic = %t.name, read = t.read_queues, write = t.write_queues, perm = perm::describe(t.perm), "topic created or updated");
        self.topics_updated();
        Ok(())
    }

    pub fn delete_topic(&self, req: DeleteTopic) -> Processed<()> {
        if !self.topics.remove(&req.topic)? {
            return Err(ProcessError::TopicNotFound(format!(
                "topic {:?} does not exist",
                req.topic
            )));
        }
        self.store.delete_topic(&req.topic)?;
        self.holds.forget_topic(&req.topic);
        info!(topic = %req.topic, "topic deleted");
        self.topics_updated();
        Ok(())
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
    pub fn query_by_key(&self, req: QueryMessageByKey) -> Processed<Vec<StoredRecord>> {
        if crate::broker::is_internal_topic(&req.topic) {
            return Err(ProcessError::NoPermission(format!(
                "topic {:?} is the broker's own; see weir transaction list",
                req.topic
            )));
        }
        let found =
            self.store
                .query_by_key(&req.topic, &req.key, req.max.clamp(1, MAX_BY_KEY) as usize);
        if found.is_empty() {
            return Err(ProcessError::NotFound(format!(
                "no message of topic {:?} has key {:?}",
                req.topic, req.key
            )));
        }
        Ok(found)
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
