//! A worker's instances, one per filter version, kept across batches (instantiating plus
//! `init` costs tens of µs, a call ~0.1 µs), the call itself, and what it counts: kept
//! messages, time, failures by kind, and the failure mark.
//!
//! Invariants: an instance whose call failed is never reused; one whose linear memory grew
//! by more than half the room it had after its first batch is replaced before the next
//! (memory a language runtime leaks would otherwise fail a batch once it reaches the cap:
//! componentize-js 0.23's engine grows by ~10 KiB a call); at most `capacity` are alive,
//! the least recently used going first; instances of versions no longer loaded go at the
//! next batch; a record that does not parse is kept, never shown to the filter.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::{debug, error, warn};
use wasmtime::component::{ComponentNamedList, Func, Lift, Lower, TypedFunc};
use wasmtime::{Store, Trap};
use weir_protocol::record;

use super::bindings::exports::weir::filter::filter::FilterError as GuestError;
use super::budget::{self, CallKind};
use super::engine::FilterAbi;
use super::guest::{GuestState, WireContext, WireMessage};
use super::{
    BatchContext, CompiledFilter, FailureKind, FilterFailure, FilterRuntime, LoadedFilter,
    RecordBatch,
};
use super::{bindings, packed_bindings};

/// How many records ahead of the one being converted are prefetched, and how many of their
/// first bytes: the fixed header and the attributes of a typical record.
const PREFETCH_AHEAD: usize = 8;
const PREFETCH_BYTES: usize = 192;
/// Bytes of one message's entry in `packed-filter`'s `entries` (`wit/filter.wit`).
const PACKED_ENTRY_BYTES: usize = 44;

pub(super) enum InitError {
    Params(String),
    Failed(FilterFailure),
}

