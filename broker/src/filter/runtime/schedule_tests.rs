//! The scheduler's policy, with plain closures for jobs and the worker's index for a
//! worker: routing, the per-group cap, turns between groups, and the queue bounds.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

const LONG: Duration = Duration::from_secs(10);

fn limits(workers: usize, max_group_workers: usize) -> Limits {
    Limits {
        workers,
        max_group_workers,
        max_group_queued: 1024,
        queue_timeout: LONG,
    }
}

struct Pool {
    scheduler: Arc<Scheduler<usize>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(limits: Limits) -> Pool {
        let scheduler = Arc::new(Scheduler::new(limits));
        let threads = (0..limits.workers)
            .map(|n| {
                let s = Arc::clone(&scheduler);
                std::thread::spawn(move || {
                    let mut me = n;
                    while let Some(job) = s.next(n, Duration::from_micros(50)) {
                        job.run(&mut me);
                    }
                })
            })
            .collect();
        Pool { scheduler, threads }
    }

    /// Submits a job that reports where it ran (or why not) and then waits for `release`.
    fn submit_held(
        &self,
        group: &str,
        filter_id: u64,
        release: Option<mpsc::Receiver<()>>,
    ) -> mpsc::Receiver<Result<usize, Refusal>> {
        let (tx, rx) = mpsc::channel();
        self.scheduler.submit(
            group,
            filter_id,
            Box::new(move |turn| match turn {
                Turn::Run(w) => {
                    let ran_on = *w;
                    match release {
                        // Held: says it started, blocks its worker until released, and says
                        // so again once its worker is free.
                        Some(release) => {
                            let _ = tx.send(Ok(ran_on));
                            let _ = release.recv_timeout(LONG);
                            Some(Box::new(move || {
                                let _ = tx.send(Ok(ran_on));
                            }) as Delivery)
                        }
                        None => Some(Box::new(move || {
                            let _ = tx.send(Ok(ran_on));
                        }) as Delivery),
                    }
                }
                Turn::Refused(r) => Some(Box::new(move || {
                    let _ = tx.send(Err(r));
                }) as Delivery),
            }),
        );
        rx
    }

    /// A job that blocks its worker until the returned sender is used (or dropped).
    fn hold(
        &self,
        group: &str,
        filter_id: u64,
    ) -> (mpsc::Sender<()>, mpsc::Receiver<Result<usize, Refusal>>) {
        let (release, held) = mpsc::channel();
        (release, self.submit_held(group, filter_id, Some(held)))
    }

    fn run(&self, group: &str, filter_id: u64) -> Result<usize, Refusal> {
        self.submit_held(group, filter_id, None)
            .recv_timeout(LONG)
            .expect("the job was neither run nor refused")
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.scheduler.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn started(rx: &mpsc::Receiver<Result<usize, Refusal>>) -> Result<usize, Refusal> {
    rx.recv_timeout(LONG).expect("the job did not start")
}

#[test]
fn a_filters_jobs_run_on_its_own_worker_while_it_is_free() {
    let pool = Pool::start(limits(4, 3));
    for filter in [0u64, 1, 2, 3, 7, 12] {
        for _ in 0..25 {
            assert_eq!(pool.run("g", filter), Ok((filter % 4) as usize));
        }
    }
}

#[test]
fn another_worker_takes_a_job_while_its_own_worker_is_busy() {
    let pool = Pool::start(limits(2, 2));
    // Filter 0's worker is held by a slow batch of group a...
    let (release, slow) = pool.hold("a", 0);
    assert_eq!(started(&slow), Ok(0));
    // ...so filter 0's next batch (another group) runs on worker 1 rather than wait.
    assert_eq!(pool.run("b", 0), Ok(1));
    release.send(()).expect("release");
    assert_eq!(started(&slow), Ok(0), "the slow batch did not finish");
    // Free again: its filter's batches come back to it.
    assert_eq!(pool.run("b", 0), Ok(0));
}

#[test]
fn a_group_never_runs_more_than_its_cap_and_other_groups_keep_the_rest() {
    let pool = Pool::start(limits(2, 1));
    // Group `slow` has four batches, each holding its worker until released.
    let mut slow: Vec<_> = (0..4).map(|_| pool.hold("slow", 0)).collect();
    assert!(started(&slow[0].1).is_ok());
    // The other worker stays free for other groups: each of these runs at once, although
    // three of `slow`'s batches are older.
    for i in 0..20 {
        assert!(pool.run("quiet", i).is_ok());
    }
    // None of the other `slow` batches started meanwhile: the cap is one.
    for (_, rx) in &slow[1..] {
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Empty));
    }
    // Releasing each lets exactly the next one start (each ran long enough to be a slow
    // batch: no idle worker is lent to its group).
    for i in 0..3 {
        let (release, _) = slow.remove(0);
        std::thread::sleep(LEND_BELOW * 4);
        release.send(()).expect("release");
        assert!(started(&slow[0].1).is_ok(), "batch {} did not start", i + 1);
        for (_, rx) in &slow[1..] {
            assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Empty));
        }
    }
}

