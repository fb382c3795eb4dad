//! The worker threads: `workers` threads, each with its own [`Worker`] (its instances),
//! taking jobs from the [`Scheduler`] (which job runs where: per-group turns and caps,
//! routing by filter, queue bounds). [`DirectCaller`] is a worker without a thread, for
//! callers already off the async runtime.
//!
//! Invariants: a worker's instances serve one job at a time, on the thread that owns the
//! worker; a job that panics costs its worker's instances, not the thread; the threads
//! stop once the scheduler is stopped (`shutdown`, or the last `FilterRuntime` clone gone)
//! and the queued jobs are done.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tracing::error;

use super::schedule::{Limits, Scheduler};
use super::worker::Worker;
use super::{
    BatchContext, FailureKind, FilterConfig, FilterError, FilterFailure, FilterRuntime,
    LoadedFilter, RecordBytes,
};

pub(super) type Job = super::schedule::Job<Worker>;

/// Starts `config.workers` threads on one scheduler; returns it.
pub(super) fn start_workers(config: &FilterConfig) -> Result<Arc<Scheduler<Worker>>, FilterError> {
    let scheduler = Arc::new(Scheduler::new(Limits {
        workers: config.workers,
        max_group_workers: config.group_workers(),
        max_group_queued: config.max_group_queued,
        queue_timeout: Duration::from_millis(config.queue_timeout_ms),
    }));
    // Workers keep most of the pool; the rest is for `init` at upload and for direct
    // callers, so an upload is never refused for want of a slot.
    let reserve = (config.max_instances as usize / 8).max(1);
    let per_worker =
        ((config.max_instances as usize).saturating_sub(reserve) / config.workers).max(1);
    for n in 0..config.workers {
        let scheduler = Arc::clone(&scheduler);
        let mut worker = Worker::new(per_worker);
        std::thread::Builder::new()
            .name(format!("weir-filter-{n}"))
            // Room for the wasm stack cap plus the host's own frames.
            .stack_size(config.max_wasm_stack + (4 << 20))
            .spawn(move || {
                while let Some(job) = scheduler.next(n, WORKER_SPIN) {
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job.run(&mut worker))).is_err()
                    {
                        error!("a filter worker job panicked; its instances are dropped");
                        worker.slots.clear();
                    }
                }
            })
            .map_err(|e| FilterError::Runtime(format!("cannot start a filter worker: {e}")))?;
    }
    Ok(scheduler)
}

/// How long a worker that finished a call stays awake for the next one: waking a sleeping
/// thread costs tens of µs on virtual machines, more than deciding a small batch.
const WORKER_SPIN: Duration = Duration::from_micros(50);

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
        self.worker
            .call(&self.runtime, filter, ctx, records, 0..records.len())
    }
}
