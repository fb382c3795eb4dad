//! WebAssembly message filters: consumer groups upload components (`wit/filter.wit`)
//! that the broker runs, sandboxed, on their pulls.
//!
//! - [`runtime`]: one wasmtime `Engine`, validation at upload, compiled filters pre-linked
//!   once, worker threads that own reusable instances, limits and failure accounting.
//! - [`registry`]: which filter applies to which (group, topic), durable on disk with the
//!   compiled artifacts cached, so a restart neither loses nor recompiles a filter.
//! - [`LocalFilter`]: the same runtime without a broker, for `weir filter test`, `weir
//!   bench consume --local-filter` and the console's filter preview.

mod local;
pub mod registry;
pub mod runtime;

use serde::{Deserialize, Serialize};

pub use local::{LocalFilter, parse_memory};
pub use registry::{FilterRegistry, Registration};
pub use runtime::{
    BatchContext, CompileCacheStats, DirectCaller, FailureKind, FilterFailure, FilterLabel,
    FilterRuntime, LoadedFilter, LogSink, RecordBytes,
};

/// Filter runtime settings: the `[filter]` table of the broker's TOML file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Largest component accepted at upload, bytes, after inflating a gzip-compressed
    /// upload (default 32 MiB: a JavaScript or Python filter carries its engine, 10-20 MB).
    pub max_component_bytes: usize,
    /// Registrations held, one per (group, topic) (default 10,000): an upload that would
    /// add one more is refused; new versions of those held are taken.
    pub max_filters: usize,
    /// Parameters of one upload, names and values together, bytes (default 64 KiB).
    pub max_params_bytes: usize,
    /// Linear memory one filter instance may use when its upload asks no cap, bytes
    /// (default 16 MiB).
    pub memory_limit: usize,
    /// The largest memory cap an upload may ask (`weir filter upload --memory`), bytes
    /// (default 256 MiB). The instance pool's memory slots are sized for it.
    pub max_memory_limit: usize,
    /// CPU time one batch call may use, ms (default 50): the filter thread's own CPU time,
    /// so a busy machine does not make a good filter fail. Formerly `batch_deadline_ms` (a
    /// wall-clock budget); that name is still read.
    #[serde(alias = "batch_deadline_ms")]
    pub batch_cpu_ms: u64,
    /// CPU time starting a filter instance may use, ms (default 1,000): instantiation
    /// (copying the memory image, start functions) and `init` together, at upload and on
    /// each worker. A JavaScript or Python engine takes milliseconds to start where a batch
    /// takes microseconds, and several times more on a slow machine.
    pub init_cpu_ms: u64,
    /// Wall-clock limit of one call, ms (default 2,000): only a safety net for a thread
    /// starved of CPU for that long; at least `batch_cpu_ms`. A start's is this or
    /// `init_cpu_ms`, whichever is larger.
    pub batch_wall_limit_ms: u64,
    /// Stack the filter's own frames may use, bytes (default 512 KiB).
    pub max_wasm_stack: usize,
    /// Threads that run filter calls (default: one per core, at most 8).
    pub workers: usize,
    /// Most filter calls of one consumer group running at once (default: `workers` − 1,
    /// at least 1), so a group with a slow filter or many consumers leaves workers to the
    /// others; while no other group waits, a group of short batches may use them all (see
    /// `runtime::schedule`). 0 means the default.
    pub max_group_workers: usize,
    /// Most filter batches of one consumer group waiting for a worker; past it a pull is
    /// answered busy at once (default 256).
    pub max_group_queued: usize,
    /// Longest a batch waits for a worker before its pull is answered busy, ms (default
    /// 1,000).
    pub queue_timeout_ms: u64,
    /// Filter instances alive at once, across all workers; bounds the instance pool
    /// (default 128).
    pub max_instances: u32,
    /// Consecutive failed batches after which a filter is marked failed for its group until
    /// a new version is uploaded (default 3).
    pub failures_before_marked: u32,
    /// Most messages in one filter call (default 256).
    pub batch_size: usize,
    /// Queue entries one pull may examine before it answers, even with nothing kept, so a
    /// very selective filter returns an advanced offset instead of holding the pull
    /// (default 16,000).
    pub max_scan_per_pull: usize,
    /// Guest log lines per second per filter version (default 10): a line is logged only
    /// when fewer than this many were logged in the second before it, so no one-second
    /// interval holds more; other lines are dropped and counted (`log_lines_dropped`).
    /// 0 drops every line.
    pub log_lines_per_sec: u32,
    /// Longest guest log line kept, bytes; longer lines are cut (default 1024).
    pub log_line_max: usize,
    /// Memory for Cranelift's cache of compiled functions, bytes (default 256 MiB; 0 turns
    /// it off). Filters of one language share their engine's functions, so the second
    /// JavaScript or Python filter compiles several times faster; least recently used
    /// functions go first.
    pub compile_cache_bytes: usize,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            max_component_bytes: 32 << 20,
            max_filters: 10_000,
            max_params_bytes: 64 << 10,
            memory_limit: 16 << 20,
            max_memory_limit: 256 << 20,
            batch_cpu_ms: 50,
            init_cpu_ms: 1_000,
            batch_wall_limit_ms: 2_000,
            max_wasm_stack: 512 << 10,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
            max_group_workers: 0,
            max_group_queued: 256,
            queue_timeout_ms: 1_000,
            max_instances: 128,
            failures_before_marked: 3,
            batch_size: 256,
            max_scan_per_pull: 16_000,
            log_lines_per_sec: 10,
            log_line_max: 1024,
            compile_cache_bytes: 256 << 20,
        }
    }
}

