//! Request head parsing: httparse into a caller-owned header array, then the framing rules of
//! RFC 9112 §6 (message body length) and §3.2 (Host), decided once per request.
//!
//! Everything here borrows from the connection's read buffer; nothing allocates. This module never
//! reads a socket and never produces a response: it returns a [`Head`] or a [`RequestError`].

use std::mem::MaybeUninit;

use super::RequestError;

/// Request method. Unknown methods are carried as `Other` and answered by the router (405 or 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: answered like GET without a body (RFC 9110 §9.3.2).
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// OPTIONS
    Options,
    /// Any other token.
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// The method's name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

/// HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: close by default.
    Http10,
    /// HTTP/1.1: keep-alive by default.
    Http11,
}

/// How the body of a request is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, validated request head.
#[derive(Debug)]
pub struct Head<'b> {
    /// Method.
    pub method: Method,
    /// Path part of the request target (origin-form), never empty.
    pub path: &'b str,
    /// Query string after `?`, without the `?`.
    pub query: Option<&'b str>,
    /// Version.
    pub version: Version,
    /// Header fields in arrival order.
    pub headers: &'b [httparse::Header<'b>],
    /// Bytes of the head including the blank line.
    pub length: usize,
    /// Body framing.
    pub framing: Framing,
    /// Whether the connection stays open after this request (version default and `Connection`).
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request line → 414.
    pub request_line_bytes_max: usize,
    /// Largest head → 431.
    pub header_bytes_max: usize,
}

/// Longest `Content-Length` value accepted: 19 digits always fit in a u64.
const CONTENT_LENGTH_DIGITS_MAX: usize = 19;

/// Parses the head at the start of `buffer`. `Ok(None)` means more bytes are needed; the caller
/// bounds that by [`HeadLimits`] through the error returned once the partial head is too long.
pub fn parse_head<'b>(
    buffer: &'b [u8],
    headers: &'b mut [MaybeUninit<httparse::Header<'b>>],
    limits: HeadLimits,
) -> Result<Option<Head<'b>>, RequestError> {
    let mut request = httparse::Request::new(&mut []);
    let status = request.parse_with_uninit_headers(buffer, headers);
    let length = match status {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            check_partial(buffer, limits)?;
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            // The request line is complete (fields follow it) and, as everywhere, judged first.
            check_partial(buffer, limits)?;
            return Err(RequestError::HeaderTooLarge);
        }
        Err(_) => {
            // Too long is what the client must fix first, whatever else is wrong.
            check_partial(buffer, limits)?;
            return Err(classify_error(buffer));
        }
    };
    let method_token = request.method.unwrap_or("");
    let target = request.path.unwrap_or("");
    // httparse (strict) accepts exactly `METHOD SP TARGET SP HTTP/1.x`, so the line's length
    // follows from its parts; after skipped empty lines, measure it.
    let line_length = if buffer.first().is_some_and(|&b| b == b'\r' || b == b'\n') {
        request_line(buffer).len()
    } else {
        method_token.len() + target.len() + 10
    };
    if line_length > limits.request_line_bytes_max {
        return Err(RequestError::UriTooLong);
    }
    // After the line, as `check_partial` does: a head still arriving gets the same answer.
    if length > limits.header_bytes_max {
        return Err(RequestError::HeaderTooLarge);
    }
    let method = Method::from_token(method_token);
    let version = match request.version {
        Some(0) => Version::Http10,
        _ => Version::Http11,
    };
    let (path, query) = split_target(target, method)?;
    let headers: &'b [httparse::Header<'b>] = request.headers;
    let fields = scan_fields(headers, version)?;
    Ok(Some(Head {
        method,
        path,
        query,
        version,
        headers,
        length,
        framing: fields.framing,
        keep_alive: fields.keep_alive,
        expect_continue: fields.expect_continue,
    }))
}

