//! Crash recovery: damage a crash image of the commit log at random places and check that
//! the store serves exactly the records the damage did not touch (a torn tail costs what
//! follows the cut; damage in the middle costs only the damaged record), with consume
//! queues and the key index agreeing with the log.
//!
//! A crash image is a copy of a live store's data folder: the "running" marker is in it
//! and the checkpoint is whatever was last written, exactly what a kill leaves behind.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::common::{copy_dir, message, read_all, small_config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_store::{Message, MessageStore};

const TOPICS: [&str; 3] = ["orders", "payments", "%RETRY%group-a"];

#[derive(Clone)]
struct Rec {
    offset: u64,
    size: u64,
    queue_offset: u64,
    msg: Message,
}

struct Image {
    dir: tempfile::TempDir,
    records: Vec<Rec>,
    segment_size: u64,
    /// The checkpoint's durable point when the image was taken.
    checkpointed: u64,
}

/// Appends `before` messages, checkpoints if asked, appends `after` more, and copies the
/// live data folder.
fn crash_image(before: u64, checkpoint: bool, after: u64) -> Image {
    let live = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let config = small_config(live.path());
    let segment_size = config.commit_log_segment_size;
    let store = MessageStore::open(config).unwrap();
    let mut records = Vec::new();
    let put = |i: u64, records: &mut Vec<Rec>| {
        let msg = message(i);
        let r = store.put(&msg).unwrap();
        records.push(Rec {
            offset: r.commit_log_offset,
            size: u64::from(r.size),
            queue_offset: r.queue_offset,
            msg,
        });
    };
    for i in 0..before {
        put(i, &mut records);
    }
    let mut checkpointed = 0;
    if checkpoint {
        store.checkpoint().unwrap();
        checkpointed = store.commit_log_max_offset();
    }
    for i in before..before + after {
        put(i, &mut records);
    }
    copy_dir(live.path(), image.path());
    drop(store);
    Image {
        dir: image,
        records,
        segment_size,
        checkpointed,
    }
}

impl Image {
    fn fork(&self) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        copy_dir(self.dir.path(), d.path());
        d
    }
    fn end(&self) -> u64 {
        self.records.last().map_or(0, |r| r.offset + r.size)
    }
    fn segment_path(dir: &Path, start: u64) -> std::path::PathBuf {
        dir.join("commitlog").join(format!("{start:020}"))
    }
}

/// What the store must serve after the log is cut at `pos` (its segment ends there, later
/// segments are gone: a torn tail): the records before the cut, and the end of the log.
fn expected_after_cut(img: &Image, pos: u64) -> (Vec<Rec>, u64) {
    if let Some(k) = img
        .records
        .iter()
        .position(|r| r.offset <= pos && pos < r.offset + r.size)
    {
        return (img.records[..k].to_vec(), img.records[k].offset);
    }
    // In a blank filler closing a segment.
    let seg_start = pos - pos % img.segment_size;
    let seg_end = seg_start + img.segment_size;
    let before: Vec<Rec> = img
        .records
        .iter()
        .filter(|r| r.offset < pos)
        .cloned()
        .collect();
    let blank_start = before.last().map_or(seg_start, |r| r.offset + r.size);
    if pos < blank_start + 8 {
        return (before, blank_start);
    }
    // The filler is intact; the segments after it are gone.
    (before, seg_end)
}

/// What the store must serve after the bytes `[from, to)` are damaged (records elsewhere
/// untouched): every record not overlapping them; the log ends after the last of those.
fn expected_after_damage_between(img: &Image, from: u64, to: u64) -> (Vec<Rec>, u64) {
    let survivors: Vec<Rec> = img
        .records
        .iter()
        .filter(|r| r.offset + r.size <= from || r.offset >= to)
        .cloned()
        .collect();
    let end = match (survivors.last(), img.records.last()) {
        (_, None) => 0,
        (Some(s), Some(l)) if s.offset == l.offset => img.end(),
        // The damage took the last records: the log ends after the last survivor, or
        // after the filler closing its segment if that filler is intact.
        (s, Some(_)) => {
            let s_end = s.map_or(0, |s| s.offset + s.size);
            let next = img
                .records
                .iter()
                .find(|r| r.offset >= s_end)
                .map_or(img.end(), |r| r.offset);
            let filler_intact = s_end + 8 <= from || s_end >= to;
            if next % img.segment_size == 0 && next > s_end && filler_intact {
                next
            } else {
                s_end
            }
        }
    };
    (survivors, end)
}

