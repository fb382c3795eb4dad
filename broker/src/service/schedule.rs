//! Scheduled (delay-level) messages.
//!
//! A message sent with `DELAY=N` is stored on [`SCHEDULE_TOPIC`] queue `N-1` with its real
//! destination in `REAL_TOPIC`/`REAL_QID`. One task per level reads its queue in order (one
//! level, one delay: arrival order is due order), waits for the head to be due — its
//! original store time plus the level's delay — and puts a copy on the real topic. Progress
//! is a consumer offset of group [`SCHEDULE_GROUP`], advanced only after the copy is stored:
//! a restart never delivers early and never loses; after a crash a few may come twice.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{debug, info, warn};
use weir_protocol::Message;
use weir_protocol::names::{SCHEDULE_TOPIC, property};
use weir_protocol::record::{self, NO_PREPARED_TX, pos, sys_flag};
use weir_store::{GetStatus, ReadLimits, StoreError};

use crate::broker::Broker;
use crate::error::ConfigError;

/// The consumer group whose offsets on [`SCHEDULE_TOPIC`] are the schedulers' progress.
pub const SCHEDULE_GROUP: &str = "%SCHEDULE%";
/// Most delay levels (each has a queue and a task).
pub const MAX_LEVELS: usize = 64;
/// Longest a scheduler sleeps before looking again, so a wall clock step is noticed.
const MAX_NAP: Duration = Duration::from_secs(5);
/// Wait before retrying a re-put that failed for a reason that may pass.
const RETRY_WAIT: Duration = Duration::from_millis(500);
/// Scheduled records read per look.
const READ_BATCH: usize = 32;

/// The delays of levels 1..=N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayLevels(Vec<Duration>);

impl DelayLevels {
    /// Parses `"1s 5s 10s 30s 1m …"`: whitespace-separated positive integers with a unit
    /// (ms, s, m, h, d).
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        Self::parse_levels(spec).map_err(ConfigError)
    }

    fn parse_levels(spec: &str) -> Result<Self, String> {
        let mut levels = Vec::new();
        for (i, token) in spec.split_whitespace().enumerate() {
            let level = i + 1;
            let split = token
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(token.len());
            let (number, unit) = token.split_at(split);
            if number.is_empty() {
                return Err(format!(
                    "delay_levels: level {level} {token:?} does not start with a whole number"
                ));
            }
            let ms_per_unit: u64 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => {
                    return Err(format!(
                        "delay_levels: level {level} {token:?} has no unit (use ms, s, m, h or d)"
                    ));
                }
                _ => {
                    return Err(format!(
                        "delay_levels: level {level} {token:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
                    ));
                }
            };
            // Only digits here: parsing fails only on overflow.
            let n: u64 = number.parse().map_err(|_| {
                format!("delay_levels: level {level} {token:?} is longer than a year")
            })?;
            if n == 0 {
                return Err(format!(
                    "delay_levels: level {level} {token:?} is zero; every delay must be positive"
                ));
            }
            let ms = n
                .checked_mul(ms_per_unit)
                .filter(|ms| *ms <= 365 * 86_400_000)
                .ok_or_else(|| {
                    format!("delay_levels: level {level} {token:?} is longer than a year")
                })?;
            levels.push(Duration::from_millis(ms));
        }
        if levels.is_empty() {
            return Err(
                "delay_levels is empty; give at least one delay, e.g. \"1s 5s 10s\"".into(),
            );
        }
        if levels.len() > MAX_LEVELS {
            return Err(format!(
                "delay_levels has {} levels; at most {MAX_LEVELS}",
                levels.len()
            ));
        }
        Ok(Self(levels))
    }

    /// Number of levels (at least 1).
    pub fn count(&self) -> u32 {
        self.0.len() as u32
    }

    /// The delay of `level` (1-based), clamped to the configured levels: a queue left from
    /// a configuration with more levels waits as long as the last one.
    pub fn delay(&self, level: u32) -> Duration {
        let i = (level.max(1) as usize - 1).min(self.0.len() - 1);
        self.0[i]
    }

    /// `level` within 1..=count.
    pub fn clamp(&self, level: u32) -> u32 {
        level.clamp(1, self.count())
    }
}

