//! What the parent drives against the child broker: producers whose every outcome goes in
//! a [`Ledger`], and a push consumer group whose every delivery goes in [`Deliveries`].
//!
//! A message is named by its key, `crash-p<producer>-n<sequence>`; its tag, properties and
//! body follow from the key (and the run's seed), so nothing but the key needs keeping.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use weir_client::{
    ClientConfig, ClientInstance, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    ConsumeFrom, Listener, Message, MessageExt, Producer, PushConsumer, PushConsumerConfig,
    SendResult, SendStatus,
};
use weir_protocol::MessageId;
use weir_tests::Rng;

pub const TOPIC: &str = "CrashTopic";
pub const QUEUES: u32 = 8;
/// The consumer group whose progress is checked across kills.
pub const GROUP: &str = "crash-consumers";
pub const PRODUCERS: u32 = 4;
/// Members of the consumer group (each its own client).
pub const CONSUMERS: usize = 2;

/// A message as sent, and as it must come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub tags: String,
    pub props: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn key(producer: u32, seq: u64) -> String {
    format!("crash-p{producer}-n{seq}")
}

/// (producer, sequence) of a key made by [`key`].
pub fn parse_key(key: &str) -> Option<(u32, u64)> {
    let (p, n) = key.strip_prefix("crash-p")?.split_once("-n")?;
    Some((p.parse().ok()?, n.parse().ok()?))
}

/// Message `seq` of `producer`: bodies empty, small, medium and multi-KB; some without tag.
pub fn expected(seed: u64, producer: u32, seq: u64) -> Expected {
    let mut rng = Rng::new(seed ^ (u64::from(producer) << 56) ^ seq.wrapping_mul(0x2545_f491));
    let len = match rng.below(20) {
        0 => 0,
        1..=11 => 1 + rng.below(200),
        12..=17 => 200 + rng.below(1800),
        _ => 2000 + rng.below(6 << 10),
    } as usize;
    let mut body = Vec::with_capacity(len + 8);
    while body.len() < len {
        body.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    body.truncate(len);
    let tags = match seq % 4 {
        0 => String::new(),
        n => format!("Tag{n}"),
    };
    let mut props = vec![
        ("producer".to_owned(), producer.to_string()),
        ("seq".to_owned(), seq.to_string()),
    ];
    if rng.below(3) == 0 {
        let n = rng.below(48) as usize;
        props.push(("note".to_owned(), "é-x".repeat(n)));
    }
    Expected { tags, props, body }
}

fn message(seed: u64, producer: u32, seq: u64) -> Message {
    let e = expected(seed, producer, seq);
    let mut m = Message::new(TOPIC, e.body)
        .with_tags(e.tags)
        .with_key(key(producer, seq));
    m.properties = e.props;
    m
}

/// Where an acknowledged send said its message went.
#[derive(Debug, Clone)]
pub struct Ack {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub msg_id: String,
}

/// Every send's outcome.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
    /// The largest commit log offset among acknowledged messages (from their ids).
    pub max_acked_commit_log_offset: AtomicU64,
}

#[derive(Default)]
pub struct LedgerInner {
    /// Sent with `SendStatus::Ok`: must be present exactly once, where the answer said.
    pub acked: HashMap<String, Ack>,
    /// Sent without a success answer (an error, a timeout, a flush timeout): present at
    /// most once.
    pub unknown: HashSet<String>,
    /// Answers that do not fit the request (wrong count, unparsable id).
    pub odd: Vec<String>,
}

impl Ledger {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, keys: Vec<String>, outcome: weir_client::Result<Vec<SendResult>>) {
        let mut l = self.lock();
        let results = match outcome {
            Ok(r) if r.len() == keys.len() => r,
            Ok(r) => {
                l.odd
                    .push(format!("{} answers for {} messages", r.len(), keys.len()));
                l.unknown.extend(keys);
                return;
            }
            Err(_) => {
                l.unknown.extend(keys);
                return;
            }
        };
        for (key, r) in keys.into_iter().zip(results) {
            if r.status != SendStatus::Ok {
                l.unknown.insert(key);
                continue;
            }
            match MessageId::from_str(&r.msg_id) {
                Ok(id) => {
                    self.max_acked_commit_log_offset
                        .fetch_max(id.offset, Ordering::Relaxed);
                }
                Err(e) => l.odd.push(format!("{key}: message id {:?}: {e}", r.msg_id)),
            }
            let ack = Ack {
                queue_id: r.queue_id,
                queue_offset: r.queue_offset,
                msg_id: r.msg_id,
            };
            if l.acked.insert(key.clone(), ack).is_some() {
                l.odd.push(format!("{key} acknowledged twice"));
            }
        }
    }
}

/// What the consumer group was handed.
#[derive(Default)]
pub struct Deliveries {
    inner: Mutex<DeliveriesInner>,
}

#[derive(Default)]
pub struct DeliveriesInner {
    /// (queue, offset) → key, for everything handed to the group's listener.
    pub at: HashMap<(u32, u64), String>,
    /// Listener calls' messages, redeliveries included.
    pub total: u64,
    /// Deliveries whose content was not what was sent.
    pub bad: Vec<String>,
    /// Places the group saw holding one message and later another: the first was rolled
    /// back by a restart (allowed for an unacknowledged message; the checks catch an
    /// acknowledged one).
    pub rolled_back: Vec<String>,
}

