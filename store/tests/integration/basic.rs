//! Appends and reads: queues, tags, keys, ids, timestamps, roll-over, reopen, bad input.

use crate::common::{message, read_all, small_config, sync_config};
use weir_store::{
    FlushStatus, GetStatus, Message, MessageStore, ReadLimits, StoreConfig, StoreError, tag_hash,
};

#[test]
fn append_and_read_back_across_segment_rollover() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let n = 600u64;
    let mut puts = Vec::new();
    for i in 0..n {
        puts.push(store.put(&message(i)).unwrap());
    }
    // 8 KiB segments and records up to ~600 B: many roll-overs, many records that did not
    // fit the rest of a segment.
    let seg = store.config().commit_log_segment_size;
    let rolled = puts
        .windows(2)
        .filter(|w| w[0].commit_log_offset / seg != w[1].commit_log_offset / seg)
        .count();
    assert!(rolled >= 10, "only {rolled} roll-overs");
    for p in &puts {
        let start = p.commit_log_offset;
        assert_eq!(
            start / seg,
            (start + u64::from(p.size) - 1) / seg,
            "record straddles segments"
        );
    }

    for (topic_idx, topic) in ["orders", "payments", "%RETRY%group-a"].iter().enumerate() {
        for q in 0..2u32 {
            let got = read_all(&store, topic, q);
            let want: Vec<_> = (0..n)
                .filter(|i| i % 3 == topic_idx as u64 && i % 2 == u64::from(q))
                .map(message)
                .collect();
            assert_eq!(got.len(), want.len(), "{topic}/{q}");
            for (k, ((qo, m), w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(*qo, k as u64);
                assert_eq!(m, w);
            }
        }
    }
    for (i, p) in puts.iter().enumerate() {
        let rec = store.get_by_id(&p.msg_id).unwrap();
        assert_eq!(rec.view().unwrap().to_message(), message(i as u64));
        let parsed: weir_store::MessageId = p.msg_id.to_string().parse().unwrap();
        assert_eq!(parsed, p.msg_id);
    }
}

#[test]
fn tag_filter_skips_without_reading_and_bounds_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    for i in 0..100u64 {
        let tag = if i % 10 == 9 { "Rare" } else { "Common" };
        store
            .put(&Message::new("T", 0, vec![i as u8]).with_tags(tag))
            .unwrap();
    }
    let rare = tag_hash("Rare");
    let r = store.get_messages("T", 0, 0, ReadLimits::default(), |h| h == rare);
    assert_eq!(r.status, GetStatus::Found);
    let bodies: Vec<u8> = r
        .messages
        .iter()
        .map(|m| m.view().unwrap().body()[0])
        .collect();
    assert_eq!(bodies, vec![9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
    assert_eq!(r.next_offset, 100);
    // Each message's queue offset, from the queue, beside it.
    let headers: Vec<u64> = r
        .messages
        .iter()
        .map(|m| m.view().unwrap().queue_offset())
        .collect();
    assert_eq!(r.queue_offsets, headers);
    assert_eq!(r.queue_offsets, vec![9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);

    // A bounded scan that finds nothing still moves the offset forward.
    let limits = ReadLimits {
        max_scan: 5,
        ..ReadLimits::default()
    };
    let r = store.get_messages("T", 0, 0, limits, |h| h == rare);
    assert_eq!((r.status, r.next_offset), (GetStatus::NoMatch, 5));

    let limits = ReadLimits {
        max_count: 3,
        ..ReadLimits::default()
    };
    let r = store.get_messages("T", 0, 10, limits, |_| true);
    assert_eq!((r.messages.len(), r.next_offset), (3, 13));

    // Byte bound: at least one record, then stop before exceeding it.
    let one = r.messages[0].len();
    let limits = ReadLimits {
        max_bytes: one * 2 + 1,
        ..ReadLimits::default()
    };
    let r = store.get_messages("T", 0, 0, limits, |_| true);
    assert_eq!(r.messages.len(), 2);
    let limits = ReadLimits {
        max_bytes: 1,
        ..ReadLimits::default()
    };
    assert_eq!(
        store
            .get_messages("T", 0, 0, limits, |_| true)
            .messages
            .len(),
        1
    );
}

#[test]
fn offsets_at_the_edges() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let r = store.get_messages("Nope", 0, 0, ReadLimits::default(), |_| true);
    assert_eq!(r.status, GetStatus::NoNewMessage);
    let r = store.get_messages("Nope", 0, 7, ReadLimits::default(), |_| true);
    assert_eq!((r.status, r.next_offset), (GetStatus::OffsetMoved, 0));
    for i in 0..5u8 {
        store.put(&Message::new("T", 3, vec![i])).unwrap();
    }
    assert_eq!((store.min_offset("T", 3), store.max_offset("T", 3)), (0, 5));
    let r = store.get_messages("T", 3, 5, ReadLimits::default(), |_| true);
    assert_eq!((r.status, r.next_offset), (GetStatus::NoNewMessage, 5));
    let r = store.get_messages("T", 3, 9, ReadLimits::default(), |_| true);
    assert_eq!((r.status, r.next_offset), (GetStatus::OffsetMoved, 5));
    assert_eq!(store.queues(), vec![("T".to_string(), vec![3])]);
}

#[test]
fn offset_for_timestamp_finds_the_first_later_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let mut stamps = Vec::new();
    for i in 0..50u8 {
        stamps.push(
            store
                .put(&Message::new("T", 0, vec![i]))
                .unwrap()
                .store_timestamp,
        );
    }
    for (k, &ts) in stamps.iter().enumerate() {
        let first = stamps.iter().position(|&t| t >= ts).unwrap() as u64;
        assert_eq!(store.offset_for_timestamp("T", 0, ts), first, "k={k}");
    }
    assert_eq!(store.offset_for_timestamp("T", 0, 0), 0);
    assert_eq!(store.offset_for_timestamp("T", 0, i64::MAX), 50);
}

