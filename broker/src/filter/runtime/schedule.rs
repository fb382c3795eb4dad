//! Which filter job runs next, and on which worker.
//!
//! - **Per group, in turn**: jobs wait per consumer group; a free worker serves the groups
//!   with waiting jobs in turn (round robin), so a group pulled by many consumers does not
//!   crowd out one pulled by few.
//! - **A cap per group**: at most `max_group_workers` jobs of one group run at once, so a
//!   slow filter (or a group pulled by many consumers) holds at most that many workers and
//!   the other groups keep the rest.
//! - **Idle workers lent to short batches**: while no other group has a job waiting, a
//!   group whose recent batches averaged under [`LEND_BELOW`] may run on every worker
//!   (one consumer group catching up on a backlog uses every core). A job of another
//!   group that arrives then waits, as a rule, for about one such short batch: past the
//!   cap, the next free worker goes to the other group. (An average: a batch of 4 ms or
//!   more ends the lending at once, a longer run of slower ones too.)
//! - **Routed by filter**: a job is routed to worker `filter id % workers`, where that
//!   filter's instance stays warm; another worker takes it only while its own worker is
//!   busy (an instance there costs one `init`, far less than waiting for a slow batch).
//! - **Bounded waiting**: a job that has waited `queue_timeout` without a worker is
//!   answered busy, not run (the pull is retried, its offset unmoved); a group holds at
//!   most `max_group_queued` waiting jobs, past which a new one is answered busy at once.
//!
//! Invariants: every submitted job is either run once or refused once, never both, never
//! neither (also at shutdown: queued jobs still run, as before the scheduler stops); a
//! group starts a job past its cap only while it is the only group with jobs waiting and
//! its recent batches were short on average, so while another group waits no group holds
//! more than its cap plus the batches it had started before; all choices are made under
//! one lock, and every change that can let a job start wakes the workers.
//!
//! Generic over what a worker carries (`W`), so the policy is tested without wasm.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a job is given: its worker, or the reason it will not run.
pub(super) enum Turn<'a, W> {
    Run(&'a mut W),
    Refused(Refusal),
}

/// Why a job was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It waited `waited` for a worker, past the queue timeout.
    TimedOut { waited: Duration },
    /// Its group already had `queued` jobs waiting.
    GroupQueueFull { queued: usize },
    /// The runtime is stopping.
    Stopped,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::TimedOut { waited } => write!(
                f,
                "the batch waited {} ms for a filter worker (filter.queue_timeout_ms); the filter workers are busy",
                waited.as_millis()
            ),
            Refusal::GroupQueueFull { queued } => write!(
                f,
                "the group already has {queued} filter batches waiting (filter.max_group_queued)"
            ),
            Refusal::Stopped => write!(f, "the filter runtime is stopped"),
        }
    }
}

/// A job: given its turn, it does its work and returns how to hand over the result,
/// which the worker calls only after it has marked itself free again, so the caller's next
/// job (routed to the same worker) finds that worker free and its instance warm.
pub(super) type Job<W> = Box<dyn FnOnce(Turn<'_, W>) -> Option<Delivery> + Send>;

/// Hands a job's result to its caller.
pub(super) type Delivery = Box<dyn FnOnce() + Send>;

/// The scheduler's settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) workers: usize,
    pub(super) max_group_workers: usize,
    pub(super) max_group_queued: usize,
    pub(super) queue_timeout: Duration,
}

struct Waiting<W> {
    job: Job<W>,
    route: usize,
    since: Instant,
}

struct GroupJobs<W> {
    waiting: VecDeque<Waiting<W>>,
    running: usize,
    /// How long its recent batches ran (a moving average over the jobs that did work;
    /// `None` before the first since the group was last idle): decides whether idle
    /// workers are lent to it.
    recent: Option<Duration>,
}

impl<W> GroupJobs<W> {
    fn new() -> Self {
        GroupJobs {
            waiting: VecDeque::new(),
            running: 0,
            recent: None,
        }
    }
}

struct State<W> {
    groups: HashMap<Arc<str>, GroupJobs<W>>,
    /// Groups with waiting jobs, in the order they are served.
    turns: VecDeque<Arc<str>>,
    busy: Vec<bool>,
    stopping: bool,
}

/// The job queue the workers share.
pub(super) struct Scheduler<W> {
    state: Mutex<State<W>>,
    wake: Condvar,
    limits: Limits,
}

