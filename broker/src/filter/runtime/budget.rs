//! The time budget of one call (a batch, or instantiation with `init`): the CPU time the
//! calling thread spends in it, so a busy machine never makes a good filter fail; wall-clock
//! time only as a generous safety net (`batch_wall_limit_ms`), for a thread starved so long
//! that something else is wrong. A batch and a start have budgets of their own
//! (`batch_cpu_ms`, `init_cpu_ms`): starting a JavaScript or Python engine copies its
//! memory image and runs its `init`, milliseconds of work where a batch takes microseconds,
//! and more on a slow machine whose fresh pages cost a fault each.
//!
//! How: the engine's epoch advances every tick (`engine::start_epoch_clock`); a call's
//! first deadline is its CPU budget in ticks, the earliest it can have used it. When a
//! running call reaches its deadline, wasmtime calls back on the calling thread, which
//! reads that thread's own CPU clock and either interrupts the call (naming which limit)
//! or lets it run until the earliest tick at which it could reach a limit.
//!
//! A read of the thread's CPU clock is a system call (about 1 µs on this project's virtual
//! machines, more than a small batch's call), so back-to-back calls share one: a call's
//! CPU baseline is a reading taken at most [`BASELINE_MAX_AGE`] of wall time before it
//! began. The thread can have used at most that much CPU time in between, so the error
//! only ever stops a call early, by at most that much, never late.
//!
//! Invariant: a call is interrupted within one tick after it has used its CPU budget (less
//! at most [`BASELINE_MAX_AGE`]) or after the wall limit, whichever comes first; time the
//! thread spends descheduled counts towards the wall limit only.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};
use wasmtime::{Store, UpdateDeadline};

use super::guest::GuestState;

/// The limits of one call, and the epoch tick they are checked at.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    pub(super) cpu: Duration,
    pub(super) wall: Duration,
    pub(super) tick: Duration,
}

/// The limits of each kind of call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budgets {
    pub(super) batch: Budget,
    /// Instantiation (start functions) and `init`, together.
    pub(super) init: Budget,
}

impl Budgets {
    /// The limits of a call of `kind`.
    pub(super) fn of(&self, kind: CallKind) -> Budget {
        match kind {
            CallKind::Init => self.init,
            CallKind::Batch => self.batch,
        }
    }
}

/// What a call does, for the budget it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallKind {
    Init,
    Batch,
}

/// Which limit interrupted a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exceeded {
    /// The call used its CPU budget.
    Cpu { budget: Duration },
    /// The call ran past the wall-clock safety net, having used `cpu` of CPU time.
    Wall { limit: Duration, cpu: Duration },
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Cpu { budget } => write!(
                f,
                "the call was interrupted after using its CPU time budget of {} ms",
                budget.as_millis()
            ),
            Exceeded::Wall { limit, cpu } => write!(
                f,
                "the call was interrupted at the wall-clock limit of {} ms (having used {} ms of CPU time)",
                limit.as_millis(),
                cpu.as_millis()
            ),
        }
    }
}

/// The CPU time the calling thread has used so far.
pub(super) fn thread_cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    // The kernel never reports a negative CPU time; treat one as zero rather than wrap.
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Where a running call started, on its thread's CPU clock and on the wall clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallStart {
    cpu: Duration,
    wall: Instant,
}

