//! Clients known from their heartbeats: who produces and consumes what, and how to reach
//! them (to tell a group's members that its membership changed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::Bytes;
use weir_protocol::broker::{
    CheckTransactionState, ConsumerData, ConsumerMember, Heartbeat, MessageModel,
};
use weir_protocol::net::BoxFuture;

/// How the broker reaches a client over whatever protocol it connected with: processors
/// keep these, never a connection of one protocol.
pub trait ClientLink: Send + Sync + 'static {
    /// Identifies the connection (unique while the broker runs).
    fn id(&self) -> u64;
    fn peer(&self) -> SocketAddr;
    /// Tells the client, one way, that `group`'s membership changed.
    fn notify_consumer_ids_changed(&self, group: &str) -> BoxFuture<'static, Result<(), String>>;
    /// Asks the client, one way, what became of a transaction; `half` is the half
    /// message's record. It answers with an end-transaction.
    fn check_transaction_state(
        &self,
        check: CheckTransactionState,
        half: Bytes,
    ) -> BoxFuture<'static, Result<(), String>>;
}

pub type Link = Arc<dyn ClientLink>;

struct Client {
    /// The access key of the principal that registered it (access control on): only
    /// that principal heartbeats or unregisters under its id.
    owner: Option<String>,
    conn: Link,
    addr: SocketAddr,
    last_seen: Instant,
    consumers: Vec<ConsumerData>,
    producer_groups: Vec<String>,
}

impl Client {
    fn groups(&self) -> BTreeSet<String> {
        self.consumers.iter().map(|d| d.group.clone()).collect()
    }
    fn consumes(&self, group: &str) -> bool {
        self.consumers.iter().any(|d| d.group == group)
    }
}

/// The members of `group` to tell that its membership changed.
pub struct Notice {
    pub group: String,
    pub members: Vec<Link>,
}

/// Clients forgotten at once (or only in some consumer groups), and who should hear of it.
#[derive(Default)]
pub struct Gone {
    pub client_ids: Vec<String>,
    /// (client id, consumer group) a client left while staying known in others.
    pub left_groups: Vec<(String, String)>,
    pub notices: Vec<Notice>,
}

type Clients = HashMap<String, Client>;

/// A consumer group's live members, as [`ClientRegistry::consumer_groups`] sums them up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMembers {
    pub model: MessageModel,
    /// Sorted.
    pub client_ids: Vec<String>,
    pub topics: BTreeSet<String>,
}

/// How much one client or connection may make the registry hold.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    /// Clients known at once.
    pub max_clients: usize,
    /// Distinct client ids one connection may register.
    pub max_clients_per_connection: usize,
    /// Consumer groups (and producer groups) in one heartbeat.
    pub max_groups_per_client: usize,
    /// Subscriptions of one consumer group in one heartbeat.
    pub max_subscriptions_per_group: usize,
}

/// Why a heartbeat was refused; nothing of it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("client id is empty or longer than 255 bytes")]
    BadClientId,
    #[error("the broker knows {max} clients already (limits.max_clients)")]
    TooManyClients { max: usize },
    #[error(
        "this connection registered {max} client ids already (limits.max_clients_per_connection)"
    )]
    TooManyOnConnection { max: usize },
    #[error(
        "a heartbeat names {count} {what} groups; at most {max} (limits.max_groups_per_client)"
    )]
    TooManyGroups {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error(
        "group {group:?} has {count} subscriptions; at most {max} (limits.max_subscriptions_per_group)"
    )]
    TooManySubscriptions {
        group: String,
        count: usize,
        max: usize,
    },
    #[error("client id {client_id:?} is registered by another access key")]
    NotYours { client_id: String },
}

#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<Clients>,
}

/// For each group, the remaining members (every client but `except`).
fn notices(clients: &Clients, groups: BTreeSet<String>, except: &[&str]) -> Vec<Notice> {
    groups
        .into_iter()
        .filter_map(|group| {
            let members: Vec<Link> = clients
                .iter()
                .filter(|(id, c)| !except.contains(&id.as_str()) && c.consumes(&group))
                .map(|(_, c)| Arc::clone(&c.conn))
                .collect();
            (!members.is_empty()).then_some(Notice { group, members })
        })
        .collect()
}

