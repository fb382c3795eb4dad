//! Load for the cluster tests: a producer sending numbered messages and remembering every
//! acknowledgement, and a consumer pulling every queue in turn and committing as it goes,
//! both through the client library (its failover is what is tested).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_client::{ClientInstance, Message, MessageQueue, Producer, PullConsumer, SendStatus};

/// A send the broker acknowledged with `SendStatus::Ok`.
#[derive(Debug, Clone)]
pub struct Ack {
    pub body: String,
    pub broker: String,
    pub queue_id: u32,
    pub offset: u64,
}

/// A running producer.
pub struct Sending {
    pub acks: Arc<Mutex<Vec<Ack>>>,
    pub failures: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sending {
    /// Sends `<prefix>-<n>` to `topic` one after another, as fast as acknowledged.
    pub fn start(client: ClientInstance, topic: &str, prefix: &str) -> Sending {
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let failures = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, f, s) = (Arc::clone(&acks), Arc::clone(&failures), Arc::clone(&stop));
        let (topic, prefix) = (topic.to_owned(), prefix.to_owned());
        let task = tokio::spawn(async move {
            let producer = Producer::new("cluster-test-producer", client);
            let mut n = 0u64;
            while !s.load(Ordering::Acquire) {
                let body = format!("{prefix}-{n}");
                n += 1;
                match producer.send(&Message::new(&topic, body.clone())).await {
                    Ok(r) if r.status == SendStatus::Ok => a.lock().unwrap().push(Ack {
                        body,
                        broker: r.broker_name,
                        queue_id: r.queue_id,
                        offset: r.queue_offset,
                    }),
                    // Stored but not confirmed by a slave, or not stored: not acknowledged.
                    Ok(_) | Err(_) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        Sending {
            acks,
            failures,
            stop,
            task,
        }
    }

    pub fn acked(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// Acknowledged sends to `broker` so far.
    pub fn acked_on(&self, broker: &str) -> usize {
        self.acks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.broker == broker)
            .count()
    }

    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("producer task");
        Arc::try_unwrap(self.acks).unwrap().into_inner().unwrap()
    }
}

/// (broker, queue id) → (queue offset → body), as a consumer was handed them.
pub type Seen = BTreeMap<(String, u32), BTreeMap<u64, String>>;

/// A running consumer of every queue of a topic.
pub struct Consuming {
    pub seen: Arc<Mutex<Seen>>,
    /// Where each queue's next pull starts (what is committed).
    pub next: Arc<Mutex<BTreeMap<(String, u32), u64>>>,
    /// Messages handed twice.
    pub twice: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Consuming {
    /// Consumes `topic` as `group` from each queue's committed offset (0 if none),
    /// committing after every pull.
    pub fn start(client: ClientInstance, topic: &str, group: &str) -> Consuming {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let next: Arc<Mutex<BTreeMap<(String, u32), u64>>> = Arc::default();
        let twice = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (sn, nx, tw, st) = (
            Arc::clone(&seen),
            Arc::clone(&next),
            Arc::clone(&twice),
            Arc::clone(&stop),
        );
        let (topic, group) = (topic.to_owned(), group.to_owned());
        let task = tokio::spawn(async move {
            let consumer = PullConsumer::new(group, client);
            let queues: Vec<MessageQueue> = loop {
                match consumer.queues(&topic).await {
                    Ok(q) if !q.is_empty() => break q,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let mut at: BTreeMap<MessageQueue, u64> = BTreeMap::new();
            while !st.load(Ordering::Acquire) {
                let mut got = 0;
                for mq in &queues {
                    let offset = match at.get(mq) {
                        Some(o) => *o,
                        None => match consumer.committed_offset(mq).await {
                            Ok(o) => *at.entry(mq.clone()).or_insert(o.unwrap_or(0)),
                            Err(_) => continue,
                        },
                    };
                    let Ok(p) = consumer.pull(mq, "*", offset, 64, None, None).await else {
                        continue;
                    };
                    let key = (mq.broker_name.clone(), mq.queue_id);
                    {
                        let mut seen = sn.lock().unwrap();
                        let q = seen.entry(key.clone()).or_default();
                        for m in &p.messages {
                            let body = String::from_utf8_lossy(&m.body).into_owned();
                            if q.insert(m.queue_offset, body).is_some() {
                                tw.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    got += p.messages.len();
                    if p.next_offset != offset
                        && consumer.commit_offset(mq, p.next_offset).await.is_ok()
                    {
                        nx.lock().unwrap().insert(key, p.next_offset);
                    }
                    at.insert(mq.clone(), p.next_offset);
                }
                if got == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Consuming {
            seen,
            next,
            twice,
            stop,
            task,
        }
    }

    /// The acks not handed to this consumer (yet).
    pub fn missing(&self, acks: &[Ack]) -> Vec<Ack> {
        let seen = self.seen.lock().unwrap();
        acks.iter()
            .filter(|a| {
                seen.get(&(a.broker.clone(), a.queue_id))
                    .and_then(|q| q.get(&a.offset))
                    .is_none()
            })
            .cloned()
            .collect()
    }

    pub async fn stop(self) -> (Seen, BTreeMap<(String, u32), u64>) {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("consumer task");
        assert_eq!(
            self.twice.load(Ordering::Relaxed),
            0,
            "a consumer was handed a message twice"
        );
        let seen = Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap();
        let next = Arc::try_unwrap(self.next).unwrap().into_inner().unwrap();
        (seen, next)
    }
}
