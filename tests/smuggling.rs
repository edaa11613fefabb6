//! Request-smuggling and framing corpus (issue 7, item 4), black-box against the real binary.
//!
//! Two sources of cases:
//! - the YAML test cases of AWS's `http_desync_guardian` crate, copied unchanged into
//!   `tests/data/smuggling/` (see its README.md for the source, the license and the cases where
//!   this server deliberately differs from the guardian's tier);
//! - hand-written smuggling payloads: CL.TE, TE.CL, TE.TE obfuscations, malformed
//!   `Content-Length` values and chunk sizes, chunk extensions, trailers, line endings, control
//!   characters, `Host` and absolute-form targets.
//!
//! Every case is sent twice, each time on its own connection:
//! - alone: a refused case gets its refusal and the connection closes; a served case gets its
//!   answer and the connection stays in sync (a request sent after it is answered);
//! - pipelined in one write behind a valid request and followed by a valid "canary" request
//!   (`Connection: close`): the responses are counted. A served case gives exactly three (the
//!   one before, the case, the canary, then the close); a refused case exactly two (the one
//!   before and the refusal, then the close). Nothing smuggled inside a case, and no canary
//!   after a refused case, is ever answered (RFC 9112 §6.3, §9.6; docs/API.md "Requests refused
//!   before routing").
//!
//! Reads time out (a hang is a failure, not a hang), and all failures of a table are reported
//! together.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use common::{Client, Response, Server};
use serde_norway::Value;

/// Longest wait for a response or a close.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A request hidden in a case; if it were ever answered there would be one response too many.
const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

/// The valid request sent before each pipelined case on a one-shard server.
const BEFORE: &[u8] = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n";

/// The canary sent after each case: answered only if the case was served.
const CANARY: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// Statuses a request refused before routing may get (docs/API.md).
const REFUSAL_STATUSES: &[u16] = &[400, 413, 414, 431, 501, 505];

/// Error codes of requests refused before routing (docs/API.md).
const REFUSAL_CODES: &[&str] = &[
    "invalid_request_line",
    "invalid_request_target",
    "invalid_header",
    "invalid_host",
    "invalid_content_length",
    "conflicting_content_length",
    "content_length_with_transfer_encoding",
    "invalid_transfer_encoding",
    "invalid_chunk_size",
    "chunk_size_overflow",
    "invalid_chunk_line",
    "invalid_chunk_extension",
    "invalid_chunk_data",
    "invalid_trailer",
    "chunk_extension_too_long",
    "body_too_large",
    "request_line_too_long",
    "header_too_large",
    "unsupported_transfer_coding",
    "http_version_not_supported",
];

/// What the server must do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Answered with this status; the connection stays open.
    Served(u16),
    /// Refused with this status and error code; the connection closes.
    Refused(u16, &'static str),
    /// Refused with any documented status and code; the connection closes.
    RefusedAny,
}

/// One request (or attempt at one) and what the server must do with it.
struct Case {
    label: String,
    raw: Vec<u8>,
    /// A HEAD request: its response has no body whatever its `Content-Length`.
    head: bool,
    expect: Expect,
}

impl Case {
    /// Whether the response to the case has no body: a served HEAD. (A refusal of a HEAD whose
    /// head parsed has none either: see `head_refusals_have_no_body`; one refused before the
    /// method is known has its JSON body.)
    fn head_only(&self) -> bool {
        self.head && matches!(self.expect, Expect::Served(_))
    }
}

/// The requests sent before and after a pipelined case, and their expected answers.
struct Around {
    before: Vec<u8>,
    before_status: u16,
    canary: Vec<u8>,
    /// Text the canary's answer must contain.
    canary_text: &'static str,
}

impl Around {
    /// `GET /plaintext` before, `GET /healthz` (closing) after.
    fn plain() -> Around {
        Around {
            before: BEFORE.to_vec(),
            before_status: 200,
            canary: CANARY.to_vec(),
            canary_text: "ok",
        }
    }
}

/// The bytes of `raw` as an escaped string, cut short for large bodies.
fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(300)])
        .escape_debug()
        .to_string();
    if raw.len() > 300 {
        format!("{text}… ({} bytes)", raw.len())
    } else {
        text
    }
}

fn connect(port: u16) -> Client {
    let client = Client::connect(port);
    client.stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    client
}

/// The error code of a refusal's JSON body, if it has one.
fn error_code(response: &Response) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(&response.body).ok()?;
    body["error"]["code"].as_str().map(str::to_string)
}

/// A short description of a response, for failure messages.
fn describe(response: &Response) -> String {
    format!(
        "{} {} (Connection: {})",
        response.status,
        error_code(response).unwrap_or_else(|| show(&response.body)),
        response.header("connection").unwrap_or("-")
    )
}

