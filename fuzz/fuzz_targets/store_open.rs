//! Opening a store folder whose files hold arbitrary bytes: a commit log of well-formed
//! records with arbitrary (possibly inconsistent) fields, consume queue segments, an index
//! file, the checkpoint and the running marker. Opening must fail with an error or
//! recover, never panic or hang; a recovered store serves reads and appends, shuts down,
//! and opens again.

#![no_main]

use std::fs;
use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weir_protocol::record::{self, Assigned, Message};
use weir_store::{MessageStore, ReadLimits, StoreConfig};

const LOG_SEGMENT: u64 = 4096;
const CQ_ENTRIES: u64 = 16;
const CQ_SEGMENT: u64 = CQ_ENTRIES * 20;
const INDEX_SLOTS: u32 = 16;
const INDEX_ENTRIES: u32 = 16;
const TOPICS: [&str; 2] = ["a", "b"];

#[derive(Arbitrary, Debug)]
struct Input {
    /// Segment number of the commit log's file (its start is this times the size).
    log_segment: Option<u64>,
    records: Vec<Rec>,
    /// Damage to the commit log after the records are written: (position, byte).
    log_damage: Vec<(u16, u8)>,
    checkpoint: Cp,
    /// Whether the previous run stopped uncleanly (its marker is still there).
    running: bool,
    queues: Vec<QueueFile>,
    index: Option<IndexFile>,
    /// Messages appended after opening.
    appends: u8,
}

#[derive(Arbitrary, Debug)]
struct Rec {
    topic: bool,
    queue_id: bool,
    /// `None`: the next offset of the queue, as the store would assign it.
    queue_offset: Option<u64>,
    /// `None`: the record's real position.
    commit_log_offset: Option<u64>,
    sys_flag: u8,
    tags: u8,
    keys: Vec<u8>,
    body_len: u8,
    store_timestamp: i64,
}

#[derive(Arbitrary, Debug)]
enum Cp {
    None,
    Raw(Vec<u8>),
    Valid {
        seq: u64,
        commit_log_flushed: u64,
        logic_flushed: u64,
    },
}

#[derive(Arbitrary, Debug)]
struct QueueFile {
    topic: bool,
    queue_id: u8,
    /// Segment number; a large one names a file near the end of the offset range.
    segment: u64,
    bytes: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct IndexFile {
    slots: u8,
    capacity: u8,
    count: u32,
    begin_offset: u64,
    end_offset: u64,
    body: Vec<u8>,
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("create folder");
    }
    fs::write(path, bytes).expect("write file");
}

fn name(start: u64) -> String {
    format!("{start:020}")
}