impl FilterConfig {
    /// The effective per-group cap of running calls.
    pub fn group_workers(&self) -> usize {
        match self.max_group_workers {
            0 => self.workers.saturating_sub(1).max(1),
            n => n,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_owned()) };
        check(
            self.max_component_bytes >= 8 && self.max_component_bytes <= 256 << 20,
            "filter.max_component_bytes must be within 8 bytes..=256 MiB",
        )?;
        check(
            self.max_filters >= 1,
            "filter.max_filters must be at least 1",
        )?;
        check(
            self.max_params_bytes <= 1 << 20,
            "filter.max_params_bytes must be at most 1 MiB (a request's header)",
        )?;
        check(
            self.memory_limit >= 64 << 10 && self.memory_limit <= 4 << 30,
            "filter.memory_limit must be within 64 KiB..=4 GiB",
        )?;
        check(
            self.max_memory_limit >= self.memory_limit && self.max_memory_limit <= 4 << 30,
            "filter.max_memory_limit must be at least filter.memory_limit and at most 4 GiB",
        )?;
        check(
            (1..=60_000).contains(&self.batch_cpu_ms),
            "filter.batch_cpu_ms must be within 1..=60000",
        )?;
        check(
            (1..=60_000).contains(&self.init_cpu_ms),
            "filter.init_cpu_ms must be within 1..=60000",
        )?;
        check(
            (self.batch_cpu_ms..=600_000).contains(&self.batch_wall_limit_ms),
            "filter.batch_wall_limit_ms must be within filter.batch_cpu_ms..=600000",
        )?;
        check(
            // `init` at upload runs on a blocking-pool thread of 2 MiB.
            self.max_wasm_stack >= 64 << 10 && self.max_wasm_stack <= 1 << 20,
            "filter.max_wasm_stack must be within 64 KiB..=1 MiB",
        )?;
        check(
            (1..=256).contains(&self.workers),
            "filter.workers must be within 1..=256",
        )?;
        check(
            self.max_group_workers <= self.workers,
            "filter.max_group_workers must be at most filter.workers (0: workers - 1)",
        )?;
        check(
            (1..=100_000).contains(&self.max_group_queued),
            "filter.max_group_queued must be within 1..=100000",
        )?;
        check(
            (1..=600_000).contains(&self.queue_timeout_ms),
            "filter.queue_timeout_ms must be within 1..=600000",
        )?;
        check(
            self.max_instances as usize >= self.workers && self.max_instances <= 10_000,
            "filter.max_instances must be at least filter.workers and at most 10000",
        )?;
        check(
            self.failures_before_marked >= 1,
            "filter.failures_before_marked must be at least 1",
        )?;
        check(
            (1..=4096).contains(&self.batch_size),
            "filter.batch_size must be within 1..=4096",
        )?;
        check(
            self.max_scan_per_pull >= self.batch_size,
            "filter.max_scan_per_pull must be at least filter.batch_size",
        )?;
        check(
            self.log_lines_per_sec <= 100_000,
            "filter.log_lines_per_sec must be at most 100000",
        )?;
        check(
            self.log_line_max >= 16,
            "filter.log_line_max must be at least 16",
        )
    }
}

/// Why a component was refused at upload (or could not be loaded). Nothing is stored.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("component is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("{0}")]
    NotAComponent(String),
    #[error("component does not compile: {0}")]
    Compile(String),
    #[error("component imports `{import}`, which a filter may not use: {why}")]
    ForbiddenImport { import: String, why: String },
    #[error("not a weir filter: {0}")]
    WrongWorld(String),
    #[error("init rejected the parameters: {0}")]
    BadParams(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error("filter runtime: {0}")]
    Runtime(String),
    #[error("filter storage: {0}")]
    Storage(String),
    #[error(
        "the upload asks a memory cap of {asked} bytes; this broker allows at most {max} bytes (filter.max_memory_limit)"
    )]
    MemoryOverMax { asked: u64, max: usize },
    #[error("the upload asks a memory cap of {asked} bytes; the least is {min} bytes")]
    MemoryUnderMin { asked: u64, min: usize },
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the parameters are {size} bytes, names and values together; at most {limit} are taken (filter.max_params_bytes)"
    )]
    ParamsTooLarge { size: usize, limit: usize },
    #[error("the broker holds {max} filter registrations already (filter.max_filters)")]
    TooMany { max: usize },
}
