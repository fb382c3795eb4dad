//! Retention: whole old segments go, with their queue and index entries; reads below the
//! new minimum answer "offset moved" with that minimum.

use crate::common::{message, small_config};
use weir_store::{
    DeletionReason, DiskPressurePolicy, GetStatus, Message, MessageStore, ReadLimits, StoreConfig,
};

const HOUR_MS: i64 = 3_600_000;

fn count_files(dir: &std::path::Path) -> usize {
    walk(dir).len()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

fn fill(store: &MessageStore, n: u64) -> Vec<weir_store::PutResult> {
    (0..n)
        .map(|i| {
            let m = Message::new("T", 0, vec![i as u8; 200]).with_key(format!("k{i}"));
            store.put(&m).unwrap()
        })
        .collect()
}

#[test]
fn expired_segments_are_deleted_and_reads_below_answer_offset_moved() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        retention_hours: 1,
        prepare_ahead: false,
        // Age alone decides here: the disk-ratio rule would fire on a machine whose disk is
        // fuller than 75 % for reasons of its own.
        disk_max_used_ratio: 1.0,
        ..small_config(dir.path())
    };
    let store = MessageStore::open(config).unwrap();
    let puts = fill(&store, 400);
    let segments_before = count_files(&dir.path().join("commitlog"));
    let cq_files_before = count_files(&dir.path().join("consumequeue"));
    assert!(segments_before > 5);

    // Nothing is old yet.
    let now = puts.last().unwrap().store_timestamp;
    assert_eq!(store.run_retention(now).unwrap().segments_deleted, 0);

    // Two hours later every sealed segment is expired; the one being written stays.
    let report = store.run_retention(now + 2 * HOUR_MS).unwrap();
    assert_eq!(report.segments_deleted, segments_before - 1);
    // Counted for metrics (the store's own retention thread deletes nothing here: by its
    // clock nothing is old, and the disk ratio rule is off).
    let totals = store.retention_totals();
    assert_eq!(totals.segments_by_age, report.segments_deleted as u64);
    assert_eq!(totals.segments_by_pressure, 0);
    assert_eq!(
        totals.bytes,
        report.deleted.iter().map(|d| d.end - d.start).sum::<u64>()
    );
    assert!(totals.bytes > 0);
    assert_eq!(count_files(&dir.path().join("commitlog")), 1);
    assert!(count_files(&dir.path().join("consumequeue")) < cq_files_before);
    let min_log = store.commit_log_min_offset();
    assert_eq!(report.commit_log_min_offset, min_log);

    let first_kept = puts
        .iter()
        .position(|p| p.commit_log_offset >= min_log)
        .unwrap() as u64;
    assert_eq!(store.min_offset("T", 0), first_kept);
    let r = store.get_messages("T", 0, 0, ReadLimits::default(), |_| true);
    assert_eq!(
        (r.status, r.next_offset),
        (GetStatus::OffsetMoved, first_kept)
    );
    let r = store.get_messages("T", 0, first_kept, ReadLimits::default(), |_| true);
    assert_eq!(r.status, GetStatus::Found);
    assert_eq!(
        r.messages[0].commit_log_offset(),
        puts[first_kept as usize].commit_log_offset
    );

    // Deleted messages are gone by id and by key; kept ones are not.
    assert!(store.get_by_id(&puts[0].msg_id).is_err());
    assert!(store.query_by_key("T", "k0", 4).is_empty());
    assert_eq!(
        store.query_by_key("T", &format!("k{first_kept}"), 4).len(),
        1
    );
    assert_eq!(store.offset_for_timestamp("T", 0, 0), first_kept);

    // And it all holds after a restart.
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(StoreConfig {
        retention_hours: 1,
        prepare_ahead: false,
        ..small_config(dir.path())
    })
    .unwrap();
    assert_eq!(store.min_offset("T", 0), first_kept);
    assert_eq!(store.max_offset("T", 0), 400);
    let r = store.get_messages("T", 0, 3, ReadLimits::default(), |_| true);
    assert_eq!(
        (r.status, r.next_offset),
        (GetStatus::OffsetMoved, first_kept)
    );
    assert_eq!(
        store.put(&message(1)).unwrap().queue_offset,
        0,
        "other queue unaffected"
    );
    assert_eq!(
        store
            .put(&Message::new("T", 0, vec![1]))
            .unwrap()
            .queue_offset,
        400
    );
}

/// Constant disk pressure without the machine's disk deciding anything: a quota the store
/// already exceeds with its first files.
fn pressure_config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        disk_quota_bytes: Some(16 << 20),
        disk_max_used_ratio: 0.001,
        prepare_ahead: false,
        ..small_config(dir)
    }
}

