//! The replication thread: a slave's link to its master (the connection, the appends of
//! what the master streams, the confirmations) runs on a runtime of its own, one thread,
//! apart from the runtime that serves the slave's clients, as RocketMQ's `HAClient` has a
//! thread of its own.
//!
//! Why: a sync master's sends wait for the slave's confirmations, so they must not wait
//! behind the slave's readers; and on the client runtime every chunk woke a second worker
//! (the connection's task waking itself to send the confirmation is taken as a yield,
//! which calls an idle worker to steal it), a futex and two context switches a chunk.
//! And a chunk, however large, is appended on this thread, which has nothing else to do,
//! rather than handed to a blocking thread and back (two more wake-ups a chunk).
//! Measured with a sync master, one slave and a 64-in-flight producer on two cores: the
//! slave's CPU a message fell by about a fifth with single sends, a sixth with batches.
//!
//! (A master's HA port stays on the client runtime: its confirmations wake the client
//! connections whose sends wait, and from another thread each of those wakes crosses
//! threads; measured, the master spent more, not less.)
//!
//! Invariant: everything spawned from code running here (the connection's driver, blocking
//! calls) belongs to this runtime; it lives until [`HaRuntime::stop`] or drop, which
//! cancel what still runs (the broker ends the slave link first).

use std::future::Future;
use std::thread::JoinHandle as ThreadHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The thread replication runs on.
pub struct HaRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<ThreadHandle<()>>,
}

impl HaRuntime {
    /// Starts the thread (named `weir-ha`) and its runtime.
    pub fn start() -> std::io::Result<HaRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("weir-ha-blocking")
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("weir-ha".into())
            .spawn(move || {
                // Runs the runtime's tasks until told to stop (or its owner is gone).
                rt.block_on(async {
                    let _ = stopped.await;
                });
                // What still runs is cancelled; blocking calls are not waited for.
                rt.shutdown_background();
            })?;
        Ok(HaRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on the replication thread.
    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Stops the runtime, cancelling what still runs on it, and waits for its thread.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // (Returns as soon as the runtime's current task yields: tasks are async.)
            let _ = thread.join();
        }
    }
}

impl Drop for HaRuntime {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_the_replication_thread_and_stops_with_it() {
        let ha = HaRuntime::start().expect("runtime");
        let name = ha
            .spawn(async {
                // What it spawns stays on the same thread.
                tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                    .await
                    .expect("inner task")
            })
            .await
            .expect("task");
        assert_eq!(name.as_deref(), Some("weir-ha"));
        let (tx, rx) = oneshot::channel::<()>();
        let pending = ha.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        ha.stop();
        // The task was cancelled (its sender dropped), not left running.
        assert!(rx.await.is_err());
        assert!(pending.await.expect_err("cancelled").is_cancelled());
    }
}
