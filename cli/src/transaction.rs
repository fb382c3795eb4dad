//! Transactions from the command line: `weir send --transaction commit|rollback|unknown`
//! (a transactional producer whose local transaction answers as told; with `unknown` it
//! stays up until the broker's check-back has been answered `--check-answer`), and
//! `weir transaction list|dead|resolve` over every master broker.
//!
//! The send reports its outcome as a call (`confirm_end`), so the process never exits with
//! a decision still queued; a check-back about another transaction of the same producer
//! group (another process's) is answered Unknown, never with this run's answer.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Subcommand, ValueEnum};
use weir_client::{
    Admin, ClientInstance, LocalTransactionState, Message, MessageExt, TransactionDecision,
    TransactionInfo, TransactionListener, TransactionProducer, TransactionProducerConfig,
    TransactionSendResult, TransactionState,
};

use crate::{SendArgs, output};

/// The local transaction's outcome, as `weir send --transaction` is told.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Outcome {
    Commit,
    Rollback,
    /// Not known: the broker asks back (after its `transaction_timeout_ms`, at its
    /// `transaction_check_interval_ms`), and `--check-answer` answers.
    Unknown,
}

/// A decision: commit or rollback.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Rollback,
}

impl Decision {
    fn state(self) -> LocalTransactionState {
        match self {
            Decision::Commit => LocalTransactionState::Commit,
            Decision::Rollback => LocalTransactionState::Rollback,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TransactionCmd {
    /// Pending transactions (half messages waiting for a decision), oldest first: age and
    /// check-backs so far.
    List(ListArgs),
    /// Dead transactions (given up on after too many check-backs), oldest first.
    Dead(ListArgs),
    /// Decide a dead transaction by hand.
    Resolve {
        transaction_id: String,
        #[arg(value_enum)]
        decision: Decision,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only this producer group's.
    #[arg(long)]
    group: Option<String>,
    /// At most this many per broker.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max: u32,
    /// One JSON object per transaction.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: TransactionCmd, client: ClientInstance) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        TransactionCmd::List(args) => list(&admin, TransactionState::Pending, args).await,
        TransactionCmd::Dead(args) => list(&admin, TransactionState::Dead, args).await,
        TransactionCmd::Resolve {
            transaction_id,
            decision,
            json,
        } => {
            let d = match decision {
                Decision::Commit => TransactionDecision::Commit,
                Decision::Rollback => TransactionDecision::Rollback,
            };
            let (broker, r) = admin
                .resolve_transaction(&transaction_id, d)
                .await
                .with_context(|| format!("resolving transaction {transaction_id}"))?;
            let done = match decision {
                Decision::Commit => "committed",
                Decision::Rollback => "rolled back",
            };
            if json {
                let v = serde_json::json!({
                    "transaction_id": transaction_id,
                    "broker": broker,
                    "decision": done,
                    "msg_id": r.msg_id,
                });
                println!("{v}");
            } else {
                match r.msg_id {
                    Some(id) => println!("{done} {transaction_id} on {broker}: msg_id={id}"),
                    None => println!("{done} {transaction_id} on {broker}"),
                }
            }
            Ok(())
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An age in ms as `4.2s`, `12m05s`, `3h07m`.
fn age_text(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{:.1}s", ms.max(0) as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

async fn list(admin: &Admin, state: TransactionState, args: ListArgs) -> anyhow::Result<()> {
    let lists = admin
        .list_transactions(state, args.group.as_deref(), args.max)
        .await?;
    let now = now_ms();
    let rows: Vec<(&String, &TransactionInfo)> = lists
        .iter()
        .flat_map(|(b, l)| l.transactions.iter().map(move |t| (b, t)))
        .collect();
    if args.json {
        for (broker, t) in &rows {
            let v = serde_json::json!({
                "broker": broker,
                "transaction_id": t.transaction_id,
                "producer_group": t.producer_group,
                "topic": t.topic,
                "queue": t.queue_id,
                "msg_id": t.msg_id,
                "commit_log_offset": t.commit_log_offset,
                "first_stored_ms": t.first_stored_ms,
                "age_ms": now - t.first_stored_ms,
                "check_times": t.check_times,
            });
            println!("{v}");
        }
    } else {
        let mut table = vec![
            [
                "BROKER",
                "TRANSACTION_ID",
                "GROUP",
                "TOPIC",
                "QUEUE",
                "AGE",
                "CHECKS",
                "MSG_ID",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for (broker, t) in &rows {
            table.push(vec![
                (*broker).clone(),
                t.transaction_id.clone(),
                t.producer_group.clone(),
                t.topic.clone(),
                t.queue_id.to_string(),
                age_text(now - t.first_stored_ms),
                t.check_times.to_string(),
                t.msg_id.clone(),
            ]);
        }
        output::table(&table);
    }
    for (broker, l) in &lists {
        if l.truncated {
            eprintln!(
                "weir: {broker} has more than {} (--max shows more)",
                args.max
            );
        }
    }
    Ok(())
}

/// `weir send --transaction`'s listener: the local transaction answers as told; a
/// check-back about one of this run's transactions answers `--check-answer` (and is noted),
/// about any other Unknown.
struct CliListener {
    outcome: LocalTransactionState,
    answer: Option<LocalTransactionState>,
    /// This run's transactions not yet checked back.
    waiting: Mutex<BTreeSet<String>>,
    checked: tokio::sync::Notify,
}

impl TransactionListener for CliListener {
    fn execute_local_transaction(
        &self,
        msg: &Message,
        _arg: &(dyn std::any::Any + Send + Sync),
    ) -> LocalTransactionState {
        if self.outcome == LocalTransactionState::Unknown
            && let Some(id) = msg.transaction_id()
        {
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_owned());
        }
        self.outcome
    }

    fn check_local_transaction(&self, msg: &MessageExt) -> LocalTransactionState {
        let id = msg.transaction_id().unwrap_or_default();
        let mine = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match (mine, self.answer) {
            (true, Some(answer)) => {
                eprintln!(
                    "weir: the broker asked about transaction {id}: answering {}",
                    answer.as_str()
                );
                self.checked.notify_one();
                answer
            }
            _ => LocalTransactionState::Unknown,
        }
    }
}

fn print_result(r: &TransactionSendResult, json: bool) -> anyhow::Result<()> {
    crate::print_sent_with(
        &r.send_result,
        &[
            ("transaction_id", &r.transaction_id),
            ("local_state", r.local_state.as_str()),
        ],
        json,
    )
}

/// `weir send --transaction …`.
pub async fn send(args: SendArgs, outcome: Outcome, client: ClientInstance) -> anyhow::Result<()> {
    if args.queue.is_some() || args.order_key.is_some() {
        bail!("--transaction sends round-robin: --queue and --order-key do not apply");
    }
    let outcome = match outcome {
        Outcome::Commit => LocalTransactionState::Commit,
        Outcome::Rollback => LocalTransactionState::Rollback,
        Outcome::Unknown => LocalTransactionState::Unknown,
    };
    let answer = args.check_answer.map(Decision::state);
    if outcome == LocalTransactionState::Unknown && answer.is_none() {
        bail!("--transaction unknown needs --check-answer commit|rollback");
    }
    let listener = Arc::new(CliListener {
        outcome,
        answer,
        waiting: Mutex::new(BTreeSet::new()),
        checked: tokio::sync::Notify::new(),
    });
    let mut config = TransactionProducerConfig::new(args.producer_group.clone());
    config.confirm_end = true;
    let producer = TransactionProducer::with_listener(
        config,
        client,
        Arc::clone(&listener) as Arc<dyn TransactionListener>,
    )?;
    let make = |body: Bytes| {
        let mut m = Message::new(args.topic.clone(), body);
        m.tags = args.tag.clone().unwrap_or_default();
        m.keys = args.keys.clone();
        m.properties = args.props.clone();
        m.with_delay_level(args.delay_level)
    };
    let bodies: Vec<Bytes> = if let Some(body) = &args.body {
        vec![Bytes::from(body.clone())]
    } else if let Some(path) = &args.file {
        vec![Bytes::from(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        )]
    } else {
        let mut lines = Vec::new();
        for line in std::io::stdin().lock().lines() {
            lines.push(Bytes::from(line.context("reading standard input")?));
        }
        lines
    };
    for body in bodies {
        let r = producer
            .send_message_in_transaction(&make(body), &())
            .await?;
        print_result(&r, args.json)?;
        if let Some(e) = r.end_error {
            bail!(
                "transaction {}: the {} did not reach the broker ({e}); it stays pending and the broker will ask this group's producers",
                r.transaction_id,
                r.local_state.as_str()
            );
        }
    }
    if outcome != LocalTransactionState::Unknown {
        producer.shutdown().await;
        return Ok(());
    }
    wait_for_check_backs(&producer, &listener, args.check_timeout).await
}

/// Waits until every transaction of this run was asked about and answered.
async fn wait_for_check_backs(
    producer: &TransactionProducer,
    listener: &CliListener,
    timeout_secs: u64,
) -> anyhow::Result<()> {
    let total = listener
        .waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    if timeout_secs > 0 {
        eprintln!(
            "weir: waiting up to {timeout_secs} s for the broker to ask about {total} transaction(s) \
         (after its transaction_timeout_ms, at its transaction_check_interval_ms: 6 s and 60 s by default)"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let checked = listener.checked.notified();
        tokio::pin!(checked);
        checked.as_mut().enable();
        let left: Vec<String> = listener
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        if left.is_empty() {
            break;
        }
        let now = Instant::now();
        if now >= deadline || tokio::time::timeout(deadline - now, checked).await.is_err() {
            producer.shutdown().await;
            bail!(
                "no check-back within {timeout_secs} s for transaction(s) {}: still pending (weir transaction list); \
                 a live producer of group {} answers when the broker asks (--check-timeout waits longer)",
                left.join(", "),
                producer.group()
            );
        }
    }
    // Every answer is given: let them reach the broker.
    producer.shutdown().await;
    let stats = producer.check_stats();
    if stats.failed > 0 || stats.answered < total as u64 {
        bail!(
            "{} of {total} answers to check-backs did not reach the broker (it will ask again)",
            total as u64 - stats.answered.min(total as u64)
        );
    }
    eprintln!("weir: answered {total} check-back(s)");
    Ok(())
}
