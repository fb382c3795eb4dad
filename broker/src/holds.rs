//! Long polling: pulls that found nothing wait here for their queue to grow.
//!
//! Every append wakes its queue (once per run of messages to it): a shared lock and a
//! cheap hash, so that appends on different worker threads do not queue for each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use foldhash::fast::RandomState;
use tokio::sync::Notify;

type ByQueue = HashMap<String, HashMap<u32, Arc<Notify>>, RandomState>;

#[derive(Default)]
pub struct PullHolds {
    queues: RwLock<ByQueue>,
    held: AtomicUsize,
}

impl PullHolds {
    /// The wake-up of (topic, queue), created on first use.
    pub fn notify_of(&self, topic: &str, queue_id: u32) -> Arc<Notify> {
        if let Some(n) = self.find(topic, queue_id) {
            return n;
        }
        let mut q = self.queues.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            q.entry(topic.to_owned())
                .or_default()
                .entry(queue_id)
                .or_default(),
        )
    }

    fn find(&self, topic: &str, queue_id: u32) -> Option<Arc<Notify>> {
        let q = self.queues.read().unwrap_or_else(|e| e.into_inner());
        q.get(topic).and_then(|t| t.get(&queue_id)).cloned()
    }

    /// Wakes every pull held on (topic, queue). Called after each append.
    pub fn wake(&self, topic: &str, queue_id: u32) {
        let q = self.queues.read().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = q.get(topic).and_then(|t| t.get(&queue_id)) {
            n.notify_waiters();
        }
    }

    pub fn forget_topic(&self, topic: &str) {
        self.queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(topic);
    }

    /// Pulls being held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn enter(&self) -> HeldGuard<'_> {
        self.held.fetch_add(1, Ordering::Relaxed);
        HeldGuard(self)
    }
}

pub struct HeldGuard<'a>(&'a PullHolds);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}
