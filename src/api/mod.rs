//! The HTTP API: the route table, request ids, `X-Shard`, JSON in and out, and the handlers of
//! each route. One [`Api`] per shard implements the codec's [`Handler`].
//!
//! Handlers never block: anything that needs another shard goes through [`Shard::invoke_on`].
//! Errors become responses in exactly one place ([`Api::send_error`]).

pub mod auth;
pub mod error;
pub mod json;
pub mod money;
mod ops;
pub mod payments;
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
    /// `POST /v1/users`
    Signup,
    /// `POST /v1/sessions`
    Login,
    /// `POST /v1/sessions/refresh`
    RefreshSession,
    /// `GET /v1/sessions`
    ListSessions,
    /// `DELETE /v1/sessions/current`
    RevokeCurrentSession,
    /// `DELETE /v1/sessions`
    RevokeAllSessions,
    /// `GET /v1/me`
    Me,
    /// `POST /v1/deposits`
    Deposit,
    /// `GET /v1/balances`
    Balances,
    /// `POST /v1/payments`
    Pay,
    /// `GET /v1/payments`
    ListPayments,
    /// `GET /v1/payments/{id}`
    GetPayment,
    /// `POST /v1/payments/{id}/refunds`
    Refund,
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
    "POST /v1/users",
    "POST /v1/sessions",
    "POST /v1/sessions/refresh",
    "GET /v1/sessions",
    "DELETE /v1/sessions/current",
    "DELETE /v1/sessions",
    "GET /v1/me",
    "POST /v1/deposits",
    "GET /v1/balances",
    "POST /v1/payments",
    "GET /v1/payments",
    "GET /v1/payments/{id}",
    "POST /v1/payments/{id}/refunds",
    "unmatched",
    "rejected",
];

/// Longest client `X-Request-Id` echoed back; a longer or otherwise invalid one is replaced.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// The API of one shard.
pub struct Api {
    shard: Rc<Shard>,
    router: Router<Route>,
    auth: auth::Auth,
    money: money::Money,
    /// Random per process and shard, so generated request ids differ across restarts.
    request_id_prefix: u64,
    request_counter: Cell<u64>,
    /// Reused buffer for JSON bodies.
    scratch: RefCell<Vec<u8>>,
}

