//! Every configured limit and deadline, black-box over real sockets against the real binary, with
//! small values set through the environment: the status each one answers with, that the
//! connection then closes, and that the server keeps serving once the pressure is gone.
//!
//! Deadline tests wait (bounded) for what must happen; they never assert how long it took.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{Client, Response, Server};

/// Small limits; `header_bytes_max` stays well above `request_line_bytes_max` so a long request
/// line is judged as such.
const LIMITS: &[(&str, &str)] = &[
    ("SHARDPAY_LIMITS_REQUEST_LINE_BYTES_MAX", "64"),
    ("SHARDPAY_LIMITS_HEADER_BYTES_MAX", "256"),
    ("SHARDPAY_LIMITS_HEADER_COUNT_MAX", "8"),
    ("SHARDPAY_LIMITS_BODY_BYTES_MAX", "100"),
    ("SHARDPAY_LIMITS_TRAILER_BYTES_MAX", "32"),
];

/// Short deadlines.
const DEADLINES: &[(&str, &str)] = &[
    ("SHARDPAY_TIMEOUTS_HEADER_READ_TIMEOUT_MS", "300"),
    ("SHARDPAY_TIMEOUTS_IDLE_TIMEOUT_MS", "300"),
    ("SHARDPAY_TIMEOUTS_BODY_READ_TIMEOUT_MS", "300"),
];

/// Longest a deadline test waits for what must happen.
const PATIENCE: Duration = Duration::from_secs(5);

/// Pipelined behind refused requests: must never be answered.
const NEXT: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n";

fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).escape_debug().to_string();
    if text.len() > 200 {
        format!("{}… ({} bytes)", &text[..200], raw.len())
    } else {
        text
    }
}

/// A request line of exactly `length` bytes (CRLF not counted): `GET /aaa…a HTTP/1.1`.
fn request_line(length: usize) -> String {
    let fixed = "GET / HTTP/1.1".len();
    assert!(length >= fixed);
    format!("GET /{} HTTP/1.1", "a".repeat(length - fixed))
}

/// A whole GET head of exactly `length` bytes, blank line included.
fn head_of(length: usize) -> Vec<u8> {
    let fixed = "GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n".len();
    assert!(length >= fixed);
    let head = format!(
        "GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(length - fixed)
    );
    assert_eq!(head.len(), length);
    head.into_bytes()
}

