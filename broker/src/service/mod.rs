//! The broker's background work, one service each, all stopped by one signal:
//!
//! - [`schedule`]: delayed messages (delay levels), one task per level;
//! - [`registration`]: keeping the broker registered with every name server;
//! - [`client_expiry`]: forgetting clients that stopped heartbeating;
//! - [`writability`]: routes turn read-only while the store refuses writes;
//! - [`transaction_check`]: asking producers about undecided half messages;
//! - [`acl_reload`]: putting a changed ACL file in force;
//! - [`metrics`]: the Prometheus endpoint (started with the listener, when configured).
//! - [`ha_master`], [`ha_slave`]: replication, a master's HA port and a slave's link to its
//!   master, the link on a thread of its own ([`ha_runtime`]).
//!
//! The store's own services (flush, checkpoint and consumer offsets, retention) run
//! inside `weir-store`.

pub mod acl_reload;
pub mod client_expiry;
pub mod ha_master;
pub mod ha_runtime;
pub mod ha_slave;
pub mod metrics;
pub mod registration;
pub mod schedule;
pub mod transaction_check;
pub mod writability;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use ha_runtime::HaRuntime;

/// Starts every service; returns once the broker has tried once to register with each
/// name server (started means routable).
/// `slave_link`: a slave's replication thread, where its link to the master runs (see
/// [`ha_runtime`]); `None` for a master.
pub async fn start_all(
    broker: &Arc<Broker>,
    stop: &watch::Sender<bool>,
    slave_link: Option<&HaRuntime>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = schedule::start(broker, stop);
    tasks.extend(registration::start(broker, stop).await);
    tasks.push(tokio::spawn(client_expiry::run(
        Arc::clone(broker),
        stop.subscribe(),
    )));
    tasks.push(tokio::spawn(transaction_check::run(
        Arc::clone(broker),
        stop.subscribe(),
    )));
    if let Some(rt) = slave_link {
        tasks.push(rt.spawn(ha_slave::run(Arc::clone(broker), stop.subscribe())));
    }
    tasks.push(tokio::spawn(writability::run(
        Arc::clone(broker),
        stop.subscribe(),
    )));
    if let Some(path) = &broker.config.acl.file {
        tasks.push(tokio::spawn(acl_reload::run(
            Arc::clone(broker),
            path.clone(),
            stop.subscribe(),
        )));
    }
    tasks
}