/// Checks the response to the case itself.
fn check_response(response: &Response, expect: Expect) -> Result<(), String> {
    let connection = response.header("connection");
    let ok = match expect {
        Expect::Served(status) => response.status == status && connection != Some("close"),
        Expect::Refused(status, code) => {
            response.status == status
                && connection == Some("close")
                && error_code(response).as_deref() == Some(code)
        }
        Expect::RefusedAny => {
            REFUSAL_STATUSES.contains(&response.status)
                && connection == Some("close")
                && error_code(response).is_some_and(|code| REFUSAL_CODES.contains(&code.as_str()))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {expect:?}, got {}", describe(response)))
    }
}

/// After the last expected response: the server closes, with no further response bytes.
fn check_closed(client: &mut Client, after: &str) -> Result<(), String> {
    if client.closed() {
        return Ok(());
    }
    let extra = client
        .try_read_response(false)
        .map_or_else(|| "partial bytes".to_string(), |response| describe(&response));
    Err(format!("a response after {after}: {extra}"))
}

fn read(client: &mut Client, head: bool, what: &str) -> Result<Response, String> {
    client
        .try_read_response(head)
        .ok_or_else(|| format!("closed without a response to {what}"))
}

fn check_canary(response: &Response, around: &Around) -> Result<(), String> {
    if response.status == 200 && response.text().contains(around.canary_text) {
        Ok(())
    } else {
        Err(format!("the canary got {}", describe(response)))
    }
}

/// The case alone on a fresh connection.
fn run_alone(port: u16, case: &Case, around: &Around) -> Result<(), String> {
    let mut client = connect(port);
    client.send_lossy(&case.raw);
    let response = read(&mut client, case.head_only(), "the case")?;
    check_response(&response, case.expect)?;
    match case.expect {
        Expect::Served(_) => {
            client.send_lossy(&around.canary);
            let canary = read(&mut client, false, "the canary sent after the case")?;
            check_canary(&canary, around)?;
            check_closed(&mut client, "the canary")
        }
        Expect::Refused(..) | Expect::RefusedAny => check_closed(&mut client, "the refusal"),
    }
}

/// The case between `around.before` and `around.canary`, all in one write.
fn run_pipelined(port: u16, case: &Case, around: &Around) -> Result<(), String> {
    let mut client = connect(port);
    let mut bytes = around.before.clone();
    bytes.extend_from_slice(&case.raw);
    bytes.extend_from_slice(&around.canary);
    client.send_lossy(&bytes);
    let before = read(&mut client, false, "the request before the case")?;
    if before.status != around.before_status {
        return Err(format!("the request before the case got {}", describe(&before)));
    }
    let response = read(&mut client, case.head_only(), "the case")?;
    check_response(&response, case.expect)?;
    match case.expect {
        Expect::Served(_) => {
            let canary = read(&mut client, false, "the canary")?;
            check_canary(&canary, around)?;
            check_closed(&mut client, "the canary")
        }
        Expect::Refused(..) | Expect::RefusedAny => check_closed(&mut client, "the refusal"),
    }
}

/// Runs `f`, turning a panic of the harness (a read timeout, an unparsable response) into an error.
fn guarded(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string())),
    }
}

