//! Work that must not run on a shard's executor thread — CPU-heavy, tens of milliseconds, such as
//! password hashing — run on the shard's blocking threads with a bound on how much runs and waits.
//!
//! At most `in_flight_max` jobs of one shard run at once and at most `queued_max` wait; beyond
//! that [`Offload::run`] refuses at once with [`OffloadError::Busy`] (the caller answers 503), so
//! a flood cannot build an unbounded queue or starve the shard. Shard-local.
//!
//! Offloaded work comes second to serving: jobs wait for their permit and their result in a
//! task queue of their own with a tenth of the default queue's shares, and the blocking threads
//! run under `SCHED_IDLE`: on a contended core they get only the time the shard threads leave,
//! and a shard thread that wakes preempts them at once. (Nice 10, tried first, still let a
//! hashing thread finish its time slice before a woken shard ran: payment p99 at 10 000/s went
//! from 0.9 ms to 5.5 ms under a login flood on the same core.) A login flood then slows
//! logins, not payments. Where `SCHED_IDLE` is refused, the threads fall back to nice
//! [`BLOCKING_NICE`].

use std::cell::{Cell, OnceCell};
use std::rc::Rc;

use glommio::sync::Semaphore;
use glommio::{Latency, Shares, TaskQueueHandle};

/// Nice value of the threads that run offloaded work (the shard threads run at 0).
pub const BLOCKING_NICE: i32 = 10;
/// Shares of the offload task queue (glommio's default queue has 1000).
const OFFLOAD_SHARES: usize = 100;

/// Why offloaded work did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Too much work is already running and waiting on this shard.
    #[error("too much work is already running and waiting on this shard")]
    Busy,
}

/// One shard's gate to its blocking threads.
pub struct Offload {
    permits: Rc<Semaphore>,
    queued: Cell<usize>,
    queued_max: usize,
    /// The low-priority task queue, made on first use (it needs the shard's executor).
    queue: OnceCell<TaskQueueHandle>,
}

impl Offload {
    /// Runs at most `in_flight_max` jobs at once, with at most `queued_max` more waiting.
    pub fn new(in_flight_max: usize, queued_max: usize) -> Offload {
        Offload {
            permits: Rc::new(Semaphore::new(in_flight_max.max(1) as u64)),
            queued: Cell::new(0),
            queued_max,
            queue: OnceCell::new(),
        }
    }

    /// Jobs waiting for a permit now.
    pub fn queued(&self) -> usize {
        self.queued.get()
    }

    /// Runs `work` on a blocking thread once a permit is free, or refuses when the queue is full.
    pub async fn run<F, R>(&self, work: F) -> Result<R, OffloadError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let permit = match self.permits.try_acquire_static_permit(1) {
            Ok(permit) => permit,
            Err(_) => {
                if self.queued.get() >= self.queued_max {
                    return Err(OffloadError::Busy);
                }
                self.queued.set(self.queued.get() + 1);
                let permit = self.permits.acquire_static_permit(1).await;
                self.queued.set(self.queued.get() - 1);
                // The semaphore is never closed while the shard runs.
                permit.map_err(|_| OffloadError::Busy)?
            }
        };
        let queue = *self.queue.get_or_init(|| {
            glommio::executor().create_task_queue(
                Shares::Static(OFFLOAD_SHARES),
                Latency::NotImportant,
                "offload",
            )
        });
        // The wait for the blocking thread runs in the offload task queue, holding the permit.
        let job = glommio::spawn_local_into(
            async move {
                let result = glommio::executor()
                    .spawn_blocking(move || {
                        lower_thread_priority();
                        work()
                    })
                    .await;
                drop(permit);
                result
            },
            queue,
        )
        .map_err(|_| OffloadError::Busy)?;
        Ok(job.await)
    }
}

/// Puts the calling blocking thread under `SCHED_IDLE` (else at nice [`BLOCKING_NICE`]), once
/// per thread.
fn lower_thread_priority() {
    thread_local! {
        static LOWERED: Cell<bool> = const { Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // SAFETY: sched_setscheduler(2) with pid 0, gettid(2) and setpriority(2) act on the
            // calling thread only (Linux applies them per thread). Failure leaves the priority as
            // it was, which is harmless.
            unsafe {
                let param = libc::sched_param { sched_priority: 0 };
                if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
                    let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, thread, BLOCKING_NICE);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

    use super::*;

    #[test]
    fn bounds_running_and_waiting_work() {
        let outcome = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 16)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(4))
            .spawn(|| async {
                let offload = Rc::new(Offload::new(2, 3));
                let running = Arc::new(AtomicUsize::new(0));
                let most = Arc::new(AtomicUsize::new(0));
                let mut tasks = Vec::new();
                for _ in 0..5 {
                    let offload = offload.clone();
                    let (running, most) = (running.clone(), most.clone());
                    tasks.push(glommio::spawn_local(async move {
                        offload
                            .run(move || {
                                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(now, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(50));
                                running.fetch_sub(1, Ordering::SeqCst);
                                7
                            })
                            .await
                    }));
                }
                // Let the five start: two run, three wait.
                glommio::timer::sleep(Duration::from_millis(10)).await;
                assert_eq!(offload.queued(), 3);
                // A sixth finds the queue full.
                assert_eq!(offload.run(|| 0).await, Err(OffloadError::Busy));
                let mut results = Vec::new();
                for task in tasks {
                    results.push(task.await);
                }
                assert_eq!(results, vec![Ok(7); 5]);
                assert_eq!(most.load(Ordering::SeqCst), 2, "never more than two at once");
                assert_eq!(offload.queued(), 0);
                // Free again.
                assert_eq!(offload.run(|| 1).await, Ok(1));
            })
            .unwrap()
            .join();
        outcome.unwrap();
    }

    #[test]
    fn work_runs_at_a_lower_priority_than_the_shard() {
        let outcome = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(1 << 16)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(|| async {
                let offload = Offload::new(1, 1);
                // SAFETY: sched_getscheduler(2) of the calling thread.
                let policy = || unsafe { libc::sched_getscheduler(0) };
                let shard_policy = policy();
                let work_policy = offload.run(policy).await.unwrap();
                (shard_policy, work_policy)
            })
            .unwrap()
            .join();
        let (shard_policy, work_policy) = outcome.unwrap();
        assert_eq!(shard_policy, libc::SCHED_OTHER);
        assert_eq!(work_policy, libc::SCHED_IDLE);
    }
}
