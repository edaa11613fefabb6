//! Entry points of the cargo-fuzz targets in `fuzz/` (one function per target, each asserting its
//! invariants, not only "no panic"), the seeds of their corpora, and regression tests that replay
//! what they found. Not part of the server: hidden from the documentation, used by `fuzz/` and tests.
//!
//! - [`http_head`]: `parse_head` on arbitrary bytes, with the default limits and small ones.
//! - [`http_framing`]: the chunked decoder and the whole connection driver give the same result
//!   however the input is split across reads.
//! - [`json_bodies`]: every route's JSON request body through the routes' `parse_body`.
//! - [`wal_record`]: log frames and their records (bincode) from arbitrary bytes, and damage.
//! - [`wal_recovery`]: recovery of a shard directory built from a script of frames and damage.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Debug;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::json::parse_body;
use crate::auth::state::{Event as AuthEvent, RevokeReason, User};
use crate::config::Config;
use crate::http::chunked::{ChunkedDecoder, ChunkedError};
use crate::http::connection::scripted::{Quiet, Script};
use crate::http::connection::{serve, Settings};
use crate::http::parse::{parse_head, trim, Framing, Head, HeadLimits, Method, Version};
use crate::http::{Handler, Request, RequestError, Response};
use crate::payments::idempotency::{Change, Scope};
use crate::payments::ledger::{Currency, Event as LedgerEvent, Payment, Transfer};
use crate::slots::{Slot, UserId};
use crate::storage::disk::{segment_name, snapshot_name};
use crate::storage::frame::{self, Frame, HEADER_BYTES, PAYLOAD_BYTES_MAX};
use crate::storage::recovery::{recover, RecoveryError, Sink};
use crate::storage::{snapshot, Record};

// ---------------------------------------------------------------------------------------------
// http_head

/// The driver's settings with the default configuration.
fn default_settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| Settings::from_config(&Config::default()))
}

/// Small limits, so that short inputs reach every one of them.
fn small_settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| Settings {
        head: HeadLimits {
            request_line_bytes_max: 64,
            header_bytes_max: 256,
        },
        header_count_max: 8,
        body_bytes_max: 64,
        trailer_bytes_max: 32,
        response_buffer_bytes_max: 256,
        ..default_settings().clone()
    })
}

/// What `parse_head` made of some bytes, owned, so that outcomes of different inputs compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadOutcome {
    /// `Ok(None)`: more bytes needed.
    Partial,
    /// `Ok(Some(head))`.
    Head(OwnedHead),
    /// `Err(error)`.
    Refused(RequestError),
}

/// A [`Head`] with its borrowed parts copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedHead {
    method: Method,
    path: String,
    query: Option<String>,
    version: Version,
    headers: Vec<(String, Vec<u8>)>,
    length: usize,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses `bytes` with `slots` header slots; checks every head it accepts.
pub fn parse_owned(bytes: &[u8], limits: HeadLimits, slots: usize) -> HeadOutcome {
    let mut headers: Vec<MaybeUninit<httparse::Header<'_>>> =
        (0..slots).map(|_| MaybeUninit::uninit()).collect();
    match parse_head(bytes, &mut headers, limits) {
        Ok(None) => HeadOutcome::Partial,
        Err(error) => HeadOutcome::Refused(error),
        Ok(Some(head)) => {
            check_head(bytes, &head, limits);
            HeadOutcome::Head(OwnedHead {
                method: head.method,
                path: head.path.to_string(),
                query: head.query.map(str::to_string),
                version: head.version,
                headers: head
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), h.value.to_vec()))
                    .collect(),
                length: head.length,
                framing: head.framing,
                keep_alive: head.keep_alive,
                expect_continue: head.expect_continue,
            })
        }
    }
}

/// Bytes of the empty lines before the request line.
fn leading_empty_lines(bytes: &[u8]) -> usize {
    let mut start = 0;
    loop {
        if bytes[start..].starts_with(b"\r\n") {
            start += 2;
        } else if bytes[start..].starts_with(b"\n") {
            start += 1;
        } else {
            return start;
        }
    }
}

