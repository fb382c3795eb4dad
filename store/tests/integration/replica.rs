//! Replication at the store: a slave appends its master's bytes at the same offsets, across
//! segment roll-overs, and ends up with the same log, queues and key index; bytes that do
//! not line up are refused.

use crate::common::{message, read_all, small_config};
use weir_store::{MessageStore, StoreError};

/// Copies everything new from `master` to `slave`, in chunks of at most `chunk` bytes.
fn sync(master: &MessageStore, slave: &MessageStore, chunk: usize) -> u64 {
    let mut at = slave.commit_log_max_offset();
    while let Some(bytes) = master.read_log(at, chunk).unwrap() {
        at = slave.append_replicated(at, &bytes).unwrap();
    }
    at
}

#[test]
fn a_slave_holds_the_same_bytes_queues_and_keys() {
    let (m, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = MessageStore::open(small_config(m.path())).unwrap();
    let slave = MessageStore::open(small_config(s.path())).unwrap();
    for i in 0..150 {
        master.put(&message(i)).unwrap();
    }
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
    let mut from = 0;
    while from < end {
        let a = master.read_log(from, 4096).unwrap().unwrap();
        let b = slave.read_log(from, 4096).unwrap().unwrap();
        assert_eq!(a, b, "bytes at {from}");
        from += a.len() as u64;
    }
    for topic in ["orders", "payments", "%RETRY%group-a"] {
        for q in 0..2 {
            assert_eq!(read_all(&master, topic, q), read_all(&slave, topic, q));
        }
    }
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
    let (m, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = MessageStore::open(small_config(m.path())).unwrap();
    let slave = MessageStore::open(small_config(s.path())).unwrap();
    for i in 0..10 {
        master.put(&message(i)).unwrap();
    }
    let bytes = master.read_log(0, 1 << 20).unwrap().unwrap();
    // Not at the slave's end.
    let e = slave.append_replicated(100, &bytes).unwrap_err();
    assert!(matches!(e, StoreError::ReplicaMismatch { .. }), "{e}");
    // Damaged on the way.
    let mut bad = bytes.clone();
    bad[60] ^= 1;
    let e = slave.append_replicated(0, &bad).unwrap_err();
    assert!(e.to_string().contains("do not verify"), "{e}");
    assert_eq!(slave.commit_log_max_offset(), 0);
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
