//! The threads listeners run on: `min` started at once, more (up to `max`) while every
//! thread is busy and work waits.
//!
//! One queue under one lock: a pull's batches go in together, a thread that finishes a job
//! takes the next without sleeping, and no more sleeping threads are woken than there are
//! new jobs. (Waking fewer would suit fast listeners, but a long call at the head of a
//! submission would then hold up the rest while threads sleep.)

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tracing::warn;

pub type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    sleeping: usize,
    /// Of those, woken for a job and not yet running.
    waking: usize,
    /// Threads started.
    threads: usize,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct ConsumePool {
    name: String,
    max: usize,
    shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl ConsumePool {
    pub fn new(name: &str, min: usize, max: usize) -> Self {
        let pool = Self {
            name: name.to_owned(),
            max: max.max(min).max(1),
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                work: Condvar::new(),
            }),
            handles: Mutex::new(Vec::new()),
        };
        for _ in 0..min.max(1) {
            pool.shared.queue().threads += 1;
            pool.start_thread();
        }
        pool
    }

    fn start_thread(&self) {
        let shared = Arc::clone(&self.shared);
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{}", self.name, handles.len()))
            .spawn(move || work(&shared));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                self.shared.queue().threads -= 1;
                warn!(error = %e, "cannot start a consume thread");
            }
        }
    }

    /// Runs `job` on a pool thread. After `shutdown` jobs are dropped.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        self.submit_all(vec![Box::new(job)]);
    }

    /// Queues `jobs` together and wakes as many sleeping threads as they need.
    pub fn submit_all(&self, jobs: Vec<Job>) {
        let n = jobs.len();
        let (wake, grow) = {
            let mut q = self.shared.queue();
            if q.closed {
                return;
            }
            q.jobs.extend(jobs);
            let idle = q.sleeping - q.waking;
            let wake = n.min(idle);
            q.waking += wake;
            // Every thread busy and work waiting: one more thread, up to `max`.
            let grow = idle == 0 && n > 0 && q.threads < self.max;
            if grow {
                q.threads += 1;
            }
            (wake, grow)
        };
        for _ in 0..wake {
            self.shared.work.notify_one();
        }
        if grow {
            self.start_thread();
        }
    }

    /// Takes no more jobs; the threads finish the queued ones and end (not waited for:
    /// callable anywhere, a `Drop` included).
    pub fn close(&self) {
        self.shared.queue().closed = true;
        self.shared.work.notify_all();
    }

    /// Lets queued jobs finish, then joins the threads (call off the async runtime).
    pub fn shutdown(&self) {
        self.close();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

fn work(shared: &Shared) {
    let mut q = shared.queue();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            job();
            q = shared.queue();
            continue;
        }
        if q.closed {
            return;
        }
        q.sleeping += 1;
        q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
        q.sleeping -= 1;
        // A spurious wake-up may take another's place; the count only guides waking.
        q.waking = q.waking.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_job_and_grows_to_max_under_load() {
        let pool = ConsumePool::new("t", 1, 4);
        let done = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        // Jobs that wait for the gate: each needs a thread of its own.
        for _ in 0..6 {
            let (done, gate) = (Arc::clone(&done), Arc::clone(&gate));
            pool.submit(move || {
                let (open, cv) = &*gate;
                let mut o = open.lock().unwrap();
                while !*o {
                    o = cv.wait(o).unwrap();
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(pool.shared.queue().threads, 4, "grew to max, not beyond");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let jobs: Vec<Job> = (0..1000)
            .map(|_| {
                let d = Arc::clone(&done);
                Box::new(move || {
                    d.fetch_add(1, Ordering::SeqCst);
                }) as Job
            })
            .collect();
        pool.submit_all(jobs);
        pool.shutdown();
        assert_eq!(
            done.load(Ordering::SeqCst),
            1006,
            "queued jobs finish before shutdown"
        );
        pool.submit(|| unreachable!("a job after shutdown is dropped"));
    }
}
