//! Starting and stopping a broker: the one place the parts are put together.
//!
//! [`open`] builds the broker's state from its configuration (store, topics, filters)
//! without any network; [`start`] adds the listener with weir's protocol adapter and the
//! background services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_protocol::ha::BrokerRole;
use weir_protocol::metrics::MetricsServer;
use weir_protocol::{Server, ServerStats};
use weir_store::MessageStore;

use crate::acl::Acl;
use crate::adapter::remoting::RemotingAdapter;
use crate::adapter::weir::WeirAdapter;
use crate::broker::Broker;
use crate::clients::ClientRegistry;
use crate::config::BrokerConfig;
use crate::dispatch::FamilyLimits;
use crate::error::{BrokerError, ConfigError};
use crate::filter::{FilterRegistry, FilterRuntime};
use crate::holds::PullHolds;
use crate::locks::QueueLocks;
use crate::metrics::BrokerMetrics;
use crate::replication::Replication;
use crate::service;
use crate::service::ha_runtime::HaRuntime;
use crate::service::schedule::DelayLevels;
use crate::topics::TopicManager;

/// Opens the store, topics and filters of `config` and builds the broker's state; clients
/// are told to connect to `addr`. No listener and no background service: see [`start`].
pub async fn open(mut config: BrokerConfig, addr: String) -> Result<Arc<Broker>, BrokerError> {
    config.validate()?;
    // Read once: pulls compare against it.
    config.slave_read_behind_bytes = Some(config.slave_read_behind());
    if let Ok(a) = addr.parse::<SocketAddr>() {
        config.store.store_host = a;
    }
    // A slave's store copies its master's log (see `StoreConfig::replica`).
    config.store.replica = config.role == BrokerRole::Slave;
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || MessageStore::open(store_config))
        .await
        .map_err(|error| BrokerError::Task {
            what: "store open",
            error,
        })??;
    let store = Arc::new(store);
    let topics = TopicManager::open(&config.store.data_dir)?;
    let filters = {
        let (filter_config, data_dir) = (config.filter.clone(), config.store.data_dir.clone());
        tokio::task::spawn_blocking(move || {
            FilterRegistry::open(FilterRuntime::new(filter_config)?, &data_dir)
        })
        .await
        .map_err(|error| BrokerError::Task {
            what: "filter registry",
            error,
        })??
    };
    let holds = Arc::new(PullHolds::default());
    let log_grew = Arc::new(tokio::sync::Notify::new());
    {
        let (holds, log_grew) = (Arc::clone(&holds), Arc::clone(&log_grew));
        store.set_arrival_listener(move |topic, queue, _| {
            holds.wake(topic, queue);
            log_grew.notify_waiters();
        });
    }
    let metrics = BrokerMetrics::new(config.limits.max_topics);
    {
        let flush = Arc::clone(&metrics.flush_latency);
        store.set_sync_listener(move |d| flush.observe(d));
    }
    let (topics_changed, _) = watch::channel(0u64);
    let levels = DelayLevels::parse(&config.delay_levels)?;
    let locks = QueueLocks::new(Duration::from_millis(config.queue_lock_lease_ms));
    let limits = FamilyLimits::new(&config.limits);
    let tls_client = config.tls.client()?;
    let acl = match &config.acl.file {
        Some(path) => {
            let rules = Acl::load(path).map_err(ConfigError)?;
            tracing::info!(file = %path.display(), principals = rules.len(), "access control on");
            Acl::new(Some(rules))
        }
        None => Acl::new(None),
    };
    Ok(Arc::new(Broker {
        addr,
        store,
        topics,
        clients: ClientRegistry::default(),
        holds,
        topics_changed,
        filters: Arc::new(filters),
        levels,
        locks,
        limits,
        decisions: Default::default(),
        replication: Replication::new(config.role, log_grew),
        ha_addr: std::sync::Mutex::new(None),
        acl,
        metrics,
        counters: Default::default(),
        live: crate::live::LiveSettings::new(&config),
        tls_client,
        send_queue: Default::default(),
        retry_topics_not_made: Default::default(),
        config,
    }))
}

