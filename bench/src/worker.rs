//! One load-generator thread: an epoll loop (mio) over its share of the connections, pinned to
//! its CPU, sending requests from its [`Generator`] and checking and timing every answer.
//!
//! Closed loop: each connection keeps `depth` requests in flight, sending the next one as each
//! answer arrives (all requests made from one read go out in one write). Open loop: each
//! connection follows its own [`Schedule`] and sends every request when due (at most `depth` in
//! flight); a `timerfd` wakes the thread for the earliest due request, and latency is measured
//! from the due time. Nothing here blocks but `epoll_wait`.
//!
//! https: each connection drives a rustls `ClientConnection` (sans I/O) over its socket: TLS
//! records are read with `read_tls`, decrypted by `process_new_packets`, and the plaintext is
//! copied into the same input buffer the plain path reads into; requests go from the output
//! buffer into rustls's `writer()` and out with `write_tls`. The plain path is unchanged.
//!
//! New connection per request (`one_request_per_connection`): each connection sends one request
//! (with `Connection: close`, written by the generator), reads the answer, waits for the server to
//! close (so the server, not the client, keeps the TIME_WAIT), and reconnects at once: a TCP
//! connect and, over TLS, a full or resumed handshake per request.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;

use crate::clock::now_ns;
use crate::http::{parse_response, Body, RESPONSE_BYTES_MAX};
use crate::latency::{Latencies, Schedule};
use crate::scenario::{classify, CheckError, Expect, Generator, Kind, Outcome, KINDS};
use crate::timeline::Timeline;
use crate::tls::{resumed, Negotiated, TlsClient};

/// Bytes each connection reads at once (grown for a larger response, up to the response limit).
const INPUT_BYTES: usize = 64 * 1024;
/// Wait before reconnecting after a connection failed.
const RECONNECT_WAIT_NS: u64 = 100_000_000;
/// Longest `epoll_wait`, so that the end of the run is noticed and progress is published.
const POLL_WAIT_MAX: Duration = Duration::from_millis(20);
/// Open loop: when the next request is due within this long, poll without sleeping instead of
/// arming the timer. Waking a sleeping thread costs about 10 µs of CPU on a VM (more than the
/// request), and arrives late; spinning keeps the schedule at the price of a busy client core.
const SPIN_BEFORE_DUE_NS: u64 = 200_000;
/// Token of the open-loop timer.
const TIMER: Token = Token(usize::MAX);
/// Examples kept per error kind.
const ERROR_EXAMPLE_BYTES_MAX: usize = 300;

/// Where one connection goes.
#[derive(Debug, Clone)]
pub struct ConnectionPlan {
    /// Address to connect to.
    pub address: SocketAddr,
    /// The shard behind that address (shard-aware mode), whose users this connection acts as.
    pub shard: Option<usize>,
}

/// What one worker does.
#[derive(Debug)]
pub struct WorkerPlan {
    /// Worker index.
    pub thread: usize,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// The worker's connections.
    pub connections: Vec<ConnectionPlan>,
    /// Most requests in flight per connection.
    pub depth: usize,
    /// Open loop: requests per second per connection.
    pub rate_per_connection: Option<f64>,
    /// When the load starts (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// When measuring starts (after the warm-up).
    pub measure_start_ns: u64,
    /// When the run ends.
    pub end_ns: u64,
    /// https: the TLS client (with this worker's own session cache).
    pub tls: Option<TlsClient>,
    /// Each connection sends one request, then closes and reconnects.
    pub one_request_per_connection: bool,
    /// Keep a per-second timeline (`--timeline`).
    pub timeline: bool,
}

/// Counters the main thread reads for its progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Correct answers so far (warm-up included).
    pub ok: AtomicU64,
    /// Failed requests and connection errors so far.
    pub errors: AtomicU64,
    /// Answers 503 `overloaded` so far (warm-up included).
    pub shed: AtomicU64,
}

/// Counts and latencies of one request kind.
#[derive(Debug, Clone, Default)]
pub struct KindResult {
    /// Correct answers in the measured window.
    pub ok: u64,
    /// Failed requests in the measured window.
    pub failed: u64,
    /// Latencies of the correct answers in the measured window.
    pub latencies: Latencies,
    /// Answers 503 `overloaded` (the server's admission control) in the measured window: neither
    /// correct nor failed.
    pub shed: u64,
    /// Latencies of the shed answers in the measured window.
    pub shed_latencies: Latencies,
}

/// One kind of error, with the first example seen.
#[derive(Debug, Clone, Default)]
pub struct ErrorCount {
    /// Occurrences, warm-up included.
    pub count: u64,
    /// The first occurrence's details.
    pub example: String,
}

