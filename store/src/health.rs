//! The store's health after a failed sync.
//!
//! Invariant: once a sync of the store's files has failed, no append is accepted and no
//! checkpoint or consumer offset is written again until the store is reopened. After a
//! failed `fsync`/`msync` the kernel may have dropped the dirty pages it could not write
//! and marked them clean, so a retry that "succeeds" proves nothing (PostgreSQL's
//! "fsyncgate"); only recovery, which re-reads what is really on disk, can say what
//! survived. Reads go on meanwhile.
//!
//! Also the hooks tests use to inject a failing or slow sync.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tracing::error;

use crate::error::{Result, StoreError};

#[derive(Default)]
pub(crate) struct Health {
    failed: OnceLock<String>,
    injected_failure: Mutex<Option<String>>,
    injected_delay_ms: AtomicU64,
}

impl Health {
    /// Refuses an append after a failed sync.
    pub fn check_writable(&self) -> Result<()> {
        match self.failed.get() {
            Some(cause) => Err(StoreError::WritesStopped {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// What failed, if a sync did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Runs the sync `f` of `what`: refused after an earlier failure; a failure now stops
    /// writes for good.
    pub fn sync<T>(&self, what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_writable()?;
        let delay = self.injected_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let injected = self.injected_failure.lock().clone();
        let result = match injected {
            Some(cause) => Err(StoreError::FlushFailed(cause)),
            None => f(),
        };
        if let Err(e) = &result {
            let cause = format!("{what}: {e}");
            if self.failed.set(cause.clone()).is_ok() {
                error!(
                    cause,
                    "a sync of the store failed: sends are refused from now on (reads continue); restart the broker so that recovery re-reads what is really on disk"
                );
            }
        }
        result
    }

    /// A write the store's files depend on failed (not a sync, but as fatal): stop writes.
    pub fn fail(&self, what: &'static str, e: &StoreError) {
        let cause = format!("{what}: {e}");
        if self.failed.set(cause.clone()).is_ok() {
            error!(
                cause,
                "a write of the store failed: sends are refused from now on (reads continue); restart the broker so that recovery rebuilds what is derived from the log"
            );
        }
    }

    /// Makes every sync from now on fail with `cause` (tests).
    pub fn inject_failure(&self, cause: &str) {
        *self.injected_failure.lock() = Some(cause.to_owned());
    }

    /// Makes every sync from now on take `delay` longer (tests).
    pub fn inject_delay(&self, delay: Duration) {
        self.injected_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}
