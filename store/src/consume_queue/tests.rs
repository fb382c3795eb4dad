use std::os::unix::fs::MetadataExt;

use super::*;
use crate::segment::GROW_STEP;
use crate::test_util::{mapped_kib, minor_faults};

fn entry(i: u64) -> CqEntry {
    CqEntry {
        commit_log_offset: 1000 + i * 100,
        size: 100,
        tag_hash: i,
    }
}

/// Reserves and puts `entry(i)` at each offset `i` of `range`, as the store's append does.
fn put_all(cq: &ConsumeQueue, range: std::ops::Range<u64>) {
    for i in range {
        cq.reserve(i).unwrap();
        cq.put(i, entry(i)).unwrap();
    }
}

/// Blocks the queue's files hold on disk, in bytes.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

/// What recovery truncates and rewrites is synced again: the truncation's own sync of
/// the zeros must not mark the rewritten entries durable.
#[test]
fn entries_put_after_a_truncation_are_still_to_sync() {
    let dir = tempfile::tempdir().unwrap();
    let cq = ConsumeQueue::open(dir.path(), 1_000, 0).unwrap();
    put_all(&cq, 0..500);
    cq.flush().unwrap();
    cq.truncate_from(entry(300).commit_log_offset).unwrap();
    assert!(cq.unflushed().is_empty());
    put_all(&cq, 300..700);
    assert!(
        !cq.unflushed().is_empty() && cq.pages_to_write() > 0,
        "rewritten entries taken for synced"
    );
}

/// A segment made ready ahead of its first entry (an append refused after `reserve`)
/// does not hide the unsynced entries of the one before it.
#[test]
fn an_empty_last_segment_does_not_hide_unsynced_entries_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let cq = ConsumeQueue::open(dir.path(), 64, 0).unwrap();
    put_all(&cq, 0..64);
    cq.reserve(64).unwrap();
    assert_eq!(cq.files.count(), 2);
    assert_eq!(cq.unflushed().len(), 1);
    cq.flush().unwrap();
    assert!(cq.unflushed().is_empty());
    assert_eq!(cq.pages_to_write(), 0);
}

#[test]
fn a_queue_reserves_disk_as_it_fills_not_a_whole_segment_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // 300,000 entries per file: 6 MB each when made whole.
    let cq = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    put_all(&cq, 0..10);
    assert_eq!(cq.allocated_bytes(), GROW_STEP);
    assert!(
        disk_bytes(dir.path()) <= GROW_STEP,
        "{}",
        disk_bytes(dir.path())
    );

    // 10,000 entries (200,000 bytes): the reservation doubles ahead of the writer.
    put_all(&cq, 10..10_000);
    let allocated = cq.allocated_bytes();
    assert!(
        (200_000..=4 * GROW_STEP).contains(&allocated),
        "{allocated}"
    );
    assert!(
        disk_bytes(dir.path()) <= allocated,
        "{}",
        disk_bytes(dir.path())
    );

    // Dropping entries zeroes only what was written: no hole gets blocks.
    cq.truncate_from(entry(5_000).commit_log_offset).unwrap();
    assert_eq!(cq.max_offset(), 5_000);
    assert!(disk_bytes(dir.path()) <= allocated);
    drop(cq);

    // Opened again: the entries read back, and writing goes on past them.
    let cq = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    assert_eq!(cq.max_offset(), 5_000);
    assert_eq!(cq.get(4_999), Some(entry(4_999)));
    assert_eq!(cq.get(5_000), None);
    cq.reserve(5_000).unwrap();
    cq.put(5_000, entry(5_000)).unwrap();
    assert_eq!(cq.get(5_000), Some(entry(5_000)));
    assert!(cq.allocated_bytes() >= 5_001 * ENTRY_SIZE);
}

