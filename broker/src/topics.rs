//! Topic configurations: validated names, persisted atomically in the data folder; and
//! per topic, what its sends are stored and counted through ([`Topic`]), so that a send
//! looks its topic up by name once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use weir_protocol::route::{TopicConfig, perm};
use weir_store::{MessageStore, QueueHandle, Result as StoreResult};

use crate::metrics::{BrokerMetrics, Flow};

/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 127;
/// Longest system topic name (`%RETRY%<group>`, `%DLQ%<group>`): the store keeps a topic
/// in a folder of that name, and file systems allow 255 bytes.
pub const MAX_SYSTEM_TOPIC_LEN: usize = 255;
/// System topics start with this; clients cannot create them.
pub const SYSTEM_PREFIX: char = '%';

/// A topic or group name that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} name is empty")]
    Empty { what: &'static str },
    #[error("{what} name of {len} characters exceeds {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} name {name:?} contains {c:?}; allowed are letters, digits and _ % | - .")]
    BadCharacter {
        what: &'static str,
        name: String,
        c: char,
    },
    #[error("topic name {0:?} is reserved (it names a folder's self or parent)")]
    Reserved(String),
}

/// Why a topic configuration was refused or could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("queue counts must be within 1..=1024 (read {read}, write {write})")]
    QueueCount { read: u32, write: u32 },
    #[error("permission {0} has unknown bits (read 4, write 2)")]
    Permission(u8),
    #[error("{path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("saving topics: {0}")]
    Write(#[from] weir_store::StoreError),
    #[error("the broker holds {max} topics already (max_topics)")]
    TooMany { max: usize },
}

/// Checks a topic name against the rules users see in errors.
pub fn validate_topic_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what: "topic" });
    }
    let (max, what) = if name.starts_with(SYSTEM_PREFIX) {
        (MAX_SYSTEM_TOPIC_LEN, "system topic")
    } else {
        (MAX_TOPIC_LEN, "topic")
    };
    if name.len() > max {
        return Err(NameError::TooLong {
            what,
            len: name.len(),
            max,
        });
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_%|-.".contains(*c)))
    {
        return Err(NameError::BadCharacter {
            what: "topic",
            name: name.to_owned(),
            c,
        });
    }
    if name == "." || name == ".." {
        return Err(NameError::Reserved(name.to_owned()));
    }
    Ok(())
}

/// Longest consumer or producer group name.
pub const MAX_GROUP_LEN: usize = 255;