#[test]
fn query_by_key_confirms_candidates() {
    let dir = tempfile::tempdir().unwrap();
    // 61 slots and 256 entries per index file: collisions and several files.
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    for i in 0..600u64 {
        store.put(&message(i)).unwrap();
    }
    store
        .put(&Message::new("orders", 0, b"dup".to_vec()).with_key("key-0"))
        .unwrap();
    let found = store.query_by_key("orders", "key-0", 10);
    let bodies: Vec<Vec<u8>> = found
        .iter()
        .map(|r| r.view().unwrap().body().to_vec())
        .collect();
    assert_eq!(
        bodies,
        vec![b"dup".to_vec(), message(0).body],
        "newest first"
    );
    for i in (7..600u64).step_by(7) {
        let m = message(i);
        let found = store.query_by_key(&m.topic, &format!("key-{i}"), 4);
        assert_eq!(found.len(), 1, "key-{i}");
        assert_eq!(found[0].view().unwrap().to_message(), m);
        // Same key, wrong topic: nothing.
        assert!(
            store
                .query_by_key("elsewhere", &format!("key-{i}"), 4)
                .is_empty()
        );
    }
    assert!(store.query_by_key("orders", "no-such-key", 4).is_empty());
}

#[test]
fn copies_are_found_by_their_original_id() {
    use weir_protocol::names::property::ORIGIN_MESSAGE_ID;
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let original = store.put(&message(0)).unwrap().msg_id.to_string();
    for (i, topic) in ["%RETRY%g", "%RETRY%g", "%DLQ%g"].into_iter().enumerate() {
        let copy = Message::new(topic, 0, format!("copy {i}").into_bytes())
            .with_property(ORIGIN_MESSAGE_ID, &original);
        store.put(&copy).unwrap();
    }
    // A key that happens to be the id is not a copy.
    store
        .put(&Message::new("%RETRY%g", 0, b"keyed".to_vec()).with_key(&original))
        .unwrap();
    let bodies = |topic: &str| -> Vec<Vec<u8>> {
        store
            .query_by_property(topic, ORIGIN_MESSAGE_ID, &original, 8)
            .iter()
            .map(|r| r.view().unwrap().body().to_vec())
            .collect()
    };
    assert_eq!(
        bodies("%RETRY%g"),
        [b"copy 1".to_vec(), b"copy 0".to_vec()],
        "newest first"
    );
    assert_eq!(bodies("%DLQ%g"), [b"copy 2".to_vec()]);
    assert!(bodies("orders").is_empty());
    assert_eq!(
        store
            .query_by_property("%RETRY%g", ORIGIN_MESSAGE_ID, &original, 1)
            .len(),
        1,
        "at most max"
    );
}

#[test]
fn reopen_after_clean_shutdown_keeps_messages_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let n = 300u64;
    {
        let store = MessageStore::open(small_config(dir.path())).unwrap();
        for i in 0..n {
            store.put(&message(i)).unwrap();
        }
        store.consumer_offsets().commit("g1", "orders", 1, 17);
        store.shutdown().unwrap();
    }
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    assert!(store.recovery_report().clean_shutdown);
    assert_eq!(store.recovery_report().records_replayed, 0);
    assert_eq!(store.consumer_offsets().query("g1", "orders", 1), Some(17));
    let got = read_all(&store, "payments", 1);
    let want: Vec<_> = (0..n)
        .filter(|i| i % 3 == 1 && i % 2 == 1)
        .map(message)
        .collect();
    assert_eq!(got.into_iter().map(|(_, m)| m).collect::<Vec<_>>(), want);
    // Appends continue where they stopped.
    let next = store.put(&message(n + 1)).unwrap();
    assert_eq!(next.queue_offset, want.len() as u64);
}