/// The hint `put` leaves is the segment struct the next entry goes through; asking for
/// it stays harmless once the segment it names is gone.
#[test]
fn a_put_leaves_the_segment_it_went_through_as_its_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cq = ConsumeQueue::open(dir.path(), 4, 0).unwrap();
    let hint = || cq.next_segment_addr.load(Ordering::Relaxed);
    assert_eq!(hint(), 0, "nothing written, nothing to hint at");
    cq.prefetch_next_put();
    for i in 0..6 {
        cq.reserve(i).unwrap();
        cq.put(i, entry(i)).unwrap();
        let seg = cq.files.find(i * ENTRY_SIZE).expect("the entry's segment");
        assert_eq!(hint(), Arc::as_ptr(&seg) as usize, "after entry {i}");
        cq.prefetch_next_put();
    }
    // Stale hints (entries dropped, addresses made up) are only ever prefetched.
    cq.truncate_from(entry(0).commit_log_offset).unwrap();
    cq.prefetch_next_put();
    prefetch_addr(usize::MAX - 10, 100);
    prefetch_addr(8, 64);
    assert_eq!(cq.get(0), None);
}

/// Entries are held back and written into their page in runs of `HELD_ENTRIES`; a
/// reader sees each at once (writing the held ones first), and only what was written is
/// in the files: a queue opened again from them has the written entries, not the held.
#[test]
fn held_entries_are_read_at_once_and_reach_the_files_in_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cq = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    let written = || cq.written.load(Ordering::Acquire);
    let run = HELD_ENTRIES as u64;
    put_all(&cq, 0..run);
    assert_eq!(
        (cq.max_offset(), written()),
        (run, 0),
        "a run held back whole"
    );
    cq.reserve(run).unwrap();
    cq.put(run, entry(run)).unwrap();
    assert_eq!(written(), run, "a full run is written by the next put");
    // Read at once: the reader writes the held entry first.
    assert_eq!(cq.get(run), Some(entry(run)));
    assert_eq!(written(), run + 1);
    put_all(&cq, run + 1..run + 4);
    let mut seen = Vec::new();
    cq.scan(0, |at, e| {
        seen.push((at, e));
        true
    });
    assert_eq!(
        seen.len() as u64,
        run + 4,
        "a scan reads the held entries too"
    );
    assert!(seen.iter().all(|(at, e)| *e == entry(*at)));
    // Held again, then a queue opened from the files: only what was written is there.
    cq.reserve(run + 4).unwrap();
    cq.put(run + 4, entry(run + 4)).unwrap();
    drop(cq);
    let reopened = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    assert_eq!(
        reopened.max_offset(),
        run + 4,
        "the held entry was not in the files"
    );
    // `write_held` (a checkpoint's first step) puts them there.
    reopened.reserve(run + 4).unwrap();
    reopened.put(run + 4, entry(run + 4)).unwrap();
    reopened.write_held();
    drop(reopened);
    let again = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    assert_eq!(again.max_offset(), run + 5);
    assert_eq!(again.get(run + 4), Some(entry(run + 4)));
}

/// A put to another segment writes the held entries of the last one first: a run is
/// always within one segment.
#[test]
fn a_run_ends_where_its_segment_does() {
    let dir = tempfile::tempdir().unwrap();
    let cq = ConsumeQueue::open(dir.path(), 4, 0).unwrap();
    put_all(&cq, 0..6);
    assert_eq!(
        cq.written.load(Ordering::Acquire),
        4,
        "the first segment's run written"
    );
    for i in 0..6 {
        assert_eq!(cq.get(i), Some(entry(i)));
    }
    // Retention and destruction take held entries with them too.
    cq.reserve(6).unwrap();
    cq.put(6, entry(6)).unwrap();
    cq.trim_below(entry(5).commit_log_offset).unwrap();
    assert_eq!((cq.min_offset(), cq.max_offset()), (5, 7));
    assert_eq!(cq.get(6), Some(entry(6)));
    cq.reserve(7).unwrap();
    cq.put(7, entry(7)).unwrap();
    cq.destroy().unwrap();
    assert_eq!((cq.max_offset(), cq.get(7)), (0, None));
}

/// Faults taken by putting entries `range` into `cq`.
fn faults_putting(cq: &ConsumeQueue, range: std::ops::Range<u64>) -> u64 {
    for i in range.clone() {
        cq.reserve(i).unwrap();
    }
    let before = minor_faults();
    for i in range {
        cq.put(i, entry(i)).unwrap();
    }
    minor_faults() - before
}

