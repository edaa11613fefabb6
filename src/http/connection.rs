//! The per-connection driver: read, parse every complete request in the buffer, hand each to the
//! [`Handler`], encode all responses of one read into one buffer, write once (pipelining, in
//! order), and enforce the deadlines and size limits of [`Settings`].
//!
//! It is generic over a [`Transport`] (bytes in and out with deadlines) and a [`Control`] (drain
//! state and observations), so it never touches a socket or a runtime and can be driven from
//! memory in tests. A request the codec refuses gets its error response and closes the connection.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use super::chunked::{ChunkedDecoder, ChunkedError};
use super::parse::{parse_head, Framing, HeadLimits, Method};
use super::{Handler, Request, RequestError, Response};
use crate::config::{Config, HEADER_COUNT_LIMIT};

/// Bytes each connection's read buffer starts with; it grows up to the head and body limits.
pub const READ_BUFFER_BYTES_INITIAL: usize = 4096;
/// Output buffer capacity kept between batches; a larger one is released after its write.
const OUTPUT_BUFFER_BYTES_KEPT: usize = 64 * 1024;
/// Most bytes read and thrown away while lingering before a close.
const LINGER_BYTES_MAX: usize = 1 << 20;
/// The interim response to `Expect: 100-continue` (RFC 9110 §10.1.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A byte stream with deadlines; implemented over sockets by `net`.
pub trait Transport {
    /// Reads some bytes; `Ok(0)` at end of stream; an error of kind `TimedOut` after `timeout`.
    fn read(&mut self, buffer: &mut [u8], timeout: Duration) -> impl Future<Output = io::Result<usize>>;
    /// Writes all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> impl Future<Output = io::Result<()>>;
    /// Half-closes the write side, so the peer sees the end of the responses.
    fn shutdown_write(&mut self) -> impl Future<Output = ()>;
    /// The client's IP address, if known.
    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        None
    }
}

/// What the driver tells its shard and asks of it.
pub trait Control {
    /// The shard is shutting down: finish the current requests and close.
    fn draining(&self) -> bool;
    /// The connection waits for a new request (true) or is busy with one (false).
    fn set_idle(&self, idle: bool);
    /// `requests` responses were written after `elapsed` since their bytes were read.
    fn observe_batch(&self, requests: usize, elapsed: Duration);
    /// The codec refused a request.
    fn observe_rejection(&self, error: RequestError);
}

/// The limits and deadlines the driver enforces, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Head size limits.
    pub head: HeadLimits,
    /// Most header fields.
    pub header_count_max: usize,
    /// Largest body.
    pub body_bytes_max: usize,
    /// Largest chunked trailer section.
    pub trailer_bytes_max: usize,
    /// Output buffered before a write even mid-pipeline.
    pub response_buffer_bytes_max: usize,
    /// Time to receive a whole head.
    pub header_read_timeout: Duration,
    /// Time a connection may idle between requests.
    pub idle_timeout: Duration,
    /// Longest wait for more body bytes.
    pub body_read_timeout: Duration,
    /// How long unread input is drained before closing after an error.
    pub linger_timeout: Duration,
    /// Slowest average rate at which a request (head and body) may arrive, once
    /// `min_receive_rate_grace` has passed since its first byte; 0: no minimum.
    pub min_receive_bytes_per_second: u64,
    /// Time a request may take before the minimum rate applies.
    pub min_receive_rate_grace: Duration,
}

