//! Pull processor: reads a queue for a consumer group with tag filtering (by hash in the
//! consume queue, then the tag itself), the group's WebAssembly filter over the candidates
//! in batches, and long polling when there is nothing new.
//!
//! Invariant: the next offset returned never skips a message that was neither delivered
//! nor judged by the filter; a failing filter leaves the offset where it was. A message is
//! judged by a filter version once as a queue is consumed in order: when a pull's answer
//! is cut at its message count, the verdicts beyond the cut are carried to the pull that
//! resumes there (`LoadedFilter::carry_verdicts`) instead of being judged again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weir_filter_sql92::Expr;
use weir_protocol::RecordView;
use weir_protocol::broker::{PullMessage, PullResult, PullStatus};
use weir_protocol::net::AnswerRoom;
use weir_protocol::route::perm;
use weir_store::{GetStatus, ReadBatch, ReadLimits, StoredRecord};

use crate::broker::Broker;
use crate::dispatch::Family;
use crate::error::{ProcessError, Processed};
use crate::filter::{BatchContext, FailureKind, LoadedFilter};
use crate::subscription::TagFilter;
use crate::topics::validate_group_name;

/// Most messages one pull returns.
const MAX_PULL_MSGS: u32 = 1024;
/// Most record bytes one pull returns.
const PULL_MAX_BYTES: usize = 4 << 20;
/// Longest a pull with a filter keeps reading before it answers with what it has (so a slow
/// filter's pulls still answer well within the clients' request timeout).
const FILTERED_PULL_BUDGET: Duration = Duration::from_secs(1);
/// Filter calls (of `filter.batch_size` messages) one round of a filtered pull hands to a
/// filter worker at once: the hand-off (two thread wake-ups, tens of µs here) then costs
/// one per up to 8 calls instead of one per call.
const FILTER_CALLS_PER_ROUND: usize = 8;
/// Calls a round of a fast filter may hold (see [`calls_per_round`]).
const FAST_FILTER_CALLS_PER_ROUND: usize = 16;
/// A filter whose calls take this long or less on average is fast: a round of
/// [`FAST_FILTER_CALLS_PER_ROUND`] calls then holds a worker for about 2 ms at most.
const FAST_CALL: Duration = Duration::from_micros(125);
/// Longest a pull may be held.
const MAX_SUSPEND: Duration = Duration::from_secs(60);

/// What a pull found: its status and offsets, and the records, as stored.
#[derive(Debug)]
pub struct Pulled {
    pub result: PullResult,
    pub records: Vec<StoredRecord>,
}

/// Filter calls one round hands to a worker, by the filter's mean call time so far: a fast
/// filter's round takes up to twice as many. A pull of 256 messages at a keep rate of 10 %
/// reads ~3,200 candidates: in one round rather than two, and a filtered catch-up's thread
/// wake-ups fall by a third. A slow filter's rounds stay as they were; a fast one's hold a
/// worker for about 2 ms at most.
fn calls_per_round(mean_call_nanos: Option<u64>) -> usize {
    match mean_call_nanos {
        Some(n) if u128::from(n) <= FAST_CALL.as_nanos() => FAST_FILTER_CALLS_PER_ROUND,
        _ => FILTER_CALLS_PER_ROUND,
    }
}

/// Whether the SQL92 expression (if any) keeps the message: properties by name, `TAGS`
/// the tag and `KEYS` the keys (space-separated) unless properties of those names exist.
fn selects(sql: Option<&Expr>, v: &RecordView<'_>) -> bool {
    let Some(expr) = sql else {
        return true;
    };
    let keys = expr
        .property_names()
        .iter()
        .any(|n| &**n == "KEYS")
        .then(|| v.keys().collect::<Vec<_>>().join(" "));
    expr.evaluate(|name| {
        v.property(name).or(match name {
            "TAGS" if !v.tags().is_empty() => Some(v.tags()),
            "KEYS" => keys.as_deref().filter(|k| !k.is_empty()),
            _ => None,
        })
    })
}

