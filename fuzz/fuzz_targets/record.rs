//! The commit log record decoder on the recovery path: `probe` over a segment window,
//! `RecordView::parse`/`parse_verified`, and every accessor of a parsed view. Anything
//! `probe` accepts parses; a parsed view re-encodes to the same bytes when its message is
//! one the store would accept.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_protocol::record::{self, Assigned, Probe, RecordView};

fn exercise(v: &RecordView<'_>) {
    let _ = format!("{v:?}");
    let _ = (
        v.total_len(),
        v.queue_id(),
        v.queue_offset(),
        v.commit_log_offset(),
    );
    let _ = (
        v.flag(),
        v.sys_flag(),
        v.born_timestamp(),
        v.store_timestamp(),
    );
    let _ = (v.born_host(), v.store_host(), v.reconsume_times());
    let _ = (v.prepared_tx_offset(), v.topic(), v.tags(), v.body());
    let keys: Vec<&str> = v.keys().collect();
    let props: Vec<(&str, &str)> = v.properties().collect();
    for (k, _) in &props {
        assert!(v.property(k).is_some());
    }
    let id = v.message_id();
    assert_eq!(id.to_string().parse().ok(), Some(id));
    let _ = v.verify_crc();

    let m = v.to_message();
    assert_eq!(m.topic, v.topic());
    assert_eq!(m.keys, keys);
    assert_eq!(m.properties.len(), props.len());
    // What the store would write for this message is these very bytes.
    if m.encoded_len().is_ok() {
        let a = Assigned {
            queue_offset: v.queue_offset(),
            commit_log_offset: v.commit_log_offset(),
            store_timestamp: v.store_timestamp(),
            store_host: v.store_host(),
        };
        let mut again = record::encode_to_vec(&m, &a).expect("encodes");
        // The CRC is recomputed: compare it only when the original was intact.
        if !v.verify_crc() {
            again[record::pos::CRC..record::pos::CRC + 4]
                .copy_from_slice(&v.bytes()[record::pos::CRC..record::pos::CRC + 4]);
        }
        assert_eq!(again, v.bytes());
    }

    // What a filter gets of it agrees with the view.
    let fm = record::filter_message(v.bytes()).expect("a parsed record has filter parts");
    assert_eq!(fm.body, v.body());
    assert_eq!(fm.queue_offset, v.queue_offset());
}

fuzz_target!(|data: &[u8]| {
    // The offset the window is probed at: mostly the one written in the record, so that
    // the CRC and the parse are reached.
    let Some((&mode, window)) = data.split_first() else {
        return;
    };
    // Bit 1: fix the CRC up first, so that damage behind an intact CRC is explored.
    let mut fixed;
    let window = if mode & 2 != 0 && window.len() >= record::pos::CRC_START {
        fixed = window.to_vec();
        let len = (record::u32_at(&fixed, 0) as usize).clamp(record::pos::CRC_START, fixed.len());
        let crc = crc32fast::hash(&fixed[record::pos::CRC_START..len]);
        fixed[record::pos::CRC..record::pos::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        &fixed[..]
    } else {
        window
    };
    let offset = if mode & 1 == 0 && window.len() >= 32 {
        record::u64_at(window, record::pos::COMMIT_LOG_OFFSET)
    } else {
        u64::from(mode)
    };
    match record::probe(window, offset) {
        Probe::Message(len) => {
            assert!(len <= window.len());
            let v = RecordView::parse_verified(&window[..len]).expect("probed records parse");
            assert_eq!(v.commit_log_offset(), offset);
            exercise(&v);
        }
        Probe::Blank(len) => assert_eq!(len, window.len()),
        Probe::Invalid(_) => {}
    }
    // Pulled bytes, which a client parses without a probe.
    if let Ok(v) = RecordView::parse(window) {
        exercise(&v);
    }
    let _ = RecordView::parse_verified(window);
    if let Ok(fm) = record::filter_message(window) {
        // The attributes carry three of the overhead's length prefixes (2 + 4 + 4 bytes).
        assert!(fm.attributes.len() + fm.body.len() + record::RECORD_OVERHEAD - 10 <= window.len());
    }
});
