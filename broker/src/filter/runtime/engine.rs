//! The wasmtime `Engine` and what it compiles: the pooling allocator sized for
//! `max_instances` filters, the epoch clock that bounds every call, compiling an upload
//! (after a cheap check of its bytes) with Cranelift's cache of compiled functions
//! (`compile_cache.rs`), and the compiled-code cache (serialize, deserialize, the
//! compatibility hash it is keyed by).
//!
//! Invariants: one engine per runtime, configured here only; the pool's per-component
//! limits match what `GuestState` tells the resource limiter ([`CORE_INSTANCES_PER_FILTER`],
//! [`TABLES_PER_FILTER`]); compiled code is cached under the engine's compatibility hash,
//! and `deserialize` (unsafe) trusts its caller to load only such code.

use std::hash::Hasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::budget::{Budget, Budgets};
use super::compile_cache::CompileCache;
use super::guest::GuestState;
use super::{FilterConfig, FilterError, FilterRuntime};

/// Core instances (the filter's module and its adapter shims) and tables one filter
/// component may have. A Rust or JavaScript filter has 2-5 core instances; a Python one
/// (componentize-py links CPython, libc and its runtime as separate modules) about 40.
pub(super) const CORE_INSTANCES_PER_FILTER: u32 = 64;
pub(super) const TABLES_PER_FILTER: u32 = 8;

/// gzip's magic bytes; a component starts with `\0asm`, so the two never mix up.
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// The shortest gzip stream: a 10-byte header and an 8-byte trailer.
const GZIP_MIN_LEN: usize = 18;

/// The component in `bytes`: inflated when they are gzip-compressed (an upload of a large
/// component, or a master's copy sent to its slave), else as they are. Inflating stops
/// past `limit` bytes, so a small bomb cannot make a large allocation.
pub fn inflate(bytes: &[u8], limit: usize) -> Result<std::borrow::Cow<'_, [u8]>, FilterError> {
    use std::io::Read;
    if !bytes.starts_with(GZIP_MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    // The stream's own size field (its last 4 bytes, the size modulo 4 GiB; the limit is
    // far below that): one that says too large is refused without inflating anything.
    // One that lies is still caught by the bounded inflating below.
    if let Some(&[a, b, c, d]) = bytes
        .len()
        .checked_sub(4)
        .filter(|_| bytes.len() >= GZIP_MIN_LEN)
        .and_then(|at| bytes.get(at..))
    {
        let said = u32::from_le_bytes([a, b, c, d]);
        if usize::try_from(said).is_ok_and(|n| n > limit) {
            return Err(FilterError::TooLarge {
                size: said as usize,
                limit,
            });
        }
    }
    let mut out = Vec::new();
    // One byte over the limit tells "too large" from "exactly the limit".
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(bytes)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| {
            FilterError::NotAComponent(format!("gzip-compressed, but it does not inflate: {e}"))
        })?;
    if out.len() > limit {
        return Err(FilterError::TooLarge {
            size: out.len(),
            limit,
        });
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// `bytes` gzip-compressed when that makes them smaller, for sending a component; the
/// receiver inflates with [`inflate`].
pub fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    match enc.write_all(bytes).and_then(|()| enc.finish()) {
        Ok(gz) if gz.len() < bytes.len() => gz,
        _ => bytes.to_vec(),
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A compiled component that passed the import check, linked and ready to instantiate.
pub struct CompiledFilter {
    pub(super) pre: InstancePre<GuestState>,
    pub(super) filter_fn: ComponentExportIndex,
    pub(super) abi: FilterAbi,
}

/// Which of the WIT's two filter interfaces a component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FilterAbi {
    /// `filter`: messages as a `list<message>` (C, JavaScript, Python).
    Records,
    /// `packed-filter`: messages as packed entries in bytes (the Rust SDK).
    Packed,
}

impl CompiledFilter {
    pub fn component(&self) -> &Component {
        self.pre.component()
    }
}

/// The engine every filter of one runtime is compiled for and runs on, and the cache of
/// compiled functions its compiler shares between uploads.
pub(super) fn new_engine(
    config: &FilterConfig,
) -> Result<(Engine, Arc<CompileCache>), FilterError> {
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
        // Each filter has its own cap (asked at upload, at most `max_memory_limit`, enforced
        // by `GuestState`'s limiter); a slot must hold the largest allowed.
        .max_memory_size(config.max_memory_limit)
        .max_unused_warm_slots(n.min(16));
    let cache = Arc::new(CompileCache::new(config.compile_cache_bytes));
    let mut wasm = Config::new();
    wasm.cranelift_opt_level(OptLevel::Speed)
        .epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if config.compile_cache_bytes > 0 {
        wasm.enable_incremental_compilation(Arc::clone(&cache) as Arc<dyn wasmtime::CacheStore>)
            .map_err(|e| FilterError::Runtime(format!("compile cache: {e}")))?;
    }
    let engine = Engine::new(&wasm).map_err(|e| FilterError::Runtime(format!("engine: {e}")))?;
    Ok((engine, cache))
}

/// Starts the thread that advances the engine's epoch every tick, at which a running call's
/// time budget is checked (`budget`). Returns the limits of each kind of call and the flag
/// that stops the thread.
pub(super) fn start_epoch_clock(
    engine: &Engine,
    config: &FilterConfig,
) -> Result<(Budgets, Arc<AtomicBool>), FilterError> {
    // A tenth of the batch's CPU budget: a call overruns its budget by at most that much.
    let tick = Duration::from_millis((config.batch_cpu_ms / 10).clamp(1, 100));
    let budgets = Budgets {
        batch: Budget {
            cpu: Duration::from_millis(config.batch_cpu_ms),
            wall: Duration::from_millis(config.batch_wall_limit_ms),
            tick,
        },
        init: Budget {
            cpu: Duration::from_millis(config.init_cpu_ms),
            wall: Duration::from_millis(config.batch_wall_limit_ms.max(config.init_cpu_ms)),
            tick,
        },
    };
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
    Ok((budgets, stop))
}

/// Identifies the engine's compiled-code format, stable across processes.
pub(super) fn compat_hash(engine: &Engine) -> String {
    let mut h = Sha256Hasher::default();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex::encode(&h.0.finalize()[..16])
}

impl FilterRuntime {
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
                "not WebAssembly (no \\0asm header); upload the .wasm that `cargo build --target wasm32-wasip2` (or componentize-js, componentize-py) produces".into(),
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
        let depth = nesting_depth(bytes);
        if depth > MAX_NESTING {
            return Err(FilterError::Compile(format!(
                "components and modules nested {depth} deep; at most {MAX_NESTING} are taken"
            )));
        }
        Ok(())
    }
}