/// Everything an accepted head must satisfy.
fn check_head(bytes: &[u8], head: &Head<'_>, limits: HeadLimits) {
    assert!(
        head.length > 0 && head.length <= bytes.len(),
        "head length {} of {} bytes",
        head.length,
        bytes.len()
    );
    assert!(
        head.length <= limits.header_bytes_max,
        "head of {} bytes accepted",
        head.length
    );
    let raw = &bytes[..head.length];
    assert!(raw.ends_with(b"\n"), "a head ends with a line feed");
    let line = &raw[leading_empty_lines(raw)..];
    let line = &line[..line
        .iter()
        .position(|&b| b == b'\n')
        .expect("a complete head has lines")];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    assert!(
        line.len() <= limits.request_line_bytes_max,
        "request line of {} bytes accepted",
        line.len()
    );
    assert!(
        head.path.starts_with('/') || (head.path == "*" && head.method == Method::Options),
        "path {:?}",
        head.path
    );
    // Borrowed parts lie inside the head.
    let (base, end) = (raw.as_ptr() as usize, raw.as_ptr() as usize + raw.len());
    let inside = |piece: &[u8]| {
        piece.is_empty() || (piece.as_ptr() as usize >= base && piece.as_ptr() as usize + piece.len() <= end)
    };
    assert!(head.query.is_none_or(|query| inside(query.as_bytes())));
    for header in head.headers {
        assert!(
            inside(header.name.as_bytes()) && inside(header.value),
            "header outside the head"
        );
    }

    let named = |name: &'static str| {
        head.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let elements = |name: &'static str| named(name).flat_map(|h| h.value.split(|&b| b == b',')).map(trim);
    let lengths: Vec<Option<u64>> = elements("content-length").map(decimal).collect();
    let transfer_encoding = named("transfer-encoding").next().is_some();
    match head.framing {
        Framing::Chunked => {
            assert!(lengths.is_empty(), "chunked framing with a Content-Length");
            assert_eq!(head.version, Version::Http11, "chunked framing in HTTP/1.0");
            let codings: Vec<&[u8]> = elements("transfer-encoding").filter(|c| !c.is_empty()).collect();
            assert!(
                codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked"),
                "chunked framing from Transfer-Encoding {codings:?}"
            );
        }
        Framing::Length(length) => {
            assert!(!transfer_encoding, "a length with a Transfer-Encoding");
            assert!(length > 0, "Length(0) instead of Empty");
            assert!(!lengths.is_empty(), "a length without Content-Length");
            assert!(
                lengths.iter().all(|&l| l == Some(length)),
                "Length({length}) from {lengths:?}"
            );
        }
        Framing::Empty => {
            assert!(!transfer_encoding, "no body with a Transfer-Encoding");
            assert!(
                lengths.iter().all(|&l| l == Some(0)),
                "no body from Content-Length {lengths:?}"
            );
        }
    }
    let hosts = named("host").count();
    assert!(
        hosts <= 1 && (head.version == Version::Http10 || hosts == 1),
        "{hosts} Host fields"
    );
    let tokens: Vec<&[u8]> = elements("connection").collect();
    let close = tokens.iter().any(|t| t.eq_ignore_ascii_case(b"close"));
    let keep_alive = tokens.iter().any(|t| t.eq_ignore_ascii_case(b"keep-alive"));
    let expected = !close && (head.version == Version::Http11 || keep_alive);
    assert_eq!(head.keep_alive, expected, "keep-alive from {tokens:?}");
    let expects: Vec<&[u8]> = named("expect").map(|h| trim(h.value)).collect();
    assert!(
        expects.iter().all(|e| e.eq_ignore_ascii_case(b"100-continue")),
        "Expect {expects:?} accepted"
    );
    assert_eq!(head.expect_continue, !expects.is_empty());
}

