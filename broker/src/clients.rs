//! Clients known from their heartbeats: who produces and consumes what, and how to reach
//! them (to tell a group's members that its membership changed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weir_protocol::Connection;
use weir_protocol::broker::{ConsumerData, ConsumerMember, Heartbeat};

struct Client {
    conn: Connection,
    addr: SocketAddr,
    last_seen: Instant,
    consumers: Vec<ConsumerData>,
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
    pub members: Vec<Connection>,
}

/// Clients forgotten at once, and who should hear of it.
#[derive(Default)]
pub struct Gone {
    pub client_ids: Vec<String>,
    pub notices: Vec<Notice>,
}

type Clients = HashMap<String, Client>;

#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<Clients>,
}

/// For each group, the remaining members (every client but `except`).
fn notices(clients: &Clients, groups: BTreeSet<String>, except: &[&str]) -> Vec<Notice> {
    groups
        .into_iter()
        .filter_map(|group| {
            let members: Vec<Connection> = clients
                .iter()
                .filter(|(id, c)| !except.contains(&id.as_str()) && c.consumes(&group))
                .map(|(_, c)| c.conn.clone())
                .collect();
            (!members.is_empty()).then_some(Notice { group, members })
        })
        .collect()
}

impl ClientRegistry {
    fn lock(&self) -> MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a heartbeat. Returns, for each group the client joined or left, its other
    /// members; nothing when the client's groups are as before.
    pub fn heartbeat(&self, hb: Heartbeat, conn: &Connection) -> Vec<Notice> {
        let mut clients = self.lock();
        let client = Client {
            conn: conn.clone(),
            addr: conn.peer(),
            last_seen: Instant::now(),
            consumers: hb.consumers,
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
        notices(&clients, changed, &[&hb.client_id])
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
        }
    }

    pub fn unregister(&self, client_id: &str) -> Gone {
        let mut clients = self.lock();
        let ids = if clients.contains_key(client_id) {
            vec![client_id.to_owned()]
        } else {
            Vec::new()
        };
        self.remove(&mut clients, ids)
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
