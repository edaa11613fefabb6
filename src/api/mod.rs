//! The HTTP API: the route table, request ids, `X-Shard`, JSON in and out, and the handlers of
//! each route. One [`Api`] per shard implements the codec's [`Handler`].
//!
//! Handlers never block: anything that needs another shard goes through [`Shard::invoke_on`].
//! Errors become responses in exactly one place ([`Api::send_error`]).

pub mod error;
mod ops;
pub mod router;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::http::{Handler, Request, RequestError, Response};
use crate::shard::Shard;
use error::ApiError;
use router::{Match, Router};

/// Every route, in the order of [`ROUTE_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `GET /plaintext`
    Plaintext,
    /// `GET /json`
    Json,
    /// `GET /v1/cluster`
    Cluster,
    /// No route matched (404 / 405).
    Unmatched,
    /// Refused by the codec before routing.
    Rejected,
}

/// Route names as they appear in metrics, indexed by `Route as usize`.
pub const ROUTE_NAMES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/plaintext",
    "/json",
    "/v1/cluster",
    "unmatched",
    "rejected",
];

/// Longest client `X-Request-Id` echoed back; a longer or otherwise invalid one is replaced.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// The API of one shard.
pub struct Api {
    shard: Rc<Shard>,
    router: Router<Route>,
    /// `X-Shard` value, formatted once.
    shard_header: Vec<u8>,
    /// Random per process and shard, so generated request ids differ across restarts.
    request_id_prefix: u64,
    request_counter: Cell<u64>,
    /// Reused buffer for JSON bodies.
    scratch: RefCell<Vec<u8>>,
}

impl Api {
    /// The API served by `shard`.
    pub fn new(shard: Rc<Shard>) -> Api {
        let mut router = Router::default();
        router
            .add(crate::http::Method::Get, "/healthz", Route::Healthz)
            .add(crate::http::Method::Get, "/readyz", Route::Readyz)
            .add(crate::http::Method::Get, "/metrics", Route::Metrics)
            .add(crate::http::Method::Get, "/plaintext", Route::Plaintext)
            .add(crate::http::Method::Get, "/json", Route::Json)
            .add(crate::http::Method::Get, "/v1/cluster", Route::Cluster);
        let shard_header = shard.id().to_string().into_bytes();
        let request_id_prefix = boot_entropy() ^ (shard.id() as u64).rotate_left(48);
        Api {
            shard,
            router,
            shard_header,
            request_id_prefix,
            request_counter: Cell::new(0),
            scratch: RefCell::new(Vec::with_capacity(1024)),
        }
    }

    /// The client's request id if valid, else a new one, written into `out`.
    fn request_id<'b>(&self, client: Option<&'b [u8]>, out: &'b mut [u8; 32]) -> &'b str {
        if let Some(id) = client.and_then(valid_request_id) {
            return id;
        }
        let counter = self.request_counter.get().wrapping_add(1);
        self.request_counter.set(counter);
        let value = self
            .request_id_prefix
            .wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        out[..4].copy_from_slice(b"req_");
        hex16(value, &mut out[4..20]);
        hex16(counter, &mut out[20..32]);
        std::str::from_utf8(&out[..]).expect("ascii")
    }

    /// Sends a non-benchmark response: adds `X-Request-Id` and `X-Shard`.
    fn send(
        &self,
        response: &mut Response<'_>,
        request_id: &str,
        status: u16,
        content_type: &str,
        extra: &[(&str, &[u8])],
        body: &[u8],
    ) {
        let mut headers: [(&str, &[u8]); 6] = [("", b""); 6];
        headers[0] = ("X-Request-Id", request_id.as_bytes());
        headers[1] = ("X-Shard", &self.shard_header);
        let count = 2 + extra.len().min(4);
        headers[2..count].copy_from_slice(&extra[..count - 2]);
        response.send(status, content_type, &headers[..count], body);
    }

    /// The one place an error becomes a response.
    fn send_error(
        &self,
        response: &mut Response<'_>,
        request_id: &str,
        error: &ApiError,
        allow: Option<&str>,
    ) {
        let mut body = self.scratch.borrow_mut();
        body.clear();
        error::encode_body(error, request_id, &mut body);
        let mut retry = itoa::Buffer::new();
        let mut extra: [(&str, &[u8]); 2] = [("", b""); 2];
        let mut count = 0;
        if let Some(seconds) = error.retry_after_seconds {
            extra[count] = ("Retry-After", retry.format(seconds).as_bytes());
            count += 1;
        }
        if let Some(allow) = allow {
            extra[count] = ("Allow", allow.as_bytes());
            count += 1;
        }
        self.send(
            response,
            request_id,
            error.status,
            "application/json",
            &extra[..count],
            &body,
        );
    }
}

