//! `weir consume`: a push consumer (clustering or broadcasting, concurrent or orderly
//! listener) whose listener prints every message it is handed, one line each.
//!
//! Stopping: `--count N` stops after N messages consumed successfully: the listener that
//! consumes the Nth stops the consumer, and any message handed to the listener after that
//! is neither printed nor consumed (it is failed while the consumer stops, which leaves it
//! uncommitted for the next run). `--idle-exit S` stops after S seconds without a
//! delivery; Ctrl-C (or SIGTERM) stops at once. Every stop ends with the consumer's
//! `shutdown`, which commits what was consumed and leaves the group.
//!
//! A pull the group's filter fails is printed on stderr, once per distinct failure; the
//! consumer keeps waiting for a new version (or a `weir filter reset`), and at
//! `--idle-exit` exits non-zero if the group's filter for the topic is still marked failed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use weir_client::{
    Admin, ClientInstance, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, ConsumeFrom,
    ConsumeOrderlyContext, ConsumeOrderlyStatus, Listener, MessageExt, MessageModel,
    OnFilterFailure, OnPullError, PushConsumer, PushConsumerConfig,
};

use crate::output;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum From {
    First,
    Last,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// The topic (a group's dead-letter topic too: `%DLQ%<group>`).
    topic: String,
    #[arg(long)]
    group: String,
    /// `*` or `TagA || TagB`.
    #[arg(long, default_value = "*")]
    expr: String,
    /// Where a group with no committed offset starts.
    #[arg(long, value_enum, default_value = "first")]
    from: From,
    /// Stop after this many messages consumed successfully.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this many seconds without a message.
    #[arg(long)]
    idle_exit: Option<u64>,
    /// One JSON object per message.
    #[arg(long)]
    json: bool,
    /// Every member of the group consumes every queue; progress is kept in a local file
    /// (`<offset dir>/<instance>/<group>.offsets`), not on the brokers.
    #[arg(long)]
    broadcast: bool,
    /// Broadcasting: this member's name, which names its offset file's folder.
    #[arg(long, default_value = "DEFAULT", requires = "broadcast")]
    instance: String,
    /// Broadcasting: where offset files are kept [default: $WEIR_OFFSET_DIR, else
    /// ~/.weir/offsets].
    #[arg(long, requires = "broadcast")]
    offset_dir: Option<PathBuf>,
    /// Consume each queue in order, one message at a time, holding a lease on it at its
    /// broker (an orderly listener).
    #[arg(long)]
    orderly: bool,
    /// Listener threads [default: 1 with --count, so a queue's messages finish in order
    /// and exactly the messages printed are committed; else 20]. With more threads and
    /// --count, a message turned away at the count may be behind one printed in the same
    /// queue, which the next run then delivers again.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    threads: Option<u32>,
    /// Fail every Nth message handed to the listener (reconsume later; orderly: suspend
    /// the queue a moment), to watch retries: it is printed with the result
    /// `reconsume_later` (orderly: `suspend`) and comes back later.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    fail_every: Option<u64>,
    /// Deliveries after the first before a failed message goes to the group's dead-letter
    /// topic, `%DLQ%<group>` [default: 16].
    #[arg(long)]
    max_reconsume_times: Option<u32>,
}

/// What the listener made of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Consumed,
    /// `--fail-every`: printed as failed, to be delivered again.
    Failed,
    /// Arrived while stopping: not printed, left uncommitted.
    TurnedAway,
}

/// What the listener threads and the main task share.
struct Printer {
    json: bool,
    orderly: bool,
    count: Option<u64>,
    fail_every: Option<u64>,
    /// Messages consumed successfully (printed).
    consumed: AtomicU64,
    /// Messages handed to the listener and not turned away.
    delivered: AtomicU64,
    /// The consumer must stop (the count is reached, or stdout is gone).
    done: AtomicBool,
    done_signal: tokio::sync::Notify,
    last_delivery: Mutex<Instant>,
}

impl Printer {
    /// Stops the consumer handing out messages (`stop` is the listener context's), and
    /// tells the main task.
    fn stop_now(&self, stop: &dyn Fn()) {
        stop();
        if !self.done.swap(true, Ordering::AcqRel) {
            self.done_signal.notify_one();
        }
    }