/// A running broker.
pub struct RunningBroker {
    broker: Arc<Broker>,
    server: Arc<Server>,
    /// A master's HA port, when it takes slaves.
    ha: Option<Server>,
    /// A slave's: the thread its link to the master runs on.
    ha_runtime: Option<HaRuntime>,
    /// The metrics endpoint, when `[metrics] listen` is set.
    metrics: Option<MetricsServer>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningBroker {
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where the metrics endpoint listens, when on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// What the broker's connections hold and what happened to them.
    pub fn net_stats(&self) -> ServerStats {
        self.server.stats()
    }

    /// Stops accepting, unregisters from the name servers, and closes the store cleanly.
    pub async fn shutdown(self) -> Result<(), BrokerError> {
        self.stop.send_replace(true);
        if let Some(m) = self.metrics {
            m.shutdown().await;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        self.server.shutdown().await;
        if let Some(ha) = &self.ha {
            ha.shutdown().await;
        }
        if let Some(rt) = self.ha_runtime {
            // (Joins its thread: off the runtime's workers.)
            let _ = tokio::task::spawn_blocking(move || rt.stop()).await;
        }
        self.broker.filters.runtime().shutdown();
        let store = Arc::clone(&self.broker.store);
        tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .map_err(|error| BrokerError::Task {
                what: "store shutdown",
                error,
            })??;
        Ok(())
    }
}

/// Opens the store and starts serving (on the current tokio runtime).
pub async fn start(config: BrokerConfig) -> Result<RunningBroker, BrokerError> {
    config.validate()?;
    // Read now: a missing or bad file stops the start, naming it.
    let tls = config.tls.server()?;
    let listen = |error| BrokerError::Listen {
        addr: config.listen.clone(),
        error,
    };
    let listener = TcpListener::bind(&config.listen).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    let addr = config
        .advertised_addr
        .clone()
        .unwrap_or_else(|| local.to_string());
    if config.net.idle_below_heartbeat() {
        tracing::warn!(
            idle_timeout_ms = config.net.idle_timeout_ms,
            "net.idle_timeout_ms is at or below the clients' 30 s heartbeat interval: their connections will be closed and reopened"
        );
    }
    if config.acl.file.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            listen = %local,
            "ACCESS CONTROL IS OFF on a broker reachable beyond this machine: anyone who can reach {local} can send, consume, delete topics and replace filters. Set [acl] file (see the README's \"Access control\")"
        );
    }
    let net = config.net.server_config();
    let broker = open(config, addr).await?;
    {
        // Before serving: decisions a crash left half-recorded are completed.
        let b = Arc::clone(&broker);
        tokio::task::spawn_blocking(move || b.reconcile_transactions())
            .await
            .map_err(|error| BrokerError::Task {
                what: "transaction reconciliation",
                error,
            })?;
    }
    // weir's frames and RocketMQ's remoting frames on the same port (`[net]` turns either
    // off), plaintext or TLS as `[tls]` says.
    let server = Server::start_full(
        listener,
        Arc::new(WeirAdapter(Arc::clone(&broker))),
        Some(Arc::new(RemotingAdapter(Arc::clone(&broker)))),
        net,
        tls.clone(),
    )
    .map_err(|error| BrokerError::Listen {
        addr: broker.config.listen.clone(),
        error,
    })?;
    if let Some(t) = &tls {
        tracing::info!(
            mode = t.mode().as_str(),
            "TLS on the client port and the HA port"
        );
    }
    let server = Arc::new(server);
    broker.counters.set_server(Arc::downgrade(&server));
    let is_master = broker.replication.role.is_master();
    // A slave's link to its master runs on a thread of its own.
    let ha_runtime = match is_master {
        true => None,
        false => Some(HaRuntime::start().map_err(|error| BrokerError::Thread {
            what: "replication",
            error,
        })?),
    };
    let ha = match &broker.config.ha_listen {
        Some(listen) if is_master => {
            let ha = service::ha_master::start(&broker, listen, tls)
                .await
                .map_err(|error| BrokerError::Listen {
                    addr: listen.clone(),
                    error,
                })?;
            *broker.ha_addr.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(ha.local_addr().to_string());
            Some(ha)
        }
        _ => None,
    };
    let metrics = match &broker.config.metrics.listen {
        Some(listen) => Some(
            service::metrics::start(&broker, listen, server.stats_handle())
                .await
                .map_err(|error| BrokerError::Listen {
                    addr: listen.clone(),
                    error,
                })?,
        ),
        None => None,
    };
    let (stop, _) = watch::channel(false);
    let tasks = service::start_all(&broker, &stop, ha_runtime.as_ref()).await;
    Ok(RunningBroker {
        broker,
        server,
        ha,
        ha_runtime,
        metrics,
        stop,
        tasks,
    })
}
