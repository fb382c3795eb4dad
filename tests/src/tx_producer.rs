//! A transactional producer in a child process (the test binary re-run on its ignored test
//! [`CHILD_PRODUCER_TEST`], which calls [`run_child`]), driven by lines on its stdin, and
//! telling what it did by lines on its stdout.
//!
//! Every message has one key, and the key says how a check-back about it is answered: a
//! key ending in `~c` is committed, `~r` rolled back, anything else Unknown. So whatever a
//! test's producers, brokers and kills do, a transaction's final outcome is known from its
//! key, and the local transaction's outcome (the command's) only decides how it gets there.
//!
//! Commands (stdin):
//! - `send KEY OUTCOME [TAG]`: `send_message_in_transaction` of a message with key and body
//!   KEY, whose local transaction answers OUTCOME: `commit`, `rollback`, `unknown`, `panic`
//!   (panics: Unknown), `hang` (never returns: the process is to be killed) or `block`
//!   (waits for `release`). Up to 64 sends run at once.
//! - `release KEY OUTCOME`: the blocked local transaction of KEY answers OUTCOME.
//! - `heartbeat`: a heartbeat to every broker now.
//!
//! Lines (stdout): `READY CLIENT_ID`; `HALF KEY TXID` (the local transaction started: the
//! half message is stored); `SENT KEY TXID HALF_OFFSET STATE ok|END_ERROR`;
//! `FAILED KEY ERROR` (the half was not sent, or not known to be); `CHECK KEY TXID ANSWER`.

use std::any::Any;
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use weir_client::{
    ClientConfig, ClientInstance, LocalTransactionState, Message, MessageExt, TransactionListener,
    TransactionProducer, TransactionProducerConfig,
};

use crate::child::ChildProcess;

/// The ignored test a producer child runs.
pub const CHILD_PRODUCER_TEST: &str = "child_tx_producer";
const ENV_NAMESRV: &str = "WEIR_TX_CHILD_NAMESRV";
const ENV_GROUP: &str = "WEIR_TX_CHILD_GROUP";
const ENV_TOPIC: &str = "WEIR_TX_CHILD_TOPIC";
const ENV_CONFIRM: &str = "WEIR_TX_CHILD_CONFIRM";
/// Sends at once, at most.
const IN_FLIGHT: usize = 64;

/// How a check-back about `key` is answered.
pub fn check_answer(key: &str) -> LocalTransactionState {
    if key.ends_with("~c") {
        LocalTransactionState::Commit
    } else if key.ends_with("~r") {
        LocalTransactionState::Rollback
    } else {
        LocalTransactionState::Unknown
    }
}

// ---------------------------------------------------------------------------------------
// The child.

/// Blocked local transactions, by key, and what they are released with.
#[derive(Default)]
struct Blocked {
    released: Mutex<HashMap<String, Option<LocalTransactionState>>>,
    changed: Condvar,
}

struct ChildListener {
    blocked: Arc<Blocked>,
}

fn parse_outcome(s: &str) -> Option<LocalTransactionState> {
    match s {
        "commit" => Some(LocalTransactionState::Commit),
        "rollback" => Some(LocalTransactionState::Rollback),
        "unknown" => Some(LocalTransactionState::Unknown),
        _ => None,
    }
}

impl TransactionListener for ChildListener {
    fn execute_local_transaction(
        &self,
        msg: &Message,
        arg: &(dyn Any + Send + Sync),
    ) -> LocalTransactionState {
        let key = msg.keys.first().cloned().unwrap_or_default();
        let outcome = arg
            .downcast_ref::<String>()
            .map_or("unknown", String::as_str);
        println!("HALF {key} {}", msg.transaction_id().unwrap_or("-"));
        match outcome {
            "panic" => panic!("the local transaction of {key} panics (on purpose)"),
            "hang" => loop {
                std::thread::park();
            },
            "block" => {
                let mut r = self.blocked.released.lock().expect("blocked");
                r.entry(key.clone()).or_insert(None);
                loop {
                    if let Some(Some(state)) = r.get(&key) {
                        return *state;
                    }
                    r = self.blocked.changed.wait(r).expect("blocked");
                }
            }
            other => parse_outcome(other).unwrap_or(LocalTransactionState::Unknown),
        }
    }

    fn check_local_transaction(&self, msg: &MessageExt) -> LocalTransactionState {
        let key = msg.keys.first().unwrap_or_default().to_owned();
        let answer = check_answer(&key);
        println!(
            "CHECK {key} {} {}",
            msg.transaction_id().unwrap_or("-"),
            answer.as_str()
        );
        answer
    }
}

