//! `prepare_ahead` racing the writer through segment roll-overs: it never fails (it once
//! created again the segment the writer had just adopted) and never changes a byte the
//! writer wrote, committed or not yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::CommitLog;

/// The byte at `i` of the record at `offset`.
fn pattern(offset: u64, i: usize) -> u8 {
    (offset as usize).wrapping_mul(31).wrapping_add(i) as u8 | 1
}

#[test]
fn preparing_ahead_races_the_writer_without_failing_or_changing_a_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Small segments: the writer rolls over often, into spares prepared ahead.
    let log = Arc::new(CommitLog::open(dir.path(), 4 << 20).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let preparer = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                log.prepare_ahead(|_| Ok(())).expect("prepare ahead");
                rounds += 1;
            }
            rounds
        })
    };
    let mut written = Vec::new();
    for batch in 0..3_000u64 {
        let mut w = log.lock_writer();
        // Batches of up to 16 records of 64 B to 6 KiB, committed at the batch's end: the
        // uncommitted ones sit between the committed end and the writer's position.
        for n in 0..(batch % 16 + 1) {
            let len = 64 + ((batch * 7 + n * 613) % 6_000) as usize;
            let offset = w
                .append(len, |offset, buf| {
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = pattern(offset, i);
                    }
                })
                .expect("append");
            written.push((offset, len));
        }
        w.commit();
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = preparer.join().expect("preparer");
    assert!(rounds > 0);
    let segments = log.files.all();
    assert!(segments.len() > 3, "{} segments", segments.len());
    for (offset, len) in written {
        let seg = segments
            .iter()
            .find(|s| s.start() <= offset && offset < s.end())
            .expect("segment");
        let bytes = seg.read(offset - seg.start(), len).expect("published");
        let bad = bytes
            .iter()
            .enumerate()
            .position(|(i, &b)| b != pattern(offset, i));
        assert_eq!(bad, None, "record at {offset} ({len} B) changed");
    }
}
