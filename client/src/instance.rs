//! What producers, consumers and admin share: name servers, route cache, connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Mutex;
use tracing::debug;
use weir_protocol::auth::{Credentials, random_u64};
use weir_protocol::broker::{ConsumerData, Heartbeat, MessageModel};
use weir_protocol::net::ClientTls;
use weir_protocol::route::{GetClusterInfo, GetRoute, TopicRoute};
use weir_protocol::{CallError, ConnConfig, Connection, ErrorCode, Rpc};

use crate::faults::{self, Faults};
use crate::routes::AddrNames;
pub use crate::routes::PublishInfo;
use crate::serve::{ClientHandler, Served};
use crate::{ClientError, Result};

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name servers, `host:port;host:port`; tried in turn when one fails.
    pub namesrv: String,
    /// Timeout of one request (default 3 s).
    pub request_timeout: Duration,
    /// Routes older than this are fetched again (default 30 s); a route with a broker
    /// whose master is missing, after at most [`DEGRADED_ROUTE_REFRESH`].
    pub route_refresh: Duration,
    /// A broker that cannot be reached is avoided (producers send elsewhere, consumers
    /// read from its slave) for this long after its first failure, twice as long after
    /// each further one, up to `fault_backoff_max` (defaults 1 s and 30 s).
    pub fault_backoff_min: Duration,
    pub fault_backoff_max: Duration,
    /// A broker that answers busy (`StoreBusy`: its store is behind; nothing was stored)
    /// is avoided for this long, twice as long after each further busy answer in a row, up
    /// to 32 times this (and `fault_backoff_max`): sends go to other brokers meanwhile, and a retry on the same
    /// broker waits the pause out (default 50 ms).
    pub busy_backoff: Duration,
    /// Signs every request with this access key and secret (brokers with access control
    /// on take only signed requests); default none.
    pub credentials: Option<Arc<Credentials>>,
    /// Connects to name servers and brokers over TLS, verifying each server's certificate
    /// against these CA certificates for the host part of its address (an IP address needs
    /// an IP subject alternative name); default none: plaintext.
    pub tls: Option<ClientTls>,
}

/// How long a route that lacks a master is trusted: its master's return is noticed
/// within this.
pub const DEGRADED_ROUTE_REFRESH: Duration = Duration::from_secs(2);

impl ClientConfig {
    pub fn new(namesrv: impl Into<String>) -> Self {
        Self {
            namesrv: namesrv.into(),
            request_timeout: Duration::from_secs(3),
            route_refresh: Duration::from_secs(30),
            fault_backoff_min: Duration::from_secs(1),
            fault_backoff_max: Duration::from_secs(30),
            busy_backoff: Duration::from_millis(50),
            credentials: None,
            tls: None,
        }
    }

    /// Connects over TLS, trusting the CA certificates of the PEM file at `ca_file`.
    pub fn with_tls_ca(mut self, ca_file: impl AsRef<std::path::Path>) -> Result<Self> {
        self.tls = Some(ClientTls::from_ca_file(ca_file.as_ref())?);
        Ok(self)
    }

    /// Signs every request with `access_key` and `secret`.
    pub fn with_credentials(mut self, access_key: &str, secret: &str) -> Result<Self> {
        let creds = Credentials::new(access_key, secret)
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.credentials = Some(Arc::new(creds));
        Ok(self)
    }
}

/// Groups this client takes part in, announced to brokers by heartbeat.
#[derive(Default)]
struct Groups {
    producers: std::collections::BTreeSet<String>,
    consumers: std::collections::BTreeMap<String, ConsumerData>,
}

/// How often heartbeats go to every broker.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

struct CachedRoute {
    route: Arc<TopicRoute>,
    fetched: Instant,
    /// How long it is trusted: shorter while a broker in it has no master.
    ttl: Duration,
    /// The writable queues with their masters, made on first use.
    publish: std::sync::OnceLock<Arc<PublishInfo>>,
}