/// How dispatch let a pull in.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The connection it came on, whose held pulls share `limits.inflight_pull` with the
    /// others' (see `crate::holds`); none: never ended early.
    pub from: Option<SocketAddr>,
    /// Whether it may be held (long polling). One let in past `limits.inflight_pull` may
    /// not: it is answered if it finds messages at once, and refused as busy otherwise.
    pub may_hold: bool,
    /// The most bytes its answer may take, read at each read of the store (a held pull
    /// reads it when woken): while the server's connections together hold their total of
    /// answers not yet read, what is left of its connection's share.
    pub answer_room: AnswerRoom,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            from: None,
            may_hold: true,
            answer_room: AnswerRoom::unbounded(),
        }
    }
}

/// The bytes of records a pull may read with `room` bytes for its answer: all it would
/// otherwise (`usize::MAX`) when the room holds two of the largest answers, else half the
/// room, leaving the other half for what an answer's encoding adds to its records (the
/// driver refuses an answer past its room).
pub(crate) fn readable_in(room: usize) -> usize {
    if room >= PULL_MAX_BYTES.saturating_mul(2) {
        usize::MAX
    } else {
        room / 2
    }
}

impl Broker {
    /// Serves a pull: tag filtering by hash, the group's filter over the candidates, long
    /// polling when there is nothing new. Dropping the future (its connection closed)
    /// releases a held pull at once.
    pub async fn pull(&self, req: PullMessage) -> Processed<Pulled> {
        self.pull_selected(req, None, Admission::default()).await
    }

    /// A pull that also keeps only the messages an SQL92 expression over their
    /// properties selects (`TAGS` reads the tag, `KEYS` the keys space-separated).
    /// `admission`: how dispatch let it in (see [`Admission`]).
    pub async fn pull_selected(
        &self,
        req: PullMessage,
        sql92: Option<&str>,
        admission: Admission,
    ) -> Processed<Pulled> {
        let sql = sql92
            .map(weir_filter_sql92::parse)
            .transpose()
            .map_err(|e| ProcessError::BadSubscription(format!("SQL92 expression: {e}")))?;
        let pulled = self.pull_queue(&req, sql.as_ref(), admission).await?;
        // The topic exists (else the pull failed); the group is named only when valid.
        let group = validate_group_name(&req.group)
            .is_ok()
            .then_some(req.group.as_str());
        self.metrics.consumed(&req.topic, group, &pulled.records);
        Ok(pulled)
    }

