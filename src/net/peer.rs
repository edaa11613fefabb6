//! Commands between shardpay nodes.
//!
//! When the cluster's slots are divided among several nodes, a shard that needs a command run
//! on a slot of another node sends it there over TCP. Each shard keeps one connection to each
//! other node ([`PeerClient`]), opened on first use and again after a failure, and many
//! commands in flight on it (answers come back by request id, in any order). Each shard of the
//! receiving node accepts on the cluster address (SO_REUSEPORT) and runs every command it
//! reads in a task of its own ([`serve`]).
//!
//! The wire: frames of a 4-byte big-endian length and a body of at most [`FRAME_BYTES_MAX`]. A
//! connection opens with a [`Hello`] (the shared secret, the sender's name, and the slots it
//! believes the receiver serves) answered by a [`Welcome`], both JSON; a wrong secret or another
//! idea of the slots is refused and the connection closed, so two nodes with different
//! configurations never exchange commands. Then [`Request`]s one way and [`Response`]s the other,
//! in bincode ([`encode`], [`decode`]): compact, and several times cheaper than JSON for the byte
//! strings that commands carry (stored answers, token hashes).
//!
//! Bounded: at most `in_flight_max` commands wait per connection on either side; an answer waits
//! at most `timeout` (then the caller sees [`PeerError::Timeout`] and a 503 follows, as for a
//! shard that does not answer). Never panics on what a peer sends: a malformed frame closes the
//! connection.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::{mpsc, oneshot};
use futures_lite::{AsyncReadExt, AsyncWriteExt, StreamExt};
use glommio::sync::Semaphore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::Listener;

/// Largest frame body either side accepts.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
/// After a failed connection attempt, calls fail at once for this long instead of trying again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for a new connection's [`Hello`].
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// The first frame of a connection, from the node that opened it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// `cluster.secret`.
    pub secret: String,
    /// The sender's `server.node_id`.
    pub node: String,
    /// The slots the sender believes the receiver serves, `(first, last)`.
    pub slots: (u32, u32),
}

/// The answer to a [`Hello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Welcome {
    /// Accepted: the receiver's name and shard count.
    Accepted {
        /// `server.node_id`.
        node: String,
        /// Its shards.
        shards: usize,
    },
    /// Refused, and why; the connection closes.
    Refused(String),
}

/// A command for the receiving node.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request<C> {
    /// Chosen by the sender, unique on the connection.
    pub id: u64,
    /// The slot whose home shard runs the command.
    pub slot: u32,
    /// Whether the answer may come before the command's own changes are durable.
    pub unsynced: bool,
    /// The command.
    pub command: C,
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Response<R> {
    /// The request's id.
    pub id: u64,
    /// What happened.
    pub outcome: Outcome<R>,
}

/// What happened to a command on the receiving node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome<R> {
    /// Run by `shard`, with this reply.
    Reply {
        /// The receiving node's shard that ran it.
        shard: usize,
        /// Its reply.
        reply: R,
    },
    /// Not answered: see [`PeerError`].
    Failed(PeerError),
}

/// Why a command sent to another node got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made, or it broke before the answer.
    #[error("the node is unreachable")]
    Unreachable,
    /// The node refused the connection (another secret or another placement).
    #[error("the node refused this node's connection")]
    Refused,
    /// No answer within the timeout.
    #[error("the node did not answer in time")]
    Timeout,
    /// The command ran there, but its changes could not be stored: nothing is acknowledged.
    #[error("the node cannot store changes")]
    StorageFailed,
    /// Too many changes wait for the database there: the command was not run.
    #[error("the node has too many changes waiting for the database")]
    Backlogged,
    /// The node does not serve the slot.
    #[error("the node does not serve the slot")]
    NotServed,
    /// The node's shard did not answer (it is stopping).
    #[error("the node's shard is not answering")]
    ShardUnavailable,
}

/// Writes one frame.
async fn write_frame<W: futures_lite::AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> io::Result<()> {
    writer.write_all(&frame(body)).await?;
    writer.flush().await
}

/// A frame: the body's length, then the body.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// Reads one frame's body; `Ok(None)` at a clean end of stream.
async fn read_frame<R: futures_lite::AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes is over the limit of {FRAME_BYTES_MAX}"),
        ));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    Ok(Some(body))
}