#[test]
fn second_open_of_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = MessageStore::open(small_config(dir.path())).unwrap();
    match MessageStore::open(small_config(dir.path())) {
        Err(e @ StoreError::Locked { .. }) => assert!(e.to_string().contains("in use")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
}

#[test]
fn a_shut_down_store_frees_its_folder_while_handles_remain() {
    let dir = tempfile::tempdir().unwrap();
    let old = MessageStore::open(small_config(dir.path())).unwrap();
    old.put(&message(0)).unwrap();
    old.shutdown().unwrap();
    // `old` is still alive (as a server's last connections may keep it), yet refuses
    // appends, and the folder opens again with what was stored.
    assert!(matches!(old.put(&message(6)), Err(StoreError::ShutDown)));
    let new = MessageStore::open(small_config(dir.path())).unwrap();
    assert_eq!(new.max_offset("orders", 0), 1);
    drop(old);
    // message 6 goes to the same queue as message 0.
    assert_eq!(new.put(&message(6)).unwrap().queue_offset, 1);
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let before = store.commit_log_max_offset();
    let too_big = Message::new("T", 0, vec![0u8; 9000]);
    assert!(matches!(
        store.put(&too_big),
        Err(StoreError::MessageTooLarge { .. })
    ));
    let batch = vec![
        Message::new("T", 0, vec![1]),
        Message::new("../etc", 0, vec![2]),
    ];
    assert!(matches!(
        store.put_batch(&batch),
        Err(StoreError::InvalidMessage(_))
    ));
    assert_eq!(store.commit_log_max_offset(), before);
    assert_eq!(store.max_offset("T", 0), 0);
    // Garbage ids and offsets are errors, not panics.
    for off in [0, 1, 5, 1 << 40] {
        assert!(store.get_by_offset(off).is_err());
    }
    store.put(&Message::new("T", 0, vec![1; 100])).unwrap();
    for off in 1..120 {
        assert!(
            store.get_by_offset(off).is_err(),
            "mid-record offset {off} accepted"
        );
    }
    assert!("XYZ".parse::<weir_store::MessageId>().is_err());
    let bad = StoreConfig {
        commit_log_segment_size: 100,
        ..small_config(dir.path())
    };
    assert!(matches!(
        MessageStore::open(bad),
        Err(StoreError::Config(_))
    ));
}

#[test]
fn sync_mode_reports_durable_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(sync_config(dir.path())).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let store = &store;
            s.spawn(move || {
                for i in 0..20 {
                    let r = store.put(&message(t * 100 + i)).unwrap();
                    assert_eq!(r.flush, FlushStatus::Durable);
                    assert!(
                        store.commit_log_flushed_offset()
                            >= r.commit_log_offset + u64::from(r.size)
                    );
                }
            });
        }
    });
    let batch: Vec<_> = (0..10).map(message).collect();
    let rs = store.put_batch(&batch).unwrap();
    assert!(rs.iter().all(|r| r.flush == FlushStatus::Durable));
}

#[test]
fn half_messages_are_stored_but_not_dispatched() {
    use weir_store::record::sys_flag;
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let mut half = Message::new("T", 0, b"half".to_vec());
    half.sys_flag = sys_flag::TX_PREPARED;
    let h = store.put(&half).unwrap();
    assert_eq!(store.max_offset("T", 0), 0);
    assert_eq!(
        store
            .get_by_offset(h.commit_log_offset)
            .unwrap()
            .view()
            .unwrap()
            .body(),
        b"half"
    );
    let mut commit = Message::new("T", 0, b"half".to_vec());
    commit.sys_flag = sys_flag::TX_COMMIT;
    commit.prepared_tx_offset = h.commit_log_offset;
    store.put(&commit).unwrap();
    assert_eq!(store.max_offset("T", 0), 1);
}

#[test]
fn arrival_listener_hears_each_append() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let h = Arc::clone(&heard);
    store.set_arrival_listener(move |t, q, max| h.lock().unwrap().push((t.to_owned(), q, max)));
    store.put(&Message::new("T", 2, vec![1])).unwrap();
    store.put(&Message::new("T", 2, vec![2])).unwrap();
    assert_eq!(
        *heard.lock().unwrap(),
        vec![("T".into(), 2, 1), ("T".into(), 2, 2)]
    );
    // A batch: each run of messages to one queue is heard once, with its end.
    heard.lock().unwrap().clear();
    let batch = [
        Message::new("T", 2, vec![3]),
        Message::new("T", 2, vec![4]),
        Message::new("T", 2, vec![5]),
        Message::new("T", 0, vec![6]),
        Message::new("U", 0, vec![7]),
        Message::new("U", 0, vec![8]),
    ];
    store.append(&batch).unwrap();
    assert_eq!(
        *heard.lock().unwrap(),
        vec![("T".into(), 2, 5), ("T".into(), 0, 1), ("U".into(), 0, 2)]
    );
}

