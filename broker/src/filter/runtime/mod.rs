//! The sandbox: compiles and checks uploaded components, and runs filter batches on worker
//! threads that keep one instance per filter, under a memory cap, a CPU-time budget and a
//! stack cap.
//!
//! Costs decide the shape (see `../shared/reference/wasm.md`): compiling takes tens of ms,
//! so it happens once per component and the artifact is cached; instantiating plus `init`
//! takes tens of µs, so instances live across pulls; a call crossing costs ~0.1 µs plus a
//! copy per list, so messages go in batches and each carries one attribute list borrowed
//! straight from the stored record (no re-encoding, no per-message allocation).
//!
//! One job per module, this one being the public face ([`FilterRuntime`], and the
//! re-exports callers use):
//! - `engine`: the wasmtime `Engine` (pooling allocator, epoch clock), compiling, and the
//!   compiled-code cache format;
//! - `budget`: the time budget of a call, counted in the calling thread's CPU time;
//! - `imports`: what a filter may import, what is linked or stubbed, and why the rest is
//!   refused;
//! - `guest`: what a store holds, the host functions a filter calls, the wire form of a
//!   batch; `log_limit`: the exact guest log rate limit;
//! - `schedule`: which job runs next and where (per-group turns and caps, routing by
//!   filter, queue bounds);
//! - `pool`: the worker threads, and [`DirectCaller`];
//! - `worker`: a worker's instances, kept across batches, and how a failed call is named;
//! - `types` and `loaded`: what callers hand in and get back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use wasmtime::Engine;
use wasmtime::component::Linker;

use super::{FilterConfig, FilterError};

mod budget;
mod compile_cache;
mod engine;
mod guest;
mod imports;
mod loaded;
mod log_limit;
mod pool;
mod schedule;
mod types;
mod worker;

pub use compile_cache::CompileCacheStats;
pub use engine::{CompiledFilter, deflate, inflate, sha256_hex};
pub use loaded::LoadedFilter;
pub use pool::DirectCaller;
pub use types::{
    BatchContext, FailureKind, FilterFailure, FilterLabel, LogSink, RecordBatch, RecordBytes,
};

use guest::GuestState;
use pool::Job;
use schedule::{Refusal, Turn};
use worker::{InitError, init_instance};

mod bindings {
    wasmtime::component::bindgen!({
        world: "message-filter",
        // The one copy of the WIT, inside the SDK crate (the root `wit/` links to it).
        path: "../filter-sdk/wit",
    });
}

/// The world with the messages packed (`packed-filter`), sharing the host and the types
/// with [`bindings`].
mod packed_bindings {
    wasmtime::component::bindgen!({
        world: "packed-message-filter",
        path: "../filter-sdk/wit",
        with: {
            "weir:filter/types": super::bindings::weir::filter::types,
            "weir:filter/host": super::bindings::weir::filter::host,
        },
    });
}

struct Inner {
    engine: Engine,
    linker: Linker<GuestState>,
    config: FilterConfig,
    scheduler: Arc<schedule::Scheduler<worker::Worker>>,
    next_id: AtomicU64,
    budgets: budget::Budgets,
    stop: Arc<AtomicBool>,
    compat_hash: String,
    compile_cache: Arc<compile_cache::CompileCache>,
    log_sink: Option<LogSink>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.scheduler.stop();
    }
}

/// The filter sandbox of one broker: cheap to clone.
#[derive(Clone)]
pub struct FilterRuntime {
    inner: Arc<Inner>,
}

impl FilterRuntime {
    pub fn new(config: FilterConfig) -> Result<Self, FilterError> {
        Self::with_log_sink(config, None)
    }

