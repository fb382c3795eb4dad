//! The sandbox: compiles and checks uploaded components, and runs filter batches on worker
//! threads that keep one instance per filter, under a memory cap, a time budget and a
//! stack cap.
//!
//! Costs decide the shape (see `../shared/reference/wasm.md`): compiling takes tens of ms,
//! so it happens once per component and the artifact is cached; instantiating plus `init`
//! takes tens of µs, so instances live across pulls; a call crossing costs ~0.1 µs plus a
//! copy per list, so messages go in batches and each carries one attribute list borrowed
//! straight from the stored record (no re-encoding, no per-message allocation).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tracing::{debug, error, info, trace, warn};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, Func, InstancePre, Linker, Lower,
};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, ResourceLimiter,
    Store, Trap,
};
use weir_protocol::filter::FilterStats;
use weir_protocol::record;
use weir_store::StoredRecord;

use super::{FilterConfig, FilterError};

mod bindings {
    wasmtime::component::bindgen!({
        world: "message-filter",
        path: "../wit",
    });
}

use bindings::exports::weir::filter::filter::FilterError as GuestError;
use bindings::weir::filter::types::Level;

/// The interface every filter exports.
const FILTER_INTERFACE: &str = "weir:filter/filter@0.1.0";

/// Imports a filter may have that the broker provides.
const PROVIDED: &[&str] = &[
    "weir:filter/host",
    "weir:filter/types",
    "wasi:random/insecure-seed",
];

/// WASI interfaces that Rust's (and others') standard library imports whether or not the
/// filter uses them: linked to functions that trap if ever called. Anything not here or in
/// [`PROVIDED`] (file system, sockets, clocks, HTTP, ...) is refused at upload.
const STUBBED: &[&str] = &[
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

/// Core instances (the filter's module and its adapter shims) and tables one filter
/// component may have.
const CORE_INSTANCES_PER_FILTER: u32 = 16;
const TABLES_PER_FILTER: u32 = 8;

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Which filter a message or a log line is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterLabel {
    pub group: String,
    pub topic: String,
    pub version: u64,
    pub sha256: String,
}

impl FilterLabel {
    pub fn new(
        group: impl Into<String>,
        topic: impl Into<String>,
        version: u64,
        sha256: String,
    ) -> Self {
        Self {
            group: group.into(),
            topic: topic.into(),
            version,
            sha256,
        }
    }
}

impl fmt::Display for FilterLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filter of group {:?} on topic {:?} (version {}, sha256 {})",
            self.group,
            self.topic,
            self.version,
            self.sha256.get(..12).unwrap_or(&self.sha256)
        )
    }
}

/// What every message of a batch shares.
#[derive(Debug, Clone)]
pub struct BatchContext {
    pub topic: String,
    pub queue_id: u32,
    pub consumer_group: String,
}

/// Why a batch got no verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The filter returned its own error.
    GuestError,
    /// The filter trapped (panic, `unreachable`, bad memory access, stack overflow, a
    /// stubbed import called).
    Trap,
    /// The batch ran past its time budget.
    Deadline,
    /// The filter wanted more memory than its cap.
    MemoryExhausted,
    /// The filter returned a different number of verdicts than messages.
    WrongVerdicts,
    /// The broker could not run the filter (no instance slot, stopping); not the filter's
    /// fault, so it does not count towards marking it failed.
    Unavailable,
    /// The filter already failed too often and waits for a new version.
    MarkedFailed,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            FailureKind::GuestError => "the filter returned an error",
            FailureKind::Trap => "the filter trapped",
            FailureKind::Deadline => "the filter ran past its time budget",
            FailureKind::MemoryExhausted => "the filter ran out of memory",
            FailureKind::WrongVerdicts => "the filter returned the wrong number of verdicts",
            FailureKind::Unavailable => "the filter could not run",
            FailureKind::MarkedFailed => "the filter is marked failed",
        }
    }
}

/// A batch that got no verdicts; nothing of it is delivered or skipped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", kind.as_str())]
pub struct FilterFailure {
    pub kind: FailureKind,
    pub detail: String,
}

impl FilterFailure {
    fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        // Details can come from the guest (its error text, names in a backtrace): bounded
        // and printable before they reach replies, logs and the failure mark.
        Self {
            kind,
            detail: sanitize(&detail.into(), MAX_DETAIL),
        }
    }
}

