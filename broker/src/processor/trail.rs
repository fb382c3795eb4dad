//! What the broker knows of one stored message's delivery (`GetMessageTrail`, the
//! console's delivery trail): the groups that committed an offset on its queue, whether
//! each is past it, and each group's copies of it, found through the key index, where
//! `ORIGIN_MESSAGE_ID` is indexed like a key.
//!
//! Bounded: at most [`MAX_TRAIL_GROUPS`] groups, each two index lookups (its `%RETRY%` and
//! `%DLQ%` topics) of at most [`MAX_TRAIL_COPIES`] records, and one lookup in `%SCHEDULE%`
//! for retries still waiting for their delay. Copies stored before the broker indexed
//! `ORIGIN_MESSAGE_ID` are not found.

use std::collections::BTreeMap;

use weir_protocol::admin::{
    CopyKind, GetMessageTrail, GroupTrail, MAX_TRAIL_COPIES, MAX_TRAIL_GROUPS, MessageCopy,
    MessageTrail,
};
use weir_protocol::names::{self, SCHEDULE_TOPIC, property};
use weir_store::StoredRecord;

use crate::broker::Broker;
use crate::error::{ProcessError, Processed};
use crate::service::schedule::SCHEDULE_GROUP;

/// Most retries waiting for their delay one trail lists (across its groups).
const MAX_WAITING: usize = 64;

impl Broker {
    pub fn message_trail(&self, req: GetMessageTrail) -> Processed<MessageTrail> {
        if req.origin_msg_id.is_empty() {
            return Err(ProcessError::InvalidParameter(
                "a trail needs the message's id".into(),
            ));
        }
        let id = req.origin_msg_id.as_str();
        let max_groups = req.max_groups.clamp(1, MAX_TRAIL_GROUPS) as usize;
        let max_copies = MAX_TRAIL_COPIES as usize;
        let offsets = self.store.consumer_offsets();
        let mut on_queue = offsets.on_queue(&req.topic, req.queue_id);
        on_queue.sort();
        let more_groups =
            u32::try_from(on_queue.len().saturating_sub(max_groups)).unwrap_or(u32::MAX);
        on_queue.truncate(max_groups);

        // Retries waiting for their delay (their level's scheduler is not past them yet),
        // by the retry topic they are due on.
        let mut waiting: BTreeMap<String, Vec<MessageCopy>> = BTreeMap::new();
        for rec in self.store.query_by_property(
            SCHEDULE_TOPIC,
            property::ORIGIN_MESSAGE_ID,
            id,
            MAX_WAITING,
        ) {
            let Some((due_on, copy)) = copy_of(&rec, CopyKind::RetryWaiting) else {
                continue;
            };
            let delivered = offsets
                .query(SCHEDULE_GROUP, SCHEDULE_TOPIC, copy.queue_id)
                .is_some_and(|progress| progress > copy.queue_offset);
            if !delivered {
                waiting.entry(due_on).or_default().push(copy);
            }
        }

        let mut groups = Vec::with_capacity(on_queue.len());
        for (group, consumer_offset) in on_queue {
            let retry_topic = names::retry_topic(&group);
            let mut copies = waiting.remove(&retry_topic).unwrap_or_default();
            copies.truncate(max_copies);
            for (topic, kind) in [
                (retry_topic, CopyKind::Retry),
                (names::dlq_topic(&group), CopyKind::DeadLetter),
            ] {
                for rec in self.store.query_by_property(
                    &topic,
                    property::ORIGIN_MESSAGE_ID,
                    id,
                    max_copies,
                ) {
                    let Some((_, mut copy)) = copy_of(&rec, kind) else {
                        continue;
                    };
                    if kind == CopyKind::Retry {
                        copy.consumed = offsets
                            .query(&group, &topic, copy.queue_id)
                            .map(|o| o > copy.queue_offset);
                    }
                    copies.push(copy);
                }
            }
            groups.push(GroupTrail {
                group,
                consumer_offset,
                copies,
            });
        }
        Ok(MessageTrail {
            groups,
            more_groups,
            queue_max_offset: self.store.max_offset(&req.topic, req.queue_id),
        })
    }
}

/// A copy as the trail lists it, and the topic it is (or will be) delivered on.
fn copy_of(rec: &StoredRecord, kind: CopyKind) -> Option<(String, MessageCopy)> {
    let v = rec.view().ok()?;
    let due_on = match kind {
        CopyKind::RetryWaiting => v.property(property::REAL_TOPIC)?.to_owned(),
        CopyKind::Retry | CopyKind::DeadLetter => v.topic().to_owned(),
    };
    Some((
        due_on,
        MessageCopy {
            kind,
            topic: v.topic().to_owned(),
            msg_id: v.message_id().to_text(),
            queue_id: v.queue_id(),
            queue_offset: v.queue_offset(),
            store_timestamp: v.store_timestamp(),
            reconsume_times: v.reconsume_times(),
            consumed: None,
        },
    ))
}
