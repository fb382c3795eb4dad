//! Replication at the store: a slave appends its master's bytes at the same offsets, across
//! segment roll-overs, and ends up with the same log, queues and key index; bytes that do
//! not line up are refused.

use crate::common::{copy_dir, message, read_all, small_config};
use std::sync::{Arc, Mutex};

use tempfile::TempDir;
use weir_store::{MessageStore, StoreConfig, StoreError, record};

/// Copies everything new from `master` to `slave`, in chunks of at most `chunk` bytes.
fn sync(master: &MessageStore, slave: &MessageStore, chunk: usize) -> u64 {
    let mut at = slave.commit_log_max_offset();
    while let Some(bytes) = master.read_log(at, chunk).unwrap() {
        at = slave.append_replicated(at, &bytes).unwrap();
    }
    at
}

/// The slave holds the master's whole log, byte for byte, and the same queues.
fn assert_same_log_and_queues(master: &MessageStore, slave: &MessageStore) {
    let mut from = 0;
    while let Some(a) = master.read_log(from, 4096).unwrap() {
        let b = slave.read_log(from, 4096).unwrap().unwrap();
        assert_eq!(a, b, "bytes at {from}");
        from += a.len() as u64;
    }
    assert_eq!(from, master.commit_log_max_offset());
    for topic in ["orders", "payments", "%RETRY%group-a"] {
        for q in 0..2 {
            assert_eq!(read_all(master, topic, q), read_all(slave, topic, q));
        }
    }
}

