//! A slave killed while it copies a chunk of its master's log: recovery must not find the
//! chunk's later records valid behind a torn first one (they would be replayed with a
//! queue offset past their queue's end, leaving a hole the master then never fills).
//!
//! The kill lands in the copy deterministically: the child (this test binary re-run on the
//! ignored test `child_appender`) makes a page of the slave's segment in the middle of the
//! chunk inaccessible, so the copy faults there and the child dies of it, as a SIGKILL that
//! lands while the copy waits in a page fault leaves it. glibc's `memcpy` stores the first
//! bytes of a large copy last (it saves the first vector and writes it after the rest), so
//! a single copy of the whole chunk leaves the first record's header zero and the records
//! after it whole up to the faulting page.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::read_all;
use weir_store::{Message, MessageStore, StoreConfig};

const DIR_ENV: &str = "WEIR_REPLICA_KILL_DIR";

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        // One segment holds everything: the chunk is copied in one piece.
        commit_log_segment_size: 1 << 20,
        prepare_ahead: false,
        ..common::small_config(dir)
    }
}

fn batch(queue_id: u32) -> Vec<Message> {
    (0..100)
        .map(|i| {
            let body = format!("k{i}-{}", "x".repeat(300)).into_bytes();
            Message::new("T", queue_id, body).with_key(format!("k{i}"))
        })
        .collect()
}

/// The start address of this process's mapping of `file`.
fn mapping_of(file: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.ends_with(file.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not mapped", file.display()));
    let start = line.split('-').next().unwrap();
    usize::from_str_radix(start, 16).unwrap()
}

#[test]
#[ignore = "child process of `a_slave_killed_mid_copy_recovers_without_a_hole`"]
fn child_appender() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let offset: u64 = std::fs::read_to_string(dir.join("offset"))
        .unwrap()
        .parse()
        .unwrap();
    let chunk = std::fs::read(dir.join("chunk")).unwrap();
    let store = MessageStore::open(config(&dir.join("slave"))).unwrap();
    let seg_start = offset - offset % (1 << 20);
    let file = dir
        .join("slave")
        .join("commitlog")
        .join(format!("{seg_start:020}"));
    let file = std::fs::canonicalize(file).unwrap();
    let page = rustix::param::page_size() as u64;
    // The second whole page the chunk goes in: the copy faults there, with the first
    // records' pages written (the chunk is 40 KB).
    let victim = (offset - seg_start).div_ceil(page) * page + page;
    assert!(victim + page < offset - seg_start + chunk.len() as u64);
    let addr = mapping_of(&file) + victim as usize;
    // SAFETY: a page of the segment's own mapping; nothing reads it before the fault.
    unsafe {
        rustix::mm::mprotect(
            addr as *mut _,
            page as usize,
            rustix::mm::MprotectFlags::empty(),
        )
        .unwrap();
    }
    store.append_replicated(offset, &chunk).unwrap();
    unreachable!("the copy went through an inaccessible page");
}

#[test]
fn a_slave_killed_mid_copy_recovers_without_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let master = MessageStore::open(config(&dir.path().join("master"))).unwrap();
    let first = master.put_batch(&batch(0)).unwrap();
    let a_end = first
        .last()
        .map(|r| r.commit_log_offset + u64::from(r.size))
        .unwrap();
    master.put_batch(&batch(0)).unwrap();

    // The slave holds the first batch; the second is the chunk it is killed copying.
    {
        let slave = MessageStore::open(config(&dir.path().join("slave"))).unwrap();
        let a = master.read_log(0, a_end as usize).unwrap().unwrap();
        assert_eq!(slave.append_replicated(0, &a).unwrap(), a_end);
        slave.shutdown().unwrap();
    }
    let chunk = master.read_log(a_end, 1 << 20).unwrap().unwrap();
    assert_eq!(a_end + chunk.len() as u64, master.commit_log_max_offset());
    std::fs::write(dir.path().join("chunk"), &*chunk).unwrap();
    std::fs::write(dir.path().join("offset"), a_end.to_string()).unwrap();

    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_appender",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir.path())
        .status()
        .unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        // SIGSEGV.
        assert_eq!(
            status.signal(),
            Some(11),
            "the child dies in the copy: {status}"
        );
    }

    // Restarted, the slave recovers and catches up from its own end, as after a kill.
    let slave = MessageStore::open(config(&dir.path().join("slave"))).unwrap();
    let report = slave.recovery_report().clone();
    let mut at = slave.commit_log_max_offset();
    while let Some(bytes) = master.read_log(at, 1 << 20).unwrap() {
        at = slave.append_replicated(at, &bytes).unwrap();
    }
    let on_master: Vec<u64> = read_all(&master, "T", 0).iter().map(|(o, _)| *o).collect();
    let on_slave: Vec<u64> = read_all(&slave, "T", 0).iter().map(|(o, _)| *o).collect();
    assert_eq!(on_master.len(), 200);
    let missing: Vec<u64> = on_master
        .iter()
        .filter(|o| !on_slave.contains(o))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "queue offsets missing on the slave: {missing:?}; recovery: {report:?}"
    );
    assert_eq!(on_slave, on_master);
}