fn checkpoint_slot(seq: u64, commit_log_flushed: u64, logic_flushed: u64) -> [u8; 64] {
    let mut slot = [0u8; 64];
    slot[0..4].copy_from_slice(b"WCP1");
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    slot[16..24].copy_from_slice(&commit_log_flushed.to_le_bytes());
    slot[24..32].copy_from_slice(&logic_flushed.to_le_bytes());
    let crc = crc32fast::hash(&slot[8..60]);
    slot[60..].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn lay_out(root: &Path, input: &Input) {
    // The commit log: one segment of records, then zeros.
    let mut log = vec![0u8; LOG_SEGMENT as usize];
    let mut pos = 0usize;
    let start = input
        .log_segment
        .map_or(0, |n| (n % (1 << 52)) * LOG_SEGMENT);
    let mut next_qo = [[0u64; 2]; 2];
    for r in &input.records {
        let topic = TOPICS[usize::from(r.topic)];
        let mut msg = Message::new(
            topic,
            u32::from(r.queue_id),
            vec![7u8; usize::from(r.body_len)],
        );
        msg.sys_flag = u32::from(r.sys_flag & 3);
        if r.tags != 0 {
            msg.tags = format!("t{}", r.tags % 4);
        }
        for k in &r.keys {
            msg.keys.push(format!("k{}", k % 8));
        }
        let Ok(len) = msg.encoded_len() else { continue };
        if pos + len > log.len() {
            break;
        }
        let q = &mut next_qo[usize::from(r.topic)][usize::from(r.queue_id)];
        let a = Assigned {
            queue_offset: r.queue_offset.unwrap_or(*q),
            commit_log_offset: r
                .commit_log_offset
                .unwrap_or(start.wrapping_add(pos as u64)),
            store_timestamp: r.store_timestamp,
            store_host: "127.0.0.1:10911".parse().expect("addr"),
        };
        *q = a.queue_offset.wrapping_add(1);
        record::encode_into(&msg, &a, &mut log[pos..pos + len]);
        pos += len;
    }
    for &(at, b) in &input.log_damage {
        let n = log.len();
        log[usize::from(at) % n] = b;
    }
    if pos > 0 || !input.log_damage.is_empty() {
        write(&root.join("commitlog").join(name(start)), &log);
    }

    match &input.checkpoint {
        Cp::None => {}
        Cp::Raw(bytes) => write(&root.join("checkpoint"), bytes),
        Cp::Valid {
            seq,
            commit_log_flushed,
            logic_flushed,
        } => write(
            &root.join("checkpoint"),
            &checkpoint_slot(*seq, *commit_log_flushed, *logic_flushed),
        ),
    }
    if input.running {
        write(&root.join("running"), b"");
    }
    for q in &input.queues {
        let dir = root
            .join("consumequeue")
            .join(TOPICS[usize::from(q.topic)])
            .join((q.queue_id % 3).to_string());
        let bytes = &q.bytes[..q.bytes.len().min(CQ_SEGMENT as usize)];
        // Mostly the first few segments; now and then one near the end of the range.
        let segment = if q.segment < 1 << 60 {
            q.segment % 4
        } else {
            q.segment % (u64::MAX / CQ_SEGMENT + 1)
        };
        write(&dir.join(name(segment * CQ_SEGMENT)), bytes);
    }
    if let Some(ix) = &input.index {
        let (slots, capacity) = (u32::from(ix.slots % 32), u32::from(ix.capacity % 32));
        let len = 64 + slots as usize * 4 + capacity as usize * 24;
        let mut f = vec![0u8; len];
        f[0..4].copy_from_slice(b"WIX1");
        f[4..8].copy_from_slice(&slots.to_le_bytes());
        f[8..12].copy_from_slice(&capacity.to_le_bytes());
        f[12..16].copy_from_slice(&ix.count.to_le_bytes());
        f[16..24].copy_from_slice(&ix.begin_offset.to_le_bytes());
        f[24..32].copy_from_slice(&ix.end_offset.to_le_bytes());
        let n = ix.body.len().min(len - 64);
        f[64..64 + n].copy_from_slice(&ix.body[..n]);
        write(&root.join("index").join(name(0)), &f);
    }
}

fn config(root: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(root);
    c.commit_log_segment_size = LOG_SEGMENT;
    c.consume_queue_segment_entries = CQ_ENTRIES;
    c.index_slots = INDEX_SLOTS;
    c.index_entries = INDEX_ENTRIES;
    c.prepare_ahead = false;
    c
}

fn exercise(store: &MessageStore, appends: u8) {
    for (topic, ids) in store.queues() {
        for id in ids {
            let (min, max) = (store.min_offset(&topic, id), store.max_offset(&topic, id));
            assert!(min <= max, "{topic}/{id}: min {min} > max {max}");
            let mut at = min;
            for _ in 0..8 {
                let r = store.get_messages(&topic, id, at, ReadLimits::default(), |_| true);
                if r.next_offset <= at {
                    break;
                }
                at = r.next_offset;
            }
            let _ = store.offset_for_timestamp(&topic, id, 0);
        }
    }
    for topic in TOPICS {
        for k in 0..8 {
            let _ = store.query_by_key(topic, &format!("k{k}"), 4);
        }
    }
    let end = store.commit_log_max_offset();
    for off in [0, end / 2, end.saturating_sub(1)] {
        let _ = store.get_by_offset(off);
    }
    for i in 0..appends % 4 {
        let msg = Message::new(TOPICS[usize::from(i % 2)], 0, vec![1u8; 10]).with_key("k1");
        let _ = store.put(&msg);
    }
}

fuzz_target!(|input: Input| {
    // tmpfs when there is one: the store syncs a lot.
    // (Named, so that run.sh can remove what a crashed run left behind.)
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("weir-fuzz-store-")
        .tempdir_in(base)
        .expect("temp folder");
    let root = dir.path().join("data");
    lay_out(&root, &input);

    let Ok(store) = MessageStore::open(config(&root)) else {
        return;
    };
    exercise(&store, input.appends);
    store.shutdown().expect("a recovered store shuts down");
    drop(store);
    // What the store itself left behind opens again.
    let store = MessageStore::open(config(&root)).expect("reopen after a clean shutdown");
    exercise(&store, 0);
    store.shutdown().expect("shuts down again");
});
