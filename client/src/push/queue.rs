//! One assigned queue as its consumer sees it: what was pulled and is not done yet, where
//! progress stands, whether it was taken away, and (clustering) the broker lease.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::MessageExt;
use super::offsets::OffsetStore;
use crate::MessageQueue;

/// How long a lease the broker confirmed is trusted without renewal; shorter than the
/// broker's lease (60 s) so a member stops before the broker would hand the queue on.
const LEASE_TRUSTED: Duration = Duration::from_secs(30);

pub struct ProcessQueue {
    pub mq: MessageQueue,
    pub expression: String,
    state: Mutex<State>,
    dropped: watch::Sender<bool>,
    /// Signalled when messages are done (a puller waiting for room may go on).
    pub space: Notify,
    /// Listener calls on this queue's messages under way (a release waits for them).
    calls: AtomicUsize,
    /// Whether consuming it takes a broker lease (clustering).
    leased: bool,
    /// When the broker last confirmed the lease.
    locked_at: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct State {
    /// Pulled and not done: offset → body bytes.
    in_flight: BTreeMap<u64, usize>,
    bytes: usize,
    /// Orderly: pulled, not yet handed to the listener, in queue order.
    waiting: BTreeMap<u64, MessageExt>,
    /// Orderly: a runner is scheduled or running.
    running: bool,
    /// Just past everything pulled so far (the last pull's next offset).
    pulled_through: u64,
}

impl State {
    fn commit_offset(&self) -> u64 {
        self.in_flight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.pulled_through)
    }
}

impl ProcessQueue {
    pub fn new(mq: MessageQueue, expression: String, start: u64, leased: bool) -> Self {
        Self {
            mq,
            expression,
            state: Mutex::new(State {
                pulled_through: start,
                ..State::default()
            }),
            dropped: watch::channel(false).0,
            space: Notify::new(),
            calls: AtomicUsize::new(0),
            leased,
            locked_at: Mutex::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_dropped(&self) -> bool {
        *self.dropped.borrow()
    }

    pub fn dropped_signal(&self) -> watch::Receiver<bool> {
        self.dropped.subscribe()
    }

    /// The queue is no longer this member's: nothing more is pulled or consumed, and its
    /// progress no longer reaches the offset store. Returns the offset to commit.
    pub fn drop_now(&self) -> u64 {
        let s = self.state();
        self.dropped.send_replace(true);
        self.space.notify_waiters();
        s.commit_offset()
    }

    /// The offset to commit: the smallest still in flight, else just past the last pull.
    pub fn commit_offset(&self) -> u64 {
        self.state().commit_offset()
    }

    /// Messages pulled and not done.
    pub fn in_flight(&self) -> usize {
        self.state().in_flight.len()
    }

    pub fn over_limits(&self, max_count: usize, max_bytes: usize) -> bool {
        let s = self.state();
        s.in_flight.len() >= max_count || s.bytes >= max_bytes
    }

    /// Records a pull's messages as in flight and where the next pull starts. Orderly, the
    /// messages wait here for the queue's runner and none are returned; otherwise they are
    /// returned for the listener. `None` if the queue was dropped meanwhile.
    pub fn add(
        &self,
        msgs: Vec<MessageExt>,
        next_offset: u64,
        orderly: bool,
        offsets: &OffsetStore,
    ) -> Option<Vec<MessageExt>> {
        let mut s = self.state();
        if self.is_dropped() {
            return None;
        }
        for m in &msgs {
            if s.in_flight.insert(m.queue_offset, m.body.len()).is_none() {
                s.bytes += m.body.len();
            }
        }
        s.pulled_through = s.pulled_through.max(next_offset);
        if s.in_flight.is_empty() {
            // Entries passed over (filtered out, or gone) move progress on too.
            offsets.update(&self.mq, s.pulled_through);
        }
        if !orderly {
            return Some(msgs);
        }
        s.waiting
            .extend(msgs.into_iter().map(|m| (m.queue_offset, m)));
        Some(Vec::new())
    }

    /// Marks messages done and records the new progress (unless dropped).
    pub fn remove(&self, done: impl IntoIterator<Item = u64>, offsets: &OffsetStore) {
        {
            let mut s = self.state();
            for o in done {
                if let Some(len) = s.in_flight.remove(&o) {
                    s.bytes -= len;
                }
            }
            if !self.is_dropped() {
                offsets.update(&self.mq, s.commit_offset());
            }
        }
        self.space.notify_waiters();
    }

    /// Orderly: the next messages in queue order, at most `n`; none → the runner stops.
    pub fn take_waiting(&self, n: usize) -> Vec<MessageExt> {
        let mut s = self.state();
        let mut out = Vec::with_capacity(n.min(s.waiting.len()));
        while out.len() < n {
            match s.waiting.pop_first() {
                Some((_, m)) => out.push(m),
                None => break,
            }
        }
        if out.is_empty() {
            s.running = false;
        }
        out
    }

    /// Orderly: messages the listener suspended go back to the head of the line.
    pub fn put_back(&self, msgs: Vec<MessageExt>) {
        let mut s = self.state();
        for mut m in msgs {
            m.reconsume_times += 1;
            s.waiting.insert(m.queue_offset, m);
        }
    }

    /// Orderly: claims the runner; false if one is already scheduled or nothing waits.
    pub fn claim_runner(&self) -> bool {
        let mut s = self.state();
        if s.running || s.waiting.is_empty() {
            return false;
        }
        s.running = true;
        true
    }

    pub fn release_runner(&self) {
        self.state().running = false;
    }

    /// Starts a listener call on this queue's messages, unless the queue was dropped: a
    /// release that dropped it waits for the calls already under way (`idle`).
    pub fn enter_call(&self) -> Option<CallGuard<'_>> {
        // Counted before the check, so a release either sees the call or the call sees
        // the drop.
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.is_dropped() {
            self.calls.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(CallGuard(self))
    }

    /// No listener call on this queue's messages is under way.
    pub fn idle(&self) -> bool {
        self.calls.load(Ordering::SeqCst) == 0
    }

    pub fn set_locked(&self, locked: bool) {
        *self.locked_at.lock().unwrap_or_else(|e| e.into_inner()) = locked.then(Instant::now);
    }

    /// Whether the broker's lease is (still) ours, or none is needed.
    pub fn lock_valid(&self) -> bool {
        !self.leased
            || self
                .locked_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|t| t.elapsed() < LEASE_TRUSTED)
    }
}

pub struct CallGuard<'a>(&'a ProcessQueue);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.calls.fetch_sub(1, Ordering::SeqCst);
    }
}