impl Budget {
    /// Ticks covering `d`, at least one.
    fn ticks(&self, d: Duration) -> u64 {
        let tick = self.tick.as_nanos().max(1);
        u64::try_from(d.as_nanos().div_ceil(tick))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// What to do when a call started at `start` reaches its epoch deadline, with the
    /// thread's CPU clock now at `cpu_now`: the ticks until the next check, or the limit
    /// it crossed.
    pub(super) fn check(
        &self,
        start: CallStart,
        cpu_now: Duration,
        wall_now: Instant,
    ) -> Result<u64, Exceeded> {
        let cpu = cpu_now.saturating_sub(start.cpu);
        let wall = wall_now.saturating_duration_since(start.wall);
        if cpu >= self.cpu {
            return Err(Exceeded::Cpu { budget: self.cpu });
        }
        if wall >= self.wall {
            return Err(Exceeded::Wall {
                limit: self.wall,
                cpu,
            });
        }
        // Neither limit can be reached before the smaller of the two remainders has passed
        // on the wall clock (CPU time never runs faster than the wall clock).
        let remaining = (self.cpu - cpu).min(self.wall - wall);
        Ok(self.ticks(remaining))
    }
}

/// How old a reading of the thread's CPU clock may be to serve as a call's baseline.
pub(super) const BASELINE_MAX_AGE: Duration = Duration::from_millis(1);

thread_local! {
    /// This thread's last CPU clock reading, and when (wall clock) it was taken.
    static LAST_READING: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// The thread's CPU time now, or as read at most [`BASELINE_MAX_AGE`] ago.
fn cpu_baseline(now: Instant) -> Duration {
    LAST_READING.with(|last| match last.get() {
        Some((at, cpu)) if now.saturating_duration_since(at) <= BASELINE_MAX_AGE => cpu,
        _ => {
            let cpu = thread_cpu_time();
            last.set(Some((now, cpu)));
            cpu
        }
    })
}

/// Starts a call's clock on the calling thread and sets its first deadline.
pub(super) fn arm(store: &mut Store<GuestState>, kind: CallKind) {
    let budget = store.data().budgets.of(kind);
    let wall = Instant::now();
    store.data_mut().armed = kind;
    store.data_mut().call = Some(CallStart {
        cpu: cpu_baseline(wall),
        wall,
    });
    store.data_mut().exceeded = None;
    store.set_epoch_deadline(budget.ticks(budget.cpu.min(budget.wall)));
}

/// Installs the deadline check on a new store.
pub(super) fn install(store: &mut Store<GuestState>) {
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        let Some(start) = state.call else {
            // Not inside an armed call (cannot happen: every call arms first): stop it.
            return Ok(UpdateDeadline::Interrupt);
        };
        let budget = state.budgets.of(state.armed);
        match budget.check(start, thread_cpu_time(), Instant::now()) {
            Ok(ticks) => Ok(UpdateDeadline::Continue(ticks)),
            Err(exceeded) => {
                state.exceeded = Some(exceeded);
                Ok(UpdateDeadline::Interrupt)
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        Budget {
            cpu: Duration::from_millis(50),
            wall: Duration::from_millis(2000),
            tick: Duration::from_millis(5),
        }
    }

    fn start() -> (CallStart, Instant) {
        let wall = Instant::now();
        (
            CallStart {
                cpu: Duration::from_millis(100),
                wall,
            },
            wall,
        )
    }

    #[test]
    fn a_descheduled_call_goes_on_until_it_has_used_its_cpu_budget() {
        let (s, t0) = start();
        let b = budget();
        // 500 ms on the wall clock but only 10 ms on the CPU: a busy machine, not the filter.
        let next = b.check(
            s,
            s.cpu + Duration::from_millis(10),
            t0 + Duration::from_millis(500),
        );
        // 40 ms of CPU budget left: checked again in 8 ticks.
        assert_eq!(next, Ok(8));
        assert_eq!(
            b.check(
                s,
                s.cpu + Duration::from_millis(50),
                t0 + Duration::from_millis(600)
            ),
            Err(Exceeded::Cpu {
                budget: Duration::from_millis(50)
            })
        );
    }

    #[test]
    fn the_wall_clock_is_only_a_safety_net() {
        let (s, t0) = start();
        let b = budget();
        let r = b.check(
            s,
            s.cpu + Duration::from_millis(3),
            t0 + Duration::from_millis(2000),
        );
        assert_eq!(
            r,
            Err(Exceeded::Wall {
                limit: Duration::from_millis(2000),
                cpu: Duration::from_millis(3)
            })
        );
        // Close to the wall limit, the next check comes when it would be reached.
        let r = b.check(s, s.cpu, t0 + Duration::from_millis(1994));
        assert_eq!(r, Ok(2));
    }

    #[test]
    fn back_to_back_calls_share_a_recent_baseline_and_an_old_one_is_read_again() {
        let t0 = Instant::now();
        let first = cpu_baseline(t0);
        // Within the age limit: the same reading, no system call.
        assert_eq!(cpu_baseline(t0 + BASELINE_MAX_AGE / 2), first);
        // Past it: read again (the thread has used some CPU time since, if only that read).
        let before = thread_cpu_time();
        while thread_cpu_time().saturating_sub(before) < Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        let later = cpu_baseline(t0 + BASELINE_MAX_AGE * 3);
        assert!(later > first, "{later:?} <= {first:?}");
    }

    #[test]
    fn the_thread_cpu_clock_counts_this_threads_work_only() {
        let before = thread_cpu_time();
        let wall = Instant::now();
        // Sleeping costs no CPU time.
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time().saturating_sub(before);
        assert!(wall.elapsed() >= Duration::from_millis(30));
        assert!(
            slept < Duration::from_millis(20),
            "sleeping used {slept:?} of CPU"
        );
        // Spinning does.
        let before = thread_cpu_time();
        while thread_cpu_time().saturating_sub(before) < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
    }
}
