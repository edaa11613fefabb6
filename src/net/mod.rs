//! Sockets: binding listeners (SO_REUSEPORT on the public address, a shard-aware port per shard),
//! the accept loop with its per-shard connection limit, and the glommio TCP stream behind the
//! codec's [`Transport`]. With `shard`, this is the only module that uses glommio.
//!
//! Never parses HTTP and never panics on an I/O error: accept errors (EMFILE included) are
//! logged, counted and waited out.

mod connections;
pub mod peer;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use socket2::{Domain, Protocol, Socket, Type};

pub use connections::{Connections, Presence, Refusal, Registration};

use crate::http::connection::{self, Settings, Transport};
use crate::http::Handler;
use crate::metrics::ShardMetrics;

/// A listening socket on the current shard.
pub struct Listener {
    inner: glommio::net::TcpListener,
}

impl Listener {
    /// Binds `address`; `reuse_port` lets every shard bind the same public address and the kernel
    /// spread connections among them.
    pub fn bind(address: SocketAddr, backlog: u32, reuse_port: bool) -> io::Result<Listener> {
        let socket = listening_socket(address, backlog, reuse_port)?;
        // SAFETY: the descriptor is a listening TCP socket we own; ownership passes to glommio.
        let inner = unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) };
        Ok(Listener { inner })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map_err(io::Error::from)
    }
}

/// A non-blocking standard-library listener on `address` with `SO_REUSEPORT` (for the start-up
/// responder, which runs before the shards and beside them).
pub fn bind_std(address: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    Ok(listening_socket(address, backlog, true)?.into())
}