/// Runs every case alone and pipelined; panics listing every failure.
fn run_all(cases: &[Case], alone_port: impl Fn(usize) -> u16, around: impl Fn(usize) -> (u16, Around)) {
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        if let Err(error) = guarded(|| run_alone(alone_port(index), case, &Around::plain())) {
            failures.push(format!(
                "{} [alone]: {error}\n    {}",
                case.label,
                show(&case.raw)
            ));
        }
        let (port, around) = around(index);
        if let Err(error) = guarded(|| run_pipelined(port, case, &around)) {
            failures.push(format!(
                "{} [pipelined]: {error}\n    {}",
                case.label,
                show(&case.raw)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Runs `cases` against a one-shard server, alone and pipelined between `GET /plaintext` and
/// `GET /healthz`.
fn run_on_one_shard(server: &Server, cases: &[Case]) {
    run_all(cases, |_| server.port, |_| (server.port, Around::plain()));
}

// ---------------------------------------------------------------------------------------------
// http_desync_guardian's YAML cases
// ---------------------------------------------------------------------------------------------

/// The guardian's case files, in the order its own test runs them (without `single-case.yaml`,
/// a debugging copy of a case of `ambiguous.yaml`).
const GUARDIAN_FILES: &[&str] = &[
    "edge-cases.yaml",
    "rfc-compliant.yaml",
    "acceptable.yaml",
    "ambiguous.yaml",
    "bad-header-characters.yaml",
    "more-compliant-tests.yaml",
    "severe.yaml",
    "uri-specific-test-cases.yaml",
    "real-life-test-cases.yaml",
];

/// Number of cases in those files (0.1.3); a changed copy must be looked at again.
const GUARDIAN_CASE_COUNT: usize = 158;

/// Where this server deliberately differs from the guardian's tier, by file and case name; the
/// reasons, with their RFC sections, are in tests/data/smuggling/README.md. Every other case gets
/// the default of its tier: Compliant and Acceptable served (404: no route has these paths),
/// Ambiguous and Severe refused (any documented refusal) and the connection closed.
const GUARDIAN_DIFFERENCES: &[(Expect, &[(&str, &str)])] = &[
    // Stricter: a transfer coding other than chunked is not implemented (RFC 9112 §6.1).
    (
        Expect::Refused(501, "unsupported_transfer_coding"),
        &[
            ("rfc-compliant.yaml", "Different Transfer-Encoding headers"),
            (
                "rfc-compliant.yaml",
                "Different Transfer-Encoding headers combined",
            ),
            ("more-compliant-tests.yaml", "Correct TE OK"),
            (
                "more-compliant-tests.yaml",
                "Transfer-Encoding: identity and chunked OK",
            ),
            (
                "more-compliant-tests.yaml",
                "Multiple transfer encoding headers in a single request OK",
            ),
        ],
    ),
    // Stricter: chunked takes no parameters (RFC 9112 §7).
    (
        Expect::Refused(400, "invalid_transfer_encoding"),
        &[
            (
                "rfc-compliant.yaml",
                "Transfer-Encoding with a param: chunked;custom_param",
            ),
            ("more-compliant-tests.yaml", "TE with custom parameters OK"),
        ],
    ),
    // Stricter: a field name that is not a token, or a control character in a value (RFC 9110
    // §5.1, §5.5; RFC 9112 §5.1 for white space before the colon).
    (
        Expect::Refused(400, "invalid_header"),
        &[
            (
                "acceptable.yaml",
                "No TE/CL headers, some others are non-compliant",
            ),
            ("acceptable.yaml", "TE and some others are non-compliant"),
            (
                "acceptable.yaml",
                "A non-essential header with a non-printable character (x01)",
            ),
            ("acceptable.yaml", "CL and some others are non-compliant"),
            ("bad-header-characters.yaml", "Some-Header\\x01"),
            ("bad-header-characters.yaml", "\\x01Some-Header"),
            ("bad-header-characters.yaml", "Some-Header: \\x01value"),
            ("bad-header-characters.yaml", "Some-Header: value\\x01"),
        ],
    ),
    // Stricter: a request line that is not `method SP target SP version` (RFC 9112 §3).
    (
        Expect::Refused(400, "invalid_request_line"),
        &[
            ("rfc-compliant.yaml", "Empty URI"),
            ("acceptable.yaml", "Empty version, which means HTTP/0.9"),
            ("uri-specific-test-cases.yaml", "Extra spaces in version"),
            ("uri-specific-test-cases.yaml", "[space] in URI"),
        ],
    ),
    // Stricter: only HTTP/1.0 and HTTP/1.1 (RFC 9112 §2.3, RFC 9110 §15.6.6).
    (
        Expect::Refused(505, "http_version_not_supported"),
        &[
            ("acceptable.yaml", "Non-RFC, but OK HTTP/0.9"),
            ("acceptable.yaml", "Unknown but OK HTTP/1.2"),
        ],
    ),
    // Served: one body length whatever the method (RFC 9112 §6.3 frames every request alike);
    // identical Content-Length values are one value (RFC 9110 §8.6, RFC 9112 §6.3 ¶5); a valid
    // field name that only resembles Transfer-Encoding or Content-Length is another field.
    (
        Expect::Served(404),
        &[
            ("ambiguous.yaml", "Get with a body and Content-Length"),
            ("ambiguous.yaml", "Get with a body and Transfer-Encoding"),
            ("ambiguous.yaml", "Head with a body and Content-Length"),
            ("ambiguous.yaml", "Head with a body and Transfer-Encoding"),
            ("real-life-test-cases.yaml", "Has a CL in GET"),
            ("real-life-test-cases.yaml", "Has a TE in GET"),
            ("ambiguous.yaml", "Duplicate Content-Length"),
            ("real-life-test-cases.yaml", "Two Identical Fields - CL"),
            ("severe.yaml", "Bad Content-Length: 1000,1000"),
            ("ambiguous.yaml", "Transfer_Encoding with underscore."),
            ("ambiguous.yaml", "Content_Length with underscore."),
            ("ambiguous.yaml", "Transfer-Encoding with multiple hyphens"),
            ("ambiguous.yaml", "Transfer-Encoding with multiple delimiters"),
        ],
    ),
];

/// One case of a guardian YAML file, its strings unescaped as the guardian's own test does.
struct GuardianCase {
    file: &'static str,
    name: String,
    method: String,
    uri: String,
    version: String,
    headers: Vec<(String, String)>,
    tier: String,
}

/// The guardian test's `unescape_value`: after YAML's own escapes, `\xHH` (as a char, so 0x80
/// and above become two UTF-8 bytes), `\b \f \n \r \t`, and `\c` for any other `c`.
fn unescape(text: &str) -> String {
    let mut result = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            result.push(ch);
            continue;
        }
        result.push(match chars.next() {
            Some('x') => {
                let value = chars
                    .by_ref()
                    .take(2)
                    .fold(0, |acc, c| acc * 16 + c.to_digit(16).expect("hex escape"));
                char::from(value as u8)
            }
            Some('b') => '\x08',
            Some('f') => '\x0c',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some(other) => other,
            None => panic!("malformed escape in {text:?}"),
        });
    }
    result
}

/// A scalar as text (numbers as written), unescaped.
fn scalar(value: &Value, what: &str) -> String {
    match value {
        Value::String(text) => unescape(text),
        Value::Number(number) => number.to_string(),
        other => panic!("{what}: not a scalar: {other:?}"),
    }
}

fn load_guardian() -> Vec<GuardianCase> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smuggling");
    let mut cases = Vec::new();
    for &file in GUARDIAN_FILES {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let document: Value = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for entry in document
            .as_sequence()
            .unwrap_or_else(|| panic!("{file}: not a list"))
        {
            // Names are labels, not unescaped (as in the guardian's test).
            let name = entry["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a case without a name"))
                .to_string();
            let what = format!("{file}: {name}");
            let headers = match &entry["headers"] {
                Value::Null => Vec::new(),
                Value::Sequence(headers) => headers
                    .iter()
                    .map(|h| (scalar(&h["name"], &what), scalar(&h["value"], &what)))
                    .collect(),
                other => panic!("{what}: headers {other:?}"),
            };
            cases.push(GuardianCase {
                file,
                method: scalar(&entry["method"], &what),
                uri: scalar(&entry["uri"], &what),
                version: scalar(&entry["version"], &what),
                tier: scalar(&entry["expected"]["tier"], &what),
                name,
                headers,
            });
        }
    }
    cases
}

