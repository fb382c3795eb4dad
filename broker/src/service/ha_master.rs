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
use weir_protocol::auth::{AuthError, SharedSecret};
use weir_protocol::ha::{
    FilterEntry, HaAck, HaComponent, HaData, HaHello, HaSnapshot, HaSync, HaWelcome, OFFSETS_PAGE,
    OffsetRow, TAIL_LEN,
};
use weir_protocol::net::{BoxFuture, Cause, ServerTls};
use weir_protocol::{Connection, ErrorCode, Handler, Reply, Request, RequestCode, Server};
use weir_store::OffsetKey;

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
    let secret = match broker.config.cluster_secret.as_deref() {
        Some(s) => Some(
            SharedSecret::new(s, SIGNATURE_WINDOW_MS, MAX_SLAVE_SESSIONS)
                .map_err(|e| std::io::Error::other(format!("cluster_secret: {e}")))?,
        ),
        None => None,
    };
    let listener = TcpListener::bind(listen).await?;
    // The HA port serves a master's few slaves: a cap of its own, and an idle timeout a
    // following slave never reaches (it asks for the metadata every few seconds), so that
    // connections that say nothing do not hold its slots for long.
    let mut net = broker.config.net.server_config();
    net.max_connections = net.max_connections.min(HA_MAX_CONNECTIONS);
    net.conn.idle_timeout = Some(
        net.conn
            .idle_timeout
            .map_or(HA_IDLE_TIMEOUT, |t| t.min(HA_IDLE_TIMEOUT)),
    );
    let server = Server::start_with(
        listener,
        Arc::new(HaMaster {
            broker: Arc::clone(broker),
            secret,
            refused: Cause::new(),
            bad_acks: Cause::new(),
        }),
        net,
        tls,
    )?;
    info!(ha = %server.local_addr(), "taking slaves");
    Ok(server)
}

/// Connections the HA port takes at once (its slaves, and their reconnects).
const HA_MAX_CONNECTIONS: usize = 256;
/// An HA connection with nothing from its peer this long is closed (a following slave asks
/// for the metadata every 5 s).
const HA_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a refused peer's connection stays open for its answer to leave.
const CLOSE_AFTER_REFUSAL: Duration = Duration::from_millis(200);

/// Closes `conn` once its answer to a refused request has had time to leave: a peer that
/// is not a following slave holds no HA connection past its first refusal.
fn close_after_refusal(conn: &Connection) {
    let conn = conn.clone();
    tokio::spawn(async move {
        tokio::time::sleep(CLOSE_AFTER_REFUSAL).await;
        conn.close();
    });
}

/// How long a slave's signed hello is taken, either way of this clock.
const SIGNATURE_WINDOW_MS: u64 = 120_000;
/// Connections a cluster's slaves may open within the window (each is a session; a slave
/// reconnects at most once a second).
const MAX_SLAVE_SESSIONS: usize = 10_000;