/// Longest failure detail kept, bytes.
const MAX_DETAIL: usize = 1024;

/// `text` cut to at most `max` bytes (on a character boundary) with control characters
/// escaped, so guest-made text cannot flood or forge log lines.
fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 4);
    for c in text.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

/// A stored record's bytes, handed to a filter call and back.
pub trait RecordBytes: Send + 'static {
    fn record_bytes(&self) -> &[u8];
}

impl RecordBytes for StoredRecord {
    fn record_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

impl RecordBytes for Vec<u8> {
    fn record_bytes(&self) -> &[u8] {
        self
    }
}

impl RecordBytes for Bytes {
    fn record_bytes(&self) -> &[u8] {
        self
    }
}

/// A compiled component that passed the import check, linked and ready to instantiate.
pub struct CompiledFilter {
    pre: InstancePre<GuestState>,
    filter_fn: ComponentExportIndex,
}

impl CompiledFilter {
    pub fn component(&self) -> &Component {
        self.pre.component()
    }
}

/// State shared by every instance of one filter version: counters, the log budget, and
/// the consecutive-failure tally.
struct FilterShared {
    label: FilterLabel,
    calls: AtomicU64,
    messages_in: AtomicU64,
    messages_kept: AtomicU64,
    call_nanos: AtomicU64,
    guest_errors: AtomicU64,
    traps: AtomicU64,
    deadlines: AtomicU64,
    memory_exhausted: AtomicU64,
    wrong_verdicts: AtomicU64,
    instantiations: AtomicU64,
    log_lines_dropped: AtomicU64,
    consecutive_failures: AtomicU32,
    marked_failed: Mutex<Option<String>>,
    log_budget: Mutex<LogBudget>,
}

/// A token bucket for guest log lines.
struct LogBudget {
    tokens: f64,
    last: Instant,
}

/// One uploaded filter version, ready to run.
pub struct LoadedFilter {
    /// Unique in this process: workers key their instances by it.
    id: u64,
    compiled: CompiledFilter,
    params: Vec<(String, String)>,
    needs_body: bool,
    shared: Arc<FilterShared>,
}

impl LoadedFilter {
    pub fn label(&self) -> &FilterLabel {
        &self.shared.label
    }
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }
    /// How many candidates to read to get about `wanted` kept messages, at the keep rate
    /// seen so far (all of them, before any call).
    pub fn candidates_for(&self, wanted: usize) -> usize {
        let s = &self.shared;
        let (seen, kept) = (
            s.messages_in.load(Ordering::Relaxed),
            s.messages_kept.load(Ordering::Relaxed),
        );
        if seen < 64 || kept == 0 {
            return usize::MAX;
        }
        // A little over the estimate, so one round usually suffices.
        ((wanted as u64 * seen).div_ceil(kept) * 5 / 4).max(wanted as u64) as usize
    }

    /// `Some(cause)` once the filter failed too many batches in a row.
    pub fn marked_failed(&self) -> Option<String> {
        self.shared
            .marked_failed
            .lock()
            .ok()
            .and_then(|g| g.clone())
    }
    pub fn stats(&self) -> FilterStats {
        let s = &self.shared;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FilterStats {
            calls: get(&s.calls),
            messages_in: get(&s.messages_in),
            messages_kept: get(&s.messages_kept),
            call_nanos: get(&s.call_nanos),
            guest_errors: get(&s.guest_errors),
            traps: get(&s.traps),
            deadlines: get(&s.deadlines),
            memory_exhausted: get(&s.memory_exhausted),
            wrong_verdicts: get(&s.wrong_verdicts),
            instantiations: get(&s.instantiations),
            log_lines_dropped: get(&s.log_lines_dropped),
        }
    }
}

