//! HTTP/1.1 for the server: request heads ([`parse`]), chunked bodies ([`chunked`]), response
//! encoding ([`response`]), the cached `Date` ([`date`]) and the per-connection driver
//! ([`connection`]) that ties them to a socket.
//!
//! This layer knows nothing about routes or the API: it hands each complete request to a
//! [`Handler`] and writes what the handler encoded. It must never import `api` or the domain.

pub mod chunked;
pub mod connection;
pub mod date;
pub mod parse;
pub mod response;

use std::future::Future;

pub use parse::{Method, Version};
pub use response::Response;

/// A complete request as handed to the [`Handler`]; every field borrows from the connection's buffers.
#[derive(Debug)]
pub struct Request<'b> {
    /// Method.
    pub method: Method,
    /// Path of the target, e.g. `/v1/payments/pay_123`.
    pub path: &'b str,
    /// Query string without the `?`.
    pub query: Option<&'b str>,
    /// Version.
    pub version: Version,
    /// Header fields in arrival order.
    pub headers: &'b [httparse::Header<'b>],
    /// The whole body (decoded if it was chunked).
    pub body: &'b [u8],
    /// The client's address, when the transport knows it.
    pub peer: Option<std::net::IpAddr>,
}

impl Request<'_> {
    /// The value of the first header field with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    }
}

/// A request the codec refuses before it reaches a handler. Every one of them closes the
/// connection after its response: the framing of whatever follows cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed request or framing (400); the reason is a snake_case code.
    BadRequest(&'static str),
    /// The head did not arrive within the header deadline, or the body stalled (408).
    Timeout,
    /// The declared or decoded body exceeds the limit (413).
    BodyTooLarge,
    /// The request line is too long (414).
    UriTooLong,
    /// An `Expect` other than `100-continue` (417).
    ExpectationFailed,
    /// The head is too large or has too many fields (431).
    HeaderTooLarge,
    /// A transfer coding other than chunked (501).
    UnsupportedTransferCoding,
    /// An HTTP version other than 1.0 and 1.1 (505).
    VersionNotSupported,
}

impl RequestError {
    /// The response status.
    pub fn status(self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::Timeout => 408,
            RequestError::BodyTooLarge => 413,
            RequestError::UriTooLong => 414,
            RequestError::ExpectationFailed => 417,
            RequestError::HeaderTooLarge => 431,
            RequestError::UnsupportedTransferCoding => 501,
            RequestError::VersionNotSupported => 505,
        }
    }

    /// A stable snake_case code for error bodies and metrics.
    pub fn code(self) -> &'static str {
        match self {
            RequestError::BadRequest(code) => code,
            RequestError::Timeout => "request_timeout",
            RequestError::BodyTooLarge => "body_too_large",
            RequestError::UriTooLong => "request_line_too_long",
            RequestError::ExpectationFailed => "expectation_failed",
            RequestError::HeaderTooLarge => "header_too_large",
            RequestError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            RequestError::VersionNotSupported => "http_version_not_supported",
        }
    }

    /// A sentence for humans.
    pub fn message(self) -> &'static str {
        match self {
            RequestError::BadRequest(_) => "The request is malformed or its framing is ambiguous.",
            RequestError::Timeout => "The request did not arrive in time.",
            RequestError::BodyTooLarge => "The request body is larger than this server accepts.",
            RequestError::UriTooLong => "The request line is longer than this server accepts.",
            RequestError::ExpectationFailed => "Only `Expect: 100-continue` is supported.",
            RequestError::HeaderTooLarge => {
                "The request head is larger or has more fields than this server accepts."
            }
            RequestError::UnsupportedTransferCoding => "Only the chunked transfer coding is supported.",
            RequestError::VersionNotSupported => "Only HTTP/1.0 and HTTP/1.1 are supported.",
        }
    }
}

/// What the connection driver calls for each request; implemented by the API layer.
pub trait Handler {
    /// Answers one request by encoding exactly one response into `response`.
    fn handle<'a>(
        &'a self,
        request: &'a Request<'a>,
        response: &'a mut Response<'_>,
    ) -> impl Future<Output = ()> + 'a;

    /// Encodes the response to a request the codec refused. `request_id` is the client's
    /// `X-Request-Id` when the head was readable.
    fn reject(&self, error: RequestError, request_id: Option<&[u8]>, response: &mut Response<'_>);
}