    async fn pull_queue(
        &self,
        req: &PullMessage,
        sql: Option<&Expr>,
        admission: Admission,
    ) -> Processed<Pulled> {
        if crate::broker::is_internal_topic(&req.topic) {
            return Err(ProcessError::NoPermission(format!(
                "topic {:?} is the broker's own (half messages, decisions, given-up transactions, delayed messages waiting): never consumed",
                req.topic
            )));
        }
        let t = self.existing_topic(&req.topic)?;
        if t.perm & perm::READ == 0 {
            return Err(ProcessError::NoPermission(format!(
                "topic {:?} is not readable",
                t.name
            )));
        }
        if req.queue_id >= t.read_queues {
            return Err(ProcessError::InvalidParameter(format!(
                "queue {} does not exist: topic {:?} has {} read queues",
                req.queue_id, t.name, t.read_queues
            )));
        }
        let tags = TagFilter::parse(&req.expression)
            .map_err(|e| ProcessError::BadSubscription(e.to_string()))?;
        // The consumer's progress counts even when its filter then fails the pull.
        if let Some(c) = req.commit_offset {
            validate_group_name(&req.group)?;
            self.commit_offset(&req.group, &req.topic, req.queue_id, c)?;
        }
        let wasm = self.filter_for(&req.group, &req.topic)?;
        let max = req.max_msgs.clamp(1, MAX_PULL_MSGS) as usize;
        let fc = self.filters.runtime().config();
        // With a wasm filter, candidates go to it in batches, and a pull keeps reading
        // until it has `max` kept messages, reaches the end, or has examined
        // `max_scan_per_pull` entries: a selective filter answers with an advanced offset
        // rather than nothing, or rather than walking the whole backlog in one pull.
        let max_scan = fc.max_scan_per_pull;
        // Bodies go into the filter's memory: keep a batch well inside its cap.
        let round_bytes = match &wasm {
            Some(f) if f.needs_body() => PULL_MAX_BYTES.min(f.memory_limit() / 4),
            _ => PULL_MAX_BYTES,
        };
        let budget_end = tokio::time::Instant::now() + FILTERED_PULL_BUDGET;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(req.suspend_ms).min(MAX_SUSPEND);
        let notify = (req.suspend_ms > 0).then(|| self.holds.notify_of(&req.topic, req.queue_id));
        // Counted (and shared out) while waiting.
        let mut held = None;
        // Verdicts the pull that ended at this offset judged but could not return.
        let carried = match &wasm {
            Some(f) => f.take_verdicts(req.queue_id, req.offset),
            None => Vec::new(),
        };
        let mut cursor = req.offset;
        let mut out: Vec<StoredRecord> = Vec::new();
        let mut out_bytes = 0usize;
        let answer = |status, next_offset, (min_offset, max_offset), out: Vec<StoredRecord>| {
            // Carried verdicts this pull did not reach stay for the pull that will.
            if let Some(f) = &wasm {
                let rest: Vec<(u64, bool)> = carried
                    .iter()
                    .copied()
                    .filter(|(at, _)| *at >= next_offset)
                    .collect();
                if !rest.is_empty() {
                    f.carry_verdicts(req.queue_id, next_offset, rest);
                }
            }
            Ok(Pulled {
                result: PullResult {
                    status,
                    next_offset,
                    min_offset,
                    max_offset,
                    suggest_slave: self.suggest_slave(&out),
                },
                records: out,
            })
        };
        loop {
            // Register for the wake-up before looking, so an append in between is not missed.
            let notified = notify.as_ref().map(|n| {
                let mut f = Box::pin(Arc::clone(n).notified_owned());
                f.as_mut().enable();
                f
            });
            // Without a filter, what was asked for; with one, enough candidates for what is
            // missing at the filter's keep rate so far (few calls, little judged twice).
            let round = match &wasm {
                None => max,
                Some(f) => f
                    .candidates_for(max - out.len())
                    .min(fc.batch_size * calls_per_round(f.mean_call_nanos())),
            };
            let fits = readable_in(admission.answer_room.bytes());
            let readable = round_bytes.min(fits);
            let limits = ReadLimits {
                max_count: round,
                max_bytes: readable.saturating_sub(out_bytes).max(1),
                max_scan: max_scan
                    .saturating_sub((cursor - req.offset) as usize)
                    .max(1),
            };
            let r = self
                .store
                .read(&req.topic, req.queue_id, cursor, limits, |h| {
                    tags.matches_hash(h)
                });
            let bounds = (r.min_offset, r.max_offset);
            match r.status {
                GetStatus::NoNewMessage | GetStatus::OffsetMoved if !out.is_empty() => {
                    return answer(PullStatus::Found, cursor, bounds, out);
                }
                GetStatus::NoNewMessage => {
                    let may_wait = notified.is_some() && tokio::time::Instant::now() < deadline;
                    // Let in past the bound: answered only with what it found.
                    if may_wait && !admission.may_hold && cursor == req.offset {
                        return Err(self.busy(Family::Pull));
                    }
                    if let Some(notified) = notified
                        && may_wait
                        && admission.may_hold
                    {
                        let h = held.get_or_insert_with(|| self.holds.enter(admission.from));
                        if !h.is_ended_early() {
                            tokio::select! {
                                _ = notified => {}
                                _ = tokio::time::sleep_until(deadline) => {}
                                // Answered as at the deadline, after one more look.
                                _ = h.ended_early() => {}
                            }
                            continue;
                        }
                    }
                    // Entries passed over (filtered out) still move the consumer on.
                    let status = if cursor == req.offset {
                        PullStatus::NoNewMessage
                    } else {
                        PullStatus::NoMatch
                    };
                    return answer(status, cursor, bounds, out);
                }
                GetStatus::OffsetMoved if cursor == req.offset => {
                    return answer(PullStatus::OffsetMoved, r.next_offset, bounds, out);
                }
                GetStatus::OffsetMoved => return answer(PullStatus::NoMatch, cursor, bounds, out),
                GetStatus::Found | GetStatus::NoMatch => {}
            }
            // The store compared tag hashes; confirm the tag itself (hashes collide). With
            // neither a tag nor an SQL92 expression there is nothing to confirm, and no
            // record is parsed here (a filtered catch-up's hottest loop). Each record's queue
            // offset is in its span (from the consume queue, not the record).
            let mut records = r.records;
            // The store reads one record past `max_bytes`; past the room, the answer
            // would be refused once made: it ends before that record, and a pull that
            // would have nothing else is refused now, before the filter's work.
            if let Some(first) = records.spans().first()
                && out_bytes.saturating_add(first.len()) > fits
            {
                if cursor != req.offset {
                    let status = if out.is_empty() {
                        PullStatus::NoMatch
                    } else {
                        PullStatus::Found
                    };
                    return answer(status, cursor, bounds, out);
                }
                admission.answer_room.refused(first.len());
                return Err(ProcessError::Busy(format!(
                    "busy: the message at offset {} of queue {} of {:?} ({} bytes) does not fit in this connection's room for answers ({fits} bytes of records) while the broker's connections together hold net.max_pending_bytes_total of answers their clients have not read; retry later",
                    first.queue_offset,
                    req.queue_id,
                    req.topic,
                    first.len()
                )));
            }
            if !(matches!(tags, TagFilter::All) && sql.is_none()) {
                records.retain(|_, bytes| match (&tags, RecordView::parse(bytes)) {
                    (_, Err(_)) => true,
                    (TagFilter::All, Ok(v)) => selects(sql, &v),
                    (_, Ok(v)) => tags.matches_tag(v.tags()) && selects(sql, &v),
                });
            }
            let round_end = r.next_offset;
            let Some(f) = &wasm else {
                // No filter: everything read is delivered; the store kept to the limits.
                cursor = round_end;
                out.extend(records.records());
                let status = if out.is_empty() {
                    PullStatus::NoMatch
                } else {
                    PullStatus::Found
                };
                return answer(status, cursor, bounds, out);
            };
            let (records, verdicts) = match self.judge(f, req, cursor, records, &carried).await {
                Ok(judged) => judged,
                // Earlier rounds' progress stands; the next pull meets the failure.
                Err(_) if cursor != req.offset => {
                    let status = if out.is_empty() {
                        PullStatus::NoMatch
                    } else {
                        PullStatus::Found
                    };
                    return answer(status, cursor, bounds, out);
                }
                Err(e) => return Err(e),
            };
            cursor = round_end;
            let room = max - out.len();
            // Only kept records become records of their own (a reference to their segment).
            // A span of this read always resolves; were one not to, the pull is retried from
            // where it stands rather than answered without the message.
            let kept: Option<Vec<(u64, StoredRecord)>> = records
                .spans()
                .iter()
                .zip(&verdicts)
                .filter(|(_, keep)| **keep)
                .map(|(span, _)| Some((span.queue_offset, records.record(span)?)))
                .collect();
            let Some(kept) = kept else {
                return Err(ProcessError::Busy(format!(
                    "a record read from queue {} of {:?} near offset {cursor} did not resolve; the offset did not move",
                    req.queue_id, req.topic
                )));
            };
            if kept.len() > room {
                // The filter kept more than asked for: resume right after the last message
                // returned; if that is not a sane offset, return them all rather than skip
                // any.
                let resume = kept
                    .get(room - 1)
                    .map(|(at, _)| at + 1)
                    .filter(|o| (req.offset + 1..round_end).contains(o));
                if let Some(o) = resume {
                    cursor = o;
                    // What lies past the cut was judged: the pull from `o` reuses it (with
                    // what was carried here beyond this round).
                    let beyond: Vec<(u64, bool)> = records
                        .spans()
                        .iter()
                        .map(|span| span.queue_offset)
                        .zip(verdicts.iter().copied())
                        .filter(|(at, _)| *at >= o)
                        .chain(carried.iter().copied().filter(|(at, _)| *at >= round_end))
                        .collect();
                    out.extend(kept.into_iter().take(room).map(|(_, rec)| rec));
                    let pulled = answer(PullStatus::Found, cursor, bounds, out);
                    f.carry_verdicts(req.queue_id, o, beyond);
                    return pulled;
                }
                out.extend(kept.into_iter().map(|(_, rec)| rec));
                return answer(PullStatus::Found, cursor, bounds, out);
            }
            out.extend(kept.into_iter().map(|(_, rec)| {
                out_bytes += rec.len();
                rec
            }));
            let scanned = (cursor - req.offset) as usize;
            if out.len() == max
                || out_bytes >= readable
                || scanned >= max_scan
                || tokio::time::Instant::now() >= budget_end
            {
                let status = if out.is_empty() {
                    PullStatus::NoMatch
                } else {
                    PullStatus::Found
                };
                return answer(status, cursor, bounds, out);
            }
        }
    }

