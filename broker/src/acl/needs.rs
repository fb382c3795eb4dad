//! What each request needs: the one table from request to permissions.
//!
//! | request | needs |
//! |---|---|
//! | send, send batch | `pub` on the topic |
//! | pull, query / update consumer offset | `sub` on the group and on the topic |
//! | heartbeat | `pub` on each producer group; `sub` on each consumer group and topic subscribed |
//! | send back | `sub` on the group; once the record is read, `sub` on its topic (`Broker::send_back`) |
//! | lock / unlock queues, consumer list / connections / consume stats | `sub` on the group |
//! | topic stats, queue offsets, search offset, query by key | `sub` on the topic |
//! | create / delete topic | `admin` on the topic |
//! | upload / remove filter | `admin` on the group |
//! | list filters | `sub` on the group; without a group, cluster admin |
//! | end transaction | `pub` on the producer group |
//! | list transactions | `admin` on the producer group; without one, cluster admin |
//! | reset offsets | `admin` on the group, `sub` on the topic |
//! | delete group | `admin` on the group |
//! | all topics, group summaries, view by id, resolve transaction, broker stats, get / set broker config | cluster admin |
//! | unregister client | `pub` on each producer group and `sub` on each consumer group of that client |
//!
//! A group's retry and dead-letter topics (`%RETRY%<group>`, `%DLQ%<group>`) belong to the
//! group: any permission on them is asked of the group (`sub`, or `admin` for `admin`).

use std::fmt;

use weir_protocol::names::{DLQ_PREFIX, RETRY_PREFIX};

use super::rules::Perm;
use crate::dispatch::BrokerRequest;

/// One permission a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    Topic(&'a str, Perm),
    Group(&'a str, Perm),
    /// `admin = true` on the principal.
    Cluster,
}

impl fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Topic(t, p) => write!(f, "{p} on topic {t:?}"),
            Need::Group(g, p) => write!(f, "{p} on group {g:?}"),
            Need::Cluster => f.write_str("cluster admin (admin = true)"),
        }
    }
}

/// Which counter a refusal of this need goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeedKind {
    TopicPub,
    TopicSub,
    TopicAdmin,
    GroupPub,
    GroupSub,
    GroupAdmin,
    Cluster,
}

impl Need<'_> {
    pub fn kind(&self) -> NeedKind {
        match self {
            Need::Topic(_, p) if p.contains(Perm::ADMIN) => NeedKind::TopicAdmin,
            Need::Topic(_, p) if p.contains(Perm::PUB) => NeedKind::TopicPub,
            Need::Topic(..) => NeedKind::TopicSub,
            Need::Group(_, p) if p.contains(Perm::ADMIN) => NeedKind::GroupAdmin,
            Need::Group(_, p) if p.contains(Perm::PUB) => NeedKind::GroupPub,
            Need::Group(..) => NeedKind::GroupSub,
            Need::Cluster => NeedKind::Cluster,
        }
    }
}

/// A permission on a topic, asked of its group for a group's own topics.
fn topic(t: &str, p: Perm) -> Need<'_> {
    match t
        .strip_prefix(RETRY_PREFIX)
        .or_else(|| t.strip_prefix(DLQ_PREFIX))
    {
        Some(group) if p.contains(Perm::ADMIN) => Need::Group(group, Perm::ADMIN),
        Some(group) => Need::Group(group, Perm::SUB),
        None => Need::Topic(t, p),
    }
}

/// What reading a record of topic `t` needs (`sub`, asked of the group for a group's own
/// topics).
pub fn read_need(t: &str) -> Need<'_> {
    topic(t, Perm::SUB)
}

fn group(g: &str, p: Perm) -> Need<'_> {
    Need::Group(g, p)
}

