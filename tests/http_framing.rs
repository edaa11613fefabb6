//! RFC 9112 §6 message framing, black-box over real sockets against the real binary.
//!
//! Every refused request must get its documented status and error code in a JSON body with
//! `Connection: close`, the connection must then close, and a request pipelined right behind the
//! refused one in the same write must never be answered (no response to a smuggled request).
//! Accepted framings must leave the connection in sync: the request pipelined behind them is
//! answered correctly, however the bytes were split across TCP reads.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use common::{Client, Response, Server};

/// The request pipelined behind every case; it must be answered only when the case was accepted.
const NEXT: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n";

/// A chunked POST head; bodies are appended by the cases.
const CHUNKED_HEAD: &str = "POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";

fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).escape_debug().to_string()
}

/// Checks a refusal response: status, JSON error body, request id, `Connection: close`.
fn check_refusal(response: &Response, status: u16, code: &str, raw: &[u8]) {
    let case = show(raw);
    assert_eq!(response.status, status, "status for {case}: {}", response.text());
    assert_eq!(
        response.header("connection"),
        Some("close"),
        "Connection for {case}"
    );
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "Content-Type for {case}"
    );
    let body = response.json();
    // Every refusal, 501 and 505 included, is the client's to fix.
    assert_eq!(body["error"]["type"], "invalid_request_error", "{case}: {body}");
    assert_eq!(body["error"]["code"], code, "{case}: {body}");
    assert!(body["error"]["message"].is_string(), "{case}: {body}");
    let request_id = response.header("x-request-id").expect("X-Request-Id");
    assert_eq!(body["request_id"], request_id, "{case}: {body}");
}

/// Sends `raw` with [`NEXT`] pipelined behind it in one write, and asserts that `raw` is refused
/// with `status` and `code`, that the connection then closes, and that `NEXT` is never answered.
fn assert_refused(server: &Server, raw: &[u8], status: u16, code: &str) {
    let mut client = server.connect();
    let mut bytes = raw.to_vec();
    bytes.extend_from_slice(NEXT);
    client.send(&bytes);
    let response = client
        .try_read_response(false)
        .unwrap_or_else(|| panic!("connection closed without a response to {}", show(raw)));
    check_refusal(&response, status, code, raw);
    assert!(
        client.closed(),
        "the connection must close, without answering the pipelined request, after {}",
        show(raw)
    );
}

/// Sends `raw` with [`NEXT`] pipelined behind it and asserts `raw` is answered `status` (the
/// connection kept) and `NEXT` is then answered correctly.
fn assert_accepted(client: &mut Client, raw: &[u8], status: u16) {
    let mut bytes = raw.to_vec();
    bytes.extend_from_slice(NEXT);
    client.send(&bytes);
    assert_next_answers(client, raw, status);
}

/// Reads the response to the case (`status`, connection kept) and then to [`NEXT`].
fn assert_next_answers(client: &mut Client, raw: &[u8], status: u16) {
    let case = show(raw);
    let response = client
        .try_read_response(false)
        .unwrap_or_else(|| panic!("connection closed without a response to {case}"));
    assert_eq!(response.status, status, "status for {case}: {}", response.text());
    assert_eq!(
        response.header("connection"),
        None,
        "{case} must keep the connection"
    );
    let next = client
        .try_read_response(false)
        .unwrap_or_else(|| panic!("connection closed before the request pipelined after {case}"));
    assert_eq!(next.status, 200, "pipelined after {case}: {}", next.text());
    assert_eq!(next.text(), "Hello, World!", "pipelined after {case}");
}

fn post_with_headers(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /healthz HTTP/1.1\r\nHost: t\r\n{headers}\r\n{body}").into_bytes()
}

fn chunked(body: &str) -> Vec<u8> {
    format!("{CHUNKED_HEAD}{body}").into_bytes()
}

