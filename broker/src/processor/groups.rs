//! Operators' group requests: resetting a group's offsets on a topic, deleting a group,
//! and a summary of every group this broker knows (for lists).

use std::collections::BTreeMap;
use tracing::{info, warn};

use weir_protocol::admin::{
    DeleteGroup, GetGroupSummaries, GroupDeleted, GroupSummaries, GroupSummary,
    MAX_GROUP_SUMMARIES, MAX_GROUP_SUMMARIES_BYTES, MAX_SUMMARY_MEMBER_IDS, MAX_SUMMARY_TOPICS,
    OffsetsReset, QueueReset, ResetOffset, ResetTarget,
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
        crate::broker::broker_owned_offsets(&r.group, Some(&r.topic))?;
        let t = self.existing_topic(&r.topic)?;
        if !r.force {
            self.check_no_members(&r.group, "reset its offsets")?;
        }
        let offsets = self.store.consumer_offsets();
        let max = self.config.limits.max_consumer_offsets;
        let new_entries = (0..t.read_queues)
            .filter(|&q| offsets.query(&r.group, &r.topic, q).is_none())
            .count();
        if offsets.len().saturating_add(new_entries) > max {
            return Err(ProcessError::Busy(format!(
                "the broker holds {max} consumer offsets already (limits.max_consumer_offsets): group {:?} cannot start any on {}",
                r.group, r.topic
            )));
        }
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
        crate::broker::broker_owned_offsets(&r.group, None)?;
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

    /// Every group with a live member here or a committed offset here whose name
    /// contains `r.contains`, sorted, at most `r.limit` (0, or above the cap: the cap).
    /// One pass over the members and one over the offsets.
    pub fn group_summaries(&self, r: GetGroupSummaries) -> GroupSummaries {
        let limit = match r.limit {
            0 => MAX_GROUP_SUMMARIES,
            n => n.min(MAX_GROUP_SUMMARIES),
        } as usize;
        let wanted = |g: &str| r.contains.is_empty() || g.contains(&r.contains);
        let mut groups: BTreeMap<String, GroupSummary> = BTreeMap::new();
        let blank = |group: &str| GroupSummary {
            group: group.to_owned(),
            model: None,
            members: 0,
            member_ids: Vec::new(),
            subscriptions: Vec::new(),
            queues: 0,
            lag: 0,
        };
        for (group, live) in self.clients.consumer_groups() {
            if !wanted(&group) {
                continue;
            }
            let mut s = blank(&group);
            s.model = Some(live.model);
            s.members = u32::try_from(live.client_ids.len()).unwrap_or(u32::MAX);
            s.member_ids = live.client_ids;
            s.member_ids.truncate(MAX_SUMMARY_MEMBER_IDS);
            s.subscriptions = live.topics.into_iter().take(MAX_SUMMARY_TOPICS).collect();
            groups.insert(group, s);
        }
        for (k, offset) in self.store.consumer_offsets().all() {
            if !wanted(&k.group) {
                continue;
            }
            let behind = self
                .store
                .max_offset(&k.topic, k.queue_id)
                .saturating_sub(offset);
            let s = groups
                .entry(k.group.clone())
                .or_insert_with(|| blank(&k.group));
            s.queues = s.queues.saturating_add(1);
            s.lag = s.lag.saturating_add(behind);
        }
        let matching = groups.len();
        let mut bytes = 0usize;
        let shown: Vec<GroupSummary> = groups
            .into_values()
            .take(limit)
            .take_while(|s| {
                bytes = bytes.saturating_add(summary_bytes(s));
                bytes <= MAX_GROUP_SUMMARIES_BYTES
            })
            .collect();
        GroupSummaries {
            more: u32::try_from(matching.saturating_sub(shown.len())).unwrap_or(u32::MAX),
            groups: shown,
        }
    }
}

/// About what a summary takes on the wire: its names and a few bytes per number.
fn summary_bytes(s: &GroupSummary) -> usize {
    let names = |v: &[String]| v.iter().map(|n| n.len().saturating_add(8)).sum::<usize>();
    s.group
        .len()
        .saturating_add(names(&s.member_ids))
        .saturating_add(names(&s.subscriptions))
        .saturating_add(48)
}