/// The body this server's framing expects for the case's fields: a last chunk when
/// `Transfer-Encoding` is present, `Content-Length` bytes when every value is the same number,
/// else none (such a request is refused before its body matters).
fn guardian_body(headers: &[(String, String)]) -> Vec<u8> {
    if headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return b"0\r\n\r\n".to_vec();
    }
    let values: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, value)| value.split(','))
        .map(|value| value.trim_matches([' ', '\t']))
        .collect();
    let length = match values.first() {
        Some(first) if values.iter().all(|value| value == first) => first.parse::<usize>().ok(),
        _ => None,
    };
    vec![b'x'; length.unwrap_or(0)]
}

/// The guardian's raw request (its own test writes `METHOD URI VERSION`, then `name: value`
/// lines), plus `Host: t` when the case has none (the cases are written for a proxy that adds
/// it; this server refuses an HTTP/1.1 request without it), plus the body.
fn guardian_raw(case: &GuardianCase) -> Vec<u8> {
    let mut raw = format!("{} {} {}\r\n", case.method, case.uri, case.version);
    if !case
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        raw.push_str("Host: t\r\n");
    }
    for (name, value) in &case.headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(&guardian_body(&case.headers));
    raw
}

fn guardian_cases() -> Vec<Case> {
    let loaded = load_guardian();
    assert_eq!(
        loaded.len(),
        GUARDIAN_CASE_COUNT,
        "the guardian case files changed"
    );
    let differences: Vec<(Expect, &str, &str)> = GUARDIAN_DIFFERENCES
        .iter()
        .flat_map(|(expect, cases)| cases.iter().map(move |(file, name)| (*expect, *file, *name)))
        .collect();
    let mut used = vec![false; differences.len()];
    let cases = loaded
        .iter()
        .map(|case| {
            let difference = differences
                .iter()
                .position(|(_, file, name)| *file == case.file && *name == case.name);
            let expect = match difference {
                Some(index) => {
                    used[index] = true;
                    differences[index].0
                }
                None => match case.tier.as_str() {
                    "Compliant" | "Acceptable" => Expect::Served(404),
                    "Ambiguous" | "Severe" => Expect::RefusedAny,
                    other => panic!("{}: unknown tier {other}", case.name),
                },
            };
            Case {
                label: format!("{} / {} ({} {})", case.file, case.name, case.method, case.tier),
                raw: guardian_raw(case),
                head: case.method == "HEAD",
                expect,
            }
        })
        .collect();
    for (index, used) in used.iter().enumerate() {
        assert!(used, "no guardian case for {:?}", differences[index]);
    }
    cases
}

#[test]
fn http_desync_guardian_cases() {
    // "Large Size OK" declares a 4 000 000-byte body; let it be served rather than 413.
    let server = Server::start(1, &[("SHARDPAY_LIMITS_BODY_BYTES_MAX", "8388608")]);
    let cases = guardian_cases();
    run_on_one_shard(&server, &cases);
}

// ---------------------------------------------------------------------------------------------
// Hand-written smuggling payloads
// ---------------------------------------------------------------------------------------------

fn case(label: &str, raw: impl AsRef<[u8]>, expect: Expect) -> Case {
    Case {
        label: label.to_string(),
        raw: raw.as_ref().to_vec(),
        head: false,
        expect,
    }
}

/// `label => raw, expect;` lines into a `Vec<Case>`, one line per case.
macro_rules! cases {
    ($($label:literal => $raw:expr, $expect:expr;)*) => {
        vec![$(case($label, $raw, $expect)),*]
    };
}

