//! Consumer offsets: (group, topic, queue id) → next offset to consume.
//!
//! Kept in memory, persisted as one JSON file replaced atomically (temp file, fsync,
//! rename, fsync of the folder), so a crash leaves the previous or the new table whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};
use crate::fsutil;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OffsetKey {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
}

#[derive(Serialize, Deserialize)]
struct OffsetFile {
    version: u32,
    offsets: Vec<OffsetRow>,
}

#[derive(Serialize, Deserialize)]
struct OffsetRow {
    group: String,
    topic: String,
    queue_id: u32,
    offset: u64,
}

pub struct ConsumerOffsets {
    path: PathBuf,
    table: RwLock<BTreeMap<OffsetKey, u64>>,
    dirty: AtomicBool,
    /// One persist at a time, so an older table never overwrites a newer one.
    persist_lock: Mutex<()>,
}

impl ConsumerOffsets {
    pub fn open(path: &Path) -> Result<Self> {
        let table = match std::fs::read(path) {
            Ok(bytes) => {
                let file: OffsetFile =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        what: "consumer offsets",
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    })?;
                if file.version != 1 {
                    return Err(StoreError::Corrupt {
                        what: "consumer offsets",
                        path: path.to_path_buf(),
                        detail: format!("unknown version {} (this build reads 1)", file.version),
                    });
                }
                file.offsets
                    .into_iter()
                    .map(|r| {
                        (
                            OffsetKey {
                                group: r.group,
                                topic: r.topic,
                                queue_id: r.queue_id,
                            },
                            r.offset,
                        )
                    })
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).ctx("read consumer offsets", path),
        };
        Ok(Self {
            path: path.to_path_buf(),
            table: RwLock::new(table),
            dirty: AtomicBool::new(false),
            persist_lock: Mutex::new(()),
        })
    }

    pub fn commit(&self, group: &str, topic: &str, queue_id: u32, offset: u64) {
        let key = OffsetKey {
            group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id,
        };
        self.table.write().insert(key, offset);
        self.dirty.store(true, Ordering::Release);
    }

    /// [`ConsumerOffsets::commit`], except that a new entry is added only while fewer than
    /// `max` are held (a client naming ever new groups cannot grow the table without
    /// bound); whether it was taken.
    pub fn commit_within(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max: usize,
    ) -> bool {
        let key = OffsetKey {
            group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id,
        };
        let mut t = self.table.write();
        if t.len() >= max && !t.contains_key(&key) {
            return false;
        }
        t.insert(key, offset);
        drop(t);
        self.dirty.store(true, Ordering::Release);
        true
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.table.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commits `offset` unless the stored one is already at or past it (a slave's
    /// progress merged into its master's), adding an entry only while fewer than `max`
    /// are held (as [`ConsumerOffsets::commit_within`]); whether it moved.
    pub fn commit_max(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
        max: usize,
    ) -> bool {
        let key = OffsetKey {
            group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id,
        };
        let mut t = self.table.write();
        match t.get(&key) {
            Some(&have) if have >= offset => return false,
            None if t.len() >= max => return false,
            _ => {}
        }
        t.insert(key, offset);
        drop(t);
        self.dirty.store(true, Ordering::Release);
        true
    }

    pub fn query(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        // BTreeMap lookups need an owned key; offsets are queried per pull, not per
        // message, so the allocation is fine.
        let key = OffsetKey {
            group: group.to_owned(),
            topic: topic.to_owned(),
            queue_id,
        };
        self.table.read().get(&key).copied()
    }

    /// Every committed offset of `group`.
    pub fn of_group(&self, group: &str) -> Vec<(OffsetKey, u64)> {
        self.table
            .read()
            .iter()
            .filter(|(k, _)| k.group == group)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Every group's committed offset on (`topic`, `queue_id`), by group name.
    pub fn on_queue(&self, topic: &str, queue_id: u32) -> Vec<(String, u64)> {
        self.table
            .read()
            .iter()
            .filter(|(k, _)| k.queue_id == queue_id && k.topic == topic)
            .map(|(k, v)| (k.group.clone(), *v))
            .collect()
    }

    /// Every committed offset.
    /// At most `max` offsets in key order, from after `after` (from the first without);
    /// and whether more follow.
    pub fn page_after(
        &self,
        after: Option<&OffsetKey>,
        max: usize,
    ) -> (Vec<(OffsetKey, u64)>, bool) {
        use std::ops::Bound;
        let table = self.table.read();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rows = table.range((from, Bound::Unbounded));
        let page: Vec<_> = rows
            .by_ref()
            .take(max)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let more = rows.next().is_some();
        (page, more)
    }

    pub fn all(&self) -> Vec<(OffsetKey, u64)> {
        self.table
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// For every (topic, queue id) some group committed on: the lowest offset committed
    /// there, and a group at it.
    pub fn lowest_by_queue(&self) -> HashMap<(String, u32), (u64, String)> {
        let mut out: HashMap<(String, u32), (u64, String)> = HashMap::new();
        for (k, &offset) in self.table.read().iter() {
            let slot = out
                .entry((k.topic.clone(), k.queue_id))
                .or_insert_with(|| (offset, k.group.clone()));
            if offset < slot.0 {
                *slot = (offset, k.group.clone());
            }
        }
        out
    }

    /// Forgets `group`'s offsets on `topic` (all topics when `None`). How many were
    /// removed.
    pub fn remove(&self, group: &str, topic: Option<&str>) -> usize {
        let mut t = self.table.write();
        let before = t.len();
        t.retain(|k, _| !(k.group == group && topic.is_none_or(|t| t == k.topic)));
        let removed = before - t.len();
        drop(t);
        self.dirty.store(true, Ordering::Release);
        removed
    }

    /// Forgets the offsets `keep` rejects (a slave following its master's deletions).
    /// How many were removed.
    pub fn retain(&self, keep: impl Fn(&OffsetKey) -> bool) -> usize {
        let mut t = self.table.write();
        let before = t.len();
        t.retain(|k, _| keep(k));
        let removed = before - t.len();
        drop(t);
        if removed > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        removed
    }

    /// Forgets every group's offsets on `topic` (a deleted topic: a topic created again
    /// under its name starts its queues at 0). How many were removed.
    pub fn remove_topic(&self, topic: &str) -> usize {
        let mut t = self.table.write();
        let before = t.len();
        t.retain(|k, _| k.topic != topic);
        let removed = before - t.len();
        drop(t);
        if removed > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        removed
    }

    /// Writes the table if it changed since the last persist.
    pub fn persist(&self) -> Result<()> {
        self.persist_after(|| Ok(()))
    }

    /// Like `persist`, but runs `before_write` between taking the table and writing it:
    /// the store syncs its commit log there, so that an offset on disk never counts a
    /// message whose copy (a delayed message put on its real topic, a retry) is not on
    /// disk too. Every copy is appended before the offset that counts it is committed.
    pub(crate) fn persist_after(&self, before_write: impl FnOnce() -> Result<()>) -> Result<()> {
        let _one = self.persist_lock.lock();
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let file = OffsetFile {
            version: 1,
            offsets: self
                .table
                .read()
                .iter()
                .map(|(k, v)| OffsetRow {
                    group: k.group.clone(),
                    topic: k.topic.clone(),
                    queue_id: k.queue_id,
                    offset: *v,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Io {
            op: "encode consumer offsets",
            path: self.path.clone(),
            error: std::io::Error::other(e),
        })?;
        if let Err(e) = before_write().and_then(|()| fsutil::write_atomic(&self.path, &bytes)) {
            self.dirty.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_entries_stay_within_the_bound_and_held_ones_move() {
        let dir = tempfile::tempdir().unwrap();
        let o = ConsumerOffsets::open(&dir.path().join("offsets.json")).unwrap();
        assert!(o.commit_within("g", "T", 0, 5, 2));
        assert!(o.commit_max("g", "T", 1, 5, 2));
        // Full: nothing new, by either.
        assert!(!o.commit_within("h", "T", 0, 1, 2));
        assert!(!o.commit_max("h", "T", 0, 1, 2));
        assert_eq!(o.len(), 2);
        // Held ones move (commit_max only forward).
        assert!(o.commit_within("g", "T", 0, 3, 2));
        assert!(!o.commit_max("g", "T", 1, 4, 2));
        assert!(o.commit_max("g", "T", 1, 9, 2));
        assert_eq!(
            (o.query("g", "T", 0), o.query("g", "T", 1)),
            (Some(3), Some(9))
        );
        // Pages in key order, each after the last key of the one before.
        let (first, more) = o.page_after(None, 1);
        assert!(more);
        let (second, more) = o.page_after(Some(&first[0].0), 1);
        assert!(!more);
        assert_eq!((first[0].0.queue_id, second[0].0.queue_id), (0, 1));
    }

    #[test]
    fn survives_reopen_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config/consumer_offsets.json");
        let o = ConsumerOffsets::open(&path).unwrap();
        o.commit("g", "T", 0, 5);
        o.commit("g", "T", 1, 7);
        o.commit("h", "T", 0, 1);
        o.persist().unwrap();
        o.commit("g", "T", 0, 6);
        o.persist().unwrap();
        let o = ConsumerOffsets::open(&path).unwrap();
        assert_eq!(o.query("g", "T", 0), Some(6));
        assert_eq!(o.query("g", "T", 1), Some(7));
        assert_eq!(o.query("g", "T", 2), None);
        assert_eq!(o.of_group("g").len(), 2);
        assert_eq!(o.remove("g", None), 2);
        assert_eq!(o.query("g", "T", 0), None);
        assert_eq!(o.query("h", "T", 0), Some(1));
        o.commit("h", "U", 0, 3);
        assert_eq!(o.remove_topic("T"), 1);
        assert_eq!(o.query("h", "T", 0), None);
        assert_eq!(o.query("h", "U", 0), Some(3));
        o.persist().unwrap();
        let o = ConsumerOffsets::open(&path).unwrap();
        assert_eq!(o.all().len(), 1, "removals are persisted");

        std::fs::write(&path, b"{not json").unwrap();
        let err = ConsumerOffsets::open(&path).err().unwrap().to_string();
        assert!(err.contains("consumer offsets"), "{err}");
    }
}