/// The queue's next offset once only `survivors` are in it.
fn expected_max(survivors: &[Rec], topic: &str, q: u32) -> u64 {
    survivors
        .iter()
        .rfind(|r| r.msg.topic == topic && r.msg.queue_id == q)
        .map_or(0, |r| r.queue_offset + 1)
}

fn check(dir: &Path, survivors: &[Rec], lost: &[Rec], end: u64, what: &str) {
    let store = MessageStore::open(small_config(dir)).unwrap();
    assert!(!store.recovery_report().clean_shutdown, "{what}");
    assert_eq!(store.commit_log_max_offset(), end, "{what}: end of log");
    for topic in TOPICS {
        for q in 0..2u32 {
            let want: Vec<&Rec> = survivors
                .iter()
                .filter(|r| r.msg.topic == topic && r.msg.queue_id == q)
                .collect();
            let got = read_all(&store, topic, q);
            assert_eq!(got.len(), want.len(), "{what}: {topic}/{q} count");
            for ((qo, m), w) in got.iter().zip(&want) {
                assert_eq!((*qo, m), (w.queue_offset, &w.msg), "{what}: {topic}/{q}");
            }
            assert_eq!(
                store.max_offset(topic, q),
                expected_max(survivors, topic, q),
                "{what}: {topic}/{q} max"
            );
        }
    }
    for r in survivors {
        let rec = store.get_by_offset(r.offset).unwrap();
        assert_eq!(rec.view().unwrap().to_message(), r.msg, "{what}");
        let key = &r.msg.keys[0];
        assert_eq!(
            store.query_by_key(&r.msg.topic, key, 4).len(),
            1,
            "{what}: {key}"
        );
    }
    for r in lost {
        assert!(
            store.get_by_offset(r.offset).is_err(),
            "{what}: lost record served"
        );
        let key = &r.msg.keys[0];
        assert!(
            store.query_by_key(&r.msg.topic, key, 4).is_empty(),
            "{what}: lost {key} indexed"
        );
    }
    // The store keeps working: the next append lands right after the survivors.
    let fresh = Message::new("orders", 0, b"after recovery".to_vec()).with_key("fresh");
    let put = store.put(&fresh).unwrap();
    assert_eq!(
        put.queue_offset,
        expected_max(survivors, "orders", 0),
        "{what}"
    );
    store.shutdown().unwrap();
    drop(store);
    let store = MessageStore::open(small_config(dir)).unwrap();
    assert!(store.recovery_report().clean_shutdown);
    assert_eq!(store.query_by_key("orders", "fresh", 2).len(), 1, "{what}");
}

/// Checks what the store serves after the log of `dir` was cut at `pos`.
fn check_cut(img: &Image, dir: &Path, pos: u64, what: &str) {
    let (survivors, log_end) = expected_after_cut(img, pos);
    let lost = lost(img, &survivors);
    check(dir, &survivors, &lost, log_end, what);
}

/// The records of the image that are not among `survivors`.
fn lost(img: &Image, survivors: &[Rec]) -> Vec<Rec> {
    let kept: std::collections::HashSet<u64> = survivors.iter().map(|r| r.offset).collect();
    img.records
        .iter()
        .filter(|r| !kept.contains(&r.offset))
        .cloned()
        .collect()
}

/// Cuts the commit log of the image at `dir` at byte `pos`: its segment ends there and
/// later segments are gone.
fn cut_log(img: &Image, dir: &Path, pos: u64) {
    let seg = pos - pos % img.segment_size;
    let file = OpenOptions::new()
        .write(true)
        .open(Image::segment_path(dir, seg))
        .unwrap();
    file.set_len(pos - seg).unwrap();
    let mut later = seg + img.segment_size;
    while fs::remove_file(Image::segment_path(dir, later)).is_ok() {
        later += img.segment_size;
    }
}

#[test]
fn cut_at_random_positions() {
    let img = crash_image(400, false, 0);
    let mut rng = StdRng::seed_from_u64(0x05ee_dc07);
    let end = img.end();
    let mut positions: Vec<u64> = (0..40).map(|_| rng.random_range(0..end)).collect();
    // And the edges: the very start, record boundaries, a segment boundary.
    positions.extend([
        0,
        img.records[1].offset,
        img.records[200].offset + 3,
        img.segment_size,
    ]);
    for pos in positions {
        let dir = img.fork();
        cut_log(&img, dir.path(), pos);
        check_cut(&img, dir.path(), pos, &format!("cut at {pos}"));
    }
}