/// Deepest nesting of components and modules an upload may have. Checking a component
/// costs more than linearly in its depth (238 KB nested 20,000 deep took 39 s and 8 GB);
/// what toolchains make nests two or three deep.
const MAX_NESTING: usize = 64;

/// How deep components and modules nest in `bytes`, read in one pass without checking
/// anything else (what does not parse is left to the compiler to report); stops counting
/// past [`MAX_NESTING`].
fn nesting_depth(bytes: &[u8]) -> usize {
    use wasmparser::{Parser, Payload};
    let (mut depth, mut deepest) = (0usize, 0usize);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::ModuleSection { .. } | Payload::ComponentSection { .. }) => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_NESTING {
                    break;
                }
            }
            Ok(Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    deepest
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A component holding a component holding ... `levels` deep, each only a header.
    fn nested(levels: usize) -> Vec<u8> {
        const HEADER: &[u8] = b"\0asm\x0d\x00\x01\x00";
        let mut c = HEADER.to_vec();
        for _ in 0..levels {
            let mut outer = HEADER.to_vec();
            outer.push(4); // a component section
            let mut len = c.len();
            loop {
                let byte = (len & 0x7f) as u8;
                len >>= 7;
                outer.push(if len == 0 { byte } else { byte | 0x80 });
                if len == 0 {
                    break;
                }
            }
            outer.extend_from_slice(&c);
            c = outer;
        }
        c
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflating_is_bounded_whatever_the_stream_says_of_its_size() {
        let limit = 1_000;
        assert_eq!(inflate(&gzip(&[7; 1_000]), limit).unwrap().len(), 1_000);
        // Said too large by its own size field: refused as it says.
        assert!(matches!(
            inflate(&gzip(&[7; 1_001]), limit),
            Err(FilterError::TooLarge { size: 1_001, .. })
        ));
        // A size field that lies: inflating stops one byte past the limit all the same.
        let mut liar = gzip(&[7; 1 << 20]);
        let at = liar.len() - 4;
        liar[at..].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            inflate(&liar, limit),
            Err(FilterError::TooLarge { size: 1_001, .. })
        ));
    }

    #[test]
    fn nesting_is_measured_before_compiling_and_refused_past_the_bound() {
        assert_eq!(nesting_depth(&nested(0)), 0);
        assert_eq!(nesting_depth(&nested(3)), 3);
        assert_eq!(nesting_depth(&nested(MAX_NESTING)), MAX_NESTING);
        // Counting stops past the bound, however deep the upload goes.
        assert_eq!(nesting_depth(&nested(20_000)), MAX_NESTING + 1);
        // What does not parse is left to the compiler.
        assert_eq!(nesting_depth(b"\0asm\x0d\x00\x01\x00\x04\xff"), 0);
    }
}
