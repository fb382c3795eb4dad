//! Where a push consumer keeps its progress: on the brokers for a clustering group (shared
//! by its members), in a local file for a broadcasting member (its own).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use tracing::warn;

use crate::{ClientError, MessageQueue, PullConsumer, Result};

pub enum OffsetStore {
    Remote(RemoteOffsets),
    Local(LocalOffsets),
}

/// Offsets to write, with the ones changed since the last write.
#[derive(Default)]
struct Table {
    offsets: BTreeMap<MessageQueue, u64>,
    dirty: BTreeSet<MessageQueue>,
}

impl Table {
    fn update(&mut self, mq: &MessageQueue, offset: u64) {
        if self.offsets.get(mq) != Some(&offset) {
            self.offsets.insert(mq.clone(), offset);
            self.dirty.insert(mq.clone());
        }
    }
}

pub struct RemoteOffsets {
    table: Mutex<Table>,
}

pub struct LocalOffsets {
    path: PathBuf,
    table: Mutex<Table>,
}

impl OffsetStore {
    pub fn remote() -> Self {
        OffsetStore::Remote(RemoteOffsets {
            table: Mutex::new(Table::default()),
        })
    }

    /// `<dir>/<instance>/<group>.offsets`, loaded if it exists.
    pub fn local(dir: PathBuf, instance: &str, group: &str) -> Result<Self> {
        let path = dir.join(instance).join(format!("{group}.offsets"));
        let mut table = Table::default();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let parsed = parse_line(line).ok_or_else(|| {
                        ClientError::Invalid(format!(
                            "{}: line {} is not `topic<TAB>broker<TAB>queue<TAB>offset`",
                            path.display(),
                            n + 1
                        ))
                    })?;
                    table.offsets.insert(parsed.0, parsed.1);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ClientError::Invalid(format!(
                    "cannot read local offsets {}: {e}",
                    path.display()
                )));
            }
        }
        Ok(OffsetStore::Local(LocalOffsets {
            path,
            table: Mutex::new(table),
        }))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        let t = match self {
            OffsetStore::Remote(r) => &r.table,
            OffsetStore::Local(l) => &l.table,
        };
        t.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records progress in memory; written by `persist`.
    pub fn update(&self, mq: &MessageQueue, offset: u64) {
        self.table().update(mq, offset);
    }

    /// The stored offset: from memory, else (remote) asked of the broker.
    pub async fn read(&self, mq: &MessageQueue, consumer: &PullConsumer) -> Result<Option<u64>> {
        if let Some(o) = self.table().offsets.get(mq) {
            return Ok(Some(*o));
        }
        match self {
            OffsetStore::Local(_) => Ok(None),
            OffsetStore::Remote(_) => consumer.committed_offset(mq).await,
        }
    }

    /// Writes `mq`'s offset now, and forgets it (the queue went to another member).
    pub async fn persist_and_forget(&self, mq: &MessageQueue, consumer: &PullConsumer) {
        match self {
            OffsetStore::Remote(_) => {
                let offset = {
                    let mut t = self.table();
                    t.dirty.remove(mq);
                    t.offsets.remove(mq)
                };
                if let Some(o) = offset
                    && let Err(e) = consumer.commit_offset(mq, o).await
                {
                    warn!(queue = ?mq, offset = o, error = %e, "cannot commit the offset of a released queue");
                }
            }
            // A broadcasting member owns every queue; nothing moves to another member.
            OffsetStore::Local(_) => self.persist_all(consumer).await,
        }
    }

    /// Writes what changed since the last time.
    pub async fn persist_all(&self, consumer: &PullConsumer) {
        match self {
            OffsetStore::Remote(_) => {
                let changed: Vec<(MessageQueue, u64)> = {
                    let mut t = self.table();
                    let dirty = std::mem::take(&mut t.dirty);
                    dirty
                        .into_iter()
                        .filter_map(|mq| t.offsets.get(&mq).map(|o| (mq, *o)))
                        .collect()
                };
                for (mq, offset) in changed {
                    if let Err(e) = consumer.commit_offset(&mq, offset).await {
                        warn!(queue = ?mq, offset, error = %e, "cannot commit offset; will retry");
                        let mut t = self.table();
                        if !t.offsets.contains_key(&mq) {
                            continue;
                        }
                        t.dirty.insert(mq);
                    }
                }
            }
            OffsetStore::Local(l) => {
                let text = {
                    let mut t = self.table();
                    if t.dirty.is_empty() {
                        return;
                    }
                    t.dirty.clear();
                    t.offsets
                        .iter()
                        .map(|(mq, o)| {
                            format!("{}\t{}\t{}\t{o}\n", mq.topic, mq.broker_name, mq.queue_id)
                        })
                        .collect::<String>()
                };
                if let Err(e) = write_atomically(&l.path, text.as_bytes()) {
                    warn!(path = %l.path.display(), error = %e, "cannot write local offsets; will retry");
                    let mut t = self.table();
                    let all: Vec<MessageQueue> = t.offsets.keys().cloned().collect();
                    t.dirty.extend(all);
                }
            }
        }
    }
}

fn parse_line(line: &str) -> Option<(MessageQueue, u64)> {
    let mut parts = line.split('\t');
    let (topic, broker, queue, offset) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || topic.is_empty() || broker.is_empty() {
        return None;
    }
    Some((
        MessageQueue {
            topic: topic.to_owned(),
            broker_name: broker.to_owned(),
            queue_id: queue.parse().ok()?,
        },
        offset.parse().ok()?,
    ))
}

/// Write to a temporary file, sync, rename: a crash leaves the old or the new file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("offsets.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_lines_round_trip() {
        let (mq, o) = parse_line("T\tbroker-a\t3\t42").unwrap();
        assert_eq!(
            (mq.topic.as_str(), mq.broker_name.as_str(), mq.queue_id, o),
            ("T", "broker-a", 3, 42)
        );
        for bad in ["", "T\tb\t3", "T\tb\tx\t1", "T\tb\t1\t2\t3", "\tb\t1\t2"] {
            assert!(parse_line(bad).is_none(), "{bad:?}");
        }
    }
}
