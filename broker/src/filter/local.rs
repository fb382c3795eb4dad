//! [`LocalFilter`]: a filter run outside a broker, in the broker's own runtime (same
//! validation, limits and calls), for `weir filter test`, `weir bench consume
//! --local-filter` and the web console's filter preview; and how those callers ask for
//! its memory cap ([`parse_memory`], [`FilterConfig::with_memory`]).

use std::sync::Arc;

use super::runtime::{self, BatchContext, FilterFailure, FilterLabel, LoadedFilter, LogSink};
use super::runtime::{FilterRuntime, RecordBytes};
use super::{FilterConfig, FilterError};

/// The least memory cap of an instance: one wasm page.
const MIN_MEMORY: u64 = 64 << 10;
/// The largest memory cap of an instance (the runtime's own bound).
const MAX_MEMORY: u64 = 4 << 30;

/// A filter run outside a broker (`weir filter test`): same validation, limits and calls.
pub struct LocalFilter {
    runtime: FilterRuntime,
    filter: Arc<LoadedFilter>,
}

impl LocalFilter {
    /// Validates, compiles and initialises `component` with `params`. Blocking: it
    /// compiles, so keep it off async worker threads.
    pub fn load(component: &[u8], params: Vec<(String, String)>) -> Result<Self, FilterError> {
        Self::load_with(component, params, FilterConfig::default())
    }

    /// [`LocalFilter::load`] with other limits or another number of workers. The filter's
    /// memory cap is `config.memory_limit`.
    pub fn load_with(
        component: &[u8],
        params: Vec<(String, String)>,
        config: FilterConfig,
    ) -> Result<Self, FilterError> {
        Self::load_logging(component, params, config, None)
    }

    /// [`LocalFilter::load_logging`] on a blocking thread of tokio's pool (it compiles):
    /// what async callers use. `config.memory_limit` is the instance's memory cap (see
    /// [`FilterConfig::with_memory`]).
    pub async fn load_in_background(
        component: Vec<u8>,
        params: Vec<(String, String)>,
        config: FilterConfig,
        log_sink: Option<LogSink>,
    ) -> Result<Self, FilterError> {
        tokio::task::spawn_blocking(move || {
            Self::load_logging(&component, params, config, log_sink)
        })
        .await
        .map_err(|e| FilterError::Runtime(format!("the loading task ended abnormally: {e}")))?
    }

    /// [`LocalFilter::load_with`], the filter's log lines going to `log_sink` when given
    /// (under the same rate limit and length cap as in a broker). Lines of the `init` run
    /// at load, which only validates the parameters, are not passed on: each instance runs
    /// `init` again before its first batch, and those lines are.
    pub fn load_logging(
        component: &[u8],
        params: Vec<(String, String)>,
        config: FilterConfig,
        log_sink: Option<LogSink>,
    ) -> Result<Self, FilterError> {
        let memory = config.memory_limit;
        let runtime = FilterRuntime::with_log_sink(config, log_sink)?;
        let label = FilterLabel::new("local", "local", 1, runtime::sha256_hex(component));
        let component = runtime::inflate(component, runtime.config().max_component_bytes)?;
        let compiled = runtime.compile(&component)?;
        let filter = runtime.load(compiled, params, memory, label)?;
        Ok(Self { runtime, filter })
    }

    pub fn needs_body(&self) -> bool {
        self.filter.needs_body()
    }

    /// The filter's counters so far (`log_lines_dropped` among them).
    pub fn stats(&self) -> weir_protocol::filter::FilterStats {
        self.filter.stats()
    }

    pub fn config(&self) -> &FilterConfig {
        self.runtime.config()
    }

    /// Decides one batch of encoded records (all of one queue).
    pub async fn run<R: RecordBytes>(
        &self,
        topic: &str,
        queue_id: u32,
        group: &str,
        records: Vec<R>,
    ) -> Result<Vec<bool>, FilterFailure> {
        let ctx = BatchContext {
            topic: topic.to_owned(),
            queue_id,
            consumer_group: group.to_owned(),
        };
        self.runtime
            .run(&self.filter, ctx, records)
            .await
            .map(|(_, verdicts)| verdicts)
    }
}

impl FilterConfig {
    /// These settings with an instance memory cap of `bytes` (a local run may ask more than
    /// a broker's `max_memory_limit`, which is raised to it), refused outside 64 KiB..=4 GiB.
    pub fn with_memory(mut self, bytes: u64) -> Result<Self, FilterError> {
        if bytes < MIN_MEMORY {
            return Err(FilterError::MemoryUnderMin {
                asked: bytes,
                min: MIN_MEMORY as usize,
            });
        }
        let cap = usize::try_from(bytes)
            .ok()
            .filter(|_| bytes <= MAX_MEMORY)
            .ok_or(FilterError::MemoryOverMax {
                asked: bytes,
                max: MAX_MEMORY as usize,
            })?;
        self.memory_limit = cap;
        self.max_memory_limit = self.max_memory_limit.max(cap);
        Ok(self)
    }
}

/// A byte count as operators write a memory cap: digits with an optional unit, B, KiB, MiB
/// or GiB (also K, M, G, KB, MB, GB, all binary; any case), e.g. `64MiB`, `512k`,
/// `1048576`. More than 0; the error says why not.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 64MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KiB, MiB, GiB)")),
    };
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err(format!("{s:?}: a memory cap must be more than 0"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("64MiB"), Ok(64 << 20));
        assert_eq!(parse_memory(" 512k "), Ok(512 << 10));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("1048576"), Ok(1 << 20));
        assert_eq!(parse_memory("3 mb"), Ok(3 << 20));
        for bad in [
            "",
            "MiB",
            "64XB",
            "0",
            "0MiB",
            "-1",
            "1.5MiB",
            "99999999999999999999GiB",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
        assert!(parse_memory("17179869184GiB").is_err(), "overflow");
    }

    #[test]
    fn a_memory_cap_within_bounds_raises_the_maximum() {
        let c = FilterConfig::default().with_memory(512 << 20).unwrap();
        assert_eq!((c.memory_limit, c.max_memory_limit), (512 << 20, 512 << 20));
        assert!(c.validate().is_ok());
        let c = FilterConfig::default().with_memory(1 << 20).unwrap();
        assert_eq!((c.memory_limit, c.max_memory_limit), (1 << 20, 256 << 20));
        assert!(matches!(
            FilterConfig::default().with_memory(1024),
            Err(FilterError::MemoryUnderMin { .. })
        ));
        assert!(matches!(
            FilterConfig::default().with_memory(5 << 30),
            Err(FilterError::MemoryOverMax { .. })
        ));
    }
}
