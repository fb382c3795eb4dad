//! Operators' changes on every master broker: deleting and updating topics, resetting and
//! deleting consumer groups; and every broker's runtime statistics and live settings.

use bytes::Bytes;
use weir_protocol::ErrorCode;
use weir_protocol::admin::{
    BrokerSettings, BrokerStats, DeleteGroup, GetBrokerConfig, GetBrokerStats, GroupDeleted,
    OffsetsReset, ResetOffset, ResetTarget, SetBrokerConfig,
};
use weir_protocol::broker::{CreateTopic, DeleteTopic, GetTopicStats};
use weir_protocol::route::TopicConfig;

use crate::admin::masters;
use crate::{Admin, ClientError, Result};

/// What to change in a topic; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicUpdate {
    /// Permission bits (`perm::READ`, `perm::WRITE`).
    pub perm: Option<u8>,
    /// Read and write queues.
    pub queues: Option<u32>,
}

/// One broker's answer to `broker stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatsRow {
    pub addr: String,
    pub stats: BrokerStats,
}

impl Admin {
    /// The masters' (name, address), refusing an empty cluster.
    async fn master_list(&self, what: &str) -> Result<Vec<(String, String)>> {
        let m = masters(&self.cluster().await?.brokers);
        if m.is_empty() {
            return Err(ClientError::Invalid(format!(
                "cannot {what}: no master broker is registered"
            )));
        }
        Ok(m)
    }

    /// Refuses while `group` has live members on any broker.
    async fn check_no_members(&self, group: &str, what: &str) -> Result<()> {
        let members = self.group_members(group).await?;
        if members.is_empty() {
            return Ok(());
        }
        Err(ClientError::Invalid(format!(
            "group {group} has {} live member(s) ({}): stop its consumers before you {what}",
            members.len(),
            members.join(", ")
        )))
    }

