//! The name server: a route table that brokers keep fresh and clients read.
//!
//! Brokers register (cluster, name, id, address, topics with queue counts and permissions)
//! every 30 s over a connection they keep open; a broker silent for longer than the expiry
//! (120 s), or whose connection closes, is dropped. Name servers share nothing: a broker
//! registers with each of them.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod metrics;
mod remoting;
pub mod server_main;

pub use config::NamesrvConfig;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use weir_protocol::auth::SharedSecret;
use weir_protocol::ha::HaStatus;
use weir_protocol::metrics::MetricsServer;
use weir_protocol::net::{BoxFuture, Cause};
use weir_protocol::route::{
    BrokerData, ClusterInfo, GetAllTopics, GetClusterInfo, GetRoute, GetTopicSummaries, MASTER_ID,
    QueueData, RegisterBroker, RegisterBrokerResponse, RegisteredTopics, TopicConfig, TopicList,
    TopicRoute, TopicSummaries, TopicSummary, UnregisterBroker,
};
use weir_protocol::{
    Connection, ErrorCode, Handler, Reply, Request, RequestCode, Server, ServerStats, TlsError,
};

#[derive(Debug, thiserror::Error)]
pub enum NamesrvError {
    /// (The cause is part of the message, not a chained source, so it prints once.)
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A `[tls]` file that cannot be read or used (the error names it).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A broker group: one name, a master (id 0) and its slaves.
#[derive(Debug, Clone)]
struct Group {
    cluster: String,
    addrs: BTreeMap<u64, String>,
    /// What each member last reported of its replication.
    status: BTreeMap<u64, HaStatus>,
}

#[derive(Debug, Clone)]
struct Live {
    broker_name: String,
    broker_id: u64,
    last_seen: Instant,
    conn_id: u64,
}

/// Brokers dropped from the table, logged at most a line per interval.
static DROPPED: Cause = Cause::new();

#[derive(Default)]
struct Table {
    groups: BTreeMap<String, Group>,
    /// topic → broker name → queues.
    topics: BTreeMap<String, BTreeMap<String, QueueData>>,
    /// broker address → liveness.
    live: HashMap<String, Live>,
}

impl Table {
    /// The topics weir's tools show: RocketMQ's auto-create route is not one.
    fn shown_topics(&self) -> impl Iterator<Item = (&String, &BTreeMap<String, QueueData>)> {
        self.topics
            .iter()
            .filter(|(t, _)| *t != weir_protocol::names::AUTO_CREATE_TOPIC_KEY)
    }

    fn topic_summaries(&self) -> TopicSummaries {
        TopicSummaries {
            topics: self
                .shown_topics()
                .map(|(name, by_broker)| TopicSummary {
                    name: name.clone(),
                    queues: by_broker.values().cloned().collect(),
                })
                .collect(),
        }
    }

    /// Registers a broker (a master with its topics), within `limits`; refused whole (the
    /// broker's earlier registration stands) past them.
    fn register(
        &mut self,
        r: RegisterBroker,
        topics: Vec<TopicConfig>,
        conn_id: u64,
        limits: (usize, usize),
    ) -> Result<RegisterBrokerResponse, String> {
        let (max_brokers, max_topics) = limits;
        if !self.live.contains_key(&r.addr) && self.live.len() >= max_brokers {
            return Err(format!(
                "this name server has {max_brokers} brokers registered already (max_brokers): {} at {} is refused",
                r.broker_name, r.addr
            ));
        }
        if r.broker_id == MASTER_ID {
            let new = topics
                .iter()
                .filter(|t| !self.topics.contains_key(&t.name))
                .count();
            if self.topics.len().saturating_add(new) > max_topics {
                return Err(format!(
                    "this name server routes {} topics and {} of {}'s {} are new: past max_topics ({max_topics}); its registration is refused",
                    self.topics.len(),
                    new,
                    r.broker_name,
                    topics.len()
                ));
            }
        }
        let group = self
            .groups
            .entry(r.broker_name.clone())
            .or_insert_with(|| Group {
                cluster: r.cluster.clone(),
                addrs: BTreeMap::new(),
                status: BTreeMap::new(),
            });
        group.cluster = r.cluster.clone();
        if let Some(old) = group.addrs.insert(r.broker_id, r.addr.clone())
            && old != r.addr
        {
            self.live.remove(&old);
        }
        group.status.insert(r.broker_id, r.ha.clone());
        let master_addr = group.addrs.get(&MASTER_ID).cloned();
        let master_ha_addr = group.status.get(&MASTER_ID).and_then(|s| s.ha_addr.clone());
        if r.broker_id == MASTER_ID {
            // The master's topic list is the group's: replace what it served before.
            for queues in self.topics.values_mut() {
                queues.remove(&r.broker_name);
            }
            for t in topics {
                self.topics.entry(t.name).or_default().insert(
                    r.broker_name.clone(),
                    QueueData {
                        broker_name: r.broker_name.clone(),
                        read_queues: t.read_queues,
                        write_queues: t.write_queues,
                        perm: t.perm,
                    },
                );
            }
            self.topics.retain(|_, q| !q.is_empty());
        }
        self.live.insert(
            r.addr,
            Live {
                broker_name: r.broker_name,
                broker_id: r.broker_id,
                last_seen: Instant::now(),
                conn_id,
            },
        );
        Ok(RegisterBrokerResponse {
            master_addr,
            master_ha_addr,
        })
    }

