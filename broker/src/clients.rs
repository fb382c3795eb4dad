//! Clients known from their heartbeats: who produces and consumes what.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use weir_protocol::broker::{ConsumerData, Heartbeat};

struct Client {
    conn_id: u64,
    last_seen: Instant,
    consumers: Vec<ConsumerData>,
}

#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<HashMap<String, Client>>,
}

impl ClientRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Client>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn heartbeat(&self, hb: Heartbeat, conn_id: u64) {
        self.lock().insert(
            hb.client_id,
            Client {
                conn_id,
                last_seen: Instant::now(),
                consumers: hb.consumers,
            },
        );
    }

    pub fn unregister(&self, client_id: &str) {
        self.lock().remove(client_id);
    }

    pub fn connection_closed(&self, conn_id: u64) {
        self.lock().retain(|_, c| c.conn_id != conn_id);
    }

    pub fn expire(&self, older_than: Duration) {
        let now = Instant::now();
        self.lock()
            .retain(|_, c| now.duration_since(c.last_seen) <= older_than);
    }

    /// Client ids consuming as `group`, sorted.
    pub fn consumers_of(&self, group: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, c)| c.consumers.iter().any(|d| d.group == group))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}