impl ClientRegistry {
    fn lock(&self) -> MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat, within `limits`. Returns, for each group the client joined or
    /// left, its other members; nothing when the client's groups are as before.
    /// `owner`: the access key the heartbeat was signed with (access control on); a client
    /// id registered under another is refused (else anyone could take a member out of its
    /// group, and its queue leases with it, by heartbeating under its id and leaving).
    pub fn heartbeat(
        &self,
        hb: Heartbeat,
        conn: &Link,
        limits: &RegistryLimits,
        owner: Option<&str>,
    ) -> Result<Vec<Notice>, RegistryError> {
        if hb.client_id.is_empty() || hb.client_id.len() > 255 {
            return Err(RegistryError::BadClientId);
        }
        for (what, count) in [
            ("consumer", hb.consumers.len()),
            ("producer", hb.producer_groups.len()),
        ] {
            if count > limits.max_groups_per_client {
                return Err(RegistryError::TooManyGroups {
                    what,
                    count,
                    max: limits.max_groups_per_client,
                });
            }
        }
        if let Some(d) = hb
            .consumers
            .iter()
            .find(|d| d.subscriptions.len() > limits.max_subscriptions_per_group)
        {
            return Err(RegistryError::TooManySubscriptions {
                group: d.group.clone(),
                count: d.subscriptions.len(),
                max: limits.max_subscriptions_per_group,
            });
        }
        let mut clients = self.lock();
        if let Some(c) = clients.get(&hb.client_id)
            && c.owner.as_deref() != owner
        {
            return Err(RegistryError::NotYours {
                client_id: hb.client_id,
            });
        }
        if !clients.contains_key(&hb.client_id) {
            if clients.len() >= limits.max_clients {
                return Err(RegistryError::TooManyClients {
                    max: limits.max_clients,
                });
            }
            let on_connection = clients
                .values()
                .filter(|c| c.conn.id() == conn.id())
                .count();
            if on_connection >= limits.max_clients_per_connection {
                return Err(RegistryError::TooManyOnConnection {
                    max: limits.max_clients_per_connection,
                });
            }
        }
        let client = Client {
            owner: owner.map(str::to_owned),
            conn: Arc::clone(conn),
            addr: conn.peer(),
            last_seen: Instant::now(),
            consumers: hb.consumers,
            producer_groups: hb.producer_groups,
        };
        let new_groups = client.groups();
        let old_groups = clients
            .insert(hb.client_id.clone(), client)
            .map(|c| c.groups())
            .unwrap_or_default();
        let changed: BTreeSet<String> = new_groups
            .symmetric_difference(&old_groups)
            .cloned()
            .collect();
        Ok(notices(&clients, changed, &[&hb.client_id]))
    }

