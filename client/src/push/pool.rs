//! The threads listeners run on: `min` started at once, more (up to `max`) while every
//! thread is busy and work waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::warn;

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct ConsumePool {
    name: String,
    max: usize,
    tx: Mutex<Option<Sender<Job>>>,
    rx: Arc<Mutex<Receiver<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Threads not running a job.
    idle: Arc<AtomicUsize>,
}

impl ConsumePool {
    pub fn new(name: &str, min: usize, max: usize) -> Self {
        let (tx, rx) = channel();
        let pool = Self {
            name: name.to_owned(),
            max: max.max(min).max(1),
            tx: Mutex::new(Some(tx)),
            rx: Arc::new(Mutex::new(rx)),
            threads: Mutex::new(Vec::new()),
            idle: Arc::new(AtomicUsize::new(0)),
        };
        for _ in 0..min.max(1) {
            pool.add_thread();
        }
        pool
    }

    fn add_thread(&self) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if threads.len() >= self.max {
            return;
        }
        let (rx, idle) = (Arc::clone(&self.rx), Arc::clone(&self.idle));
        idle.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{}", self.name, threads.len()))
            .spawn(move || {
                loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                        rx.recv()
                    };
                    let Ok(job) = job else { return };
                    idle.fetch_sub(1, Ordering::AcqRel);
                    job();
                    idle.fetch_add(1, Ordering::AcqRel);
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                warn!(error = %e, "cannot start a consume thread");
            }
        }
    }

    /// Runs `job` on a pool thread. After `shutdown` jobs are dropped.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        if self.idle.load(Ordering::Acquire) == 0 {
            self.add_thread();
        }
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(Box::new(job));
        }
    }

    /// Lets queued jobs finish, then joins the threads (call off the async runtime).
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}