/// A head that is still arriving may already be too long.
fn check_partial(buffer: &[u8], limits: HeadLimits) -> Result<(), RequestError> {
    let start = leading_empty_lines(buffer);
    let line_window = &buffer[start..buffer.len().min(start + limits.request_line_bytes_max + 2)];
    let line_complete = line_window.contains(&b'\n');
    // A CR received last may begin the line's CRLF: it is not part of the line (yet).
    let line_received = buffer.len() - start - usize::from(buffer.ends_with(b"\r"));
    if !line_complete && line_received > limits.request_line_bytes_max {
        return Err(RequestError::UriTooLong);
    }
    if line_complete && request_line(buffer).len() > limits.request_line_bytes_max {
        return Err(RequestError::UriTooLong);
    }
    if buffer.len() > limits.header_bytes_max {
        return Err(RequestError::HeaderTooLarge);
    }
    Ok(())
}

/// Bytes of the empty lines a server skips before the request line (RFC 9112 §2.2).
fn leading_empty_lines(buffer: &[u8]) -> usize {
    let mut start = 0;
    loop {
        if buffer[start..].starts_with(b"\r\n") {
            start += 2;
        } else if buffer[start..].starts_with(b"\n") {
            start += 1;
        } else {
            return start;
        }
    }
}

/// The request line without its line ending (or everything received, if it has none yet).
fn request_line(buffer: &[u8]) -> &[u8] {
    let line = &buffer[leading_empty_lines(buffer)..];
    let line = match line.iter().position(|&b| b == b'\n') {
        Some(end) => &line[..end],
        None => line,
    };
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Which part of a head httparse refused: the request line (400, or 505 for a well-formed version
/// other than 1.0 and 1.1) or a header field.
fn classify_error(buffer: &[u8]) -> RequestError {
    let line = request_line(buffer);
    let mut probe = Vec::with_capacity(line.len() + 4);
    probe.extend_from_slice(line);
    probe.extend_from_slice(b"\r\n\r\n");
    let mut no_headers = [];
    match httparse::Request::new(&mut no_headers).parse(&probe) {
        // The line alone parses: the fault is in a header field.
        Ok(_) | Err(httparse::Error::TooManyHeaders) => RequestError::BadRequest("invalid_header"),
        Err(_) => {
            let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
            let well_formed_version = version.len() == 8
                && version.starts_with(b"HTTP/")
                && version[5].is_ascii_digit()
                && version[6] == b'.'
                && version[7].is_ascii_digit()
                && line.iter().filter(|&&b| b == b' ').count() == 2;
            // A supported version with a bad method or target is a malformed line, not 505.
            let supported = version == b"HTTP/1.0" || version == b"HTTP/1.1";
            if well_formed_version && !supported {
                RequestError::VersionNotSupported
            } else {
                RequestError::BadRequest("invalid_request_line")
            }
        }
    }
}

/// Splits the request target into path and query (RFC 9112 §3.2). Origin-form is the norm;
/// absolute-form is accepted as servers must (§3.2.2); `*` only for OPTIONS.
fn split_target(target: &str, method: Method) -> Result<(&str, Option<&str>), RequestError> {
    let origin = if target.starts_with('/') {
        target
    } else if target == "*" && method == Method::Options {
        return Ok(("*", None));
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        match rest.find('/') {
            Some(slash) => &rest[slash..],
            None => "/",
        }
    } else {
        return Err(RequestError::BadRequest("invalid_request_target"));
    };
    Ok(match origin.bytes().position(|b| b == b'?') {
        Some(mark) => (&origin[..mark], Some(&origin[mark + 1..])),
        None => (origin, None),
    })
}

struct Fields {
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// One pass over the header fields for everything framing and connection management need.
fn scan_fields(headers: &[httparse::Header<'_>], version: Version) -> Result<Fields, RequestError> {
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut chunked_count = 0usize;
    let mut other_coding = false;
    let mut host_count = 0usize;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            // §6.3 ¶5: a list of identical values may be taken as one; anything else is invalid.
            for element in header.value.split(|&b| b == b',') {
                let value = parse_content_length(trim(element))?;
                if content_length.is_some_and(|seen| seen != value) {
                    return Err(RequestError::BadRequest("conflicting_content_length"));
                }
                content_length = Some(value);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for element in header.value.split(|&b| b == b',') {
                let coding = trim(element);
                if coding.is_empty() {
                    continue;
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked_count += 1;
                    chunked_last = true;
                } else {
                    other_coding = true;
                    chunked_last = false;
                }
            }
        } else if name.eq_ignore_ascii_case("host") {
            host_count += 1;
            if header.value.iter().any(|&b| b <= b' ' || b == 0x7f) {
                return Err(RequestError::BadRequest("invalid_host"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for element in header.value.split(|&b| b == b',') {
                let token = trim(element);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if trim(header.value).eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(RequestError::ExpectationFailed);
            }
        }
    }
    // RFC 9112 §3.2: a 1.1 request without exactly one Host, or any request with several, is 400.
    if host_count > 1 || (version == Version::Http11 && host_count == 0) {
        return Err(RequestError::BadRequest("invalid_host"));
    }
    let framing = if transfer_encoding {
        // §6.1: Transfer-Encoding in a 1.0 request means the framing is faulty.
        if version == Version::Http10 {
            return Err(RequestError::BadRequest("invalid_transfer_encoding"));
        }
        // §6.3 ¶3: both headers may be a smuggling attempt; refuse rather than guess.
        if content_length.is_some() {
            return Err(RequestError::BadRequest("content_length_with_transfer_encoding"));
        }
        // §6.3 ¶4: a request whose final coding is not chunked cannot be delimited.
        if !chunked_last || chunked_count != 1 {
            return Err(RequestError::BadRequest("invalid_transfer_encoding"));
        }
        // §6.1: a coding we do not implement (gzip before chunked) is 501.
        if other_coding {
            return Err(RequestError::UnsupportedTransferCoding);
        }
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::Empty,
            Some(length) => Framing::Length(length),
        }
    };
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive_token && !close,
    };
    Ok(Fields {
        framing,
        keep_alive,
        expect_continue,
    })
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6): no sign, no hex, no spaces inside, bounded length.
fn parse_content_length(value: &[u8]) -> Result<u64, RequestError> {
    if value.is_empty() || value.len() > CONTENT_LENGTH_DIGITS_MAX || !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::BadRequest("invalid_content_length"));
    }
    let mut length: u64 = 0;
    for &digit in value {
        length = length * 10 + u64::from(digit - b'0');
    }
    Ok(length)
}

/// Strips optional white space (SP / HTAB) from both ends.
pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        request_line_bytes_max: 64,
        header_bytes_max: 256,
    };

    fn parse(raw: &str) -> Result<Option<(Framing, bool, usize)>, RequestError> {
        let mut headers = [const { MaybeUninit::uninit() }; 16];
        parse_head(raw.as_bytes(), &mut headers, LIMITS)
            .map(|head| head.map(|h| (h.framing, h.keep_alive, h.length)))
    }

    fn rejected(raw: &str) -> RequestError {
        parse(raw).expect_err(raw)
    }

    #[test]
    fn simple_get() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(raw).unwrap(), Some((Framing::Empty, true, raw.len())));
        let mut headers = [const { MaybeUninit::uninit() }; 16];
        let head = parse_head(raw.as_bytes(), &mut headers, LIMITS).unwrap().unwrap();
        assert_eq!(head.path, "/a");
        assert_eq!(head.query, Some("b=1"));
        assert_eq!(head.method, Method::Get);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn keep_alive_defaults() {
        let keep_alive = |raw: &str| parse(raw).unwrap().unwrap().1;
        assert!(!keep_alive("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep_alive("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!keep_alive(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n"
        ));
        assert!(keep_alive("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    }

    #[test]
    fn content_length_rules() {
        let ok = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(ok.0, Framing::Length(5));
        let same = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(same.unwrap().unwrap().0, Framing::Length(5));
        for bad in ["+5", "-5", "0x10", "5 5", "", "5a", "99999999999999999999", "1_0"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(
                rejected(&raw),
                RequestError::BadRequest("invalid_content_length"),
                "{bad:?}"
            );
        }
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            RequestError::BadRequest("conflicting_content_length")
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,6\r\n\r\n"),
            RequestError::BadRequest("conflicting_content_length")
        );
        // A space before the colon is not a header field (RFC 9112 §5.1).
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n"),
            RequestError::BadRequest("invalid_header")
        );
    }

    #[test]
    fn transfer_encoding_rules() {
        let chunked = parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.unwrap().unwrap().0, Framing::Chunked);
        let split =
            parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(split.unwrap().unwrap().0, Framing::Chunked);
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            RequestError::BadRequest("content_length_with_transfer_encoding")
        );
        for bad in [
            "chunked, identity",
            "gzip",
            "chunked, chunked",
            "xchunked",
            "chunked;q=1",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {bad}\r\n\r\n");
            assert_eq!(
                rejected(&raw),
                RequestError::BadRequest("invalid_transfer_encoding"),
                "{bad:?}"
            );
        }
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            RequestError::UnsupportedTransferCoding
        );
        assert_eq!(
            rejected("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            RequestError::BadRequest("invalid_transfer_encoding")
        );
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            rejected("GET / HTTP/1.1\r\n\r\n"),
            RequestError::BadRequest("invalid_host")
        );
        assert_eq!(
            rejected("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            RequestError::BadRequest("invalid_host")
        );
        assert!(parse("GET / HTTP/1.0\r\n\r\n").is_ok());
    }

    #[test]
    fn obs_fold_is_rejected() {
        assert_eq!(
            rejected("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
            RequestError::BadRequest("invalid_header")
        );
    }

    #[test]
    fn size_limits() {
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(80));
        assert_eq!(rejected(&long_uri), RequestError::UriTooLong);
        // Still arriving, but already too long.
        assert_eq!(
            rejected(&format!("GET /{}", "a".repeat(80))),
            RequestError::UriTooLong
        );
        let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n", "a".repeat(300));
        assert_eq!(rejected(&big), RequestError::HeaderTooLarge);
        assert_eq!(rejected(&big[..280]), RequestError::HeaderTooLarge);
        let many: String = (0..20).map(|i| format!("X-{i}: a\r\n")).collect();
        assert_eq!(
            rejected(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            RequestError::HeaderTooLarge
        );
    }

    #[test]
    fn request_line_limit_is_exact_and_skips_leading_empty_lines() {
        // "GET /aaa… HTTP/1.1" of exactly 64 bytes is accepted, 65 is not.
        let line = |length: usize| format!("GET /{} HTTP/1.1", "a".repeat(length - 14));
        assert_eq!(line(64).len(), 64);
        assert!(parse(&format!("{}\r\nHost: x\r\n\r\n", line(64))).is_ok());
        assert_eq!(
            rejected(&format!("{}\r\nHost: x\r\n\r\n", line(65))),
            RequestError::UriTooLong
        );
        assert_eq!(
            rejected(&format!("\r\n\n{}\r\nHost: x\r\n\r\n", line(65))),
            RequestError::UriTooLong
        );
        assert_eq!(
            rejected(&format!("\r\nGET /{}", "a".repeat(70))),
            RequestError::UriTooLong
        );
        assert_eq!(parse(&format!("\r\nGET /{}", "a".repeat(50))).unwrap(), None);
    }

    #[test]
    fn version_errors_are_judged_on_the_request_line_only() {
        let bad = RequestError::BadRequest("invalid_request_line");
        assert_eq!(rejected("GET /plain text HTTP/1.1\r\nHost: t\r\n\r\n"), bad);
        assert_eq!(rejected("GET /plaintext  HTTP/1.1\r\nHost: t\r\n\r\n"), bad);
        assert_eq!(
            rejected("GET / http/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n"),
            bad
        );
        assert_eq!(rejected("GET / HTTP/1.1 \r\nHost: t\r\n\r\n"), bad);
        assert_eq!(rejected("GET / HTTP/1.10\r\nHost: t\r\n\r\n"), bad);
        assert_eq!(
            rejected("GET / HTTP/3.0\r\nHost: t\r\n\r\n"),
            RequestError::VersionNotSupported
        );
        assert_eq!(
            rejected("GET / HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n"),
            RequestError::BadRequest("invalid_header")
        );
    }

    #[test]
    fn expect() {
        let mut headers = [const { MaybeUninit::uninit() }; 16];
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        let head = parse_head(raw, &mut headers, LIMITS).unwrap().unwrap();
        assert!(head.expect_continue);
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n"),
            RequestError::ExpectationFailed
        );
    }

    #[test]
    fn request_targets() {
        assert!(parse("GET http://example.com/a HTTP/1.1\r\nHost: example.com\r\n\r\n").is_ok());
        assert!(parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        assert_eq!(
            rejected("GET * HTTP/1.1\r\nHost: x\r\n\r\n"),
            RequestError::BadRequest("invalid_request_target")
        );
        assert_eq!(
            rejected("GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
            RequestError::VersionNotSupported
        );
        assert_eq!(
            rejected("GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
            RequestError::BadRequest("invalid_request_line")
        );
    }

    /// Regression: a bad target (NUL, tab, non-UTF-8 byte, empty) on an HTTP/1.1 request line
    /// was answered 505 "only HTTP/1.0 and HTTP/1.1 are supported" instead of 400.
    #[test]
    fn a_bad_target_with_a_supported_version_is_not_505() {
        let bad = RequestError::BadRequest("invalid_request_line");
        for raw in [
            &b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n"[..],
            b"GET /a\tb HTTP/1.1\r\nHost: t\r\n\r\n",
            b"GET /\xff HTTP/1.0\r\n\r\n",
            b"GET  HTTP/1.1\r\nHost: t\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\nHost: t\r\n\r\n",
        ] {
            let mut headers = [const { MaybeUninit::uninit() }; 16];
            let error = parse_head(raw, &mut headers, LIMITS).expect_err("refused");
            assert_eq!(error, bad, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    /// Found by the `http_head` fuzz target: a request line of exactly the maximum length was
    /// refused 414 when a read ended right after its CR (the CR was counted as part of the line).
    #[test]
    fn a_read_ending_after_the_cr_of_a_longest_request_line_waits() {
        let raw = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(64 - 14));
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]), Ok(None), "first {cut} bytes");
        }
        assert_eq!(parse(&raw).unwrap().unwrap().2, raw.len());
        // One byte more is too long, whether its CR has arrived or not.
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(65 - 14));
        assert_eq!(parse(&long[..64]), Ok(None));
        assert_eq!(rejected(&long[..65]), RequestError::UriTooLong);
        assert_eq!(rejected(&long[..66]), RequestError::UriTooLong);
        assert_eq!(rejected(&long), RequestError::UriTooLong);
    }

    /// Found by the `http_head` fuzz target: a head with both a too-long request line and too
    /// many bytes (or fields) was 431 when it arrived whole but 414 when a read ended inside it
    /// (a partial head is judged on its line first). Now the line comes first in every case.
    #[test]
    fn a_long_line_in_a_large_head_is_414_however_it_arrives() {
        let raw = format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\nX-A: {}\r\n\r\n",
            "a".repeat(60),
            "b".repeat(300)
        );
        for cut in [65, 66, 100, 257, raw.len()] {
            assert_eq!(
                rejected(&raw[..cut]),
                RequestError::UriTooLong,
                "first {cut} bytes"
            );
        }
        // The same with more fields than header slots (16 here).
        let many: String = (0..20).map(|i| format!("X-{i}: a\r\n")).collect();
        let raw = format!("GET /{} HTTP/1.1\r\nHost: x\r\n{many}\r\n", "a".repeat(60));
        for cut in [65, 100, raw.len()] {
            assert_eq!(
                rejected(&raw[..cut]),
                RequestError::UriTooLong,
                "first {cut} bytes"
            );
        }
    }
}