#[test]
fn flip_random_bytes() {
    let img = crash_image(400, false, 0);
    let mut rng = StdRng::seed_from_u64(0xf11b);
    let end = img.end();
    for _ in 0..40 {
        let pos = rng.random_range(0..end);
        let dir = img.fork();
        let seg = pos - pos % img.segment_size;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(Image::segment_path(dir.path(), seg))
            .unwrap();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, pos - seg).unwrap();
        b[0] ^= rng.random_range(1..=255u8);
        file.write_all_at(&b, pos - seg).unwrap();
        // Only the record holding the byte is lost (none, in a filler's unused bytes);
        // a damaged filler header costs nothing either: the next segment's records verify.
        let (survivors, end) = match img
            .records
            .iter()
            .find(|r| r.offset <= pos && pos < r.offset + r.size)
        {
            Some(r) => expected_after_damage_between(&img, r.offset, r.offset + r.size),
            None => (img.records.clone(), img.end()),
        };
        let lost = lost(&img, &survivors);
        check(
            dir.path(),
            &survivors,
            &lost,
            end,
            &format!("flip at {pos}"),
        );
    }
}

#[test]
fn torn_tail_after_a_checkpoint() {
    // The checkpoint covers the first 200 records; damage lands after it.
    let img = crash_image(200, true, 200);
    assert!(img.checkpointed > 0);
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..15 {
        let pos = rng.random_range(img.checkpointed..img.end());
        let dir = img.fork();
        cut_log(&img, dir.path(), pos);
        check_cut(
            &img,
            dir.path(),
            pos,
            &format!("cut at {pos} after checkpoint"),
        );
    }
}

#[test]
fn unclean_stop_without_damage_replays_from_the_checkpoint() {
    let img = crash_image(150, true, 150);
    let dir = img.fork();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert!(!report.clean_shutdown);
    assert_eq!(
        report.records_replayed, 150,
        "only what follows the checkpoint is replayed"
    );
    drop(store);
    check_all_present(&img, dir.path());
}

fn check_all_present(img: &Image, dir: &Path) {
    let store = MessageStore::open(small_config(dir)).unwrap();
    let mut n = 0;
    for topic in TOPICS {
        for q in 0..2 {
            n += read_all(&store, topic, q).len();
        }
    }
    assert_eq!(n, img.records.len());
}

#[test]
fn lost_derived_data_is_rebuilt_from_the_log() {
    let img = crash_image(300, true, 0);
    // Consume queues and index deleted, checkpoint garbage: everything comes back from the
    // commit log alone.
    let dir = img.fork();
    fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    fs::remove_dir_all(dir.path().join("index")).unwrap();
    fs::write(dir.path().join("checkpoint"), [0xAB; 128]).unwrap();
    let end = img.end();
    check(dir.path(), &img.records, &[], end, "rebuild");
}

#[test]
fn a_second_crash_during_recovery_is_harmless() {
    let img = crash_image(300, false, 0);
    let pos = img.records[250].offset + 5;
    let dir = img.fork();
    let seg = pos - pos % img.segment_size;
    let file = OpenOptions::new()
        .write(true)
        .open(Image::segment_path(dir.path(), seg))
        .unwrap();
    file.set_len(pos - seg).unwrap();
    {
        // Recover once, then "crash" again by copying the live folder.
        let store = MessageStore::open(small_config(dir.path())).unwrap();
        let again = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), again.path());
        drop(store);
        // The segment was cut short (zeros after `pos`), later segments are intact: only
        // the records of the cut stretch are lost.
        let seg_end = seg + img.segment_size;
        let (survivors, log_end) = expected_after_damage_between(&img, pos, seg_end);
        let lost = lost(&img, &survivors);
        check(again.path(), &survivors, &lost, log_end, "second crash");
    }
}

#[test]
fn messages_from_helper_are_distinct() {
    // Guards the premise of the tests above: keys are unique per message.
    let keys: std::collections::HashSet<_> = (0..400).map(|i| message(i).keys[0].clone()).collect();
    assert_eq!(keys.len(), 400);
}