    /// Whether the reader of `out` had better read from a slave: the last record lies more
    /// than `slave_read_behind_bytes` before the log's end (no longer likely in memory). A
    /// master says so only while a slave is connected; a slave by the same measure, so that
    /// its reader goes back to the master once within reach (as RocketMQ's slaves do).
    fn suggest_slave(&self, out: &[StoredRecord]) -> bool {
        if self.replication.role.is_master() && self.replication.slave_count() == 0 {
            return false;
        }
        let Some(last) = out.last() else {
            return false;
        };
        let behind = self
            .store
            .commit_log_max_offset()
            .saturating_sub(last.commit_log_offset());
        behind > self.config.slave_read_behind_bytes.unwrap_or(u64::MAX)
    }

    /// The group's wasm filter for the topic, if one is registered and usable.
    fn filter_for(&self, group: &str, topic: &str) -> Processed<Option<Arc<LoadedFilter>>> {
        if self.filters.is_empty() {
            return Ok(None);
        }
        match self.filters.lookup(group, topic) {
            None => Ok(None),
            Some(Ok(f)) => match f.marked_failed() {
                None => Ok(Some(f)),
                Some(cause) => Err(ProcessError::FilterMarkedFailed(format!(
                    "the {} is marked failed ({cause}); upload a new version, or `weir filter reset` it",
                    f.label()
                ))),
            },
            Some(Err(cause)) => Err(ProcessError::FilterMarkedFailed(format!(
                "the filter of group {group:?} on topic {topic:?}: {cause}"
            ))),
        }
    }