/// A `DELAY` property that is not a delay level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "property {name}={value:?} is not a delay level (a whole number: 0 for none, N for level N)",
    name = property::DELAY_LEVEL
)]
pub struct BadDelayLevel {
    pub value: String,
}

/// The delay level a message asks for with its `DELAY` property: `None` for none (absent
/// or 0), an error for a value that is not a whole number.
pub fn requested_level(properties: &[(String, String)]) -> Result<Option<u32>, BadDelayLevel> {
    let Some((_, v)) = properties.iter().find(|(k, _)| k == property::DELAY_LEVEL) else {
        return Ok(None);
    };
    let level: u32 = v
        .trim()
        .parse()
        .map_err(|_| BadDelayLevel { value: v.clone() })?;
    Ok((level > 0).then_some(level))
}

/// The properties that say where a scheduled message waits and goes.
pub const SCHEDULING_PROPERTIES: [&str; 3] = [
    property::DELAY_LEVEL,
    property::REAL_TOPIC,
    property::REAL_QUEUE_ID,
];

/// Rewrites `msg` to wait on the schedule topic for `level` (clamped) when its `DELAY`
/// property asks for one. Half messages are left alone (they are not delivered anyway).
pub fn divert_if_delayed(msg: &mut Message, levels: &DelayLevels) -> Result<(), BadDelayLevel> {
    let Some(level) = requested_level(&msg.properties)? else {
        return Ok(());
    };
    if !sys_flag::is_dispatched(msg.sys_flag) {
        return Ok(());
    }
    divert(msg, levels.clamp(level));
    Ok(())
}

/// Rewrites `msg` to wait on the schedule topic queue of `level` (already clamped).
pub fn divert(msg: &mut Message, level: u32) {
    msg.remove_properties(&SCHEDULING_PROPERTIES);
    let real_topic = std::mem::replace(&mut msg.topic, SCHEDULE_TOPIC.to_owned());
    let real_queue = std::mem::replace(&mut msg.queue_id, level - 1);
    msg.properties
        .push((property::DELAY_LEVEL.into(), level.to_string()));
    msg.properties
        .push((property::REAL_TOPIC.into(), real_topic));
    msg.properties
        .push((property::REAL_QUEUE_ID.into(), real_queue.to_string()));
}

