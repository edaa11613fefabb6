//! Work that must not run on a shard's executor thread — CPU-heavy, tens of milliseconds, such as
//! password hashing — run on the shard's blocking threads with a bound on how much runs and waits.
//!
//! At most `in_flight_max` jobs of one shard run at once and at most `queued_max` wait; beyond
//! that [`Offload::run`] refuses at once with [`OffloadError::Busy`] (the caller answers 503), so
//! a flood cannot build an unbounded queue or starve the shard. Shard-local.

use std::cell::Cell;
use std::rc::Rc;

use glommio::sync::Semaphore;

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
}

impl Offload {
    /// Runs at most `in_flight_max` jobs at once, with at most `queued_max` more waiting.
    pub fn new(in_flight_max: usize, queued_max: usize) -> Offload {
        Offload {
            permits: Rc::new(Semaphore::new(in_flight_max.max(1) as u64)),
            queued: Cell::new(0),
            queued_max,
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
        let permit = match self.permits.try_acquire_permit(1) {
            Ok(permit) => permit,
            Err(_) => {
                if self.queued.get() >= self.queued_max {
                    return Err(OffloadError::Busy);
                }
                self.queued.set(self.queued.get() + 1);
                let permit = self.permits.acquire_permit(1).await;
                self.queued.set(self.queued.get() - 1);
                // The semaphore is never closed while the shard runs.
                permit.map_err(|_| OffloadError::Busy)?
            }
        };
        let result = glommio::executor().spawn_blocking(work).await;
        drop(permit);
        Ok(result)
    }
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
}