/// `1*DIGIT` of at most 19 digits.
fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// The prefixes a server could have received first that matter: around every line ending and
/// every limit, and a few more.
fn cut_points(data: &[u8], limits: HeadLimits) -> Vec<usize> {
    let mut cuts = Vec::new();
    for (i, &b) in data.iter().enumerate() {
        if b == b'\r' || b == b'\n' {
            cuts.extend([i, i + 1]);
            if cuts.len() >= 256 {
                break;
            }
        }
    }
    let start = leading_empty_lines(data);
    for limit in [limits.request_line_bytes_max, limits.header_bytes_max] {
        cuts.extend((0..4).map(|d| start + limit + d));
    }
    cuts.extend((1..8).map(|k| data.len() * k / 8));
    cuts.retain(|&cut| cut < data.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Whether two outcomes are the same decision. Known and left as is (see the report of the
/// fuzzing work): the *reason* for refusing a malformed head may depend on bytes after the point
/// where it became malformed, because `classify_error` reads the whole request line (400 or 505)
/// and "too long first" measures everything buffered (414 or 431). So two refusals compare equal
/// when one of them is such a malformed-head reason and the other a malformed-head or size one.
fn same_decision(a: &HeadOutcome, b: &HeadOutcome) -> bool {
    match (a, b) {
        (HeadOutcome::Refused(x), HeadOutcome::Refused(y)) => same_refusal(*x, *y),
        _ => a == b,
    }
}

/// See [`same_decision`].
fn same_refusal(x: RequestError, y: RequestError) -> bool {
    let malformed = |e: RequestError| {
        matches!(
            e,
            RequestError::BadRequest("invalid_request_line" | "invalid_header")
                | RequestError::VersionNotSupported
        )
    };
    let size = |e: RequestError| matches!(e, RequestError::UriTooLong | RequestError::HeaderTooLarge);
    x == y || (malformed(x) && (malformed(y) || size(y))) || (malformed(y) && size(x))
}

/// Target `http_head`: arbitrary bytes as a request head, with the default limits and small ones.
/// Never panics; an accepted head satisfies [`check_head`]; the outcome is decided by the bytes
/// received so far and nothing after them: more bytes never change a decided outcome, and a
/// prefix is either undecided or decided the same way.
pub fn http_head(data: &[u8]) {
    for settings in [default_settings(), small_settings()] {
        let (limits, slots) = (settings.head, settings.header_count_max);
        let whole = parse_owned(data, limits, slots);
        if whole != HeadOutcome::Partial {
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            longer.extend_from_slice(data);
            let more = parse_owned(&longer, limits, slots);
            assert!(
                same_decision(&more, &whole),
                "bytes after a decided head changed the outcome ({limits:?}): {whole:?} became {more:?}"
            );
        }
        for cut in cut_points(data, limits) {
            let early = parse_owned(&data[..cut], limits, slots);
            if early != HeadOutcome::Partial {
                assert!(
                    same_decision(&early, &whole),
                    "the first {cut} bytes were decided otherwise ({limits:?}): {early:?}, not {whole:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// http_framing

/// An `http_framing` input: `[flags] [n] [n cut offsets, u16 LE] wire…`. Flag bit 0: small limits.
pub struct FramingInput<'a> {
    /// The small settings instead of the default ones.
    pub small: bool,
    /// Where reads end (sorted, deduplicated, inside the wire).
    pub cuts: Vec<usize>,
    /// The bytes the client sends.
    pub wire: &'a [u8],
}

impl<'a> FramingInput<'a> {
    /// Splits a fuzzer input into its parts.
    pub fn parse(data: &'a [u8]) -> Self {
        let flags = data.first().copied().unwrap_or(0);
        let count = usize::from(data.get(1).copied().unwrap_or(0) & 15);
        let offsets_end = (2 + 2 * count).min(data.len());
        let wire = &data[offsets_end.max(data.len().min(2))..];
        let mut cuts: Vec<usize> = data[data.len().min(2)..offsets_end]
            .chunks_exact(2)
            .map(|pair| usize::from(u16::from_le_bytes([pair[0], pair[1]])) % (wire.len() + 1))
            .filter(|&cut| cut > 0 && cut < wire.len())
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        FramingInput {
            small: flags & 1 == 1,
            cuts,
            wire,
        }
    }

    /// The encoded form of an input.
    pub fn encode(small: bool, cuts: &[u16], wire: &[u8]) -> Vec<u8> {
        assert!(cuts.len() < 16);
        let mut data = vec![u8::from(small), cuts.len() as u8];
        for cut in cuts {
            data.extend_from_slice(&cut.to_le_bytes());
        }
        data.extend_from_slice(wire);
        data
    }
}

/// The reads that deliver `wire` cut at `cuts`.
fn reads(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut reads = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&wire.len()]) {
        if end > start {
            reads.push(wire[start..end].to_vec());
            start = end;
        }
    }
    reads
}

type Decoded = (Result<Option<usize>, ChunkedError>, Vec<u8>);

/// Decodes a chunked body delivered by `reads` the way the connection driver does: decode all
/// bytes buffered so far; when more are needed, `rebase` and remove the consumed encoding from
/// the buffer. The length returned counts from the body's first byte.
fn decode_in_reads(reads: &[Vec<u8>], body_max: usize, trailer_max: usize) -> Decoded {
    let mut decoder = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut removed = 0;
    // The driver decodes once right after the head, before any body byte arrived.
    for read in std::iter::once(&[][..]).chain(reads.iter().map(Vec::as_slice)) {
        buffer.extend_from_slice(read);
        match decoder.decode(&buffer, &mut body, body_max, trailer_max) {
            Ok(Some(length)) => {
                assert!(
                    length <= buffer.len(),
                    "decoded {length} of {} bytes",
                    buffer.len()
                );
                return (Ok(Some(removed + length)), body);
            }
            Ok(None) => {
                let consumed = decoder.rebase();
                assert!(consumed <= buffer.len(), "rebase past the buffer");
                buffer.drain(..consumed);
                removed += consumed;
            }
            Err(error) => return (Err(error), body),
        }
    }
    (Ok(None), body)
}

/// The chunked decoder alone on `encoded`: the same outcome and body whole, in the given reads
/// and byte by byte; completion is decided exactly at the last byte of the encoding; the body
/// stays within its limit and survives re-encoding.
fn check_chunked(encoded: &[u8], cuts: &[usize], body_max: usize, trailer_max: usize) {
    let whole = decode_in_reads(&[encoded.to_vec()], body_max, trailer_max);
    assert!(
        whole.1.len() <= body_max,
        "body of {} bytes decoded",
        whole.1.len()
    );
    let split = decode_in_reads(&reads(encoded, cuts), body_max, trailer_max);
    assert_eq!(split, whole, "reads cut at {cuts:?} decoded otherwise");
    if encoded.len() <= 512 {
        let bytes: Vec<Vec<u8>> = encoded.iter().map(|&b| vec![b]).collect();
        assert_eq!(
            decode_in_reads(&bytes, body_max, trailer_max),
            whole,
            "byte by byte"
        );
    }
    if let (Ok(Some(length)), body) = &whole {
        let exact = decode_in_reads(&[encoded[..*length].to_vec()], body_max, trailer_max);
        assert_eq!(&exact, &whole, "the encoding's own bytes decide otherwise");
        let short = decode_in_reads(&[encoded[..length - 1].to_vec()], body_max, trailer_max);
        assert_eq!(short.0, Ok(None), "complete before the last byte");
        let mut again = Vec::new();
        if !body.is_empty() {
            again.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            again.extend_from_slice(body);
            again.extend_from_slice(b"\r\n");
        }
        again.extend_from_slice(b"0\r\n\r\n");
        let round = decode_in_reads(&[again.clone()], body_max, trailer_max);
        assert_eq!(round, (Ok(Some(again.len())), body.clone()), "re-encoded body");
    }
}

/// What the handler saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Request {
        method: Method,
        path: String,
        query: Option<String>,
        version: Version,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
    Refused(RequestError, Option<Vec<u8>>),
}

/// Answers every request with its method, path and body, and records it.
struct Echo {
    seen: RefCell<Vec<Seen>>,
}

impl Handler for Echo {
    async fn handle<'a>(&'a self, request: &'a Request<'a>, response: &'a mut Response<'_>) {
        self.seen.borrow_mut().push(Seen::Request {
            method: request.method,
            path: request.path.to_string(),
            query: request.query.map(str::to_string),
            version: request.version,
            headers: request
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
            body: request.body.to_vec(),
        });
        let mut body = format!("{} {} ", request.method.as_str(), request.path).into_bytes();
        body.extend_from_slice(request.body);
        response.send(200, "text/plain", &[], &body);
    }

    fn reject(&self, error: RequestError, request_id: Option<&[u8]>, response: &mut Response<'_>) {
        self.seen
            .borrow_mut()
            .push(Seen::Refused(error, request_id.map(<[u8]>::to_vec)));
        // The same answer to every refusal: which refusal it was is compared through `seen`.
        response.send(400, "text/plain", &[], b"refused");
    }
}

impl Seen {
    /// The same request, or refusals that compare equal by [`same_refusal`].
    fn same(&self, other: &Seen) -> bool {
        match (self, other) {
            (Seen::Refused(x, x_id), Seen::Refused(y, y_id)) => x_id == y_id && same_refusal(*x, *y),
            _ => self == other,
        }
    }
}

type Conversation = (Vec<u8>, Vec<Seen>, bool);

/// Both connections wrote the same, closed the same way, and their handlers saw the same.
fn same_conversation(a: &Conversation, b: &Conversation) -> bool {
    a.0 == b.0 && a.2 == b.2 && a.1.len() == b.1.len() && a.1.iter().zip(&b.1).all(|(x, y)| x.same(y))
}

/// The interim response, which is sent only when a body is still to come after a read.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a connection fed `reads` wrote (without interim responses), what its handler saw, and
/// whether it closed.
fn converse(reads: Vec<Vec<u8>>, settings: &Settings) -> Conversation {
    let mut script = Script::new(reads);
    let echo = Echo {
        seen: RefCell::new(Vec::new()),
    };
    futures_lite::future::block_on(serve(&mut script, &echo, &Quiet, settings));
    let mut written = Vec::with_capacity(script.written.len());
    let mut rest = &script.written[..];
    while let Some(at) = rest.windows(CONTINUE.len()).position(|w| w == CONTINUE) {
        written.extend_from_slice(&rest[..at]);
        rest = &rest[at + CONTINUE.len()..];
    }
    written.extend_from_slice(rest);
    (written, echo.seen.into_inner(), script.shut)
}

/// Target `http_framing`: the wire as a chunked body for the decoder alone, and as a whole
/// connection's input for the driver (`http::connection::serve` with an echo handler). The
/// decoder gives the same body or error however the bytes are split into reads (with the
/// driver's `rebase` protocol); the driver sends the same responses (apart from `100 Continue`,
/// which depends on timing by design), hands the same requests to its handler and closes the
/// same way, whether the wire arrives in one read, in the fuzzer's reads, or byte by byte.
pub fn http_framing(data: &[u8]) {
    let input = FramingInput::parse(data);
    let settings = if input.small {
        small_settings()
    } else {
        default_settings()
    };
    check_chunked(
        input.wire,
        &input.cuts,
        settings.body_bytes_max,
        settings.trailer_bytes_max,
    );
    let whole = converse(vec![input.wire.to_vec()], settings);
    let split = converse(reads(input.wire, &input.cuts), settings);
    assert!(
        same_conversation(&split, &whole),
        "reads cut at {:?} were answered otherwise:\n{split:?}\nnot\n{whole:?}",
        input.cuts
    );
    if input.wire.len() <= 256 {
        let bytes = input.wire.iter().map(|&b| vec![b]).collect();
        let trickled = converse(bytes, settings);
        assert!(
            same_conversation(&trickled, &whole),
            "byte by byte:\n{trickled:?}\nnot\n{whole:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// json_bodies

/// Mirrors of the routes' request body types, which are private to `src/api`: the same fields
/// and serde attributes, plus `Serialize` and `PartialEq` for the round trip.
pub mod bodies {
    use serde::{Deserialize, Serialize};

    /// `POST /v1/users`, `POST /v1/sessions` (`api::auth::Credentials`).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Credentials {
        pub username: String,
        pub password: String,
    }

    /// `POST /v1/sessions/refresh` (`api::auth::RefreshBody`).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RefreshBody {
        pub refresh_token: String,
    }

    /// `POST /v1/deposits` (`api::money::DepositRequest`).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DepositRequest {
        pub user_id: String,
        pub amount: serde_json::Number,
        pub currency: String,
    }

    /// `POST /v1/payments` (`api::payments::PayRequest`).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PayRequest {
        pub to: String,
        pub amount: serde_json::Number,
        pub currency: String,
        #[serde(default)]
        pub description: Option<String>,
    }

    /// `POST /v1/payments/{id}/refunds` (`api::payments::RefundRequest`).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RefundRequest {
        #[serde(default)]
        pub amount: Option<serde_json::Number>,
    }
}

/// The checks the routes apply next to a decoded field, through their public parts.
fn check_currency(code: &str) {
    if let Some(currency) = Currency::parse(code) {
        assert_eq!(currency.as_str(), code);
    }
}

fn check_user_id(text: &str) {
    if let Some(id) = UserId::parse(text) {
        assert_eq!(id.as_str(), text);
        assert!(Slot::new(id.slot().number()).is_some());
    }
}

fn check_amount(number: &serde_json::Number) {
    let _ = (number.as_u64(), number.as_i64(), number.as_f64());
}

/// One route's body: `parse_body` never panics; its errors are the contract's (400
/// `invalid_json`, or 422 naming the field); what decodes was JSON, passes the route's next
/// checks without panicking, and re-encodes to JSON that decodes to the same value.
fn route_body<T>(data: &[u8], is_json: bool, fields: &[&str], check: impl Fn(&T))
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    match parse_body::<T>(data) {
        Ok(value) => {
            assert!(is_json, "decoded from bytes that are not JSON: {value:?}");
            check(&value);
            let again = serde_json::to_vec(&value).expect("re-encodes");
            match parse_body::<T>(&again) {
                Ok(copy) => assert!(
                    copy == value || same_json(&to_json(&copy), &to_json(&value)),
                    "re-encoded as {:?}: {copy:?}, not {value:?}",
                    String::from_utf8_lossy(&again)
                ),
                Err(error) => panic!(
                    "re-encoded {:?} refused: {error:?}",
                    String::from_utf8_lossy(&again)
                ),
            }
        }
        Err(error) => match (error.status, error.code) {
            (400, "invalid_json") => {
                // Known, in `src/api` (reported): serde's derived structs also decode from a JSON
                // array of the fields' values, and an array with more elements than the
                // struct has fields is a syntax error ("trailing characters") to serde_json.
                let array = data.trim_ascii_start().starts_with(b"[");
                assert!(!is_json || array, "valid JSON refused as invalid_json");
                assert!(error.param.is_none());
            }
            (422, "unknown_field") => assert!(error.param.is_some(), "unknown_field without param"),
            (422, "missing_field") => {
                let param = error.param.as_deref().expect("missing_field names the field");
                assert!(fields.contains(&param), "missing field {param:?} is not a field");
            }
            (422, "invalid_type") => assert!(error.param.is_none()),
            (status, code) => panic!("unexpected refusal {status} {code}"),
        },
    }
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("plain structs")
}