    /// Drops the broker at `addr`; its group goes with its last member.
    fn remove(&mut self, addr: &str, why: &str) {
        let Some(live) = self.live.remove(addr) else {
            return;
        };
        // A line per interval: one client registering many addresses and leaving made a
        // line each.
        DROPPED.record(|dropped| {
            info!(addr, broker = %live.broker_name, id = live.broker_id, why, dropped, "brokers dropped ({dropped} since the last line; the latest shown)");
        });
        let emptied = match self.groups.get_mut(&live.broker_name) {
            Some(g) => {
                if g.addrs.get(&live.broker_id).is_some_and(|a| a == addr) {
                    g.addrs.remove(&live.broker_id);
                    g.status.remove(&live.broker_id);
                }
                g.addrs.is_empty()
            }
            None => false,
        };
        if emptied {
            self.groups.remove(&live.broker_name);
            for queues in self.topics.values_mut() {
                queues.remove(&live.broker_name);
            }
            self.topics.retain(|_, q| !q.is_empty());
        }
    }

    fn broker_data(&self, name: &str) -> Option<BrokerData> {
        self.groups.get(name).map(|g| BrokerData {
            cluster: g.cluster.clone(),
            broker_name: name.to_owned(),
            addrs: g.addrs.iter().map(|(id, a)| (*id, a.clone())).collect(),
            status: g.status.iter().map(|(id, s)| (*id, s.clone())).collect(),
        })
    }

    fn route(&self, topic: &str) -> Option<TopicRoute> {
        let queues = self.topics.get(topic)?;
        Some(TopicRoute {
            queues: queues.values().cloned().collect(),
            brokers: queues.keys().filter_map(|n| self.broker_data(n)).collect(),
        })
    }

