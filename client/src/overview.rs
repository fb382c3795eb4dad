//! Whole-cluster lists in a fixed number of requests: every topic with its queues and
//! permissions (one request to the name servers), every consumer group with its members,
//! model, subscriptions and lag (one request per master broker, all at once).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use tokio::task::JoinSet;
use weir_protocol::ErrorCode;
use weir_protocol::admin::{GetGroupSummaries, GroupSummaries};
use weir_protocol::broker::MessageModel;
use weir_protocol::route::{GetTopicSummaries, TopicSummaries, TopicSummary};

use crate::{Admin, ClientError, Result};

/// One consumer group as the master brokers know it, summed over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    pub group: String,
    /// As its live members say; `None` when no broker has a live member of it (a group
    /// known only by its committed offsets).
    pub model: Option<MessageModel>,
    /// Live members: distinct client ids over the brokers (each broker lists up to
    /// [`weir_protocol::admin::MAX_SUMMARY_MEMBER_IDS`]), or the most one broker counts
    /// when that is more.
    pub members: u32,
    /// Topics its members subscribe to.
    pub subscriptions: BTreeSet<String>,
    /// Queues the group committed an offset on, over the brokers.
    pub queues: u32,
    /// Over those queues: messages stored past the group's offsets.
    pub lag: u64,
    /// The brokers that know it, by name.
    pub brokers: BTreeSet<String>,
}

/// The answer of [`Admin::group_list`].
#[derive(Debug, Clone, Default)]
pub struct GroupList {
    /// By name.
    pub groups: Vec<GroupOverview>,
    /// Whether some broker left matching groups out past the limit.
    pub truncated: bool,
    /// Masters that did not answer: (broker name, why); their groups are missing or
    /// partial.
    pub failed: Vec<(String, String)>,
}

impl Admin {
    /// Every topic the name servers route, each with its queues and permission per
    /// broker, sorted by name: one request. From a name server too old to serve it, the
    /// names alone (each with no queues).
    pub async fn topic_summaries(&self) -> Result<Vec<TopicSummary>> {
        match self.client.call_namesrv_with_body(&GetTopicSummaries).await {
            Ok(((), body)) => TopicSummaries::decode(&body)
                .map(|s| s.topics)
                .map_err(|e| ClientError::NoNameServer(format!("unreadable topic summaries: {e}"))),
            Err(e) if e.code() == Some(ErrorCode::RequestCodeNotSupported) => Ok(self
                .topics()
                .await?
                .into_iter()
                .map(|name| TopicSummary {
                    name,
                    queues: Vec::new(),
                })
                .collect()),
            Err(e) => Err(ClientError::NoNameServer(e.to_string())),
        }
    }

    /// Every consumer group a master broker knows (from its members' heartbeats or its
    /// committed offsets) whose name contains `contains` (all when empty), at most `limit`
    /// per broker: the cluster view and one request per master, all at once. A master that
    /// fails is named in [`GroupList::failed`]; the others still answer.
    pub async fn group_list(&self, contains: &str, limit: u32) -> Result<GroupList> {
        let info = self.cluster().await?;
        let mut calls = JoinSet::new();
        for b in &info.brokers {
            let Some(addr) = b.master_addr() else {
                continue;
            };
            let (client, addr, name) =
                (self.client.clone(), addr.to_owned(), b.broker_name.clone());
            let req = GetGroupSummaries {
                contains: contains.to_owned(),
                limit,
            };
            calls.spawn(async move {
                let answer = match client.call(&addr, &req, Bytes::new()).await {
                    Ok(((), body)) => GroupSummaries::decode(&body).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (name, answer)
            });
        }
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((name, Ok(summaries))) => answers.push((name, summaries)),
                Ok((name, Err(e))) => failed.push((name, e)),
                Err(e) => failed.push(("?".into(), format!("request task failed: {e}"))),
            }
        }
        failed.sort();
        let mut list = merge(answers);
        list.failed = failed;
        Ok(list)
    }
}

/// Sums each group over the brokers' answers.
fn merge(answers: Vec<(String, GroupSummaries)>) -> GroupList {
    struct Acc {
        overview: GroupOverview,
        ids: BTreeSet<String>,
        most_counted: u32,
    }
    let mut by_group: BTreeMap<String, Acc> = BTreeMap::new();
    let mut truncated = false;
    for (broker, answer) in answers {
        truncated |= answer.more > 0;
        for s in answer.groups {
            let acc = by_group.entry(s.group.clone()).or_insert_with(|| Acc {
                overview: GroupOverview {
                    group: s.group.clone(),
                    model: None,
                    members: 0,
                    subscriptions: BTreeSet::new(),
                    queues: 0,
                    lag: 0,
                    brokers: BTreeSet::new(),
                },
                ids: BTreeSet::new(),
                most_counted: 0,
            });
            let o = &mut acc.overview;
            if o.model.is_none() {
                o.model = s.model;
            }
            o.subscriptions.extend(s.subscriptions);
            o.queues = o.queues.saturating_add(s.queues);
            o.lag = o.lag.saturating_add(s.lag);
            o.brokers.insert(broker.clone());
            acc.ids.extend(s.member_ids);
            acc.most_counted = acc.most_counted.max(s.members);
        }
    }
    let groups = by_group
        .into_values()
        .map(|mut acc| {
            let distinct = u32::try_from(acc.ids.len()).unwrap_or(u32::MAX);
            acc.overview.members = distinct.max(acc.most_counted);
            acc.overview
        })
        .collect();
    GroupList {
        groups,
        truncated,
        failed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_protocol::admin::GroupSummary;

    fn summary(group: &str, ids: &[&str], members: u32, queues: u32, lag: u64) -> GroupSummary {
        GroupSummary {
            group: group.into(),
            model: (!ids.is_empty()).then_some(MessageModel::Clustering),
            members,
            member_ids: ids.iter().map(|s| s.to_string()).collect(),
            subscriptions: vec!["T".into()],
            queues,
            lag,
        }
    }

    #[test]
    fn a_group_on_two_brokers_is_summed_and_its_members_counted_once() {
        let a = GroupSummaries {
            groups: vec![
                summary("G", &["c1", "c2"], 2, 4, 10),
                summary("H", &[], 0, 1, 0),
            ],
            more: 0,
        };
        let b = GroupSummaries {
            groups: vec![summary("G", &["c2", "c3"], 2, 4, 5)],
            more: 3,
        };
        let list = merge(vec![("a".into(), a), ("b".into(), b)]);
        assert!(list.truncated);
        let g = &list.groups[0];
        assert_eq!(
            (g.group.as_str(), g.members, g.queues, g.lag),
            ("G", 3, 8, 15)
        );
        assert_eq!(g.brokers.len(), 2);
        assert_eq!(g.model, Some(MessageModel::Clustering));
        let h = &list.groups[1];
        assert_eq!(
            (h.group.as_str(), h.members, h.model.clone()),
            ("H", 0, None)
        );
    }

    #[test]
    fn members_past_the_listed_ids_count_by_the_largest_broker_count() {
        let a = GroupSummaries {
            groups: vec![summary("G", &["c1"], 100, 0, 0)],
            more: 0,
        };
        assert_eq!(merge(vec![("a".into(), a)]).groups[0].members, 100);
    }
}