    fn handle(&self, msgs: &[MessageExt], stop: &dyn Fn()) -> Verdict {
        *self.last_delivery.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        if self.done.load(Ordering::Acquire) {
            self.stop_now(stop);
            return Verdict::TurnedAway;
        }
        let n = msgs.len() as u64;
        let first = self.delivered.fetch_add(n, Ordering::Relaxed) + 1;
        let fail = self
            .fail_every
            .is_some_and(|k| (first..first + n).any(|i| i % k == 0));
        if fail {
            let result = if self.orderly {
                "suspend"
            } else {
                "reconsume_later"
            };
            if !self.print(msgs, result) {
                self.stop_now(stop);
                return Verdict::TurnedAway;
            }
            return Verdict::Failed;
        }
        let mut last = false;
        if let Some(limit) = self.count {
            let claimed = self
                .consumed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    (c + n <= limit).then_some(c + n)
                });
            match claimed {
                Ok(before) => last = before + n == limit,
                Err(_) => {
                    self.stop_now(stop);
                    return Verdict::TurnedAway;
                }
            }
        }
        if !self.print(msgs, "consumed") {
            self.stop_now(stop);
            return Verdict::TurnedAway;
        }
        if last {
            self.stop_now(stop);
        }
        Verdict::Consumed
    }

    /// One line per message, each written whole under the stdout lock. False when stdout
    /// is gone (a closed pipe).
    fn print(&self, msgs: &[MessageExt], result: &str) -> bool {
        let mut text = String::new();
        for m in msgs {
            text.push_str(&line(m, self.json, result));
            text.push('\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    }
}

fn line(m: &MessageExt, json: bool, result: &str) -> String {
    if json {
        let mut v = crate::message_json(m);
        if let Some(o) = v.as_object_mut() {
            o.insert("result".into(), result.into());
        }
        v.to_string()
    } else {
        let mut extra = String::new();
        if m.reconsume_times > 0 {
            extra.push_str(&format!(" reconsume_times={}", m.reconsume_times));
        }
        if result != "consumed" {
            extra.push_str(&format!(" result={result}"));
        }
        format!(
            "[{}/{}/{}@{}] msg_id={} tags={:?} keys={:?}{extra} body={}",
            m.topic,
            m.broker_name,
            m.queue_id,
            m.queue_offset,
            m.msg_id,
            m.tags,
            m.keys,
            output::body_text(&m.body)
        )
    }
}

/// Waits for SIGTERM (Unix); never returns elsewhere.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut s) = signal(SignalKind::terminate()) {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}

pub async fn run(args: ConsumeArgs, client: ClientInstance) -> anyhow::Result<()> {
    // A topic that does not exist would otherwise be waited for in silence.
    Admin::new(client.clone())
        .route(&args.topic)
        .await
        .with_context(|| format!("looking up topic {}", args.topic))?;
    let mut config = PushConsumerConfig::new(args.group.clone());
    config.consume_from = match args.from {
        From::First => ConsumeFrom::FirstOffset,
        From::Last => ConsumeFrom::LastOffset,
    };
    if args.broadcast {
        config.model = MessageModel::Broadcasting;
        config.instance_name = args.instance.clone();
        if let Some(dir) = &args.offset_dir {
            config.offset_store_dir = dir.clone();
        }
    }
    let threads = match (args.threads, args.count) {
        (Some(t), _) => t as usize,
        (None, Some(_)) => 1,
        (None, None) => config.consume_thread_max,
    };
    config.consume_thread_min = threads;
    config.consume_thread_max = threads;
    config.consume_message_batch_max_size = 1;
    if let Some(n) = args.max_reconsume_times {
        config.max_reconsume_times = n;
    }

    let failures = Arc::new(FilterFailures::default());
    config.on_filter_failure = {
        let failures = Arc::clone(&failures);
        OnFilterFailure::new(move |f| failures.seen(f))
    };
    // Other failed pulls (the broker busy or away): each distinct error once on stderr,
    // the consumer pulling again meanwhile.
    config.on_pull_error = {
        let printed = Mutex::new(std::collections::HashSet::new());
        OnPullError::new(move |_, e| {
            let text = e.to_string();
            let mut printed = printed.lock().unwrap_or_else(|e| e.into_inner());
            if printed.len() < 1024 && printed.insert(text) {
                eprintln!("weir consume: pull failed, trying again: {e}");
            }
        })
    };

    let printer = Arc::new(Printer {
        json: args.json,
        orderly: args.orderly,
        count: args.count,
        fail_every: args.fail_every,
        consumed: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        done: AtomicBool::new(false),
        done_signal: tokio::sync::Notify::new(),
        last_delivery: Mutex::new(Instant::now()),
    });
    let p = Arc::clone(&printer);
    let listener = if args.orderly {
        Listener::orderly(
            move |msgs: &[MessageExt], ctx: &mut ConsumeOrderlyContext| match p
                .handle(msgs, &|| ctx.stop_consumer())
            {
                Verdict::Consumed => ConsumeOrderlyStatus::Success,
                Verdict::Failed | Verdict::TurnedAway => {
                    ConsumeOrderlyStatus::SuspendCurrentQueueAMoment
                }
            },
        )
    } else {
        Listener::concurrently(
            move |msgs: &[MessageExt], ctx: &mut ConsumeConcurrentlyContext| match p
                .handle(msgs, &|| ctx.stop_consumer())
            {
                Verdict::Consumed => ConsumeConcurrentlyStatus::ConsumeSuccess,
                Verdict::Failed | Verdict::TurnedAway => ConsumeConcurrentlyStatus::ReconsumeLater,
            },
        )
    };
    let subscriptions = vec![(args.topic.clone(), args.expr.clone())];
    let consumer = PushConsumer::start(client.clone(), config, subscriptions, listener)
        .await
        .with_context(|| format!("consuming {} as {}", args.topic, args.group))?;

    let idle = args.idle_exit.map(Duration::from_secs);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let term = terminated();
    tokio::pin!(term);
    loop {
        if printer.done.load(Ordering::Acquire) {
            break;
        }
        tokio::select! {
            _ = printer.done_signal.notified() => break,
            _ = tick.tick() => {
                let last = *printer.last_delivery.lock().unwrap_or_else(|e| e.into_inner());
                if idle.is_some_and(|d| last.elapsed() >= d) {
                    break;
                }
            }
            _ = &mut ctrl_c => break,
            _ = &mut term => break,
        }
    }
    consumer
        .shutdown()
        .await
        .context("stopping the consumer (its progress may not be committed)")?;
    let _ = std::io::stdout().lock().flush();
    if failures.any() {
        // Asked at the end, so a reset or a new version since the last failure counts.
        let still = match Admin::new(client).list_filters(Some(&args.group)).await {
            Ok(lists) => lists
                .into_iter()
                .flat_map(|(broker, l)| l.filters.into_iter().map(move |f| (broker.clone(), f)))
                .find(|(_, f)| f.topic == args.topic && f.failed.is_some())
                .map(|(broker, f)| {
                    format!(
                        "broker {broker}: version {}: {}",
                        f.version,
                        f.failed.unwrap_or_default()
                    )
                }),
            Err(e) => failures
                .last_marked()
                .map(|m| format!("{m} (its state now is unknown: {e})")),
        };
        if let Some(why) = still {
            anyhow::bail!(
                "the filter of group {} on topic {} is marked failed: {why}",
                args.group,
                args.topic
            );
        }
    }
    Ok(())
}

/// The filter failures the consumer met: each distinct one printed once on stderr, and
/// whether the last one said the filter is marked failed.
#[derive(Default)]
struct FilterFailures {
    state: Mutex<FailuresSeen>,
}

#[derive(Default)]
struct FailuresSeen {
    printed: std::collections::HashSet<String>,
    /// The last failure, if the filter was marked failed then.
    marked: Option<String>,
}

impl FilterFailures {
    fn seen(&self, f: &weir_client::FilterFailed) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.marked = f.marked.then(|| f.message.clone());
        // Bounded: a filter failing in new ways forever does not grow this without end.
        if s.printed.len() < 1024 && s.printed.insert(f.message.clone()) {
            eprintln!("weir consume: filter failed: {f}");
        }
    }

    fn any(&self) -> bool {
        !self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .printed
            .is_empty()
    }

    /// The last failure, if it said the filter is marked failed.
    fn last_marked(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .marked
            .clone()
    }
}
