//! The bridge between the shards and the driver: one thread running a current-thread tokio
//! runtime that owns the [`Session`], fed through a bounded queue.
//!
//! A shard hands the bridge a closure that builds the database work ([`Handle::call`]) and awaits
//! the answer on a oneshot channel. Both channels are `futures-channel`'s, which need no
//! particular runtime, so a glommio executor awaits them like any other future and never blocks.
//! The queue holds `scylla.queue_depth` requests (a sender waits while it is full:
//! backpressure), and at most `scylla.in_flight_max` of them run at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;

use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;
use scylla::client::session::Session;
use tokio::sync::Semaphore;

use super::{connect, DbError};
use crate::config::ScyllaConfig;

type Work = Pin<Box<dyn Future<Output = ()> + Send>>;
type Job = Box<dyn FnOnce(Arc<Session>) -> Work + Send>;

/// The driver's thread; dropping it stops the thread once the work in flight has finished
/// (handles still held elsewhere then get errors).
pub struct Bridge {
    handle: Option<Handle>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A way to the driver's thread, cloned into each shard.
#[derive(Clone)]
pub struct Handle {
    jobs: mpsc::Sender<Job>,
}

impl Bridge {
    /// Starts the thread and connects; returns once connected, or with the connection error.
    pub fn start(config: &ScyllaConfig) -> Result<Bridge, DbError> {
        let config = config.clone();
        let (jobs, mut queue) = mpsc::channel::<Job>(config.queue_depth);
        let (connected_tx, connected_rx) = std::sync::mpsc::channel::<Result<(), DbError>>();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("scylla".to_string())
            .spawn(move || {
                let runtime = match super::runtime() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = connected_tx.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let session = match connect(&config).await {
                        Ok(session) => Arc::new(session),
                        Err(error) => {
                            let _ = connected_tx.send(Err(error));
                            return;
                        }
                    };
                    let _ = connected_tx.send(Ok(()));
                    let in_flight_max = config.in_flight_max;
                    let slots = Arc::new(Semaphore::new(in_flight_max));
                    loop {
                        let job = tokio::select! {
                            job = queue.next() => job,
                            _ = &mut stopped => None,
                        };
                        let Some(job) = job else { break };
                        let permit = slots.clone().acquire_owned().await.expect("never closed");
                        let session = session.clone();
                        tokio::spawn(async move {
                            job(session).await;
                            drop(permit);
                        });
                    }
                    // Stopped, or every handle is gone: let the statements in flight finish.
                    let _ = slots.acquire_many(in_flight_max as u32).await;
                });
            })
            .map_err(|error| DbError::new("starting the database thread", error))?;
        match connected_rx.recv() {
            Ok(Ok(())) => Ok(Bridge {
                handle: Some(Handle { jobs }),
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let _ = thread.join();
                Err(DbError::new(
                    "starting the database thread",
                    "it stopped before connecting",
                ))
            }
        }
    }

    /// A handle for a shard.
    pub fn handle(&self) -> Handle {
        self.handle.clone().expect("present until drop")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.handle.take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Returns once the work in flight has finished.
            let _ = thread.join();
        }
    }
}

impl Handle {
    /// Runs `work` on the driver's thread and returns its result. Waits while the queue is
    /// full. Runtime-agnostic: any executor (glommio's included) may await it.
    pub async fn call<T, F, Fut>(&self, what: &str, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Session>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DbError>> + Send + 'static,
    {
        let stopped = || DbError::new(what, "the database thread has stopped");
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |session| {
            Box::pin(async move {
                let _ = reply.send(work(session).await);
            })
        });
        let mut jobs = self.jobs.clone();
        futures_lite::future::poll_fn(|cx| jobs.poll_ready(cx))
            .await
            .map_err(|_| stopped())?;
        jobs.start_send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
