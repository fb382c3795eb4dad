//! The slave's side of replication: it connects to its master's HA port (configured, or as
//! the name servers say), tells where its log ends, appends what the master streams at the
//! same offsets and confirms it (after syncing it under sync flush), and every few seconds
//! copies what else it follows: topics, consumer offsets (delay-level progress included)
//! and filter registrations, with their components; and what the master deleted (topics
//! with their queues and offsets, a deleted group's offsets and filters) goes here too.
//!
//! Invariant: a slave never serves a log that differs from its master's: when the master
//! refuses it, or the master's bytes do not line up with its own, it stops replicating and
//! refuses reads, saying why, until an operator deals with it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use weir_protocol::ha::{
    HaAck, HaComponent, HaData, HaHello, HaSnapshot, HaSync, TAIL_LEN, sync_pages,
};
use weir_protocol::net::BoxFuture;
use weir_protocol::{
    CallError, ConnConfig, Connection, ErrorCode, Handler, Reply, Request, RequestCode,
};
use weir_store::StoreError;

use crate::broker::Broker;
use crate::topics::Topic;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(1);
/// How often what the slave follows besides the log is copied.
const METADATA_EVERY: Duration = Duration::from_secs(5);

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    // (Rate-limited: a slave retries every second.)
    let tls_refusals = weir_protocol::net::Cause::new();
    let auth_refusals = weir_protocol::net::Cause::new();
    loop {
        if *stop.borrow() || broker.replication.diverged().is_some() {
            return;
        }
        let master = broker.config.master_ha_addr.clone().or_else(|| {
            broker
                .replication
                .learned_master
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        });
        if let Some(addr) = master {
            match follow(&broker, &addr, &mut stop).await {
                // A handshake refused is a setting to fix: said at warn, not debug.
                Err(e @ CallError::Connect { .. }) if broker.tls_client.is_some() => {
                    tls_refusals.record(|count| {
                        warn!(master = %addr, error = %e, count, "cannot connect to the master's HA port over TLS ({count} times since the last report); will retry");
                    });
                }
                // So is a hello refused for its signature (a cluster_secret that differs).
                Err(
                    e @ CallError::Remote {
                        code: ErrorCode::AuthFailed | ErrorCode::RequestExpired,
                        ..
                    },
                ) => {
                    auth_refusals.record(|count| {
                        warn!(master = %addr, error = %e, count, "the master refused this slave's hello ({count} times since the last report): set the same cluster_secret on both; will retry");
                    });
                }
                Err(e) => {
                    debug!(master = %addr, error = %e, "replication interrupted; will reconnect");
                }
                Ok(()) => {}
            }
            broker.replication.set_connected(false);
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Follows the master at `addr` until the connection ends.
async fn follow(
    broker: &Arc<Broker>,
    addr: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), CallError> {
    let conn = Connection::connect_with(
        addr,
        Arc::new(HaSlave::new(Arc::clone(broker))),
        ConnConfig::default(),
        CONNECT_TIMEOUT,
        broker.tls_client.as_ref(),
    )
    .await?;
    // With a cluster secret, the master takes only a hello signed with it.
    if let Some(creds) = broker.cluster_credentials() {
        conn.sign_with(creds);
    }
    let end = broker.store.commit_log_max_offset();
    let hello = HaHello {
        broker_name: broker.config.broker_name.clone(),
        broker_id: broker.config.broker_id,
        end,
        tail: tail_of(broker, end),
        epoch: 0,
    };
    match conn.call(&hello, Bytes::new(), CONNECT_TIMEOUT).await {
        Ok((w, _)) => {
            broker.replication.heard(w.master_end, end);
            broker.replication.set_connected(true);
            info!(master = %addr, from = end, master_end = w.master_end, "replicating");
        }
        Err(CallError::Remote {
            code: ErrorCode::ReplicaDiverged,
            message,
        }) => {
            broker
                .replication
                .diverge(format!("the master refused it: {message}"));
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    loop {
        if let Err(e) = copy_metadata(broker, &conn).await {
            warn!(master = %addr, error = %e, "copying topics, offsets and filters from the master failed; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(METADATA_EVERY) => {}
            _ = conn.closed() => return Ok(()),
            _ = stop.wait_for(|s| *s) => {
                conn.close();
                return Ok(());
            }
        }
        if broker.replication.diverged().is_some() {
            conn.close();
            return Ok(());
        }
    }
}

/// The last bytes of the log before `end`, within its last segment.
fn tail_of(broker: &Broker, end: u64) -> Vec<u8> {
    if end == 0 {
        return Vec::new();
    }
    let size = broker.store.config().commit_log_segment_size;
    let seg_start = (end - 1) / size * size;
    let len = (end - seg_start).min(TAIL_LEN as u64) as usize;
    broker
        .store
        .log_bytes(end - len as u64, len)
        .unwrap_or_default()
}

/// The master's metadata whole, page by page (see [`HaSync`]), giving it the offsets
/// committed here a page at a time along the way.
async fn fetch_snapshot(broker: &Broker, conn: &Connection) -> Result<HaSnapshot, CallError> {
    let pending = broker.replication.pending_offsets();
    let mut to_give = sync_pages(&pending).into_iter();
    let mut snap = HaSnapshot::default();
    let mut after = None;
    loop {
        let sync = HaSync {
            offsets: to_give.next().map(<[_]>::to_vec).unwrap_or_default(),
            after: after.clone(),
        };
        let (_, body) = conn.call(&sync, Bytes::new(), CONNECT_TIMEOUT).await?;
        let page = HaSnapshot::decode(&body)?;
        if after.is_none() {
            snap.topics = page.topics;
            snap.filters = page.filters;
        }
        if let Some((group, topic, queue_id, _)) = page.offsets.last() {
            after = Some((group.clone(), topic.clone(), *queue_id));
        } else if page.more {
            // A page that says more follows must move on.
            return Err(CallError::Protocol(weir_protocol::ProtocolError::Decode {
                what: "replication snapshot",
                detail: "an empty page of offsets said more follow".into(),
            }));
        }
        snap.offsets.extend(page.offsets);
        if !page.more && to_give.len() == 0 {
            return Ok(snap);
        }
    }
}

/// Copies topics, consumer offsets and filter registrations from the master.
async fn copy_metadata(broker: &Arc<Broker>, conn: &Connection) -> Result<(), CallError> {
    let snap = fetch_snapshot(broker, conn).await?;
    let mut changed = false;
    for t in &snap.topics {
        if broker.topics.get(&t.name).as_deref().map(Topic::config) != Some(t) {
            if let Err(e) = broker.topics.upsert(t.clone()) {
                warn!(topic = %t.name, error = %e, "cannot copy a topic from the master");
            }
            changed = true;
        }
    }
    // Deletions: a topic the master no longer has goes here too, with its queues and
    // offsets (as the master's delete did), so one created again under the name starts at
    // offset 0 here as there.
    for t in broker.topics.all() {
        if !snap.topics.iter().any(|m| m.name == t.name) {
            if let Ok(true) = broker.topics.remove(&t.name) {
                match broker.drop_topic_data(&t.name).await {
                    Ok(offsets) => {
                        info!(topic = %t.name, offsets, "topic deleted, as on the master")
                    }
                    Err(e) => {
                        warn!(topic = %t.name, error = %e, "cannot drop the queues of a topic the master deleted")
                    }
                }
            }
            changed = true;
        }
    }
    if changed {
        broker.topics_updated();
    }
    let offsets = broker.store.consumer_offsets();
    // Offsets the master no longer has (a deleted group, a deleted topic) go, except those
    // committed here that the master has not seen yet.
    let master_keys: HashSet<(&str, &str, u32)> = snap
        .offsets
        .iter()
        .map(|(g, t, q, _)| (g.as_str(), t.as_str(), *q))
        .collect();
    let pending: HashSet<(String, String, u32)> = broker
        .replication
        .pending_offsets()
        .into_iter()
        .map(|(g, t, q, _)| (g, t, q))
        .collect();
    let gone = offsets.retain(|k| {
        master_keys.contains(&(k.group.as_str(), k.topic.as_str(), k.queue_id))
            || pending.contains(&(k.group.clone(), k.topic.clone(), k.queue_id))
    });
    if gone > 0 {
        info!(offsets = gone, "consumer offsets deleted, as on the master");
    }
    for (group, topic, queue_id, master) in snap.offsets {
        let offset = broker
            .replication
            .merge_offset(&group, &topic, queue_id, master);
        if offsets.query(&group, &topic, queue_id) != Some(offset) {
            offsets.commit(&group, &topic, queue_id, offset);
        }
    }
    let have = broker.filters.entries();
    // Filters the master no longer has (removed, or their group deleted) go too.
    for h in &have {
        if !snap
            .filters
            .iter()
            .any(|f| f.group == h.group && f.topic == h.topic)
        {
            let filters = Arc::clone(&broker.filters);
            let (group, topic) = (h.group.clone(), h.topic.clone());
            let removed = tokio::task::spawn_blocking(move || filters.remove(&group, &topic)).await;
            if !matches!(removed, Ok(Ok(_))) {
                warn!(group = %h.group, topic = %h.topic, "cannot remove a filter the master removed; will retry");
            }
        }
    }
    for f in snap.filters {
        if have
            .iter()
            .any(|h| h.group == f.group && h.topic == f.topic && h.version == f.version)
        {
            continue;
        }
        let bytes = match broker.filters.component_bytes(&f.sha256) {
            Some(b) => b,
            None => {
                let req = HaComponent {
                    sha256: f.sha256.clone(),
                };
                conn.call(&req, Bytes::new(), CONNECT_TIMEOUT)
                    .await?
                    .1
                    .to_vec()
            }
        };
        let filters = Arc::clone(&broker.filters);
        let installed = tokio::task::spawn_blocking(move || {
            filters.install(&f.group, &f.topic, &bytes, f.params, f.memory, f.version)
        })
        .await;
        if !matches!(installed, Ok(Ok(_))) {
            warn!("cannot install a filter copied from the master; will retry");
        }
    }
    Ok(())
}

/// Most bytes a slave holds that arrived ahead of a gap (the master keeps at most 64 MiB
/// unconfirmed in flight; past this the connection is dropped and resumed from the end).
const MAX_PENDING: usize = 96 << 20;

/// Serves what the master sends on the HA connection.
///
/// A connection runs its requests' handlers concurrently, so chunks of the log may be
/// handled out of the order they were sent in: they are appended strictly in log order,
/// one at a time (a chunk that arrives before the one it follows waits in `pending`).
struct HaSlave {
    broker: Arc<Broker>,
    /// Chunks received ahead of the log's end, by offset. Locked for each append.
    pending: tokio::sync::Mutex<BTreeMap<u64, Bytes>>,
}

impl HaSlave {
    fn new(broker: Arc<Broker>) -> Self {
        Self {
            broker,
            pending: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Appends what of `pending` continues the log; the log's end after, or `None` when
    /// the connection must end (the slave diverged, or cannot append).
    async fn append_in_order(&self, pending: &mut BTreeMap<u64, Bytes>) -> Option<u64> {
        let b = &self.broker;
        loop {
            let end = b.store.commit_log_max_offset();
            let Some(entry) = pending.first_entry() else {
                return Some(end);
            };
            let offset = *entry.key();
            let len = entry.get().len() as u64;
            if offset > end {
                // A gap: the chunk before it has not been handled yet.
                return Some(end);
            }
            if offset.saturating_add(len) <= end {
                // Already here (sent again after a reconnect).
                entry.remove();
                continue;
            }
            let body = entry.remove();
            // Appended here, whatever its size: the link has its thread to itself
            // (`ha_runtime`), and handing a large chunk to a blocking thread and back cost
            // two thread wake-ups a chunk, more than a chunk's append holds this one up.
            match b.store.append_replicated(offset, &body) {
                Ok(_) => {}
                Err(StoreError::ReplicaMismatch { detail }) => {
                    b.replication.diverge(detail);
                    return None;
                }
                Err(e) => {
                    warn!(error = %e, "cannot append what the master sent; reconnecting");
                    return None;
                }
            }
        }
    }
}

impl Handler for HaSlave {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let b = &self.broker;
            if req.code != RequestCode::HaData as u16 {
                return Reply::error(ErrorCode::RequestCodeNotSupported, "not served here");
            }
            let Ok(d) = req.decode::<HaData>() else {
                return Reply::error(ErrorCode::BadRequest, "bad replication data");
            };
            if b.replication.diverged().is_some() {
                conn.close();
                return Reply::ok(&());
            }
            let end = {
                let mut pending = self.pending.lock().await;
                pending.insert(d.offset, req.body.clone());
                let end = self.append_in_order(&mut pending).await;
                let held: usize = pending.values().map(Bytes::len).sum();
                if held > MAX_PENDING {
                    warn!(
                        held,
                        "too much replication data waits for a gap to fill; reconnecting"
                    );
                    pending.clear();
                    conn.close();
                    return Reply::ok(&());
                }
                match end {
                    Some(end) => end,
                    None => {
                        pending.clear();
                        conn.close();
                        return Reply::ok(&());
                    }
                }
            };
            if let Err(e) = b.store.durable(end).await {
                warn!(error = %e, "cannot sync what the master sent; reconnecting");
                conn.close();
                return Reply::ok(&());
            }
            b.replication.heard(d.master_end, end);
            let _ = conn.oneway(&HaAck { end }, Bytes::new()).await;
            Reply::ok(&())
        })
    }
}