/// A master holding messages `0..count` and an empty slave, with their folders.
fn pair_with(count: u64) -> (TempDir, TempDir, MessageStore, MessageStore) {
    let (m, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = MessageStore::open(small_config(m.path())).unwrap();
    let slave = MessageStore::open(small_config(s.path())).unwrap();
    for i in 0..count {
        master.put(&message(i)).unwrap();
    }
    (m, s, master, slave)
}

#[test]
fn a_slave_holds_the_same_bytes_queues_and_keys() {
    let (_m, s, master, slave) = pair_with(150);
    // Small chunks, several segments (8 KiB each): fillers and roll-overs on the way.
    assert!(master.commit_log_max_offset() > 4 * 8 * 1024);
    let end = sync(&master, &slave, 1000);
    assert_eq!(end, master.commit_log_max_offset());
    for i in 150..300 {
        master.put(&message(i)).unwrap();
    }
    assert_eq!(
        sync(&master, &slave, 64 * 1024),
        master.commit_log_max_offset()
    );
    assert_same_log_and_queues(&master, &slave);
    assert_eq!(slave.query_by_key("orders", "key-42", 2).len(), 1);

    // A restarted slave continues from its own end.
    drop(slave);
    let slave = MessageStore::open(small_config(s.path())).unwrap();
    master.put(&message(300)).unwrap();
    assert_eq!(sync(&master, &slave, 1000), master.commit_log_max_offset());
    assert_eq!(
        read_all(&slave, "orders", 0),
        read_all(&master, "orders", 0)
    );
}

#[test]
fn bytes_that_do_not_line_up_are_refused() {
    let (_m, _s, master, slave) = pair_with(10);
    let bytes = master.read_log(0, 1 << 20).unwrap().unwrap();
    // Not at the slave's end.
    let e = slave.append_replicated(100, &bytes).unwrap_err();
    assert!(matches!(e, StoreError::ReplicaMismatch { .. }), "{e}");
    // Damaged on the way (or on the master's disk, which streams its frames unchecked):
    // refused, and not taken for a log that differs.
    let mut bad = bytes.to_vec();
    bad[60] ^= 1;
    let e = slave.append_replicated(0, &bad).unwrap_err();
    assert!(
        matches!(e, StoreError::ReplicaDamaged { offset: 0, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("do not verify"), "{e}");
    assert_eq!(slave.commit_log_max_offset(), 0);
    // A record whose checksum holds but whose fields do not (a tag length running past its
    // record): damaged too, and not published.
    let first = master.read_log(0, 1).unwrap().unwrap().len();
    let mut bad = bytes.to_vec();
    let rec = &mut bad[..first];
    let tag_len_at = record::pos::VARIABLE
        + 2
        + usize::from(u16::from_le_bytes([
            rec[record::pos::VARIABLE],
            rec[record::pos::VARIABLE + 1],
        ]));
    rec[tag_len_at..tag_len_at + 2].copy_from_slice(&u16::MAX.to_le_bytes());
    let crc = crc32fast::hash(&rec[record::pos::CRC_START..]);
    rec[record::pos::CRC..record::pos::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    let e = slave.append_replicated(0, &bad).unwrap_err();
    assert!(matches!(e, StoreError::ReplicaDamaged { .. }), "{e}");
    assert_eq!(slave.commit_log_max_offset(), 0);
    assert!(slave.read_log(0, 1 << 20).unwrap().is_none());
    // A slave that took writes of its own: its end is no record boundary of the master's,
    // or the master's records do not fit its queues. (The broker also compares the last
    // bytes of both logs before streaming.)
    let other = tempfile::tempdir().unwrap();
    let diverged = MessageStore::open(small_config(other.path())).unwrap();
    diverged.put(&message(3)).unwrap();
    diverged.put(&message(3)).unwrap();
    let end = diverged.commit_log_max_offset();
    let refused = match master.read_log(end, 1 << 20) {
        Err(_) => true,
        Ok(Some(bytes)) => diverged.append_replicated(end, &bytes).is_err(),
        Ok(None) => false,
    };
    assert!(refused);
}

/// What the arrival listener of `store` hears: (topic, queue, new end) per call.
fn record_arrivals(store: &MessageStore) -> Arc<Mutex<Vec<(String, u32, u64)>>> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&calls);
    store.set_arrival_listener(move |topic, queue, max| {
        heard.lock().unwrap().push((topic.to_owned(), queue, max));
    });
    calls
}

#[test]
fn a_record_damaged_mid_chunk_keeps_the_records_before_it_and_the_rest_follows() {
    let (_m, _s, master, slave) = pair_with(8);
    // Where the sixth record starts (a read of one byte gives one whole record).
    let mut sixth = 0;
    for _ in 0..5 {
        sixth += master.read_log(sixth, 1).unwrap().unwrap().len() as u64;
    }
    let bytes = master.read_log(0, 1 << 20).unwrap().unwrap();
    let mut bad = bytes.to_vec();
    bad[sixth as usize + 60] ^= 1;
    let calls = record_arrivals(&slave);
    let e = slave.append_replicated(0, &bad).unwrap_err();
    assert!(e.to_string().contains("do not verify"), "{e}");
    // The five records before it are stored, readable and in their queues, no more.
    assert_eq!(slave.commit_log_max_offset(), sixth);
    let before: usize = ["orders", "payments", "%RETRY%group-a"]
        .iter()
        .flat_map(|t| (0..2).map(move |q| (*t, q)))
        .map(|(t, q)| read_all(&slave, t, q).len())
        .sum();
    assert_eq!(before, 5);
    // The arrival listener heard each queue that grew once, at its end (messages 0..5
    // went to five different queues).
    let mut heard = calls.lock().unwrap().clone();
    heard.sort();
    assert_eq!(heard.len(), 5, "{heard:?}");
    assert!(heard.iter().all(|(_, _, max)| *max == 1), "{heard:?}");
    // The master's good bytes from there on are taken.
    assert_eq!(
        slave
            .append_replicated(sixth, &bytes[sixth as usize..])
            .unwrap(),
        master.commit_log_max_offset()
    );
    for topic in ["orders", "payments", "%RETRY%group-a"] {
        for q in 0..2 {
            assert_eq!(read_all(&master, topic, q), read_all(&slave, topic, q));
        }
    }
}

#[test]
fn queues_taking_turns_within_a_chunk_are_each_announced_once_at_their_end() {
    let (_m, _s, master, slave) = pair_with(24);
    let calls = record_arrivals(&slave);
    let bytes = master.read_log(0, 1 << 20).unwrap().unwrap();
    slave.append_replicated(0, &bytes).unwrap();
    let mut heard = calls.lock().unwrap().clone();
    heard.sort();
    let mut expected = Vec::new();
    for topic in ["%RETRY%group-a", "orders", "payments"] {
        for q in 0..2 {
            expected.push((topic.to_owned(), q, master.max_offset(topic, q)));
        }
    }
    assert_eq!(heard, expected);
}

/// After a machine crash a slave's unsynced pages may have reached the disk in any order:
/// damage past its durable point, whole records after it. Its recovery ends the log at the
/// damage (a master's skips it and keeps what follows), so catching up from the master
/// fills everything in again: the same bytes and queues as the master's, no hole.
#[test]
fn a_slave_recovers_to_the_first_damage_past_its_durable_point_and_catches_up_whole() {
    use std::os::unix::fs::FileExt;

    let replica = |dir: &std::path::Path| StoreConfig {
        replica: true,
        ..small_config(dir)
    };
    let (m, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = MessageStore::open(small_config(m.path())).unwrap();
    let slave = MessageStore::open(replica(s.path())).unwrap();
    for i in 0..40 {
        master.put(&message(i)).unwrap();
    }
    sync(&master, &slave, 64 * 1024);
    slave.checkpoint().unwrap();
    // The first record the slave holds past its durable point.
    let first_after = master.put(&message(40)).unwrap();
    for i in 41..80 {
        master.put(&message(i)).unwrap();
    }
    sync(&master, &slave, 64 * 1024);
    assert!(first_after.commit_log_offset >= slave.commit_log_flushed_offset());

    // The crash: the folder as the disk holds it, that record torn, the ones after whole.
    let image = tempfile::tempdir().unwrap();
    copy_dir(s.path(), image.path());
    drop(slave);
    let segment_size = small_config(s.path()).commit_log_segment_size;
    let start = first_after.commit_log_offset / segment_size * segment_size;
    std::fs::OpenOptions::new()
        .write(true)
        .open(image.path().join("commitlog").join(format!("{start:020}")))
        .unwrap()
        .write_all_at(&[0xEE], first_after.commit_log_offset - start + 60)
        .unwrap();
    let as_master = tempfile::tempdir().unwrap();
    copy_dir(image.path(), as_master.path());

    let slave = MessageStore::open(replica(image.path())).unwrap();
    assert_eq!(
        slave.commit_log_max_offset(),
        first_after.commit_log_offset,
        "{:?}",
        slave.recovery_report()
    );
    assert_eq!(
        sync(&master, &slave, 64 * 1024),
        master.commit_log_max_offset()
    );
    assert_same_log_and_queues(&master, &slave);

    // The same folder opened as a master's keeps what follows the damage (its queue then
    // has a hole there): what the slave must not do.
    let skipped = MessageStore::open(small_config(as_master.path())).unwrap();
    assert_eq!(skipped.recovery_report().damaged.len(), 1);
    assert!(skipped.commit_log_max_offset() > first_after.commit_log_offset);
}