    /// The verdicts on a round's records, in order: carried ones where the previous pull
    /// judged the message already, the filter's for the others.
    async fn judge(
        &self,
        filter: &Arc<LoadedFilter>,
        req: &PullMessage,
        at: u64,
        mut records: ReadBatch,
        carried: &[(u64, bool)],
    ) -> Processed<Judged> {
        if carried.is_empty() {
            // (A filtered catch-up's first pull: no pass over the round to split it.)
            return self.run_filter(filter, req, at, records).await;
        }
        // Both ascending: one merge walk (a catch-up meets carried verdicts on almost every
        // pull, each pull cutting its answer where the next resumes).
        let mut rest = carried.iter().peekable();
        let known: Vec<Option<bool>> = records
            .spans()
            .iter()
            .map(|span| {
                let o = span.queue_offset;
                while rest.next_if(|(at, _)| *at < o).is_some() {}
                rest.next_if(|(at, _)| *at == o).map(|(_, keep)| *keep)
            })
            .collect();
        // The usual shape: the carried verdicts cover the round's first records, the filter
        // judges the rest, and nothing is split and merged back.
        let mut verdicts: Vec<bool> = known.iter().map_while(|k| *k).collect();
        let prefix = verdicts.len();
        if known[prefix..].iter().all(Option::is_none) {
            if prefix < records.len() {
                let fresh = records.split_off(prefix);
                let (fresh, fresh_verdicts) = self.run_filter(filter, req, at, fresh).await?;
                records.append(fresh);
                verdicts.extend(fresh_verdicts);
            }
            return Ok((records, verdicts));
        }
        // Otherwise the filter judges the records without a verdict, and each position
        // takes its verdict from the side it was split to.
        let fresh = records.select(|i| known[i].is_none());
        let (_, fresh_verdicts) = self.run_filter(filter, req, at, fresh).await?;
        let mut fresh_verdicts = fresh_verdicts.into_iter();
        let verdicts = known
            .iter()
            .map(|k| k.or_else(|| fresh_verdicts.next()).unwrap_or(true))
            .collect();
        Ok((records, verdicts))
    }

