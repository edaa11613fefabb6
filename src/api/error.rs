//! API errors and the one function that turns them into a status and the contract's JSON error
//! body: `{"error":{"type","code","message","param"},"request_id"}`.

use std::borrow::Cow;

use serde::Serialize;

use crate::http::RequestError;

/// The contract's error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The request is wrong.
    InvalidRequestError,
    /// Credentials are missing, wrong, expired or revoked.
    AuthenticationError,
    /// An idempotency key was misused.
    IdempotencyError,
    /// Too many requests.
    RateLimitError,
    /// The server could not do it.
    ApiError,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Error type.
    pub kind: ErrorType,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human sentence.
    pub message: Cow<'static, str>,
    /// The request field at fault.
    pub param: Option<Cow<'static, str>>,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after_seconds: Option<u64>,
    /// Send `WWW-Authenticate: Bearer` (401 on authenticated routes).
    pub bearer_challenge: bool,
}

impl ApiError {
    /// An error with no param and no retry hint.
    pub fn new(
        status: u16,
        kind: ErrorType,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after_seconds: None,
            bearer_challenge: false,
        }
    }

    /// The same error naming the request field at fault.
    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error with a `Retry-After` hint.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds.max(1));
        self
    }

    /// 404 for a path no route serves.
    pub fn route_not_found() -> Self {
        ApiError::new(404, ErrorType::InvalidRequestError, "not_found", "No such route.")
    }

    /// 405 for a known path with another method.
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            405,
            ErrorType::InvalidRequestError,
            "method_not_allowed",
            "This route does not accept this method.",
        )
    }

    /// 503 with a retry hint.
    pub fn unavailable(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            retry_after_seconds: Some(1),
            ..ApiError::new(503, ErrorType::ApiError, code, message)
        }
    }
}

impl ApiError {
    /// 503 `overloaded`: the shard refused the request before doing any of it.
    pub fn overloaded(retry_after_seconds: u64) -> Self {
        ApiError::new(
            503,
            ErrorType::ApiError,
            "overloaded",
            "The server is overloaded and did not process this request; retry after Retry-After seconds.",
        )
        .retry_after(retry_after_seconds)
    }
}

impl From<RequestError> for ApiError {
    /// Requests refused by the codec are the client's to fix, including 501 and 505 (a transfer
    /// coding or version this server does not take): all are `invalid_request_error`.
    fn from(error: RequestError) -> Self {
        ApiError::new(
            error.status(),
            ErrorType::InvalidRequestError,
            error.code(),
            error.message(),
        )
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
    request_id: &'a str,
}

#[derive(Serialize)]
struct Detail<'a> {
    #[serde(rename = "type")]
    kind: ErrorType,
    code: &'a str,
    message: &'a str,
    param: Option<&'a str>,
}

/// Serializes the error body into `out`.
pub fn encode_body(error: &ApiError, request_id: &str, out: &mut Vec<u8>) {
    let body = Body {
        error: Detail {
            kind: error.kind,
            code: error.code,
            message: &error.message,
            param: error.param.as_deref(),
        },
        request_id,
    };
    serde_json::to_writer(out, &body).expect("serializing plain structs into a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_the_contract() {
        let mut out = Vec::new();
        encode_body(
            &RequestError::BadRequest("invalid_host").into(),
            "req_1",
            &mut out,
        );
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["error"]["type"], "invalid_request_error");
        assert_eq!(value["error"]["code"], "invalid_host");
        assert!(value["error"]["param"].is_null());
        assert_eq!(value["request_id"], "req_1");
    }
}
