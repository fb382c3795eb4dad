//! The checkpoint: what is known durable, written after every periodic flush.
//!
//! Two 64-byte slots, written alternately, each with a sequence number and a CRC, so a
//! torn write of one slot leaves the other intact.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use weir_protocol::record::{u32_at, u64_at};

const SLOT: usize = 64;
const MAGIC: u32 = u32::from_le_bytes(*b"WCP1");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Checkpoint {
    /// Commit log bytes below this are on disk.
    pub commit_log_flushed: u64,
    /// Consume queue and index entries of every record below this are on disk.
    pub logic_flushed: u64,
    /// When it was written (ms since the epoch).
    pub written_at: i64,
}

pub(crate) struct CheckpointFile {
    path: PathBuf,
    file: File,
    seq: u64,
}

impl CheckpointFile {
    /// Opens (or creates) the file and returns the newest valid checkpoint in it.
    pub fn open(path: &Path) -> Result<(Self, Option<Checkpoint>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("open checkpoint", path)?;
        let mut buf = [0u8; 2 * SLOT];
        let len = file.metadata().ctx("stat checkpoint", path)?.len() as usize;
        let n = len.min(buf.len());
        file.read_exact_at(&mut buf[..n], 0)
            .ctx("read checkpoint", path)?;
        let best = [decode(&buf[..SLOT]), decode(&buf[SLOT..])]
            .into_iter()
            .flatten()
            .max_by_key(|(seq, _)| *seq);
        let seq = best.map_or(0, |(s, _)| s);
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                seq,
            },
            best.map(|(_, c)| c),
        ))
    }

    /// Writes `cp` durably into the slot not holding the newest one.
    pub fn write(&mut self, cp: &Checkpoint) -> Result<()> {
        // A damaged (but CRC-valid) slot can hold any sequence number, `u64::MAX` too:
        // wrapping writes 0 into the other slot, then 1 over the damaged one, after which
        // the sequence is ordinary again.
        self.seq = self.seq.wrapping_add(1);
        let mut slot = [0u8; SLOT];
        slot[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        slot[8..16].copy_from_slice(&self.seq.to_le_bytes());
        slot[16..24].copy_from_slice(&cp.commit_log_flushed.to_le_bytes());
        slot[24..32].copy_from_slice(&cp.logic_flushed.to_le_bytes());
        slot[32..40].copy_from_slice(&cp.written_at.to_le_bytes());
        let crc = crc32fast::hash(&slot[8..SLOT - 4]);
        slot[SLOT - 4..].copy_from_slice(&crc.to_le_bytes());
        let at = (self.seq % 2) * SLOT as u64;
        self.file
            .write_all_at(&slot, at)
            .ctx("write checkpoint", &self.path)?;
        self.file.sync_data().ctx("sync checkpoint", &self.path)
    }
}

fn decode(slot: &[u8]) -> Option<(u64, Checkpoint)> {
    if slot.len() < SLOT || u32_at(slot, 0) != MAGIC {
        return None;
    }
    if crc32fast::hash(&slot[8..SLOT - 4]) != u32_at(slot, SLOT - 4) {
        return None;
    }
    Some((
        u64_at(slot, 8),
        Checkpoint {
            commit_log_flushed: u64_at(slot, 16),
            logic_flushed: u64_at(slot, 24),
            written_at: u64_at(slot, 32) as i64,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_valid_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        let (mut f, none) = CheckpointFile::open(&path).unwrap();
        assert_eq!(none, None);
        for i in 1..=5u64 {
            f.write(&Checkpoint {
                commit_log_flushed: i * 10,
                logic_flushed: i,
                written_at: 0,
            })
            .unwrap();
        }
        drop(f);
        let (_, cp) = CheckpointFile::open(&path).unwrap();
        assert_eq!(cp.unwrap().commit_log_flushed, 50);

        // Tear the newest slot (seq 5 lives in slot 1): the older one is used.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff; 8], SLOT as u64 + 20).unwrap();
        let (mut f, cp) = CheckpointFile::open(&path).unwrap();
        assert_eq!(cp.unwrap().commit_log_flushed, 40);
        // And the next write goes over the torn slot, not the good one.
        f.write(&Checkpoint {
            commit_log_flushed: 60,
            logic_flushed: 6,
            written_at: 0,
        })
        .unwrap();
        let (_, cp) = CheckpointFile::open(&path).unwrap();
        assert_eq!(cp.unwrap().commit_log_flushed, 60);
    }

    /// Found by fuzz/store_open (crash-c787f7e8…): a slot with sequence `u64::MAX` made
    /// the next write overflow.
    #[test]
    fn the_largest_sequence_number_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        let (mut f, _) = CheckpointFile::open(&path).unwrap();
        f.seq = u64::MAX - 1;
        let cp = |n| Checkpoint {
            commit_log_flushed: n,
            logic_flushed: 0,
            written_at: 0,
        };
        f.write(&cp(63270)).unwrap();
        drop(f);
        let (mut f, got) = CheckpointFile::open(&path).unwrap();
        assert_eq!((f.seq, got), (u64::MAX, Some(cp(63270))));
        f.write(&cp(1)).unwrap();
        f.write(&cp(2)).unwrap();
        let (_, got) = CheckpointFile::open(&path).unwrap();
        assert_eq!(got, Some(cp(2)));
    }
}
