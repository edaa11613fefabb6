//! One load-generator thread: an epoll loop (mio) over its share of the connections, pinned to
//! its CPU, sending requests from its [`Generator`] and checking and timing every answer.
//!
//! Closed loop: each connection keeps `depth` requests in flight, sending the next one as each
//! answer arrives (all requests made from one read go out in one write). Open loop: each
//! connection follows its own [`Schedule`] and sends every request when due (at most `depth` in
//! flight); a `timerfd` wakes the thread for the earliest due request, and latency is measured
//! from the due time. Nothing here blocks but `epoll_wait`.

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

use crate::clock::now_ns;
use crate::http::{parse_response, Body, RESPONSE_BYTES_MAX};
use crate::latency::{Latencies, Schedule};
use crate::scenario::{check, CheckError, Expect, Generator, Kind, KINDS};

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
}

/// Counters the main thread reads for its progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Correct answers so far (warm-up included).
    pub ok: AtomicU64,
    /// Failed requests and connection errors so far.
    pub errors: AtomicU64,
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
    /// Open loop: how late the client wrote each request of the measured window, after its due
    /// time or after its connection got room for it, whichever is later.
    pub send_lag: Latencies,
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
    connected: bool,
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
                connected: false,
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
            plan,
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
                ..WorkerResult::default()
            },
            scratch: Vec::new(),
            ok_total: 0,
            errors_total: 0,
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
            if self.reconnects_pending > 0 {
                self.reconnect_due(now);
            }
            let mut next_wake = self.plan.end_ns.min(now + POLL_WAIT_MAX.as_nanos() as u64);
            if self.timer.is_some() {
                // Connections that get an answer send what is due themselves; the others are
                // visited only when the earliest of their due times has come.
                if now >= self.next_due_ns {
                    for index in 0..self.connections.len() {
                        self.issue_due(index, now);
                    }
                    self.next_due_ns = self.next_due().unwrap_or(u64::MAX);
                }
                if self.next_due_ns <= now + SPIN_BEFORE_DUE_NS {
                    next_wake = now;
                } else if self.next_due_ns < next_wake {
                    self.arm_timer(self.next_due_ns - SPIN_BEFORE_DUE_NS / 2)?;
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
        }
        for connection in &mut self.connections {
            if let Some(mut stream) = connection.stream.take() {
                let _ = self.poll.registry().deregister(&mut stream);
            }
        }
        Ok(())
    }

    /// Opens the connections whose reconnect time has come.
    fn reconnect_due(&mut self, now: u64) {
        for index in 0..self.connections.len() {
            let connection = &mut self.connections[index];
            match connection.reconnect_at_ns {
                Some(at) if at <= now => {
                    connection.reconnect_at_ns = None;
                    self.reconnects_pending -= 1;
                }
                _ => continue,
            }
            let address = connection.plan.address;
            match TcpStream::connect(address) {
                Ok(mut stream) => {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(error) = self.poll.registry().register(&mut stream, Token(index), interest) {
                        self.fail_connection(index, "connect", format!("{address}: {error}"), now);
                        continue;
                    }
                    let connection = &mut self.connections[index];
                    connection.stream = Some(stream);
                    connection.connected = false;
                    self.result.connects += 1;
                }
                Err(error) => {
                    self.fail_connection(index, "connect", format!("{address}: {error}"), now);
                }
            }
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
            if self.timer.is_some() {
                self.issue_due(index, now);
            } else {
                while self.connections[index].in_flight.len() < self.plan.depth {
                    self.push_request(index, now);
                }
            }
        }
        self.flush(index, now);
    }

    fn on_readable(&mut self, index: usize) {
        loop {
            let connection = &mut self.connections[index];
            let Some(stream) = &mut connection.stream else {
                return;
            };
            if !connection.connected {
                return;
            }
            if connection.input_end == connection.input.len() {
                // Full: make room by moving the unparsed part to the front, else grow.
                if connection.input_start > 0 {
                    connection
                        .input
                        .copy_within(connection.input_start..connection.input_end, 0);
                    connection.input_end -= connection.input_start;
                    connection.input_start = 0;
                } else if connection.input.len() < RESPONSE_BYTES_MAX + INPUT_BYTES {
                    let grown = connection.input.len() * 2;
                    connection.input.resize(grown, 0);
                }
            }
            let space = connection.input.len() - connection.input_end;
            let read = stream.read(&mut connection.input[connection.input_end..]);
            let now = now_ns();
            match read {
                Ok(0) => {
                    let pending = connection.in_flight.len();
                    self.fail_connection(
                        index,
                        "closed_by_server",
                        format!("the server closed the connection with {pending} request(s) in flight"),
                        now,
                    );
                    return;
                }
                Ok(read) => {
                    connection.input_end += read;
                    if !self.take_responses(index, now) {
                        return;
                    }
                    self.flush(index, now);
                    if read < space {
                        // The socket is drained: edge-triggered epoll reports the next bytes.
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
            match check(kind, response.status, body) {
                Ok(()) => {
                    self.ok_total += 1;
                    if measuring {
                        let stats = &mut self.result.kinds[kind.index()];
                        stats.ok += 1;
                        stats.latencies.record(request.start_ns, now);
                        if kind == Kind::Payment && request.expect.cross_shard {
                            self.result.payments_cross_shard += 1;
                        }
                    }
                }
                Err(error) => {
                    self.errors_total += 1;
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
                } else {
                    self.close(index, now);
                }
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
            self.push_request_at(index, due);
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
        self.push_request_at(index, now);
    }

    fn push_request_at(&mut self, index: usize, start_ns: u64) {
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
    fn fail_connection(&mut self, index: usize, kind: &str, detail: String, now: u64) {
        self.errors_total += 1;
        self.result.error(kind.to_string(), || detail);
        let lost = self.connections[index].in_flight.len() as u64;
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

    /// Closes a connection and schedules its reconnection at `reconnect_at_ns`.
    fn close(&mut self, index: usize, reconnect_at_ns: u64) {
        let connection = &mut self.connections[index];
        if let Some(mut stream) = connection.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
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