    /// Deletes the topic on every master broker that has it: the brokers it was deleted
    /// on. Their next registration (at once) stops the name servers routing it.
    pub async fn delete_topic(&self, topic: &str) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for (name, addr) in self.master_list("delete a topic").await? {
            let req = DeleteTopic {
                topic: topic.to_owned(),
            };
            match self.client.call(&addr, &req, Bytes::new()).await {
                Ok(_) => done.push(name),
                Err(e) if e.code() == Some(ErrorCode::TopicNotExist) => {}
                Err(e) => return Err(e),
            }
        }
        if done.is_empty() {
            return Err(ClientError::Invalid(format!(
                "topic {topic} does not exist on any master broker"
            )));
        }
        Ok(done)
    }

    /// Changes the topic's permission and queue counts on every master broker that has
    /// it: each broker's config afterwards. A broker keeps read queues past the asked count
    /// while they hold unconsumed messages (its answer shows how many it kept).
    pub async fn update_topic(
        &self,
        topic: &str,
        update: TopicUpdate,
    ) -> Result<Vec<(String, TopicConfig)>> {
        if update.queues == Some(0) {
            return Err(ClientError::Invalid(
                "a topic needs at least 1 queue".into(),
            ));
        }
        let stats_req = GetTopicStats {
            topic: topic.to_owned(),
        };
        let mut out = Vec::new();
        for (name, addr) in self.master_list("update a topic").await? {
            let old = match self.client.call(&addr, &stats_req, Bytes::new()).await {
                Ok((s, _)) => s.config,
                Err(e) if e.code() == Some(ErrorCode::TopicNotExist) => continue,
                Err(e) => return Err(e),
            };
            let mut config = old.clone();
            if let Some(p) = update.perm {
                config.perm = p;
            }
            if let Some(n) = update.queues {
                config.read_queues = n;
                config.write_queues = n;
            }
            self.client
                .call(&addr, &CreateTopic { topic: config }, Bytes::new())
                .await?;
            let (now, _) = self.client.call(&addr, &stats_req, Bytes::new()).await?;
            out.push((name, now.config));
        }
        if out.is_empty() {
            return Err(ClientError::Invalid(format!(
                "topic {topic} does not exist on any master broker"
            )));
        }
        Ok(out)
    }

    /// Commits, for `group` on every queue of `topic` on every master broker that has
    /// the topic, the offset `to` names. Refused while the group has live members (their
    /// commits would undo it) unless `force`.
    pub async fn reset_offset(
        &self,
        group: &str,
        topic: &str,
        to: ResetTarget,
        force: bool,
    ) -> Result<Vec<(String, OffsetsReset)>> {
        if !force {
            self.check_no_members(group, "reset its offsets (or use --force)")
                .await?;
        }
        let req = ResetOffset {
            group: group.to_owned(),
            topic: topic.to_owned(),
            to,
            force,
        };
        let mut out = Vec::new();
        for (name, addr) in self.master_list("reset offsets").await? {
            match self.client.call(&addr, &req, Bytes::new()).await {
                Ok((r, _)) => out.push((name, r)),
                Err(e) if e.code() == Some(ErrorCode::TopicNotExist) => {}
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            return Err(ClientError::Invalid(format!(
                "topic {topic} does not exist on any master broker"
            )));
        }
        Ok(out)
    }

    /// Removes the group's offsets and retry topic on every master broker; refused while
    /// it has live members.
    pub async fn delete_group(&self, group: &str) -> Result<Vec<(String, GroupDeleted)>> {
        self.check_no_members(group, "delete it").await?;
        let req = DeleteGroup {
            group: group.to_owned(),
        };
        let mut out = Vec::new();
        for (name, addr) in self.master_list("delete a group").await? {
            let (r, _) = self.client.call(&addr, &req, Bytes::new()).await?;
            out.push((name, r));
        }
        Ok(out)
    }

    /// Every registered broker's (masters' and slaves') statistics, by cluster, name and
    /// id.
    pub async fn broker_stats(&self) -> Result<Vec<BrokerStatsRow>> {
        let info = self.cluster().await?;
        let mut out = Vec::new();
        for b in &info.brokers {
            for (_, addr) in &b.addrs {
                let (stats, _) = self
                    .client
                    .call(addr, &GetBrokerStats, Bytes::new())
                    .await?;
                out.push(BrokerStatsRow {
                    addr: addr.clone(),
                    stats,
                });
            }
        }
        Ok(out)
    }

    /// Every registered broker (or the one named `broker`, all its ids): (its name, id,
    /// address).
    async fn brokers(&self, broker: Option<&str>) -> Result<Vec<(String, u64, String)>> {
        let info = self.cluster().await?;
        let out: Vec<(String, u64, String)> = info
            .brokers
            .iter()
            .filter(|b| broker.is_none_or(|n| n == b.broker_name))
            .flat_map(|b| {
                b.addrs
                    .iter()
                    .map(|(id, a)| (b.broker_name.clone(), *id, a.clone()))
            })
            .collect();
        if out.is_empty() {
            return Err(ClientError::Invalid(match broker {
                Some(n) => format!("no broker named {n} is registered"),
                None => "no broker is registered".into(),
            }));
        }
        Ok(out)
    }

    /// The settings that can change live, from every broker (or the one named):
    /// ((name, id, address), settings).
    pub async fn broker_config(
        &self,
        broker: Option<&str>,
    ) -> Result<Vec<((String, u64, String), BrokerSettings)>> {
        let mut out = Vec::new();
        for b in self.brokers(broker).await? {
            let (s, _) = self
                .client
                .call(&b.2, &GetBrokerConfig, Bytes::new())
                .await?;
            out.push((b, s));
        }
        Ok(out)
    }

    /// Changes a live setting on every broker (or the one named); stops at the first
    /// refusal (a setting that cannot change live, a value out of range).
    pub async fn set_broker_config(
        &self,
        broker: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<Vec<((String, u64, String), BrokerSettings)>> {
        let req = SetBrokerConfig {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        let mut out = Vec::new();
        for b in self.brokers(broker).await? {
            let (s, _) = self.client.call(&b.2, &req, Bytes::new()).await?;
            out.push((b, s));
        }
        Ok(out)
    }
}