/// The message a scheduled record becomes when due: its real topic and queue, the
/// scheduling properties removed, everything else as it was.
fn restore(mut msg: Message) -> Result<Message, String> {
    let topic = msg
        .property(property::REAL_TOPIC)
        .filter(|t| !t.is_empty())
        .ok_or("no REAL_TOPIC property")?
        .to_owned();
    let queue_id: u32 = msg
        .property(property::REAL_QUEUE_ID)
        .and_then(|q| q.parse().ok())
        .ok_or("no valid REAL_QID property")?;
    msg.remove_properties(&SCHEDULING_PROPERTIES);
    msg.topic = topic;
    msg.queue_id = queue_id;
    msg.prepared_tx_offset = NO_PREPARED_TX;
    Ok(msg)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What became of one due record.
enum Delivery {
    Done,
    /// Cannot ever be delivered (topic gone, damaged record): skipped.
    Skipped,
    /// Try again shortly.
    Retry,
    /// The store is shut down.
    Stop,
}

/// Delivers the messages of one level's queue as they come due, until `stop`.
pub async fn run_level(broker: Arc<Broker>, queue_id: u32, mut stop: watch::Receiver<bool>) {
    let delay = broker.levels.delay(queue_id + 1);
    let offsets = broker.store.consumer_offsets();
    let mut progress = offsets
        .query(SCHEDULE_GROUP, SCHEDULE_TOPIC, queue_id)
        .unwrap_or_else(|| broker.store.min_offset(SCHEDULE_TOPIC, queue_id));
    debug!(level = queue_id + 1, ?delay, progress, "scheduler started");
    let limits = ReadLimits {
        max_count: READ_BATCH,
        ..ReadLimits::default()
    };
    loop {
        if *stop.borrow() {
            return;
        }
        // Register for the arrival wake-up before looking, so an append in between is not
        // missed.
        let notify = broker.holds.notify_of(SCHEDULE_TOPIC, queue_id);
        let mut arrived = std::pin::pin!(notify.notified_owned());
        arrived.as_mut().enable();
        let r = broker
            .store
            .get_messages(SCHEDULE_TOPIC, queue_id, progress, limits, |_| true);
        let nap = match r.status {
            GetStatus::NoNewMessage => None,
            GetStatus::OffsetMoved => {
                warn!(
                    level = queue_id + 1,
                    from = progress,
                    to = r.next_offset,
                    "scheduled messages removed by retention before they were due; skipping them"
                );
                progress = r.next_offset;
                offsets.commit(SCHEDULE_GROUP, SCHEDULE_TOPIC, queue_id, progress);
                continue;
            }
            GetStatus::Found | GetStatus::NoMatch => {
                let mut nap = Duration::ZERO;
                let mut finished = true;
                for rec in &r.messages {
                    let view = match rec.view() {
                        Ok(v) => v,
                        Err(e) => {
                            // The store validated it on the way in; should not happen.
                            let at = rec
                                .bytes()
                                .get(..pos::QUEUE_OFFSET + 8)
                                .map_or(progress, |b| record::u64_at(b, pos::QUEUE_OFFSET));
                            warn!(level = queue_id + 1, offset = at, error = %e, "unreadable scheduled record; skipped");
                            progress = progress.max(at + 1);
                            offsets.commit(SCHEDULE_GROUP, SCHEDULE_TOPIC, queue_id, progress);
                            continue;
                        }
                    };
                    let due = view
                        .store_timestamp()
                        .saturating_add(delay.as_millis() as i64);
                    let now = now_ms();
                    if due > now {
                        nap = Duration::from_millis((due - now) as u64);
                        finished = false;
                        break;
                    }
                    match deliver(&broker, view.to_message(), queue_id).await {
                        Delivery::Done | Delivery::Skipped => {
                            progress = view.queue_offset() + 1;
                            offsets.commit(SCHEDULE_GROUP, SCHEDULE_TOPIC, queue_id, progress);
                        }
                        Delivery::Retry => {
                            nap = RETRY_WAIT;
                            finished = false;
                            break;
                        }
                        Delivery::Stop => return,
                    }
                }
                if finished && progress != r.next_offset {
                    // Past holes after (or instead of) the last message read.
                    progress = r.next_offset;
                    offsets.commit(SCHEDULE_GROUP, SCHEDULE_TOPIC, queue_id, progress);
                }
                Some(nap)
            }
        };
        match nap {
            Some(d) if d.is_zero() => continue,
            // The head is not due: nothing that arrives after it is due sooner.
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d.min(MAX_NAP)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            None => {
                tokio::select! {
                    _ = arrived => {}
                    _ = tokio::time::sleep(MAX_NAP) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

async fn deliver(broker: &Broker, scheduled: Message, queue_id: u32) -> Delivery {
    let msg = match restore(scheduled) {
        Ok(m) => m,
        Err(why) => {
            warn!(
                level = queue_id + 1,
                "scheduled message without a destination ({why}); skipped"
            );
            return Delivery::Skipped;
        }
    };
    if broker.topics.get(&msg.topic).is_none() {
        warn!(topic = %msg.topic, queue = msg.queue_id, "the topic of a due scheduled message no longer exists; skipped");
        return Delivery::Skipped;
    }
    match broker
        .store
        .put_batch_async(std::slice::from_ref(&msg))
        .await
    {
        Ok(_) => Delivery::Done,
        Err(StoreError::ShutDown) => Delivery::Stop,
        Err(e @ (StoreError::InvalidMessage(_) | StoreError::MessageTooLarge { .. })) => {
            warn!(topic = %msg.topic, queue = msg.queue_id, error = %e, "a due scheduled message cannot be stored; skipped");
            Delivery::Skipped
        }
        Err(e) => {
            warn!(topic = %msg.topic, queue = msg.queue_id, error = %e, "storing a due scheduled message failed; will retry");
            Delivery::Retry
        }
    }
}

/// Starts one scheduler per level (and per leftover queue of a configuration that had
/// more levels).
pub fn start(broker: &Arc<Broker>, stop: &watch::Sender<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    let leftover = broker
        .store
        .queues()
        .into_iter()
        .find(|(t, _)| t == SCHEDULE_TOPIC)
        .and_then(|(_, ids)| ids.last().map(|q| q + 1))
        .unwrap_or(0);
    let queues = broker.levels.count().max(leftover);
    if leftover > broker.levels.count() {
        info!(
            levels = broker.levels.count(),
            queues = leftover,
            "scheduled messages of levels beyond the configured ones wait as long as the last level"
        );
    }
    (0..queues)
        .map(|q| tokio::spawn(run_level(Arc::clone(broker), q, stop.subscribe())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels() {
        let l = DelayLevels::parse("1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h")
            .unwrap();
        assert_eq!(l.count(), 18);
        assert_eq!(l.delay(1), Duration::from_secs(1));
        assert_eq!(l.delay(18), Duration::from_secs(7200));
        assert_eq!(l.delay(99), Duration::from_secs(7200));
        let l = DelayLevels::parse(" 200ms\t400ms 1d ").unwrap();
        assert_eq!(
            l.0,
            [
                Duration::from_millis(200),
                Duration::from_millis(400),
                Duration::from_secs(86_400)
            ]
        );
        for (bad, text) in [
            ("", "empty"),
            ("   ", "empty"),
            ("1s 0s", "level 2 \"0s\" is zero"),
            ("1x", "unknown unit \"x\""),
            ("5", "no unit"),
            ("s", "whole number"),
            ("1.5s", "unknown unit \".5s\""),
            ("-1s", "whole number"),
            ("400d", "longer than a year"),
            ("99999999999999999999s", "longer than a year"),
        ] {
            let e = DelayLevels::parse(bad).unwrap_err().to_string();
            assert!(e.contains(text), "{bad:?}: {e}");
        }
        assert!(DelayLevels::parse(&"1s ".repeat(65)).is_err());
    }

    #[test]
    fn delay_property() {
        let p = |v: &str| {
            vec![
                ("a".to_string(), "b".to_string()),
                ("DELAY".into(), v.into()),
            ]
        };
        assert_eq!(requested_level(&[]), Ok(None));
        assert_eq!(requested_level(&p("0")), Ok(None));
        assert_eq!(requested_level(&p("3")), Ok(Some(3)));
        assert_eq!(requested_level(&p(" 2 ")), Ok(Some(2)));
        for bad in ["abc", "-1", "", "1.5"] {
            assert!(
                requested_level(&p(bad))
                    .unwrap_err()
                    .to_string()
                    .contains("not a delay level"),
                "{bad}"
            );
        }
    }

    #[test]
    fn divert_and_restore_round_trip() {
        let levels = DelayLevels::parse("1s 2s").unwrap();
        let orig = Message::new("T", 3, b"body".to_vec())
            .with_tags("tag")
            .with_key("k")
            .with_property("x", "1")
            .with_property("DELAY", "9");
        let mut m = orig.clone();
        divert_if_delayed(&mut m, &levels).unwrap();
        assert_eq!((m.topic.as_str(), m.queue_id), (SCHEDULE_TOPIC, 1));
        let back = restore(m).unwrap();
        let mut expected = orig;
        expected.properties.retain(|(k, _)| k != "DELAY");
        assert_eq!(back, expected);

        let mut plain = Message::new("T", 0, b"b".to_vec()).with_property("DELAY", "0");
        divert_if_delayed(&mut plain, &levels).unwrap();
        assert_eq!(plain.topic, "T");
        let mut half = Message::new("T", 0, b"b".to_vec()).with_property("DELAY", "1");
        half.sys_flag = sys_flag::TX_PREPARED;
        divert_if_delayed(&mut half, &levels).unwrap();
        assert_eq!(half.topic, "T");
        assert!(restore(Message::new(SCHEDULE_TOPIC, 0, b"b".to_vec())).is_err());
    }
}