/// Checks a group name given to a filter upload (it keys the filter registry and shows in
/// logs and errors, so it is held to the same kind of rules as topic names).
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what: "group" });
    }
    if name.len() > MAX_GROUP_LEN {
        return Err(NameError::TooLong {
            what: "group",
            len: name.len(),
            max: MAX_GROUP_LEN,
        });
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_%|-.".contains(*c)))
    {
        return Err(NameError::BadCharacter {
            what: "group",
            name: name.to_owned(),
            c,
        });
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct TopicRow {
    name: String,
    read_queues: u32,
    write_queues: u32,
    perm: u8,
}

#[derive(Serialize, Deserialize)]
struct TopicsFile {
    version: u32,
    topics: Vec<TopicRow>,
}

/// Topics by name, hashed (one hash and one comparison per send, whatever the number of
/// topics; a sorted map compared ~log2(n) names, each a cache miss at 1,024 topics).
///
/// Keyed by the name the `Topic` holds too (one allocation): the store's handles of its
/// queues check each message's topic against those bytes, which the lookup just read.
type TopicTable = HashMap<Arc<str>, Arc<Topic>, RandomState>;

/// A topic as sends find it: its configuration, and what its sends are stored and counted
/// through (each write queue's store handle, its produced counter), kept on first use.
/// A send looks its topic up by name once: with 1,024 busy topics, three tables looked up
/// by name a send (these topics, the counters, the store's queues: a bucket and the
/// name's bytes each, all out of the caches between two sends to a topic) were a sixth of
/// the broker's time.
///
/// Invariant: a changed configuration is a new `Topic` (nothing kept carries over), and a
/// handle is only ever the store's queue of this topic's name and its index.
pub struct Topic {
    /// The table's key: `config.name`'s bytes, shared with the store's handles.
    name: Arc<str>,
    config: TopicConfig,
    /// Inline up to 8 queues (most topics): in the lines the lookup brought in.
    queues: SmallVec<[OnceLock<QueueHandle>; 8]>,
    produced: OnceLock<Arc<Flow>>,
}

impl Topic {
    pub(crate) fn new(config: TopicConfig) -> Self {
        let queues = (0..config.write_queues).map(|_| OnceLock::new()).collect();
        Self {
            name: config.name.as_str().into(),
            config,
            queues,
            produced: OnceLock::new(),
        }
    }

    /// Into the table, under its name.
    fn entry(config: TopicConfig) -> (Arc<str>, Arc<Self>) {
        let t = Self::new(config);
        (Arc::clone(&t.name), Arc::new(t))
    }

    pub fn config(&self) -> &TopicConfig {
        &self.config
    }

    /// The store's queue `queue_id` of this topic (made if new), kept after the first
    /// call; `None` past its write queues.
    pub fn queue(&self, store: &MessageStore, queue_id: u32) -> Option<StoreResult<&QueueHandle>> {
        let slot = self.queues.get(usize::try_from(queue_id).ok()?)?;
        if let Some(h) = slot.get() {
            return Some(Ok(h));
        }
        Some(
            store
                .queue_handle(Arc::clone(&self.name), queue_id)
                .map(|h| slot.get_or_init(|| h)),
        )
    }

    /// Its produced counter, from `metrics` on first use (none while its series are full).
    pub fn produced<'a>(&'a self, metrics: &BrokerMetrics) -> Option<&'a Flow> {
        if let Some(f) = self.produced.get() {
            return Some(f);
        }
        let f = metrics.produced_flow(&self.config.name)?;
        Some(self.produced.get_or_init(|| f))
    }
}

impl std::ops::Deref for Topic {
    type Target = TopicConfig;
    fn deref(&self) -> &TopicConfig {
        &self.config
    }
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.fmt(f)
    }
}

/// The table; read on every send (a shared lock and a reference count, no copy), written
/// when topics change (under the write lock, persisted before the change is seen).
pub struct TopicManager {
    path: PathBuf,
    topics: RwLock<TopicTable>,
}

