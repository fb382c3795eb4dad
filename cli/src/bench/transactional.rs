//! `weir bench produce --transaction`: what sends (a plain producer, or a transactional one
//! whose local transactions commit at once or answer Unknown), and, for Unknown, the wait
//! for the broker's check-backs and their rate.
//!
//! The rate of check-backs is the number answered over the time from the first check-back
//! to when the last answer was sent (polled every 20 ms).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::ValueEnum;

use super::produce::unconfirmed;
use weir_client::{
    ClientInstance, LocalTransactionState, Message, MessageExt, Producer, Result,
    TransactionListener, TransactionProducer, TransactionProducerConfig,
};

use super::{grouped, per_sec, round2};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum TxMode {
    /// The local transaction commits at once.
    Commit,
    /// The local transaction answers Unknown; the check-back commits.
    Unknown,
}

impl TxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TxMode::Commit => "commit",
            TxMode::Unknown => "unknown",
        }
    }
}

/// Commits at once (or says Unknown), and commits on every check-back, noting the first.
pub struct BenchListener {
    execute: LocalTransactionState,
    checks: AtomicU64,
    first_check: Mutex<Option<Instant>>,
}

impl TransactionListener for BenchListener {
    fn execute_local_transaction(
        &self,
        _msg: &Message,
        _arg: &(dyn std::any::Any + Send + Sync),
    ) -> LocalTransactionState {
        self.execute
    }

    fn check_local_transaction(&self, _msg: &MessageExt) -> LocalTransactionState {
        if self.checks.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        LocalTransactionState::Commit
    }
}

pub enum Sender {
    Plain(Producer),
    Tx {
        producer: TransactionProducer,
        listener: Arc<BenchListener>,
        mode: TxMode,
    },
}

pub fn sender(
    mode: TxMode,
    check_queue: usize,
    inline: bool,
    client: ClientInstance,
) -> Result<Sender> {
    let listener = Arc::new(BenchListener {
        execute: match mode {
            TxMode::Commit => LocalTransactionState::Commit,
            TxMode::Unknown => LocalTransactionState::Unknown,
        },
        checks: AtomicU64::new(0),
        first_check: Mutex::new(None),
    });
    let mut config = TransactionProducerConfig::new("weir-bench-tx");
    config.check_queue_max = check_queue;
    config.listener_may_block = !inline;
    let producer = TransactionProducer::with_listener(
        config,
        client,
        Arc::clone(&listener) as Arc<dyn TransactionListener>,
    )?;
    Ok(Sender::Tx {
        producer,
        listener,
        mode,
    })
}

/// What the check-backs came to.
pub struct CheckBacks {
    wanted: u64,
    answered: u64,
    received: u64,
    dropped: u64,
    failed: u64,
    secs: f64,
    timed_out: bool,
}

impl CheckBacks {
    fn per_sec(&self) -> f64 {
        per_sec(self.answered, self.secs)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "wanted": self.wanted,
            "answered": self.answered,
            "received": self.received,
            "dropped": self.dropped,
            "failed": self.failed,
            "secs": (self.secs * 1000.0).round() / 1000.0,
            "per_sec": round2(self.per_sec()),
            "timed_out": self.timed_out,
        })
    }

    pub fn text(&self) -> String {
        format!(
            "check-backs: {} of {} answered (commit) in {:.2} s from the first: {} /s; {} received, {} dropped (queue full), {} failed{}",
            grouped(self.answered),
            grouped(self.wanted),
            self.secs,
            grouped(self.per_sec().round() as u64),
            grouped(self.received),
            grouped(self.dropped),
            grouped(self.failed),
            if self.timed_out {
                "; gave up waiting (--check-timeout)"
            } else {
                ""
            }
        )
    }
}

impl Sender {
    pub fn plain(&self) -> &Producer {
        match self {
            Sender::Plain(p) => p,
            Sender::Tx { producer, .. } => producer.producer(),
        }
    }

    /// Sends one message; the number of flush timeouts (0 or 1).
    /// Sends one message: (flush timeouts, sends not confirmed by a slave) among it.
    pub async fn send_one(&self, msg: &Message) -> Result<(u64, u64)> {
        match self {
            Sender::Plain(p) => p
                .send(msg)
                .await
                .map(|r| unconfirmed(std::iter::once(r.status))),
            Sender::Tx { producer, .. } => {
                let r = producer.send_message_in_transaction(msg, &()).await?;
                match r.end_error {
                    Some(e) => Err(e),
                    None => Ok(unconfirmed(std::iter::once(r.send_result.status))),
                }
            }
        }
    }

    /// After the sends: with Unknown, waits for `sent` check-backs to be answered (up to
    /// `timeout_secs`); then lets one-way commits reach the brokers (a heartbeat's round
    /// trip on the same connections) and stops answering.
    pub async fn finish(
        &self,
        client: &ClientInstance,
        sent: u64,
        timeout_secs: u64,
    ) -> Option<CheckBacks> {
        let Sender::Tx {
            producer,
            listener,
            mode,
        } = self
        else {
            return None;
        };
        let mut out = None;
        if *mode == TxMode::Unknown && timeout_secs > 0 {
            let deadline = Instant::now() + Duration::from_secs(timeout_secs);
            let mut timed_out = false;
            while producer.check_stats().answered < sent {
                if Instant::now() >= deadline {
                    timed_out = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let first = *listener
                .first_check
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let s = producer.check_stats();
            out = Some(CheckBacks {
                wanted: sent,
                answered: s.answered,
                received: s.received,
                dropped: s.dropped,
                failed: s.failed,
                secs: first.map_or(0.0, |t| t.elapsed().as_secs_f64()),
                timed_out,
            });
        }
        let _ = client.heartbeat().await;
        producer.shutdown().await;
        out
    }
}
