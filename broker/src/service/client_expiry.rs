//! Forgets clients not heard from for `client_expiry_ms`: their queue leases are freed and
//! their groups' other members are told.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let expiry = Duration::from_millis(broker.config.client_expiry_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10).min(expiry)) => {
                broker.forget(broker.clients.expire(expiry), "no heartbeat");
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}
