//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use weir_store::{FlushMode, GetStatus, Message, MessageStore, ReadLimits, StoreConfig};

/// A configuration with tiny files, so tests roll segments often and copy data folders
/// cheaply. Background timers are long: tests drive checkpoints and retention themselves.
pub fn small_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        commit_log_segment_size: 8 * 1024,
        consume_queue_segment_entries: 64,
        index_slots: 61,
        index_entries: 256,
        async_flush_interval_ms: 3_600_000,
        checkpoint_interval_ms: 3_600_000,
        retention_check_interval_ms: 3_600_000,
        disk_check_interval_ms: 3_600_000,
        // The machine's own disk must not decide a test: tests about space set these.
        disk_max_used_ratio: 1.0,
        disk_full_ratio: 1.0,
        ..StoreConfig::new(dir)
    }
}

pub fn sync_config(dir: &Path) -> StoreConfig {
    StoreConfig {
        flush_mode: FlushMode::Sync,
        ..small_config(dir)
    }
}

/// Deterministic message `i`: spread over topics, queues and tags, with a unique key and
/// a body whose length varies so records land at every alignment.
pub fn message(i: u64) -> Message {
    let topic = ["orders", "payments", "%RETRY%group-a"][(i % 3) as usize];
    let body: Vec<u8> = format!("body-{i}-")
        .into_bytes()
        .into_iter()
        .chain((0..(i * 37 % 400)).map(|b| (b % 251) as u8))
        .collect();
    let mut m = Message::new(topic, (i % 2) as u32, body)
        .with_tags(["TagA", "TagB", ""][(i / 3 % 3) as usize])
        .with_key(format!("key-{i}"))
        .with_property("seq", i.to_string());
    m.born_timestamp = 1_700_000_000_000 + i as i64;
    m.born_host = "192.0.2.7:40000".parse().unwrap();
    m
}

/// Every record of (topic, queue) from its min offset, in order, as owned messages with
/// their queue offsets.
pub fn read_all(store: &MessageStore, topic: &str, queue_id: u32) -> Vec<(u64, Message)> {
    let mut out = Vec::new();
    let mut offset = store.min_offset(topic, queue_id);
    loop {
        let r = store.get_messages(topic, queue_id, offset, ReadLimits::default(), |_| true);
        match r.status {
            GetStatus::Found => {
                for rec in &r.messages {
                    let v = rec.view().expect("stored record parses");
                    assert!(v.verify_crc(), "served record fails its CRC");
                    out.push((v.queue_offset(), v.to_message()));
                }
                offset = r.next_offset;
            }
            GetStatus::NoMatch => offset = r.next_offset,
            GetStatus::NoNewMessage => return out,
            GetStatus::OffsetMoved => panic!("offset {offset} moved to {}", r.next_offset),
        }
    }
}

/// Copies the folder `src` into `dst`, recursively: a store's folder as a crash leaves it
/// (a live store's files, as the page cache holds them).
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}