impl Api {
    /// The API served by `shard`; `dummy_hash` is [`crate::auth::password::dummy_hash`] of the
    /// configured password parameters (an argon2id hash: compute it once, off the executors).
    pub fn new(shard: Rc<Shard>, config: &crate::config::Config, dummy_hash: &str) -> Api {
        use crate::http::Method::{Delete, Get, Post};
        let mut router = Router::default();
        router
            .add(crate::http::Method::Get, "/healthz", Route::Healthz)
            .add(crate::http::Method::Get, "/readyz", Route::Readyz)
            .add(crate::http::Method::Get, "/metrics", Route::Metrics)
            .add(crate::http::Method::Get, "/plaintext", Route::Plaintext)
            .add(crate::http::Method::Get, "/json", Route::Json)
            .add(crate::http::Method::Get, "/v1/cluster", Route::Cluster)
            .add(Post, "/v1/users", Route::Signup)
            .add(Post, "/v1/sessions", Route::Login)
            .add(Post, "/v1/sessions/refresh", Route::RefreshSession)
            .add(Get, "/v1/sessions", Route::ListSessions)
            .add(Delete, "/v1/sessions/current", Route::RevokeCurrentSession)
            .add(Delete, "/v1/sessions", Route::RevokeAllSessions)
            .add(Get, "/v1/me", Route::Me)
            .add(Post, "/v1/deposits", Route::Deposit)
            .add(Get, "/v1/balances", Route::Balances)
            .add(Post, "/v1/payments", Route::Pay)
            .add(Get, "/v1/payments", Route::ListPayments)
            .add(Get, "/v1/payments/{id}", Route::GetPayment)
            .add(Post, "/v1/payments/{id}/refunds", Route::Refund);
        let request_id_prefix = boot_entropy() ^ (shard.id() as u64).rotate_left(48);
        Api {
            shard,
            router,
            auth: auth::Auth::new(&config.auth, dummy_hash),
            money: money::Money::new(&config.money),
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

    /// Sends a non-benchmark response: adds `X-Request-Id` and `X-Shard` (the shard that executed
    /// the request: this one, or a user's home shard).
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        response: &mut Response<'_>,
        request_id: &str,
        shard: usize,
        status: u16,
        content_type: &str,
        extra: &[(&str, &[u8])],
        body: &[u8],
    ) {
        let mut shard_header = itoa::Buffer::new();
        let mut headers: [(&str, &[u8]); 6] = [("", b""); 6];
        headers[0] = ("X-Request-Id", request_id.as_bytes());
        headers[1] = ("X-Shard", shard_header.format(shard).as_bytes());
        let count = 2 + extra.len().min(4);
        headers[2..count].copy_from_slice(&extra[..count - 2]);
        response.send(status, content_type, &headers[..count], body);
    }

    /// The one place an error becomes a response.
    fn send_error(
        &self,
        response: &mut Response<'_>,
        request_id: &str,
        shard: usize,
        error: &ApiError,
        allow: Option<&str>,
    ) {
        let mut body = self.scratch.borrow_mut();
        body.clear();
        error::encode_body(error, request_id, &mut body);
        let mut retry = itoa::Buffer::new();
        let mut extra: [(&str, &[u8]); 3] = [("", b""); 3];
        let mut count = 0;
        if let Some(seconds) = error.retry_after_seconds {
            extra[count] = ("Retry-After", retry.format(seconds).as_bytes());
            count += 1;
        }
        if error.bearer_challenge {
            extra[count] = ("WWW-Authenticate", b"Bearer");
            count += 1;
        }
        if let Some(allow) = allow {
            extra[count] = ("Allow", allow.as_bytes());
            count += 1;
        }
        self.send(
            response,
            request_id,
            shard,
            error.status,
            "application/json",
            &extra[..count],
            &body,
        );
    }
}

impl Handler for Api {
    async fn handle<'a>(&'a self, request: &'a Request<'a>, response: &'a mut Response<'_>) {
        let (route, params) = match self.router.find(request.method, request.path) {
            Match::Found(route, params) => (route, params),
            unmatched => {
                let (error, allow) = match unmatched {
                    Match::MethodNotAllowed(allow) => (ApiError::method_not_allowed(), Some(allow)),
                    _ => (ApiError::route_not_found(), None),
                };
                let mut id_buffer = [0u8; 32];
                let request_id = self.request_id(request.header("x-request-id"), &mut id_buffer);
                self.send_error(response, request_id, self.shard.id(), &error, allow);
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
            Route::Signup
            | Route::Login
            | Route::RefreshSession
            | Route::ListSessions
            | Route::RevokeCurrentSession
            | Route::RevokeAllSessions
            | Route::Me
            | Route::Deposit
            | Route::Balances
            | Route::Pay
            | Route::ListPayments
            | Route::GetPayment
            | Route::Refund => {
                let mut id_buffer = [0u8; 32];
                let request_id = self.request_id(request.header("x-request-id"), &mut id_buffer);
                if !self.shard.admission.admit() {
                    // The shard is behind: a refusal now costs far less than an answer late.
                    let error = ApiError::overloaded(self.shard.admission.retry_after_seconds());
                    self.send_error(response, request_id, self.shard.id(), &error, None);
                    self.shard
                        .metrics
                        .count_request(route as usize, response.status());
                    return;
                }
                let auth_route = match route {
                    Route::Signup => Some(auth::AuthRoute::Signup),
                    Route::Login => Some(auth::AuthRoute::Login),
                    Route::RefreshSession => Some(auth::AuthRoute::Refresh),
                    Route::ListSessions => Some(auth::AuthRoute::ListSessions),
                    Route::RevokeCurrentSession => Some(auth::AuthRoute::RevokeCurrent),
                    Route::RevokeAllSessions => Some(auth::AuthRoute::RevokeAll),
                    Route::Me => Some(auth::AuthRoute::Me),
                    Route::Balances => Some(auth::AuthRoute::Balances),
                    _ => None,
                };
                let outcome = match auth_route {
                    Some(auth_route) => {
                        auth::handle(
                            &self.auth,
                            &self.shard,
                            auth_route,
                            request.body,
                            request.header("authorization"),
                            request.peer,
                        )
                        .await
                    }
                    None => {
                        let authorization = request.header("authorization");
                        let key = request.header("idempotency-key");
                        let id = params.get(0).unwrap_or("");
                        match route {
                            Route::Deposit => {
                                money::deposit(
                                    &self.money,
                                    &self.shard,
                                    request.body,
                                    authorization,
                                    key,
                                    request_id,
                                )
                                .await
                            }
                            Route::Pay => {
                                payments::pay(
                                    &self.auth,
                                    &self.money,
                                    &self.shard,
                                    request.body,
                                    authorization,
                                    key,
                                    request_id,
                                )
                                .await
                            }
                            Route::ListPayments => {
                                payments::list(&self.auth, &self.shard, request.query, authorization).await
                            }
                            Route::GetPayment => {
                                payments::get(&self.auth, &self.shard, id, authorization).await
                            }
                            _ => {
                                payments::refund(
                                    &self.auth,
                                    &self.shard,
                                    id,
                                    request.body,
                                    authorization,
                                    key,
                                    request_id,
                                )
                                .await
                            }
                        }
                    }
                };
                match outcome {
                    Ok(answer) => {
                        let content_type = if answer.body.is_empty() {
                            ""
                        } else {
                            "application/json"
                        };
                        // Tokens and account data must not be stored by caches (RFC 6749 §5.1).
                        let no_store: [(&str, &[u8]); 2] =
                            [("Cache-Control", b"no-store"), ("Idempotent-Replayed", b"true")];
                        let extra = if answer.replayed {
                            &no_store[..]
                        } else {
                            &no_store[..1]
                        };
                        self.send(
                            response,
                            request_id,
                            answer.home,
                            answer.status,
                            content_type,
                            extra,
                            &answer.body,
                        )
                    }
                    Err(failure) => {
                        let shard = failure.home.unwrap_or(self.shard.id());
                        self.send_error(response, request_id, shard, &failure.error, None)
                    }
                }
            }
            _ => {
                let mut id_buffer = [0u8; 32];
                let request_id = self.request_id(request.header("x-request-id"), &mut id_buffer);
                let result = match route {
                    Route::Healthz => Ok(ops::Reply::text("ok")),
                    Route::Readyz => ops::readyz(&self.shard),
                    Route::Metrics => ops::metrics(&self.shard).await,
                    Route::Cluster => ops::cluster(&self.shard).await,
                    _ => unreachable!("benchmark and auth routes are answered above"),
                };
                let shard = self.shard.id();
                match result {
                    Ok(reply) => self.send(
                        response,
                        request_id,
                        shard,
                        reply.status,
                        reply.content_type,
                        &[],
                        &reply.body,
                    ),
                    Err(error) => self.send_error(response, request_id, shard, &error, None),
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
        self.send_error(response, request_id, self.shard.id(), &error.into(), None);
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
