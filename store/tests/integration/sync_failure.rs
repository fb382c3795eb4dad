//! A failed sync is never retried as if nothing happened: the store stops accepting
//! writes, the waiters of that sync get an error, reads go on, and the next open recovers
//! from what is really on disk. A slow sync makes sync-mode appends report a timeout.

use std::time::{Duration, Instant};

use crate::common::{read_all, small_config, sync_config};
use weir_store::{FlushMode, FlushStatus, Message, MessageStore, StoreConfig, StoreError};

fn msg(i: u8) -> Message {
    Message::new("T", 0, vec![i; 100]).with_key(format!("k{i}"))
}

#[test]
fn a_failed_sync_stops_writes_fails_its_waiters_and_keeps_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(sync_config(dir.path())).unwrap();
    let acked: Vec<_> = (0..5).map(|i| store.put(&msg(i)).unwrap()).collect();
    assert!(acked.iter().all(|r| r.flush == FlushStatus::Durable));

    store.inject_sync_failure("EIO (injected)");
    let e = store.put(&msg(5)).unwrap_err();
    assert!(
        matches!(&e, StoreError::FlushFailed(c) if c.contains("EIO")),
        "{e}"
    );
    assert!(store.sync_failure().unwrap().contains("EIO"));
    // From now on refused outright, even once the disk "recovers" (fsyncgate).
    let e = store.put(&msg(6)).unwrap_err();
    assert!(matches!(e, StoreError::WritesStopped { .. }), "{e}");
    assert!(e.to_string().contains("restart"), "{e}");
    assert!(store.write_refusal().is_some());
    assert!(
        store.checkpoint().is_err(),
        "no checkpoint after a failed sync"
    );

    // Reads go on.
    let read = read_all(&store, "T", 0);
    assert!(read.len() >= 5);
    for (i, (qo, m)) in read.iter().take(5).enumerate() {
        assert_eq!((*qo, &m.body), (i as u64, &vec![i as u8; 100]));
    }
    assert_eq!(store.query_by_key("T", "k3", 2).len(), 1);

    // The stop is not clean: the next open recovers, and every acknowledged message is
    // there.
    assert!(store.shutdown().is_err());
    drop(store);
    let store = MessageStore::open(sync_config(dir.path())).unwrap();
    assert!(!store.recovery_report().clean_shutdown);
    let read = read_all(&store, "T", 0);
    for r in &acked {
        assert_eq!(
            read[r.queue_offset as usize].1.body,
            msg(r.queue_offset as u8).body
        );
    }
    // Writes work again after the restart.
    store.put(&msg(7)).unwrap();
}

#[test]
fn a_failed_async_flush_stops_writes_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(StoreConfig {
        flush_mode: FlushMode::Async,
        async_flush_interval_ms: 10,
        ..small_config(dir.path())
    })
    .unwrap();
    store.put(&msg(0)).unwrap();
    store.inject_sync_failure("EIO (injected)");
    store.put(&msg(1)).unwrap();
    // The flusher meets the failure within an interval; appends are refused from then on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.put(&msg(2)) {
            Err(StoreError::WritesStopped { cause }) => {
                assert!(cause.contains("commit log sync"), "{cause}");
                break;
            }
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => {}
        }
        assert!(Instant::now() < deadline, "writes never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(read_all(&store, "T", 0).len() >= 2);
}

#[test]
fn a_slow_sync_reports_a_timeout_and_the_message_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(StoreConfig {
        sync_flush_timeout_ms: 50,
        ..sync_config(dir.path())
    })
    .unwrap();
    store.inject_sync_delay(Duration::from_millis(400));
    let r = store.put(&msg(0)).unwrap();
    assert_eq!(r.flush, FlushStatus::TimedOut);
    store.inject_sync_delay(Duration::ZERO);
    // The record is stored, and the slow sync makes it durable when it ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.commit_log_flushed_offset() <= r.commit_log_offset {
        assert!(Instant::now() < deadline, "the slow sync never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r2 = store.put(&msg(1)).unwrap();
    assert_eq!(r2.flush, FlushStatus::Durable);
    assert_eq!(read_all(&store, "T", 0).len(), 2);
}
