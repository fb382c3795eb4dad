//! Administration: topics, cluster view, message lookups (filters: `filter.rs`).

use bytes::Bytes;
use weir_protocol::broker::{
    ConsumerMember, CreateTopic, GetConsumeStats, GetConsumerConnections, GetConsumerList,
    GetTopicStats, ListTransactions, QueryMessageByKey, QueueProgress, ResolveTransaction,
    TopicStats, TransactionDecision, TransactionList, TransactionResolved, TransactionState,
    ViewMessageById,
};
use weir_protocol::route::{
    ClusterInfo, GetAllTopics, GetClusterInfo, TopicConfig, TopicRoute, perm,
};
use weir_protocol::{CallError, ErrorCode, MessageId};

use crate::message::decode_records;
use crate::{ClientError, ClientInstance, ReceivedMessage, Result};

pub struct Admin {
    pub(crate) client: ClientInstance,
}

impl Admin {
    pub fn new(client: ClientInstance) -> Self {
        Self { client }
    }

    pub async fn cluster(&self) -> Result<ClusterInfo> {
        self.client
            .call_namesrv(&GetClusterInfo)
            .await
            .map_err(|e| ClientError::NoNameServer(e.to_string()))
    }

    /// Creates (or updates) the topic on every master broker. Returns the brokers done.
    pub async fn create_topic(&self, topic: &str, queues: u32) -> Result<Vec<String>> {
        let info = self.cluster().await?;
        let masters = masters(&info.brokers);
        if masters.is_empty() {
            return Err(ClientError::NoRoute {
                topic: topic.to_owned(),
                detail: "no broker is registered".into(),
            });
        }
        let config = TopicConfig {
            name: topic.to_owned(),
            read_queues: queues,
            write_queues: queues,
            perm: perm::READ_WRITE,
        };
        let mut done = Vec::new();
        for (name, addr) in masters {
            self.client
                .call(
                    &addr,
                    &CreateTopic {
                        topic: config.clone(),
                    },
                    Bytes::new(),
                )
                .await?;
            done.push(name);
        }
        Ok(done)
    }

    pub async fn topics(&self) -> Result<Vec<String>> {
        Ok(self
            .client
            .call_namesrv(&GetAllTopics)
            .await
            .map_err(|e| ClientError::NoNameServer(e.to_string()))?
            .topics)
    }

    pub async fn route(&self, topic: &str) -> Result<TopicRoute> {
        Ok((*self.client.route(topic, true).await?).clone())
    }

    /// Per broker of the route: the topic's queues and their offsets.
    pub async fn topic_stats(&self, topic: &str) -> Result<Vec<(String, TopicStats)>> {
        let route = self.client.route(topic, true).await?;
        let mut out = Vec::new();
        for b in &route.brokers {
            if let Some(addr) = b.master_addr() {
                let (stats, _) = self
                    .client
                    .call(
                        addr,
                        &GetTopicStats {
                            topic: topic.to_owned(),
                        },
                        Bytes::new(),
                    )
                    .await?;
                out.push((b.broker_name.clone(), stats));
            }
        }
        Ok(out)
    }

    /// A group's committed offsets and the queues' ends, from every master broker:
    /// (broker name, queue progress).
    pub async fn group_progress(&self, group: &str) -> Result<Vec<(String, QueueProgress)>> {
        let info = self.cluster().await?;
        let mut out = Vec::new();
        for b in &info.brokers {
            let Some(addr) = b.master_addr() else {
                continue;
            };
            let (stats, _) = self
                .client
                .call(
                    addr,
                    &GetConsumeStats {
                        group: group.to_owned(),
                    },
                    Bytes::new(),
                )
                .await?;
            out.extend(stats.queues.into_iter().map(|q| (b.broker_name.clone(), q)));
        }
        Ok(out)
    }

    /// Client ids of the group's live members (known to brokers from heartbeats).
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>> {
        let info = self.cluster().await?;
        let mut ids = std::collections::BTreeSet::new();
        for b in &info.brokers {
            let Some(addr) = b.master_addr() else {
                continue;
            };
            let (list, _) = self
                .client
                .call(
                    addr,
                    &GetConsumerList {
                        group: group.to_owned(),
                    },
                    Bytes::new(),
                )
                .await?;
            ids.extend(list.client_ids);
        }
        Ok(ids.into_iter().collect())
    }

    /// The group's members as each master broker knows them: (broker name, member).
    pub async fn group_connections(&self, group: &str) -> Result<Vec<(String, ConsumerMember)>> {
        let info = self.cluster().await?;
        let mut out = Vec::new();
        for b in &info.brokers {
            let Some(addr) = b.master_addr() else {
                continue;
            };
            let req = GetConsumerConnections {
                group: group.to_owned(),
            };
            let (list, _) = self.client.call(addr, &req, Bytes::new()).await?;
            out.extend(list.members.into_iter().map(|m| (b.broker_name.clone(), m)));
        }
        Ok(out)
    }

