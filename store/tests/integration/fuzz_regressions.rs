//! Inputs the `store_open` fuzz target (`fuzz/`) found, replayed: a data folder that once
//! made `MessageStore::open` panic or run away.

use std::fs;
use std::path::Path;

use crate::common::small_config;
use weir_store::record::{self, Assigned};
use weir_store::{Message, MessageStore, StoreConfig, StoreError};

/// A commit log whose first segment holds `records` (message, queue offset) back to back
/// from offset 0, each CRC-valid, as if the store had written them.
fn write_log(config: &StoreConfig, records: &[(Message, u64)]) {
    let timed: Vec<_> = records.iter().map(|(m, qo)| (m.clone(), *qo, 0)).collect();
    write_log_timed(config, &timed);
}

/// [`write_log`] with each record's store timestamp.
fn write_log_timed(config: &StoreConfig, records: &[(Message, u64, i64)]) {
    let mut seg = vec![0u8; config.commit_log_segment_size as usize];
    let mut pos = 0usize;
    for (msg, queue_offset, store_timestamp) in records {
        let len = msg.encoded_len().unwrap();
        let a = Assigned {
            queue_offset: *queue_offset,
            commit_log_offset: pos as u64,
            store_timestamp: *store_timestamp,
            store_host: "127.0.0.1:10911".parse().unwrap(),
        };
        record::encode_into(msg, &a, &mut seg[pos..pos + len]);
        pos += len;
    }
    let dir = config.data_dir.join("commitlog");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("{:020}", 0)), seg).unwrap();
}

fn segments(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

/// crash-80a16211ccca8b757db2e094c29d7c0fb83cbee2: one record of topic `b`, queue 0,
/// whose queue offset (4598737091931668251) times the entry size overflows: recovery
/// panicked in `ConsumeQueue::put` (and, without overflow checks, wrote below the
/// published mark).
#[test]
fn a_queue_offset_past_the_addressable_range_does_not_stop_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    write_log(
        &config,
        &[(Message::new("b", 0, vec![]), 4_598_737_091_931_668_251)],
    );

    let store = MessageStore::open(config.clone()).expect("the store opens");
    let report = store.recovery_report();
    assert_eq!(report.records_replayed, 1);
    // The record stays in the log; its queue does not take it.
    assert!(store.get_by_offset(0).is_ok());
    assert_eq!(store.max_offset("b", 0), 0);
    // The queue works from where it is.
    let r = store.put(&Message::new("b", 0, b"next".to_vec())).unwrap();
    assert_eq!(r.queue_offset, 0);
    store.shutdown().unwrap();
    drop(store);
    MessageStore::open(config).expect("and opens again");
}

/// crash-e0baf509cbc9af613a64f183a599422036b57062: a queue offset (630433339647471141)
/// whose entry lies past the largest offset segment files may start at: the queue created
/// the segment, and the next open refused it.
#[test]
fn a_queue_offset_past_the_largest_offset_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    write_log(
        &config,
        &[(Message::new("a", 0, vec![]), 630_433_339_647_471_141)],
    );

    let store = MessageStore::open(config.clone()).expect("the store opens");
    assert_eq!(store.max_offset("a", 0), 0);
    store.shutdown().unwrap();
    drop(store);
    MessageStore::open(config).expect("and opens again");
}

/// A queue offset far ahead of its queue: filling the gap with hole segments would create
/// files without end (here 1,000 segments of 64 entries).
#[test]
fn a_queue_offset_far_ahead_is_not_filled_with_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let per = config.consume_queue_segment_entries;
    write_log(
        &config,
        &[
            (Message::new("t", 0, b"first".to_vec()), 0),
            (Message::new("t", 0, b"far".to_vec()), 1_000 * per),
            // A short gap (a lost entry) is still kept as holes.
            (Message::new("t", 1, b"a".to_vec()), 0),
            (Message::new("t", 1, b"b".to_vec()), 3),
        ],
    );

    let store = MessageStore::open(config.clone()).expect("the store opens");
    assert_eq!(store.recovery_report().records_replayed, 4);
    assert_eq!(store.max_offset("t", 0), 1);
    assert_eq!(store.max_offset("t", 1), 4);
    let queue_dir = config.data_dir.join("consumequeue").join("t").join("0");
    assert_eq!(segments(&queue_dir), 1);
    store.shutdown().unwrap();
}

