//! Reloads the ACL file when it changes: its modification time and length are looked at
//! every `acl.reload_interval_ms`; a changed file is parsed and put in force at once. A
//! file that does not parse (or cannot be read) leaves the rules in force as they are and
//! logs an error, once per change.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{error, info};

use crate::acl::Acl;
use crate::broker::Broker;

/// What the file looked like when last read.
type Seen = Option<(SystemTime, u64)>;

fn look(path: &PathBuf) -> Seen {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

pub async fn run(broker: Arc<Broker>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(broker.config.acl.reload_interval_ms);
    // The file as loaded at start.
    let mut seen = look(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = look(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Acl::load(&p)).await;
        match loaded {
            Ok(Ok(rules)) => {
                info!(file = %path.display(), principals = rules.len(), "ACL file reloaded");
                broker.acl.replace(rules);
                broker.acl.stats.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                broker
                    .acl
                    .stats
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "ACL file not reloaded: the rules in force stay as they were")
            }
            Err(e) => {
                broker
                    .acl
                    .stats
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "ACL reload task failed")
            }
        }
    }
}