struct HaMaster {
    broker: Arc<Broker>,
    /// With a `cluster_secret`: a slave's hello must be signed with it (the rest of its
    /// connection's requests are taken only after that hello).
    secret: Option<SharedSecret>,
    /// Slaves refused, and confirmations not counted (their connections closed): logged
    /// once per interval, as any peer can reach the HA port.
    refused: Cause,
    bad_acks: Cause,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Handler for HaMaster {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let b = &self.broker;
            match RequestCode::from_u16(req.code) {
                Some(RequestCode::HaHello) if let Err(e) = self.authenticate(&req) => {
                    self.refused.record(|count| {
                        warn!(slave = %conn.peer(), error = %e, count, "slave refused: its hello is not signed with this master's cluster_secret ({count} since the last report)");
                    });
                    close_after_refusal(conn);
                    Reply::error(
                        e.code(),
                        format!(
                            "slave refused: {e} (the slave's cluster_secret must match the master's)"
                        ),
                    )
                }
                Some(RequestCode::HaHello) => match req.decode::<HaHello>() {
                    Ok(h) => match b.welcome(&h) {
                        Ok(w) => {
                            if !b.replication.slave_joined(conn.id(), h.end) {
                                // One stream per connection: a second would send the log again.
                                return Reply::error(
                                    ErrorCode::BadRequest,
                                    "this connection already follows the master",
                                );
                            }
                            info!(slave = %conn.peer(), id = h.broker_id, from = h.end, "slave connected");
                            tokio::spawn(stream(Arc::clone(b), conn.clone(), h.end));
                            Reply::ok(&w)
                        }
                        Err(why) => {
                            self.refused.record(|count| {
                                warn!(slave = %conn.peer(), reason = %why, count, "slave refused ({count} since the last report)");
                            });
                            close_after_refusal(conn);
                            Reply::error(ErrorCode::ReplicaDiverged, why)
                        }
                    },
                    Err(e) => {
                        close_after_refusal(conn);
                        Reply::error(ErrorCode::BadRequest, e.to_string())
                    }
                },
                Some(RequestCode::HaAck) => {
                    let refused = match req.decode::<HaAck>() {
                        Ok(a) => b.replication.slave_acked(conn.id(), a.end).err(),
                        Err(e) => {
                            return Reply::error(ErrorCode::BadRequest, e.to_string());
                        }
                    };
                    if let Some(why) = refused {
                        // Not a slave, or not a sound one: it confirms no send, and goes.
                        self.bad_acks.record(|count| {
                            warn!(peer = %conn.peer(), reason = %why, count, "closing an HA connection whose confirmation cannot be counted ({count} since the last report)");
                        });
                        conn.close();
                    }
                    Reply::ok(&())
                }
                // What a slave follows besides the log (and gives back: consumer offsets
                // committed on it) is for a connection that said hello as one.
                Some(RequestCode::HaSync | RequestCode::HaComponent)
                    if !b.replication.is_slave(conn.id()) =>
                {
                    close_after_refusal(conn);
                    Reply::error(
                        ErrorCode::BadRequest,
                        "say hello as a slave first: only a following slave copies metadata",
                    )
                }
                Some(RequestCode::HaSync) => match req.decode::<HaSync>() {
                    Ok(sync) if sync.offsets.len() > OFFSETS_PAGE => Reply::error(
                        ErrorCode::BadRequest,
                        format!("at most {OFFSETS_PAGE} offsets a request"),
                    ),
                    Ok(sync) => {
                        b.merge_slave_offsets(&sync.offsets);
                        match b.snapshot(sync.after).encode() {
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
                _ => {
                    close_after_refusal(conn);
                    Reply::error(
                        ErrorCode::RequestCodeNotSupported,
                        format!("the HA port does not serve request code {}", req.code),
                    )
                }
            }
        })
    }

    fn on_close(&self, conn: &Connection) {
        if self.broker.replication.slave_left(conn.id()) {
            info!(slave = %conn.peer(), "slave disconnected");
        }
    }
}

impl HaMaster {
    /// Takes a hello signed with the cluster secret, or any when there is none.
    fn authenticate(&self, req: &Request) -> Result<(), AuthError> {
        match &self.secret {
            Some(secret) => secret.check(&req.auth, &req.signed()),
            None => Ok(()),
        }
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
        } else if h.end > 0 {
            // What a slave says it has counts as confirmed: it must show it.
            return Err(format!(
                "a slave whose log ends at {} must show its last bytes (its tail was empty)",
                h.end
            ));
        }
        Ok(HaWelcome {
            master_end: end,
            epoch: 0,
        })
    }

    /// Takes the consumer offsets a slave was given while this master was away (or by
    /// readers it sent there), each only if ahead of this master's own. Rows a consumer
    /// could not have committed here (an invalid group name, a topic or queue this master
    /// does not have) are skipped, as the commit itself refuses them, and an offset counts
    /// at most up to its queue's end.
    fn merge_slave_offsets(&self, rows: &[OffsetRow]) {
        let offsets = self.store.consumer_offsets();
        for (group, topic, queue_id, offset) in rows {
            let known = crate::topics::validate_group_name(group).is_ok()
                && self
                    .topics
                    .get(topic)
                    .is_some_and(|t| *queue_id < t.read_queues);
            if !known {
                debug!(
                    group,
                    topic, queue_id, "skipped a slave's offset for no queue of this master"
                );
                continue;
            }
            // A slave's queue is never ahead of its master's: an offset past this queue's
            // end is not one a consumer could have read to (taken, it would skip what comes).
            // New entries only within limits.max_consumer_offsets, as a consumer's commit.
            let offset = (*offset).min(self.store.max_offset(topic, *queue_id));
            let max = self.config.limits.max_consumer_offsets;
            if offsets.commit_max(group, topic, *queue_id, offset, max) {
                debug!(
                    group,
                    topic, queue_id, offset, "took a consumer offset committed on a slave"
                );
            }
        }
    }

    /// What slaves follow besides the log, one page: the consumer offsets after `after`,
    /// and with the first page (`after` is `None`) every topic and filter.
    fn snapshot(&self, after: Option<(String, String, u32)>) -> HaSnapshot {
        let first = after.is_none();
        let after = after.map(|(group, topic, queue_id)| OffsetKey {
            group,
            topic,
            queue_id,
        });
        let (offsets, more) = self
            .store
            .consumer_offsets()
            .page_after(after.as_ref(), OFFSETS_PAGE);
        HaSnapshot {
            topics: if first { self.topics.all() } else { Vec::new() },
            offsets: offsets
                .into_iter()
                .map(|(k, o)| (k.group, k.topic, k.queue_id, o))
                .collect(),
            filters: if first {
                self.filters
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
                    .collect()
            } else {
                Vec::new()
            },
            more,
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
                repl.streaming(conn.id(), at.saturating_add(len));
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