/// A GET head with exactly `count` header fields.
fn head_with_fields(count: usize) -> Vec<u8> {
    let mut head = String::from("GET /plaintext HTTP/1.1\r\nHost: t\r\n");
    for index in 1..count {
        head.push_str(&format!("X-F{index}: v\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Checks a refusal: status, JSON error body with `code`, request id, `Connection: close`.
fn check_refusal(response: &Response, status: u16, code: &str, case: &str) {
    assert_eq!(response.status, status, "status for {case}: {}", response.text());
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "Connection for {case}"
    );
    let body = response.json();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{case}: {body}");
    assert_eq!(body["error"]["code"], code, "{case}: {body}");
    assert_eq!(
        body["request_id"],
        response.header("x-request-id").expect("X-Request-Id"),
        "{case}: {body}"
    );
}

/// Sends `raw` (with [`NEXT`] behind it if `pipeline`) and asserts the refusal, then the close
/// without any further response.
fn assert_refused(server: &Server, raw: &[u8], pipeline: bool, status: u16, code: &str) {
    let mut client = server.connect();
    let mut bytes = raw.to_vec();
    if pipeline {
        bytes.extend_from_slice(NEXT);
    }
    client.send(&bytes);
    let case = show(raw);
    let response = client
        .try_read_response(false)
        .unwrap_or_else(|| panic!("closed without a response to {case}"));
    check_refusal(&response, status, code, &case);
    assert!(client.closed(), "must close after refusing {case}");
}

/// Sends `raw` with [`NEXT`] behind it: `raw` is answered `status`, then `NEXT` is answered.
fn assert_served(client: &mut Client, raw: &[u8], status: u16) {
    let mut bytes = raw.to_vec();
    bytes.extend_from_slice(NEXT);
    client.send(&bytes);
    let case = show(raw);
    let response = client
        .try_read_response(false)
        .unwrap_or_else(|| panic!("closed without a response to {case}"));
    assert_eq!(response.status, status, "{case}: {}", response.text());
    let next = client
        .try_read_response(false)
        .unwrap_or_else(|| panic!("closed before the request pipelined after {case}"));
    assert_eq!(next.text(), "Hello, World!", "pipelined after {case}");
}

/// A client whose reads give up after [`PATIENCE`].
fn patient(server: &Server) -> Client {
    let client = server.connect();
    client.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    client
}

// ---------------------------------------------------------------------------------------------
// Sizes.

#[test]
fn request_line_longer_than_the_limit_is_414() {
    let server = Server::start(1, LIMITS);
    for length in [65, 66, 150, 200] {
        let raw = format!("{}\r\nHost: t\r\n\r\n", request_line(length));
        assert_refused(&server, raw.as_bytes(), true, 414, "request_line_too_long");
    }
    // Still arriving, no CRLF yet, but already longer than the limit.
    for length in [66, 120, 250] {
        let partial = &request_line(300)[..length];
        assert_refused(&server, partial.as_bytes(), false, 414, "request_line_too_long");
    }
    // Under the limit: served (404, no such route) and the connection stays in sync.
    let mut client = server.connect();
    for length in [20, 62, 63] {
        let raw = format!("{}\r\nHost: t\r\n\r\n", request_line(length));
        assert_served(&mut client, raw.as_bytes(), 404);
    }
}

#[test]
fn request_line_of_exactly_the_limit_is_accepted() {
    let server = Server::start(1, LIMITS);
    let mut client = server.connect();
    let raw = format!("{}\r\nHost: t\r\n\r\n", request_line(64));
    assert_served(&mut client, raw.as_bytes(), 404);
}

#[test]
fn request_line_after_a_leading_empty_line_is_still_limited() {
    let server = Server::start(1, LIMITS);
    let raw = format!("\r\n{}\r\nHost: t\r\n\r\n", request_line(150));
    assert_refused(&server, raw.as_bytes(), true, 414, "request_line_too_long");
    let partial = format!("\r\n{}", &request_line(300)[..150]);
    assert_refused(&server, partial.as_bytes(), false, 414, "request_line_too_long");
}

#[test]
fn head_larger_than_the_limit_is_431() {
    let server = Server::start(1, LIMITS);
    let mut client = server.connect();
    for length in [200, 256] {
        assert_served(&mut client, &head_of(length), 200);
    }
    for length in [257, 300] {
        assert_refused(&server, &head_of(length), true, 431, "header_too_large");
    }
    // Still arriving, but already larger than the limit.
    let partial = &head_of(400)[..300];
    assert_refused(&server, partial, false, 431, "header_too_large");
}

#[test]
fn more_fields_than_the_limit_is_431() {
    let server = Server::start(1, LIMITS);
    let mut client = server.connect();
    for count in [1, 7, 8] {
        assert_served(&mut client, &head_with_fields(count), 200);
    }
    for count in [9, 20] {
        assert_refused(&server, &head_with_fields(count), true, 431, "header_too_large");
    }
}

#[test]
fn declared_body_over_the_limit_is_413_before_the_body_is_sent() {
    let server = Server::start(1, LIMITS);
    for length in ["101", "1000000", "9999999999999999999"] {
        // Only the head: the answer must come without any body byte.
        let mut client = patient(&server);
        client.send(
            format!("POST /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: big-{length}\r\nContent-Length: {length}\r\n\r\n")
                .as_bytes(),
        );
        let response = client
            .try_read_response(false)
            .unwrap_or_else(|| panic!("closed without a 413 for Content-Length {length}"));
        check_refusal(&response, 413, "body_too_large", length);
        let request_id = format!("big-{length}");
        assert_eq!(response.header("x-request-id"), Some(request_id.as_str()));
        assert_eq!(response.json()["request_id"], request_id);
        assert!(
            client.closed(),
            "must close after the 413 for Content-Length {length}"
        );
    }
    // With `Expect: 100-continue` the client is told 413 and never invited to send the body.
    let mut client = patient(&server);
    client.send(b"POST /healthz HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 101\r\n\r\n");
    let mut raw = Vec::new();
    client.stream.read_to_end(&mut raw).expect("read to the close");
    assert!(raw.starts_with(b"HTTP/1.1 413 "), "{}", show(&raw));
    // At the limit: read and answered, the connection kept.
    let mut client = server.connect();
    let body = "b".repeat(100);
    let raw = format!("POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{body}");
    assert_served(&mut client, raw.as_bytes(), 405);
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let server = Server::start(1, LIMITS);
    let head = "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    // Exactly the limit, in two chunks: accepted.
    let mut client = server.connect();
    let raw = format!(
        "{head}32\r\n{}\r\n32\r\n{}\r\n0\r\n\r\n",
        "a".repeat(50),
        "b".repeat(50)
    );
    assert_served(&mut client, raw.as_bytes(), 405);
    // One byte more, in two chunks.
    let raw = format!(
        "{head}32\r\n{}\r\n33\r\n{}\r\n0\r\n\r\n",
        "a".repeat(50),
        "b".repeat(51)
    );
    assert_refused(&server, raw.as_bytes(), true, 413, "body_too_large");
    // A single chunk declared over the limit: refused at its size line, before its data.
    assert_refused(
        &server,
        format!("{head}65\r\n").as_bytes(),
        false,
        413,
        "body_too_large",
    );
    // Over the limit only in total, the chunks arriving in separate reads.
    let mut client = patient(&server);
    client.send(format!("{head}32\r\n{}\r\n", "a".repeat(50)).as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    client.send(format!("28\r\n{}\r\n", "b".repeat(40)).as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    client.send_lossy(format!("b\r\n{}\r\n0\r\n\r\n", "c".repeat(11)).as_bytes());
    let response = client.try_read_response(false).expect("a 413");
    check_refusal(&response, 413, "body_too_large", "chunks in separate reads");
    assert!(client.closed());
    // The trailer section has its own limit (32 bytes).
    let mut client = server.connect();
    let raw = format!("{head}0\r\nX-T: {}\r\n\r\n", "t".repeat(27));
    assert_served(&mut client, raw.as_bytes(), 405);
    let raw = format!("{head}0\r\nX-T: {}\r\n\r\n", "t".repeat(40));
    assert_refused(&server, raw.as_bytes(), true, 413, "body_too_large");
}

// ---------------------------------------------------------------------------------------------
// Deadlines.

/// Reads the 408 that must come within [`PATIENCE`], then the close.
fn expect_408_then_close(client: &mut Client, case: &str) {
    let response = client
        .try_read_response(false)
        .unwrap_or_else(|| panic!("closed without a 408 ({case})"));
    check_refusal(&response, 408, "request_timeout", case);
    assert!(client.closed(), "must close after the 408 ({case})");
}

#[test]
fn partial_head_gets_408_at_the_header_deadline() {
    let server = Server::start(1, DEADLINES);
    // First request of a connection.
    let mut client = patient(&server);
    client.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n");
    expect_408_then_close(&mut client, "partial first head");
    // A later request on a keep-alive connection.
    let mut client = patient(&server);
    assert_eq!(client.get("/healthz").status, 200);
    client.send(b"GET /healthz HTT");
    expect_408_then_close(&mut client, "partial second head");
}

#[test]
fn trickling_a_head_does_not_extend_the_header_deadline() {
    let server = Server::start(1, DEADLINES);
    let mut client = patient(&server);
    client.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ");
    // A byte every 50 ms, far longer than the 300 ms deadline, until the server hangs up.
    let mut writer = client.stream.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let until = Instant::now() + PATIENCE;
        while Instant::now() < until {
            if writer.write_all(b"a").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    expect_408_then_close(&mut client, "trickled head");
    drop(client);
    trickle.join().unwrap();
}

#[test]
fn silent_connection_is_closed_at_the_header_deadline_without_a_response() {
    let server = Server::start(1, DEADLINES);
    let mut client = patient(&server);
    assert!(
        client.closed(),
        "a connection that sends nothing must be closed, silently"
    );
    // The server still serves.
    assert_eq!(patient(&server).get("/healthz").status, 200);
}

#[test]
fn idle_keep_alive_connection_is_closed_without_a_response() {
    let server = Server::start(1, DEADLINES);
    let mut client = patient(&server);
    let response = client.get("/healthz");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), None);
    assert!(
        client.closed(),
        "an idle keep-alive connection must be closed, silently"
    );
}

#[test]
fn stalled_body_gets_408() {
    let server = Server::start(1, DEADLINES);
    let mut client = patient(&server);
    client.send(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    expect_408_then_close(&mut client, "stalled Content-Length body");
    let mut client = patient(&server);
    client.send(b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    expect_408_then_close(&mut client, "stalled chunked body");
    let mut client = patient(&server);
    client.send(b"POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    expect_408_then_close(&mut client, "chunked body stalled between chunks");
}

/// Long per-read deadlines and a minimum receive rate of 100 bytes/s after 300 ms: only the rate
/// can end a request that trickles.
const MIN_RATE: &[(&str, &str)] = &[
    ("SHARDPAY_TIMEOUTS_HEADER_READ_TIMEOUT_MS", "60000"),
    ("SHARDPAY_TIMEOUTS_BODY_READ_TIMEOUT_MS", "60000"),
    ("SHARDPAY_TIMEOUTS_MIN_RECEIVE_BYTES_PER_SECOND", "100"),
    ("SHARDPAY_TIMEOUTS_MIN_RECEIVE_RATE_GRACE_MS", "300"),
];

/// Sends `bytes` one at a time, `pause` apart, on another thread, until the server hangs up.
fn trickle(client: &Client, bytes: &'static [u8], pause: Duration) -> std::thread::JoinHandle<()> {
    let mut writer = client.stream.try_clone().unwrap();
    std::thread::spawn(move || {
        for byte in bytes {
            if writer.write_all(std::slice::from_ref(byte)).is_err() {
                return;
            }
            std::thread::sleep(pause);
        }
    })
}

#[test]
fn a_head_or_body_arriving_below_the_minimum_rate_gets_408() {
    let server = Server::start(1, MIN_RATE);
    // A head trickled at 10 bytes/s, long before its 60 s header deadline.
    let mut client = patient(&server);
    let sender = trickle(
        &client,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        Duration::from_millis(100),
    );
    expect_408_then_close(&mut client, "slow head");
    drop(client);
    sender.join().unwrap();
    // A body trickled at 10 bytes/s after a quick head.
    let mut client = patient(&server);
    client.send(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 60\r\n\r\n");
    let sender = trickle(&client, &[b'x'; 60], Duration::from_millis(100));
    expect_408_then_close(&mut client, "slow body");
    drop(client);
    sender.join().unwrap();
    // The server still serves.
    assert_eq!(patient(&server).get("/healthz").status, 200);
}

#[test]
fn a_request_arriving_in_pieces_above_the_minimum_rate_is_served() {
    let server = Server::start(1, MIN_RATE);
    let mut client = patient(&server);
    // 150 bytes in five pieces over 0.8 s: allowed 0.3 s + 150 / 100 s.
    let request: &[u8] = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 80\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    for piece in request.chunks(request.len().div_ceil(5)) {
        client.send(piece);
        std::thread::sleep(Duration::from_millis(200));
    }
    let response = client.read_response();
    assert_ne!(response.status, 408, "{}", response.text());
    // And a keep-alive connection that idles between requests is not held to the rate.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(client.get("/healthz").status, 200);
}

#[test]
fn a_client_that_reads_too_slowly_is_cut_at_the_write_deadline() {
    let server = Server::start(1, &[("SHARDPAY_TIMEOUTS_WRITE_TIMEOUT_MS", "500")]);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window, so the server's writes block soon.
    socket.set_recv_buffer_size(4096).unwrap();
    let address: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    socket.connect(&address.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    // Pipelined requests for about 15 MB of answers: more than the kernel buffers hold.
    let request = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(3000);
    let _ = stream.write_all(&request);
    // Read slowly, 4 KiB every 50 ms (80 KB/s): each of the server's sends makes progress, but
    // a batch of answers takes far longer than the 500 ms its write may take, so the server cuts
    // the connection (reading all 15 MB this way would take over three minutes).
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let mut total = 0usize;
    let mut buffer = vec![0u8; 4096];
    let ended = loop {
        if Instant::now() > until {
            break false;
        }
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ended, "a slow reader kept the connection ({total} bytes read)");
    assert!(total < 15_000_000);
    assert_eq!(patient(&server).get("/healthz").status, 200);
}

// ---------------------------------------------------------------------------------------------
// Connections.

/// A connection on which a GET /healthz is answered 200, or `None` if the server closes it.
fn try_served(server: &Server) -> Option<Client> {
    let mut client = patient(server);
    client.send_lossy(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    match client.try_read_response(false) {
        Some(response) => {
            assert_eq!(response.status, 200);
            Some(client)
        }
        None => None,
    }
}

/// Retries [`try_served`] for up to [`PATIENCE`]: the server frees a slot only once it has seen
/// an earlier connection close.
fn served(server: &Server, what: &str) -> Client {
    let until = Instant::now() + PATIENCE;
    loop {
        if let Some(client) = try_served(server) {
            return client;
        }
        assert!(Instant::now() < until, "{what}: never served");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn connections_beyond_the_shard_limit_are_closed_at_once() {
    let server = Server::start(1, &[("SHARDPAY_LIMITS_CONNECTIONS_PER_SHARD_MAX", "2")]);
    // The readiness probes' connections may not be released yet: `served` retries.
    let mut first = served(&server, "first connection");
    let mut second = served(&server, "second connection");
    // A third: accepted and closed at once, never answered.
    let mut third = patient(&server);
    assert!(third.closed(), "a connection over the limit must be closed");
    let mut fourth = patient(&server);
    fourth.send_lossy(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        fourth.try_read_response(false).is_none(),
        "a connection over the limit must not be answered"
    );
    // The two within the limit still work.
    assert_eq!(first.get("/healthz").status, 200);
    assert_eq!(second.get("/healthz").status, 200);
    // Once one closes, a new connection is served again.
    drop(first);
    let mut replacement = served(&server, "connection after one closed");
    let metrics = replacement.get("/metrics").text();
    assert!(
        metric(&metrics, "shardpay_connections_rejected_total") >= 2,
        "{metrics}"
    );
    // And the limit holds again.
    assert!(patient(&server).closed(), "the limit applies again");
    assert_eq!(second.get("/healthz").status, 200);
}

/// A connection to `port` from the loopback address `source`, with a read timeout.
fn connect_from(source: &str, port: u16) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&address.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    Client::from_stream(stream)
}

#[test]
fn connections_beyond_the_per_address_limit_are_closed_while_other_addresses_are_served() {
    let server = Server::start(1, &[("SHARDPAY_LIMITS_CONNECTIONS_PER_IP_MAX", "2")]);
    // From 127.0.0.2 (the readiness probes came from 127.0.0.1): two are served...
    let mut first = connect_from("127.0.0.2", server.port);
    assert_eq!(first.get("/healthz").status, 200);
    let mut second = connect_from("127.0.0.2", server.port);
    assert_eq!(second.get("/healthz").status, 200);
    // ...a third from the same address is closed unanswered...
    let mut third = connect_from("127.0.0.2", server.port);
    third.send_lossy(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        third.try_read_response(false).is_none(),
        "over the per-address limit"
    );
    // ...while another address is served.
    let mut other = connect_from("127.0.0.3", server.port);
    assert_eq!(other.get("/healthz").status, 200);
    let metrics = other.get("/metrics").text();
    assert!(
        metric(&metrics, "shardpay_connections_rejected_ip_total") >= 1,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "shardpay_connections_rejected_total"),
        0,
        "{metrics}"
    );
    // Once one closes, the address may connect again.
    drop(first);
    let until = Instant::now() + PATIENCE;
    loop {
        let mut again = connect_from("127.0.0.2", server.port);
        again.send_lossy(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        if again.try_read_response(false).is_some() {
            break;
        }
        assert!(Instant::now() < until, "the address never got its slot back");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(second.get("/healthz").status, 200);
}

#[test]
fn running_out_of_file_descriptors_is_survived() {
    let mut server = Server::start_with(1, &[], |command| {
        // SAFETY: setrlimit(2) only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 48,
                    rlim_max: 48,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    // Far more connections than descriptors: the kernel completes them into the backlog, the
    // server accepts what it can and hits EMFILE on the rest.
    let mut streams = Vec::new();
    for _ in 0..100 {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        streams.push(stream);
    }
    for stream in &mut streams {
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    // Poll every connection without blocking: answered, closed, or waiting (in the backlog or
    // for a descriptor). Give the server time to reach the limit and to answer what it took.
    let mut answered = 0;
    let mut settled = vec![false; streams.len()];
    for stream in &streams {
        stream.set_nonblocking(true).unwrap();
    }
    let until = Instant::now() + PATIENCE;
    let mut rounds = 0;
    while rounds < 5 || (answered == 0 && Instant::now() < until) {
        std::thread::sleep(Duration::from_millis(100));
        rounds += 1;
        for (stream, settled) in streams.iter_mut().zip(settled.iter_mut()) {
            if *settled {
                continue;
            }
            let mut buffer = [0u8; 4096];
            match stream.read(&mut buffer) {
                Ok(n) if n > 0 => {
                    assert!(buffer.starts_with(b"HTTP/1.1 200 "), "{}", show(&buffer[..n]));
                    answered += 1;
                    *settled = true;
                }
                Ok(_) => *settled = true,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => {
                    assert!(
                        matches!(
                            error.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                        ),
                        "{error}"
                    );
                    *settled = true;
                }
            }
        }
    }
    assert!(answered > 0, "some connections fit under the descriptor limit");
    assert!(answered < 100, "the descriptor limit was reached");
    assert!(
        server.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the server must survive EMFILE: {}",
        server.stderr()
    );
    drop(streams);
    // Once the descriptors are free again, the server serves again.
    let until = Instant::now() + PATIENCE;
    let healthy = loop {
        let attempt = TcpStream::connect(("127.0.0.1", server.port)).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?;
            Ok(raw)
        });
        if let Ok(raw) = attempt {
            if raw.starts_with(b"HTTP/1.1 200 ") {
                break true;
            }
        }
        if Instant::now() >= until {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        healthy,
        "no 200 from /healthz after the descriptors were freed: {}",
        server.stderr()
    );
    let metrics = patient(&server).get("/metrics").text();
    assert!(metric(&metrics, "shardpay_accept_errors_total") > 0, "{metrics}");
    assert!(
        metric(&metrics, "shardpay_connections_accepted_total") > answered,
        "{metrics}"
    );
    assert!(server.child.as_mut().unwrap().try_wait().unwrap().is_none());
}