fn invalid(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// bincode with a bound on what one value may claim to hold, and no trailing bytes allowed.
fn wire() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(FRAME_BYTES_MAX as u64)
        .reject_trailing_bytes()
}

/// Encodes a request or response body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::Options::serialize(wire(), value)
}

/// Decodes a request or response body; malformed input is an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::Options::deserialize(wire(), bytes)
}

/// Runs `future` for at most `limit`.
async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// One open connection of a [`PeerClient`].
struct Link<R> {
    /// Frames for the writer task.
    frames: mpsc::UnboundedSender<Vec<u8>>,
    /// Callers waiting for an answer, by request id.
    waiting: RefCell<HashMap<u64, oneshot::Sender<Outcome<R>>>>,
    next_id: Cell<u64>,
    broken: Cell<bool>,
}

impl<R> Link<R> {
    /// Marks the link unusable and fails every waiting caller (their senders drop).
    fn break_off(&self) {
        self.broken.set(true);
        self.frames.close_channel();
        self.waiting.borrow_mut().clear();
    }
}

/// One shard's connection to one other node.
pub struct PeerClient<R> {
    address: String,
    hello: Hello,
    timeout: Duration,
    permits: Rc<Semaphore>,
    link: RefCell<Option<Rc<Link<R>>>>,
    /// One connection attempt at a time.
    connecting: Rc<Semaphore>,
    /// No new attempt before this instant (after a failed one).
    pause_until: Cell<Option<Instant>>,
    /// The node's shard count, from its [`Welcome`] (0 until the first connection).
    shards: Cell<usize>,
    /// Whether the last attempt was refused (rather than unreachable).
    refused: Cell<bool>,
    /// Commands sent, and those that got no reply (any [`PeerError`]).
    calls: Cell<u64>,
    failures: Cell<u64>,
}

