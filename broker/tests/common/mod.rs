//! Shared by the broker's integration tests.
// Each test binary uses part of this.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_broker::{BrokerConfig, RunningBroker};
use weir_protocol::broker::{PullMessage, PullResult, PullStatus, SendMessage, split_records};
use weir_protocol::{CallError, ConnConfig, Connection, ErrorCode, NoHandler, RecordView, Rpc};
use weir_store::StoreConfig;

/// Timeout of one call in the tests.
pub const T: Duration = Duration::from_secs(10);

/// Calls `req` and expects the broker to refuse it with `code` and a message containing
/// `text`.
pub async fn expect_error<R: Rpc>(
    conn: &Connection,
    req: &R,
    body: Bytes,
    code: ErrorCode,
    text: &str,
) {
    match conn.call(req, body, T).await {
        Err(CallError::Remote { code: c, message }) => {
            assert_eq!(c, code, "{message}");
            assert!(message.contains(text), "{message:?} lacks {text:?}");
        }
        other => panic!("expected {code}, got {other:?}"),
    }
}

pub struct Env {
    pub ns: weir_namesrv::RunningNameServer,
    pub broker: Option<RunningBroker>,
    pub dir: tempfile::TempDir,
}

pub fn broker_config(dir: &std::path::Path, namesrv: &str) -> BrokerConfig {
    BrokerConfig {
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
    }
}

pub async fn env_with(tweak: impl FnOnce(&mut BrokerConfig)) -> Env {
    let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        broker_expiry_ms: 120_000,
        scan_interval_ms: 50,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker_config(dir.path(), &ns.local_addr().to_string());
    tweak(&mut config);
    let broker = Some(weir_broker::start(config).await.unwrap());
    Env { ns, broker, dir }
}

pub async fn env() -> Env {
    env_with(|_| {}).await
}

impl Env {
    pub fn broker(&self) -> &RunningBroker {
        self.broker.as_ref().unwrap()
    }
    pub async fn client(&self) -> Connection {
        connect(&self.broker().local_addr().to_string()).await
    }
    pub async fn restart(&mut self) {
        let old = self.broker.take().unwrap();
        old.shutdown().await.unwrap();
        let config = broker_config(self.dir.path(), &self.ns.local_addr().to_string());
        self.broker = Some(weir_broker::start(config).await.unwrap());
    }
}

pub async fn connect(addr: &str) -> Connection {
    Connection::connect(addr, Arc::new(NoHandler), ConnConfig::default(), T)
        .await
        .unwrap()
}

pub fn send(topic: &str, queue_id: u32, tags: &str, key: &str) -> SendMessage {
    SendMessage {
        producer_group: "pg".into(),
        topic: topic.into(),
        queue_id,
        tags: tags.into(),
        keys: vec![key.into()],
        properties: vec![("k".into(), "v".into())],
        flag: 0,
        born_timestamp: 1,
        sys_flag: 0,
        reconsume_times: 0,
        max_reconsume_times: None,
    }
}

pub fn pull(
    topic: &str,
    queue_id: u32,
    offset: u64,
    expression: &str,
    suspend_ms: u64,
) -> PullMessage {
    PullMessage {
        group: "cg".into(),
        topic: topic.into(),
        queue_id,
        offset,
        max_msgs: 64,
        expression: expression.into(),
        suspend_ms,
        commit_offset: None,
    }
}

pub fn bodies(body: &Bytes) -> Vec<String> {
    split_records(body)
        .unwrap()
        .into_iter()
        .map(|r| {
            let v = RecordView::parse_verified(r).unwrap();
            // Lossy: a test may carry binary bodies (a record forged inside one).
            String::from_utf8_lossy(v.body()).into_owned()
        })
        .collect()
}

/// Pulls (topic, queue) from `offset` to its end.
pub async fn drain(conn: &Connection, topic: &str, queue_id: u32, expression: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (r, body): (PullResult, Bytes) = conn
            .call(
                &pull(topic, queue_id, offset, expression, 0),
                Bytes::new(),
                T,
            )
            .await
            .unwrap();
        match r.status {
            PullStatus::Found => out.extend(bodies(&body)),
            PullStatus::NoMatch => {}
            PullStatus::NoNewMessage => return out,
            PullStatus::OffsetMoved => panic!("offset moved"),
        }
        offset = r.next_offset;
    }
}

pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