/// What a store holds for its instance.
struct GuestState {
    memory_limit: usize,
    memory_denied: bool,
    log_line_max: usize,
    log_lines_per_sec: u32,
    /// The last error-level line the guest logged (the SDK logs panics there), to explain
    /// a trap.
    last_error_line: Option<String>,
    shared: Option<Arc<FilterShared>>,
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
struct WireContext<'a> {
    topic: &'a str,
    #[component(name = "queue-id")]
    queue_id: u32,
    #[component(name = "consumer-group")]
    consumer_group: &'a str,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct WireMessage<'a> {
    #[component(name = "queue-offset")]
    queue_offset: u64,
    #[component(name = "born-timestamp")]
    born_timestamp: i64,
    #[component(name = "store-timestamp")]
    store_timestamp: i64,
    #[component(name = "reconsume-count")]
    reconsume_count: u32,
    #[component(name = "attributes-at")]
    attributes_at: u32,
    #[component(name = "attributes-len")]
    attributes_len: u32,
    body: Option<&'a [u8]>,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

struct Inner {
    engine: Engine,
    linker: Linker<GuestState>,
    config: FilterConfig,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    next_id: AtomicU64,
    deadline_ticks: u64,
    stop: Arc<AtomicBool>,
    compat_hash: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The filter sandbox of one broker: cheap to clone.
#[derive(Clone)]
pub struct FilterRuntime {
    inner: Arc<Inner>,
}

impl FilterRuntime {
    pub fn new(config: FilterConfig) -> Result<Self, FilterError> {
        config.validate().map_err(FilterError::Invalid)?;
        let runtime_err =
            |what: &str, e: wasmtime::Error| FilterError::Runtime(format!("{what}: {e}"));
        let mut pool = PoolingAllocationConfig::default();
        // A component is a few core instances (the filter, and adapter shims) around one
        // memory; size the pool for `max_instances` of them.
        let n = config.max_instances;
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(CORE_INSTANCES_PER_FILTER))
            .total_memories(n)
            .total_tables(n.saturating_mul(TABLES_PER_FILTER))
            .max_core_instances_per_component(CORE_INSTANCES_PER_FILTER)
            // One linear memory per filter, so the memory cap is the filter's cap.
            .max_memories_per_component(1)
            .max_tables_per_component(TABLES_PER_FILTER)
            .max_memory_size(config.memory_limit)
            .max_unused_warm_slots(n.min(16));
        let mut wasm = Config::new();
        wasm.cranelift_opt_level(OptLevel::Speed)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| runtime_err("engine", e))?;

        let mut linker = Linker::<GuestState>::new(&engine);
        bindings::MessageFilter::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| runtime_err("linking the host interface", e))?;
        let tick = Duration::from_millis((config.batch_deadline_ms / 10).clamp(1, 100));
        // At least two ticks, so a call never gets less than one whole tick.
        let deadline_ticks = config
            .batch_deadline_ms
            .div_ceil(tick.as_millis().max(1) as u64)
            .max(2);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("weir-filter-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| FilterError::Runtime(format!("cannot start the epoch thread: {e}")))?;
        }

        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        // Workers keep most of the pool; the rest is for `init` at upload and for direct
        // callers, so an upload is never refused for want of a slot.
        let reserve = (config.max_instances as usize / 8).max(1);
        let per_worker =
            ((config.max_instances as usize).saturating_sub(reserve) / config.workers).max(1);
        for n in 0..config.workers {
            let rx = Arc::clone(&rx);
            let mut worker = Worker::new(per_worker);
            std::thread::Builder::new()
                .name(format!("weir-filter-{n}"))
                // Room for the wasm stack cap plus the host's own frames.
                .stack_size(config.max_wasm_stack + (4 << 20))
                .spawn(move || {
                    loop {
                        let Some(job) = next_job(&rx) else { break };
                        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut worker))).is_err()
                        {
                            error!("a filter worker job panicked; its instances are dropped");
                            worker.slots.clear();
                        }
                    }
                })
                .map_err(|e| FilterError::Runtime(format!("cannot start a filter worker: {e}")))?;
        }

        let compat_hash = {
            let mut h = Sha256Hasher::default();
            std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
            hex::encode(&h.0.finalize()[..16])
        };
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                jobs: Mutex::new(Some(tx)),
                next_id: AtomicU64::new(1),
                deadline_ticks,
                stop,
                compat_hash,
                config,
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

    /// Stops the workers once queued jobs are done.
    pub fn shutdown(&self) {
        if let Ok(mut jobs) = self.inner.jobs.lock() {
            jobs.take();
        }
        self.inner.stop.store(true, Ordering::Relaxed);
    }

    /// Checks the size and kind of `bytes`, compiles them and checks imports and exports.
    /// Blocking (compiling takes tens of ms or more).
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledFilter, FilterError> {
        self.check_bytes(bytes)?;
        let component = Component::new(&self.inner.engine, bytes)
            .map_err(|e| FilterError::Compile(format!("{e:#}")))?;
        self.link(component)
    }

    /// Serialized compiled code of a checked component, for the on-disk cache.
    pub fn serialize(&self, compiled: &CompiledFilter) -> Result<Vec<u8>, FilterError> {
        compiled
            .component()
            .serialize()
            .map_err(|e| FilterError::Runtime(format!("cannot serialize compiled code: {e}")))
    }

    /// Loads compiled code this broker cached earlier.
    ///
    /// # Safety
    /// `code` must be bytes produced by [`FilterRuntime::serialize`] (of a wasmtime with
    /// this [`compatibility_hash`](Self::compatibility_hash)), unchanged since: wasmtime
    /// validates them only lightly and runs them as machine code.
    pub unsafe fn deserialize(&self, code: &[u8]) -> Result<CompiledFilter, FilterError> {
        // SAFETY: the caller guarantees the bytes are our own serialized artifact.
        let component = unsafe { Component::deserialize(&self.inner.engine, code) }
            .map_err(|e| FilterError::Runtime(format!("cannot load compiled code: {e}")))?;
        self.link(component)
    }

    /// Refuses what is too big or not a component, before any work.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<(), FilterError> {
        let limit = self.inner.config.max_component_bytes;
        if bytes.len() > limit {
            return Err(FilterError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(FilterError::NotAComponent(
                "not WebAssembly (no \\0asm header); upload the .wasm that `cargo build --target wasm32-wasip2` produces".into(),
            ));
        }
        // After the magic: a u16 version and a u16 layer (0 for core modules, 1 for
        // components).
        let layer = bytes.get(6..8);
        if layer == Some(&[0, 0]) {
            return Err(FilterError::NotAComponent(
                "a core WebAssembly module, not a component; build for wasm32-wasip2 (which makes components) or wrap the module with `wasm-tools component new`".into(),
            ));
        }
        if layer != Some(&[1, 0]) {
            return Err(FilterError::NotAComponent(
                "not a WebAssembly component (unknown version or layer)".into(),
            ));
        }
        Ok(())
    }

    /// Checks imports against what a filter may use, stubs the harmless ones, links, and
    /// checks that the filter interface is exported with the right types.
    fn link(&self, component: Component) -> Result<CompiledFilter, FilterError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        // Every forbidden import is named, not just the first: a filter that opens a socket
        // also imports clocks (for timeouts), and "no clocks" alone would hide the point.
        let mut forbidden: Vec<&str> = Vec::new();
        let mut whys: Vec<&str> = Vec::new();
        for (name, _) in ty.imports(engine) {
            let unversioned = name.split('@').next().unwrap_or(name);
            if PROVIDED.contains(&unversioned) || STUBBED.contains(&unversioned) {
                continue;
            }
            let why = if unversioned.starts_with("wasi:filesystem") {
                "filters get no file system"
            } else if unversioned.starts_with("wasi:sockets")
                || unversioned.starts_with("wasi:http")
            {
                "filters get no network"
            } else if unversioned.starts_with("wasi:clocks") {
                "filters get no clocks (decide on the message's timestamps)"
            } else {
                "filters may import only weir:filter/host (and WASI stdio, which is stubbed)"
            };
            forbidden.push(name);
            if !whys.contains(&why) {
                whys.push(why);
            }
        }
        if !forbidden.is_empty() {
            return Err(FilterError::ForbiddenImport {
                import: forbidden.join("`, `"),
                why: whys.join("; "),
            });
        }
        let mut linker = self.inner.linker.clone();
        for (name, _) in ty.imports(engine) {
            if name.split('@').next() == Some("wasi:random/insecure-seed") {
                // Under the exact name imported: the linker's semver matching lets a newer
                // definition serve an older import, not the reverse.
                define_insecure_seed(&mut linker, name)?;
            }
        }
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| FilterError::Runtime(format!("stubbing imports: {e}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            FilterError::WrongWorld(format!("its imports do not match weir:filter@0.1: {e:#}"))
        })?;
        bindings::MessageFilterPre::new(pre.clone()).map_err(|e| {
            FilterError::WrongWorld(format!(
                "it must export {FILTER_INTERFACE} (world message-filter of wit/filter.wit): {e:#}"
            ))
        })?;
        let iface = component
            .get_export_index(None, FILTER_INTERFACE)
            .ok_or_else(|| {
                FilterError::WrongWorld(format!("it does not export {FILTER_INTERFACE}"))
            })?;
        let filter_fn = component
            .get_export_index(Some(&iface), "filter")
            .ok_or_else(|| {
                FilterError::WrongWorld(format!("{FILTER_INTERFACE} has no `filter` function"))
            })?;
        Ok(CompiledFilter { pre, filter_fn })
    }

    /// Runs `init` with `params` once, to validate them and learn what the filter needs,
    /// and makes the filter ready to run. Blocking.
    pub fn load(
        &self,
        compiled: CompiledFilter,
        params: Vec<(String, String)>,
        label: FilterLabel,
    ) -> Result<Arc<LoadedFilter>, FilterError> {
        let mut store = self.new_store(None);
        let needs_body =
            match init_instance(&mut store, &compiled, &params, self.inner.deadline_ticks) {
                Ok((_, needs_body)) => needs_body,
                Err(InitError::Params(m)) => return Err(FilterError::BadParams(m)),
                Err(InitError::Failed(f)) => return Err(FilterError::Init(f.to_string())),
            };
        Ok(self.loaded(compiled, params, needs_body, label))
    }

    /// Makes a filter ready without running `init` now (a restart: the parameters were
    /// validated at upload; each instance still runs `init` before its first batch).
    pub fn restore(
        &self,
        compiled: CompiledFilter,
        params: Vec<(String, String)>,
        needs_body: bool,
        label: FilterLabel,
    ) -> Arc<LoadedFilter> {
        self.loaded(compiled, params, needs_body, label)
    }

    fn loaded(
        &self,
        compiled: CompiledFilter,
        params: Vec<(String, String)>,
        needs_body: bool,
        label: FilterLabel,
    ) -> Arc<LoadedFilter> {
        let rate = f64::from(self.inner.config.log_lines_per_sec);
        Arc::new(LoadedFilter {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            compiled,
            params,
            needs_body,
            shared: Arc::new(FilterShared {
                label,
                calls: AtomicU64::new(0),
                messages_in: AtomicU64::new(0),
                messages_kept: AtomicU64::new(0),
                call_nanos: AtomicU64::new(0),
                guest_errors: AtomicU64::new(0),
                traps: AtomicU64::new(0),
                deadlines: AtomicU64::new(0),
                memory_exhausted: AtomicU64::new(0),
                wrong_verdicts: AtomicU64::new(0),
                instantiations: AtomicU64::new(0),
                log_lines_dropped: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                marked_failed: Mutex::new(None),
                log_budget: Mutex::new(LogBudget {
                    tokens: rate * 2.0,
                    last: Instant::now(),
                }),
            }),
        })
    }

    fn new_store(&self, shared: Option<Arc<FilterShared>>) -> Store<GuestState> {
        let c = &self.inner.config;
        let mut store = Store::new(
            &self.inner.engine,
            GuestState {
                memory_limit: c.memory_limit,
                memory_denied: false,
                log_line_max: c.log_line_max,
                log_lines_per_sec: c.log_lines_per_sec,
                last_error_line: None,
                shared,
            },
        );
        store.limiter(|s| s);
        store.epoch_deadline_trap();
        store
    }

    /// Decides one batch on a worker thread. The records come back with the verdicts, so
    /// the caller can answer from them without copying. A record that does not parse gets
    /// `true` without being shown to the filter: damage is the consumer's to see.
    pub async fn run<R: RecordBytes>(
        &self,
        filter: &Arc<LoadedFilter>,
        ctx: BatchContext,
        records: Vec<R>,
    ) -> Result<(Vec<R>, Vec<bool>), FilterFailure> {
        if let Some(cause) = filter.marked_failed() {
            return Err(FilterFailure::new(FailureKind::MarkedFailed, cause));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = self.clone();
        let filter = Arc::clone(filter);
        let job: Job = Box::new(move |worker| {
            if tx.is_closed() {
                // The pull was abandoned (client gone, broker stopping): no work, no verdict.
                return;
            }
            let r = worker.call(&runtime, &filter, &ctx, &records);
            let _ = tx.send(r.map(|v| (records, v)));
        });
        let sent = self
            .inner
            .jobs
            .lock()
            .ok()
            .and_then(|jobs| jobs.as_ref().map(|tx| tx.send(job).is_ok()))
            .unwrap_or(false);
        if !sent {
            return Err(FilterFailure::new(
                FailureKind::Unavailable,
                "the filter runtime is stopped",
            ));
        }
        rx.await.unwrap_or_else(|_| {
            Err(FilterFailure::new(
                FailureKind::Unavailable,
                "the filter worker stopped during the call",
            ))
        })
    }
}

