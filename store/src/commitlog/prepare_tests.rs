//! `prepare_ahead` racing the writer through segment roll-overs: it never fails (it once
//! created again the segment the writer had just adopted), and the zeros it writes ahead
//! never reach a byte the writer wrote, committed or not yet, nor one it is writing; a
//! writer that got ahead of it brings its pages in itself.

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
    // Small segments: the writer rolls over often, into spares prepared ahead, and often
    // reaches the range being zero-filled (about 80 MB in all).
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
    for batch in 0..12_000u64 {
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

#[test]
fn zeros_start_at_the_writers_position_not_the_committed_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = CommitLog::open(dir.path(), 4 << 20).expect("open");
    let fill = |offset: u64, buf: &mut [u8]| {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(offset, i);
        }
    };
    let (committed, pending) = {
        let mut w = log.lock_writer();
        let committed = w.append(1_000, fill).expect("append");
        w.commit();
        // Appended, not yet committed: between the committed end and the writer's position.
        let pending = w.append(3_000, fill).expect("append");
        (committed, pending)
    };
    assert!(log.committed() <= pending);
    log.prepare_ahead(|_| Ok(())).expect("prepare ahead");
    let seg = log.files.last().expect("segment");
    for (offset, len) in [(committed, 1_000), (pending, 3_000)] {
        let bytes = seg.read(offset - seg.start(), len).expect("published");
        assert!(
            bytes
                .iter()
                .enumerate()
                .all(|(i, &b)| b == pattern(offset, i)),
            "record at {offset} changed"
        );
    }
}

#[test]
fn a_writer_that_reaches_a_fill_under_way_waits_for_it() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(CommitLog::open(dir.path(), 4 << 20).expect("open"));
    // A fill under way over the writer's next MiB, as `zero_fill` sets one up.
    let fence = log.filling.lock();
    log.fill_start.store(0, Ordering::Release);
    log.fill_end.store(1 << 20, Ordering::Release);
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut w = log.lock_writer();
            let offset = w
                .append(2_000, |offset, buf| {
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = pattern(offset, i);
                    }
                })
                .expect("append");
            w.commit();
            offset
        })
    };
    // A writer that did not wait would be done well within this; one that waits never is.
    let deadline = Instant::now() + Duration::from_millis(300);
    while !writer.is_finished() && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(
        !writer.is_finished(),
        "the writer wrote into a range being filled"
    );
    // The fill's zeros land, then the fence goes: only then the writer's bytes.
    let seg = loop {
        if let Some(seg) = log.files.last() {
            break seg;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(5),
            "no segment"
        );
        std::thread::yield_now();
    };
    seg.zero_fill(0, 1 << 20);
    log.fill_end.store(0, Ordering::Release);
    log.fill_start.store(0, Ordering::Release);
    drop(fence);
    let offset = writer.join().expect("writer");
    let bytes = seg.read(offset - seg.start(), 2_000).expect("published");
    assert!(
        bytes
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(offset, i))
    );
}

#[test]
fn a_writer_ahead_of_the_preparer_brings_its_pages_in_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = CommitLog::open(dir.path(), 4 << 20).expect("open");
    // No `prepare_ahead` at all (its thread starved): each write past what is ready
    // zero-fills through the file up to `WRITER_FILL` beyond itself, once.
    let mut written = Vec::new();
    let mut w = log.lock_writer();
    for n in 0..2_000u64 {
        let len = 100 + (n * 37 % 900) as usize;
        let offset = w
            .append(len, |offset, buf| {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = pattern(offset, i);
                }
            })
            .expect("append");
        written.push((offset, len));
        let end = offset + len as u64;
        let filled = w.filled_to();
        assert!(
            filled >= end && filled <= end + super::WRITER_FILL,
            "filled to {filled} after a write ending at {end}"
        );
    }
    w.commit();
    drop(w);
    let segments = log.files.all();
    for (offset, len) in written {
        let seg = segments
            .iter()
            .find(|s| s.start() <= offset && offset < s.end())
            .expect("segment");
        let bytes = seg.read(offset - seg.start(), len).expect("readable");
        assert!(
            bytes
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern(offset, i)),
            "record at {offset} changed"
        );
    }
}
