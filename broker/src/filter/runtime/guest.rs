//! The guest side of a call: what a store holds ([`GuestState`]), the limits wasmtime asks
//! it about, the host `log` function with its per-filter rate limit (`log_limit`), and the
//! wire form of a batch, lowered straight from borrowed record bytes.
//!
//! Invariants: guest text is sanitized (bounded, control characters escaped) before it is
//! logged; a refused memory grow is remembered, so the failure is named `MemoryExhausted`
//! rather than a trap; every store has the limiter and checks its call's time budget at each epoch deadline
//! (`budget`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::Level as TraceLevel;

use tracing::{debug, error, info, trace, warn};
use wasmtime::component::{ComponentType, Lower};
use wasmtime::{ResourceLimiter, Store};

use super::FilterRuntime;
use super::bindings;
use super::bindings::weir::filter::types::Level;
use super::budget::{self, Budgets, CallKind, CallStart, Exceeded};
use super::engine::{CORE_INSTANCES_PER_FILTER, TABLES_PER_FILTER};
use super::loaded::FilterShared;
use super::log_limit::LogLimit;
use super::types::{LogSink, sanitize};

/// What a store holds for its instance.
pub(super) struct GuestState {
    pub(super) memory_limit: usize,
    pub(super) memory_denied: bool,
    /// The largest linear memory the instance was granted, bytes (its memories are
    /// created and grown through the limiter).
    pub(super) memory_size: usize,
    log_line_max: usize,
    /// The limit of an upload-time `init` (no `shared`): its own, as no instance runs yet.
    init_log_limit: LogLimit,
    /// Where lines go instead of the broker's log (`weir filter test`: standard error).
    log_sink: Option<LogSink>,
    /// The last error-level line the guest logged (the SDK logs panics there), to explain
    /// a trap.
    pub(super) last_error_line: Option<String>,
    shared: Option<Arc<FilterShared>>,
    /// The limits of each kind of call, the kind of the running (last armed) call, where
    /// it started, and which limit stopped it.
    pub(super) budgets: Budgets,
    pub(super) armed: CallKind,
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
        self.memory_size = self.memory_size.max(desired);
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
        // The limit first: a spamming filter's dropped lines cost no sanitizing.
        let now = Instant::now();
        let allowed = match &self.shared {
            Some(shared) => shared.log_limit.lock().is_ok_and(|mut l| l.allow(now)),
            None => self.init_log_limit.allow(now),
        };
        let is_error = matches!(level, Level::Error);
        if !allowed && !is_error {
            if let Some(shared) = &self.shared {
                shared.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let message = sanitize(&message, self.log_line_max);
        if is_error {
            self.last_error_line = Some(message.clone());
        }
        let Some(shared) = &self.shared else {
            // Upload-time `init`: under its own limit, unlabeled by counters.
            if allowed {
                debug!(target: "weir::filter", "filter init: {message}");
            }
            return;
        };
        if !allowed {
            shared.log_lines_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(sink) = &self.log_sink {
            sink(trace_level(level), &message);
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

fn trace_level(level: Level) -> TraceLevel {
    match level {
        Level::Trace => TraceLevel::TRACE,
        Level::Debug => TraceLevel::DEBUG,
        Level::Info => TraceLevel::INFO,
        Level::Warn => TraceLevel::WARN,
        Level::Error => TraceLevel::ERROR,
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
                memory_size: 0,
                log_line_max: c.log_line_max,
                init_log_limit: LogLimit::new(c.log_lines_per_sec),
                log_sink: self.inner.log_sink.clone(),
                last_error_line: None,
                shared,
                budgets: self.inner.budgets,
                armed: CallKind::Batch,
                call: None,
                exceeded: None,
            },
        );
        store.limiter(|s| s);
        budget::install(&mut store);
        store
    }
}
