//! A full disk: sends are refused with "disk full" before the disk is really full, reads go
//! on, nothing acknowledged is lost, and sends resume once space is freed.
//!
//! Run twice: on a small tmpfs the test mounts itself (where it may mount: as root, as
//! here and in CI), and always against a quota set in the store's configuration, which
//! works anywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::small_config;
use weir_store::{
    FsReading, GetStatus, Message, MessageStore, ReadLimits, StoreConfig, StoreError, UsageSource,
};

/// A tmpfs of `size` mounted on a fresh folder, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { dir })
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn config(data: &Path) -> StoreConfig {
    config_with(data, 0.5, 0.8)
}

/// The machine's own disk decides nothing in a quota test: its limits sit above what the
/// disk holding the test folder already uses.
fn above_this_disk(dir: &Path) -> (f64, f64) {
    let used = FsReading::of(dir).unwrap().used_ratio();
    let full = (used + 0.05).clamp(0.8, 0.995);
    ((full - 0.3).max(0.5), full)
}

fn config_with(data: &Path, max_used: f64, full: f64) -> StoreConfig {
    StoreConfig {
        commit_log_segment_size: 256 * 1024,
        consume_queue_segment_entries: 1024,
        index_slots: 1024,
        index_entries: 4096,
        disk_max_used_ratio: max_used,
        disk_full_ratio: full,
        prepare_ahead: true,
        ..small_config(data)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn body(i: u64) -> Vec<u8> {
    (0..1000u64).map(|b| (b ^ i) as u8).collect()
}

/// Fills the store until it refuses with "disk full", checks reads and the refusal, then
/// frees space the way an operator's consumers would, and checks that sends resume.
fn fill_refuse_free_resume(store: &MessageStore, expect_source: UsageSource) {
    let mut acked = Vec::new();
    let fill = |acked: &mut Vec<_>| loop {
        let i = acked.len() as u64;
        assert!(i < 100_000, "the disk never filled");
        let msg = Message::new("T", 0, body(i)).with_key(format!("k{i}"));
        match store.put(&msg) {
            Ok(r) => acked.push(r),
            Err(e) => break e,
        }
    };
    let refusal = fill(&mut acked);
    assert!(matches!(refusal, StoreError::DiskFull { .. }), "{refusal}");
    assert!(refusal.to_string().contains("disk full"), "{refusal}");
    assert!(acked.len() > 100, "only {} messages fit", acked.len());
    // The limit that refused is the one under test.
    let said = match expect_source {
        UsageSource::Quota => "store quota",
        UsageSource::FileSystem => "disk ",
    };
    assert!(refusal.to_string().contains(said), "{refusal}");
    store.check_disk().unwrap();
    // A segment prepared ahead in the background may have been made just after the
    // refusal was measured (a loaded machine): then there is room for it, taken until the
    // store is full for good.
    while store.write_refusal().is_none() {
        let again = fill(&mut acked);
        assert!(matches!(again, StoreError::DiskFull { .. }), "{again}");
        store.check_disk().unwrap();
    }
    // Refused before the disk is full: a batch too, whole.
    let batch = [Message::new("T", 0, vec![1]), Message::new("T", 0, vec![2])];
    assert!(matches!(
        store.put_batch(&batch),
        Err(StoreError::DiskFull { .. })
    ));
    assert_eq!(store.max_offset("T", 0), acked.len() as u64);
    assert!(store.write_refusal().is_some());

    // Reads go on: every acknowledged message, exact bytes.
    let mut offset = 0;
    while offset < acked.len() as u64 {
        let r = store.get_messages("T", 0, offset, ReadLimits::default(), |_| true);
        assert_eq!(r.status, GetStatus::Found);
        for m in &r.messages {
            let v = m.view().unwrap();
            assert_eq!(v.body(), &body(v.queue_offset())[..]);
        }
        offset = r.next_offset;
    }
    assert_eq!(store.query_by_key("T", "k5", 2).len(), 1);

    // Under pressure, nothing consumed: nothing deleted, still full.
    let r = store.run_retention(now_ms()).unwrap();
    assert_eq!(r.segments_deleted, 0, "{r:?}");
    assert!(r.kept_unconsumed.is_some());
    assert!(store.put(&Message::new("T", 0, vec![0])).is_err());

    // The group consumes half; retention frees what it consumed, one segment a pass,
    // until the disk is below the limit again.
    let consumed = acked.len() as u64 / 2;
    store.consumer_offsets().commit("g", "T", 0, consumed);
    let mut passes = 0;
    while store.write_refusal().is_some() {
        passes += 1;
        assert!(passes < 100, "space never came back");
        let r = store.run_retention(now_ms()).unwrap();
        if r.segments_deleted == 0 {
            break;
        }
    }
    assert!(
        store.write_refusal().is_none(),
        "still refused: {:?}",
        store.write_refusal()
    );
    // Nothing unconsumed went.
    assert!(store.min_offset("T", 0) <= consumed);
    let r = store
        .put(&Message::new("T", 0, b"resumed".to_vec()))
        .unwrap();
    assert_eq!(r.queue_offset, acked.len() as u64);
    let mut offset = consumed;
    let mut n = 0;
    loop {
        let r = store.get_messages("T", 0, offset, ReadLimits::default(), |_| true);
        if r.status != GetStatus::Found {
            break;
        }
        for m in &r.messages {
            let v = m.view().unwrap();
            if v.queue_offset() < acked.len() as u64 {
                assert_eq!(v.body(), &body(v.queue_offset())[..]);
            } else {
                assert_eq!(v.body(), b"resumed");
            }
            n += 1;
        }
        offset = r.next_offset;
    }
    assert_eq!(n, acked.len() as u64 - consumed + 1);
}

#[test]
fn a_full_quota_refuses_sends_keeps_reads_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (max_used, full) = above_this_disk(dir.path());
    let store = MessageStore::open(StoreConfig {
        disk_quota_bytes: Some(4 << 20),
        ..config_with(dir.path(), max_used, full)
    })
    .unwrap();
    fill_refuse_free_resume(&store, UsageSource::Quota);
}

#[test]
fn a_full_tmpfs_refuses_sends_keeps_reads_and_resumes() {
    let Some(fs) = Tmpfs::mount("4m") else {
        eprintln!("cannot mount a tmpfs here: the quota test covers the same ground");
        return;
    };
    let store = MessageStore::open(config(&fs.path())).unwrap();
    fill_refuse_free_resume(&store, UsageSource::FileSystem);
    store.shutdown().unwrap();
    drop(store);
    // Nothing acknowledged is lost across a restart either.
    let store = MessageStore::open(config(&fs.path())).unwrap();
    assert!(store.max_offset("T", 0) > 100);
}

#[test]
fn a_segment_the_file_system_refuses_stops_sends_without_a_half_made_file() {
    // No guard at all (ratios at 1.0): the file system itself says no.
    let Some(fs) = Tmpfs::mount("1m") else {
        eprintln!("cannot mount a tmpfs here; skipped");
        return;
    };
    let store = MessageStore::open(StoreConfig {
        disk_max_used_ratio: 1.0,
        disk_full_ratio: 1.0,
        prepare_ahead: false,
        ..config(&fs.path())
    })
    .unwrap();
    let mut acked = 0u64;
    let e = loop {
        match store.put(&Message::new("T", 0, body(acked))) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 10_000);
    };
    assert!(matches!(e, StoreError::DiskFull { .. }), "{e}");
    // Every file under commitlog/ is a whole segment.
    for entry in std::fs::read_dir(fs.path().join("commitlog")).unwrap() {
        let len = entry.unwrap().metadata().unwrap().len();
        assert_eq!(len, 256 * 1024);
    }
    assert_eq!(store.max_offset("T", 0), acked);
    drop(store);
    let store = MessageStore::open(config(&fs.path())).unwrap();
    assert_eq!(store.max_offset("T", 0), acked);
}