/// Shared client state; cheap to clone.
#[derive(Clone)]
pub struct ClientInstance {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// How brokers know this client: `pid@random`.
    client_id: String,
    groups: std::sync::Mutex<Groups>,
    heartbeat_started: std::sync::atomic::AtomicBool,
    namesrvs: Vec<String>,
    /// The name server tried first (the last one that answered).
    preferred: AtomicUsize,
    /// Open connections by address; read on every call, written when one opens.
    conns: std::sync::RwLock<HashMap<String, Connection>>,
    /// One connection attempt at a time.
    connecting: Mutex<()>,
    /// Read on every send, written when a route is fetched.
    routes: std::sync::RwLock<HashMap<String, CachedRoute>>,
    /// The master addresses publish infos point at, one copy each.
    addr_names: AddrNames,
    faults: Faults,
    /// What brokers ask of this client (rebalance notices, transaction check-backs).
    served: Arc<Served>,
}

impl ClientInstance {
    pub fn new(config: ClientConfig) -> Result<Self> {
        let namesrvs: Vec<String> = config
            .namesrv
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if namesrvs.is_empty() {
            return Err(ClientError::Invalid("no name server address given".into()));
        }
        let faults = Faults::new(
            config.fault_backoff_min,
            config.fault_backoff_max,
            config.busy_backoff,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                client_id: format!("{}@{:08x}", std::process::id(), random_u64() as u32),
                groups: std::sync::Mutex::new(Groups::default()),
                heartbeat_started: std::sync::atomic::AtomicBool::new(false),
                config,
                namesrvs,
                preferred: AtomicUsize::new(0),
                conns: std::sync::RwLock::new(HashMap::new()),
                connecting: Mutex::new(()),
                routes: std::sync::RwLock::new(HashMap::new()),
                addr_names: AddrNames::default(),
                faults,
                served: Arc::default(),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Announces a producer group (to brokers, by heartbeat).
    pub fn register_producer(&self, group: &str) {
        self.groups().producers.insert(group.to_owned());
        self.heartbeat_soon();
    }

    /// Announces a consumer group and what it subscribes to.
    pub fn register_consumer(
        &self,
        group: &str,
        model: MessageModel,
        subscriptions: Vec<(String, String)>,
    ) {
        let data = ConsumerData {
            group: group.to_owned(),
            model,
            subscriptions,
        };
        self.groups().consumers.insert(group.to_owned(), data);
        self.heartbeat_soon();
    }

    /// Stops announcing a consumer group, and tells every master now (its other members
    /// then rebalance).
    pub async fn unregister_consumer(&self, group: &str) -> Result<()> {
        self.forget_consumer(group);
        self.heartbeat().await
    }

    /// Stops announcing a consumer group from the next heartbeat on.
    pub(crate) fn forget_consumer(&self, group: &str) {
        self.groups().consumers.remove(group);
    }

    /// Whether this client announces a consumer of `group`.
    pub fn consumes(&self, group: &str) -> bool {
        self.groups().consumers.contains_key(group)
    }

    /// Fired when a broker says `group`'s members changed.
    pub(crate) fn rebalance_trigger(&self, group: &str) -> Arc<tokio::sync::Notify> {
        self.inner.served.rebalance.of(group)
    }

    /// Who answers the check-backs of this client's transactional producers.
    pub(crate) fn served(&self) -> &Served {
        &self.inner.served
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.inner.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a heartbeat says: this client's groups.
    fn heartbeat_message(&self) -> Heartbeat {
        let g = self.groups();
        Heartbeat {
            client_id: self.inner.client_id.clone(),
            producer_groups: g.producers.iter().cloned().collect(),
            consumers: g.consumers.values().cloned().collect(),
        }
    }

    /// A new connection to a broker (a restarted one, say) tells it this client's groups
    /// at once, not at the next heartbeat: it can reach this client's transactional
    /// producers with check-backs from now on.
    fn heartbeat_on_new_connection(&self, addr: &str) {
        if self.inner.namesrvs.iter().any(|n| n == addr) {
            return;
        }
        {
            let g = self.groups();
            if g.producers.is_empty() && g.consumers.is_empty() {
                return;
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (me, addr) = (self.clone(), addr.to_owned());
        rt.spawn(async move {
            let hb = me.heartbeat_message();
            if let Err(e) = me.call(&addr, &hb, Bytes::new()).await {
                debug!(broker = %addr, error = %e, "heartbeat on a new connection failed");
            }
        });
    }

    /// Sends a heartbeat to every master broker now.
    pub async fn heartbeat(&self) -> Result<()> {
        let hb = self.heartbeat_message();
        let info = self
            .call_namesrv(&GetClusterInfo)
            .await
            .map_err(|e| ClientError::NoNameServer(e.to_string()))?;
        // A master that is down does not keep the others from hearing from us.
        let mut failed = None;
        for b in &info.brokers {
            if let Some(addr) = b.master_addr()
                && let Err(e) = self.call(addr, &hb, Bytes::new()).await
            {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Starts the heartbeat loop on first use (it ends when the last handle is dropped),
    /// and sends one heartbeat at once.
    fn heartbeat_soon(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let first = !self.inner.heartbeat_started.swap(true, Ordering::AcqRel);
        rt.spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let client = ClientInstance { inner };
                if let Err(e) = client.heartbeat().await {
                    debug!(error = %e, "heartbeat failed");
                }
                drop(client);
                if !first {
                    return;
                }
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            }
        });
    }

    /// A live connection to `addr`, reused across calls.
    pub async fn connection(&self, addr: &str) -> Result<Connection, CallError> {
        if let Some(c) = self.open_connection(addr) {
            return Ok(c);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(c) = self.open_connection(addr) {
            return Ok(c);
        }
        let c = Connection::connect_with(
            addr,
            Arc::new(ClientHandler(Arc::clone(&self.inner.served))),
            ConnConfig::default(),
            self.inner.config.request_timeout,
            self.inner.config.tls.as_ref(),
        )
        .await?;
        if let Some(creds) = &self.inner.config.credentials {
            c.sign_with(Arc::clone(creds));
        }
        self.inner
            .conns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr.to_owned(), c.clone());
        self.heartbeat_on_new_connection(addr);
        Ok(c)
    }

    fn open_connection(&self, addr: &str) -> Option<Connection> {
        let conns = self.inner.conns.read().unwrap_or_else(|e| e.into_inner());
        conns.get(addr).filter(|c| !c.is_closed()).cloned()
    }

    /// Calls a broker (or any server) at `addr`.
    pub async fn call<R: Rpc>(
        &self,
        addr: &str,
        req: &R,
        body: Bytes,
    ) -> Result<(R::Response, Bytes)> {
        self.call_with_timeout(addr, req, body, self.inner.config.request_timeout)
            .await
    }

    /// Records whether the broker at `addr` could be reached.
    fn note<T>(&self, addr: &str, result: &Result<T, CallError>) {
        match result {
            Err(e) if faults::unreachable(e) => self.inner.faults.failed(addr),
            Err(e) if faults::busy(e) => self.inner.faults.busy(addr),
            _ => self.inner.faults.answered(addr),
        }
    }

    #[cfg(test)]
    pub(crate) fn mark_unreachable(&self, addr: &str) {
        self.inner.faults.failed(addr);
    }

    /// Whether the broker at `addr` may be tried now: it was not found unreachable
    /// lately (see `ClientConfig::fault_backoff_min`).
    pub fn available(&self, addr: &str) -> bool {
        self.inner.faults.available(addr)
    }

    /// How long the broker at `addr` is still avoided (zero: it may be tried now).
    pub(crate) fn pause_left(&self, addr: &str) -> Duration {
        self.inner.faults.pause_left(addr)
    }

    /// Like `call`, with a longer timeout (held pulls).
    pub async fn call_with_timeout<R: Rpc>(
        &self,
        addr: &str,
        req: &R,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(R::Response, Bytes)> {
        let broker = |error| ClientError::Broker {
            broker: addr.to_owned(),
            error,
        };
        let result = match self.connection(addr).await {
            Ok(conn) => conn.call(req, body, timeout).await,
            Err(e) => Err(e),
        };
        self.note(addr, &result);
        result.map_err(broker)
    }

    /// Calls the name servers, starting with the one that answered last, moving on when
    /// one cannot be reached. A name server's own error answer is returned as is.
    pub async fn call_namesrv<R: Rpc>(&self, req: &R) -> Result<R::Response, CallError> {
        self.call_namesrv_with_body(req).await.map(|(v, _)| v)
    }

    /// [`ClientInstance::call_namesrv`], with the answer's body.
    pub async fn call_namesrv_with_body<R: Rpc>(
        &self,
        req: &R,
    ) -> Result<(R::Response, Bytes), CallError> {
        let n = self.inner.namesrvs.len();
        let first = self.inner.preferred.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let idx = (first + i) % n;
            let addr = &self.inner.namesrvs[idx];
            let result = match self.connection(addr).await {
                Ok(conn) => {
                    conn.call(req, Bytes::new(), self.inner.config.request_timeout)
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(answer) => {
                    self.inner.preferred.store(idx, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e @ CallError::Remote { .. }) => return Err(e),
                Err(e) => {
                    debug!(namesrv = %addr, error = %e, "name server unavailable, trying the next");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(CallError::Closed {
            peer: "no name server".into(),
        }))
    }

    /// The topic's route, from the cache unless stale or `refresh`.
    pub async fn route(&self, topic: &str, refresh: bool) -> Result<Arc<TopicRoute>> {
        if !refresh {
            let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = routes.get(topic)
                && c.fetched.elapsed() < c.ttl
            {
                return Ok(Arc::clone(&c.route));
            }
        }
        let fetched = self
            .call_namesrv(&GetRoute {
                topic: topic.to_owned(),
            })
            .await;
        let route = match fetched {
            Ok(r) => Arc::new(r),
            Err(CallError::Remote {
                code: ErrorCode::TopicNotExist,
                message,
            }) => {
                return Err(ClientError::NoRoute {
                    topic: topic.to_owned(),
                    detail: message,
                });
            }
            Err(e) => return Err(ClientError::NoNameServer(e.to_string())),
        };
        let mut ttl = self.inner.config.route_refresh;
        if route.brokers.iter().any(|b| b.master_addr().is_none())
            || route
                .queues
                .iter()
                .any(|q| !route.brokers.iter().any(|b| b.broker_name == q.broker_name))
        {
            ttl = ttl.min(DEGRADED_ROUTE_REFRESH);
        }
        self.inner
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                topic.to_owned(),
                CachedRoute {
                    route: Arc::clone(&route),
                    fetched: Instant::now(),
                    ttl,
                    publish: std::sync::OnceLock::new(),
                },
            );
        Ok(route)
    }

    /// The writable queues of `topic` and their masters, from the cached route when it is
    /// fresh (`refresh` fetches it again); for a topic no broker serves yet, every master's
    /// (see `route_for_send`).
    pub(crate) async fn publish_info(
        &self,
        topic: &str,
        refresh: bool,
    ) -> Result<Arc<PublishInfo>> {
        if !refresh {
            let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = routes.get(topic)
                && c.fetched.elapsed() < c.ttl
            {
                let made = c
                    .publish
                    .get_or_init(|| self.publish_info_of(Arc::clone(&c.route), topic));
                return Ok(Arc::clone(made));
            }
        }
        let route = match refresh {
            true => match self.route(topic, true).await {
                Ok(r) => r,
                Err(_) => self.route_for_send(topic).await?,
            },
            false => self.route_for_send(topic).await?,
        };
        Ok(self.publish_info_of(route, topic))
    }

    /// `topic`'s publish info from `route`, pointing at the shared address copies.
    fn publish_info_of(&self, route: Arc<TopicRoute>, topic: &str) -> Arc<PublishInfo> {
        Arc::new(PublishInfo::new(route, topic, &self.inner.addr_names))
    }

    /// The route, or, for a topic no broker serves yet, a route to every master for its
    /// first send (brokers create topics on first send when allowed).
    pub(crate) async fn route_for_send(&self, topic: &str) -> Result<Arc<TopicRoute>> {
        match self.route(topic, false).await {
            Ok(r) => Ok(r),
            Err(ClientError::NoRoute { .. }) => {
                let info = self
                    .call_namesrv(&weir_protocol::route::GetClusterInfo)
                    .await
                    .map_err(|e| ClientError::NoNameServer(e.to_string()))?;
                if info.brokers.is_empty() {
                    return Err(ClientError::NoRoute {
                        topic: topic.to_owned(),
                        detail: "no broker is registered".into(),
                    });
                }
                Ok(Arc::new(TopicRoute {
                    queues: info
                        .brokers
                        .iter()
                        .map(|b| weir_protocol::route::QueueData {
                            broker_name: b.broker_name.clone(),
                            read_queues: 4,
                            write_queues: 4,
                            perm: weir_protocol::route::perm::READ_WRITE,
                        })
                        .collect(),
                    brokers: info.brokers,
                }))
            }
            Err(e) => Err(e),
        }
    }
}