    /// A runtime whose filters' log lines (after the rate limit and the length cap) go to
    /// `log_sink` instead of the broker's log, when given.
    pub fn with_log_sink(
        config: FilterConfig,
        log_sink: Option<LogSink>,
    ) -> Result<Self, FilterError> {
        config.validate().map_err(FilterError::Invalid)?;
        let (engine, compile_cache) = engine::new_engine(&config)?;
        let linker = imports::host_linker(&engine)?;
        let (budgets, stop) = engine::start_epoch_clock(&engine, &config)?;
        let scheduler = pool::start_workers(&config)?;
        let compat_hash = engine::compat_hash(&engine);
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                scheduler,
                next_id: AtomicU64::new(1),
                budgets,
                stop,
                compat_hash,
                compile_cache,
                config,
                log_sink,
            }),
        })
    }

    pub fn config(&self) -> &FilterConfig {
        &self.inner.config
    }

    /// Identifies the engine's compiled-code format: compiled artifacts are cached under it,
    /// so a broker with another wasmtime or other settings compiles afresh.
    pub fn compatibility_hash(&self) -> &str {
        &self.inner.compat_hash
    }

    /// How Cranelift's cache of compiled functions served so far.
    pub fn compile_cache_stats(&self) -> CompileCacheStats {
        self.inner.compile_cache.stats()
    }

    /// Stops the workers once queued jobs are done.
    pub fn shutdown(&self) {
        self.inner.scheduler.stop();
        self.inner.stop.store(true, Ordering::Relaxed);
    }

    /// Runs `init` with `params` once, to validate them and learn what the filter needs,
    /// and makes the filter ready to run, its instances capped at `memory` bytes (checked
    /// with [`FilterRuntime::check_memory`]). Blocking.
    pub fn load(
        &self,
        compiled: CompiledFilter,
        params: Vec<(String, String)>,
        memory: usize,
        label: FilterLabel,
    ) -> Result<Arc<LoadedFilter>, FilterError> {
        let memory = self.check_memory(Some(memory as u64))?;
        let mut store = self.new_store(memory, None);
        let needs_body = match init_instance(&mut store, &compiled, &params) {
            Ok((_, needs_body)) => needs_body,
            Err(InitError::Params(m)) => return Err(FilterError::BadParams(m)),
            Err(InitError::Failed(f)) => return Err(FilterError::Init(f.to_string())),
        };
        Ok(self.loaded(compiled, params, needs_body, memory, label))
    }

    /// The memory cap for an upload that asks `asked` bytes (`None`: the default,
    /// `memory_limit`): refused above `max_memory_limit` and below 64 KiB (one page).
    pub fn check_memory(&self, asked: Option<u64>) -> Result<usize, FilterError> {
        const MIN: usize = 64 << 10;
        let c = &self.inner.config;
        let Some(asked) = asked else {
            return Ok(c.memory_limit);
        };
        match usize::try_from(asked) {
            Ok(m) if m > c.max_memory_limit => Err(FilterError::MemoryOverMax {
                asked,
                max: c.max_memory_limit,
            }),
            Err(_) => Err(FilterError::MemoryOverMax {
                asked,
                max: c.max_memory_limit,
            }),
            Ok(m) if m < MIN => Err(FilterError::MemoryUnderMin { asked, min: MIN }),
            Ok(m) => Ok(m),
        }
    }

    /// Makes a filter ready without running `init` now (a restart: the parameters were
    /// validated at upload; each instance still runs `init` before its first batch).
    /// `memory` is the cap checked at upload; the caller checks it again with
    /// [`FilterRuntime::check_memory`], as the operator may have lowered the maximum since.
    pub fn restore(
        &self,
        compiled: CompiledFilter,
        params: Vec<(String, String)>,
        needs_body: bool,
        memory: usize,
        label: FilterLabel,
    ) -> Arc<LoadedFilter> {
        self.loaded(compiled, params, needs_body, memory, label)
    }

    /// Decides one batch on a worker thread, in guest calls of at most `batch_size` records
    /// each (one hand-off to the worker for all of them). The records come back with the
    /// verdicts, so
    /// the caller can answer from them without copying. A record that does not parse gets
    /// `true` without being shown to the filter: damage is the consumer's to see.
    pub async fn run<B: RecordBatch>(
        &self,
        filter: &Arc<LoadedFilter>,
        ctx: BatchContext,
        records: B,
    ) -> Result<(B, Vec<bool>), FilterFailure> {
        if let Some(cause) = filter.marked_failed() {
            return Err(FilterFailure::new(FailureKind::MarkedFailed, cause));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = self.clone();
        let filter = Arc::clone(filter);
        let group = ctx.consumer_group.clone();
        let filter_id = filter.id;
        let job: Job = Box::new(move |turn| {
            let r = match turn {
                Turn::Run(worker) => {
                    if tx.is_closed() {
                        // The pull was abandoned (client gone, broker stopping): no work, no
                        // verdict.
                        return None;
                    }
                    // One guest call per `batch_size` records; the first failure fails all.
                    let batch = runtime.inner.config.batch_size.max(1);
                    let n = records.count();
                    let mut verdicts = Vec::with_capacity(n);
                    let mut failed = None;
                    for start in (0..n).step_by(batch) {
                        let chunk = start..n.min(start + batch);
                        match worker.call(&runtime, &filter, &ctx, &records, chunk) {
                            Ok(v) => verdicts.extend(v),
                            Err(f) => {
                                failed = Some(f);
                                break;
                            }
                        }
                    }
                    match failed {
                        None => Ok((records, verdicts)),
                        Some(f) => Err(f),
                    }
                }
                Turn::Refused(why) => {
                    let kind = match why {
                        Refusal::Stopped => FailureKind::Unavailable,
                        Refusal::TimedOut { .. } | Refusal::GroupQueueFull { .. } => {
                            FailureKind::Busy
                        }
                    };
                    Err(FilterFailure::new(kind, why.to_string()))
                }
            };
            Some(Box::new(move || {
                let _ = tx.send(r);
            }))
        });
        self.inner.scheduler.submit(&group, filter_id, job);
        rx.await.unwrap_or_else(|_| {
            Err(FilterFailure::new(
                FailureKind::Unavailable,
                "the filter worker stopped during the call",
            ))
        })
    }
}
