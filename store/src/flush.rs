//! Durability waits and group commit.
//!
//! In sync mode every append registers a wait for its end offset (blocking waiters on a
//! shared condition, async ones with a [`Ticket`]).
//! One flusher thread takes everything queued, syncs the commit log once up to what is
//! committed, and completes every ticket the sync covered: appends that arrive while a
//! sync is running share the next one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Completion of one durability wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Durable {
    Yes,
    Failed(String),
}

#[derive(Default)]
struct TicketState {
    done: Option<Durable>,
    waker: Option<Waker>,
}

/// An async wait for the commit log to be durable up to an offset.
#[derive(Default)]
pub(crate) struct Ticket {
    state: Mutex<TicketState>,
    cv: Condvar,
}

impl Ticket {
    fn complete(&self, result: Durable) {
        let waker = {
            let mut s = self.state.lock();
            s.done = Some(result);
            s.waker.take()
        };
        self.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Future over a shared ticket.
pub(crate) struct TicketFuture(pub Arc<Ticket>);

impl Future for TicketFuture {
    type Output = Durable;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Durable> {
        let mut s = self.0.state.lock();
        match &s.done {
            Some(d) => Poll::Ready(d.clone()),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[derive(Default)]
struct Queue {
    /// Async waiters, each woken through its own ticket.
    tickets: Vec<(u64, Arc<Ticket>)>,
    /// Blocking waiters registered since the flusher last took a batch.
    blocking: usize,
    /// Highest end offset anyone asked for.
    requested: u64,
    stopping: bool,
}

/// What blocking waiters read after each sync.
#[derive(Default)]
struct Outcome {
    durable: u64,
    /// The last failed sync: it failed every wait for an end at or below `.0`.
    failed: Option<(u64, String)>,
    stopped: bool,
}

/// The queue between appenders and the sync-mode flusher.
///
/// Blocking appenders all wait on one condition variable over the durable offset, so a
/// sync wakes all of them with a single broadcast (waking hundreds one by one cost the
/// flusher more than the fsync itself); async appenders get a ticket each.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    cv: Condvar,
    outcome: std::sync::Mutex<Outcome>,
    outcome_cv: std::sync::Condvar,
}

impl GroupCommit {
    fn outcome(&self) -> std::sync::MutexGuard<'_, Outcome> {
        // The flusher never panics while holding it; if it did, the data is still sound.
        self.outcome.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an async wait for durability up to `end`.
    pub fn request(&self, end: u64) -> Arc<Ticket> {
        let t = Arc::new(Ticket::default());
        let mut q = self.queue.lock();
        if q.stopping {
            drop(q);
            t.complete(Durable::Failed("the store is shutting down".into()));
            return t;
        }
        q.tickets.push((end, Arc::clone(&t)));
        q.requested = q.requested.max(end);
        drop(q);
        self.cv.notify_one();
        t
    }

    /// Blocks until the log is durable up to `end`, the sync covering it failed, or
    /// `timeout` passed (`None`).
    pub fn wait_durable(&self, end: u64, timeout: Duration) -> Option<Durable> {
        {
            let mut q = self.queue.lock();
            if q.stopping {
                return Some(Durable::Failed("the store is shutting down".into()));
            }
            q.blocking += 1;
            q.requested = q.requested.max(end);
        }
        self.cv.notify_one();
        let deadline = Instant::now() + timeout;
        let mut o = self.outcome();
        loop {
            if o.durable >= end {
                return Some(Durable::Yes);
            }
            if let Some((upto, e)) = &o.failed
                && end <= *upto
            {
                return Some(Durable::Failed(e.clone()));
            }
            if o.stopped {
                return Some(Durable::Failed("the store is shutting down".into()));
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            o = self
                .outcome_cv
                .wait_timeout(o, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The flusher loop: `flush()` syncs everything committed and returns the durable
    /// offset. Returns once `stop` was called and the queue is drained.
    pub fn run(&self, mut flush: impl FnMut() -> Result<u64, String>) {
        // Size of the last batch and how long its sync took: when fewer appenders are
        // waiting than last time, the rest are usually on their way back (just woken by
        // the previous sync), so wait a little for them; never longer than one sync (2 ms
        // at most), which bounds the added latency while letting one sync serve them all.
        let mut last_batch = 0usize;
        let mut last_sync = Duration::ZERO;
        loop {
            let (tickets, requested) = {
                let mut q = self.queue.lock();
                while q.tickets.is_empty() && q.blocking == 0 && !q.stopping {
                    self.cv.wait(&mut q);
                }
                if q.tickets.is_empty() && q.blocking == 0 {
                    break;
                }
                let deadline = Instant::now() + last_sync.min(Duration::from_millis(2));
                while q.tickets.len() + q.blocking < last_batch && !q.stopping {
                    if self.cv.wait_until(&mut q, deadline).timed_out() {
                        break;
                    }
                }
                last_batch = q.tickets.len() + q.blocking;
                q.blocking = 0;
                (std::mem::take(&mut q.tickets), q.requested)
            };
            let started = Instant::now();
            let flushed = flush();
            last_sync = started.elapsed();
            match flushed {
                Ok(durable) => {
                    {
                        let mut o = self.outcome();
                        o.durable = o.durable.max(durable);
                    }
                    self.outcome_cv.notify_all();
                    let mut late = Vec::new();
                    for (end, t) in tickets {
                        if end <= durable {
                            t.complete(Durable::Yes);
                        } else {
                            late.push((end, t));
                        }
                    }
                    if !late.is_empty() || durable < requested {
                        // Cannot happen (a request follows its append, and a sync covers
                        // everything appended), but never strand a waiter if it does.
                        let mut q = self.queue.lock();
                        q.tickets.extend(late);
                        q.blocking += usize::from(durable < requested);
                    }
                }
                Err(e) => {
                    self.outcome().failed = Some((requested, e.clone()));
                    self.outcome_cv.notify_all();
                    for (_, t) in tickets {
                        t.complete(Durable::Failed(e.clone()));
                    }
                }
            }
        }
        self.outcome().stopped = true;
        self.outcome_cv.notify_all();
    }

    pub fn stop(&self) {
        self.queue.lock().stopping = true;
        self.cv.notify_all();
    }
}

/// A stop signal background threads sleep on.
#[derive(Default)]
pub(crate) struct Shutdown {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl Shutdown {
    /// Sleeps up to `d`; returns true if the store is stopping.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut s = self.stopped.lock();
        while !*s {
            if self.cv.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        *s
    }
    pub fn trigger(&self) {
        *self.stopped.lock() = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark()
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn a_failed_sync_fails_its_waiters_and_a_later_one_succeeds() {
        let gc = Arc::new(GroupCommit::default());
        let results = Arc::new(Mutex::new(vec![
            Err("sync failed: EIO".to_string()),
            Ok(200),
        ]));
        let flusher = {
            let (gc, results) = (Arc::clone(&gc), Arc::clone(&results));
            std::thread::spawn(move || gc.run(|| results.lock().remove(0)))
        };
        let t = gc.request(100);
        assert!(matches!(block_on(TicketFuture(t)), Durable::Failed(e) if e.contains("EIO")));
        assert_eq!(
            gc.wait_durable(150, Duration::from_secs(10)),
            Some(Durable::Yes)
        );
        gc.stop();
        flusher.join().unwrap();
        assert!(matches!(
            gc.wait_durable(300, Duration::from_secs(1)),
            Some(Durable::Failed(_))
        ));
    }

    #[test]
    fn blocking_and_async_waiters_share_syncs() {
        let gc = Arc::new(GroupCommit::default());
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let flusher = {
            let (gc, syncs) = (Arc::clone(&gc), Arc::clone(&syncs));
            std::thread::spawn(move || {
                gc.run(|| {
                    syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(u64::MAX)
                })
            })
        };
        std::thread::scope(|s| {
            for i in 0..32u64 {
                let gc = &gc;
                s.spawn(move || {
                    for k in 0..10 {
                        let end = i * 100 + k;
                        if i % 2 == 0 {
                            assert_eq!(
                                gc.wait_durable(end, Duration::from_secs(10)),
                                Some(Durable::Yes)
                            );
                        } else {
                            assert_eq!(block_on(TicketFuture(gc.request(end))), Durable::Yes);
                        }
                    }
                });
            }
        });
        gc.stop();
        flusher.join().unwrap();
        let n = syncs.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n < 320, "{n} syncs for 320 waits: no grouping");
    }
}