impl Handler for Api {
    async fn handle<'a>(&'a self, request: &'a Request<'a>, response: &'a mut Response<'_>) {
        let route = match self.router.find(request.method, request.path) {
            Match::Found(route, _params) => route,
            unmatched => {
                let (error, allow) = match unmatched {
                    Match::MethodNotAllowed(allow) => (ApiError::method_not_allowed(), Some(allow)),
                    _ => (ApiError::route_not_found(), None),
                };
                let mut id_buffer = [0u8; 32];
                let request_id = self.request_id(request.header("x-request-id"), &mut id_buffer);
                self.send_error(response, request_id, &error, allow);
                self.shard
                    .metrics
                    .count_request(Route::Unmatched as usize, response.status());
                return;
            }
        };
        match route {
            // TechEmpower's rules: only Server, Date, Content-Type and Content-Length.
            Route::Plaintext => response.send(200, "text/plain", &[], b"Hello, World!"),
            Route::Json => {
                let mut body = self.scratch.borrow_mut();
                body.clear();
                ops::write_json_hello(&mut body);
                response.send(200, "application/json", &[], &body);
            }
            _ => {
                let mut id_buffer = [0u8; 32];
                let request_id = self.request_id(request.header("x-request-id"), &mut id_buffer);
                let result = match route {
                    Route::Healthz => Ok(ops::Reply::text("ok")),
                    Route::Readyz => ops::readyz(&self.shard),
                    Route::Metrics => ops::metrics(&self.shard).await,
                    Route::Cluster => ops::cluster(&self.shard).await,
                    _ => unreachable!("benchmark routes are answered above"),
                };
                match result {
                    Ok(reply) => self.send(
                        response,
                        request_id,
                        reply.status,
                        reply.content_type,
                        &[],
                        &reply.body,
                    ),
                    Err(error) => self.send_error(response, request_id, &error, None),
                }
            }
        }
        self.shard
            .metrics
            .count_request(route as usize, response.status());
    }

    fn reject(&self, error: RequestError, request_id: Option<&[u8]>, response: &mut Response<'_>) {
        let mut id_buffer = [0u8; 32];
        let request_id = self.request_id(request_id, &mut id_buffer);
        self.send_error(response, request_id, &error.into(), None);
        self.shard
            .metrics
            .count_request(Route::Rejected as usize, response.status());
    }
}

/// A client request id is echoed when it is 1 to 128 characters of `A-Z a-z 0-9 - _ . :`, so it
/// is safe to put in headers, JSON and logs unchanged.
fn valid_request_id(value: &[u8]) -> Option<&str> {
    let valid = !value.is_empty()
        && value.len() <= REQUEST_ID_BYTES_MAX
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if valid {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

fn hex16(value: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = out.len();
    for (index, byte) in out.iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - index);
        *byte = DIGITS[((value >> shift) & 0xf) as usize];
    }
}

/// Entropy for request id prefixes: the clock and the process id, mixed.
fn boot_entropy() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32);
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert_eq!(valid_request_id(b"abc-123_x.y:z"), Some("abc-123_x.y:z"));
        assert_eq!(valid_request_id(b""), None);
        assert_eq!(valid_request_id(b"a b"), None);
        assert_eq!(valid_request_id(b"a\r\nb"), None);
        assert_eq!(valid_request_id(&[b'a'; 129]), None);
        let mut out = [0u8; 16];
        hex16(0xdead_beef, &mut out);
        assert_eq!(&out, b"00000000deadbeef");
    }

    #[test]
    fn route_names_line_up() {
        assert_eq!(ROUTE_NAMES[Route::Json as usize], "/json");
        assert_eq!(ROUTE_NAMES[Route::Cluster as usize], "/v1/cluster");
        assert_eq!(ROUTE_NAMES[Route::Rejected as usize], "rejected");
        assert_eq!(ROUTE_NAMES.len(), Route::Rejected as usize + 1);
    }
}
