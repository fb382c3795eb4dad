//! Durability waits and group commit.
//!
//! In sync mode every append enqueues a [`Ticket`] for its end offset and waits on it.
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

/// A wait for the commit log to be durable up to an offset; blocking or `async`.
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

    /// Blocks until completed or `timeout` passes (`None` then).
    pub fn wait(&self, timeout: Duration) -> Option<Durable> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock();
        while s.done.is_none() {
            if self.cv.wait_until(&mut s, deadline).timed_out() {
                break;
            }
        }
        s.done.clone()
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
    waiting: Vec<(u64, Arc<Ticket>)>,
    stopping: bool,
}

/// The queue between appenders and the sync-mode flusher.
#[derive(Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Queue>,
    cv: Condvar,
}

impl GroupCommit {
    /// Registers a wait for durability up to `end`.
    pub fn request(&self, end: u64) -> Arc<Ticket> {
        let t = Arc::new(Ticket::default());
        let mut q = self.queue.lock();
        if q.stopping {
            drop(q);
            t.complete(Durable::Failed("the store is shutting down".into()));
            return t;
        }
        q.waiting.push((end, Arc::clone(&t)));
        drop(q);
        self.cv.notify_one();
        t
    }

    /// The flusher loop: `flush()` syncs everything committed and returns the durable
    /// offset. Returns once `stop` was called and the queue is drained.
    pub fn run(&self, mut flush: impl FnMut() -> Result<u64, String>) {
        // Size of the last batch and how long its sync took: when fewer appenders are
        // waiting than last time, the rest are usually on their way back (just woken by
        // the previous sync), so wait a little for them; never longer than one sync (2 ms at most),
        // which bounds the added latency while letting one sync serve them all.
        let mut last_batch = 0usize;
        let mut last_sync = Duration::ZERO;
        loop {
            let batch = {
                let mut q = self.queue.lock();
                while q.waiting.is_empty() && !q.stopping {
                    self.cv.wait(&mut q);
                }
                if q.waiting.is_empty() {
                    return;
                }
                let deadline = Instant::now() + last_sync.min(Duration::from_millis(2));
                while q.waiting.len() < last_batch && !q.stopping {
                    if self.cv.wait_until(&mut q, deadline).timed_out() {
                        break;
                    }
                }
                std::mem::take(&mut q.waiting)
            };
            last_batch = batch.len();
            let started = Instant::now();
            let flushed = flush();
            last_sync = started.elapsed();
            match flushed {
                Ok(durable) => {
                    let mut late = Vec::new();
                    for (end, t) in batch {
                        if end <= durable {
                            t.complete(Durable::Yes);
                        } else {
                            late.push((end, t));
                        }
                    }
                    if !late.is_empty() {
                        self.queue.lock().waiting.extend(late);
                    }
                }
                Err(e) => {
                    for (_, t) in batch {
                        t.complete(Durable::Failed(e.clone()));
                    }
                }
            }
        }
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
