//! The guest side of a call: what a store holds ([`GuestState`]), the limits wasmtime asks
//! it about, the host `log` function with its per-filter rate limit, and the wire form of a
//! batch, lowered straight from borrowed record bytes.
//!
//! Invariants: guest text is sanitized (bounded, control characters escaped) before it is
//! logged; a refused memory grow is remembered, so the failure is named `MemoryExhausted`
//! rather than a trap; every store has the limiter and checks its call's time budget at each epoch deadline
//! (`budget`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{debug, error, info, trace, warn};
use wasmtime::component::{ComponentType, Lower};
use wasmtime::{ResourceLimiter, Store};

use super::FilterRuntime;
use super::bindings;
use super::bindings::weir::filter::types::Level;
use super::budget::{self, Budget, CallStart, Exceeded};
use super::engine::{CORE_INSTANCES_PER_FILTER, TABLES_PER_FILTER};
use super::loaded::FilterShared;
use super::types::sanitize;

/// What a store holds for its instance.
pub(super) struct GuestState {
    memory_limit: usize,
    pub(super) memory_denied: bool,
    log_line_max: usize,
    log_lines_per_sec: u32,
    /// The last error-level line the guest logged (the SDK logs panics there), to explain
    /// a trap.
    pub(super) last_error_line: Option<String>,
    shared: Option<Arc<FilterShared>>,
    /// The limits of each call, where the running call started, and which limit stopped it.
    pub(super) budget: Budget,
    pub(super) call: Option<CallStart>,
    pub(super) exceeded: Option<Exceeded>,
}

impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_denied = true;
            wasmtime::bail!(
                "memory cap of {} bytes reached (asked for {desired})",
                self.memory_limit
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        CORE_INSTANCES_PER_FILTER as usize
    }
    fn tables(&self) -> usize {
        TABLES_PER_FILTER as usize
    }
    fn memories(&self) -> usize {
        1
    }
}

impl bindings::weir::filter::types::Host for GuestState {}

impl bindings::weir::filter::host::Host for GuestState {
    fn log(&mut self, level: Level, message: String) {
        let message = sanitize(&message, self.log_line_max);
        if matches!(level, Level::Error) {
            self.last_error_line = Some(message.clone());
        }
        let Some(shared) = &self.shared else {
            // Upload-time `init`: log through, unlabeled by counters.
            debug!(target: "weir::filter", "filter init: {message}");
            return;
        };
        let allowed = shared.log_budget.lock().is_ok_and(|mut b| {
            let now = Instant::now();
            let rate = f64::from(self.log_lines_per_sec);
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate * 2.0);
            b.last = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                false
            }
        });
        if !allowed {
            shared.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let l = &shared.label;
        let (group, topic, version) = (&l.group, &l.topic, l.version);
        match level {
            Level::Trace => trace!(target: "weir::filter", group, topic, version, "{message}"),
            Level::Debug => debug!(target: "weir::filter", group, topic, version, "{message}"),
            Level::Info => info!(target: "weir::filter", group, topic, version, "{message}"),
            Level::Warn => warn!(target: "weir::filter", group, topic, version, "{message}"),
            Level::Error => error!(target: "weir::filter", group, topic, version, "{message}"),
        }
    }
}

/// The batch call's arguments, lowered straight from borrowed record bytes.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(super) struct WireContext<'a> {
    pub(super) topic: &'a str,
    #[component(name = "queue-id")]
    pub(super) queue_id: u32,
    #[component(name = "consumer-group")]
    pub(super) consumer_group: &'a str,
}

#[derive(ComponentType, Lower)]
#[component(record)]
pub(super) struct WireMessage<'a> {
    #[component(name = "queue-offset")]
    pub(super) queue_offset: u64,
    #[component(name = "born-timestamp")]
    pub(super) born_timestamp: i64,
    #[component(name = "store-timestamp")]
    pub(super) store_timestamp: i64,
    #[component(name = "reconsume-count")]
    pub(super) reconsume_count: u32,
    #[component(name = "attributes-at")]
    pub(super) attributes_at: u32,
    #[component(name = "attributes-len")]
    pub(super) attributes_len: u32,
    pub(super) body: Option<&'a [u8]>,
}

impl FilterRuntime {
    /// A store for one instance of a filter: `memory_limit` bytes of linear memory at most
    /// (the filter's own cap); `shared` is `None` for the upload-time `init`.
    pub(super) fn new_store(
        &self,
        memory_limit: usize,
        shared: Option<Arc<FilterShared>>,
    ) -> Store<GuestState> {
        let c = &self.inner.config;
        let mut store = Store::new(
            &self.inner.engine,
            GuestState {
                memory_limit,
                memory_denied: false,
                log_line_max: c.log_line_max,
                log_lines_per_sec: c.log_lines_per_sec,
                last_error_line: None,
                shared,
                budget: self.inner.budget,
                call: None,
                exceeded: None,
            },
        );
        store.limiter(|s| s);
        budget::install(&mut store);
        store
    }
}