#[test]
fn a_damaged_record_is_skipped_reported_and_never_comes_back() {
    // Damage found after a clean stop (checkpoint lost, a middle record corrupt): the
    // record is skipped and reported, the ones after it are kept, and it stays skipped
    // through later appends and restarts.
    let dir = tempfile::tempdir().unwrap();
    let puts: Vec<_> = {
        let store = MessageStore::open(small_config(dir.path())).unwrap();
        let p = (0..3u8)
            .map(|i| store.put(&Message::new("T", 0, vec![i; 50])).unwrap())
            .collect();
        store.shutdown().unwrap();
        p
    };
    fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let seg = OpenOptions::new()
        .write(true)
        .open(Image::segment_path(dir.path(), 0))
        .unwrap();
    seg.write_all_at(&[0xEE], puts[1].commit_log_offset + 60)
        .unwrap();
    {
        let store = MessageStore::open(small_config(dir.path())).unwrap();
        let report = store.recovery_report();
        assert_eq!(report.damaged.len(), 1, "{report:?}");
        assert_eq!(
            (report.damaged[0].from, report.damaged[0].to),
            (puts[1].commit_log_offset, puts[2].commit_log_offset)
        );
        let read: Vec<_> = read_all(&store, "T", 0)
            .into_iter()
            .map(|(qo, m)| (qo, m.body[0]))
            .collect();
        // Queue offset 1 is a hole now.
        assert_eq!(read, vec![(0, 0), (2, 2)]);
        assert!(store.get_by_offset(puts[1].commit_log_offset).is_err());
        store.put(&Message::new("T", 0, vec![9; 50])).unwrap();
        store.shutdown().unwrap();
    }
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let bodies: Vec<_> = read_all(&store, "T", 0)
        .into_iter()
        .map(|(_, m)| m.body[0])
        .collect();
    assert_eq!(bodies, vec![0, 2, 9]);
    assert!(store.get_by_offset(puts[1].commit_log_offset).is_err());
    assert_eq!(
        store
            .get_by_offset(puts[2].commit_log_offset)
            .unwrap()
            .view()
            .unwrap()
            .body(),
        &[2u8; 50][..]
    );
}

/// A crash image of exactly three commit log segments, without a checkpoint.
fn three_segment_image() -> Image {
    let mut n = 40;
    loop {
        let img = crash_image(n, false, 0);
        let segments = img.end().div_ceil(img.segment_size);
        if segments == 3 && img.end() % img.segment_size > img.segment_size / 2 {
            return img;
        }
        assert!(segments <= 3, "stepped past three segments");
        n += 4;
    }
}

#[test]
fn damage_in_the_middle_of_three_segments_costs_only_that_record() {
    let img = three_segment_image();
    // A record in the middle of the middle segment.
    let mid = img.segment_size + img.segment_size / 2;
    let victim = img
        .records
        .iter()
        .find(|r| r.offset >= mid)
        .unwrap()
        .clone();
    for (what, at) in [
        ("magic", victim.offset + 4),
        ("length", victim.offset),
        ("body", victim.offset + victim.size - 1),
    ] {
        let dir = img.fork();
        let seg = at - at % img.segment_size;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(Image::segment_path(dir.path(), seg))
            .unwrap();
        file.write_all_at(&[0xA5], at - seg).unwrap();
        let survivors: Vec<Rec> = img
            .records
            .iter()
            .filter(|r| r.offset != victim.offset)
            .cloned()
            .collect();
        assert_eq!(survivors.len(), img.records.len() - 1);
        check(
            dir.path(),
            &survivors,
            std::slice::from_ref(&victim),
            img.end(),
            &format!("{what} of a middle record damaged"),
        );
        let store = MessageStore::open(small_config(dir.path())).unwrap();
        // Reported once when found; the checkpoint written since covers it.
        assert!(store.recovery_report().damaged.is_empty());
    }
}

#[test]
fn damage_at_the_tail_costs_only_the_tail() {
    let img = three_segment_image();
    let last = img.records.last().unwrap().clone();
    let dir = img.fork();
    let seg = last.offset - last.offset % img.segment_size;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(Image::segment_path(dir.path(), seg))
        .unwrap();
    // A torn write: the record's second half never reached the disk.
    let half = last.size / 2;
    file.write_all_at(
        &vec![0u8; (last.size - half) as usize],
        last.offset + half - seg,
    )
    .unwrap();
    let survivors = img.records[..img.records.len() - 1].to_vec();
    check(
        dir.path(),
        &survivors,
        std::slice::from_ref(&last),
        last.offset,
        "torn tail",
    );
}

#[test]
fn segments_past_the_end_are_moved_aside_not_deleted() {
    let img = three_segment_image();
    let dir = img.fork();
    // The last segment's records all damaged: the log ends in the second segment, and the
    // third, which is not zeros, goes to the quarantine folder.
    let third = 2 * img.segment_size;
    let path = Image::segment_path(dir.path(), third);
    let mut bytes = fs::read(&path).unwrap();
    for b in bytes.iter_mut().step_by(7) {
        *b ^= 0x5A;
    }
    fs::write(&path, &bytes).unwrap();
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert_eq!(fs::read(&report.quarantined[0]).unwrap(), bytes);
    assert!(!path.exists());
    assert_eq!(store.commit_log_max_offset(), third);
    drop(store);
    // And the store keeps working from there.
    let store = MessageStore::open(small_config(dir.path())).unwrap();
    store
        .put(&Message::new("orders", 0, b"x".to_vec()))
        .unwrap();
}
