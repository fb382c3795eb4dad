//! Transaction check-back: half messages left without a decision for
//! `transaction_timeout_ms` are asked about, every `transaction_check_interval_ms`, with a
//! live producer of their group; after `transaction_check_max` checks (or when older than
//! the store's retention allows), they move to the dead-transaction topic.
//!
//! Invariants: the service reads the half topic in order from its progress (a consumer
//! offset of [`TRANSACTION_CHECK_GROUP`]) and never looks at the op topic as a whole:
//! whether a half is decided is one lookup by its transaction's first half, so a large op log never
//! stalls it and a decided transaction is never asked about again. A half asked about is
//! stored again at the end of the half topic with one more check (so the queue stays in
//! order of when each is due, and the count survives restarts), and progress moves past
//! the old one. Memory does not grow with the number of pending halves: they are on disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use weir_protocol::broker::CheckTransactionState;
use weir_protocol::names::{TRANS_DEAD_TOPIC, TRANS_HALF_TOPIC, TRANS_OP_TOPIC, property};
use weir_protocol::net::Cause;
use weir_protocol::record::RecordView;
use weir_store::StoredRecord;

use crate::broker::Broker;
use crate::processor::transaction::{
    Decided, TRANSACTION_CHECK_GROUP, check_times, decision_key, first_stored, transaction_half,
    transaction_id,
};

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckPass {
    pub examined: u64,
    pub checked: u64,
    pub sent: u64,
    pub dead: u64,
}

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(broker.config.transaction_check_interval_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if broker.store.min_offset(TRANS_HALF_TOPIC, 0)
            == broker.store.max_offset(TRANS_HALF_TOPIC, 0)
        {
            continue;
        }
        let pass = broker.check_transactions().await;
        if pass.checked > 0 || pass.dead > 0 {
            info!(
                examined = pass.examined,
                checked = pass.checked,
                asked = pass.sent,
                dead = pass.dead,
                "transaction check pass"
            );
        }
    }
}

/// Transactions given up on, logged at most a line per 10 s.
static GIVEN_UP: Cause = Cause::new();