    /// Messages of `topic` with `key`, from every broker of its route.
    pub async fn messages_by_key(
        &self,
        topic: &str,
        key: &str,
        max: u32,
    ) -> Result<Vec<ReceivedMessage>> {
        let route = self.client.route(topic, true).await?;
        let mut out = Vec::new();
        for b in &route.brokers {
            let Some(addr) = b.master_addr() else {
                continue;
            };
            let req = QueryMessageByKey {
                topic: topic.to_owned(),
                key: key.to_owned(),
                max,
            };
            match self.client.call(addr, &req, Bytes::new()).await {
                Ok((_, body)) => out.extend(decode_records(&body, &b.broker_name)?),
                Err(ClientError::Broker {
                    error:
                        CallError::Remote {
                            code: ErrorCode::QueryNotFound,
                            ..
                        },
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The message with this id: the id names the broker's store address.
    pub async fn message_by_id(&self, msg_id: &str) -> Result<ReceivedMessage> {
        let id: MessageId = msg_id.parse()?;
        let addr = id.store_host.to_string();
        let (_, body) = self
            .client
            .call(
                &addr,
                &ViewMessageById {
                    msg_id: msg_id.to_owned(),
                },
                Bytes::new(),
            )
            .await?;
        let info = self.cluster().await.ok();
        let broker_name = info
            .and_then(|i| {
                i.brokers
                    .into_iter()
                    .find(|b| b.addrs.iter().any(|(_, a)| *a == addr))
                    .map(|b| b.broker_name)
            })
            .unwrap_or_else(|| addr.clone());
        decode_records(&body, &broker_name)?.pop().ok_or_else(|| {
            ClientError::Invalid(format!("broker {addr} returned no record for {msg_id}"))
        })
    }
}

impl Admin {
    /// Pending (undecided) or dead transactions on every master broker, oldest first on
    /// each, at most `max` per broker: (broker name, its list).
    pub async fn list_transactions(
        &self,
        state: TransactionState,
        producer_group: Option<&str>,
        max: u32,
    ) -> Result<Vec<(String, TransactionList)>> {
        let info = self.cluster().await?;
        let req = ListTransactions {
            state,
            producer_group: producer_group.map(str::to_owned),
            max,
        };
        let mut out = Vec::new();
        for (name, addr) in masters(&info.brokers) {
            let (list, _) = self.client.call(&addr, &req, Bytes::new()).await?;
            out.push((name, list));
        }
        Ok(out)
    }

    /// Decides a dead transaction by hand (commit or rollback) on the master broker that
    /// holds it: (that broker's name, the committed message's id if committed).
    pub async fn resolve_transaction(
        &self,
        transaction_id: &str,
        decision: TransactionDecision,
    ) -> Result<(String, TransactionResolved)> {
        if decision == TransactionDecision::Unknown {
            return Err(ClientError::Invalid(
                "resolve a transaction with commit or rollback".into(),
            ));
        }
        let info = self.cluster().await?;
        let brokers = masters(&info.brokers);
        if brokers.is_empty() {
            return Err(ClientError::Invalid("no broker is registered".into()));
        }
        // Only the broker that holds the dead transaction knows it: find it among the
        // masters' dead lists, else ask each in turn.
        let mut holder = None;
        if brokers.len() > 1 {
            let dead = self
                .list_transactions(TransactionState::Dead, None, 10_000)
                .await?;
            holder = dead
                .into_iter()
                .find(|(_, l)| {
                    l.transactions
                        .iter()
                        .any(|t| t.transaction_id == transaction_id)
                })
                .map(|(name, _)| name);
        }
        let req = ResolveTransaction {
            transaction_id: transaction_id.to_owned(),
            decision,
        };
        let mut last = None;
        for (name, addr) in brokers {
            if holder.as_ref().is_some_and(|h| *h != name) {
                continue;
            }
            match self.client.call(&addr, &req, Bytes::new()).await {
                Ok((r, _)) => return Ok((name, r)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ClientError::Invalid(format!("no broker holds transaction {transaction_id}"))
        }))
    }
}

/// (broker name, master address) of every broker that has a master.
pub(crate) fn masters(brokers: &[weir_protocol::route::BrokerData]) -> Vec<(String, String)> {
    brokers
        .iter()
        .filter_map(|b| {
            b.master_addr()
                .map(|a| (b.broker_name.clone(), a.to_owned()))
        })
        .collect()
}