impl<R: DeserializeOwned + 'static> PeerClient<R> {
    /// A client of the node at `address`, introducing itself with `hello`.
    pub fn new(address: String, hello: Hello, timeout: Duration, in_flight_max: usize) -> PeerClient<R> {
        PeerClient {
            address,
            hello,
            timeout,
            permits: Rc::new(Semaphore::new(in_flight_max.max(1) as u64)),
            link: RefCell::new(None),
            connecting: Rc::new(Semaphore::new(1)),
            pause_until: Cell::new(None),
            shards: Cell::new(0),
            refused: Cell::new(false),
            calls: Cell::new(0),
            failures: Cell::new(0),
        }
    }

    /// Commands asked of the node so far, and how many of them got no reply.
    pub fn counts(&self) -> (u64, u64) {
        (self.calls.get(), self.failures.get())
    }

    /// The node's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The node's shard count, once a connection was accepted (0 before).
    pub fn shards(&self) -> usize {
        self.shards.get()
    }

    /// Runs `command` on the home shard of `slot` on the node; the node's shard that ran it and
    /// the reply.
    pub async fn call<C: Serialize>(
        &self,
        slot: u32,
        unsynced: bool,
        command: &C,
    ) -> Result<(usize, R), PeerError> {
        self.calls.set(self.calls.get() + 1);
        let outcome = self.call_once(slot, unsynced, command).await;
        if outcome.is_err() {
            self.failures.set(self.failures.get() + 1);
        }
        outcome
    }

    async fn call_once<C: Serialize>(
        &self,
        slot: u32,
        unsynced: bool,
        command: &C,
    ) -> Result<(usize, R), PeerError> {
        let deadline = Instant::now() + self.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let _permit = within(left(), self.permits.acquire_permit(1))
            .await
            .ok_or(PeerError::Timeout)?
            .map_err(|_| PeerError::Unreachable)?;
        let link = self.link(left()).await?;
        let id = link.next_id.get();
        link.next_id.set(id + 1);
        let body = encode(&Request {
            id,
            slot,
            unsynced,
            command,
        })
        .map_err(|_| PeerError::Unreachable)?;
        let (answer, answered) = oneshot::channel();
        link.waiting.borrow_mut().insert(id, answer);
        if link.frames.unbounded_send(frame(&body)).is_err() {
            link.waiting.borrow_mut().remove(&id);
            return Err(PeerError::Unreachable);
        }
        match within(left(), answered).await {
            Some(Ok(Outcome::Reply { shard, reply })) => Ok((shard, reply)),
            Some(Ok(Outcome::Failed(error))) => Err(error),
            Some(Err(_)) => Err(PeerError::Unreachable),
            None => {
                link.waiting.borrow_mut().remove(&id);
                Err(PeerError::Timeout)
            }
        }
    }

    /// The open link, or a new one.
    async fn link(&self, limit: Duration) -> Result<Rc<Link<R>>, PeerError> {
        let _turn = within(limit, self.connecting.acquire_permit(1))
            .await
            .ok_or(PeerError::Timeout)?
            .map_err(|_| PeerError::Unreachable)?;
        if let Some(link) = self.link.borrow().as_ref() {
            if !link.broken.get() {
                return Ok(link.clone());
            }
        }
        if self.pause_until.get().is_some_and(|until| Instant::now() < until) {
            return Err(if self.refused.get() {
                PeerError::Refused
            } else {
                PeerError::Unreachable
            });
        }
        match within(limit, self.connect())
            .await
            .unwrap_or(Err(PeerError::Timeout))
        {
            Ok(link) => {
                self.pause_until.set(None);
                *self.link.borrow_mut() = Some(link.clone());
                Ok(link)
            }
            Err(error) => {
                self.refused.set(error == PeerError::Refused);
                self.pause_until.set(Some(Instant::now() + RECONNECT_PAUSE));
                tracing::warn!(node = %self.address, %error, "cannot reach another node of the cluster");
                Err(error)
            }
        }
    }

    async fn connect(&self) -> Result<Rc<Link<R>>, PeerError> {
        let mut stream = glommio::net::TcpStream::connect(self.address.as_str())
            .await
            .map_err(|_| PeerError::Unreachable)?;
        let _ = stream.set_nodelay(true);
        let hello = serde_json::to_vec(&self.hello).map_err(|_| PeerError::Unreachable)?;
        write_frame(&mut stream, &hello)
            .await
            .map_err(|_| PeerError::Unreachable)?;
        let welcome = read_frame(&mut stream)
            .await
            .ok()
            .flatten()
            .and_then(|body| serde_json::from_slice::<Welcome>(&body).ok());
        match welcome {
            Some(Welcome::Accepted { shards, .. }) => self.shards.set(shards),
            Some(Welcome::Refused(reason)) => {
                tracing::error!(node = %self.address, %reason, "another node of the cluster refused this node");
                return Err(PeerError::Refused);
            }
            None => return Err(PeerError::Unreachable),
        }
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let (frames, mut outgoing) = mpsc::unbounded::<Vec<u8>>();
        let link = Rc::new(Link {
            frames,
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            broken: Cell::new(false),
        });
        let writing = link.clone();
        glommio::spawn_local(async move {
            while let Some(mut bytes) = outgoing.next().await {
                // Frames queued meanwhile go out in the same write.
                while let Ok(more) = outgoing.try_recv() {
                    bytes.extend_from_slice(&more);
                }
                if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
            writing.break_off();
        })
        .detach();
        let reading = link.clone();
        let address = self.address.clone();
        glommio::spawn_local(async move {
            loop {
                let body = match read_frame(&mut reader).await {
                    Ok(Some(body)) => body,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(node = %address, %error, "the connection to another node failed");
                        break;
                    }
                };
                match decode::<Response<R>>(&body) {
                    Ok(response) => {
                        let waiting = reading.waiting.borrow_mut().remove(&response.id);
                        if let Some(waiting) = waiting {
                            let _ = waiting.send(response.outcome);
                        }
                    }
                    Err(error) => {
                        tracing::error!(node = %address, %error, "another node sent a malformed answer; closing the connection");
                        break;
                    }
                }
            }
            reading.break_off();
        })
        .detach();
        Ok(link)
    }
}

/// What the receiving side needs to know.
pub struct ServeSettings {
    /// `cluster.secret`.
    pub secret: String,
    /// This node's `server.node_id`.
    pub node: String,
    /// This node's shard count.
    pub shards: usize,
    /// This node's slots, `(first, last)`.
    pub slots: (u32, u32),
    /// Commands one connection may have running; it is not read further meanwhile.
    pub in_flight_max: usize,
}