impl Settings {
    /// The driver's settings from the configuration.
    pub fn from_config(config: &Config) -> Settings {
        let limits = &config.limits;
        let timeouts = &config.timeouts;
        Settings {
            head: HeadLimits {
                request_line_bytes_max: limits.request_line_bytes_max,
                header_bytes_max: limits.header_bytes_max,
            },
            header_count_max: limits.header_count_max.min(HEADER_COUNT_LIMIT),
            body_bytes_max: limits.body_bytes_max,
            trailer_bytes_max: limits.trailer_bytes_max,
            response_buffer_bytes_max: limits.response_buffer_bytes_max,
            header_read_timeout: Duration::from_millis(timeouts.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(timeouts.idle_timeout_ms),
            body_read_timeout: Duration::from_millis(timeouts.body_read_timeout_ms),
            linger_timeout: Duration::from_millis(timeouts.linger_timeout_ms),
            min_receive_bytes_per_second: timeouts.min_receive_bytes_per_second,
            min_receive_rate_grace: Duration::from_millis(timeouts.min_receive_rate_grace_ms),
        }
    }
}

/// The connection's read buffer: bytes live in `data[start..end]`; it compacts before it grows.
struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    fn new() -> Self {
        ReadBuffer {
            data: vec![0; READ_BUFFER_BYTES_INITIAL],
            start: 0,
            end: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn consume(&mut self, count: usize) {
        debug_assert!(count <= self.end - self.start);
        self.start += count;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > 4 * READ_BUFFER_BYTES_INITIAL {
                // A large body grew the buffer; do not keep that memory for an idle connection.
                self.data = vec![0; READ_BUFFER_BYTES_INITIAL];
            }
        }
    }

    /// Removes `count` bytes at `offset` (relative to the unread bytes), moving the rest down.
    fn remove(&mut self, offset: usize, count: usize) {
        let from = self.start + offset;
        self.data.copy_within(from + count..self.end, from);
        self.end -= count;
    }

    /// Free space to read into, making room for `wanted` unread bytes in all (at least one more).
    fn spare(&mut self, wanted: usize) -> &mut [u8] {
        let unread = self.end - self.start;
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = unread;
        }
        if self.end == self.data.len() {
            let grown = wanted.max(unread + 1).max(self.data.len() * 2);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    fn filled(&mut self, count: usize) {
        self.end += count;
    }
}

/// Header slots for httparse, allocated once per connection (sized by `limits.header_count_max`)
/// rather than held as a large array in every connection's future.
struct HeaderSlots(Vec<MaybeUninit<httparse::Header<'static>>>);

impl HeaderSlots {
    fn new(count: usize) -> Self {
        HeaderSlots((0..count).map(|_| MaybeUninit::uninit()).collect())
    }

    /// The slots, typed for headers that borrow from a buffer living for `'b`.
    fn get<'b>(&mut self) -> &mut [MaybeUninit<httparse::Header<'b>>] {
        let slots: &mut [MaybeUninit<httparse::Header<'static>>] = &mut self.0;
        // SAFETY: only the lifetime parameter changes; the layout is identical. The slots are
        // uninitialised storage: httparse writes each slot it hands back during a parse, and no
        // slot is read after the borrow of that parse's buffer has ended (every request parses
        // the head again into the slots before reading them).
        unsafe {
            std::slice::from_raw_parts_mut(
                slots.as_mut_ptr().cast::<MaybeUninit<httparse::Header<'b>>>(),
                slots.len(),
            )
        }
    }
}

/// What the connection needs before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Nothing buffered: the start of the next request.
    Idle,
    /// Part of a head.
    Head,
    /// Part of a body; at most this many bytes buffered in all are needed.
    Body(usize),
}

/// How a batch of requests ended.
enum Next {
    Read(Wait),
    Close { linger: bool },
}

/// Serves one connection until the client closes it, a deadline passes, a request is refused,
/// or the shard drains. Errors of the transport end the connection silently.
pub async fn serve<T: Transport, H: Handler, C: Control>(
    transport: &mut T,
    handler: &H,
    control: &C,
    settings: &Settings,
) {
    let mut input = ReadBuffer::new();
    let mut output: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES_INITIAL);
    let mut body: Vec<u8> = Vec::new();
    let mut chunked: Option<ChunkedDecoder> = None;
    let mut continue_sent = false;
    let mut header_slots = HeaderSlots::new(settings.header_count_max);
    let peer = transport.peer_ip();
    // The header deadline of the first request runs from the connection's start.
    let mut head_started = Instant::now();
    let mut batch_started = head_started;
    // Bytes received for the request in progress, for the minimum receive rate.
    let mut received = 0u64;
    loop {
        let mut served = 0usize;
        if !input.is_empty() {
            control.set_idle(false);
        }
        let next = loop {
            if input.is_empty() {
                break Next::Read(Wait::Idle);
            }
            if output.len() >= settings.response_buffer_bytes_max {
                // A deep pipeline: write what is ready rather than buffer without bound.
                if transport.write_all(&output).await.is_err() {
                    return;
                }
                output.clear();
            }
            let bytes = input.bytes();
            let head = match parse_head(bytes, header_slots.get(), settings.head) {
                Ok(Some(head)) => head,
                Ok(None) => break Next::Read(Wait::Head),
                Err(error) => {
                    reject(handler, control, error, None, false, &mut output);
                    break Next::Close { linger: true };
                }
            };
            // Only refusals need it here; handlers read it from the request.
            let request_id = || {
                head.headers
                    .iter()
                    .find(|header| header.name.eq_ignore_ascii_case("x-request-id"))
                    .map(|header| header.value)
            };
            let (request_body, consumed) = match head.framing {
                Framing::Empty => (&[][..], head.length),
                Framing::Length(length) => {
                    if length > settings.body_bytes_max as u64 {
                        reject(
                            handler,
                            control,
                            RequestError::BodyTooLarge,
                            request_id(),
                            head.method == Method::Head,
                            &mut output,
                        );
                        break Next::Close { linger: true };
                    }
                    let end = head.length + length as usize;
                    if bytes.len() < end {
                        if head.expect_continue && !continue_sent {
                            output.extend_from_slice(CONTINUE);
                            continue_sent = true;
                        }
                        break Next::Read(Wait::Body(end));
                    }
                    (&bytes[head.length..end], end)
                }
                Framing::Chunked => {
                    let decoder = chunked.get_or_insert_with(|| {
                        body.clear();
                        ChunkedDecoder::new()
                    });
                    let encoded = &bytes[head.length..];
                    match decoder.decode(
                        encoded,
                        &mut body,
                        settings.body_bytes_max,
                        settings.trailer_bytes_max,
                    ) {
                        Ok(Some(length)) => (&body[..], head.length + length),
                        Ok(None) => {
                            if head.expect_continue && !continue_sent {
                                output.extend_from_slice(CONTINUE);
                                continue_sent = true;
                            }
                            // The decoded bytes are in `body`; drop their encoding from the
                            // buffer so a long chunked body costs its decoded size, not more.
                            let decoded = decoder.rebase();
                            let head_length = head.length;
                            input.remove(head_length, decoded);
                            break Next::Read(Wait::Body(0));
                        }
                        Err(error) => {
                            let error = match error {
                                ChunkedError::TooLarge => RequestError::BodyTooLarge,
                                ChunkedError::Invalid(code) => RequestError::BadRequest(code),
                            };
                            let head_only = head.method == Method::Head;
                            reject(handler, control, error, request_id(), head_only, &mut output);
                            break Next::Close { linger: true };
                        }
                    }
                }
            };
            let keep_alive = head.keep_alive && !control.draining();
            let request = Request {
                method: head.method,
                path: head.path,
                query: head.query,
                version: head.version,
                headers: head.headers,
                body: request_body,
                peer,
            };
            let mut response = Response::new(
                &mut output,
                head.method == Method::Head,
                !keep_alive,
                head.version,
            );
            handler.handle(&request, &mut response).await;
            debug_assert_ne!(response.status(), 0, "the handler must answer");
            let closes = response.closes();
            served += 1;
            input.consume(consumed);
            chunked = None;
            continue_sent = false;
            if body.capacity() > 4 * READ_BUFFER_BYTES_INITIAL {
                body = Vec::new();
            }
            // A pipelined request that follows arrived in the same read as this one, or later.
            head_started = batch_started;
            received = input.bytes().len() as u64;
            if closes {
                break Next::Close { linger: false };
            }
        };
        if !output.is_empty() {
            if transport.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
            if output.capacity() > OUTPUT_BUFFER_BYTES_KEPT {
                // A deep pipeline or a large response grew it; do not keep that per idle connection.
                output = Vec::with_capacity(READ_BUFFER_BYTES_INITIAL);
            }
        }
        if served > 0 {
            control.observe_batch(served, batch_started.elapsed());
        }
        let wait = match next {
            Next::Read(wait) => wait,
            Next::Close { linger } => {
                close(transport, linger, settings.linger_timeout).await;
                return;
            }
        };
        if wait == Wait::Idle {
            if control.draining() {
                return;
            }
            control.set_idle(true);
        }
        let timeout = match wait {
            Wait::Idle if served == 0 && head_started.elapsed() < settings.header_read_timeout => {
                // A new connection that has sent nothing yet gets the header deadline.
                settings.header_read_timeout - head_started.elapsed()
            }
            Wait::Idle => settings.idle_timeout,
            Wait::Head => match settings.header_read_timeout.checked_sub(head_started.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => {
                    timed_out(transport, handler, control, settings).await;
                    return;
                }
            },
            Wait::Body(_) => settings.body_read_timeout,
        };
        // Mid-request, the request must also keep arriving at the minimum average rate.
        let timeout = match (wait, min_rate_left(settings, head_started, received)) {
            (Wait::Idle, _) | (_, None) => timeout,
            (_, Some(left)) if left.is_zero() => {
                timed_out(transport, handler, control, settings).await;
                return;
            }
            (_, Some(left)) => timeout.min(left),
        };
        let wanted = match wait {
            Wait::Body(end) => end,
            _ => settings.head.header_bytes_max + 1,
        };
        let read = transport.read(input.spare(wanted), timeout).await;
        match read {
            Ok(0) => return,
            Ok(count) => {
                if wait == Wait::Idle {
                    head_started = Instant::now();
                    received = 0;
                }
                received += count as u64;
                batch_started = Instant::now();
                input.filled(count);
            }
            Err(error) if error.kind() == io::ErrorKind::TimedOut && wait != Wait::Idle => {
                timed_out(transport, handler, control, settings).await;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Time left before a request that started at `started` and has `received` bytes so far falls
/// below the minimum receive rate: it may take the grace period plus one second per
/// `min_receive_bytes_per_second` bytes. `None` when there is no minimum.
fn min_rate_left(settings: &Settings, started: Instant, received: u64) -> Option<Duration> {
    let rate = settings.min_receive_bytes_per_second;
    if rate == 0 {
        return None;
    }
    let allowed = settings.min_receive_rate_grace + Duration::from_secs_f64(received as f64 / rate as f64);
    Some(allowed.saturating_sub(started.elapsed()))
}

/// Encodes the refusal of a request (closing the connection). `head_only` when the refused
/// request is a parsed HEAD: its answer has no body (RFC 9110 §9.3.2).
fn reject<H: Handler, C: Control>(
    handler: &H,
    control: &C,
    error: RequestError,
    request_id: Option<&[u8]>,
    head_only: bool,
    output: &mut Vec<u8>,
) {
    control.observe_rejection(error);
    let mut response = Response::new(output, head_only, true, super::Version::Http11);
    handler.reject(error, request_id, &mut response);
}

/// 408 and close (RFC 9110 §15.5.9).
async fn timed_out<T: Transport, H: Handler, C: Control>(
    transport: &mut T,
    handler: &H,
    control: &C,
    settings: &Settings,
) {
    let mut output = Vec::new();
    reject(handler, control, RequestError::Timeout, None, false, &mut output);
    if transport.write_all(&output).await.is_ok() {
        close(transport, true, settings.linger_timeout).await;
    }
}

/// Closes after the last response. With `linger`, unread input may still be arriving (a refused
/// body): half-close, then read and discard for a bounded time, so that closing with unread data
/// does not reset the connection before the client has read the response (RFC 9112 §9.6).
async fn close<T: Transport>(transport: &mut T, linger: bool, linger_timeout: Duration) {
    transport.shutdown_write().await;
    if !linger {
        return;
    }
    let deadline = Instant::now() + linger_timeout;
    // On the heap: an array here would be part of every connection's future.
    let mut scratch = vec![0u8; 4096];
    let mut discarded = 0usize;
    while discarded < LINGER_BYTES_MAX {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        match transport.read(&mut scratch, left).await {
            Ok(0) | Err(_) => return,
            Ok(count) => discarded += count,
        }
    }
}

/// A driver without sockets, for tests and fuzzing: a scripted [`Transport`] and a [`Control`]
/// that observes nothing.
#[doc(hidden)]
pub mod scripted {
    use std::collections::VecDeque;
    use std::io;
    use std::time::Duration;

    use super::{Control, Transport};
    use crate::http::RequestError;

    /// Reads come from a script, one chunk per read; writes are collected.
    pub struct Script {
        /// What each read returns, in order (a chunk larger than the buffer is split); then 0.
        pub reads: VecDeque<Vec<u8>>,
        /// Every byte written.
        pub written: Vec<u8>,
        /// Whether the write side was shut.
        pub shut: bool,
    }

    impl Script {
        /// A transport whose reads return `reads` in order.
        pub fn new(reads: Vec<Vec<u8>>) -> Script {
            Script {
                reads: reads.into(),
                written: Vec::new(),
                shut: false,
            }
        }
    }

    impl Transport for Script {
        async fn read(&mut self, buffer: &mut [u8], _timeout: Duration) -> io::Result<usize> {
            let Some(mut chunk) = self.reads.pop_front() else {
                return Ok(0);
            };
            let count = chunk.len().min(buffer.len());
            buffer[..count].copy_from_slice(&chunk[..count]);
            if count < chunk.len() {
                self.reads.push_front(chunk.split_off(count));
            }
            Ok(count)
        }

        async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.written.extend_from_slice(bytes);
            Ok(())
        }

        async fn shutdown_write(&mut self) {
            self.shut = true;
        }
    }

    /// Never draining; observes nothing.
    pub struct Quiet;

    impl Control for Quiet {
        fn draining(&self) -> bool {
            false
        }
        fn set_idle(&self, _idle: bool) {}
        fn observe_batch(&self, _requests: usize, _elapsed: Duration) {}
        fn observe_rejection(&self, _error: RequestError) {}
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::scripted::{Quiet, Script};
    use super::*;
    use crate::config::Config;

    /// Answers every request with its method, path and body.
    struct Echo {
        rejected: RefCell<Vec<RequestError>>,
    }

    impl Handler for Echo {
        async fn handle<'a>(&'a self, request: &'a Request<'a>, response: &'a mut Response<'_>) {
            let mut body = format!("{} {} ", request.method.as_str(), request.path).into_bytes();
            body.extend_from_slice(request.body);
            response.send(200, "text/plain", &[], &body);
        }

        fn reject(&self, error: RequestError, _request_id: Option<&[u8]>, response: &mut Response<'_>) {
            self.rejected.borrow_mut().push(error);
            response.send(error.status(), "text/plain", &[], error.code().as_bytes());
        }
    }

    fn run(reads: Vec<Vec<u8>>, config: &Config) -> (Vec<String>, Vec<RequestError>, bool) {
        let mut script = Script {
            reads: reads.into(),
            written: Vec::new(),
            shut: false,
        };
        let echo = Echo {
            rejected: RefCell::new(Vec::new()),
        };
        let settings = Settings::from_config(config);
        futures_lite::future::block_on(serve(&mut script, &echo, &Quiet, &settings));
        let text = String::from_utf8(script.written).unwrap();
        // Split into bodies of the responses.
        let bodies = text
            .split("HTTP/1.1 ")
            .filter(|part| !part.is_empty() && !part.starts_with("100 Continue"))
            .map(|part| part.split_once("\r\n\r\n").unwrap().1.to_string())
            .collect();
        (bodies, echo.rejected.into_inner(), script.shut)
    }

    #[test]
    fn chunked_body_split_at_every_byte_decodes_the_same() {
        let request: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\n\
            GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let config = Config::default();
        for split in 1..request.len() {
            let reads = vec![request[..split].to_vec(), request[split..].to_vec()];
            let (bodies, rejected, _) = run(reads, &config);
            assert!(rejected.is_empty(), "split {split}: {rejected:?}");
            assert_eq!(
                bodies,
                ["POST /a Wikipedia in\r\n\r\nchunks.", "GET /b "],
                "split {split}"
            );
        }
        // And one byte per read.
        let reads = request.iter().map(|&b| vec![b]).collect();
        let (bodies, _, _) = run(reads, &config);
        assert_eq!(bodies, ["POST /a Wikipedia in\r\n\r\nchunks.", "GET /b "]);
    }

    #[test]
    fn content_length_body_split_at_every_byte() {
        let request: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello worldGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in 1..request.len() {
            let reads = vec![request[..split].to_vec(), request[split..].to_vec()];
            let (bodies, _, _) = run(reads, &Config::default());
            assert_eq!(bodies, ["POST /a hello world", "GET /b "], "split {split}");
        }
    }

    #[test]
    fn bodies_larger_than_the_initial_buffer() {
        let payload = "x".repeat(100_000);
        let mut request = format!(
            "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        request.extend_from_slice(payload.as_bytes());
        let reads = request.chunks(7000).map(<[u8]>::to_vec).collect();
        let (bodies, _, _) = run(reads, &Config::default());
        assert_eq!(bodies, [format!("POST /big {payload}")]);
        // Chunked, many small chunks: the buffer holds the decoded body, not the encoding.
        let mut chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..10_000 {
            chunked.extend_from_slice(b"a;some-extension-to-pad=1\r\nxxxxxxxxxx\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let reads = chunked.chunks(1500).map(<[u8]>::to_vec).collect();
        let (bodies, rejected, _) = run(reads, &Config::default());
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(bodies, [format!("POST /c {}", "x".repeat(100_000))]);
    }

    #[test]
    fn a_refused_request_stops_the_pipeline() {
        let reads = vec![
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n"
                .to_vec(),
        ];
        let (bodies, rejected, shut) = run(reads, &Config::default());
        assert_eq!(bodies, ["GET /a ", "invalid_host"]);
        assert_eq!(rejected, [RequestError::BadRequest("invalid_host")]);
        assert!(shut);
    }

    #[test]
    fn oversized_bodies_are_refused_before_reading_them() {
        let mut config = Config::default();
        config.limits.body_bytes_max = 10;
        let reads = vec![b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n".to_vec()];
        let (bodies, rejected, _) = run(reads, &config);
        assert_eq!(bodies, ["body_too_large"]);
        assert_eq!(rejected, [RequestError::BodyTooLarge]);
        let reads = vec![b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n123456\r\n5\r\n12345\r\n0\r\n\r\n".to_vec()];
        let (_, rejected, _) = run(reads, &config);
        assert_eq!(rejected, [RequestError::BodyTooLarge]);
    }

    /// Regression: header slots (8 KiB) and the linger buffer (4 KiB) used to live in every
    /// connection's future, about 8.7 KiB per idle connection before any buffer.
    #[test]
    fn connection_future_stays_small() {
        let settings = Settings::from_config(&Config::default());
        let mut script = Script {
            reads: VecDeque::new(),
            written: Vec::new(),
            shut: false,
        };
        let echo = Echo {
            rejected: RefCell::new(Vec::new()),
        };
        let future = serve(&mut script, &echo, &Quiet, &settings);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 1024, "the connection future is {size} bytes");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// One request and the echo the test handler must answer it with.
        #[derive(Debug, Clone)]
        struct Case {
            wire: Vec<u8>,
            echo: String,
        }

        fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop::collection::vec(any::<u8>(), 0..300)
        }

        /// A valid request: GET or POST, Content-Length or chunked body (random chunk sizes,
        /// optional extensions and trailers), random extra header fields.
        fn request() -> impl Strategy<Value = Case> {
            (
                prop::sample::select(vec!["/a", "/v1/payments", "/json", "/x/y/z"]),
                body_bytes(),
                any::<bool>(),
                prop::collection::vec(1usize..50, 1..6),
                any::<bool>(),
                prop::collection::vec("[a-z]{1,8}", 0..4),
            )
                .prop_map(|(path, body, chunked, chunk_sizes, extras, header_names)| {
                    let mut wire = Vec::new();
                    let method = if body.is_empty() { "GET" } else { "POST" };
                    wire.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: t\r\n").as_bytes());
                    for name in &header_names {
                        wire.extend_from_slice(format!("X-{name}: v\r\n").as_bytes());
                    }
                    if body.is_empty() {
                        wire.extend_from_slice(b"\r\n");
                    } else if chunked {
                        wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                        let mut rest = &body[..];
                        let mut sizes = chunk_sizes.iter().cycle();
                        while !rest.is_empty() {
                            let size = (*sizes.next().unwrap()).min(rest.len());
                            let extension = if extras { ";e=1" } else { "" };
                            wire.extend_from_slice(format!("{size:x}{extension}\r\n").as_bytes());
                            wire.extend_from_slice(&rest[..size]);
                            wire.extend_from_slice(b"\r\n");
                            rest = &rest[size..];
                        }
                        wire.extend_from_slice(if extras {
                            b"0\r\nT: 1\r\n\r\n"
                        } else {
                            b"0\r\n\r\n"
                        });
                    } else {
                        wire.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                        wire.extend_from_slice(&body);
                    }
                    let mut echo = format!("{method} {path} ").into_bytes();
                    echo.extend_from_slice(&body);
                    // The echo is compared as text; arbitrary bytes survive a lossy round trip
                    // only if both sides are converted the same way.
                    Case {
                        wire,
                        echo: String::from_utf8_lossy(&echo).into_owned(),
                    }
                })
        }

        /// Cuts `bytes` into reads at the given (sorted, deduplicated) offsets.
        fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut offsets: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            offsets.sort_unstable();
            offsets.dedup();
            let mut reads = Vec::new();
            let mut start = 0;
            for offset in offsets.into_iter().chain([bytes.len()]) {
                if offset > start {
                    reads.push(bytes[start..offset].to_vec());
                    start = offset;
                }
            }
            reads
        }

        fn run_lossy(reads: Vec<Vec<u8>>) -> (Vec<String>, Vec<RequestError>) {
            let mut script = Script {
                reads: reads.into(),
                written: Vec::new(),
                shut: false,
            };
            let echo = Echo {
                rejected: RefCell::new(Vec::new()),
            };
            let settings = Settings::from_config(&Config::default());
            futures_lite::future::block_on(serve(&mut script, &echo, &Quiet, &settings));
            let text = String::from_utf8_lossy(&script.written).into_owned();
            let bodies = text
                .split("HTTP/1.1 ")
                .filter(|part| !part.is_empty())
                .map(|part| {
                    part.split_once("\r\n\r\n")
                        .map_or("", |(_, body)| body)
                        .to_string()
                })
                .collect();
            (bodies, echo.rejected.into_inner())
        }

        proptest! {
            /// Pipelined requests get their answers in order whatever the read boundaries are.
            #[test]
            fn pipelines_survive_any_read_boundaries(
                cases in prop::collection::vec(request(), 1..6),
                cuts in prop::collection::vec(any::<usize>(), 0..12),
            ) {
                let wire: Vec<u8> = cases.iter().flat_map(|c| c.wire.clone()).collect();
                let (bodies, rejected) = run_lossy(split(&wire, &cuts));
                prop_assert!(rejected.is_empty(), "{:?}", rejected);
                // Split the concatenated output on response starts: bodies that themselves contain
                // "HTTP/1.1 " would confuse that, so compare the joined text instead.
                let expected: String = cases.iter().map(|c| c.echo.clone()).collect::<Vec<_>>().join("");
                prop_assert_eq!(bodies.join(""), expected.replace("HTTP/1.1 ", ""));
            }

            /// Arbitrary bytes never panic the driver, and whatever it answers ends the
            /// connection or answers a complete request.
            #[test]
            fn arbitrary_input_never_panics(
                input in prop::collection::vec(any::<u8>(), 0..600),
                cuts in prop::collection::vec(any::<usize>(), 0..8),
            ) {
                let _ = run_lossy(split(&input, &cuts));
            }

            /// A refused request ends the pipeline: the requests before it are answered, it gets
            /// its refusal, and nothing after it is answered.
            #[test]
            fn nothing_after_a_refusal_is_answered(
                before in prop::collection::vec(request(), 0..3),
                after in prop::collection::vec(request(), 1..3),
                bad in prop::sample::select(vec![
                    "POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                    "POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\n",
                    "GET /s HTTP/1.1\r\n\r\n",
                    "POST /s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\n",
                ]),
                cuts in prop::collection::vec(any::<usize>(), 0..8),
            ) {
                let mut wire: Vec<u8> = before.iter().flat_map(|c| c.wire.clone()).collect();
                wire.extend_from_slice(bad.as_bytes());
                for case in &after {
                    wire.extend_from_slice(&case.wire);
                }
                let (bodies, rejected) = run_lossy(split(&wire, &cuts));
                prop_assert_eq!(rejected.len(), 1);
                prop_assert_eq!(bodies.len(), before.len() + 1);
            }
        }
    }
}