/// What a worker measured.
#[derive(Debug, Default)]
pub struct WorkerResult {
    /// Per kind, indexed by [`Kind::index`].
    pub kinds: Vec<KindResult>,
    /// Errors by kind (status codes, bad bodies, connection failures), warm-up included.
    pub errors: BTreeMap<String, ErrorCount>,
    /// Payments answered correctly in the measured window, and how many went cross-shard.
    pub payments_cross_shard: u64,
    /// Connections opened (including reconnects).
    pub connects: u64,
    /// Connections set up in the measured window: the TCP connect done and, over TLS, the
    /// handshake done.
    pub handshakes: u64,
    /// Of those, TLS handshakes that resumed a session.
    pub resumed_handshakes: u64,
    /// What the first TLS handshake agreed on.
    pub negotiated: Option<Negotiated>,
    /// Open loop: how late the client wrote each request of the measured window, after its due
    /// time or after its connection got room for it, whichever is later.
    pub send_lag: Latencies,
    /// Requests written (handed to the connection's output) in the measured window.
    pub sent: u64,
    /// `--timeline`: per second since the load started.
    pub timeline: Option<Timeline>,
}

impl WorkerResult {
    fn error(&mut self, kind: String, example: impl FnOnce() -> String) {
        let entry = self.errors.entry(kind).or_default();
        if entry.count == 0 {
            let mut text = example();
            if text.len() > ERROR_EXAMPLE_BYTES_MAX {
                let mut cut = ERROR_EXAMPLE_BYTES_MAX;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            entry.example = text;
        }
        entry.count += 1;
    }
}

struct InFlight {
    expect: Expect,
    start_ns: u64,
}

struct Connection {
    plan: ConnectionPlan,
    stream: Option<TcpStream>,
    /// https: the TLS state of the open connection (boxed: a kilobyte, which plain connections
    /// need not carry).
    tls: Option<Box<ClientConnection>>,
    /// The TCP connect is done (the TLS handshake may still be going on).
    connected: bool,
    /// The connection's set-up has been counted (TCP connect, TLS handshake).
    handshake_counted: bool,
    /// When the connection was opened (the start of a one-request connection's request).
    connect_start_ns: u64,
    /// The server said `Connection: close` to the last request: waiting for its FIN.
    closing: bool,
    out: Vec<u8>,
    out_position: usize,
    input: Vec<u8>,
    input_start: usize,
    input_end: usize,
    in_flight: VecDeque<InFlight>,
    /// Since when the connection has had room for another request (connected, or an answer
    /// arrived while it was full): open-loop lateness is counted from here or the due time.
    room_since_ns: u64,
    schedule: Option<Schedule>,
    reconnect_at_ns: Option<u64>,
}

/// Runs a worker to the end of its plan.
pub fn run(plan: WorkerPlan, generator: Generator, progress: Arc<Progress>) -> std::io::Result<WorkerResult> {
    if let Some(cpu) = plan.cpu {
        pin_to_cpu(cpu)?;
    }
    let mut worker = Worker::new(plan, generator, progress)?;
    worker.run()?;
    Ok(worker.result)
}

struct Worker {
    plan: WorkerPlan,
    generator: Generator,
    progress: Arc<Progress>,
    poll: Poll,
    connections: Vec<Connection>,
    timer: Option<OwnedFd>,
    timer_armed_ns: u64,
    /// Open loop: no connection that could send has a request due before this.
    next_due_ns: u64,
    /// Connections waiting to (re)connect.
    reconnects_pending: usize,
    result: WorkerResult,
    scratch: Vec<u8>,
    ok_total: u64,
    errors_total: u64,
    shed_total: u64,
}

impl Worker {
    fn new(plan: WorkerPlan, generator: Generator, progress: Arc<Progress>) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let connection_count = plan.connections.len().max(1);
        let connections = plan
            .connections
            .iter()
            .enumerate()
            .map(|(index, connection)| Connection {
                plan: connection.clone(),
                stream: None,
                tls: None,
                connected: false,
                handshake_counted: false,
                connect_start_ns: 0,
                closing: false,
                out: Vec::with_capacity(4096),
                out_position: 0,
                input: vec![0; INPUT_BYTES],
                input_start: 0,
                input_end: 0,
                in_flight: VecDeque::with_capacity(plan.depth),
                room_since_ns: 0,
                // Connections start spread over one interval, so the load is smooth.
                schedule: plan.rate_per_connection.map(|rate| {
                    let interval_ns = 1e9 / rate;
                    let offset = interval_ns * index as f64 / connection_count as f64;
                    Schedule::new(plan.start_ns + offset as u64, interval_ns)
                }),
                reconnect_at_ns: Some(plan.start_ns),
            })
            .collect();
        let timer = if plan.rate_per_connection.is_some() {
            // SAFETY: plain system call; the result is checked and then owned.
            let fd = unsafe {
                libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` is a new descriptor owned by nobody else.
            let timer = unsafe { OwnedFd::from_raw_fd(fd) };
            poll.registry()
                .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
            Some(timer)
        } else {
            None
        };
        let mut kinds = Vec::with_capacity(KINDS.len());
        for kind in KINDS {
            let mut result = KindResult::default();
            if !generator.workload().mix.contains(kind) {
                // Unused kinds keep an empty histogram; only used ones are merged and reported.
                result.latencies = Latencies::new();
            }
            kinds.push(result);
        }
        Ok(Self {
            generator,
            progress,
            poll,
            connections,
            timer,
            timer_armed_ns: 0,
            next_due_ns: 0,
            reconnects_pending: connection_count,
            result: WorkerResult {
                kinds,
                timeline: plan.timeline.then(|| Timeline::new(plan.start_ns, plan.end_ns)),
                ..WorkerResult::default()
            },
            plan,
            scratch: Vec::new(),
            ok_total: 0,
            errors_total: 0,
            shed_total: 0,
        })
    }

    fn run(&mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // Wait for the common start, so that every worker begins together.
        let wait = self.plan.start_ns.saturating_sub(now_ns());
        std::thread::sleep(Duration::from_nanos(wait));
        loop {
            let now = now_ns();
            if now >= self.plan.end_ns {
                break;
            }
            // The earliest reconnection still to come (u64::MAX: none).
            let mut next_reconnect_ns = u64::MAX;
            if self.reconnects_pending > 0 {
                next_reconnect_ns = self.reconnect_due(now);
            }
            let mut next_wake = self.plan.end_ns.min(now + POLL_WAIT_MAX.as_nanos() as u64);
            if self.timer.is_none() {
                next_wake = next_wake.min(next_reconnect_ns);
            } else {
                // Connections that get an answer send what is due themselves; the others are
                // visited only when the earliest of their due times has come.
                if now >= self.next_due_ns {
                    for index in 0..self.connections.len() {
                        self.issue_due(index, now);
                    }
                    self.next_due_ns = self.next_due().unwrap_or(u64::MAX);
                }
                // A new connection per request opens each connection when its request is due.
                let due = self.next_due_ns.min(next_reconnect_ns);
                if due <= now + SPIN_BEFORE_DUE_NS {
                    next_wake = now;
                } else if due < next_wake {
                    self.arm_timer(due - SPIN_BEFORE_DUE_NS / 2)?;
                }
            }
            let timeout = Duration::from_nanos(next_wake.saturating_sub(now));
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            for event in events.iter() {
                if event.token() == TIMER {
                    self.clear_timer();
                    continue;
                }
                let index = event.token().0;
                if event.is_writable() || event.is_write_closed() || event.is_error() {
                    self.on_writable(index);
                }
                if event.is_readable() || event.is_read_closed() {
                    self.on_readable(index);
                }
            }
            self.progress.ok.store(self.ok_total, Ordering::Relaxed);
            self.progress.errors.store(self.errors_total, Ordering::Relaxed);
            self.progress.shed.store(self.shed_total, Ordering::Relaxed);
        }
        for connection in &mut self.connections {
            if let Some(mut stream) = connection.stream.take() {
                let _ = self.poll.registry().deregister(&mut stream);
            }
        }
        Ok(())
    }

    /// Opens the connections whose reconnect time has come.
    /// Opens the connections whose reconnect time has come; returns the earliest reconnect time
    /// still to come (`u64::MAX`: none).
    fn reconnect_due(&mut self, now: u64) -> u64 {
        let mut next = u64::MAX;
        for index in 0..self.connections.len() {
            if self.connections[index]
                .reconnect_at_ns
                .is_some_and(|at| at <= now)
            {
                self.open(index, now);
            }
            // Still to come (or, if the connect failed at once, to be retried).
            if let Some(at) = self.connections[index].reconnect_at_ns {
                next = next.min(at);
            }
        }
        next
    }

    /// Opens connection `index` (a non-blocking connect; over TLS the ClientHello is queued).
    fn open(&mut self, index: usize, now: u64) {
        let connection = &mut self.connections[index];
        if connection.reconnect_at_ns.take().is_some() {
            self.reconnects_pending -= 1;
        }
        let address = connection.plan.address;
        let tls = match self
            .plan
            .tls
            .as_ref()
            .map(|tls| tls.connect().map(Box::new))
            .transpose()
        {
            Ok(tls) => tls,
            Err(error) => {
                self.fail_connection(index, "tls", format!("{address}: {error}"), now);
                return;
            }
        };
        match TcpStream::connect(address) {
            Ok(mut stream) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(error) = self.poll.registry().register(&mut stream, Token(index), interest) {
                    self.fail_connection(index, "connect", format!("{address}: {error}"), now);
                    return;
                }
                let connection = &mut self.connections[index];
                connection.stream = Some(stream);
                connection.tls = tls;
                connection.connected = false;
                connection.handshake_counted = false;
                connection.closing = false;
                connection.connect_start_ns = now;
                self.result.connects += 1;
            }
            Err(error) => {
                self.fail_connection(index, "connect", format!("{address}: {error}"), now);
            }
        }
    }

    /// A one-request connection is done: closes it and opens the next one at once (so that
    /// the session ticket it just got is there for the next handshake, and no connection waits
    /// for the others of its poll round). Open loop: when its next request is due, so that the
    /// request's latency, from its due time, includes the connection's set-up.
    fn reopen(&mut self, index: usize, now: u64) {
        let at = match &self.connections[index].schedule {
            Some(schedule) => schedule.next_due_ns().max(now),
            None => now,
        };
        self.close(index, at);
        if at == now && now < self.plan.end_ns {
            self.open(index, now);
        }
    }

    fn on_writable(&mut self, index: usize) {
        let now = now_ns();
        let connection = &mut self.connections[index];
        let Some(stream) = &connection.stream else {
            return;
        };
        if !connection.connected {
            // A non-blocking connect finished: it worked if there is no error and a peer.
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(error)) | Err(error) => {
                    let address = connection.plan.address;
                    self.fail_connection(index, "connect", format!("{address}: {error}"), now);
                    return;
                }
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::NotConnected => return,
                Err(error) => {
                    let address = connection.plan.address;
                    self.fail_connection(index, "connect", format!("{address}: {error}"), now);
                    return;
                }
            }
            let _ = stream.set_nodelay(true);
            connection.connected = true;
            connection.room_since_ns = now;
            if connection.tls.is_none() {
                // Plain: the connection is set up (over TLS: when the handshake is done).
                connection.handshake_counted = true;
                self.count_handshake(index, now);
            }
            if self.timer.is_some() {
                self.issue_due(index, now);
            } else {
                // A one-request connection's request includes the connection's set-up. Over TLS
                // the requests wait in rustls until the handshake is done.
                let start_ns = if self.plan.one_request_per_connection {
                    self.connections[index].connect_start_ns
                } else {
                    now
                };
                while self.connections[index].in_flight.len() < self.plan.depth {
                    self.push_request_at(index, start_ns, now);
                }
            }
        }
        self.flush(index, now);
    }

    /// Counts a connection whose set-up (TCP connect, TLS handshake) is done at `now`.
    fn count_handshake(&mut self, index: usize, now: u64) {
        let measuring = now >= self.plan.measure_start_ns && now < self.plan.end_ns;
        if let Some(tls) = &self.connections[index].tls {
            if self.result.negotiated.is_none() {
                self.result.negotiated = Some(Negotiated::of(tls));
            }
            if measuring && resumed(tls) {
                self.result.resumed_handshakes += 1;
            }
        }
        if measuring {
            self.result.handshakes += 1;
        }
    }

    fn on_readable(&mut self, index: usize) {
        if self.connections[index].tls.is_some() {
            self.on_readable_tls(index);
            return;
        }
        loop {
            let connection = &mut self.connections[index];
            let Some(stream) = &mut connection.stream else {
                return;
            };
            if !connection.connected {
                return;
            }
            make_room(
                &mut connection.input,
                &mut connection.input_start,
                &mut connection.input_end,
            );
            let space = connection.input.len() - connection.input_end;
            let read = stream.read(&mut connection.input[connection.input_end..]);
            let now = now_ns();
            match read {
                Ok(0) if connection.closing => {
                    // The server closed after its `Connection: close` answer, as it should.
                    self.reopen(index, now);
                    return;
                }
                Ok(_) if connection.closing => {
                    // Bytes after a `Connection: close` answer: ignored; wait for the FIN.
                    connection.input_start = 0;
                    connection.input_end = 0;
                }
                Ok(0) => {
                    self.closed_by_server(index, now);
                    return;
                }
                Ok(read) => {
                    connection.input_end += read;
                    if !self.take_responses(index, now) {
                        return;
                    }
                    self.flush(index, now);
                    if read < space && !self.connections[index].closing {
                        // The socket is drained: edge-triggered epoll reports the next bytes. (A
                        // closing connection reads on: its FIN may be there already.)
                        return;
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.fail_connection(index, "read", error.to_string(), now);
                    return;
                }
            }
        }
    }

    /// https: reads TLS records, processes them (handshake, alerts, tickets, application data),
    /// moves the plaintext into the input buffer, and handles the responses in it.
    fn on_readable_tls(&mut self, index: usize) {
        loop {
            let connection = &mut self.connections[index];
            let (Some(stream), Some(tls)) = (&mut connection.stream, &mut connection.tls) else {
                return;
            };
            if !connection.connected {
                return;
            }
            let mut socket = ShortReadProbe { stream, short: false };
            let read = tls.read_tls(&mut socket);
            let drained = socket.short;
            let now = now_ns();
            // Ok(0): the TCP stream ended, or a close_notify came earlier.
            let mut peer_closed = match read {
                Ok(read) => read == 0,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.fail_connection(index, "read", error.to_string(), now);
                    return;
                }
            };
            if let Err(error) = tls.process_new_packets() {
                // Tell the server why (the alert rustls queued), then report rustls's words.
                let _ = tls.write_tls(stream);
                let address = connection.plan.address;
                self.fail_connection(index, "tls", format!("{address}: {error}"), now);
                return;
            }
            let handshake_done = !connection.handshake_counted && !tls.is_handshaking();
            if handshake_done {
                connection.handshake_counted = true;
            }
            let mut too_large = false;
            loop {
                make_room(
                    &mut connection.input,
                    &mut connection.input_start,
                    &mut connection.input_end,
                );
                let Some(space) = connection
                    .input
                    .get_mut(connection.input_end..)
                    .filter(|space| !space.is_empty())
                else {
                    too_large = true;
                    break;
                };
                match tls.reader().read(space) {
                    Ok(0) => {
                        // close_notify.
                        peer_closed = true;
                        break;
                    }
                    Ok(read) => connection.input_end += read,
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == ErrorKind::UnexpectedEof => {
                        // The TCP stream ended without close_notify.
                        peer_closed = true;
                        break;
                    }
                    Err(error) => {
                        self.fail_connection(index, "read", error.to_string(), now);
                        return;
                    }
                }
            }
            if handshake_done {
                self.count_handshake(index, now);
            }
            if too_large {
                let error = crate::http::FramingError::TooLarge;
                self.fail_connection(index, "framing", error.to_string(), now);
                return;
            }
            let connection = &mut self.connections[index];
            if connection.closing {
                connection.input_start = 0;
                connection.input_end = 0;
            } else if connection.input_end > connection.input_start && !self.take_responses(index, now) {
                return;
            }
            // Handshake messages, and requests waiting in rustls for the handshake's end.
            self.flush(index, now);
            let connection = &self.connections[index];
            if connection.stream.is_none() {
                return;
            }
            if peer_closed {
                if connection.closing {
                    self.reopen(index, now);
                } else {
                    self.closed_by_server(index, now);
                }
                return;
            }
            if drained && !connection.closing {
                // The socket is drained: edge-triggered epoll reports the next bytes.
                return;
            }
        }
    }

    /// Handles every complete response in the input; false if the connection was closed.
    fn take_responses(&mut self, index: usize, now: u64) -> bool {
        let measuring = now >= self.plan.measure_start_ns && now < self.plan.end_ns;
        loop {
            let connection = &mut self.connections[index];
            let available = &connection.input[connection.input_start..connection.input_end];
            if available.is_empty() {
                connection.input_start = 0;
                connection.input_end = 0;
                return true;
            }
            let response = match parse_response(available, &mut self.scratch) {
                Ok(Some(response)) => response,
                Ok(None) => return true,
                Err(error) => {
                    self.fail_connection(index, "framing", error.to_string(), now);
                    return false;
                }
            };
            if connection.in_flight.len() == self.plan.depth {
                connection.room_since_ns = now;
            }
            let Some(request) = connection.in_flight.pop_front() else {
                self.fail_connection(
                    index,
                    "unexpected_response",
                    format!("status {}", response.status),
                    now,
                );
                return false;
            };
            let body = match &response.body {
                Body::InBuffer(range) => &available[range.clone()],
                Body::Decoded => &self.scratch[..],
            };
            let kind = request.expect.kind;
            match classify(kind, response.status, body) {
                Outcome::Ok => {
                    self.ok_total += 1;
                    if measuring {
                        let stats = &mut self.result.kinds[kind.index()];
                        stats.ok += 1;
                        stats.latencies.record(request.start_ns, now);
                        if kind == Kind::Payment && request.expect.cross_shard {
                            self.result.payments_cross_shard += 1;
                        }
                    }
                    if let Some(timeline) = &mut self.result.timeline {
                        timeline.ok(request.start_ns, now);
                    }
                }
                Outcome::Shed => {
                    // Refused by the server's admission control: an answer, not an error; its
                    // latency (from the same start or due time) is kept apart.
                    self.shed_total += 1;
                    if measuring {
                        let stats = &mut self.result.kinds[kind.index()];
                        stats.shed += 1;
                        stats.shed_latencies.record(request.start_ns, now);
                    }
                    if let Some(timeline) = &mut self.result.timeline {
                        timeline.shed(now);
                    }
                }
                Outcome::Failed(error) => {
                    self.errors_total += 1;
                    if let Some(timeline) = &mut self.result.timeline {
                        timeline.errors(now, 1);
                    }
                    if measuring {
                        self.result.kinds[kind.index()].failed += 1;
                    }
                    let (name, text) = match error {
                        CheckError::Status(status) => (format!("status_{status}"), format!("{kind}: ")),
                        CheckError::Body => (format!("bad_body_{kind}"), String::new()),
                    };
                    let example = String::from_utf8_lossy(body).into_owned();
                    self.result.error(name, || text + &example);
                }
            }
            let connection = &mut self.connections[index];
            connection.input_start += response.consumed;
            if response.close {
                let pending = connection.in_flight.len();
                if pending > 0 {
                    self.fail_connection(
                        index,
                        "closed_by_server",
                        format!("Connection: close with {pending} request(s) in flight"),
                        now,
                    );
                } else if self.plan.one_request_per_connection {
                    // The server closes first (and keeps the TIME_WAIT): reconnect on its FIN.
                    connection.closing = true;
                    connection.input_start = 0;
                    connection.input_end = 0;
                    return true;
                } else {
                    self.close(index, now);
                }
                return false;
            }
            if self.plan.one_request_per_connection {
                // The server kept the connection open despite `Connection: close`: close it.
                self.close_gracefully(index, now);
                return false;
            }
            // The next request: closed loop replaces each answer, open loop sends what is due.
            if self.timer.is_some() {
                self.issue_due(index, now);
            } else if now < self.plan.end_ns {
                self.push_request(index, now);
            }
        }
    }

    /// Open loop: queues the connection's requests that are due (within its depth).
    fn issue_due(&mut self, index: usize, now: u64) {
        let connection = &mut self.connections[index];
        if !connection.connected {
            return;
        }
        let mut issued = false;
        while self.connections[index].in_flight.len() < self.plan.depth {
            let Some(schedule) = &mut self.connections[index].schedule else {
                return;
            };
            let Some(due) = schedule.take_due(now) else {
                break;
            };
            if now >= self.plan.measure_start_ns {
                // Late only by the client's own doing: a request that waited for a connection
                // busy with earlier requests waited for the server (its latency shows that).
                let room_since = self.connections[index].room_since_ns;
                self.result.send_lag.record(due.max(room_since), now);
            }
            self.push_request_at(index, due, now);
            issued = true;
        }
        if issued {
            self.flush(index, now);
        }
        let connection = &self.connections[index];
        if connection.connected && connection.in_flight.len() < self.plan.depth {
            if let Some(schedule) = &connection.schedule {
                self.next_due_ns = self.next_due_ns.min(schedule.next_due_ns());
            }
        }
    }

    /// The earliest due time of a connection that could send now.
    fn next_due(&self) -> Option<u64> {
        self.connections
            .iter()
            .filter(|connection| connection.connected && connection.in_flight.len() < self.plan.depth)
            .filter_map(|connection| connection.schedule.as_ref().map(Schedule::next_due_ns))
            .min()
    }

    fn push_request(&mut self, index: usize, now: u64) {
        self.push_request_at(index, now, now);
    }

    /// Queues a request for writing at `now`, its latency counted from `start_ns`.
    fn push_request_at(&mut self, index: usize, start_ns: u64, now: u64) {
        if now >= self.plan.measure_start_ns && now < self.plan.end_ns {
            self.result.sent += 1;
        }
        let connection = &mut self.connections[index];
        let expect = self
            .generator
            .next_request(connection.plan.shard, &mut connection.out);
        connection.in_flight.push_back(InFlight { expect, start_ns });
    }

    /// Writes what is buffered; the rest waits for the next writable event.
    fn flush(&mut self, index: usize, now: u64) {
        let connection = &mut self.connections[index];
        let Some(stream) = &mut connection.stream else {
            return;
        };
        if let Some(tls) = &mut connection.tls {
            // Requests into rustls (which holds them until the handshake is done, and takes at
            // most its buffer limit), TLS records out to the socket.
            loop {
                if connection.out_position < connection.out.len() {
                    match tls.writer().write(&connection.out[connection.out_position..]) {
                        Ok(written) => connection.out_position += written,
                        Err(error) => {
                            self.fail_connection(index, "write", error.to_string(), now);
                            return;
                        }
                    }
                    if connection.out_position == connection.out.len() {
                        connection.out.clear();
                        connection.out_position = 0;
                    }
                }
                if !tls.wants_write() {
                    return;
                }
                match tls.write_tls(stream) {
                    Ok(0) => {
                        self.fail_connection(index, "write", "wrote 0 bytes".into(), now);
                        return;
                    }
                    Ok(_) => {}
                    Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(error) => {
                        self.fail_connection(index, "write", error.to_string(), now);
                        return;
                    }
                }
            }
        }
        while connection.out_position < connection.out.len() {
            match stream.write(&connection.out[connection.out_position..]) {
                Ok(0) => {
                    self.fail_connection(index, "write", "wrote 0 bytes".into(), now);
                    return;
                }
                Ok(written) => connection.out_position += written,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => {
                    self.fail_connection(index, "write", error.to_string(), now);
                    return;
                }
            }
        }
        connection.out.clear();
        connection.out_position = 0;
    }

    /// Records a connection failure, fails its requests in flight, and reconnects later.
    /// The server closed connection `index` while it still expected answers.
    fn closed_by_server(&mut self, index: usize, now: u64) {
        let pending = self.connections[index].in_flight.len();
        self.fail_connection(
            index,
            "closed_by_server",
            format!("the server closed the connection with {pending} request(s) in flight"),
            now,
        );
    }

    fn fail_connection(&mut self, index: usize, kind: &str, detail: String, now: u64) {
        self.errors_total += 1;
        self.result.error(kind.to_string(), || detail);
        let lost = self.connections[index].in_flight.len() as u64;
        if let Some(timeline) = &mut self.result.timeline {
            timeline.errors(now, 1 + lost);
        }
        if lost > 0 {
            self.errors_total += lost;
            let entry = self.result.errors.entry("lost_in_flight".into()).or_default();
            if entry.count == 0 {
                entry.example = format!("requests in flight on a connection that failed ({kind})");
            }
            entry.count += lost;
            if now >= self.plan.measure_start_ns {
                for request in &self.connections[index].in_flight {
                    self.result.kinds[request.expect.kind.index()].failed += 1;
                }
            }
        }
        self.close(index, now + RECONNECT_WAIT_NS);
    }

    /// Closes a connection after telling a TLS server (close_notify), and reconnects at once.
    fn close_gracefully(&mut self, index: usize, now: u64) {
        let connection = &mut self.connections[index];
        if let (Some(stream), Some(tls)) = (&mut connection.stream, &mut connection.tls) {
            tls.send_close_notify();
            let _ = tls.write_tls(stream);
        }
        self.reopen(index, now);
    }

    /// Closes a connection and schedules its reconnection at `reconnect_at_ns`.
    fn close(&mut self, index: usize, reconnect_at_ns: u64) {
        let connection = &mut self.connections[index];
        if let Some(mut stream) = connection.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        connection.tls = None;
        connection.closing = false;
        connection.connected = false;
        connection.in_flight.clear();
        connection.out.clear();
        connection.out_position = 0;
        connection.input_start = 0;
        connection.input_end = 0;
        if connection.reconnect_at_ns.is_none() {
            self.reconnects_pending += 1;
        }
        connection.reconnect_at_ns = Some(reconnect_at_ns);
    }

    fn arm_timer(&mut self, due_ns: u64) -> std::io::Result<()> {
        if due_ns == self.timer_armed_ns {
            return Ok(());
        }
        let Some(timer) = &self.timer else {
            return Ok(());
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (due_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (due_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `timer` is an open timerfd and `spec` a valid itimerspec.
        let result = unsafe {
            libc::timerfd_settime(
                timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.timer_armed_ns = due_ns;
        Ok(())
    }

    fn clear_timer(&mut self) {
        if let Some(timer) = &self.timer {
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `expirations` from the open timerfd.
            unsafe { libc::read(timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
            self.timer_armed_ns = 0;
        }
    }
}

/// When a connection's input buffer is full, makes room: moves the unparsed part to the front,
/// else grows the buffer (up to the response limit).
fn make_room(input: &mut Vec<u8>, input_start: &mut usize, input_end: &mut usize) {
    if *input_end == input.len() {
        if *input_start > 0 {
            input.copy_within(*input_start..*input_end, 0);
            *input_end -= *input_start;
            *input_start = 0;
        } else if input.len() < RESPONSE_BYTES_MAX + INPUT_BYTES {
            let grown = input.len() * 2;
            input.resize(grown, 0);
        }
    }
}

/// The socket as rustls reads it, noting a short read: the socket is drained, and edge-triggered
/// epoll reports the next bytes (no read just to see `WouldBlock`).
struct ShortReadProbe<'a> {
    stream: &'a mut TcpStream,
    short: bool,
}

impl Read for ShortReadProbe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.stream.read(buf)?;
        self.short = read < buf.len();
        Ok(read)
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it for cpu < CPU_SETSIZE.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                format!("CPU {cpu} is out of range"),
            ));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            let error = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                error.kind(),
                format!("pinning to CPU {cpu}: {error}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    /// A plain HTTP/1.1 server on 127.0.0.1 answering `GET /plaintext` in turn with the right
    /// answer, a 503 `overloaded` and another 503; one thread per connection.
    fn rotating_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let answers: [(&str, &str); 3] = [
                        ("200 OK", "Hello, World!"),
                        (
                            "503 Service Unavailable",
                            r#"{"error":{"type":"api_error","code":"overloaded","message":"m"},"request_id":"r"}"#,
                        ),
                        (
                            "503 Service Unavailable",
                            r#"{"error":{"type":"api_error","code":"unavailable","message":"m"},"request_id":"r"}"#,
                        ),
                    ];
                    let mut turn = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line != "\r\n" {
                            continue;
                        }
                        // The end of a request's head (GET: no body).
                        let (status, body) = answers[turn % 3];
                        turn += 1;
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if writer.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    #[test]
    fn overloaded_503s_are_shed_not_errors_and_the_timeline_counts_them() {
        let address = rotating_server();
        let workload = Arc::new(crate::scenario::Workload {
            mix: crate::scenario::Scenario::Plaintext.mix(None),
            users: crate::scenario::UserSet::new(Vec::new(), 1),
            login_users: crate::scenario::UserSet::new(Vec::new(), 1),
            shards: 1,
            cross_shard_ratio: None,
            host_header: b"Host: localhost\r\n".to_vec(),
            run_prefix: "t".into(),
            password: "unused-password".into(),
            currency: "USD".into(),
            payment_amount: 1,
        });
        let start_ns = now_ns();
        let plan = WorkerPlan {
            thread: 0,
            cpu: None,
            connections: vec![ConnectionPlan { address, shard: None }],
            depth: 1,
            rate_per_connection: None,
            start_ns,
            measure_start_ns: start_ns,
            end_ns: start_ns + 1_100_000_000,
            tls: None,
            one_request_per_connection: false,
            timeline: true,
        };
        let generator = Generator::new(workload, 0, 1);
        let result = run(plan, generator, Arc::default()).unwrap();
        let plaintext = &result.kinds[Kind::Plaintext.index()];
        assert!(plaintext.ok > 10, "{plaintext:?}");
        // In turn: ok, shed, failed (one of each, give or take the last answers at the end).
        assert!(plaintext.ok.abs_diff(plaintext.shed) <= 1, "{plaintext:?}");
        assert!(plaintext.ok.abs_diff(plaintext.failed) <= 1, "{plaintext:?}");
        assert_eq!(plaintext.shed_latencies.count(), plaintext.shed);
        assert_eq!(plaintext.latencies.count(), plaintext.ok);
        // Only the other 503 is an error.
        assert_eq!(result.errors.keys().collect::<Vec<_>>(), vec!["status_503"]);
        assert!(result.errors["status_503"].example.contains("unavailable"));
        assert!(result.sent >= plaintext.ok + plaintext.shed + plaintext.failed);
        let timeline = result.timeline.expect("--timeline").entries();
        assert_eq!(timeline.len(), 1);
        assert!(timeline[0].ok > 0 && timeline[0].shed > 0 && timeline[0].errors > 0);
        assert!(timeline[0].ok_p99_us.is_some());
    }
}