/// Rust's `HashMap` seeds itself from `wasi:random/insecure-seed`; a per-process random
/// seed is all it needs, and it gives the filter no other capability.
fn define_insecure_seed(linker: &mut Linker<GuestState>, name: &str) -> Result<(), FilterError> {
    static SEED: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let mut h =
            std::hash::BuildHasher::build_hasher(&std::collections::hash_map::RandomState::new());
        h.write_u64(0x5eed);
        let a = h.finish();
        (a, a.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15)
    });
    linker
        .instance(name)
        .and_then(|mut i| i.func_wrap("insecure-seed", move |_, (): ()| Ok((seed,))))
        .map_err(|e| FilterError::Runtime(format!("linking {name}: {e}")))
}

/// How long a worker that finished a call stays awake for the next one: waking a sleeping
/// thread costs tens of µs on virtual machines, more than deciding a small batch.
const WORKER_SPIN: Duration = Duration::from_micros(50);

/// The next job, or `None` once the runtime stopped.
fn next_job(jobs: &Mutex<mpsc::Receiver<Job>>) -> Option<Job> {
    let spin_until = Instant::now() + WORKER_SPIN;
    loop {
        let rx = jobs.lock().ok()?;
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if Instant::now() < spin_until => {
                drop(rx);
                std::hint::spin_loop();
            }
            Err(mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// Runs filters on the calling thread, with instances of its own: for callers that are
/// already off the async runtime (and for measuring a call without the hand-off to a
/// worker). Counters and failure marking are shared with every other caller.
pub struct DirectCaller {
    runtime: FilterRuntime,
    worker: Worker,
}

impl DirectCaller {
    pub fn new(runtime: &FilterRuntime) -> Self {
        Self {
            runtime: runtime.clone(),
            worker: Worker::new(4),
        }
    }

    /// Decides one batch here and now (blocking), like [`FilterRuntime::run`].
    pub fn call<R: RecordBytes>(
        &mut self,
        filter: &Arc<LoadedFilter>,
        ctx: &BatchContext,
        records: &[R],
    ) -> Result<Vec<bool>, FilterFailure> {
        if let Some(cause) = filter.marked_failed() {
            return Err(FilterFailure::new(FailureKind::MarkedFailed, cause));
        }
        self.worker.call(&self.runtime, filter, ctx, records)
    }
}

enum InitError {
    Params(String),
    Failed(FilterFailure),
}

/// Instantiates and runs `init`; returns the filter function and whether bodies are needed.
fn init_instance(
    store: &mut Store<GuestState>,
    compiled: &CompiledFilter,
    params: &[(String, String)],
    deadline_ticks: u64,
) -> Result<(Func, bool), InitError> {
    store.set_epoch_deadline(deadline_ticks);
    let instance = compiled
        .pre
        .instantiate(&mut *store)
        .map_err(|e| InitError::Failed(classify(store, e)))?;
    let bindings = bindings::MessageFilter::new(&mut *store, &instance)
        .map_err(|e| InitError::Failed(classify(store, e)))?;
    let needs = bindings
        .weir_filter_filter()
        .call_init(&mut *store, params)
        .map_err(|e| InitError::Failed(classify(store, e)))?
        .map_err(|e| match e {
            GuestError::BadParams(m) => InitError::Params(m),
            GuestError::Failed(m) => {
                InitError::Failed(FilterFailure::new(FailureKind::GuestError, m))
            }
        })?;
    let func = instance
        .get_func(&mut *store, compiled.filter_fn)
        .ok_or_else(|| {
            InitError::Failed(FilterFailure::new(
                FailureKind::Trap,
                "the filter function vanished",
            ))
        })?;
    Ok((
        func,
        needs.contains(bindings::exports::weir::filter::filter::Needs::BODY),
    ))
}

/// Names the cause of a failed call.
fn classify(store: &mut Store<GuestState>, e: wasmtime::Error) -> FilterFailure {
    let state = store.data_mut();
    let last_line = state.last_error_line.take();
    if state.memory_denied {
        // The limiter's own error ("memory cap of N bytes reached ...") is the root cause;
        // the error itself is wasmtime's context, a wasm backtrace.
        return FilterFailure::new(FailureKind::MemoryExhausted, e.root_cause().to_string());
    }
    let with_line = |m: String| match &last_line {
        Some(l) => format!("{m} (last error logged: {l})"),
        None => m,
    };
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FilterFailure::new(
            FailureKind::Deadline,
            "the call was interrupted at its deadline",
        ),
        Some(Trap::StackOverflow) => FilterFailure::new(
            FailureKind::Trap,
            with_line("stack overflow (the wasm stack cap was reached)".into()),
        ),
        Some(t) => FilterFailure::new(FailureKind::Trap, with_line(t.to_string())),
        // Not the filter's doing: the instance pool is full for now.
        None if e
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some() =>
        {
            FilterFailure::new(FailureKind::Unavailable, e.root_cause().to_string())
        }
        // A host function's error, e.g. a stubbed WASI import the filter called.
        None => FilterFailure::new(FailureKind::Trap, with_line(e.root_cause().to_string())),
    }
}

/// An instance, alive across batches.
struct Slot {
    store: Store<GuestState>,
    filter_fn: Func,
    filter: std::sync::Weak<LoadedFilter>,
    last_used: u64,
}

/// A filter thread's instances, keyed by filter id; at most `capacity`, least recently
/// used first out.
struct Worker {
    slots: HashMap<u64, Slot>,
    capacity: usize,
    clock: u64,
    /// The batch's attributes buffer, kept between calls.
    attributes: Vec<u8>,
}

impl Worker {
    fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::new(),
            capacity,
            clock: 0,
            attributes: Vec::new(),
        }
    }

    fn call<R: RecordBytes>(
        &mut self,
        runtime: &FilterRuntime,
        filter: &Arc<LoadedFilter>,
        ctx: &BatchContext,
        records: &[R],
    ) -> Result<Vec<bool>, FilterFailure> {
        self.clock += 1;
        // Instances of replaced or removed filter versions go at the next batch.
        self.slots.retain(|_, s| s.filter.strong_count() > 0);
        let shared = &filter.shared;
        let result = self.call_inner(runtime, filter, ctx, records);
        match &result {
            Ok((verdicts, call_nanos)) => {
                let kept = verdicts.iter().filter(|k| **k).count() as u64;
                shared.calls.fetch_add(1, Ordering::Relaxed);
                shared
                    .messages_in
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                shared.messages_kept.fetch_add(kept, Ordering::Relaxed);
                shared.call_nanos.fetch_add(*call_nanos, Ordering::Relaxed);
                shared.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Err(f) => {
                // A failed instance is never reused: a trap poisons it, and state after a
                // guest error or a deadline is suspect.
                self.slots.remove(&filter.id);
                let counter = match f.kind {
                    FailureKind::GuestError => Some(&shared.guest_errors),
                    FailureKind::Trap => Some(&shared.traps),
                    FailureKind::Deadline => Some(&shared.deadlines),
                    FailureKind::MemoryExhausted => Some(&shared.memory_exhausted),
                    FailureKind::WrongVerdicts => Some(&shared.wrong_verdicts),
                    FailureKind::Unavailable | FailureKind::MarkedFailed => None,
                };
                if let Some(c) = counter {
                    c.fetch_add(1, Ordering::Relaxed);
                    let n = shared.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    let limit = runtime.inner.config.failures_before_marked;
                    warn!(filter = %shared.label, failures_in_a_row = n, "filter batch failed: {f}");
                    if n >= limit
                        && let Ok(mut marked) = shared.marked_failed.lock()
                        && marked.is_none()
                    {
                        error!(filter = %shared.label, "filter marked failed after {n} failed batches in a row; upload a new version");
                        *marked = Some(format!("{n} failed batches in a row, the last: {f}"));
                    }
                }
            }
        }
        result.map(|(verdicts, _)| verdicts)
    }

    /// The verdicts, and the time the guest call took (instantiation excluded).
    fn call_inner<R: RecordBytes>(
        &mut self,
        runtime: &FilterRuntime,
        filter: &Arc<LoadedFilter>,
        ctx: &BatchContext,
        records: &[R],
    ) -> Result<(Vec<bool>, u64), FilterFailure> {
        let ticks = runtime.inner.deadline_ticks;
        if !self.slots.contains_key(&filter.id) {
            if self.slots.len() >= self.capacity
                && let Some(oldest) = self
                    .slots
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| *k)
            {
                self.slots.remove(&oldest);
            }
            let mut store = runtime.new_store(Some(Arc::clone(&filter.shared)));
            filter.shared.instantiations.fetch_add(1, Ordering::Relaxed);
            let (filter_fn, needs_body) =
                init_instance(&mut store, &filter.compiled, &filter.params, ticks).map_err(
                    |e| match e {
                        InitError::Params(m) => FilterFailure::new(
                            FailureKind::GuestError,
                            format!("init rejected the parameters it accepted at upload: {m}"),
                        ),
                        InitError::Failed(f) => FilterFailure {
                            detail: format!("in init: {}", f.detail),
                            ..f
                        },
                    },
                )?;
            if needs_body != filter.needs_body {
                return Err(FilterFailure::new(
                    FailureKind::GuestError,
                    format!(
                        "init now says it {} bodies, unlike at upload; upload the filter again",
                        if needs_body { "needs" } else { "does not need" }
                    ),
                ));
            }
            self.slots.insert(
                filter.id,
                Slot {
                    store,
                    filter_fn,
                    filter: Arc::downgrade(filter),
                    last_used: 0,
                },
            );
        }
        let clock = self.clock;
        let slot = self
            .slots
            .get_mut(&filter.id)
            .ok_or_else(|| FilterFailure::new(FailureKind::Unavailable, "instance missing"))?;
        slot.last_used = clock;

        // A record that does not parse is not the filter's to judge: it is passed on (the
        // consumer then reports the damage), never dropped.
        let mut messages = Vec::with_capacity(records.len());
        let mut attributes = std::mem::take(&mut self.attributes);
        attributes.clear();
        let mut damaged = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let bytes = r.record_bytes();
            let Ok(m) = record::filter_message(bytes) else {
                damaged.push(i);
                continue;
            };
            let (Ok(attributes_at), Ok(attributes_len)) = (
                u32::try_from(attributes.len()),
                u32::try_from(m.attributes.len()),
            ) else {
                return Err(FilterFailure::new(
                    FailureKind::Unavailable,
                    "a batch's attributes exceed 4 GiB",
                ));
            };
            attributes.extend_from_slice(m.attributes);
            messages.push(WireMessage {
                queue_offset: m.queue_offset,
                born_timestamp: m.born_timestamp,
                store_timestamp: m.store_timestamp,
                reconsume_count: m.reconsume_count,
                attributes_at,
                attributes_len,
                body: filter.needs_body.then_some(m.body),
            });
        }
        let wire_ctx = WireContext {
            topic: &ctx.topic,
            queue_id: ctx.queue_id,
            consumer_group: &ctx.consumer_group,
        };
        let store = &mut slot.store;
        let typed = slot
            .filter_fn
            .typed::<(WireContext<'_>, &[u8], &[WireMessage<'_>]), (Result<Vec<bool>, GuestError>,)>(
                &*store,
            )
            .map_err(|e| {
                FilterFailure::new(FailureKind::Trap, format!("filter function type: {e}"))
            })?;
        store.set_epoch_deadline(ticks);
        store.data_mut().last_error_line = None;
        let started = Instant::now();
        let called = typed.call(&mut *store, (wire_ctx, &attributes, &messages));
        let call_nanos = started.elapsed().as_nanos() as u64;
        self.attributes = attributes;
        let (answer,) = called.map_err(|e| classify(&mut slot.store, e))?;
        let verdicts = answer.map_err(|e| match e {
            GuestError::BadParams(m) | GuestError::Failed(m) => {
                FilterFailure::new(FailureKind::GuestError, m)
            }
        })?;
        if verdicts.len() != messages.len() {
            return Err(FilterFailure::new(
                FailureKind::WrongVerdicts,
                format!(
                    "{} verdicts for {} messages",
                    verdicts.len(),
                    messages.len()
                ),
            ));
        }
        if damaged.is_empty() {
            return Ok((verdicts, call_nanos));
        }
        warn!(filter = %filter.shared.label, queue = ctx.queue_id, records = damaged.len(), "stored records that do not parse are passed to the consumer unfiltered, which reports the damage");
        let mut judged = verdicts.into_iter();
        let mut damaged = damaged.into_iter().peekable();
        let verdicts = (0..records.len())
            .map(|i| damaged.next_if_eq(&i).is_some() || judged.next().unwrap_or(false))
            .collect();
        Ok((verdicts, call_nanos))
    }
}

/// `std::hash::Hasher` over SHA-256, for a hash that is stable across processes.
#[derive(Default)]
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
