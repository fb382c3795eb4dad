//! The checks after each restart: the topic read back from offset 0 of every queue
//! (through a raw pull of a group that never commits) against the ledger, and the consumer
//! group's committed offsets against what it was handed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use weir_client::Admin;
use weir_tests::{Client, Received, Rng};

use crate::traffic::{Deliveries, GROUP, Ledger, LedgerInner, QUEUES, TOPIC, expected, parse_key};

/// Pulls with this group read the topic; it never commits.
const CHECK_GROUP: &str = "crash-checker";

/// Violations by kind, with the first few of each spelled out.
#[derive(Default)]
pub struct Problems {
    counts: BTreeMap<&'static str, u64>,
    examples: Vec<String>,
}

impl Problems {
    pub fn add(&mut self, kind: &'static str, detail: impl Into<String>) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        if *n <= 5 {
            self.examples.push(format!("{kind}: {}", detail.into()));
        }
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    /// Panics listing every kind of violation, if there is any.
    pub fn assert_none(&self, what: &str) {
        if self.counts.is_empty() {
            return;
        }
        panic!(
            "{what}: {:?}\nfirst examples:\n  {}",
            self.counts,
            self.examples.join("\n  ")
        );
    }
}

pub const LOST: &str = "acknowledged message lost";
pub const DUP_ACKED: &str = "acknowledged message stored twice";
pub const DUP_UNKNOWN: &str = "unacknowledged message stored twice";

/// What reading the topic back found.
#[derive(Debug, Default)]
pub struct Found {
    pub messages: u64,
    pub unknown_present: u64,
    /// Commit log segments holding at least one message of the topic.
    pub segments_used: u64,
    /// Per queue: its max offset.
    pub max_offsets: Vec<u64>,
    /// (queue, offset) → key of the message stored there.
    pub at: HashMap<(u32, u64), String>,
}

/// Reads every queue of the topic from 0 and checks it against the ledger: dense offsets;
/// every message one that was sent, with its exact tag, properties and body; every
/// acknowledged message present exactly once, where its send answer said; no unacknowledged
/// message twice.
pub async fn check_topic(
    broker: &str,
    seed: u64,
    ledger: &Ledger,
    segment_size: u64,
    problems: &mut Problems,
) -> Found {
    let client = Client::connect(broker).await;
    let mut found = Found::default();
    // key → places it was found at.
    let mut seen: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
    let mut segments = BTreeSet::new();
    for q in 0..QUEUES {
        let d = client.drain(CHECK_GROUP, TOPIC, q, 0).await;
        if d.next_offset != d.max_offset {
            problems.add(
                "queue read short",
                format!(
                    "queue {q}: stopped at {} of {}",
                    d.next_offset, d.max_offset
                ),
            );
        }
        found.max_offsets.push(d.max_offset);
        let l = ledger.lock();
        for (i, m) in d.msgs.iter().enumerate() {
            found.messages += 1;
            if m.queue_offset != i as u64 {
                problems.add(
                    "gap in queue offsets",
                    format!("queue {q}: message #{i} has offset {}", m.queue_offset),
                );
            }
            segments.insert(m.commit_log_offset / segment_size);
            check_message(seed, &l, q, m, problems);
            seen.entry(m.key().to_owned())
                .or_default()
                .push((q, m.queue_offset));
            found.at.insert((q, m.queue_offset), m.key().to_owned());
        }
    }
    found.segments_used = segments.len() as u64;
    let l = ledger.lock();
    for odd in &l.odd {
        problems.add("odd send answer", odd.clone());
    }
    for (key, places) in &seen {
        let acked = l.acked.contains_key(key);
        if !acked && l.unknown.contains(key) {
            found.unknown_present += 1;
        }
        if places.len() > 1 {
            let kind = if acked { DUP_ACKED } else { DUP_UNKNOWN };
            problems.add(kind, format!("{key} at {places:?}"));
        }
    }
    let mut lost: Vec<(&String, _)> = l
        .acked
        .iter()
        .filter(|(k, _)| !seen.contains_key(*k))
        .map(|(k, a)| (k, (a.queue_id, a.queue_offset)))
        .collect();
    lost.sort_by_key(|(_, place)| *place);
    for (key, place) in lost {
        problems.add(
            LOST,
            format!("{key}, acknowledged at {place:?} (queue now ends at {})", {
                found.max_offsets[place.0 as usize]
            }),
        );
    }
    found
}

