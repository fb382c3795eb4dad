//! Shared helpers for weir's end-to-end tests (`tests/*.rs` of this package): an
//! in-process name server and broker on 127.0.0.1 ephemeral ports with a temporary data
//! folder, and a thin client over raw protocol calls ([`weir_protocol::Connection`]) to
//! produce, pull, and upload / list / remove filters. Raw calls on purpose: these tests
//! check the broker, independently of the client library.
//!
//! Child processes (the test binary re-run on one of its ignored tests): a broker that can
//! be SIGKILLed ([`child`]), and a transactional producer of the client library driven
//! line by line ([`tx_producer`]).
//!
//! The in-process environment and the raw client it hands out are one piece, here; the
//! checks and waits every test uses are in [`checks`], the other helpers in modules of
//! their own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_broker::{BrokerConfig, RunningBroker};
use weir_protocol::auth::Credentials;
use weir_protocol::broker::{
    BatchEntry, CreateTopic, GetQueueOffsets, PullMessage, PullStatus, QueryConsumerOffset,
    QueueOffsets, SendBatch, SendResult, UpdateConsumerOffset, split_records,
};
use weir_protocol::filter::{
    FilterInfo, FilterList, FilterRemoved, FilterReset, FilterUploaded, ListFilters, RemoveFilter,
    ResetFilter, UploadFilter,
};
use weir_protocol::route::{TopicConfig, perm};
use weir_protocol::{CallError, ConnConfig, Connection, NoHandler, RecordView};
use weir_store::StoreConfig;

pub use checks::{
    Rng, assert_keys, eventually, eventually_for, gzip, key_set, keys_once, remote_error,
};
pub use weir_filter_artifacts as artifacts;

pub mod checks;
pub mod child;
pub mod filter_cases;
pub mod metrics;
pub mod tls;
pub mod tx_producer;

/// Timeout of one call, and of [`eventually`].
pub const T: Duration = Duration::from_secs(10);
/// Timeout of an upload: the broker compiles the component first, which for a JavaScript
/// or Python filter (an engine of 12-19 MB) takes tens of seconds in a test build.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(180);

/// A name server and a broker, in this process, with their data in a temporary folder.
pub struct Env {
    ns: weir_namesrv::RunningNameServer,
    broker: Option<RunningBroker>,
    config: BrokerConfig,
    _dir: tempfile::TempDir,
}