impl Deliveries {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, DeliveriesInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, seed: u64, msgs: &[MessageExt]) {
        let mut d = self.lock();
        for m in msgs {
            d.total += 1;
            let k = m.keys.first().unwrap_or_default();
            let place = (m.queue_id, m.queue_offset);
            let problem = match parse_key(k) {
                None => Some(format!("{place:?}: a message with key {k:?}")),
                Some((p, n)) => {
                    let want = expected(seed, p, n);
                    let got = Expected {
                        tags: m.tags.clone(),
                        props: m.properties.to_vec(),
                        body: m.body.to_vec(),
                    };
                    (got != want || m.topic != TOPIC || m.keys.len() != 1)
                        .then(|| format!("{place:?}: {k} delivered with other content"))
                }
            };
            if let Some(p) = problem {
                d.bad.push(p);
            }
            if let Some(before) = d.at.insert(place, k.to_owned())
                && before != k
            {
                d.rolled_back
                    .push(format!("{place:?}: delivered as {before}, later as {k}"));
            }
        }
    }
}

fn client(namesrv: &str) -> ClientInstance {
    ClientInstance::new(ClientConfig::new(namesrv)).expect("client")
}

/// Producers and consumers against one incarnation of the child broker.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    producers: Vec<JoinHandle<u64>>,
    consumers: Vec<PushConsumer>,
}

impl Traffic {
    /// Starts the consumer group and, given next sequences, one producer each.
    pub async fn start(
        namesrv: &str,
        seed: u64,
        round: u64,
        next_seqs: &[u64],
        ledger: &Arc<Ledger>,
        deliveries: &Arc<Deliveries>,
    ) -> Traffic {
        let mut consumers = Vec::new();
        for _ in 0..CONSUMERS {
            let mut config = PushConsumerConfig::new(GROUP);
            config.consume_from = ConsumeFrom::FirstOffset;
            config.consume_thread_min = 1;
            config.consume_thread_max = 2;
            config.consume_message_batch_max_size = 16;
            config.pull_batch_size = 64;
            config.persist_offset_interval = Duration::from_millis(100);
            config.rebalance_interval = Duration::from_secs(2);
            config.long_poll = Duration::from_secs(2);
            let d = Arc::clone(deliveries);
            let listener = Listener::concurrently(
                move |msgs: &[MessageExt], _: &mut ConsumeConcurrentlyContext| {
                    d.record(seed, msgs);
                    ConsumeConcurrentlyStatus::ConsumeSuccess
                },
            );
            let c = PushConsumer::start(
                client(namesrv),
                config,
                vec![(TOPIC.into(), "*".into())],
                listener,
            )
            .await
            .expect("the consumer starts");
            consumers.push(c);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let producers = next_seqs
            .iter()
            .enumerate()
            .map(|(p, &first)| {
                let p = p as u32;
                let mut producer = Producer::new(format!("crash-producer-{p}"), client(namesrv));
                // One attempt per send: a retry after a lost answer could store a message
                // twice, which is the client's doing, not the store's.
                producer.set_retry_times_when_send_failed(0);
                let rng = Rng::new(seed ^ (round << 32) ^ u64::from(p));
                tokio::spawn(produce(
                    producer,
                    p,
                    seed,
                    first,
                    rng,
                    Arc::clone(ledger),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        Traffic {
            stop,
            producers,
            consumers,
        }
    }

    /// Producers start no new send (those under way go on: the kill cuts them).
    pub fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the producers (call after [`halt`](Self::halt)); returns each one's next
    /// sequence. The consumers are dropped without committing (their broker is gone).
    pub async fn join(self) -> Vec<u64> {
        self.halt();
        let mut next = Vec::new();
        for p in self.producers {
            next.push(p.await.expect("producer task"));
        }
        drop(self.consumers);
        next
    }

    /// Stops the consumers cleanly (they commit what they consumed).
    pub async fn shutdown(self) {
        assert!(self.producers.is_empty(), "shutdown is for consumers only");
        for c in self.consumers {
            c.shutdown().await.expect("consumer shuts down");
        }
    }
}

/// Sends single messages and batches of 2..=8 until stopped; returns the next sequence.
async fn produce(
    producer: Producer,
    p: u32,
    seed: u64,
    mut seq: u64,
    mut rng: Rng,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) -> u64 {
    while !stop.load(Ordering::SeqCst) {
        let n = if rng.below(4) == 0 {
            2 + rng.below(7)
        } else {
            1
        };
        let msgs: Vec<Message> = (seq..seq + n).map(|s| message(seed, p, s)).collect();
        let keys = (seq..seq + n).map(|s| key(p, s)).collect();
        let outcome = if n == 1 {
            producer.send(&msgs[0]).await.map(|r| vec![r])
        } else {
            producer.send_batch(&msgs).await
        };
        ledger.record(keys, outcome);
        seq += n;
    }
    seq
}
