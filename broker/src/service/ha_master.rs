//! The master's side of replication: its HA port takes slaves, checks that each one's log
//! is a prefix of its own, streams the log to it from its end as stored, and counts what
//! it confirms (sync-master sends wait for that); it also answers what slaves follow
//! besides the log (topics, offsets, filters).
//!
//! Invariant: a slave is streamed only bytes that follow its own end, and only after the
//! last bytes of its log were found equal to the master's at the same offsets; a slave that
//! is ahead or differs is refused with a reason it logs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use weir_protocol::ha::{
    FilterEntry, HaAck, HaComponent, HaData, HaHello, HaSnapshot, HaSync, HaWelcome, OffsetRow,
    TAIL_LEN,
};
use weir_protocol::net::{BoxFuture, ServerTls};
use weir_protocol::{Connection, ErrorCode, Handler, Reply, Request, RequestCode, Server};

use crate::broker::Broker;

/// Most log bytes in one message to a slave.
const CHUNK: usize = 1 << 20;
/// Most bytes streamed ahead of what the slave confirmed.
const AHEAD: u64 = 64 << 20;
/// Most chunks streamed ahead of what the slave confirmed while less than a whole chunk
/// waits to be sent. While the slave works on them, what the log grows by waits and
/// leaves in one next chunk, so under many small sends one chunk and one confirmation
/// carry many of them (group commit): streaming each send's bytes on its own cost the
/// slave more than the send cost the master. A slave catching up (whole chunks ready)
/// is streamed up to [`AHEAD`] bytes ahead, as a long link needs.
const CHUNKS_AHEAD: usize = 2;

/// Starts the HA server on `listen`, taking TLS as the client port does (`tls`).
pub async fn start(
    broker: &Arc<Broker>,
    listen: &str,
    tls: Option<ServerTls>,
) -> std::io::Result<Server> {
    let listener = TcpListener::bind(listen).await?;
    let server = Server::start_with(
        listener,
        Arc::new(HaMaster(Arc::clone(broker))),
        broker.config.net.server_config(),
        tls,
    )?;
    info!(ha = %server.local_addr(), "taking slaves");
    Ok(server)
}

struct HaMaster(Arc<Broker>);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Handler for HaMaster {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let b = &self.0;
            match RequestCode::from_u16(req.code) {
                Some(RequestCode::HaHello) => match req.decode::<HaHello>() {
                    Ok(h) => match b.welcome(&h) {
                        Ok(w) => {
                            b.replication.slave_joined(conn.id(), h.end);
                            info!(slave = %conn.peer(), id = h.broker_id, from = h.end, "slave connected");
                            tokio::spawn(stream(Arc::clone(b), conn.clone(), h.end));
                            Reply::ok(&w)
                        }
                        Err(why) => {
                            warn!(slave = %conn.peer(), reason = %why, "slave refused");
                            Reply::error(ErrorCode::ReplicaDiverged, why)
                        }
                    },
                    Err(e) => Reply::error(ErrorCode::BadRequest, e.to_string()),
                },
                Some(RequestCode::HaAck) => {
                    if let Ok(a) = req.decode::<HaAck>() {
                        b.replication.slave_acked(conn.id(), a.end);
                    }
                    Reply::ok(&())
                }
                Some(RequestCode::HaSync) => match req.decode::<HaSync>() {
                    Ok(sync) => {
                        b.merge_slave_offsets(&sync.offsets);
                        match b.snapshot().encode() {
                            Ok(body) => Reply::ok_with_body(&(), body),
                            Err(e) => Reply::error(ErrorCode::SystemError, e.to_string()),
                        }
                    }
                    Err(e) => Reply::error(ErrorCode::BadRequest, e.to_string()),
                },
                Some(RequestCode::HaComponent) => match req.decode::<HaComponent>() {
                    Ok(c) => match b.filters.component_bytes(&c.sha256) {
                        // Compressed: a JavaScript or Python component may not fit a frame.
                        Some(bytes) => Reply::ok_with_body(
                            &(),
                            Bytes::from(crate::filter::runtime::deflate(&bytes)),
                        ),
                        None => Reply::error(
                            ErrorCode::FilterNotFound,
                            format!("no component {}", c.sha256),
                        ),
                    },
                    Err(e) => Reply::error(ErrorCode::BadRequest, e.to_string()),
                },
                _ => Reply::error(
                    ErrorCode::RequestCodeNotSupported,
                    format!("the HA port does not serve request code {}", req.code),
                ),
            }
        })
    }

    fn on_close(&self, conn: &Connection) {
        self.0.replication.slave_left(conn.id());
        info!(slave = %conn.peer(), "slave disconnected");
    }
}

