//! Keeps the broker registered with every name server: every `register_interval_ms`, and at
//! once when its topics (or their writability) change. Unregisters on stop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;
use weir_protocol::route::UnregisterBroker;
use weir_protocol::{ConnConfig, Connection, NoHandler};

use crate::broker::Broker;

const NAMESRV_TIMEOUT: Duration = Duration::from_secs(3);

/// One task per name server; returns once each has tried to register once.
pub async fn start(broker: &Arc<Broker>, stop: &watch::Sender<bool>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut first_rounds = Vec::new();
    for ns in broker.config.namesrv_addrs() {
        let (done, first) = oneshot::channel();
        first_rounds.push(first);
        tasks.push(tokio::spawn(run(
            Arc::clone(broker),
            ns,
            stop.subscribe(),
            done,
        )));
    }
    // Started means routable: wait for the first attempt with each name server (each
    // bounded by its timeouts; an unreachable one is retried in the loop).
    for first in first_rounds {
        let _ = first.await;
    }
    tasks
}

async fn run(
    broker: Arc<Broker>,
    namesrv: String,
    mut stop: watch::Receiver<bool>,
    first_done: oneshot::Sender<()>,
) {
    let interval = Duration::from_millis(broker.config.register_interval_ms);
    let mut changed = broker.topics_changed.subscribe();
    let mut conn: Option<Connection> = None;
    let mut first_done = Some(first_done);
    // Signed with the cluster secret, when there is one.
    let creds = broker.cluster_credentials();
    loop {
        if conn.as_ref().is_none_or(Connection::is_closed) {
            match Connection::connect_with(
                &namesrv,
                Arc::new(NoHandler),
                // The name server closes an idle connection if it wants; it is not idle
                // from this side between registrations.
                ConnConfig {
                    idle_timeout: None,
                    ..ConnConfig::default()
                },
                NAMESRV_TIMEOUT,
                broker.tls_client.as_ref(),
            )
            .await
            {
                Ok(c) => {
                    if let Some(creds) = &creds {
                        c.sign_with(Arc::clone(creds));
                    }
                    conn = Some(c)
                }
                Err(e) => {
                    warn!(namesrv = %namesrv, error = %e, "cannot reach name server; will retry")
                }
            }
        }
        if let Some(c) = &conn {
            let (header, topics) = broker.registration();
            match c.call(&header, topics, NAMESRV_TIMEOUT).await {
                Ok((r, _)) => {
                    // A slave learns where its master takes slaves.
                    if r.master_ha_addr.is_some() {
                        *broker
                            .replication
                            .learned_master
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = r.master_ha_addr;
                    }
                }
                Err(e) => {
                    warn!(namesrv = %namesrv, error = %e, "registration failed; will retry");
                    conn = None;
                }
            }
        }
        if let Some(done) = first_done.take() {
            let _ = done.send(());
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = changed.changed() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(c) = conn {
        let unregister = UnregisterBroker {
            cluster: broker.config.cluster.clone(),
            broker_name: broker.config.broker_name.clone(),
            broker_id: broker.config.broker_id,
            addr: broker.addr.clone(),
        };
        let _ = c.call(&unregister, Bytes::new(), NAMESRV_TIMEOUT).await;
        c.close();
    }
}
