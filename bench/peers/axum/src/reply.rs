//! Building API responses (JSON, `X-Request-Id`, `Cache-Control: no-store`, replay marker) and the
//! small per-request helpers every route uses: request ids, random ids, timestamps.
//!
//! It must never touch the state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use crate::error::ApiError;

/// Longest client `X-Request-Id` echoed back; a longer or otherwise invalid one is replaced.
const REQUEST_ID_BYTES_MAX: usize = 128;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Generated request ids: a random prefix per process plus a counter.
static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);
static REQUEST_ID_PREFIX: OnceLock<u64> = OnceLock::new();

/// The client's `X-Request-Id` if valid (1 to 128 of `[A-Za-z0-9._:-]`), else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    if let Some(value) = headers.get(&X_REQUEST_ID) {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= REQUEST_ID_BYTES_MAX
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if let (true, Ok(text)) = (valid, value.to_str()) {
            return text.to_string();
        }
    }
    let prefix = *REQUEST_ID_PREFIX.get_or_init(|| u64::from_le_bytes(random::<8>().unwrap_or_default()));
    let counter = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    format!(
        "req_{:016x}{:012x}",
        prefix.wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        counter & 0xffff_ffff_ffff
    )
}

/// A JSON response of an API route.
fn json(status: StatusCode, request_id: &str, body: Bytes, replayed: bool) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Tokens and account data must not be stored by caches (RFC 6749 §5.1).
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    }
    response
}

/// A successful answer of an API route, before it gets its request id.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// JSON body.
    pub body: Bytes,
    /// A stored answer sent again for an idempotency key (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl Reply {
    /// A fresh answer from a serializable value.
    pub fn new(status: StatusCode, value: &impl serde::Serialize) -> Reply {
        let body = serde_json::to_vec(value).expect("plain structs serialize");
        Reply {
            status,
            body: Bytes::from(body),
            replayed: false,
        }
    }
}

/// The response to an API route's outcome.
pub fn respond(outcome: Result<Reply, ApiError>, request_id: &str) -> Response {
    match outcome {
        Ok(reply) => json(reply.status, request_id, reply.body, reply.replayed),
        Err(failure) => error(&failure, request_id),
    }
}

/// The one place an error becomes a response.
pub fn error(error: &ApiError, request_id: &str) -> Response {
    let mut response = json(error.status, request_id, error.body(request_id), false);
    response.headers_mut().remove(CACHE_CONTROL);
    if error.bearer_challenge {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// `N` random bytes from the operating system.
pub fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|_| ApiError::internal("No randomness available."))?;
    Ok(bytes)
}

/// `prefix` followed by 24 random lowercase hex digits (96 bits).
pub fn random_id(prefix: &str) -> Result<String, ApiError> {
    Ok(format!("{prefix}{}", hex(&random::<12>()?)))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Now, as RFC 3339 UTC with milliseconds (`2026-11-28T10:22:45.123Z`), like shardpay.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_echo_valid_client_ids_only() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&headers), "abc-1");
        headers.insert("x-request-id", HeaderValue::from_static("has space"));
        let generated = request_id(&headers);
        assert!(
            generated.starts_with("req_") && generated.len() == 32,
            "{generated}"
        );
        assert_ne!(generated, request_id(&HeaderMap::new()));
    }

    #[test]
    fn ids_are_prefixed_hex() {
        let id = random_id("usr_").unwrap();
        assert_eq!(id.len(), 28);
        assert!(id[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