#[test]
fn groups_are_served_in_turn() {
    // One worker, held while both groups queue up: then the queue is served a, b, a, b...
    // although all of a's batches came first.
    let pool = Pool::start(limits(1, 1));
    let (release, first) = pool.hold("x", 0);
    assert!(started(&first).is_ok());
    let order = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done) = mpsc::channel();
    for group in ["a", "a", "a", "b", "b", "b"] {
        let (order, done_tx) = (Arc::clone(&order), done_tx.clone());
        pool.scheduler.submit(
            group,
            0,
            Box::new(move |turn| {
                if let Turn::Run(_) = turn {
                    order.lock().expect("order").push(group);
                }
                let _ = done_tx.send(());
                None
            }),
        );
    }
    release.send(()).expect("release");
    for _ in 0..6 {
        done.recv_timeout(LONG).expect("a job did not finish");
    }
    assert_eq!(
        *order.lock().expect("order"),
        ["a", "b", "a", "b", "a", "b"]
    );
}

#[test]
fn a_job_waiting_past_the_queue_timeout_is_refused_not_run() {
    let pool = Pool::start(Limits {
        queue_timeout: Duration::from_millis(30),
        ..limits(2, 1)
    });
    let (release, slow) = pool.hold("slow", 0);
    assert!(started(&slow).is_ok());
    let t0 = Instant::now();
    // Waits behind the group's cap; the idle worker refuses it once it is too old.
    match pool.run("slow", 0) {
        Err(Refusal::TimedOut { waited }) => assert!(waited >= Duration::from_millis(30)),
        other => panic!("expected a queue timeout, got {other:?}"),
    }
    assert!(t0.elapsed() < LONG);
    release.send(()).expect("release");
    // The group is served again afterwards.
    assert!(pool.run("slow", 0).is_ok());
}

#[test]
fn a_full_group_queue_refuses_at_once_and_other_groups_are_unaffected() {
    let pool = Pool::start(Limits {
        max_group_queued: 2,
        ..limits(2, 1)
    });
    let (release, slow) = pool.hold("slow", 0);
    assert!(started(&slow).is_ok());
    let queued: Vec<_> = (0..2).map(|_| pool.submit_held("slow", 0, None)).collect();
    assert_eq!(
        pool.run("slow", 0),
        Err(Refusal::GroupQueueFull { queued: 2 })
    );
    assert!(pool.run("quiet", 0).is_ok());
    release.send(()).expect("release");
    for rx in queued {
        assert!(started(&rx).is_ok());
    }
}

#[test]
fn stopping_runs_what_is_queued_then_refuses() {
    let pool = Pool::start(limits(1, 1));
    let (release, first) = pool.hold("g", 0);
    assert!(started(&first).is_ok());
    let queued = pool.submit_held("g", 0, None);
    pool.scheduler.stop();
    assert_eq!(pool.run("g", 0), Err(Refusal::Stopped));
    release.send(()).expect("release");
    assert!(started(&queued).is_ok());
}

/// Worker `me` takes what `pick` gives it (the group's name), as `next` would.
fn take(s: &Scheduler<usize>, me: usize) -> Option<String> {
    let mut state = s.lock();
    let mut expired = Vec::new();
    let picked = s.pick(&mut state, me, &mut expired);
    assert!(expired.is_empty());
    if picked.is_some() {
        state.busy[me] = true;
    }
    picked.map(|(group, _job)| group.to_string())
}

fn submit_noop(s: &Scheduler<usize>, group: &str) {
    s.submit(group, 0, Box::new(|_| None));
}

#[test]
fn idle_workers_are_lent_to_a_group_of_short_batches_while_no_other_group_waits() {
    // Driven step by step (no worker threads): what each free worker would take.
    let s: Scheduler<usize> = Scheduler::new(limits(2, 1));
    let short = LEND_BELOW / 10;
    // A group not yet seen runs within its cap of one.
    submit_noop(&s, "fast");
    submit_noop(&s, "fast");
    assert_eq!(take(&s, 0).as_deref(), Some("fast"));
    assert_eq!(take(&s, 1), None);
    // Once its batches are known to be short, and no other group waits, the worker its
    // cap keeps for others is lent to it.
    s.finished(0, &Arc::from("fast"), Some(short));
    assert_eq!(take(&s, 0).as_deref(), Some("fast"));
    submit_noop(&s, "fast");
    assert_eq!(take(&s, 1).as_deref(), Some("fast"));
    // Another group's job arrives: the next free worker is its, not the lender's.
    submit_noop(&s, "fast");
    submit_noop(&s, "quiet");
    s.finished(0, &Arc::from("fast"), Some(short));
    assert_eq!(take(&s, 0).as_deref(), Some("quiet"));
    s.finished(0, &Arc::from("quiet"), Some(short));
    // One slow batch stops the lending: the group is back within its cap.
    s.finished(1, &Arc::from("fast"), Some(LEND_BELOW * 50));
    submit_noop(&s, "fast");
    assert_eq!(take(&s, 0).as_deref(), Some("fast"));
    assert_eq!(take(&s, 1), None);
}

#[test]
fn only_batches_that_did_work_count_towards_lending() {
    let s: Scheduler<usize> = Scheduler::new(limits(2, 1));
    let mut worker = 0usize;
    let recent = |s: &Scheduler<usize>| s.lock().groups.get("g").and_then(|g| g.recent);
    // In turn: a job with nothing to hand over (an abandoned pull's), a batch that did its
    // work, and one more waiting (so the group stays known).
    submit_noop(&s, "g");
    s.submit("g", 0, Box::new(|_| Some(Box::new(|| {}) as Delivery)));
    submit_noop(&s, "g");
    s.next(0, Duration::ZERO).expect("a job").run(&mut worker);
    assert_eq!(recent(&s), None, "an abandoned job counted as a fast batch");
    s.next(0, Duration::ZERO).expect("a job").run(&mut worker);
    assert!(recent(&s).is_some_and(|d| d < LEND_BELOW));
}
