//! Re-registers with the name servers when the store starts or stops refusing writes (a
//! full disk, a failed sync), so routes say at once whether this broker takes sends; and
//! says so in the log, once per change.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use crate::broker::Broker;

pub async fn run(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut refused = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = broker.store.write_refusal();
        if now.is_some() == refused {
            continue;
        }
        refused = now.is_some();
        match now {
            Some(why) => {
                error!(reason = %why, "the store refuses writes: this broker's routes are now read-only; consumers keep reading")
            }
            None => info!("the store accepts writes again: routes writable"),
        }
        broker.topics_updated();
    }
}