    fn cluster_info(&self) -> ClusterInfo {
        let mut brokers: Vec<BrokerData> = self
            .groups
            .keys()
            .filter_map(|n| self.broker_data(n))
            .collect();
        brokers.sort_by(|a, b| (&a.cluster, &a.broker_name).cmp(&(&b.cluster, &b.broker_name)));
        ClusterInfo { brokers }
    }
}

/// The request handler and its state.
pub struct NameServer {
    table: Mutex<Table>,
    /// The cluster secret, when set: registrations must be signed with it.
    secret: Option<SharedSecret>,
    /// Registrations refused for their signature.
    pub refused_registrations: Cause,
    /// `max_brokers` and `max_topics`.
    limits: (usize, usize),
    /// Registrations refused past them.
    over_limits: Cause,
    counters: metrics::Counters,
}

impl NameServer {
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        NameServer {
            table: Mutex::new(Table::default()),
            secret: None,
            refused_registrations: Cause::new(),
            limits: (usize::MAX, usize::MAX),
            over_limits: Cause::new(),
            counters: Default::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expire(&self, older_than: Duration) {
        let mut t = self.table();
        let now = Instant::now();
        let silent: Vec<String> = t
            .live
            .iter()
            .filter(|(_, l)| now.duration_since(l.last_seen) > older_than)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in silent {
            t.remove(&addr, "silent past the expiry");
        }
    }
}

/// How long a broker's signature is taken, either way of this clock.
const SIGNATURE_WINDOW_MS: u64 = 120_000;
/// Connections one cluster's brokers may open within the window (each is a session).
const MAX_BROKER_SESSIONS: usize = 100_000;

impl NameServer {
    /// Refuses a registration not signed with the cluster secret (when there is one).
    fn authenticate(&self, conn: &Connection, req: &Request) -> Result<(), Reply> {
        let Some(secret) = &self.secret else {
            return Ok(());
        };
        secret.check(&req.auth, &req.signed()).map_err(|e| {
            let peer = conn.peer();
            self.refused_registrations.record(|count| {
                warn!(%peer, error = %e, count, "refused broker registrations without the cluster secret: {count} since the last report, the latest shown")
            });
            Reply::error(
                e.code(),
                format!("registration refused: {e} (the broker's cluster_secret must match the name server's)"),
            )
        })
    }
}

fn bad(e: impl std::fmt::Display) -> Reply {
    Reply::error(ErrorCode::BadRequest, e.to_string())
}

impl Handler for NameServer {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let code = RequestCode::from_u16(req.code);
            if matches!(
                code,
                Some(RequestCode::RegisterBroker | RequestCode::UnregisterBroker)
            ) && let Err(refused) = self.authenticate(conn, &req)
            {
                return refused;
            }
            match code {
                Some(RequestCode::RegisterBroker) => match req.decode::<RegisterBroker>() {
                    Ok(r)
                        if r.broker_name.is_empty()
                            || r.addr.is_empty()
                            || r.cluster.is_empty() =>
                    {
                        bad("cluster, broker name and address must not be empty")
                    }
                    Ok(r) => match RegisteredTopics::decode(&req.body) {
                        Ok(t) => match self.table().register(r, t.topics, conn.id(), self.limits) {
                            Ok(registered) => {
                                metrics::Counters::bump(&self.counters.registrations);
                                Reply::ok(&registered)
                            }
                            Err(why) => {
                                self.over_limits.record(|count| {
                                        warn!(reason = %why, count, "broker registration refused ({count} since the last report)");
                                    });
                                Reply::error(ErrorCode::SystemBusy, why)
                            }
                        },
                        Err(e) => bad(e),
                    },
                    Err(e) => bad(e),
                },
                Some(RequestCode::UnregisterBroker) => match req.decode::<UnregisterBroker>() {
                    Ok(r) => {
                        metrics::Counters::bump(&self.counters.unregistrations);
                        self.table().remove(&r.addr, "unregistered");
                        Reply::ok(&())
                    }
                    Err(e) => bad(e),
                },
                Some(RequestCode::GetRoute) => match req.decode::<GetRoute>() {
                    Ok(r) => match self.table().route(&r.topic) {
                        Some(route) => {
                            metrics::Counters::bump(&self.counters.routes_found);
                            Reply::ok(&route)
                        }
                        None => {
                            metrics::Counters::bump(&self.counters.routes_missing);
                            Reply::error(
                                ErrorCode::TopicNotExist,
                                format!("no broker serves topic {:?}", r.topic),
                            )
                        }
                    },
                    Err(e) => bad(e),
                },
                Some(RequestCode::GetClusterInfo) => match req.decode::<GetClusterInfo>() {
                    Ok(_) => Reply::ok(&self.table().cluster_info()),
                    Err(e) => bad(e),
                },
                Some(RequestCode::GetAllTopics) => match req.decode::<GetAllTopics>() {
                    Ok(_) => Reply::ok(&TopicList {
                        topics: self
                            .table()
                            .shown_topics()
                            .map(|(t, _)| t.clone())
                            .collect(),
                    }),
                    Err(e) => bad(e),
                },
                Some(RequestCode::GetTopicSummaries) => match req.decode::<GetTopicSummaries>() {
                    Ok(_) => match self.table().topic_summaries().encode() {
                        Ok(body) => Reply::ok_with_body(&(), body),
                        Err(e) => Reply::error(ErrorCode::SystemError, e.to_string()),
                    },
                    Err(e) => bad(e),
                },
                _ => Reply::error(
                    ErrorCode::RequestCodeNotSupported,
                    format!("the name server does not serve request code {}", req.code),
                ),
            }
        })
    }

    fn on_close(&self, conn: &Connection) {
        let mut t = self.table();
        let gone: Vec<String> = t
            .live
            .iter()
            .filter(|(_, l)| l.conn_id == conn.id())
            .map(|(a, _)| a.clone())
            .collect();
        for addr in gone {
            t.remove(&addr, "connection closed");
        }
    }
}