#[test]
fn disk_pressure_with_the_explicit_policy_deletes_the_oldest_segment_per_pass() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        disk_pressure_policy: DiskPressurePolicy::DeleteOldest,
        ..pressure_config(dir.path())
    };
    let store = MessageStore::open(config).unwrap();
    let puts = fill(&store, 200);
    store.consumer_offsets().commit("slow", "T", 0, 3);
    let now = puts.last().unwrap().store_timestamp;
    let before = count_files(&dir.path().join("commitlog"));
    let r = store.run_retention(now).unwrap();
    assert_eq!(r.segments_deleted, 1);
    assert_eq!(count_files(&dir.path().join("commitlog")), before - 1);
    assert!(store.retention_totals().segments_by_pressure >= 1);
    // The report says why and what each queue lost.
    let d = &r.deleted[0];
    assert!(
        matches!(d.reason, DeletionReason::DiskPressure { used_ratio } if used_ratio > 0.001),
        "{d:?}"
    );
    assert_eq!(d.dropped.len(), 1);
    let dropped = &d.dropped[0];
    assert_eq!(
        (dropped.topic.as_str(), dropped.queue_id, dropped.from),
        ("T", 0, 0)
    );
    assert_eq!(dropped.to, store.min_offset("T", 0));
    // The group that had consumed only 3 is told its offset moved, not served a gap.
    let r = store.get_messages("T", 0, 3, ReadLimits::default(), |_| true);
    assert_eq!(
        (r.status, r.next_offset),
        (GetStatus::OffsetMoved, dropped.to)
    );
    // Never the segment being written.
    for _ in 0..before {
        store.run_retention(now).unwrap();
    }
    assert_eq!(count_files(&dir.path().join("commitlog")), 1);
    assert!(store.put(&Message::new("T", 0, vec![7])).is_ok());
    let max = store.max_offset("T", 0);
    let r = store.get_messages("T", 0, max - 1, ReadLimits::default(), |_| true);
    assert_eq!(r.messages[0].view().unwrap().body(), &[7]);
}

#[test]
fn disk_pressure_keeps_what_a_group_has_not_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(pressure_config(dir.path())).unwrap();
    let puts = fill(&store, 200);
    // A second queue, nobody reads it yet.
    store.put(&Message::new("U", 0, vec![1; 10])).unwrap();
    let now = puts.last().unwrap().store_timestamp;
    let segments = count_files(&dir.path().join("commitlog"));

    // No group has consumed anything: nothing goes.
    let r = store.run_retention(now).unwrap();
    assert_eq!(r.segments_deleted, 0);
    let why = r.kept_unconsumed.expect("kept for a reason");
    assert!(why.contains("T/0"), "{why}");
    assert_eq!(count_files(&dir.path().join("commitlog")), segments);

    // One group is through the first segment, another is not: still nothing.
    let first_segment_entries = puts
        .iter()
        .filter(|p| p.commit_log_offset < 8 * 1024)
        .count() as u64;
    store.consumer_offsets().commit("fast", "T", 0, 200);
    store
        .consumer_offsets()
        .commit("slow", "T", 0, first_segment_entries - 1);
    let r = store.run_retention(now).unwrap();
    assert_eq!(r.segments_deleted, 0);
    assert!(r.kept_unconsumed.unwrap().contains("\"slow\""));

    // Both through it: the first segment goes, and only it (one per pass).
    store
        .consumer_offsets()
        .commit("slow", "T", 0, first_segment_entries);
    let r = store.run_retention(now).unwrap();
    assert_eq!(r.segments_deleted, 1, "{r:?}");
    assert_eq!(store.min_offset("T", 0), first_segment_entries);
    // The next segment holds entries "slow" has not consumed.
    let r = store.run_retention(now).unwrap();
    assert_eq!(r.segments_deleted, 0);
    assert!(r.kept_unconsumed.unwrap().contains("\"slow\""));
    // Everything after "slow"'s offset is still there, in order.
    let mut offset = first_segment_entries;
    let mut seen = 0;
    while offset < 200 {
        let got = store.get_messages("T", 0, offset, ReadLimits::default(), |_| true);
        assert_eq!(got.status, GetStatus::Found);
        for m in &got.messages {
            let v = m.view().unwrap();
            assert_eq!(v.body(), &vec![v.queue_offset() as u8; 200][..]);
            seen += 1;
        }
        offset = got.next_offset;
    }
    assert_eq!(seen, 200 - first_segment_entries);
}