/// The broker settings the tests start from: small store files, a listener on an
/// ephemeral port, a fixed number of filter workers (independent of the machine), and a
/// send that may wait 5 s for the store before it is refused as busy, not 200 ms: a loaded
/// 2-core CI machine running these tests in parallel can stall the store that long (one
/// such stall failed a transaction test's send once); the flow-control tests set their own.
/// (The filter budget needs no such margin: it counts the filter thread's CPU time.)
pub fn broker_config(dir: &Path, namesrv: &str) -> BrokerConfig {
    let mut config = BrokerConfig {
        listen: "127.0.0.1:0".into(),
        namesrv: namesrv.into(),
        store: StoreConfig {
            commit_log_segment_size: 4 << 20,
            consume_queue_segment_entries: 4096,
            index_slots: 4096,
            index_entries: 65536,
            // The machine's own disk must not decide these tests (a storage test sets its own).
            disk_max_used_ratio: 1.0,
            disk_full_ratio: 1.0,
            ..StoreConfig::new(dir.join("data"))
        },
        ..BrokerConfig::default()
    };
    config.filter.workers = 2;
    config.send_queue_wait_ms = 5_000;
    config
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(|_| {}).await
    }

    /// Starts with [`broker_config`] changed by `tweak`; [`Env::restart`] keeps the change.
    pub async fn start_with(tweak: impl FnOnce(&mut BrokerConfig)) -> Env {
        let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
            listen: "127.0.0.1:0".into(),
            broker_expiry_ms: 120_000,
            scan_interval_ms: 50,
            ..Default::default()
        })
        .await
        .expect("name server starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = broker_config(dir.path(), &ns.local_addr().to_string());
        tweak(&mut config);
        let broker = weir_broker::start(config.clone())
            .await
            .expect("broker starts");
        Env {
            ns,
            broker: Some(broker),
            config,
            _dir: dir,
        }
    }

    /// The name server's address.
    pub fn namesrv(&self) -> String {
        self.ns.local_addr().to_string()
    }

    pub fn broker(&self) -> &RunningBroker {
        self.broker.as_ref().expect("broker running")
    }

    /// Pulls the broker holds (long polling) right now.
    pub fn held_pulls(&self) -> usize {
        self.broker().broker().held_pulls()
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The broker's data folder.
    pub fn data_dir(&self) -> &Path {
        &self.config.store.data_dir
    }

    /// `<data>/filters`.
    pub fn filters_dir(&self) -> PathBuf {
        self.data_dir().join("filters")
    }

    /// The component or compiled-code files under `<data>/filters/<sub>` (the digest
    /// beside each compiled file is part of it, not counted).
    pub fn filter_files(&self, sub: &str) -> BTreeSet<String> {
        match std::fs::read_dir(self.filters_dir().join(sub)) {
            Ok(dir) => dir
                .map(|e| {
                    e.expect("dir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .filter(|name| !name.ends_with(".sha256"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => panic!("reading {sub}: {e}"),
        }
    }

    /// A new connection to the broker.
    pub async fn client(&self) -> Client {
        Client::connect(&self.broker().local_addr().to_string()).await
    }

    /// A new connection to the broker signing its requests as `access_key`.
    pub async fn client_as(&self, access_key: &str, secret: &str) -> Client {
        let client = self.client().await;
        let creds = Credentials::new(access_key, secret).expect("valid credentials");
        client.conn.sign_with(Arc::new(creds));
        client
    }

    /// Shuts the broker down cleanly and starts it again on the same data folder, with the
    /// same settings (on a new port: connect again).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await;
    }

    /// [`Env::restart`] with the settings changed by `tweak` (an operator editing the
    /// broker's file between runs); later restarts keep the change.
    pub async fn restart_with(&mut self, tweak: impl FnOnce(&mut BrokerConfig)) {
        tweak(&mut self.config);
        let old = self.broker.take().expect("broker running");
        old.shutdown().await.expect("clean shutdown");
        let config = self.config.clone();
        self.broker = Some(weir_broker::start(config).await.expect("broker restarts"));
    }
}

/// One message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Msg {
    pub tag: String,
    pub key: String,
    pub props: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Msg {
    /// A message with one key (tests identify messages by it), no tag, no properties, and
    /// the key as its body.
    pub fn new(key: impl Into<String>) -> Msg {
        let key = key.into();
        Msg {
            body: key.clone().into_bytes(),
            key,
            ..Msg::default()
        }
    }
    pub fn tag(mut self, tag: impl Into<String>) -> Msg {
        self.tag = tag.into();
        self
    }
    pub fn prop(mut self, name: impl Into<String>, value: impl Into<String>) -> Msg {
        self.props.push((name.into(), value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Msg {
        self.body = body.into();
        self
    }
    /// The value of the property `name`, if the message has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One message as a pull returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub tag: String,
    pub keys: Vec<String>,
    pub props: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Where the record starts in the broker's commit log.
    pub commit_log_offset: u64,
    /// The message id the broker answered the send with.
    pub msg_id: String,
}

impl Received {
    /// The message's first key.
    pub fn key(&self) -> &str {
        self.keys.first().map_or("", String::as_str)
    }
}

/// A pull's answer.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub status: PullStatus,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
    pub msgs: Vec<Received>,
}

/// What [`Client::drain`] got from one queue.
#[derive(Debug, Clone)]
pub struct Drained {
    pub msgs: Vec<Received>,
    /// Where the last pull said to continue.
    pub next_offset: u64,
    /// The queue's max offset when the drain started (it stops there).
    pub max_offset: u64,
}

/// A raw protocol connection to the broker.
#[derive(Clone)]
pub struct Client {
    pub conn: Connection,
}

fn strings(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Client {
    pub async fn connect(addr: &str) -> Client {
        let conn = Connection::connect(addr, Arc::new(NoHandler), ConnConfig::default(), T)
            .await
            .expect("connect to the broker");
        Client { conn }
    }

    pub async fn create_topic(&self, name: &str, queues: u32) {
        let req = CreateTopic {
            topic: TopicConfig {
                name: name.into(),
                read_queues: queues,
                write_queues: queues,
                perm: perm::READ | perm::WRITE,
            },
        };
        self.conn
            .call(&req, Bytes::new(), T)
            .await
            .expect("create topic");
    }

    /// Sends `msgs` to one queue, in batches; returns a result per message.
    pub async fn send(&self, topic: &str, queue_id: u32, msgs: &[Msg]) -> Vec<SendResult> {
        let mut results = Vec::with_capacity(msgs.len());
        for chunk in msgs.chunks(500) {
            let mut body = Vec::new();
            let messages = chunk
                .iter()
                .map(|m| {
                    body.extend_from_slice(&m.body);
                    BatchEntry {
                        tags: m.tag.clone(),
                        keys: vec![m.key.clone()],
                        properties: m.props.clone(),
                        flag: 0,
                        born_timestamp: 1,
                        body_len: m.body.len() as u32,
                    }
                })
                .collect();
            let req = SendBatch {
                producer_group: "weir-tests".into(),
                topic: topic.into(),
                queue_id,
                messages,
            };
            let (r, _) = self
                .conn
                .call(&req, Bytes::from(body), T)
                .await
                .expect("send batch");
            assert_eq!(r.results.len(), chunk.len(), "a result per message");
            results.extend(r.results);
        }
        results
    }

    pub async fn upload(
        &self,
        group: &str,
        topic: &str,
        component: &[u8],
        params: &[(&str, &str)],
    ) -> Result<FilterUploaded, CallError> {
        self.upload_with_memory(group, topic, component, params, None)
            .await
    }

    /// [`Client::upload`] asking a memory cap of `memory` bytes (`None`: the broker's
    /// default). `component` goes as it is: gzip-compress it first for a large one.
    pub async fn upload_with_memory(
        &self,
        group: &str,
        topic: &str,
        component: &[u8],
        params: &[(&str, &str)],
        memory: Option<u64>,
    ) -> Result<FilterUploaded, CallError> {
        let req = UploadFilter {
            group: group.into(),
            topic: topic.into(),
            params: strings(params),
            memory,
        };
        // The broker compiles before it answers: seconds for a large component.
        self.conn
            .call(&req, Bytes::copy_from_slice(component), UPLOAD_TIMEOUT)
            .await
            .map(|(r, _)| r)
    }

    pub async fn list(&self, group: Option<&str>) -> FilterList {
        let req = ListFilters {
            group: group.map(str::to_owned),
        };
        self.conn
            .call(&req, Bytes::new(), T)
            .await
            .expect("list filters")
            .0
    }

    /// The registration of (group, topic), if any.
    pub async fn filter_info(&self, group: &str, topic: &str) -> Option<FilterInfo> {
        let list = self.list(Some(group)).await;
        let mut found = list.filters.into_iter().filter(|f| f.topic == topic);
        let info = found.next();
        assert!(
            found.next().is_none(),
            "one registration per (group, topic)"
        );
        info
    }

    pub async fn remove(&self, group: &str, topic: &str) -> Result<FilterRemoved, CallError> {
        let req = RemoveFilter {
            group: group.into(),
            topic: topic.into(),
        };
        self.conn.call(&req, Bytes::new(), T).await.map(|(r, _)| r)
    }

    /// Clears the failed mark of (group, topic)'s filter.
    pub async fn reset(&self, group: &str, topic: &str) -> Result<FilterReset, CallError> {
        let req = ResetFilter {
            group: group.into(),
            topic: topic.into(),
        };
        self.conn.call(&req, Bytes::new(), T).await.map(|(r, _)| r)
    }

    /// Pulls up to 256 messages (all tags), committing nothing.
    pub async fn pull(
        &self,
        group: &str,
        topic: &str,
        queue_id: u32,
        offset: u64,
        suspend_ms: u64,
    ) -> Result<Pulled, CallError> {
        self.pull_raw(&PullMessage {
            group: group.into(),
            topic: topic.into(),
            queue_id,
            offset,
            max_msgs: 256,
            expression: "*".into(),
            suspend_ms,
            commit_offset: None,
        })
        .await
    }

    pub async fn pull_raw(&self, req: &PullMessage) -> Result<Pulled, CallError> {
        // A held pull answers within its suspension; leave room for that.
        let timeout = T + Duration::from_millis(req.suspend_ms);
        let (r, body) = self.conn.call(req, Bytes::new(), timeout).await?;
        let msgs = split_records(&body)
            .expect("pull body splits into records")
            .into_iter()
            .map(|rec| {
                let v = RecordView::parse_verified(rec).expect("a valid record");
                Received {
                    queue_id: v.queue_id(),
                    queue_offset: v.queue_offset(),
                    tag: v.tags().to_owned(),
                    keys: v.keys().map(str::to_owned).collect(),
                    props: v
                        .properties()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    body: v.body().to_vec(),
                    commit_log_offset: v.commit_log_offset(),
                    msg_id: v.message_id().to_string(),
                }
            })
            .collect();
        Ok(Pulled {
            status: r.status,
            next_offset: r.next_offset,
            min_offset: r.min_offset,
            max_offset: r.max_offset,
            msgs,
        })
    }

    pub async fn queue_offsets(&self, topic: &str, queue_id: u32) -> QueueOffsets {
        let req = GetQueueOffsets {
            topic: topic.into(),
            queue_id,
        };
        self.conn
            .call(&req, Bytes::new(), T)
            .await
            .expect("queue offsets")
            .0
    }

    pub async fn committed(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        let req = QueryConsumerOffset {
            group: group.into(),
            topic: topic.into(),
            queue_id,
        };
        self.conn
            .call(&req, Bytes::new(), T)
            .await
            .expect("query consumer offset")
            .0
            .offset
    }

    pub async fn commit(&self, group: &str, topic: &str, queue_id: u32, offset: u64) {
        let req = UpdateConsumerOffset {
            group: group.into(),
            topic: topic.into(),
            queue_id,
            offset,
        };
        self.conn
            .call(&req, Bytes::new(), T)
            .await
            .expect("commit consumer offset");
    }

    /// Pulls one queue from `from` until the next offset reaches the queue's max offset
    /// (read when the drain starts). Panics on an error, on an answer that does not move
    /// forward, and on records out of order or outside what was asked.
    pub async fn drain(&self, group: &str, topic: &str, queue_id: u32, from: u64) -> Drained {
        let max_offset = self.queue_offsets(topic, queue_id).await.max;
        let mut msgs: Vec<Received> = Vec::new();
        let mut offset = from;
        let deadline = Instant::now() + 6 * T;
        while offset < max_offset {
            assert!(
                Instant::now() < deadline,
                "draining {topic}/{queue_id} for {group} takes too long (at {offset} of {max_offset})"
            );
            let p = self
                .pull(group, topic, queue_id, offset, 0)
                .await
                .unwrap_or_else(|e| {
                    panic!("pull of {group} on {topic}/{queue_id} at {offset}: {e}")
                });
            match p.status {
                PullStatus::Found => assert!(!p.msgs.is_empty(), "Found without messages"),
                PullStatus::NoMatch => assert!(p.msgs.is_empty(), "NoMatch with messages"),
                other => panic!(
                    "pull of {group} on {topic}/{queue_id} at {offset} (max {max_offset}): {other:?}"
                ),
            }
            assert!(
                p.next_offset > offset,
                "pull at {offset} answered {:?} without moving on (next {})",
                p.status,
                p.next_offset
            );
            for m in &p.msgs {
                assert_eq!(m.queue_id, queue_id);
                assert!(
                    (offset..p.next_offset).contains(&m.queue_offset),
                    "message at {} outside [{offset}, {})",
                    m.queue_offset,
                    p.next_offset
                );
                if let Some(last) = msgs.last() {
                    assert!(m.queue_offset > last.queue_offset, "out of order");
                }
            }
            msgs.extend(p.msgs);
            offset = p.next_offset;
        }
        Drained {
            msgs,
            next_offset: offset,
            max_offset,
        }
    }

    /// Waits (polling, to the usual deadline) until the first `queues` queues of `topic`
    /// hold `n` messages in all. A one-way send is answered by nobody, so a client process
    /// can exit before the broker has read its last ones.
    pub async fn wait_stored(&self, topic: &str, queues: u32, n: u64) {
        eventually(&format!("{n} messages stored in {topic}"), async || {
            let mut stored = 0;
            for q in 0..queues {
                stored += self.queue_offsets(topic, q).await.max;
            }
            stored >= n
        })
        .await;
    }

    /// Drains queues `0..queues` of `topic` from 0 for `group`; asserts that each ends
    /// exactly at its max offset. Returns every message received.
    pub async fn drain_topic(&self, group: &str, topic: &str, queues: u32) -> Vec<Received> {
        let mut all = Vec::new();
        for q in 0..queues {
            let d = self.drain(group, topic, q, 0).await;
            assert_eq!(
                d.next_offset, d.max_offset,
                "{group} on {topic}/{q}: the next offset stops at the max offset"
            );
            all.extend(d.msgs);
        }
        all
    }
}