/// A checkpoint slot as the store writes it (see `store/FORMAT.md`), CRC and all.
fn checkpoint_slot(seq: u64, commit_log_flushed: u64, logic_flushed: u64) -> [u8; 64] {
    let mut slot = [0u8; 64];
    slot[0..4].copy_from_slice(b"WCP1");
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    slot[16..24].copy_from_slice(&commit_log_flushed.to_le_bytes());
    slot[24..32].copy_from_slice(&logic_flushed.to_le_bytes());
    let crc = crc32fast::hash(&slot[8..60]);
    slot[60..].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// crash-c787f7e8afe1131e08dbc1a4391e9e0e9831a4dd: an empty store whose checkpoint slot
/// (CRC-valid) holds sequence number `u64::MAX`: the checkpoint written while opening
/// overflowed it.
#[test]
fn a_checkpoint_with_the_largest_sequence_number_opens() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    fs::create_dir_all(&config.data_dir).unwrap();
    fs::write(
        config.data_dir.join("checkpoint"),
        checkpoint_slot(u64::MAX, 63_270, 0),
    )
    .unwrap();

    let store = MessageStore::open(config.clone()).expect("the store opens");
    store.put(&Message::new("t", 0, b"x".to_vec())).unwrap();
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(config).expect("and opens again");
    assert_eq!(store.max_offset("t", 0), 1);
}

/// crash-db9b7f511bb8c9ce8bd5d8d1089dcd65a5c2766a: no commit log, an unclean stop, and a
/// checkpoint saying offsets up to `u64::MAX` were used: rounding that up to a segment
/// boundary overflowed (without overflow checks it wrapped to 0, reusing offsets and so
/// message ids). Such a checkpoint is damage: the open fails, naming it.
#[test]
fn a_checkpoint_past_the_largest_offset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        consume_queue_segment_entries: 16,
        ..small_config(dir.path())
    };
    fs::create_dir_all(&config.data_dir).unwrap();
    fs::write(
        config.data_dir.join("checkpoint"),
        checkpoint_slot(18_446_744_069_426_557_618, u64::MAX, u64::MAX),
    )
    .unwrap();
    fs::write(config.data_dir.join("running"), b"").unwrap();
    let queue = config.data_dir.join("consumequeue").join("b").join("0");
    fs::create_dir_all(&queue).unwrap();
    fs::write(queue.join(format!("{:020}", 3 * 16 * 20)), [43]).unwrap();

    let err = MessageStore::open(config).err().expect("refused");
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                what: "commit log",
                ..
            }
        ),
        "{err}"
    );
}

/// A segment named for a start so close to `u64::MAX` that its end does not fit.
#[test]
fn a_segment_past_the_largest_offset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let size = config.commit_log_segment_size;
    let log = config.data_dir.join("commitlog");
    fs::create_dir_all(&log).unwrap();
    let start = u64::MAX / size * size;
    fs::write(log.join(format!("{start:020}")), vec![0u8; size as usize]).unwrap();

    let err = MessageStore::open(config).err().expect("refused");
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                what: "segment",
                ..
            }
        ),
        "{err}"
    );
}

/// crash-899ae1e918ad012e799b26b5e253b4fa438d436c: two keyed records whose store
/// timestamps (-8268608915852230612, then 1283869159732812544) are so far apart that
/// their difference overflowed while the second was indexed.
#[test]
fn keyed_records_with_timestamps_far_apart_are_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path());
    let keyed = |qo: u64| Message::new("a", 1, vec![7u8; 159]).with_key(format!("k{qo}"));
    write_log_timed(
        &config,
        &[
            (keyed(0), 0, -8_268_608_915_852_230_612),
            (keyed(1), 1, 1_283_869_159_732_812_544),
        ],
    );

    let store = MessageStore::open(config).expect("the store opens");
    assert_eq!(store.max_offset("a", 1), 2);
    assert_eq!(store.query_by_key("a", "k1", 4).len(), 1);
}