/// Accepts other nodes' connections on `listener` and runs their commands with `run`, until
/// `stop` says so (checked between connections).
pub async fn serve<C, R, F, Fut>(
    listener: Listener,
    settings: Rc<ServeSettings>,
    run: Rc<F>,
    stop: impl Fn() -> bool,
) where
    C: DeserializeOwned + 'static,
    R: Serialize + 'static,
    F: Fn(u32, bool, C) -> Fut + 'static,
    Fut: Future<Output = Outcome<R>> + 'static,
{
    while !stop() {
        match listener.inner.accept().await {
            Ok(stream) => {
                let (settings, run) = (settings.clone(), run.clone());
                glommio::spawn_local(async move {
                    if let Err(error) = serve_connection(stream, settings, run).await {
                        tracing::warn!(%error, "a connection from another node ended");
                    }
                })
                .detach();
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a connection from another node failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection<C, R, F, Fut>(
    mut stream: glommio::net::TcpStream,
    settings: Rc<ServeSettings>,
    run: Rc<F>,
) -> io::Result<()>
where
    C: DeserializeOwned + 'static,
    R: Serialize + 'static,
    F: Fn(u32, bool, C) -> Fut + 'static,
    Fut: Future<Output = Outcome<R>> + 'static,
{
    let _ = stream.set_nodelay(true);
    let hello = within(HELLO_TIMEOUT, read_frame(&mut stream))
        .await
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no hello in time"))??
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before its hello"))?;
    let hello: Hello = serde_json::from_slice(&hello).map_err(invalid)?;
    let refusal = if !bool::from(hello.secret.as_bytes().ct_eq(settings.secret.as_bytes())) {
        Some("wrong cluster.secret".to_string())
    } else if hello.slots != settings.slots {
        Some(format!(
            "node {} believes this node serves slots {}-{}, but it serves {}-{}: the nodes' cluster.peers and cluster.slots disagree",
            hello.node, hello.slots.0, hello.slots.1, settings.slots.0, settings.slots.1
        ))
    } else {
        None
    };
    let welcome = match &refusal {
        Some(reason) => Welcome::Refused(reason.clone()),
        None => Welcome::Accepted {
            node: settings.node.clone(),
            shards: settings.shards,
        },
    };
    write_frame(&mut stream, &serde_json::to_vec(&welcome).map_err(invalid)?).await?;
    if let Some(reason) = refusal {
        tracing::error!(node = %hello.node, %reason, "refused a connection from another node");
        return Ok(());
    }
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (answers, mut outgoing) = mpsc::unbounded::<Vec<u8>>();
    let writing = glommio::spawn_local(async move {
        while let Some(mut bytes) = outgoing.next().await {
            while let Ok(more) = outgoing.try_recv() {
                bytes.extend_from_slice(&more);
            }
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    })
    .detach();
    let permits = Rc::new(Semaphore::new(settings.in_flight_max.max(1) as u64));
    let result = loop {
        let body = match read_frame(&mut reader).await {
            Ok(Some(body)) => body,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        let request: Request<C> = match decode(&body) {
            Ok(request) => request,
            Err(error) => break Err(invalid(error)),
        };
        let Ok(permit) = permits.acquire_static_permit(1).await else {
            break Ok(());
        };
        let (run, answers) = (run.clone(), answers.clone());
        glommio::spawn_local(async move {
            let outcome = run(request.slot, request.unsynced, request.command).await;
            let response = Response {
                id: request.id,
                outcome,
            };
            if let Ok(body) = encode(&response) {
                let _ = answers.unbounded_send(frame(&body));
            }
            drop(permit);
        })
        .detach();
    };
    drop(answers);
    // The writer ends once every running command has answered (each holds a sender).
    let _ = writing.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_oversized_lengths() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 * 1024)
            .spawn(|| async {
                let mut bytes = frame(b"{\"a\":1}");
                bytes.extend(frame(b""));
                let mut reader = futures_lite::io::Cursor::new(bytes);
                assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), b"{\"a\":1}");
                assert_eq!(read_frame(&mut reader).await.unwrap().unwrap(), b"");
                assert!(read_frame(&mut reader).await.unwrap().is_none());

                let mut huge = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes().to_vec();
                huge.extend_from_slice(b"xx");
                let error = read_frame(&mut futures_lite::io::Cursor::new(huge))
                    .await
                    .unwrap_err();
                assert_eq!(error.kind(), io::ErrorKind::InvalidData);
                let cut = futures_lite::io::Cursor::new(vec![0, 0, 0, 9, b'{']);
                let error = read_frame(&mut { cut }).await.unwrap_err();
                assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