#[test]
fn spare_segment_is_adopted_on_roll_and_dropped_on_reopen() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let segments = |d: &std::path::Path| std::fs::read_dir(d.join("commitlog")).unwrap().count();
    let seg_size = small_config(dir.path()).commit_log_segment_size;
    {
        let store = MessageStore::open(small_config(dir.path())).unwrap();
        store.put(&Message::new("T", 0, vec![1; 100])).unwrap();
        // The allocator thread prepares the next segment ahead of need.
        let deadline = Instant::now() + Duration::from_secs(10);
        while segments(dir.path()) < 2 {
            assert!(Instant::now() < deadline, "no spare segment was prepared");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Fill past the first segment: the writer adopts the spare.
        let mut last = None;
        for i in 0..100u8 {
            last = Some(store.put(&Message::new("T", 0, vec![i; 200])).unwrap());
        }
        assert!(last.unwrap().commit_log_offset >= seg_size);
        store.shutdown().unwrap();
    }
    // Whatever spare was left is beyond the end of the data and goes at the next open.
    let store = MessageStore::open(StoreConfig {
        prepare_ahead: false,
        ..small_config(dir.path())
    })
    .unwrap();
    let end = store.commit_log_max_offset();
    assert_eq!(segments(dir.path()) as u64, end.div_ceil(seg_size));
    assert_eq!(read_all(&store, "T", 0).len(), 101);
}

#[test]
fn async_put_in_sync_mode_completes_durable() {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark()
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(sync_config(dir.path())).unwrap();
    let batch: Vec<_> = (0..5).map(message).collect();
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(store.put_batch_async(&batch));
    let results = loop {
        if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            break r.unwrap();
        }
        std::thread::park();
    };
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(|r| r.flush == FlushStatus::Durable));
    assert!(store.commit_log_flushed_offset() >= results[4].commit_log_offset);
}

#[test]
fn a_read_in_place_matches_the_records_across_segments_and_splits_and_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    for i in 0..300u64 {
        store.put(&message(i)).unwrap();
    }
    let limits = ReadLimits {
        max_count: 1000,
        max_bytes: 1 << 20,
        max_scan: 1000,
    };
    // "orders" queue 0: every sixth message, over many 8 KiB segments.
    let got = store.get_messages("orders", 0, 0, limits, |_| true);
    let batch = store.read("orders", 0, 0, limits, |_| true).records;
    assert_eq!(batch.len(), got.messages.len());
    assert!(batch.len() >= 40, "{}", batch.len());
    let first = got.messages.first().unwrap().commit_log_offset();
    let last = got.messages.last().unwrap().commit_log_offset();
    let seg = store.config().commit_log_segment_size;
    assert!(last / seg > first / seg, "the read spans segments");
    let bytes = |b: &weir_store::ReadBatch| -> Vec<Vec<u8>> {
        b.spans().iter().map(|s| b.bytes(s).to_vec()).collect()
    };
    let want: Vec<Vec<u8>> = got.messages.iter().map(|r| r.bytes().to_vec()).collect();
    assert_eq!(bytes(&batch), want);
    let offsets: Vec<u64> = batch.spans().iter().map(|s| s.queue_offset).collect();
    assert_eq!(offsets, got.queue_offsets);
    for (span, rec) in batch.spans().iter().zip(&got.messages) {
        assert_eq!(span.len(), rec.len());
        let own = batch.record(span).unwrap();
        assert_eq!(own.commit_log_offset(), rec.commit_log_offset());
    }
    // Split anywhere and joined again: the same records, in order.
    for at in [
        0,
        1,
        batch.len() / 2,
        batch.len() - 1,
        batch.len(),
        batch.len() + 5,
    ] {
        let mut head = batch.clone();
        let tail = head.split_off(at);
        assert_eq!(head.len() + tail.len(), batch.len());
        head.append(tail);
        assert_eq!(bytes(&head), want, "split at {at}");
    }
    // A selection, and a retain, keep the chosen records only.
    let odd = batch.select(|i| i % 2 == 1);
    let odd_want: Vec<Vec<u8>> = want.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(bytes(&odd), odd_want);
    let mut even = batch.clone();
    let mut i = 0;
    even.retain(|_, _| {
        i += 1;
        i % 2 == 1
    });
    let even_want: Vec<Vec<u8>> = want.iter().step_by(2).cloned().collect();
    assert_eq!(bytes(&even), even_want);
}