    /// Clients known right now.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    fn remove(&self, clients: &mut Clients, ids: Vec<String>) -> Gone {
        let mut groups = BTreeSet::new();
        for id in &ids {
            if let Some(c) = clients.remove(id) {
                groups.extend(c.groups());
            }
        }
        Gone {
            notices: notices(clients, groups, &[]),
            client_ids: ids,
            left_groups: Vec::new(),
        }
    }

    /// The producer groups and consumer groups of a known client.
    pub fn groups_of(&self, client_id: &str) -> Option<(Vec<String>, Vec<String>)> {
        let clients = self.lock();
        let c = clients.get(client_id)?;
        let consumers = c.consumers.iter().map(|d| d.group.clone()).collect();
        Some((c.producer_groups.clone(), consumers))
    }

    /// Removes `client_id` from the named groups only; a client left in no group is
    /// forgotten whole. With neither group named, the client is forgotten whole.
    ///
    /// `owner` as for [`Self::heartbeat`]: a client registered under another access key is
    /// refused (`NotYours`) and left alone.
    pub fn unregister_groups(
        &self,
        client_id: &str,
        producer_group: Option<&str>,
        consumer_group: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Gone, RegistryError> {
        // One lock for the check and the change: the id cannot change hands in between.
        let mut clients = self.lock();
        let Some(c) = clients.get_mut(client_id) else {
            return Ok(Gone::default());
        };
        if c.owner.as_deref() != owner {
            return Err(RegistryError::NotYours {
                client_id: client_id.to_owned(),
            });
        }
        if producer_group.is_none() && consumer_group.is_none() {
            return Ok(self.remove(&mut clients, vec![client_id.to_owned()]));
        }
        if let Some(g) = producer_group {
            c.producer_groups.retain(|p| p != g);
        }
        let left: Option<String> = consumer_group.filter(|g| c.consumes(g)).map(str::to_owned);
        if let Some(g) = &left {
            c.consumers.retain(|d| &d.group != g);
        }
        // A client left in no group is forgotten whole.
        let forgotten = c.consumers.is_empty() && c.producer_groups.is_empty();
        if forgotten {
            clients.remove(client_id);
        }
        let groups: BTreeSet<String> = left.iter().cloned().collect();
        Ok(Gone {
            notices: notices(&clients, groups, &[]),
            client_ids: if forgotten {
                vec![client_id.to_owned()]
            } else {
                Vec::new()
            },
            left_groups: left
                .map(|g| vec![(client_id.to_owned(), g)])
                .unwrap_or_default(),
        })
    }

    pub fn connection_closed(&self, conn_id: u64) -> Gone {
        let mut clients = self.lock();
        let ids = clients
            .iter()
            .filter(|(_, c)| c.conn.id() == conn_id)
            .map(|(id, _)| id.clone())
            .collect();
        self.remove(&mut clients, ids)
    }

    pub fn expire(&self, older_than: Duration) -> Gone {
        let now = Instant::now();
        let mut clients = self.lock();
        let ids = clients
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_seen) > older_than)
            .map(|(id, _)| id.clone())
            .collect();
        self.remove(&mut clients, ids)
    }

    /// The live producers of `group`, by client id, sorted (transaction check-backs go to
    /// one of them).
    pub fn producers_of(&self, group: &str) -> Vec<(String, Link)> {
        let mut out: Vec<(String, Link)> = self
            .lock()
            .iter()
            .filter(|(_, c)| c.producer_groups.iter().any(|g| g == group))
            .map(|(id, c)| (id.clone(), Arc::clone(&c.conn)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Client ids consuming as `group`, sorted.
    pub fn consumers_of(&self, group: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, c)| c.consumes(group))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The expression `group` subscribes to `topic` with, as a member's heartbeat said
    /// (a pull that names none uses it).
    pub fn subscription_of(&self, group: &str, topic: &str) -> Option<String> {
        self.lock()
            .values()
            .flat_map(|c| c.consumers.iter().filter(|d| d.group == group))
            .flat_map(|d| d.subscriptions.iter())
            .find(|(t, _)| t == topic)
            .map(|(_, expr)| expr.clone())
    }

    /// Every consumer group with a live member, by name: its model (the first member's,
    /// by client id), its members' client ids (sorted) and the topics they subscribe to.
    pub fn consumer_groups(&self) -> BTreeMap<String, GroupMembers> {
        let clients = self.lock();
        let mut ids: Vec<&String> = clients.keys().collect();
        ids.sort();
        let mut out: BTreeMap<String, GroupMembers> = BTreeMap::new();
        for id in ids {
            let Some(c) = clients.get(id) else { continue };
            for d in &c.consumers {
                let g = out.entry(d.group.clone()).or_insert_with(|| GroupMembers {
                    model: d.model.clone(),
                    client_ids: Vec::new(),
                    topics: BTreeSet::new(),
                });
                g.client_ids.push(id.clone());
                g.topics
                    .extend(d.subscriptions.iter().map(|(t, _)| t.clone()));
            }
        }
        out
    }

    /// What is known of `group`'s members, sorted by client id.
    pub fn members_of(&self, group: &str) -> Vec<ConsumerMember> {
        let now = Instant::now();
        let clients = self.lock();
        let members: BTreeMap<&String, ConsumerMember> = clients
            .iter()
            .filter_map(|(id, c)| {
                let d = c.consumers.iter().find(|d| d.group == group)?;
                Some((
                    id,
                    ConsumerMember {
                        client_id: id.clone(),
                        addr: c.addr.to_string(),
                        model: d.model.clone(),
                        subscriptions: d.subscriptions.clone(),
                        last_heartbeat_ms_ago: now.duration_since(c.last_seen).as_millis() as u64,
                    },
                ))
            })
            .collect();
        members.into_values().collect()
    }
}