/// Check-backs sent and not yet handed to their connection, at most (each waits at most
/// 3 s): what a pass over a large backlog of due halves holds.
const CHECK_BACKS_IN_FLIGHT: usize = 1024;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Broker {
    /// One pass over the half messages due for a check.
    pub async fn check_transactions(&self) -> CheckPass {
        let timeout = self.config.transaction_timeout_ms as i64;
        let max_checks = self.config.transaction_check_max;
        // A half must leave before retention could delete it: a margin of a quarter of
        // the retention, at most an hour.
        let retention = self
            .store
            .config()
            .retention_hours
            .saturating_mul(3_600_000);
        let too_old = retention
            .saturating_sub((retention / 4).min(3_600_000))
            .min(i64::MAX as u64) as i64;
        let budget =
            Instant::now() + Duration::from_millis(self.config.transaction_check_interval_ms / 2);
        let mut pass = CheckPass::default();
        // Check-backs on their way to producers: at most CHECK_BACKS_IN_FLIGHT at once, so
        // a backlog of due halves costs a bounded amount of memory, not a task each.
        let mut in_flight = JoinSet::new();
        let mut progress = self.check_progress();
        // Read a batch, handle it, move on: halves are on disk, not in memory.
        loop {
            let before = progress;
            let mut due: Vec<(u64, StoredRecord)> = Vec::new();
            let mut at = progress;
            let mut stop = false;
            self.scan_queue(TRANS_HALF_TOPIC, progress, 256, |rec| {
                let Ok(v) = rec.view() else {
                    at = at.max(queue_offset(rec).map_or(at, |q| q + 1));
                    return true;
                };
                pass.examined += 1;
                let qo = v.queue_offset();
                if self.decision_of(transaction_half(&v)).is_some() {
                    at = qo + 1;
                    return true;
                }
                let now = now_ms();
                if now.saturating_sub(v.store_timestamp()) < timeout {
                    // Later halves are newer still.
                    stop = true;
                    return false;
                }
                due.push((qo, rec.clone()));
                at = qo + 1;
                true
            });
            let batch_len = due.len();
            for (qo, rec) in due {
                let Ok(v) = rec.view() else { continue };
                let checks = check_times(&v);
                let old = now_ms().saturating_sub(first_stored(&v)) > too_old;
                let done = if checks >= max_checks || old {
                    self.move_to_dead(&rec, &v, old, &mut pass).await
                } else {
                    self.ask(&v, checks + 1, &mut pass, &mut in_flight).await
                };
                if !done {
                    // Try this one again next pass; keep what went before.
                    at = qo;
                    stop = true;
                    break;
                }
                pass.checked += 1;
            }
            if at != progress {
                progress = at;
                self.store.consumer_offsets().commit(
                    TRANSACTION_CHECK_GROUP,
                    TRANS_HALF_TOPIC,
                    0,
                    progress,
                );
            }
            // Go on while the batch moved past something (decided halves included): a
            // run of decided halves does not end the pass.
            if stop || (batch_len == 0 && at == before) || Instant::now() >= budget {
                break;
            }
            if self.store.max_offset(TRANS_HALF_TOPIC, 0) <= progress {
                break;
            }
        }
        // Op records are read by lookups, never in order: count them as consumed, so
        // retention under disk pressure may take them once old.
        let ops_end = self.store.max_offset(TRANS_OP_TOPIC, 0);
        if ops_end > 0 {
            self.store.consumer_offsets().commit(
                TRANSACTION_CHECK_GROUP,
                TRANS_OP_TOPIC,
                0,
                ops_end,
            );
        }
        // Each is bounded by its own timeout.
        while in_flight.join_next().await.is_some() {}
        pass
    }

    /// Stores the half again with one more check, and asks a live producer of its group.
    async fn ask(
        &self,
        v: &RecordView<'_>,
        checks: u32,
        pass: &mut CheckPass,
        in_flight: &mut JoinSet<()>,
    ) -> bool {
        let group = v
            .property(property::PRODUCER_GROUP)
            .unwrap_or_default()
            .to_owned();
        let id = transaction_id(v);
        if self.decision_of(transaction_half(v)).is_some() {
            // Decided since the batch was read: nothing to ask.
            return true;
        }
        let producers = self.clients.producers_of(&group);
        // Another producer than the one asked last time, when there is one.
        let last = v
            .property(property::TRANSACTION_CHECKED_BY)
            .unwrap_or_default();
        let chosen = producers
            .iter()
            .filter(|(client, _)| client != last)
            .nth((checks as usize) % producers.len().max(1))
            .or_else(|| producers.iter().find(|(client, _)| client != last))
            .or_else(|| producers.first());
        let mut copy = v.to_message();
        copy.remove_properties(&[
            property::TRANSACTION_CHECK_TIMES,
            property::TRANSACTION_CHECKED_BY,
            property::TRANSACTION_FIRST_STORED,
            property::TRANSACTION_HALF_OFFSET,
            property::TRANSACTION_ID,
        ]);
        copy.properties
            .push((property::TRANSACTION_ID.into(), id.clone()));
        copy.properties.push((
            property::TRANSACTION_HALF_OFFSET.into(),
            transaction_half(v).to_string(),
        ));
        copy.properties
            .push((property::TRANSACTION_CHECK_TIMES.into(), checks.to_string()));
        copy.properties.push((
            property::TRANSACTION_FIRST_STORED.into(),
            first_stored(v).to_string(),
        ));
        if let Some((client, _)) = chosen {
            copy.properties
                .push((property::TRANSACTION_CHECKED_BY.into(), client.clone()));
        }
        let stored = match self.store_messages(std::slice::from_ref(&copy)).await {
            Ok(mut r) => r.pop(),
            Err(e) => {
                warn!(transaction = %id, error = %e, "could not store a checked half message again; will retry");
                return false;
            }
        };
        let Some((client, link)) = chosen else {
            debug!(transaction = %id, group = %group, "no live producer of the group to ask");
            return true;
        };
        let Some(copy_at) = stored.and_then(|r| r.msg_id.parse::<weir_protocol::MessageId>().ok())
        else {
            return true;
        };
        let Ok(copy_rec) = self.store.get_by_offset(copy_at.offset) else {
            return true;
        };
        let check = CheckTransactionState {
            producer_group: group,
            transaction_id: id.clone(),
            commit_log_offset: copy_at.offset,
            check_times: checks,
        };
        // From the log's pages, not a copy: up to CHECK_BACKS_IN_FLIGHT of them wait for
        // room on their producers' connections (a producer that reads nothing held 1,024
        // copies of halves, 0.6 GB, per pass).
        let body = bytes::Bytes::from_owner(copy_rec);
        let link = Arc::clone(link);
        let client = client.clone();
        // One way, and not waited for: a producer that does not answer is skipped next time.
        while in_flight.len() >= CHECK_BACKS_IN_FLIGHT {
            in_flight.join_next().await;
        }
        in_flight.spawn(async move {
            let sent = tokio::time::timeout(
                Duration::from_secs(3),
                link.check_transaction_state(check, body),
            );
            if !matches!(sent.await, Ok(Ok(()))) {
                debug!(client = %client, transaction = %id, "check-back not delivered");
            }
        });
        pass.sent += 1;
        true
    }

    /// Gives up on a half: a copy goes to the dead-transaction topic (found again by its
    /// transaction id), with the decision "dead" recorded in the same batch.
    async fn move_to_dead(
        &self,
        rec: &StoredRecord,
        v: &RecordView<'_>,
        old: bool,
        pass: &mut CheckPass,
    ) -> bool {
        let id = transaction_id(v);
        let first_half = transaction_half(v);
        // As a decision: the producer's commit or rollback may have come since the batch
        // was read, and a "dead" recorded after it would undo it (a dead transaction can be
        // committed again: twice delivered).
        let _one = self.decisions.hold(&decision_key(first_half)).await;
        if self.decision_of(first_half).is_some() {
            return true;
        }
        if self.system_topic(TRANS_DEAD_TOPIC).is_err()
            || self.system_topic(TRANS_OP_TOPIC).is_err()
        {
            return false;
        }
        let mut dead = v.to_message();
        dead.topic = TRANS_DEAD_TOPIC.to_owned();
        dead.queue_id = 0;
        dead.keys.push(id.clone());
        dead.remove_properties(&[
            property::TRANSACTION_ID,
            property::TRANSACTION_FIRST_STORED,
            property::TRANSACTION_HALF_OFFSET,
        ]);
        dead.properties
            .push((property::TRANSACTION_ID.into(), id.clone()));
        dead.properties.push((
            property::TRANSACTION_HALF_OFFSET.into(),
            first_half.to_string(),
        ));
        dead.properties.push((
            property::TRANSACTION_FIRST_STORED.into(),
            first_stored(v).to_string(),
        ));
        let op = Self::op_record(
            first_half,
            Decided::Dead,
            rec.commit_log_offset(),
            v.born_host(),
        );
        match self.store_messages(&[dead, op]).await {
            Ok(_) => {
                pass.dead += 1;
                // A producer that sends many halves and leaves makes as many: a line per
                // 10 s, naming one of them and counting the rest.
                GIVEN_UP.record(|given_up| {
                    warn!(
                        transaction = %id,
                        group = v.property(property::PRODUCER_GROUP).unwrap_or_default(),
                        checks = check_times(v),
                        reason = if old { "older than retention allows" } else { "checked too often" },
                        given_up,
                        "transactions given up on (this one and others since the last line): moved to the dead-transaction topic (weir transaction dead)"
                    );
                });
                true
            }
            Err(e) => {
                warn!(transaction = %id, error = %e, "could not move a transaction to the dead topic; will retry");
                false
            }
        }
    }
}

fn queue_offset(rec: &StoredRecord) -> Option<u64> {
    rec.bytes()
        .get(..weir_protocol::record::pos::QUEUE_OFFSET + 8)
        .map(|b| weir_protocol::record::u64_at(b, weir_protocol::record::pos::QUEUE_OFFSET))
}