impl Broker {
    /// Whether a slave saying hello may follow this master.
    fn welcome(&self, h: &HaHello) -> Result<HaWelcome, String> {
        if h.broker_name != self.config.broker_name {
            return Err(format!(
                "this master is {:?}, not {:?}",
                self.config.broker_name, h.broker_name
            ));
        }
        if h.broker_id == 0 {
            return Err("broker id 0 is the master's".into());
        }
        let end = self.store.commit_log_max_offset();
        if h.end > end {
            return Err(format!(
                "the slave's log ends at {}, past the master's end {end}: it holds what the master does not",
                h.end
            ));
        }
        if h.tail.len() > TAIL_LEN || (h.tail.len() as u64) > h.end {
            return Err("malformed tail".into());
        }
        if !h.tail.is_empty() {
            let from = h.end - h.tail.len() as u64;
            match self.store.log_bytes(from, h.tail.len()) {
                Some(mine) if mine == h.tail => {}
                Some(_) => {
                    return Err(format!(
                        "the slave's log differs from the master's before offset {}",
                        h.end
                    ));
                }
                None => {
                    return Err(format!(
                        "the master no longer holds offset {from} (deleted by retention): copy the master afresh"
                    ));
                }
            }
        } else if h.end > 0 && h.end < self.store.commit_log_min_offset() {
            return Err("the slave is behind what the master still holds".into());
        }
        Ok(HaWelcome {
            master_end: end,
            epoch: 0,
        })
    }

    /// Takes the consumer offsets a slave was given while this master was away (or by
    /// readers it sent there), each only if ahead of this master's own.
    fn merge_slave_offsets(&self, rows: &[OffsetRow]) {
        let offsets = self.store.consumer_offsets();
        for (group, topic, queue_id, offset) in rows {
            if offsets.commit_max(group, topic, *queue_id, *offset) {
                debug!(
                    group,
                    topic, queue_id, offset, "took a consumer offset committed on a slave"
                );
            }
        }
    }

    /// What slaves follow besides the log.
    fn snapshot(&self) -> HaSnapshot {
        HaSnapshot {
            topics: self.topics.all(),
            offsets: self
                .store
                .consumer_offsets()
                .all()
                .into_iter()
                .map(|(k, o)| (k.group, k.topic, k.queue_id, o))
                .collect(),
            filters: self
                .filters
                .entries()
                .into_iter()
                .map(|e| FilterEntry {
                    group: e.group,
                    topic: e.topic,
                    version: e.version,
                    sha256: e.sha256,
                    params: e.params,
                    memory: e.memory,
                })
                .collect(),
        }
    }
}

/// Streams the log to one slave from `from` until its connection closes.
async fn stream(broker: Arc<Broker>, conn: Connection, from: u64) {
    let mut at = from;
    let repl = &broker.replication;
    // Where each chunk sent and not yet confirmed ends, oldest first.
    let mut unconfirmed: VecDeque<u64> = VecDeque::new();
    while !conn.is_closed() {
        let grew = repl.log_grew.notified();
        let acked = repl.next_ack();
        let confirmed = repl.acked_by(conn.id()).unwrap_or(at);
        while unconfirmed.front().is_some_and(|&end| end <= confirmed) {
            unconfirmed.pop_front();
        }
        let ready = broker.store.commit_log_max_offset().saturating_sub(at);
        let batching = unconfirmed.len() >= CHUNKS_AHEAD && ready < CHUNK as u64;
        if batching || at.saturating_sub(confirmed) > AHEAD {
            tokio::select! {
                _ = acked => {}
                _ = conn.closed() => return,
            }
            continue;
        }
        match broker.store.read_log(at, CHUNK) {
            Ok(Some(span)) => {
                let len = span.len() as u64;
                let data = HaData {
                    offset: at,
                    master_end: broker.store.commit_log_max_offset(),
                    sent_ms: now_ms(),
                };
                // Sent from the log's own pages, not a copy of them.
                if conn.oneway(&data, Bytes::from_owner(span)).await.is_err() {
                    return;
                }
                at += len;
                unconfirmed.push_back(at);
            }
            Ok(None) => {
                // Caught up: wait for the log to grow (or look again now and then).
                tokio::select! {
                    _ = grew => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = conn.closed() => return,
                }
            }
            Err(e) => {
                warn!(slave = %conn.peer(), offset = at, error = %e, "cannot read the log for a slave; closing its connection");
                conn.close();
                return;
            }
        }
    }
}