/// How far into a group's queue a worker looks for a job routed to it: the queue is FIFO,
/// so the oldest jobs are served first whatever their routing.
const LOOK_AHEAD: usize = 16;

/// A group whose batches run shorter than this on average may use the workers its cap
/// keeps for others while no other group waits: what another group's job may then wait
/// for a worker, on top of its usual wait, is about one such batch. (A filtered pull's
/// batch of a few hundred messages takes tens to hundreds of µs; a slow filter's, up to
/// its 50 ms budget.)
pub(super) const LEND_BELOW: Duration = Duration::from_millis(1);

impl<W> Scheduler<W> {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            state: Mutex::new(State {
                groups: HashMap::new(),
                turns: VecDeque::new(),
                busy: vec![false; limits.workers],
                stopping: false,
            }),
            wake: Condvar::new(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A panic while holding the lock cannot leave the state half-changed in a way that
        // matters more than stopping the broker's filters would: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job` for `group`, routed by `filter_id`; refuses it (calling it with the
    /// reason, on this thread) when the group's queue is full or the runtime is stopping.
    pub(super) fn submit(&self, group: &str, filter_id: u64, job: Job<W>) {
        let route = usize::try_from(filter_id % self.limits.workers.max(1) as u64).unwrap_or(0);
        let refusal = {
            let mut state = self.lock();
            if state.stopping {
                Some(Refusal::Stopped)
            } else {
                let key = match state.groups.get_key_value(group) {
                    Some((k, _)) => Arc::clone(k),
                    None => Arc::from(group),
                };
                let jobs = state
                    .groups
                    .entry(Arc::clone(&key))
                    .or_insert_with(GroupJobs::new);
                if jobs.waiting.len() >= self.limits.max_group_queued {
                    Some(Refusal::GroupQueueFull {
                        queued: jobs.waiting.len(),
                    })
                } else {
                    let first = jobs.waiting.is_empty();
                    jobs.waiting.push_back(Waiting {
                        job,
                        route,
                        since: Instant::now(),
                    });
                    if first {
                        state.turns.push_back(key);
                    }
                    self.wake.notify_all();
                    return;
                }
            }
        };
        if let Some(r) = refusal {
            deliver(job(Turn::Refused(r)));
        }
    }

    /// Stops taking jobs; the workers finish the queued ones, then [`Scheduler::next`]
    /// returns `None`.
    pub(super) fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_all();
    }