/// Equal, but for floating-point numbers, which may move by an ulp: serde_json (without its
/// `float_roundtrip` feature) parses long decimals to a neighbour of the nearest double, so
/// decode → encode → decode need not return the same double. The routes take integers only
/// (`amount_of` refuses any other number), so this is no concern of theirs.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() && y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| same_json(x, y)))
        }
        _ => a == b,
    }
}

/// Target `json_bodies`: arbitrary bytes as the body of every route that takes JSON.
pub fn json_bodies(data: &[u8]) {
    use bodies::*;
    let is_json = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    route_body::<Credentials>(data, is_json, &["username", "password"], |_| {});
    route_body::<RefreshBody>(data, is_json, &["refresh_token"], |_| {});
    route_body::<DepositRequest>(data, is_json, &["user_id", "amount", "currency"], |body| {
        check_user_id(&body.user_id);
        check_amount(&body.amount);
        check_currency(&body.currency);
    });
    route_body::<PayRequest>(data, is_json, &["to", "amount", "currency"], |body| {
        check_user_id(&body.to);
        check_amount(&body.amount);
        check_currency(&body.currency);
        let _ = body.description.as_ref().map(|d| d.chars().count());
    });
    route_body::<RefundRequest>(data, is_json, &[], |body| {
        if let Some(amount) = &body.amount {
            check_amount(amount);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// wal_record

/// Decodes a payload as the log does (`Frame::records`).
fn payload_records(payload: &[u8]) -> Option<Vec<Record>> {
    Frame {
        seq: 1,
        batch: 1,
        payload,
    }
    .records()
}

/// A frame read back is the frame written, or no frame at all.
fn check_frame(bytes: &[u8], seq: u64, batch: u64, records: &[Record]) {
    let frame = frame::decode(bytes).expect("a frame just encoded decodes");
    assert_eq!((frame.seq, frame.batch, frame.size()), (seq, batch, bytes.len()));
    assert_eq!(frame.records().as_deref(), Some(records));
    for cut in 0..bytes.len() {
        assert!(
            frame::decode(&bytes[..cut]).is_none(),
            "a frame cut at {cut} decodes"
        );
    }
    // Damage to any one byte: the header bytes, and positions spread over the payload.
    let step = (bytes.len() / 64).max(1);
    let positions = (0..HEADER_BYTES)
        .chain((HEADER_BYTES..bytes.len()).step_by(step))
        .chain([bytes.len() - 1]);
    for position in positions {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut damaged = bytes.to_vec();
            damaged[position] ^= flip;
            if let Some(found) = frame::decode(&damaged) {
                assert_eq!(
                    (found.seq, found.batch, found.records().as_deref()),
                    (seq, batch, Some(records)),
                    "byte {position} ^ {flip:#x} went unnoticed"
                );
            }
        }
    }
}

/// Target `wal_record`: arbitrary bytes as a frame, and as a frame's payload. Never panics and
/// never allocates without bound (the fuzz target's allocator refuses large allocations); a
/// frame that decodes re-encodes to the same frame; records that decode are framed, read back
/// the same, and any single damaged byte or cut is detected.
pub fn wal_record(data: &[u8]) {
    if let Some(found) = frame::decode(data) {
        let len = u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) as usize;
        assert_eq!(found.payload.len(), len);
        assert!((1..=PAYLOAD_BYTES_MAX).contains(&len) && found.size() <= data.len());
        if let Some(records) = found.records() {
            let mut again = Vec::new();
            frame::encode(&mut again, found.seq, found.batch, &records).expect("re-encodes");
            // bincode accepts trailing bytes: the records are a prefix of the payload.
            assert!(
                found.payload.starts_with(&again[HEADER_BYTES..]),
                "re-encoded otherwise"
            );
            check_frame(&again, found.seq, found.batch, &records);
        }
    }
    if let Some(records) = payload_records(data) {
        let seq = u64::from(crc32c::crc32c(data)) + 1;
        let mut bytes = Vec::new();
        frame::encode(
            &mut bytes,
            seq,
            seq.saturating_sub(data.len() as u64).max(1),
            &records,
        )
        .expect("fits in a frame");
        let batch = frame::decode(&bytes).expect("decodes").batch;
        assert!(
            data.starts_with(&bytes[HEADER_BYTES..]),
            "records re-encode otherwise"
        );
        check_frame(&bytes, seq, batch, &records);
    }
}

// ---------------------------------------------------------------------------------------------
// wal_recovery

/// Records for frame `seq`, varied by `variant`.
pub fn sample_records(seq: u64, variant: u8) -> Vec<Record> {
    let slot = Slot::new((seq as u32).wrapping_mul(2654435761) % 16384).expect("in range");
    let user = UserId::new(slot, [variant; 10]);
    let other = UserId::new(slot, [variant.wrapping_add(1); 10]);
    let currency = Currency::parse("USD").expect("a currency");
    let payment = Payment {
        id: format!("pay_{seq:024x}"),
        from: user.clone(),
        to: other.clone(),
        amount: 100 + seq,
        currency,
        description: (variant % 2 == 0).then(|| format!("lunch {seq}")),
        amount_refunded: 0,
        created_at_ms: 1_700_000_000_000 + seq,
    };
    let key = format!("key-{seq}-{variant}");
    let all = vec![
        Record::Auth(AuthEvent::UserCreated(User {
            id: user.clone(),
            username: format!("user{seq}"),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string(),
            created_at_ms: 1_700_000_000_000 + seq,
        })),
        Record::Auth(AuthEvent::SessionCreated {
            user: user.clone(),
            session: format!("ses_{seq}"),
            refresh_hash: [variant; 32],
            refresh_expires_at_ms: 1_800_000_000_000,
            created_at_ms: 1_700_000_000_000,
        }),
        Record::Auth(AuthEvent::SessionRevoked {
            session: format!("ses_{seq}"),
            reason: RevokeReason::RefreshTokenReused,
        }),
        Record::Ledger(LedgerEvent::Deposited {
            id: format!("dep_{seq}"),
            user: user.clone(),
            amount: 5000,
            currency,
        }),
        Record::Ledger(LedgerEvent::PaidLocally(payment.clone())),
        Record::Ledger(LedgerEvent::Reserved(Transfer::Payment(payment.clone()))),
        Record::Ledger(LedgerEvent::RefundReserved {
            refund: format!("ref_{seq}"),
            payment: payment.id.clone(),
            amount: 1,
            transfer: Transfer::Refund {
                refund: format!("ref_{seq}"),
                payment: payment.id.clone(),
                to: user.clone(),
                amount: 1,
                currency,
            },
        }),
        Record::Ledger(LedgerEvent::Settled {
            transfer: payment.id.clone(),
        }),
        Record::Idempotency(Change::Claimed {
            scope: Scope::User(user.clone()),
            key: key.clone(),
            fingerprint: [seq as u8; 32],
            expires_at_ms: 1_700_000_086_400,
        }),
        Record::Idempotency(Change::Completed {
            scope: Scope::Admin,
            key: key.clone(),
            status: 201,
            body: br#"{"id":"dep_1"}"#.to_vec(),
        }),
        Record::Idempotency(Change::Released {
            scope: Scope::Admin,
            key: key.clone(),
        }),
        Record::Pending {
            transfer: payment.id.clone(),
            scope: Scope::User(other),
            key,
            answer: b"{}".to_vec(),
        },
    ];
    let count = 1 + usize::from(variant % 3);
    let first = (seq as usize + usize::from(variant)) % all.len();
    all.into_iter().cycle().skip(first).take(count).collect()
}

/// A directory of its own for one recovery run (on tmpfs when there is one: recovery syncs),
/// removed afterwards; its own, so that tests running in parallel do not share it.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> ScratchDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("shardpay-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What recovery handed over.
#[derive(Debug, Default, PartialEq)]
struct Replayed {
    snapshot: Option<Vec<u8>>,
    frames: Vec<Vec<Record>>,
}

impl Sink for Replayed {
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.snapshot = Some(snapshot.to_vec());
        Ok(())
    }

    fn replay(&mut self, records: Vec<Record>) {
        self.frames.push(records);
    }
}

/// A shard directory built from a `wal_recovery` script, and what recovery must make of it.
#[derive(Debug, Default)]
pub struct LogScript {
    /// Segment files: first sequence number of the name, bytes.
    pub segments: Vec<(u64, Vec<u8>)>,
    /// Snapshot files: sequence number, bytes.
    pub snapshots: Vec<(u64, Vec<u8>)>,
    /// Every frame written, by sequence number.
    pub written: HashMap<u64, Vec<Record>>,
    /// The last frame written.
    pub last_seq: u64,
    /// Nothing but whole frames, in order, in properly named segments, zeroes only at the end
    /// of a segment, and intact snapshots.
    pub clean: bool,
    /// The newest intact snapshot.
    pub snapshot_seq: u64,
}

impl LogScript {
    /// Reads a script: each operation is a byte (its low 3 bits the kind) and its arguments.
    /// 0-2: a frame (next sequence number; bit 3: it starts a batch; bits 4-5 vary the records);
    /// 3: zeroes (next byte × 8); 4: garbage (the next byte % 64 bytes of the script itself);
    /// 5: damage one byte (2 bytes of position, 1 of xor); 6: cut the end (next byte bytes);
    /// 7: a new segment (bit 3: misnamed, at the next byte) or, with bit 4, a snapshot of
    /// everything so far (bit 5: damaged).
    pub fn parse(data: &[u8]) -> LogScript {
        let mut script = LogScript {
            segments: vec![(1, Vec::new())],
            clean: true,
            ..LogScript::default()
        };
        let mut bytes = data.iter().copied();
        let mut batch = 1;
        let mut zeroes_at_end = false;
        while let Some(op) = bytes.next() {
            let segment = &mut script.segments.last_mut().expect("a segment").1;
            match op & 7 {
                0..=2 => {
                    let seq = script.last_seq + 1;
                    if op & 8 != 0 {
                        batch = seq;
                    }
                    let records = sample_records(seq, (op >> 4) & 3);
                    frame::encode(segment, seq, batch, &records).expect("fits");
                    script.written.insert(seq, records);
                    script.last_seq = seq;
                    // Zeroes before a frame are damage, not the end of the segment.
                    script.clean &= !zeroes_at_end;
                    zeroes_at_end = false;
                }
                3 => {
                    let count = usize::from(bytes.next().unwrap_or(1)) * 8;
                    segment.resize(segment.len() + count, 0);
                    zeroes_at_end = true;
                }
                4 => {
                    let count = usize::from(bytes.next().unwrap_or(0) % 64);
                    segment.extend(bytes.by_ref().take(count));
                    script.clean = false;
                }
                5 => {
                    let position = u16::from_le_bytes([bytes.next().unwrap_or(0), bytes.next().unwrap_or(0)]);
                    let flip = bytes.next().unwrap_or(1) | 1;
                    if !segment.is_empty() {
                        let position = usize::from(position) % segment.len();
                        segment[position] ^= flip;
                        script.clean = false;
                    }
                }
                6 => {
                    let count = usize::from(bytes.next().unwrap_or(1));
                    if count > 0 && !segment.is_empty() {
                        segment.truncate(segment.len().saturating_sub(count));
                        script.clean = false;
                    }
                }
                _ if op & 16 != 0 => {
                    let body = vec![op; usize::from(op >> 5)];
                    let mut file = snapshot::encode(script.last_seq, &body);
                    if op & 32 != 0 {
                        let last = file.len() - 1;
                        file[last] ^= 0x55;
                        script.clean = false;
                    } else if script.last_seq > 0 {
                        script.snapshot_seq = script.snapshot_seq.max(script.last_seq);
                    }
                    if script.last_seq > 0 {
                        script.snapshots.retain(|(seq, _)| *seq != script.last_seq);
                        script.snapshots.push((script.last_seq, file));
                    }
                }
                _ => {
                    let first = if op & 8 != 0 {
                        script.clean = false;
                        u64::from(bytes.next().unwrap_or(0))
                    } else {
                        script.last_seq + 1
                    };
                    if script.segments.iter().all(|(seq, _)| *seq != first) {
                        script.segments.push((first, Vec::new()));
                        zeroes_at_end = false;
                    } else {
                        script.clean = false;
                    }
                }
            }
        }
        script
    }

    /// Writes the directory.
    pub fn write(&self, dir: &Path) {
        for (first, bytes) in &self.segments {
            std::fs::write(dir.join(segment_name(*first)), bytes).expect("write a segment");
        }
        for (seq, bytes) in &self.snapshots {
            std::fs::write(dir.join(snapshot_name(*seq)), bytes).expect("write a snapshot");
        }
    }
}

fn recover_into(
    dir: &Path,
    repair: bool,
) -> Result<(Replayed, crate::storage::recovery::Recovered), RecoveryError> {
    let mut replayed = Replayed::default();
    let recovered = recover(dir, repair, &mut replayed)?;
    Ok((replayed, recovered))
}

/// Target `wal_recovery`: recovery of a directory built by a [`LogScript`]. Never panics and
/// never fails on I/O; replays consecutive frames, each exactly as written; a clean log is
/// replayed whole with nothing truncated; after a recovery (with `--repair` when it refused
/// because acknowledged frames were damaged) the directory is clean: a second recovery agrees
/// and truncates nothing.
pub fn wal_recovery(data: &[u8]) {
    let script = LogScript::parse(data);
    let scratch = ScratchDir::new();
    let dir = scratch.0.as_path();
    script.write(dir);
    let repair = data.first().is_some_and(|op| op & 0x80 != 0);
    let first = match recover_into(dir, repair) {
        Ok(first) => first,
        Err(RecoveryError::Damaged { .. }) if !repair && !script.clean => {
            recover_into(dir, true).unwrap_or_else(|error| panic!("--repair failed: {error}"))
        }
        Err(RecoveryError::Undecodable { .. } | RecoveryError::Damaged { .. }) if !script.clean => {
            // Garbage that copied a whole valid frame from the script: nothing more to check.
            return;
        }
        Err(error) => panic!("recovery failed: {error}"),
    };
    let (replayed, recovered) = &first;
    let from = recovered.snapshot_seq;
    assert_eq!(recovered.frames, replayed.frames.len() as u64);
    assert_eq!(recovered.last_seq, from + recovered.frames);
    assert_eq!(replayed.snapshot.is_some(), from > 0);
    for (seq, records) in (from + 1..).zip(&replayed.frames) {
        assert_eq!(
            script.written.get(&seq),
            Some(records),
            "frame {seq} replayed otherwise"
        );
    }
    if script.clean {
        assert_eq!(from, script.snapshot_seq, "the newest snapshot was not used");
        assert_eq!(
            recovered.last_seq,
            script.last_seq.max(from),
            "a clean log was not replayed whole"
        );
        assert_eq!(recovered.truncated, None, "a clean log was truncated");
    }
    let again = recover_into(dir, false).unwrap_or_else(|error| panic!("second recovery failed: {error}"));
    assert_eq!(again.0, first.0, "a second recovery replayed otherwise");
    assert_eq!(again.1.truncated, None, "a second recovery truncated");
    assert_eq!(
        (again.1.last_seq, again.1.snapshot_seq, &again.1.files),
        (recovered.last_seq, recovered.snapshot_seq, &recovered.files)
    );
}

// ---------------------------------------------------------------------------------------------
// seeds

/// Seed inputs for each target: `(target, input)`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let heads: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/me?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nAuthorization: Bearer abc\r\nX-Request-Id: r1\r\n\r\n",
        b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 52\r\n\r\n",
        b"POST /v1/payments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nIdempotency-Key: k\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5, 5\r\n\r\n",
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"\r\n\nOPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for head in heads {
        seeds.push(("http_head", head.to_vec()));
    }
    let wires: &[&[u8]] = &[
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello worldGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: v\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabcHEAD /d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"4\r\nWiki\r\n5;a=b\r\npedia\r\n0\r\nX: y\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\n",
    ];
    for (i, wire) in wires.iter().enumerate() {
        let cut = (wire.len() / 2) as u16;
        seeds.push(("http_framing", FramingInput::encode(i % 2 == 1, &[], wire)));
        seeds.push((
            "http_framing",
            FramingInput::encode(i % 2 == 0, &[cut, cut + 3, 17], wire),
        ));
    }
    let json: &[&[u8]] = &[
        br#"{"username":"alice","password":"correct horse battery"}"#,
        br#"{"refresh_token":"rt_02edAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        br#"{"user_id":"usr_02ed0123456789abcdef0123","amount":5000,"currency":"USD"}"#,
        br#"{"to":"bob","amount":100,"currency":"EUR","description":"lunch \u00e9"}"#,
        br#"{"to":"usr_02ed0123456789abcdef0123","amount":1.5e3,"currency":"usd","description":null}"#,
        br#"{"amount":50}"#,
        b"{}",
        br#"{"username":"a","password":"b","x":1}"#,
        br#"{"amount":-1}"#,
        b"[1,2,3]",
    ];
    for body in json {
        seeds.push(("json_bodies", body.to_vec()));
    }
    for seq in 1..6u64 {
        let records = sample_records(seq, seq as u8);
        let mut frame = Vec::new();
        frame::encode(&mut frame, seq, 1, &records).expect("fits");
        seeds.push(("wal_record", frame.clone()));
        seeds.push(("wal_record", frame[HEADER_BYTES..].to_vec()));
    }
    let scripts: &[&[u8]] = &[
        &[0, 1, 2, 0x08, 0x10, 0x20, 3, 4],
        &[0, 0, 0x0f, 0x08, 0, 7, 0x08, 1, 3, 2],
        &[0x08, 0, 0x17, 0x18, 0, 0, 5, 30, 0, 0x40, 0x08, 0],
        &[0x80, 0x08, 0, 0x08, 0, 6, 9, 0x08, 0],
        &[0x08, 0, 4, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x08, 0],
        &[0x08, 0x18, 0x38, 0x37, 0, 0x08, 0x07, 0x08],
    ];
    for script in scripts {
        seeds.push(("wal_recovery", script.to_vec()));
    }
    seeds
}