/// The producer child's body: reads commands until stdin ends, then exits.
pub fn run_child() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let (namesrv, group, topic) = (var(ENV_NAMESRV), var(ENV_GROUP), var(ENV_TOPIC));
    let confirm = var(ENV_CONFIRM) == "1";
    // The listener's own panics are expected: one line each, not a backtrace.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map_or("", String::as_str);
        if text.contains("(on purpose)") {
            eprintln!("tx producer child: {text}");
        } else {
            default_hook(info);
        }
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let blocked = Arc::new(Blocked::default());
    let producer = rt.block_on(async {
        let mut c = ClientConfig::new(namesrv);
        c.request_timeout = Duration::from_secs(3);
        let client = ClientInstance::new(c).expect("client");
        let mut config = TransactionProducerConfig::new(group);
        config.confirm_end = confirm;
        let listener = ChildListener {
            blocked: Arc::clone(&blocked),
        };
        let p = TransactionProducer::new(config, client.clone(), listener).expect("producer");
        // Known to the brokers before READY: check-backs can come at once.
        client.heartbeat().await.expect("first heartbeat");
        // On a line of its own (the test harness has begun one).
        println!("\nREADY {}", client.client_id());
        Arc::new((p, client))
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["send", key, outcome, ..] => {
                let mut msg = Message::new(topic.clone(), key.to_owned()).with_key(key);
                if let Some(tag) = words.get(3) {
                    msg = msg.with_tags(tag.clone());
                }
                let (p, slots, outcome) = (
                    Arc::clone(&producer),
                    Arc::clone(&slots),
                    outcome.to_owned(),
                );
                let key = key.to_owned();
                rt.spawn(async move {
                    let _slot = slots.acquire().await;
                    let arg: String = outcome;
                    match p.0.send_message_in_transaction(&msg, &arg).await {
                        Ok(r) => {
                            let offset = r
                                .send_result
                                .msg_id
                                .parse::<weir_protocol::MessageId>()
                                .map_or(u64::MAX, |id| id.offset);
                            let end = r.end_error.map_or("ok".to_owned(), |e| {
                                format!("{e}").replace(char::is_whitespace, "_")
                            });
                            println!(
                                "SENT {key} {} {offset} {} {end}",
                                r.transaction_id,
                                r.local_state.as_str()
                            );
                        }
                        Err(e) => println!("FAILED {key} {e}"),
                    }
                });
            }
            ["release", key, outcome] => {
                let state = parse_outcome(outcome).expect("release KEY commit|rollback|unknown");
                blocked
                    .released
                    .lock()
                    .expect("blocked")
                    .insert(key.to_owned(), Some(state));
                blocked.changed.notify_all();
            }
            ["heartbeat"] => {
                let p = Arc::clone(&producer);
                rt.spawn(async move {
                    if let Err(e) = p.1.heartbeat().await {
                        println!("HEARTBEAT-FAILED {e}");
                    }
                });
            }
            _ => panic!("unknown command {line:?}"),
        }
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------
// The parent's handle.

/// A `SENT` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub key: String,
    pub transaction_id: String,
    /// The half message's commit log offset.
    pub half_offset: u64,
    pub local_state: String,
    /// Whether the outcome reached the broker (for Unknown: always).
    pub end_ok: bool,
}

fn parse_sent(line: &str) -> Option<Sent> {
    let mut w = line.strip_prefix("SENT ")?.split(' ');
    Some(Sent {
        key: w.next()?.to_owned(),
        transaction_id: w.next()?.to_owned(),
        half_offset: w.next()?.parse().ok()?,
        local_state: w.next()?.to_owned(),
        end_ok: w.next()? == "ok",
    })
}

/// A producer child.
pub struct TxProducer {
    pub child: ChildProcess,
    pub client_id: String,
}

impl TxProducer {
    /// Starts a producer of `group` sending to `topic`, and waits until the brokers know
    /// it. `confirm`: outcomes are reported as calls (`confirm_end`), else one way.
    pub async fn start(namesrv: &str, group: &str, topic: &str, confirm: bool) -> TxProducer {
        let (namesrv, group, topic) = (namesrv.to_owned(), group.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut child = ChildProcess::spawn(
                CHILD_PRODUCER_TEST,
                &[
                    (ENV_NAMESRV, &namesrv),
                    (ENV_GROUP, &group),
                    (ENV_TOPIC, &topic),
                    (ENV_CONFIRM, if confirm { "1" } else { "0" }),
                ],
            );
            let client_id = child.wait_for("the producer is ready", Duration::from_secs(30), |l| {
                l.strip_prefix("READY ").map(str::to_owned)
            });
            TxProducer { child, client_id }
        })
        .await
        .expect("producer start task")
    }

    pub fn send(&mut self, key: &str, outcome: &str) {
        self.child.send_line(&format!("send {key} {outcome}"));
    }

    pub fn send_tagged(&mut self, key: &str, outcome: &str, tag: &str) {
        self.child.send_line(&format!("send {key} {outcome} {tag}"));
    }

    pub fn release(&mut self, key: &str, outcome: &str) {
        self.child.send_line(&format!("release {key} {outcome}"));
    }

    pub fn heartbeat(&mut self) {
        self.child.send_line("heartbeat");
    }

    /// Every `SENT` line so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.child
            .lines()
            .iter()
            .filter_map(|l| parse_sent(l))
            .collect()
    }

    /// Keys of every `FAILED` line so far.
    pub fn failed(&self) -> Vec<String> {
        self.child
            .lines()
            .iter()
            .filter_map(|l| {
                l.strip_prefix("FAILED ")?
                    .split(' ')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Keys checked back so far (a key once per check-back).
    pub fn checked(&self) -> Vec<String> {
        self.child
            .lines()
            .iter()
            .filter_map(|l| {
                l.strip_prefix("CHECK ")?
                    .split(' ')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Whether a line says the local transaction of `key` started (its half is stored).
    pub fn half_stored(&self, key: &str) -> bool {
        self.child
            .find(|l| (l.strip_prefix("HALF ")?.split(' ').next()? == key).then_some(()))
            .is_some()
    }

    /// The `SENT` line of `key`, if there is one yet.
    pub fn sent_of(&self, key: &str) -> Option<Sent> {
        self.child.find(|l| parse_sent(l).filter(|s| s.key == key))
    }

    /// Waits until `cond` holds of this producer, polling; panics with `what` after
    /// `timeout`.
    pub async fn until(&self, what: &str, timeout: Duration, cond: impl Fn(&TxProducer) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for the producer: {what}; its last lines: {:?}",
                self.child.lines().iter().rev().take(5).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGKILLs the producer.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}