    /// The next job for worker `me`, waiting for one; `None` once stopping and nothing is
    /// queued. Jobs that waited past the timeout are refused on the way. `spin` is how
    /// long to stay awake polling before sleeping (waking a sleeping thread costs tens of
    /// µs on virtual machines, more than a small batch). The polling yields the core
    /// between looks: where workers outnumber idle cores, the thread that would make the
    /// next job (a pull's) is often waiting for this one's core.
    pub(super) fn next(&self, me: usize, spin: Duration) -> Option<Running<'_, W>> {
        let spin_until = Instant::now() + spin;
        let mut state = self.lock();
        if let Some(b) = state.busy.get_mut(me) {
            *b = false;
        }
        loop {
            let mut expired = Vec::new();
            let picked = self.pick(&mut state, me, &mut expired);
            if !expired.is_empty() {
                drop(state);
                for (job, waited) in expired {
                    deliver(job(Turn::Refused(Refusal::TimedOut { waited })));
                }
                state = self.lock();
                if picked.is_none() {
                    continue;
                }
            }
            if let Some((group, job)) = picked {
                if let Some(b) = state.busy.get_mut(me) {
                    *b = true;
                }
                return Some(Running {
                    scheduler: self,
                    me,
                    group,
                    job: Some(job),
                    ran: None,
                });
            }
            if state.stopping && state.turns.is_empty() {
                return None;
            }
            if Instant::now() < spin_until {
                drop(state);
                // Not `spin_loop`: with two cores, busy polling took CPU from the pull
                // threads and the consumer; a fresh broker's filtered catch-up examined a
                // median 7.96 M offsets a second polling busily, 8.38 M yielding, 7.34 M
                // not polling (4 alternated runs of `scripts/bench-filter-languages`' Rust
                // row, 3 M messages).
                std::thread::yield_now();
                state = self.lock();
            } else {
                // Wake up now and then to refuse jobs that waited too long even when no
                // worker frees up (a group at its cap while the others sleep).
                let nap = self.limits.queue_timeout.max(Duration::from_millis(1)) / 2;
                state = self
                    .wake
                    .wait_timeout(state, nap)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
    }

    /// Takes the job worker `me` should run now, if any; moves expired jobs to `expired`.
    fn pick(
        &self,
        state: &mut State<W>,
        me: usize,
        expired: &mut Vec<(Job<W>, Duration)>,
    ) -> Option<(Arc<str>, Job<W>)> {
        let now = Instant::now();
        let State {
            groups,
            turns,
            busy,
            ..
        } = state;
        let mut chosen = None;
        // (Only groups with jobs waiting are in line.)
        let alone = turns.len() == 1;
        for (turn, key) in turns.iter().enumerate() {
            let Some(jobs) = groups.get_mut(key) else {
                continue;
            };
            while let Some(w) = jobs.waiting.front() {
                let waited = now.saturating_duration_since(w.since);
                if waited < self.limits.queue_timeout {
                    break;
                }
                if let Some(w) = jobs.waiting.pop_front() {
                    expired.push((w.job, waited));
                }
            }
            let lent = alone && jobs.recent.is_some_and(|d| d < LEND_BELOW);
            let cap = match lent {
                true => self.limits.workers,
                false => self.limits.max_group_workers,
            };
            if jobs.running >= cap {
                continue;
            }
            // Its own jobs first; another worker's only while that worker is busy.
            let found = jobs
                .waiting
                .iter()
                .take(LOOK_AHEAD)
                .position(|w| w.route == me)
                .or_else(|| {
                    jobs.waiting
                        .iter()
                        .take(LOOK_AHEAD)
                        .position(|w| busy.get(w.route).copied().unwrap_or(true))
                });
            if let Some(i) = found {
                chosen = Some((turn, i));
                break;
            }
        }
        let taken = chosen.and_then(|(turn, i)| {
            let key = turns.remove(turn)?;
            let jobs = groups.get_mut(&key)?;
            let w = jobs.waiting.remove(i)?;
            jobs.running += 1;
            if !jobs.waiting.is_empty() {
                // Served: to the back of the line.
                turns.push_back(Arc::clone(&key));
            }
            Some((key, w.job))
        });
        // Groups emptied by expiry leave the line; idle ones are forgotten.
        turns.retain(|k| groups.get(k).is_some_and(|g| !g.waiting.is_empty()));
        groups.retain(|_, g| !g.waiting.is_empty() || g.running > 0);
        taken
    }

    /// Worker `me` is done with a job of `group` that ran for `ran` (`None`: it did no
    /// work, or panicked).
    fn finished(&self, me: usize, group: &Arc<str>, ran: Option<Duration>) {
        let mut state = self.lock();
        if let Some(b) = state.busy.get_mut(me) {
            *b = false;
        }
        let mut forget = false;
        if let Some(jobs) = state.groups.get_mut(group) {
            jobs.running = jobs.running.saturating_sub(1);
            forget = jobs.running == 0 && jobs.waiting.is_empty();
            if let Some(ran) = ran {
                // Weighted to the newest: one batch of 4 × LEND_BELOW ends the lending.
                jobs.recent = Some(match jobs.recent {
                    Some(avg) => (avg * 3 + ran) / 4,
                    None => ran,
                });
            }
        }
        if forget {
            state.groups.remove(group);
        }
        // A slot of this group's cap is free: a sleeping worker may now take its next job.
        self.wake.notify_all();
    }
}

/// A job taken by a worker: run it with [`Running::run`]; its group's slot is given back
/// when this is dropped (also if the job panics).
pub(super) struct Running<'a, W> {
    scheduler: &'a Scheduler<W>,
    me: usize,
    group: Arc<str>,
    job: Option<Job<W>>,
    /// How long the job ran, once it returned with a result to hand over (a job that
    /// returns none did no work: its pull was abandoned, and a slow filter's abandoned
    /// batches must not make it look fast).
    ran: Option<Duration>,
}

impl<W> Running<'_, W> {
    /// Runs the job, gives its group's slot and this worker back, then hands over the result.
    pub(super) fn run(mut self, worker: &mut W) {
        let started = Instant::now();
        let delivery = self.job.take().and_then(|job| job(Turn::Run(worker)));
        self.ran = delivery.as_ref().map(|_| started.elapsed());
        drop(self);
        deliver(delivery);
    }
}

impl<W> Drop for Running<'_, W> {
    fn drop(&mut self) {
        self.scheduler.finished(self.me, &self.group, self.ran);
    }
}

fn deliver(delivery: Option<Delivery>) {
    if let Some(d) = delivery {
        d();
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