#[test]
fn content_length_with_transfer_encoding_is_refused_in_both_orders() {
    let server = Server::start(1, &[]);
    let code = "content_length_with_transfer_encoding";
    let cases = [
        post_with_headers("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n"),
        post_with_headers("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
        // CL.TE smuggling shape: the chunked body hides a second request.
        post_with_headers(
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            "5c\r\nGPOST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
        ),
        post_with_headers("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", "0\r\n\r\n"),
    ];
    for raw in &cases {
        assert_refused(&server, raw, 400, code);
    }
}

#[test]
fn differing_content_lengths_are_refused() {
    let server = Server::start(1, &[]);
    let code = "conflicting_content_length";
    for headers in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 6\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5,6\r\n",
        "Content-Length: 5, 5\r\nContent-Length: 6\r\n",
    ] {
        assert_refused(&server, &post_with_headers(headers, "hello"), 400, code);
    }
}

#[test]
fn invalid_content_length_values_are_refused() {
    let server = Server::start(1, &[]);
    for value in [
        "+5",
        "-1",
        "0x10",
        "5 5",
        "",
        "99999999999999999999",
        "10000000000000000000",
        "1_0",
        "5a",
        "5.0",
    ] {
        let raw = post_with_headers(&format!("Content-Length: {value}\r\n"), "hello");
        assert_refused(&server, &raw, 400, "invalid_content_length");
    }
}

#[test]
fn whitespace_before_the_colon_is_refused() {
    let server = Server::start(1, &[]);
    for headers in [
        "Content-Length : 5\r\n",
        "Content-Length\t: 5\r\n",
        "Transfer-Encoding : chunked\r\n",
    ] {
        assert_refused(
            &server,
            &post_with_headers(headers, "hello"),
            400,
            "invalid_header",
        );
    }
}

#[test]
fn transfer_encoding_must_end_in_chunked() {
    let server = Server::start(1, &[]);
    for coding in [
        "chunked, identity",
        "identity",
        "gzip",
        "chunked, chunked",
        "xchunked",
    ] {
        let raw = post_with_headers(&format!("Transfer-Encoding: {coding}\r\n"), "0\r\n\r\n");
        assert_refused(&server, &raw, 400, "invalid_transfer_encoding");
    }
    // Two fields: the final coding is gzip.
    let raw = post_with_headers(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        "0\r\n\r\n",
    );
    assert_refused(&server, &raw, 400, "invalid_transfer_encoding");
    // Chunked last, but a coding before it that the server does not implement: 501.
    for headers in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let raw = post_with_headers(headers, "0\r\n\r\n");
        assert_refused(&server, &raw, 501, "unsupported_transfer_coding");
    }
}

#[test]
fn transfer_encoding_on_http_1_0_is_refused() {
    let server = Server::start(1, &[]);
    let raw = b"POST /healthz HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_refused(&server, raw, 400, "invalid_transfer_encoding");
    let raw = b"POST /healthz HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_refused(&server, raw, 400, "invalid_transfer_encoding");
}

#[test]
fn obs_fold_is_refused() {
    let server = Server::start(1, &[]);
    for raw in [
        &b"GET /plaintext HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n"[..],
        b"GET /plaintext HTTP/1.1\r\nHost: t\r\nX-A: a\r\n\tb\r\n\r\n",
        b"GET /plaintext HTTP/1.1\r\n Host: t\r\n\r\n",
        b"GET /plaintext HTTP/1.1\r\n\tHost: t\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n Content-Length: 6\r\n\r\nhello",
    ] {
        assert_refused(&server, raw, 400, "invalid_header");
    }
}