impl TopicManager {
    pub fn open(data_dir: &Path) -> Result<Self, TopicError> {
        let path = data_dir.join("config").join("topics.json");
        let topics = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: TopicsFile =
                    serde_json::from_slice(&bytes).map_err(|e| TopicError::Corrupt {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                if file.version != 1 {
                    return Err(TopicError::Corrupt {
                        path,
                        detail: format!("unknown version {}", file.version),
                    });
                }
                file.topics
                    .into_iter()
                    .map(|r| {
                        let c = TopicConfig {
                            name: r.name,
                            read_queues: r.read_queues,
                            write_queues: r.write_queues,
                            perm: r.perm,
                        };
                        Topic::entry(c)
                    })
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TopicTable::default(),
            Err(error) => return Err(TopicError::Read { path, error }),
        };
        Ok(Self {
            path,
            topics: RwLock::new(topics),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, TopicTable> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> RwLockWriteGuard<'_, TopicTable> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().get(name).cloned()
    }

    pub fn count(&self) -> usize {
        self.read().len()
    }

    /// Every topic, by name.
    pub fn all(&self) -> Vec<TopicConfig> {
        let mut all: Vec<TopicConfig> = self.read().values().map(|t| t.config.clone()).collect();
        all.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Creates or updates; persists before returning (nothing when the topic is already
    /// exactly `config`: a repeated update costs no rewrite of the file). Returns the
    /// stored config.
    pub fn upsert(&self, config: TopicConfig) -> Result<TopicConfig, TopicError> {
        validate_topic_name(&config.name)?;
        if config.read_queues == 0
            || config.write_queues == 0
            || config.read_queues > 1024
            || config.write_queues > 1024
        {
            return Err(TopicError::QueueCount {
                read: config.read_queues,
                write: config.write_queues,
            });
        }
        if config.perm & !perm::READ_WRITE != 0 {
            return Err(TopicError::Permission(config.perm));
        }
        let mut topics = self.lock();
        if topics
            .get(config.name.as_str())
            .is_some_and(|t| t.config == config)
        {
            return Ok(config);
        }
        let (key, entry) = Topic::entry(config.clone());
        let old = topics.insert(key, entry);
        if let Err(e) = self.persist(&topics) {
            match old {
                Some(old) => topics.insert(Arc::clone(&old.name), old),
                None => topics.remove(config.name.as_str()),
            };
            return Err(e);
        }
        Ok(config)
    }

    /// Creates `config` unless a topic of that name exists. Returns the topic and whether
    /// it was created (checked and created under one lock, so exactly one caller sees
    /// `true`).
    pub fn create_if_absent(&self, config: TopicConfig) -> Result<(TopicConfig, bool), TopicError> {
        validate_topic_name(&config.name)?;
        let mut topics = self.lock();
        if let Some(t) = topics.get(config.name.as_str()) {
            return Ok((t.config.clone(), false));
        }
        let (key, entry) = Topic::entry(config.clone());
        topics.insert(key, entry);
        if let Err(e) = self.persist(&topics) {
            topics.remove(config.name.as_str());
            return Err(e);
        }
        Ok((config, true))
    }

    /// [`TopicManager::create_if_absent`] for many at once, with one write of the file for
    /// all (a heartbeat names up to a thousand groups, each with its retry topic: a write
    /// each rewrote the whole file a thousand times). Creates only while the table holds
    /// fewer than `max` topics. Returns the names created, and those left out for want of
    /// room; an invalid name fails the whole call before anything changes.
    pub fn create_all_absent(
        &self,
        configs: Vec<TopicConfig>,
        max: usize,
    ) -> Result<(Vec<String>, Vec<String>), TopicError> {
        for c in &configs {
            validate_topic_name(&c.name)?;
        }
        let mut topics = self.lock();
        let (mut created, mut no_room) = (Vec::new(), Vec::new());
        for c in configs {
            if topics.contains_key(c.name.as_str()) {
                continue;
            }
            if topics.len() >= max {
                no_room.push(c.name);
                continue;
            }
            created.push(c.name.clone());
            let (key, entry) = Topic::entry(c);
            topics.insert(key, entry);
        }
        if !created.is_empty()
            && let Err(e) = self.persist(&topics)
        {
            for name in &created {
                topics.remove(name.as_str());
            }
            return Err(e);
        }
        Ok((created, no_room))
    }

    /// Returns the topic, creating it with `queues` queues if it does not exist.
    pub fn get_or_create(&self, name: &str, queues: u32) -> Result<TopicConfig, TopicError> {
        if let Some(c) = self.get(name) {
            return Ok(c.config.clone());
        }
        self.upsert(TopicConfig {
            name: name.to_owned(),
            read_queues: queues,
            write_queues: queues,
            perm: perm::READ_WRITE,
        })
    }

    pub fn remove(&self, name: &str) -> Result<bool, TopicError> {
        let mut topics = self.lock();
        let Some(old) = topics.remove(name) else {
            return Ok(false);
        };
        if let Err(e) = self.persist(&topics) {
            topics.insert(Arc::clone(&old.name), old);
            return Err(e);
        }
        Ok(true)
    }

    fn persist(&self, topics: &TopicTable) -> Result<(), TopicError> {
        let mut rows: Vec<TopicRow> = topics
            .values()
            .map(|c| TopicRow {
                name: c.config.name.clone(),
                read_queues: c.read_queues,
                write_queues: c.write_queues,
                perm: c.perm,
            })
            .collect();
        // By name, so that the file reads (and diffs) the same whatever the hash seed.
        rows.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let file = TopicsFile {
            version: 1,
            topics: rows,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| TopicError::Corrupt {
            path: self.path.clone(),
            detail: format!("cannot encode: {e}"),
        })?;
        Ok(weir_store::write_atomic(&self.path, &bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let long_system = format!("%RETRY%{}", "g".repeat(248));
        for ok in [
            "T",
            "orders-2024",
            "a_b|c%d",
            "a.b",
            "...",
            &"x".repeat(127),
            &long_system,
        ] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a b", "contains ' '"),
            ("a/b", "contains '/'"),
            ("é", "contains"),
            (".", "reserved"),
            ("..", "reserved"),
            (&"x".repeat(128), "exceeds 127"),
            (
                &format!("{long_system}g"),
                "system topic name of 256 characters exceeds 255",
            ),
        ] {
            let e = validate_topic_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn persisted() {
        let dir = tempfile::tempdir().unwrap();
        let m = TopicManager::open(dir.path()).unwrap();
        m.get_or_create("A", 4).unwrap();
        m.upsert(TopicConfig {
            name: "B".into(),
            read_queues: 2,
            write_queues: 2,
            perm: perm::READ,
        })
        .unwrap();
        assert!(
            m.upsert(TopicConfig {
                name: "C".into(),
                read_queues: 0,
                write_queues: 1,
                perm: 6
            })
            .is_err()
        );
        let retry = TopicConfig {
            name: "%RETRY%g.1".into(),
            read_queues: 1,
            write_queues: 1,
            perm: perm::READ_WRITE,
        };
        assert!(m.create_if_absent(retry.clone()).unwrap().1);
        let (existing, created) = m
            .create_if_absent(TopicConfig {
                read_queues: 9,
                ..retry.clone()
            })
            .unwrap();
        assert!(!created);
        assert_eq!(existing, retry);
        assert!(m.remove("%RETRY%g.1").unwrap());
        let m = TopicManager::open(dir.path()).unwrap();
        assert_eq!(m.all().len(), 2);
        assert_eq!(m.get("B").unwrap().perm, perm::READ);
        assert!(m.remove("A").unwrap());
        assert_eq!(TopicManager::open(dir.path()).unwrap().all().len(), 1);
    }

    #[test]
    fn many_created_at_once_within_room() {
        let dir = tempfile::tempdir().unwrap();
        let m = TopicManager::open(dir.path()).unwrap();
        m.get_or_create("A", 4).unwrap();
        let one = |name: &str| TopicConfig {
            name: name.into(),
            read_queues: 1,
            write_queues: 1,
            perm: perm::READ_WRITE,
        };
        let (created, no_room) = m
            .create_all_absent(
                vec![
                    one("A"),
                    one("%RETRY%g1"),
                    one("%RETRY%g2"),
                    one("%RETRY%g3"),
                ],
                3,
            )
            .unwrap();
        assert_eq!(
            created,
            ["%RETRY%g1", "%RETRY%g2"],
            "A exists; room for two more"
        );
        assert_eq!(no_room, ["%RETRY%g3"]);
        assert_eq!(
            m.get("A").unwrap().read_queues,
            4,
            "an existing topic is left as it is"
        );
        assert!(
            m.create_all_absent(vec![one("%RETRY%g4"), one("bad name")], 10)
                .is_err()
        );
        assert!(
            m.get("%RETRY%g4").is_none(),
            "an invalid name changes nothing"
        );
        let m = TopicManager::open(dir.path()).unwrap();
        assert_eq!(m.count(), 3, "the created ones were written");
    }

    #[test]
    fn an_update_that_changes_nothing_does_not_rewrite_the_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let m = TopicManager::open(dir.path()).unwrap();
        let b = TopicConfig {
            name: "B".into(),
            read_queues: 2,
            write_queues: 2,
            perm: perm::READ_WRITE,
        };
        m.upsert(b.clone()).unwrap();
        // Each write replaces the file (a new inode): the same one means no write.
        let inode = || std::fs::metadata(&m.path).unwrap().ino();
        let written = inode();
        assert_eq!(m.upsert(b.clone()).unwrap(), b);
        assert_eq!(inode(), written, "the same config again: no write");
        let narrower = TopicConfig {
            write_queues: 1,
            ..b
        };
        assert_eq!(m.upsert(narrower.clone()).unwrap(), narrower);
        assert_ne!(inode(), written, "a change is written");
        let m = TopicManager::open(dir.path()).unwrap();
        assert_eq!(m.get("B").as_deref().map(Topic::config), Some(&narrower));
    }
}