/// The permissions `req` needs, all of them.
pub fn needs(req: &BrokerRequest) -> Vec<Need<'_>> {
    use BrokerRequest as R;
    match req {
        R::Send { req, .. } => vec![topic(&req.topic, Perm::PUB)],
        R::SendBatch { req, .. } => vec![topic(&req.topic, Perm::PUB)],
        R::Pull(r) | R::PullSql { req: r, .. } => {
            vec![group(&r.group, Perm::SUB), topic(&r.topic, Perm::SUB)]
        }
        R::QueryConsumerOffset(r) => {
            vec![group(&r.group, Perm::SUB), topic(&r.topic, Perm::SUB)]
        }
        R::UpdateConsumerOffset(r) => {
            vec![group(&r.group, Perm::SUB), topic(&r.topic, Perm::SUB)]
        }
        R::Heartbeat(hb) => {
            let mut n: Vec<Need<'_>> = hb
                .producer_groups
                .iter()
                .map(|g| group(g, Perm::PUB))
                .collect();
            for c in &hb.consumers {
                n.push(group(&c.group, Perm::SUB));
                n.extend(c.subscriptions.iter().map(|(t, _)| topic(t, Perm::SUB)));
            }
            n
        }
        R::SendBack(r) => vec![group(&r.group, Perm::SUB)],
        R::LockQueues(r) => vec![group(&r.group, Perm::SUB)],
        R::UnlockQueues(r) => vec![group(&r.group, Perm::SUB)],
        R::ConsumerConnections(r) => vec![group(&r.group, Perm::SUB)],
        R::ConsumerList(r) => vec![group(&r.group, Perm::SUB)],
        R::ConsumeStats(r) => vec![group(&r.group, Perm::SUB)],
        R::TopicStats(r) => vec![topic(&r.topic, Perm::SUB)],
        R::QueueOffsets(r) => vec![topic(&r.topic, Perm::SUB)],
        R::SearchOffset(r) => vec![topic(&r.topic, Perm::SUB)],
        R::QueryByKey(r) => vec![topic(&r.topic, Perm::SUB)],
        R::CreateTopic(r) => vec![topic(&r.topic.name, Perm::ADMIN)],
        R::DeleteTopic(r) => vec![topic(&r.topic, Perm::ADMIN)],
        R::UploadFilter { req, .. } => vec![group(&req.group, Perm::ADMIN)],
        R::RemoveFilter(r) => vec![group(&r.group, Perm::ADMIN)],
        R::ResetFilter(r) => vec![group(&r.group, Perm::ADMIN)],
        R::ListFilters(r) => match &r.group {
            Some(g) => vec![group(g, Perm::SUB)],
            None => vec![Need::Cluster],
        },
        R::EndTransaction(r) => vec![group(&r.producer_group, Perm::PUB)],
        R::ListTransactions(r) => match &r.producer_group {
            Some(g) => vec![group(g, Perm::ADMIN)],
            None => vec![Need::Cluster],
        },
        R::ResetOffset(r) => vec![group(&r.group, Perm::ADMIN), topic(&r.topic, Perm::SUB)],
        R::DeleteGroup(r) => vec![group(&r.group, Perm::ADMIN)],
        // A trail names every group on the queue.
        R::AllTopics
        | R::ViewById(_)
        | R::MessageTrail(_)
        | R::GroupSummaries(_)
        | R::ResolveTransaction(_)
        | R::BrokerStats
        | R::BrokerConfig
        | R::SetBrokerConfig(_) => vec![Need::Cluster],
        // (The client's groups are the broker's to know: see `Broker::dispatch`.)
        R::UnregisterClient(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use weir_protocol::admin::{DeleteGroup, ResetOffset, ResetTarget, SetBrokerConfig};

    use super::*;

    #[test]
    fn operators_requests_need_admin() {
        let reset = R::ResetOffset(ResetOffset {
            group: "g".into(),
            topic: "T".into(),
            to: ResetTarget::Earliest,
            force: false,
        });
        assert_eq!(
            needs(&reset),
            [Need::Group("g", Perm::ADMIN), Need::Topic("T", Perm::SUB)]
        );
        let del = R::DeleteGroup(DeleteGroup { group: "g".into() });
        assert_eq!(needs(&del), [Need::Group("g", Perm::ADMIN)]);
        let set = R::SetBrokerConfig(SetBrokerConfig {
            name: "max_message_size".into(),
            value: "1".into(),
        });
        for r in [R::BrokerStats, R::BrokerConfig, set] {
            assert_eq!(needs(&r), [Need::Cluster], "{r:?}");
        }
    }

    use BrokerRequest as R;
}