#[test]
fn malformed_chunk_sizes_and_lines_are_refused() {
    let server = Server::start(1, &[]);
    let cases: &[(&str, &str)] = &[
        // Overflows a u64.
        ("10000000000000000\r\nhello\r\n0\r\n\r\n", "chunk_size_overflow"),
        ("ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", "chunk_size_overflow"),
        // Not bare hex digits.
        ("0x5\r\nhello\r\n0\r\n\r\n", "invalid_chunk_size"),
        ("5_0\r\nhello\r\n0\r\n\r\n", "invalid_chunk_size"),
        ("_5\r\nhello\r\n0\r\n\r\n", "invalid_chunk_size"),
        ("-5\r\nhello\r\n0\r\n\r\n", "invalid_chunk_size"),
        ("+5\r\nhello\r\n0\r\n\r\n", "invalid_chunk_size"),
        (" 5\r\nhello\r\n0\r\n\r\n", "invalid_chunk_size"),
        ("\r\nhello\r\n0\r\n\r\n", "invalid_chunk_size"),
        ("g\r\nhello\r\n0\r\n\r\n", "invalid_chunk_size"),
        // Bare LF line endings.
        ("5\nhello\r\n0\r\n\r\n", "invalid_chunk_line"),
        ("5\r\nhello\n0\r\n\r\n", "invalid_chunk_data"),
        ("5\r\nhello\r\n0\n\r\n", "invalid_chunk_line"),
        ("5\r\nhello\r\n0\r\n\n", "invalid_trailer"),
        ("5\r\nhello\r\n0\r\nX-T: 1\n\r\n", "invalid_trailer"),
        // Chunk data longer than its size.
        ("5\r\nhelloX\r\n0\r\n\r\n", "invalid_chunk_data"),
        // CR (or another control byte, or a bare LF) inside a chunk extension.
        ("5;a\rb\r\nhello\r\n0\r\n\r\n", "invalid_chunk_line"),
        ("5;a\x00b\r\nhello\r\n0\r\n\r\n", "invalid_chunk_extension"),
        ("5;a\nhello\r\n0\r\n\r\n", "invalid_chunk_line"),
    ];
    for (body, code) in cases {
        assert_refused(&server, &chunked(body), 400, code);
    }
    // Chunk extensions are bounded.
    let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(1100));
    assert_refused(&server, &chunked(&long), 400, "chunk_extension_too_long");
}

#[test]
fn host_must_be_present_once_on_http_1_1() {
    let server = Server::start(1, &[]);
    for raw in [
        &b"GET /plaintext HTTP/1.1\r\n\r\n"[..],
        b"GET /plaintext HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /plaintext HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET /plaintext HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        assert_refused(&server, raw, 400, "invalid_host");
    }
    // HTTP/1.0 without Host is fine.
    let mut client = server.connect();
    client.send(b"GET /plaintext HTTP/1.0\r\n\r\n");
    assert_eq!(client.read_response().text(), "Hello, World!");
}

#[test]
fn unsupported_http_versions_are_505() {
    let server = Server::start(1, &[]);
    for raw in [
        &b"GET /plaintext HTTP/2.0\r\nHost: t\r\n\r\n"[..],
        b"GET /plaintext HTTP/3.0\r\nHost: t\r\n\r\n",
        b"GET /plaintext HTTP/0.9\r\nHost: t\r\n\r\n",
    ] {
        assert_refused(&server, raw, 505, "http_version_not_supported");
    }
}

#[test]
fn malformed_request_lines_are_400() {
    let server = Server::start(1, &[]);
    for (raw, code) in [
        (
            &b"GET  /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"[..],
            "invalid_request_line",
        ),
        (
            b"GET\t/plaintext HTTP/1.1\r\nHost: t\r\n\r\n",
            "invalid_request_line",
        ),
        (b"GET /plaintext\r\nHost: t\r\n\r\n", "invalid_request_line"),
        (
            b"GET plaintext HTTP/1.1\r\nHost: t\r\n\r\n",
            "invalid_request_target",
        ),
        (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", "invalid_request_target"),
    ] {
        assert_refused(&server, raw, 400, code);
    }
}

#[test]
fn malformed_request_lines_are_not_505() {
    let server = Server::start(1, &[]);
    for raw in [
        // A space inside the target.
        &b"GET /plain text HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        // Two spaces before the version.
        b"GET /plaintext  HTTP/1.1\r\nHost: t\r\n\r\n",
        // A lower-case version: 400 alone, but 505 with `HTTP/` later in the buffer.
        b"GET /plaintext http/1.1\r\nHost: t\r\n\r\n",
        b"GET /plaintext http/1.1\r\nHost: t\r\nUser-Agent: x HTTP/1\r\n\r\n",
    ] {
        assert_refused(&server, raw, 400, "invalid_request_line");
    }
}

#[test]
fn a_refusal_mid_pipeline_answers_the_requests_before_it_only() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    let mut batch = NEXT.to_vec();
    batch.extend_from_slice(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    batch.extend_from_slice(b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\nab");
    batch.extend_from_slice(NEXT);
    client.send(&batch);
    assert_eq!(client.read_response().text(), "Hello, World!");
    assert_eq!(client.read_response().status, 405);
    let refused = client.read_response();
    check_refusal(&refused, 400, "conflicting_content_length", &batch);
    assert!(
        client.closed(),
        "nothing after the refused request may be answered"
    );
}

#[test]
fn connection_close_ends_the_pipeline() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    let mut batch = b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec();
    batch.extend_from_slice(NEXT);
    client.send(&batch);
    let response = client.read_response();
    assert_eq!(response.text(), "Hello, World!");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        client.closed(),
        "the request after `Connection: close` must not be answered"
    );
}

