//! Operators' group requests: resetting a group's offsets on a topic, deleting a group.

use tracing::{info, warn};
use weir_protocol::admin::{
    DeleteGroup, GroupDeleted, OffsetsReset, QueueReset, ResetOffset, ResetTarget,
};
use weir_protocol::names;

use crate::broker::Broker;
use crate::error::{ProcessError, Processed};
use crate::topics::validate_group_name;

impl Broker {
    /// Refuses while `group` has live members here: their next commit would undo `what`.
    fn check_no_members(&self, group: &str, what: &str) -> Processed<()> {
        let members = self.clients.consumers_of(group);
        if members.is_empty() {
            return Ok(());
        }
        Err(ProcessError::GroupHasMembers(format!(
            "group {group:?} has {} live member(s) on broker {} ({}): stop its consumers before you {what}",
            members.len(),
            self.config.broker_name,
            members.join(", ")
        )))
    }

    /// Writes the consumer offsets now (an operator's change a crash must not undo); the
    /// periodic persist retries when this fails.
    async fn persist_offsets_now(&self) {
        let store = std::sync::Arc::clone(&self.store);
        match tokio::task::spawn_blocking(move || store.persist_offsets()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "consumer offsets not persisted at once; the periodic persist retries")
            }
            Err(e) => {
                warn!(error = %e, "consumer offsets not persisted at once; the periodic persist retries")
            }
        }
    }

    /// Commits, on every read queue of the topic, the offset the target names.
    pub async fn reset_offset(&self, r: ResetOffset) -> Processed<OffsetsReset> {
        validate_group_name(&r.group)?;
        let t = self.existing_topic(&r.topic)?;
        if !r.force {
            self.check_no_members(&r.group, "reset its offsets")?;
        }
        let offsets = self.store.consumer_offsets();
        let queues: Vec<QueueReset> = (0..t.read_queues)
            .map(|q| {
                let new = match r.to {
                    ResetTarget::Earliest => self.store.min_offset(&r.topic, q),
                    ResetTarget::Latest => self.store.max_offset(&r.topic, q),
                    ResetTarget::Timestamp(ts) => self.store.offset_for_timestamp(&r.topic, q, ts),
                };
                let old = offsets.query(&r.group, &r.topic, q);
                offsets.commit(&r.group, &r.topic, q, new);
                QueueReset {
                    queue_id: q,
                    old,
                    new,
                }
            })
            .collect();
        self.persist_offsets_now().await;
        info!(group = %r.group, topic = %r.topic, to = ?r.to, force = r.force, queues = queues.len(), "consumer offsets reset");
        Ok(OffsetsReset { queues })
    }

    /// Removes the group's offsets (every topic), its retry topic and its filters. Its
    /// dead-letter topic stays: it holds messages no one consumed, for an operator to look
    /// at.
    pub async fn delete_group(&self, r: DeleteGroup) -> Processed<GroupDeleted> {
        validate_group_name(&r.group)?;
        self.check_no_members(&r.group, "delete it")?;
        let removed = self.store.consumer_offsets().remove(&r.group, None);
        let retry = names::retry_topic(&r.group);
        let retry_topic_deleted = match self
            .delete_topic(weir_protocol::broker::DeleteTopic { topic: retry })
            .await
        {
            Ok(()) => true,
            Err(ProcessError::TopicNotFound(_)) => false,
            Err(e) => return Err(e),
        };
        // Its filters too (a group created again under the name starts unfiltered), and
        // their stored components unless another registration uses them.
        let filters = std::sync::Arc::clone(&self.filters);
        let group = r.group.clone();
        let filters_removed = tokio::task::spawn_blocking(move || filters.remove_group(&group))
            .await
            .map_err(|e| ProcessError::Internal(format!("filter remove task failed: {e}")))??
            .len();
        self.persist_offsets_now().await;
        info!(group = %r.group, offsets = removed, retry_topic_deleted, filters = filters_removed, "consumer group deleted");
        Ok(GroupDeleted {
            offsets_removed: u32::try_from(removed).unwrap_or(u32::MAX),
            retry_topic_deleted,
            filters_removed: u32::try_from(filters_removed).unwrap_or(u32::MAX),
        })
    }
}
