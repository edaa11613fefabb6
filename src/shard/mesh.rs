//! The shard mesh: a bounded single-producer queue for every ordered pair of shards, and
//! [`Mesh::invoke_on`] that sends an owned message to a shard and awaits its reply.
//!
//! Queues are glommio shared channels (lock-free, cross-thread wake-ups through the reactor);
//! replies travel on a runtime-agnostic oneshot. A full queue makes the sender wait
//! (backpressure, counted in the metrics); a reply that does not come in time is an error, never
//! a hang. This module moves messages only: what they mean is up to the caller's handler.

use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::{GlommioError, ResourceType};

use crate::metrics::ShardMetrics;

/// A message in a queue: the request and where its reply goes.
pub struct Envelope<M, R> {
    /// The request.
    pub message: M,
    reply: oneshot::Sender<R>,
}

impl<M, R> Envelope<M, R> {
    /// Sends the reply; a requester that gave up is not an error.
    pub fn reply(self, reply: R) {
        let _ = self.reply.send(reply);
    }
}

/// Why a message got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// No shard has this id.
    #[error("no shard {0}")]
    NoSuchShard(usize),
    /// The peer's queue is closed: it has stopped.
    #[error("shard {0} is not running")]
    PeerStopped(usize),
    /// The peer did not reply within the reply timeout.
    #[error("shard {0} did not reply in time")]
    Timeout(usize),
    /// The shard's storage failed: it acknowledges nothing more and is stopping.
    #[error("shard {0} cannot store changes")]
    StorageFailed(usize),
    /// Too many of the shard's changes wait for the database: the command was not executed.
    #[error("shard {0} has too many changes waiting for the database")]
    Backlogged(usize),
    /// The command was for a slot of another node, which gave no reply.
    #[error("the node serving the user: {0}")]
    Node(crate::net::peer::PeerError),
}

/// A handler's answer: ready now, or once a future resolves (e.g. after a log write).
pub enum Answer<R, F> {
    /// The reply.
    Now(R),
    /// The reply, later; the next messages are served meanwhile.
    Later(F),
}

/// One shard's unconnected ends of the mesh, made on the main thread and moved to the shard.
pub struct MeshEnds<M: Send, R: Send> {
    shard: usize,
    senders: Vec<Option<SharedSender<Envelope<M, R>>>>,
    receivers: Vec<Option<SharedReceiver<Envelope<M, R>>>>,
}

/// Makes the queues of a full mesh of `shards` shards, each holding `queue_depth` messages.
pub fn build<M: Send + 'static, R: Send + 'static>(shards: usize, queue_depth: usize) -> Vec<MeshEnds<M, R>> {
    let mut ends: Vec<MeshEnds<M, R>> = (0..shards)
        .map(|shard| MeshEnds {
            shard,
            senders: (0..shards).map(|_| None).collect(),
            receivers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (sender, receiver) = shared_channel::new_bounded(queue_depth);
                ends[from].senders[to] = Some(sender);
                ends[to].receivers[from] = Some(receiver);
            }
        }
    }
    ends
}

/// A shard's connected mesh.
pub struct Mesh<M: Send, R: Send> {
    shard: usize,
    senders: Vec<Option<ConnectedSender<Envelope<M, R>>>>,
    reply_timeout: Duration,
    metrics: Rc<ShardMetrics>,
}

impl<M: Send + 'static, R: Send + 'static> MeshEnds<M, R> {
    /// Connects every queue end (waiting for each peer to connect its end) and returns the mesh
    /// and the receivers, one per peer, for the caller to serve.
    pub async fn connect(
        self,
        reply_timeout: Duration,
        metrics: Rc<ShardMetrics>,
    ) -> (Mesh<M, R>, Vec<(usize, ConnectedReceiver<Envelope<M, R>>)>) {
        // Every connect waits for the peer's; run them all at once so no two shards wait in turn.
        let sender_tasks: Vec<_> = self
            .senders
            .into_iter()
            .map(|sender| sender.map(|sender| glommio::spawn_local(sender.connect())))
            .collect();
        let receiver_tasks: Vec<_> = self
            .receivers
            .into_iter()
            .enumerate()
            .filter_map(|(peer, receiver)| {
                receiver.map(|receiver| (peer, glommio::spawn_local(receiver.connect())))
            })
            .collect();
        let mut senders = Vec::with_capacity(sender_tasks.len());
        for task in sender_tasks {
            senders.push(match task {
                Some(task) => Some(task.await),
                None => None,
            });
        }
        let mut receivers = Vec::with_capacity(receiver_tasks.len());
        for (peer, task) in receiver_tasks {
            receivers.push((peer, task.await));
        }
        let mesh = Mesh {
            shard: self.shard,
            senders,
            reply_timeout,
            metrics,
        };
        (mesh, receivers)
    }
}

impl<M: Send, R: Send> Mesh<M, R> {
    /// This shard's id.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Number of shards in the mesh.
    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Sends `message` to another shard and awaits its reply. Waits for queue space when the
    /// peer's queue is full. The caller handles messages for its own shard directly.
    pub async fn send_to(&self, target: usize, message: M) -> Result<R, MeshError> {
        let sender = match self.senders.get(target) {
            Some(Some(sender)) => sender,
            _ => return Err(MeshError::NoSuchShard(target)),
        };
        let (reply, replied) = oneshot::channel();
        let envelope = Envelope { message, reply };
        match sender.try_send(envelope) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(envelope))) => {
                ShardMetrics::bump(&self.metrics.mesh_backpressure, target);
                if sender.send(envelope).await.is_err() {
                    return Err(MeshError::PeerStopped(target));
                }
            }
            Err(_) => return Err(MeshError::PeerStopped(target)),
        }
        ShardMetrics::bump(&self.metrics.mesh_sent, target);
        let timeout = self.reply_timeout;
        let outcome = futures_lite::future::or(async { Some(replied.await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        match outcome {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(oneshot::Canceled)) => Err(MeshError::PeerStopped(target)),
            None => Err(MeshError::Timeout(target)),
        }
    }
}

/// Serves one peer's queue until the peer closes it: each message is handed to `handle`, in
/// order, and its reply sent back — at once, or (for [`Answer::Later`]) from a task of its own,
/// so a reply waiting for the disk does not hold up the messages behind it.
pub async fn serve_peer<M: Send, R: Send + 'static, F, Fut>(
    peer: usize,
    receiver: ConnectedReceiver<Envelope<M, R>>,
    metrics: Rc<ShardMetrics>,
    handle: F,
) where
    F: Fn(M) -> Answer<R, Fut>,
    Fut: std::future::Future<Output = R> + 'static,
{
    while let Some(envelope) = receiver.recv().await {
        ShardMetrics::bump(&metrics.mesh_received, peer);
        let Envelope { message, reply } = envelope;
        match handle(message) {
            Answer::Now(answer) => {
                let _ = reply.send(answer);
            }
            Answer::Later(answer) => {
                glommio::spawn_local(async move {
                    let _ = reply.send(answer.await);
                })
                .detach();
            }
        }
    }
}