    /// Runs the group's filter over a batch of candidates; returns them with their
    /// verdicts, in order.
    async fn run_filter(
        &self,
        filter: &Arc<LoadedFilter>,
        req: &PullMessage,
        at: u64,
        candidates: ReadBatch,
    ) -> Processed<Judged> {
        if candidates.is_empty() {
            return Ok((candidates, Vec::new()));
        }
        let ctx = BatchContext {
            topic: req.topic.clone(),
            queue_id: req.queue_id,
            consumer_group: req.group.clone(),
        };
        let ran = self.filters.runtime().run(filter, ctx, candidates).await;
        let (records, verdicts) = match ran {
            Ok(r) => r,
            // Not the filter's doing: the pull is answered busy and retried.
            Err(f) if f.kind == FailureKind::Busy => {
                return Err(ProcessError::Busy(format!(
                    "the {} could not run on queue {} of {:?} at offset {at}: {f}; the offset did not move",
                    filter.label(),
                    req.queue_id,
                    req.topic
                )));
            }
            Err(f) => {
                // This failure may be the one that marked it: keep the mark across restarts.
                self.persist_filter_mark(filter).await;
                return Err(ProcessError::FilterFailed(format!(
                    "the {} failed on queue {} of {:?} at offset {at}: {f}; the offset did not move",
                    filter.label(),
                    req.queue_id,
                    req.topic
                )));
            }
        };
        Ok((records, verdicts))
    }
}

/// Records and, for each, whether the filter keeps it (parallel, in queue order).
type Judged = (ReadBatch, Vec<bool>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_filter_seen_to_be_fast_gets_longer_rounds() {
        // Before any call nothing is known: the usual rounds.
        assert_eq!(calls_per_round(None), FILTER_CALLS_PER_ROUND);
        let fast = FAST_CALL.as_nanos() as u64;
        assert_eq!(calls_per_round(Some(0)), FAST_FILTER_CALLS_PER_ROUND);
        assert_eq!(calls_per_round(Some(fast)), FAST_FILTER_CALLS_PER_ROUND);
        assert_eq!(calls_per_round(Some(fast + 1)), FILTER_CALLS_PER_ROUND);
        assert_eq!(calls_per_round(Some(u64::MAX)), FILTER_CALLS_PER_ROUND);
        // A fast round holds a worker about as long as 2 ms.
        let longest = FAST_CALL * FAST_FILTER_CALLS_PER_ROUND as u32;
        assert!(longest <= Duration::from_millis(2), "{longest:?}");
    }
}