/// Instantiates and runs `init`; returns the filter function and whether bodies are needed.
pub(super) fn init_instance(
    store: &mut Store<GuestState>,
    compiled: &CompiledFilter,
    params: &[(String, String)],
) -> Result<(Func, bool), InitError> {
    // Instantiation (start functions) and `init` share one budget.
    budget::arm(store, CallKind::Init);
    let instance = compiled
        .pre
        .instantiate(&mut *store)
        .map_err(|e| InitError::Failed(classify(store, e)))?;
    let initialized = match compiled.abi {
        FilterAbi::Records => bindings::MessageFilter::new(&mut *store, &instance)
            .and_then(|b| b.weir_filter_filter().call_init(&mut *store, params)),
        FilterAbi::Packed => packed_bindings::PackedMessageFilter::new(&mut *store, &instance)
            .and_then(|b| b.weir_filter_packed_filter().call_init(&mut *store, params)),
    };
    let needs = initialized
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
            match state.exceeded.take() {
                Some(exceeded) => exceeded.to_string(),
                None => "the call was interrupted at its deadline".to_owned(),
            },
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
pub(super) struct Slot {
    store: Store<GuestState>,
    filter_fn: Func,
    filter: std::sync::Weak<LoadedFilter>,
    last_used: u64,
    /// The instance's memory after its first successful batch, bytes.
    settled_memory: Option<usize>,
}

impl Slot {
    /// Whether the instance's memory grew, since its first successful batch, by more than
    /// half the room it had left then (checked after each successful batch).
    fn outgrown(&mut self) -> bool {
        let state = self.store.data();
        let now = state.memory_size;
        let settled = *self.settled_memory.get_or_insert(now);
        now.saturating_sub(settled) > state.memory_limit.saturating_sub(settled) / 2
    }
}

/// A filter thread's instances, keyed by filter id; at most `capacity`, least recently
/// used first out.
pub(super) struct Worker {
    pub(super) slots: HashMap<u64, Slot>,
    capacity: usize,
    clock: u64,
    /// The batch's attributes (and packed bodies) buffer, kept between calls.
    attributes: Vec<u8>,
    /// The batch's packed entries (`packed-filter`), kept between calls.
    entries: Vec<u8>,
}

impl Worker {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            slots: HashMap::new(),
            capacity,
            clock: 0,
            attributes: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Decides the records of `records` at positions `range` (one guest call).
    pub(super) fn call<B: RecordBatch + ?Sized>(
        &mut self,
        runtime: &FilterRuntime,
        filter: &Arc<LoadedFilter>,
        ctx: &BatchContext,
        records: &B,
        range: Range<usize>,
    ) -> Result<Vec<bool>, FilterFailure> {
        self.clock += 1;
        // Instances of replaced or removed filter versions go at the next batch.
        self.slots.retain(|_, s| s.filter.strong_count() > 0);
        let shared = &filter.shared;
        let len = range.len();
        let result = self.call_inner(runtime, filter, ctx, records, range);
        match &result {
            Ok((verdicts, call_nanos)) => {
                let kept = verdicts.iter().filter(|k| **k).count() as u64;
                shared.calls.fetch_add(1, Ordering::Relaxed);
                shared.messages_in.fetch_add(len as u64, Ordering::Relaxed);
                shared.messages_kept.fetch_add(kept, Ordering::Relaxed);
                shared.call_nanos.fetch_add(*call_nanos, Ordering::Relaxed);
                shared.consecutive_failures.store(0, Ordering::Relaxed);
                if self.slots.get_mut(&filter.id).is_some_and(Slot::outgrown) {
                    self.slots.remove(&filter.id);
                    debug!(filter = %shared.label, "a fresh instance replaces one whose memory grew past half its room");
                }
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
                    FailureKind::Unavailable | FailureKind::Busy | FailureKind::MarkedFailed => {
                        None
                    }
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
    fn call_inner<B: RecordBatch + ?Sized>(
        &mut self,
        runtime: &FilterRuntime,
        filter: &Arc<LoadedFilter>,
        ctx: &BatchContext,
        records: &B,
        range: Range<usize>,
    ) -> Result<(Vec<bool>, u64), FilterFailure> {
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
            let mut store = runtime.new_store(filter.memory, Some(Arc::clone(&filter.shared)));
            filter.shared.instantiations.fetch_add(1, Ordering::Relaxed);
            let (filter_fn, needs_body) =
                init_instance(&mut store, &filter.compiled, &filter.params).map_err(
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
                    settled_memory: None,
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
        let packed = filter.compiled.abi == FilterAbi::Packed;
        let mut messages = Vec::with_capacity(if packed { 0 } else { range.len() });
        let mut entries = std::mem::take(&mut self.entries);
        entries.clear();
        // The attributes (and, packed, the bodies) of the whole batch.
        let mut data = std::mem::take(&mut self.attributes);
        data.clear();
        let too_large =
            || FilterFailure::new(FailureKind::Unavailable, "a batch's bytes exceed 4 GiB");
        let mut damaged = Vec::new();
        // The records lie apart in the log (one queue's among others'), each a cache miss:
        // ask for the ones a few places ahead while converting this one.
        let end = range.end.min(records.count());
        for i in range.start..end.min(range.start + PREFETCH_AHEAD) {
            records.prefetch_at(i, PREFETCH_BYTES);
        }
        for i in range.start..end {
            if i + PREFETCH_AHEAD < end {
                records.prefetch_at(i + PREFETCH_AHEAD, PREFETCH_BYTES);
            }
            let Ok(m) = record::filter_message(records.bytes_at(i)) else {
                damaged.push(i - range.start);
                continue;
            };
            let attributes_at = u32::try_from(data.len()).map_err(|_| too_large())?;
            let attributes_len = u32::try_from(m.attributes.len()).map_err(|_| too_large())?;
            data.extend_from_slice(m.attributes);
            if !packed {
                messages.push(WireMessage {
                    queue_offset: m.queue_offset,
                    born_timestamp: m.born_timestamp,
                    store_timestamp: m.store_timestamp,
                    reconsume_count: m.reconsume_count,
                    attributes_at,
                    attributes_len,
                    body: filter.needs_body.then_some(m.body),
                });
                continue;
            }
            let (mut body_at, mut body_len) = (0u32, 0u32);
            if filter.needs_body {
                body_at = u32::try_from(data.len()).map_err(|_| too_large())?;
                body_len = u32::try_from(m.body.len()).map_err(|_| too_large())?;
                data.extend_from_slice(m.body);
            }
            entries.extend_from_slice(&m.queue_offset.to_le_bytes());
            entries.extend_from_slice(&m.born_timestamp.to_le_bytes());
            entries.extend_from_slice(&m.store_timestamp.to_le_bytes());
            entries.extend_from_slice(&m.reconsume_count.to_le_bytes());
            entries.extend_from_slice(&attributes_at.to_le_bytes());
            entries.extend_from_slice(&attributes_len.to_le_bytes());
            entries.extend_from_slice(&body_at.to_le_bytes());
            entries.extend_from_slice(&body_len.to_le_bytes());
        }
        let judged = if packed {
            entries.len() / PACKED_ENTRY_BYTES
        } else {
            messages.len()
        };
        let wire_ctx = WireContext {
            topic: &ctx.topic,
            queue_id: ctx.queue_id,
            consumer_group: &ctx.consumer_group,
        };
        let store = &mut slot.store;
        let type_error = |e: wasmtime::Error| {
            FilterFailure::new(FailureKind::Trap, format!("filter function type: {e}"))
        };
        let called = if packed {
            let typed = slot
                .filter_fn
                .typed::<(WireContext<'_>, &[u8], &[u8]), (Result<Vec<bool>, GuestError>,)>(&*store)
                .map_err(type_error)?;
            call_timed(store, typed, (wire_ctx, &entries, &data))
        } else {
            let typed = slot
                .filter_fn
                .typed::<(WireContext<'_>, &[u8], &[WireMessage<'_>]), (Result<Vec<bool>, GuestError>,)>(
                    &*store,
                )
                .map_err(type_error)?;
            call_timed(store, typed, (wire_ctx, &data, &messages))
        };
        let (called, took) = called;
        let call_nanos = took.as_nanos() as u64;
        drop(messages);
        self.attributes = data;
        self.entries = entries;
        let (answer,) = called.map_err(|e| classify(&mut slot.store, e))?;
        let verdicts = answer.map_err(|e| match e {
            GuestError::BadParams(m) | GuestError::Failed(m) => {
                FilterFailure::new(FailureKind::GuestError, m)
            }
        })?;
        if verdicts.len() != judged {
            return Err(FilterFailure::new(
                FailureKind::WrongVerdicts,
                format!("{} verdicts for {judged} messages", verdicts.len()),
            ));
        }
        if damaged.is_empty() {
            return Ok((verdicts, call_nanos));
        }
        warn!(filter = %filter.shared.label, queue = ctx.queue_id, records = damaged.len(), "stored records that do not parse are passed to the consumer unfiltered, which reports the damage");
        let mut judged = verdicts.into_iter();
        let mut damaged = damaged.into_iter().peekable();
        let verdicts = (0..end.saturating_sub(range.start))
            .map(|i| damaged.next_if_eq(&i).is_some() || judged.next().unwrap_or(false))
            .collect();
        Ok((verdicts, call_nanos))
    }
}

/// Calls a batch function under the batch budget; returns its result and the time the call
/// took (instantiation excluded).
fn call_timed<P, R>(
    store: &mut Store<GuestState>,
    typed: TypedFunc<P, R>,
    params: P,
) -> (wasmtime::Result<R>, std::time::Duration)
where
    P: ComponentNamedList + Lower,
    R: ComponentNamedList + Lift + 'static,
{
    budget::arm(store, CallKind::Batch);
    store.data_mut().last_error_line = None;
    let started = Instant::now();
    let called = typed.call(&mut *store, params);
    (called, started.elapsed())
}