/// A running name server.
pub struct RunningNameServer {
    server: Server,
    metrics: std::sync::Mutex<Option<MetricsServer>>,
    metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    ns: Arc<NameServer>,
}

impl RunningNameServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where the metrics endpoint listens, when on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// What its connections hold and what happened to them.
    pub fn net_stats(&self) -> ServerStats {
        self.server.stats()
    }

    /// Registrations and unregistrations refused for lacking the cluster secret, ever.
    pub fn refused_registrations(&self) -> u64 {
        self.ns.refused_registrations.total()
    }

    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let metrics = self
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(m) = metrics {
            m.shutdown().await;
        }
        self.server.shutdown().await;
    }
}

/// Starts a name server (on the current tokio runtime).
pub async fn start(config: NamesrvConfig) -> Result<RunningNameServer, NamesrvError> {
    if config.broker_expiry_ms == 0 || config.scan_interval_ms == 0 {
        return Err(NamesrvError::Config(
            "broker_expiry_ms and scan_interval_ms must be greater than 0".into(),
        ));
    }
    config
        .net
        .validate()
        .map_err(|e| NamesrvError::Config(e.to_string()))?;
    config.metrics.validate().map_err(NamesrvError::Config)?;
    if config.max_brokers == 0 || config.max_topics == 0 {
        return Err(NamesrvError::Config(
            "max_brokers and max_topics must be greater than 0".into(),
        ));
    }
    if config.tls.ca_file.is_some() {
        return Err(NamesrvError::Config(
            "tls.ca_file is for a broker's own connections; a name server opens none (leave it out)"
                .into(),
        ));
    }
    // Read now: a missing or bad file stops the start, naming it.
    let tls = config.tls.server()?;
    if config.net.idle_below_heartbeat() {
        warn!(
            idle_timeout_ms = config.net.idle_timeout_ms,
            "net.idle_timeout_ms is at or below the clients' 30 s heartbeat interval: their connections will be closed and reopened"
        );
    }
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|error| NamesrvError::Listen {
                addr: config.listen.clone(),
                error,
            })?;
    let secret = match config.cluster_secret.as_deref() {
        Some(s) => Some(
            SharedSecret::new(s, SIGNATURE_WINDOW_MS, MAX_BROKER_SESSIONS)
                .map_err(|e| NamesrvError::Config(format!("cluster_secret: {e}")))?,
        ),
        None => None,
    };
    let ns = Arc::new(NameServer {
        table: Mutex::new(Table::default()),
        secret,
        refused_registrations: Cause::new(),
        limits: (config.max_brokers, config.max_topics),
        over_limits: Cause::new(),
        counters: Default::default(),
    });
    if ns.secret.is_none() && listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        warn!(
            listen = %config.listen,
            "NO CLUSTER SECRET on a name server reachable beyond this machine: anyone who can reach it can register a broker under any name and take its routes. Set cluster_secret here and in every broker"
        );
    }
    // RocketMQ's clients ask for routes on the same port (`[net] remoting`).
    let server = Server::start_full(
        listener,
        ns.clone(),
        Some(Arc::new(remoting::RemotingNameServer(ns.clone()))),
        config.net.server_config(),
        tls,
    )
    .map_err(|error| NamesrvError::Listen {
        addr: config.listen.clone(),
        error,
    })?;
    let metrics = match &config.metrics.listen {
        Some(listen) => Some(
            metrics::start(&ns, listen, server.stats_handle())
                .await
                .map_err(|error| NamesrvError::Listen {
                    addr: listen.clone(),
                    error,
                })?,
        ),
        None => None,
    };
    let (stop, mut stop_rx) = watch::channel(false);
    let expiry = Duration::from_millis(config.broker_expiry_ms);
    let kept = Arc::clone(&ns);
    let scan = Duration::from_millis(config.scan_interval_ms);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(scan) => ns.expire(expiry),
                _ = stop_rx.wait_for(|s| *s) => break,
            }
        }
    });
    Ok(RunningNameServer {
        metrics_addr: metrics.as_ref().map(MetricsServer::local_addr),
        metrics: std::sync::Mutex::new(metrics),
        server,
        stop,
        ns: kept,
    })
}