#[test]
fn identical_duplicate_content_lengths_are_accepted() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    for headers in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5,5\r\nContent-Length: 5\r\n",
        "Content-Length: 005\r\n",
    ] {
        // 405: /healthz takes no POST, answered once the body has been read.
        assert_accepted(&mut client, &post_with_headers(headers, "hello"), 405);
    }
}

#[test]
fn chunked_with_extensions_and_trailers_is_accepted() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    for body in [
        "5\r\nhello\r\n0\r\n\r\n",
        "5;name=value\r\nhello\r\n6;a;b=\"q d\"\r\n world\r\n0\r\n\r\n",
        "5 ;ext\r\nhello\r\n0;last\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n",
        "A\r\n0123456789\r\na\r\n0123456789\r\n0000\r\n\r\n",
        "00000000000000000005\r\nhello\r\n0\r\n\r\n",
        // Chunk data that looks like framing is just data.
        "E\r\n0\r\n\r\nGET / HTT\r\n0\r\n\r\n",
    ] {
        assert_accepted(&mut client, &chunked(body), 405);
    }
    // Transfer-Encoding is case-insensitive, and empty list elements are ignored.
    for headers in [
        "Transfer-Encoding: Chunked\r\n",
        "Transfer-Encoding: , chunked\r\n",
        "Transfer-Encoding: \r\nTransfer-Encoding: chunked\r\n",
    ] {
        assert_accepted(
            &mut client,
            &post_with_headers(headers, "3\r\nabc\r\n0\r\n\r\n"),
            405,
        );
    }
}

/// Writes `raw[..split]`, lets the server read it on its own, then writes the rest with
/// [`NEXT`] behind it; both requests must be answered in order on the same connection.
fn split_everywhere(raw: &[u8]) {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    for split in 1..raw.len() {
        client.send(&raw[..split]);
        client.stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut rest = raw[split..].to_vec();
        rest.extend_from_slice(NEXT);
        client.send(&rest);
        let label = format!(
            "split at {split}: {}|{}",
            show(&raw[..split]),
            show(&raw[split..])
        );
        assert_next_answers(&mut client, label.as_bytes(), 405);
    }
}

#[test]
fn chunked_body_split_at_every_byte_offset() {
    split_everywhere(&chunked(
        "4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n",
    ));
}

#[test]
fn content_length_body_split_at_every_byte_offset() {
    let body = "Wikipedia in\r\n\r\nchunks.\r\n";
    split_everywhere(&post_with_headers(
        &format!("Content-Length: {}\r\n", body.len()),
        body,
    ));
}

#[test]
fn head_has_a_content_length_but_no_body() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    client.send(b"HEAD /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    // Read the head byte by byte, then make sure nothing follows it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = client.stream.read(&mut byte).expect("read");
        assert_eq!(n, 1, "closed in the middle of the HEAD response: {}", show(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8(head).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\ncontent-length: 13\r\n"),
        "{text}"
    );
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut extra = [0u8; 64];
    match client.stream.read(&mut extra) {
        Ok(n) => panic!("bytes after a HEAD response: {:?}", show(&extra[..n])),
        Err(error) => assert!(
            matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{error}"
        ),
    }
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The next request on the same connection parses correctly.
    let next = client.get("/plaintext");
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "Hello, World!");
    // And HEAD pipelined between GETs.
    client.send(
        b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\nHEAD /plaintext HTTP/1.1\r\nHost: t\r\n\r\nGET /json HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(client.read_response().text(), "Hello, World!");
    let head = client.read_response_for(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("13"));
    assert_eq!(client.read_response().json()["message"], "Hello, World!");
}