/// `POST /healthz` (405 once its body is read) with extra header lines and a body.
fn post(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!("POST /healthz HTTP/1.1\r\nHost: t\r\n{headers}\r\n").into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// `POST /healthz` with `Transfer-Encoding: chunked` and a raw chunked body.
fn post_chunked(body: &[u8]) -> Vec<u8> {
    post("Transfer-Encoding: chunked\r\n", body)
}

/// A request line and header lines (without the blank line), then the blank line and `body`.
fn request(head: &str, body: &[u8]) -> Vec<u8> {
    concat(&[head.as_bytes(), b"\r\n", body])
}

/// One chunk holding `data`, with `size` as its size line.
fn chunk_with_size(size: &str, data: &[u8]) -> Vec<u8> {
    concat(&[size.as_bytes(), b"\r\n", data, b"\r\n"])
}

/// `SMUGGLED` as one chunk whose size line is `size` (`{}` in it: the length in hex), then the
/// last chunk.
fn smuggled_chunk(size: &str) -> Vec<u8> {
    let size = size.replace("{}", &format!("{:x}", SMUGGLED.len()));
    concat(&[&chunk_with_size(&size, SMUGGLED), b"0\r\n\r\n"])
}

/// `SMUGGLED` as the body of a POST whose `Content-Length` value is `value` (`{}` in it: the
/// length in decimal).
fn smuggled_length(value: &str) -> Vec<u8> {
    let value = value.replace("{}", &SMUGGLED.len().to_string());
    post(&format!("Content-Length: {value}\r\n"), SMUGGLED)
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// CL.TE, TE.CL and TE.TE: two framings, or one framing in disguise.
fn cl_te_cases() -> Vec<Case> {
    use Expect::{Refused, Served};
    let both = Refused(400, "content_length_with_transfer_encoding");
    let bad_te = Refused(400, "invalid_transfer_encoding");
    let bad_header = Refused(400, "invalid_header");
    let not_implemented = Refused(501, "unsupported_transfer_coding");
    // CL.TE: the Content-Length covers the last chunk and the request after it.
    let tail = concat(&[b"0\r\n\r\n", SMUGGLED]);
    let cl = format!("Content-Length: {}\r\n", tail.len());
    let cl_te = |te: &str| post(&format!("{cl}{te}"), &tail);
    // TE.CL / TE.TE: the request is a chunk's data.
    let te = |headers: &str| post(headers, &smuggled_chunk("{}"));
    cases! {
        "CL.TE" => cl_te("Transfer-Encoding: chunked\r\n"), both;
        "CL.TE, TE first" => post(&format!("Transfer-Encoding: chunked\r\n{cl}"), &tail), both;
        "CL.TE, Content-Length: 0" => post("Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", &tail), both;
        "TE.CL" => te("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"), both;
        "TE.CL, TE in a second field" => te("Content-Length: 3\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n"), both;
        "CL.TE, TE: xchunked" => cl_te("Transfer-Encoding: xchunked\r\n"), both;
        "CL.TE, TE: chunked, identity" => cl_te("Transfer-Encoding: chunked, identity\r\n"), both;
        "CL.TE, TE: \\x0bchunked" => cl_te("Transfer-Encoding: \x0bchunked\r\n"), bad_header;
        "CL.TE, TE : chunked (space before the colon)" => cl_te("Transfer-Encoding : chunked\r\n"), bad_header;
        "CL.TE, TE folded onto the previous field" => cl_te("X-Pad: x\r\n Transfer-Encoding: chunked\r\n"), bad_header;
        "CL.TE, TE value on an obs-fold line" => cl_te("Transfer-Encoding:\r\n chunked\r\n"), bad_header;
        "TE.TE: chunked and xchunked fields" => te("Transfer-Encoding: chunked\r\nTransfer-Encoding: xchunked\r\n"), bad_te;
        "TE.TE: chunked and x fields" => te("Transfer-Encoding: chunked\r\nTransfer-encoding: x\r\n"), bad_te;
        "TE.TE: chunked in two fields" => te("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), bad_te;
        "TE: xchunked" => te("Transfer-Encoding: xchunked\r\n"), bad_te;
        "TE: chunk" => te("Transfer-Encoding: chunk\r\n"), bad_te;
        "TE: \"chunked\" (quoted)" => te("Transfer-Encoding: \"chunked\"\r\n"), bad_te;
        "TE: chunked, gzip (chunked not last)" => te("Transfer-Encoding: chunked, gzip\r\n"), bad_te;
        "TE: gzip, chunked" => te("Transfer-Encoding: gzip, chunked\r\n"), not_implemented;
        "TE: identity, chunked" => te("Transfer-Encoding: identity, chunked\r\n"), not_implemented;
        "TE: gzip then chunked fields" => te("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"), not_implemented;
        "TE\\t: chunked (tab before the colon)" => te("Transfer-Encoding\t: chunked\r\n"), bad_header;
        "TE\\x0b: chunked (VT in the name)" => te("Transfer-Encoding\x0b: chunked\r\n"), bad_header;
        "TE value continued on a tab fold" => te("Transfer-Encoding: identity\r\n\tchunked\r\n"), bad_header;
        "TE: chunked\\x0b (VT)" => te("Transfer-Encoding: chunked\x0b\r\n"), bad_header;
        "TE: chunked\\x0c (FF)" => te("Transfer-Encoding: chunked\x0c\r\n"), bad_header;
        "TE: chunked\\x00" => te("Transfer-Encoding: chunked\x00\r\n"), bad_header;
        "HTTP/1.0 with TE and CL" => request(&format!("POST /healthz HTTP/1.0\r\nConnection: keep-alive\r\n{cl}Transfer-Encoding: chunked\r\n"), &tail), bad_te;
        "HTTP/1.0 keep-alive with TE" => request("POST /healthz HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n", &smuggled_chunk("{}")), bad_te;
        // Accepted spellings: the request is chunk data, never answered.
        "TE: cHuNkEd" => te("Transfer-Encoding: cHuNkEd\r\n"), Served(405);
        "TE:chunked (no white space)" => te("Transfer-Encoding:chunked\r\n"), Served(405);
        "TE:\\tchunked\\t (tabs as OWS)" => te("Transfer-Encoding:\tchunked\t\r\n"), Served(405);
        "TE: chunked , (empty list element)" => te("Transfer-Encoding: chunked ,\r\n"), Served(405);
    }
}

/// Content-Length values and duplicates, and bodies that are requests.
fn content_length_cases() -> Vec<Case> {
    use Expect::{Refused, Served};
    let invalid = Refused(400, "invalid_content_length");
    let conflicting = Refused(400, "conflicting_content_length");
    let bad_header = Refused(400, "invalid_header");
    let n = SMUGGLED.len();
    let mut cases = cases! {
        "Content-Length : N (space before the colon)" => post(&format!("Content-Length : {n}\r\n"), SMUGGLED), bad_header;
        "Content-Length: +N" => smuggled_length("+{}"), invalid;
        "Content-Length: -1" => smuggled_length("-1"), invalid;
        "Content-Length: 0xN (hex)" => smuggled_length(&format!("0x{n:x}")), invalid;
        "Content-Length: 1e3" => smuggled_length("1e3"), invalid;
        "Content-Length: 3.6e1" => smuggled_length("3.6e1"), invalid;
        "Content-Length: N, (trailing comma)" => smuggled_length("{},"), invalid;
        "Content-Length: ,N (leading comma)" => smuggled_length(",{}"), invalid;
        "Content-Length: 3 6 (space inside)" => smuggled_length("3 6"), invalid;
        "Content-Length: N with 20 digits (leading zeros)" => smuggled_length(&format!("{n:020}")), invalid;
        "Content-Length: 2^64" => smuggled_length("18446744073709551616"), invalid;
        "Content-Length: u64::MAX (20 digits)" => smuggled_length("18446744073709551615"), invalid;
        "Content-Length: 19 nines (over the body limit)" => smuggled_length("9999999999999999999"), Refused(413, "body_too_large");
        "Content-Length: N\\x0b" => smuggled_length("{}\x0b"), bad_header;
        "Content-Length: \\x00N" => smuggled_length("\x00{}"), bad_header;
        "Content-Length 0 and N" => post(&format!("Content-Length: 0\r\nContent-Length: {n}\r\n"), SMUGGLED), conflicting;
        "Content-Length N and 0" => post(&format!("Content-Length: {n}\r\nContent-Length: 0\r\n"), SMUGGLED), conflicting;
        "Content-Length: 0, N" => smuggled_length("0, {}"), conflicting;
        "Content-Length N and 0N" => post(&format!("Content-Length: {n}\r\nContent-Length: 0{n}\r\n"), SMUGGLED), Served(405);
        // Served: the request is the body, never answered.
        "Content-Length: N" => smuggled_length("{}"), Served(405);
        "Content-Length:N (no white space)" => post(&format!("Content-Length:{n}\r\n"), SMUGGLED), Served(405);
        "Content-Length:\\tN\\t (tabs as OWS)" => smuggled_length("\t{}\t"), Served(405);
        "Content-Length: 00N (leading zeros)" => smuggled_length("00{}"), Served(405);
        "Content-Length: N with 19 digits (leading zeros)" => smuggled_length(&format!("{n:019}")), Served(405);
        "Content-Length N twice" => post(&format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"), SMUGGLED), Served(405);
        "GET with Content-Length" => request(&format!("GET /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\n"), SMUGGLED), Served(200);
        "GET with a chunked body" => request("GET /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n", &smuggled_chunk("{}")), Served(200);
        "HTTP/1.0 keep-alive with Content-Length" => request(&format!("POST /healthz HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {n}\r\n"), SMUGGLED), Served(405);
    };
    cases.push(Case {
        head: true,
        ..case(
            "HEAD with Content-Length",
            request(
                &format!("HEAD /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: {n}\r\n"),
                SMUGGLED,
            ),
            Served(200),
        )
    });
    cases
}

/// Chunk sizes, chunk extensions, chunk data and trailers.
fn chunked_cases() -> Vec<Case> {
    use Expect::{Refused, Served};
    let size = Refused(400, "invalid_chunk_size");
    let overflow = Refused(400, "chunk_size_overflow");
    let line = Refused(400, "invalid_chunk_line");
    let data = Refused(400, "invalid_chunk_data");
    let trailer = Refused(400, "invalid_trailer");
    let hex = format!("{:x}", SMUGGLED.len());
    let first_chunk = chunk_with_size(&hex, SMUGGLED);
    let with_last = |last: &[u8]| post_chunked(&concat(&[&first_chunk, last]));
    let long_extension = smuggled_chunk(&format!("{{}};{}", "a".repeat(1100)));
    cases! {
        "chunk size 0xN" => post_chunked(&smuggled_chunk("0x{}")), size;
        "chunk size 0XN" => post_chunked(&smuggled_chunk("0X{}")), size;
        "chunk size with _ inside" => post_chunked(&smuggled_chunk(&format!("{}_{}", &hex[..1], &hex[1..]))), size;
        "chunk size with _ after it" => post_chunked(&smuggled_chunk("{}_")), size;
        "chunk size +N" => post_chunked(&smuggled_chunk("+{}")), size;
        "chunk size -1" => post_chunked(&smuggled_chunk("-1")), size;
        "chunk size after a space" => post_chunked(&smuggled_chunk(" {}")), size;
        "chunk size after a tab" => post_chunked(&smuggled_chunk("\t{}")), size;
        "chunk size then VT" => post_chunked(&smuggled_chunk("{}\x0b")), size;
        // 1 to a parser that stops at the space, 0x10 to one that drops it.
        "chunk size with a space inside" => post_chunked(&concat(&[b"1 0\r\nX\r\n", &smuggled_chunk("{}")])), size;
        "chunk size, a space, a word" => post_chunked(&smuggled_chunk("{} x")), size;
        "chunk size of 17 digits (overflow)" => post_chunked(&smuggled_chunk("10000000000000000")), overflow;
        "chunk size of 32 digits (overflow)" => post_chunked(&smuggled_chunk(&"f".repeat(32))), overflow;
        "chunk size u64::MAX (over the body limit)" => post_chunked(&smuggled_chunk(&"f".repeat(16))), Refused(413, "body_too_large");
        "chunk-ext with CR in a quoted string" => post_chunked(&smuggled_chunk("{};a=\"x\ry\"")), line;
        "chunk-ext ending in CR CR LF" => post_chunked(&smuggled_chunk("{};a\r")), line;
        "chunk-ext ending in a bare LF" => post_chunked(&concat(&[format!("{hex};a\n").as_bytes(), SMUGGLED, b"\r\n0\r\n\r\n"])), line;
        "chunk-ext with DEL" => post_chunked(&smuggled_chunk("{};a\x7f")), Refused(400, "invalid_chunk_extension");
        "chunk-ext over 1 KiB" => post_chunked(&long_extension), Refused(400, "chunk_extension_too_long");
        "no CRLF after chunk data" => post_chunked(&concat(&[format!("{hex}\r\n").as_bytes(), SMUGGLED, b"0\r\n\r\n"])), data;
        "chunk data longer than its size" => post_chunked(&concat(&[b"5\r\nhello", SMUGGLED, b"\r\n0\r\n\r\n"])), data;
        "chunk data ended by a bare LF" => post_chunked(&concat(&[format!("{hex}\r\n").as_bytes(), SMUGGLED, b"\n0\r\n\r\n"])), data;
        "last chunk ended by a bare LF" => with_last(b"0\n\r\n"), line;
        "trailer section ended by a bare LF" => with_last(b"0\r\nX: 1\r\n\n"), trailer;
        "trailer that is a request line" => with_last(b"0\r\nGET /smuggled HTTP/1.1\r\n\r\n"), trailer;
        "trailer folded" => with_last(b"0\r\nX: 1\r\n Transfer-Encoding: chunked\r\n\r\n"), trailer;
        "trailer with NUL" => with_last(b"0\r\nX: a\x00b\r\n\r\n"), trailer;
        "trailer with a bare CR" => with_last(b"0\r\nX: a\rContent-Length: 5\r\n\r\n"), trailer;
        // Served: the request is chunk data, never answered; trailers are discarded.
        "chunk size then white space" => post_chunked(&smuggled_chunk("{} \t")), Served(405);
        "chunk size, white space, an extension" => post_chunked(&smuggled_chunk("{} ;a=b")), Served(405);
        "chunk size of 24 digits (leading zeros)" => post_chunked(&smuggled_chunk(&format!("{hex:0>24}"))), Served(405);
        "chunk size in upper case" => post_chunked(&smuggled_chunk(&hex.to_uppercase())), Served(405);
        "chunk-ext with a quoted string" => post_chunked(&smuggled_chunk("{};name=\"v;a\\\"l=ue\";b")), Served(405);
        "last chunk with an extension" => with_last(b"0;ext=1\r\n\r\n"), Served(405);
        "Content-Length in the trailers" => with_last(b"0\r\nContent-Length: 50\r\n\r\n"), Served(405);
        "Transfer-Encoding in the trailers" => with_last(b"0\r\nTransfer-Encoding: chunked\r\n\r\n"), Served(405);
    }
}

/// Line endings and control characters in the head, request targets, Host.
fn head_cases() -> Vec<Case> {
    use Expect::{Refused, Served};
    let bad_header = Refused(400, "invalid_header");
    let bad_line = Refused(400, "invalid_request_line");
    let bad_host = Refused(400, "invalid_host");
    let n = SMUGGLED.len();
    let get = |fields: &str| format!("GET /plaintext HTTP/1.1\r\n{fields}\r\n").into_bytes();
    cases! {
        // A bare LF is a line terminator (RFC 9112 §2.2 MAY), wherever it is: one framing.
        "bare LF line endings" => b"GET /plaintext HTTP/1.1\nHost: t\n\n", Served(200);
        "bare LF before Content-Length" => request(&format!("POST /healthz HTTP/1.1\r\nHost: t\nContent-Length: {n}\r\n"), SMUGGLED), Served(405);
        "bare LF before Transfer-Encoding" => request("POST /healthz HTTP/1.1\r\nHost: t\nTransfer-Encoding: chunked\r\n", &smuggled_chunk("{}")), Served(405);
        // A bare CR is never one (RFC 9112 §2.2 MUST).
        "bare CR ending the request line" => b"GET /plaintext HTTP/1.1\rHost: t\r\n\r\n", bad_line;
        "bare CR before Content-Length" => request(&format!("POST /healthz HTTP/1.1\r\nHost: t\rContent-Length: {n}\r\n"), SMUGGLED), bad_header;
        "bare CR before Transfer-Encoding" => request("POST /healthz HTTP/1.1\r\nHost: t\rTransfer-Encoding: chunked\r\n", &smuggled_chunk("{}")), bad_header;
        "bare CR ending the head" => concat(&[b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r", SMUGGLED]), bad_header;
        "tab in a field value" => get("Host: t\r\nX-Tab: a\tb\r\n"), Served(200);
        "VT in a field value" => get("Host: t\r\nX-A: a\x0bb\r\n"), bad_header;
        "FF in a field value" => get("Host: t\r\nX-A: a\x0cb\r\n"), bad_header;
        "NUL in a field value" => get("Host: t\r\nX-A: a\x00b\r\n"), bad_header;
        "DEL in a field value" => get("Host: t\r\nX-A: a\x7fb\r\n"), bad_header;
        "ESC in a field value" => get("Host: t\r\nX-A: a\x1bb\r\n"), bad_header;
        "NUL in a field name" => get("Host: t\r\nX-\x00A: b\r\n"), bad_header;
        "NUL in the target" => b"GET /plain\x00text HTTP/1.1\r\nHost: t\r\n\r\n", bad_line;
        "tab in the target" => b"GET /plain\ttext HTTP/1.1\r\nHost: t\r\n\r\n", bad_line;
        "request in the target after a tab" => b"GET /plaintext\tHTTP/1.1\r\nHost: t\r\n\r\nGET\t/smuggled HTTP/1.1\r\nHost: t\r\n\r\n", bad_line;
        "non-UTF-8 byte in the target" => b"GET /\xff HTTP/1.1\r\nHost: t\r\n\r\n", bad_line;
        "lower-case method" => b"get /plaintext HTTP/1.1\r\nHost: t\r\n\r\n", Served(405);
        // Host (RFC 9112 §3.2, §3.2.2: absolute-form wins over Host, which must still be there).
        "absolute-form with another Host" => b"GET http://elsewhere.example/plaintext HTTP/1.1\r\nHost: t\r\n\r\n", Served(200);
        "absolute-form without Host" => b"GET http://t/plaintext HTTP/1.1\r\n\r\n", bad_host;
        "absolute-form with two Hosts" => b"GET http://t/plaintext HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", bad_host;
        "two Host fields differing in case" => get("Host: t\r\nhost: t\r\n"), bad_host;
        "Host with a space inside" => get("Host: a b\r\n"), bad_host;
        "Host with a tab inside" => get("Host: a\tb\r\n"), bad_host;
        "Host with surrounding OWS" => get("Host: \t t \t\r\n"), Served(200);
        "empty Host" => get("Host:\r\n"), Served(200);
        "Host folded" => get("Host:\r\n t\r\n"), bad_header;
        "Host : t (space before the colon)" => get("Host : t\r\n"), bad_header;
        "Host with NUL" => get("Host: t\x00\r\n"), bad_header;
        "HTTP/1.0 keep-alive with two Hosts" => b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\nHost: a\r\nHost: a\r\n\r\n", bad_host;
    }
}

#[test]
fn cl_te_smuggling() {
    let server = Server::start(1, &[]);
    run_on_one_shard(&server, &cl_te_cases());
}

#[test]
fn content_length_smuggling() {
    let server = Server::start(1, &[]);
    run_on_one_shard(&server, &content_length_cases());
}

#[test]
fn chunked_smuggling() {
    let server = Server::start(1, &[]);
    run_on_one_shard(&server, &chunked_cases());
}

#[test]
fn head_smuggling() {
    let server = Server::start(1, &[]);
    run_on_one_shard(&server, &head_cases());
}

/// The CL/TE and Content-Length cases on two shards, on each shard's own port in turn, pipelined between a chunked
/// signup (forwarded to the user's home shard, the other shard for about half of them) and
/// `GET /v1/cluster` (answered from both shards over the mesh).
#[test]
fn cl_te_smuggling_on_two_shards() {
    let server = Server::start(2, &[]);
    let mut cases = cl_te_cases();
    cases.extend(content_length_cases());
    let around = |index: usize| {
        let body = format!(r#"{{"username":"smuggler{index}","password":"correct horse battery"}}"#);
        let before = concat(&[
            b"POST /v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            &chunk_with_size(&format!("{:x}", body.len()), body.as_bytes()),
            b"0\r\n\r\n",
        ]);
        let around = Around {
            before,
            before_status: 201,
            canary: b"GET /v1/cluster HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
            canary_text: "\"shards\":2",
        };
        (server.shard_port(index % 2), around)
    };
    run_all(&cases, |index| server.shard_port((index + 1) % 2), around);
}

/// A body that does not end where it says swallows the requests after it; what the server
/// then reads as framing is refused, and nothing after it is answered.
#[test]
fn unterminated_bodies_swallow_the_canary() {
    let server = Server::start(1, &[]);
    let cases = [
        // No last chunk: the canary's request line is read as a chunk size.
        (post_chunked(b"5\r\nhello\r\n"), "invalid_chunk_size"),
        // A chunk size larger than what follows: the canary is chunk data, and no CRLF ends it.
        (
            post_chunked(&concat(&[b"40\r\n", SMUGGLED])),
            "invalid_chunk_data",
        ),
    ];
    let mut failures = Vec::new();
    for (raw, code) in &cases {
        let result = guarded(|| {
            let mut client = connect(server.port);
            client.send_lossy(&concat(&[BEFORE, raw, CANARY]));
            let before = read(&mut client, false, "the request before the case")?;
            if before.status != 200 {
                return Err(format!("the request before got {}", describe(&before)));
            }
            let response = read(&mut client, false, "the case")?;
            check_response(&response, Expect::Refused(400, code))?;
            check_closed(&mut client, "the refusal")
        });
        if let Err(error) = result {
            failures.push(format!("{}: {error}", show(raw)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RFC 9110 §9.3.2 and RFC 9112 §6.3 (1): a response to HEAD has no content, whatever its
/// `Content-Length`, refusals of a request whose head parsed as HEAD included (a regression: they
/// used to carry their JSON body, which a client reading a HEAD response takes for garbage).
#[test]
fn head_refusals_have_no_body() {
    let server = Server::start(1, &[]);
    for raw in [
        &b"HEAD /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: 9999999999\r\n\r\n"[..],
        b"HEAD /plaintext HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut client = connect(server.port);
        client.send_lossy(raw);
        let response = client.read_response_for(true);
        assert!(
            REFUSAL_STATUSES.contains(&response.status),
            "{}",
            describe(&response)
        );
        assert!(client.closed(), "bytes after the response to HEAD: {}", show(raw));
    }
}