/// A non-blocking TCP socket listening on `address` (`SO_REUSEADDR`, and `SO_REUSEPORT` if asked).
fn listening_socket(address: SocketAddr, backlog: u32, reuse_port: bool) -> io::Result<Socket> {
    let domain = if address.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// An accepted TCP connection, registered with its shard.
pub struct Stream {
    inner: glommio::net::TcpStream,
    registration: Registration,
    peer: Option<std::net::IpAddr>,
    write_timeout: Duration,
    /// Reads left before the connection gives way to the others.
    reads_left: u32,
}

/// Reads (each one batch of requests) a connection makes before it lets the others run.
const READ_BUDGET: u32 = 16;

impl Stream {
    fn new(
        inner: glommio::net::TcpStream,
        registration: Registration,
        peer: Option<std::net::IpAddr>,
        write_timeout: Duration,
    ) -> Stream {
        // Responses are written whole; Nagle would only delay them.
        let _ = inner.set_nodelay(true);
        Stream {
            inner,
            registration,
            peer,
            write_timeout,
            reads_left: READ_BUDGET,
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Transport for Stream {
    async fn read(&mut self, buffer: &mut [u8], timeout: Duration) -> io::Result<usize> {
        // glommio reads at once when bytes are waiting, without returning to the executor: a
        // client that keeps sending would keep its connection's task running while the shard's
        // other connections wait. Like tokio's cooperative budget, a connection goes to the back
        // of the run queue after `READ_BUDGET` reads in a row, or sooner when the executor asks
        // (glommio's preemption timer, after 100 ms of running).
        self.reads_left -= 1;
        if self.reads_left == 0 {
            self.reads_left = READ_BUDGET;
            futures_lite::future::yield_now().await;
        } else {
            glommio::yield_if_needed().await;
        }
        // A coarse shard deadline rather than a glommio timer per read (see `connections`).
        self.registration.arm(timeout);
        let result = futures_lite::AsyncReadExt::read(&mut self.inner, buffer).await;
        self.registration.disarm();
        match result {
            Ok(0) if self.registration.expired() => Err(io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        // The whole write has one deadline (a client that reads slowly cannot hold the
        // connection and its buffers by reading a byte now and then), on the coarse clock.
        self.registration.arm_write(self.write_timeout);
        let result = self.inner.write_all(bytes).await;
        self.registration.disarm();
        match result {
            Err(_) if self.registration.expired() => Err(io::ErrorKind::TimedOut.into()),
            other => other,
        }
    }

    async fn shutdown_write(&mut self) {
        // SAFETY: shutdown(2) on a descriptor this stream owns; errors (already closed) are moot.
        unsafe {
            libc::shutdown(self.raw_fd(), libc::SHUT_WR);
        }
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer
    }
}

/// Accepts on `listener` until the shard drains, serving every connection with `handler` in its
/// own task, over TLS when `tls` is given. Connections beyond the shard's limit, or beyond the
/// client address's share of it, are accepted and closed at once; a connection counts against
/// the limits from its accept, handshake included.
pub async fn accept_loop<H: Handler + 'static>(
    listener: Listener,
    tls: Option<Rc<tls::Acceptor>>,
    handler: Rc<H>,
    connections: Rc<Connections>,
    settings: Rc<Settings>,
    metrics: Rc<ShardMetrics>,
    write_timeout: Duration,
) {
    let mut last_error_logged: Option<std::time::Instant> = None;
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.inner.accept().await) }, async {
            connections.wait_draining().await;
            None
        })
        .await;
        let Some(accepted) = accepted else {
            return;
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                let error = io::Error::from(error);
                metrics.accept_errors.set(metrics.accept_errors.get() + 1);
                let out_of_descriptors = matches!(
                    error.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if last_error_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(%error, "accept failed");
                    last_error_logged = Some(std::time::Instant::now());
                }
                // Out of descriptors: back off so the loop does not spin while connections close.
                let pause = if out_of_descriptors { 50 } else { 1 };
                glommio::timer::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        let peer = stream.peer_addr().ok().map(|address| address.ip());
        let registration = match connections.register(stream.as_raw_fd(), peer) {
            Ok(registration) => registration,
            Err(refusal) => {
                let counter = match refusal {
                    Refusal::Shard => &metrics.connections_rejected,
                    Refusal::Ip => &metrics.connections_rejected_ip,
                };
                counter.set(counter.get() + 1);
                drop(stream);
                continue;
            }
        };
        metrics
            .connections_accepted
            .set(metrics.connections_accepted.get() + 1);
        let handler = handler.clone();
        let settings = settings.clone();
        let metrics = metrics.clone();
        let tls = tls.clone();
        glommio::spawn_local(async move {
            let control = ConnectionControl {
                presence: registration.presence(),
                metrics,
            };
            let mut stream = Stream::new(stream, registration, peer, write_timeout);
            match tls {
                None => connection::serve(&mut stream, &*handler, &control, &settings).await,
                Some(acceptor) => serve_tls(stream, &acceptor, &*handler, &control, &settings).await,
            }
        })
        .detach();
    }
}

/// Runs the TLS handshake (counting how it ended), then serves the connection's requests.
async fn serve_tls<H: Handler>(
    stream: Stream,
    acceptor: &tls::Acceptor,
    handler: &H,
    control: &ConnectionControl,
    settings: &Settings,
) {
    let metrics = &control.metrics;
    let count = |cell: &std::cell::Cell<u64>| cell.set(cell.get() + 1);
    // The connection counts as busy during its handshake: a drain waits for it (bounded by the
    // handshake deadline) rather than cutting it.
    control.presence.set_idle(false);
    match acceptor.accept(stream).await {
        Ok(mut stream) => {
            count(if stream.resumed() {
                &metrics.tls_handshakes_resumed
            } else {
                &metrics.tls_handshakes_full
            });
            connection::serve(&mut stream, handler, control, settings).await;
        }
        Err(tls::HandshakeError::TimedOut) => count(&metrics.tls_handshake_timeouts),
        Err(error) => {
            count(&metrics.tls_handshake_failures);
            tracing::debug!(%error, "TLS handshake failed");
        }
    }
}

/// The codec's view of its shard: drain state, idle tracking and metrics.
struct ConnectionControl {
    presence: Presence,
    metrics: Rc<ShardMetrics>,
}

impl connection::Control for ConnectionControl {
    fn draining(&self) -> bool {
        self.presence.draining()
    }

    fn set_idle(&self, idle: bool) {
        self.presence.set_idle(idle);
    }

    fn observe_batch(&self, requests: usize, elapsed: Duration) {
        self.metrics.latency.observe(elapsed, requests as u64);
    }

    fn observe_rejection(&self, error: crate::http::RequestError) {
        self.metrics.count_parse_error(error.code());
    }
}