/// Runs the target named `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "http_head" => http_head(data),
        "http_framing" => http_framing(data),
        "json_bodies" => json_bodies(data),
        "wal_record" => wal_record(data),
        "wal_recovery" => wal_recovery(data),
        other => panic!("no fuzz target {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_passes_its_target() {
        for (target, data) in seeds() {
            // Shown when the test fails: the seed that failed is the last one printed.
            eprintln!("{target}: {:?}", String::from_utf8_lossy(&data));
            run(target, &data);
        }
    }

    #[test]
    fn clean_scripts_are_clean() {
        let script = LogScript::parse(&[0, 1, 2, 0x08, 0x10, 0x20, 3, 4]);
        assert!(script.clean);
        assert_eq!(script.last_seq, 6);
        let damaged = LogScript::parse(&[0, 1, 5, 3, 0, 1]);
        assert!(!damaged.clean);
        // Zeroes, a cut of nothing, then a frame: still damage (the fuzzer's first finding was
        // this mistake of the script, not of recovery).
        let zeroes_then_frame = LogScript::parse(&[0x08, 0, 0xfb, 5, 0x1e, 0, 0x40]);
        assert!(!zeroes_then_frame.clean);
    }

    /// Every input of the kept corpora (`fuzz/corpus/<target>/`) still passes its target.
    #[test]
    fn the_corpora_pass_their_targets() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for target in [
            "http_head",
            "http_framing",
            "json_bodies",
            "wal_record",
            "wal_recovery",
        ] {
            let Ok(entries) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                eprintln!("{}", path.display());
                run(target, &data);
            }
        }
    }

    /// What the targets found, replayed through them (each also has a unit test in its module).
    #[test]
    fn regressions() {
        // parse.rs: a longest request line was 414 when a read ended right after its CR.
        let longest = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(64 - 14));
        http_head(longest.as_bytes());
        http_framing(&FramingInput::encode(true, &[65], longest.as_bytes()));
        // parse.rs: a too-long line in a too-large head (or one with too many fields) was 431
        // when whole, 414 when a read ended inside it.
        let large = format!(
            "GET /{} HTTP/1.1\r\nX-A: {}\r\n\r\n",
            "a".repeat(60),
            "b".repeat(300)
        );
        http_head(large.as_bytes());
        let fields: String = (0..10).map(|i| format!("X-{i}: a\r\n")).collect();
        let many = format!("GET /{} HTTP/1.1\r\n{fields}\r\n", "a".repeat(60));
        http_head(many.as_bytes());
        http_framing(&FramingInput::encode(true, &[70], many.as_bytes()));
    }

    /// json_bodies: a 101-digit number parses to a neighbour of the nearest double, so its
    /// re-encoding parses one ulp away (serde_json's float parsing, not a route's concern).
    #[test]
    fn long_decimals_may_move_by_an_ulp() {
        json_bodies(format!("{{\"amount\":{}}}", "3".repeat(101)).as_bytes());
        json_bodies(b"[\r33333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333\r]");
    }

    /// Writes the seeds into `fuzz/corpus/<target>/` (or `$SHARDPAY_FUZZ_CORPUS/<target>/`):
    /// `cargo test --lib fuzzing::tests::write_seeds -- --ignored --exact`.
    #[test]
    #[ignore = "writes files: run by scripts/fuzz.sh seeds"]
    fn write_seeds() {
        let root = std::env::var_os("SHARDPAY_FUZZ_CORPUS").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"),
            PathBuf::from,
        );
        for (i, (target, data)) in seeds().into_iter().enumerate() {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i:03}")), data).unwrap();
        }
    }
}