/// A sync write-protects the page being written; brought back in writable after it, the
/// next puts take no fault.
#[test]
fn after_a_sync_the_page_being_written_is_writable_again() {
    for prefault in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cq = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
        faults_putting(&cq, 0..20);
        cq.flush().unwrap();
        if prefault {
            cq.prefault_after_sync();
        }
        let faults = faults_putting(&cq, 20..40);
        match prefault {
            true => assert_eq!(faults, 0, "the page was made writable again"),
            false => assert!(faults >= 1, "a write after write-back faults"),
        }
    }
}

/// A sync drops this process's mapping of the queue's whole written pages first (so that
/// writing them back costs no TLB flush per page), and keeps the page being written.
#[test]
fn a_sync_unmaps_whole_written_pages_and_keeps_the_one_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let cq = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    // 20-byte entries: 2,100 fill ten 4 KiB pages and part of an eleventh.
    faults_putting(&cq, 0..2_100);
    let faults_getting = |at: u64| {
        let before = minor_faults();
        assert_eq!(cq.get(at), Some(entry(at)));
        minor_faults() - before
    };
    assert_eq!(faults_getting(0), 0, "written pages are mapped");
    cq.flush().unwrap();
    assert!(faults_getting(0) > 0, "a whole written page was dropped");
    assert_eq!(
        faults_getting(2_099),
        0,
        "the page being written stays mapped"
    );
    assert_eq!(cq.get(1_000), Some(entry(1_000)));
}

/// Opening a queue finds its end by a binary search over its last segment, which is
/// mostly holes: without read-ahead, each search step brings in one page, not a hundred
/// (with 8,192 queues, that made a broker's restart take a minute).
#[test]
fn opening_a_queue_reads_a_page_per_search_step() {
    let dir = tempfile::tempdir().unwrap();
    let cq = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    faults_putting(&cq, 0..1_000);
    cq.flush().unwrap();
    drop(cq);
    let cq = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    assert_eq!(cq.max_offset(), 1_000);
    let seg = cq.files.last().unwrap();
    // About 20 search steps of a 4 KiB page each, and the pages written: 52 KiB here;
    // 448 KiB with read-ahead.
    let kib = mapped_kib(seg.path());
    assert!(kib <= 160, "{kib} KiB mapped after opening");
}

/// A partial checkpoint's write-back: the whole written pages go (unmapped, their
/// write-back started), nothing is recorded as durable, the page being written is left
/// mapped and writable (the next puts take no fault), and a page is started once.
#[test]
fn a_started_write_back_records_nothing_durable_and_leaves_the_page_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let cq = ConsumeQueue::open(dir.path(), 300_000, 0).unwrap();
    // 20-byte entries: 2,100 fill ten 4 KiB pages and part of an eleventh.
    faults_putting(&cq, 0..2_100);
    assert_eq!(cq.pages_to_write(), 10);
    let faults_getting = |at: u64| {
        let before = minor_faults();
        assert_eq!(cq.get(at), Some(entry(at)));
        minor_faults() - before
    };
    cq.start_writeback().unwrap();
    assert_eq!(
        cq.pages_to_write(),
        0,
        "started pages are not started again"
    );
    assert!(!cq.unflushed().is_empty(), "a write-back taken for a sync");
    assert!(faults_getting(0) > 0, "a whole written page was dropped");
    assert_eq!(
        faults_putting(&cq, 2_100..2_140),
        0,
        "the page being written was write-protected"
    );
    // New whole pages are counted (and started) on their own.
    faults_putting(&cq, 2_140..2_600);
    assert_eq!(cq.pages_to_write(), 2);
    cq.start_writeback().unwrap();
    assert_eq!(cq.pages_to_write(), 0);
    // A sync still makes everything durable, and every entry reads back.
    cq.flush().unwrap();
    assert!(cq.unflushed().is_empty());
    for i in (0..2_600).step_by(97) {
        assert_eq!(cq.get(i), Some(entry(i)));
    }
    // Entries rewritten below what was started are started again.
    cq.truncate_from(entry(300).commit_log_offset).unwrap();
    faults_putting(&cq, 300..1_300);
    assert!(
        cq.pages_to_write() >= 4,
        "rewritten pages taken for started"
    );
}