/// One stored message against the ledger: sent, with its content, where its answer said.
fn check_message(seed: u64, l: &LedgerInner, q: u32, m: &Received, problems: &mut Problems) {
    let place = (q, m.queue_offset);
    let key = m.key();
    let Some((p, n)) = parse_key(key) else {
        problems.add("message never sent", format!("{place:?}: key {key:?}"));
        return;
    };
    let acked = l.acked.get(key);
    if acked.is_none() && !l.unknown.contains(key) {
        problems.add("message never sent", format!("{place:?}: {key}"));
    }
    let want = expected(seed, p, n);
    if m.tag != want.tags || m.props != want.props || m.body != want.body || m.keys.len() != 1 {
        problems.add(
            "wrong content",
            format!(
                "{place:?}: {key}: tag {:?}, {} properties, {} body bytes (want {:?}, {}, {})",
                m.tag,
                m.props.len(),
                m.body.len(),
                want.tags,
                want.props.len(),
                want.body.len()
            ),
        );
    }
    if let Some(a) = acked
        && ((a.queue_id, a.queue_offset) != place || a.msg_id != m.msg_id)
    {
        problems.add(
            "acknowledged message elsewhere",
            format!(
                "{key}: acknowledged at {:?} id {}, found at {place:?} id {}",
                (a.queue_id, a.queue_offset),
                a.msg_id,
                m.msg_id
            ),
        );
    }
}

/// After a restart, before the group's members come back: each committed offset is within
/// its queue, and everything below it was handed to the group (nothing skipped). Returns
/// the sum of the committed offsets.
pub async fn check_group_resumes(
    broker: &str,
    found: &Found,
    deliveries: &Deliveries,
    problems: &mut Problems,
) -> u64 {
    let client = Client::connect(broker).await;
    let mut committed_offsets = Vec::new();
    for q in 0..QUEUES {
        committed_offsets.push(client.committed(GROUP, TOPIC, q).await);
    }
    let d = deliveries.lock();
    let mut sum = 0;
    for (q, committed) in (0..QUEUES).zip(committed_offsets) {
        let Some(committed) = committed else {
            continue;
        };
        sum += committed;
        let max = found.max_offsets[q as usize];
        if committed > max {
            problems.add(
                "group committed past the queue's end",
                format!("queue {q}: committed {committed}, max offset {max}"),
            );
        }
        // Handed over at that place as the message stored there now (a place whose
        // message was rolled back and replaced counts as not handed over).
        let skipped: Vec<u64> = (0..committed.min(max))
            .filter(|o| d.at.get(&(q, *o)) != found.at.get(&(q, *o)))
            .collect();
        if let Some(first) = skipped.first() {
            problems.add(
                "group committed past a message it was never handed",
                format!(
                    "queue {q}: committed {committed}, {} never handed, the first at {first}",
                    skipped.len()
                ),
            );
        }
    }
    sum
}

/// Looks acknowledged messages up by key (the store's key index, rebuilt by recovery): the
/// last few each producer had acknowledged before the kill, and a random sample. Each must
/// be found once, with the id its send was answered with.
pub async fn check_key_lookups(
    admin: &Admin,
    ledger: &Ledger,
    rng: &mut Rng,
    problems: &mut Problems,
) -> usize {
    let sample: Vec<(String, String)> = {
        let l = ledger.lock();
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for key in l.acked.keys() {
            if let Some((p, n)) = parse_key(key) {
                let e = last.entry(p).or_insert(n);
                *e = (*e).max(n);
            }
        }
        let mut keys: BTreeSet<String> = last
            .iter()
            .flat_map(|(&p, &n)| (n.saturating_sub(7)..=n).map(move |i| crate::traffic::key(p, i)))
            .filter(|k| l.acked.contains_key(k))
            .collect();
        let all: Vec<&String> = l.acked.keys().collect();
        for _ in 0..32.min(all.len()) {
            keys.insert((*rng.pick(&all)).clone());
        }
        keys.into_iter()
            .map(|k| {
                let id = l.acked[&k].msg_id.clone();
                (k, id)
            })
            .collect()
    };
    for (key, msg_id) in &sample {
        let got = admin
            .messages_by_key(TOPIC, key, 4)
            .await
            .unwrap_or_else(|e| panic!("lookup of {key}: {e}"));
        let ids: Vec<String> = got.iter().map(|m| m.msg_id.to_string()).collect();
        if ids != [msg_id.as_str()] {
            problems.add(
                "lookup by key",
                format!("{key} (acknowledged as {msg_id}) found as {ids:?}"),
            );
        }
    }
    sample.len()
}

/// Acknowledged messages the group has not been handed yet (at their place, by key).
pub fn undelivered(ledger: &Ledger, deliveries: &Deliveries) -> Vec<String> {
    let l = ledger.lock();
    let d = deliveries.lock();
    l.acked
        .iter()
        .filter(|(k, a)| d.at.get(&(a.queue_id, a.queue_offset)) != Some(*k))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Commit log files in the data folder (the last may be prepared ahead, still empty).
pub fn commit_log_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("commitlog"))
        .map(|d| d.filter(|e| e.is_ok()).count())
        .unwrap_or(0)
}
