//! API errors, their JSON body `{"error":{"type","code","message","param"},"request_id"}`, and
//! strict JSON request bodies (the same codes shardpay answers: 400 `invalid_json` for bytes that
//! are not JSON, 422 `unknown_field`, `missing_field` or `invalid_type` naming the field).
//!
//! It must never decide anything about state; [`Refusal`]s of the state become errors here.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state::Refusal;

/// The contract's error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorType {
    /// The request is wrong.
    #[serde(rename = "invalid_request_error")]
    InvalidRequest,
    /// Credentials are missing, wrong, expired or revoked.
    #[serde(rename = "authentication_error")]
    Authentication,
    /// An idempotency key was misused.
    #[serde(rename = "idempotency_error")]
    Idempotency,
    /// The server could not do it.
    #[serde(rename = "api_error")]
    Api,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Error type.
    pub kind: ErrorType,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human sentence.
    pub message: &'static str,
    /// The request field at fault.
    pub param: Option<Cow<'static, str>>,
    /// Send `WWW-Authenticate: Bearer` (401 on authenticated routes).
    pub bearer_challenge: bool,
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

impl ApiError {
    /// An error with no param.
    pub fn new(status: StatusCode, kind: ErrorType, code: &'static str, message: &'static str) -> Self {
        ApiError {
            status,
            kind,
            code,
            message,
            param: None,
            bearer_challenge: false,
        }
    }

    /// A 4xx `invalid_request_error`.
    pub fn invalid(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        ApiError::new(status, ErrorType::InvalidRequest, code, message)
    }

    /// The same error naming the request field at fault.
    pub fn with_param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// A 401 `authentication_error` that asks for a bearer token.
    pub fn unauthenticated(code: &'static str, message: &'static str) -> Self {
        ApiError {
            bearer_challenge: true,
            ..ApiError::new(StatusCode::UNAUTHORIZED, ErrorType::Authentication, code, message)
        }
    }

    /// 401: the access token is missing, malformed, expired, forged or its session revoked.
    pub fn invalid_token() -> Self {
        ApiError::unauthenticated(
            "invalid_token",
            "The access token is invalid, expired or revoked.",
        )
    }

    /// 500 for what cannot happen in practice (an id collision, a failed hash).
    pub fn internal(message: &'static str) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Api,
            "internal_error",
            message,
        )
    }

    /// 422 `invalid_amount`.
    pub fn invalid_amount() -> Self {
        ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            "amount is an integer number of minor units from 1 to 10^15.",
        )
        .with_param("amount")
    }

    /// The JSON body of this error, carrying `request_id`.
    pub fn body(&self, request_id: &str) -> Bytes {
        let body = Body {
            error: Detail {
                kind: self.kind,
                code: self.code,
                message: self.message,
                param: self.param.as_deref(),
            },
            request_id,
        };
        Bytes::from(serde_json::to_vec(&body).expect("plain structs serialize"))
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        match refusal {
            Refusal::UsernameTaken => {
                ApiError::invalid(StatusCode::CONFLICT, "username_taken", "This username is taken.")
                    .with_param("username")
            }
            Refusal::IdCollision => ApiError::internal("A freshly drawn id collided."),
            Refusal::UserNotFound => {
                ApiError::invalid(StatusCode::NOT_FOUND, "user_not_found", "No such user.")
                    .with_param("user_id")
            }
            Refusal::PayeeNotFound => {
                ApiError::invalid(StatusCode::NOT_FOUND, "payee_not_found", "No such payee.").with_param("to")
            }
            Refusal::SelfPayment => ApiError::invalid(
                unprocessable,
                "self_payment",
                "A payment needs two different users.",
            )
            .with_param("to"),
            Refusal::InsufficientFunds => {
                ApiError::invalid(unprocessable, "insufficient_funds", "The balance is too low.")
            }
            Refusal::BalanceOverflow => ApiError::invalid(
                unprocessable,
                "balance_overflow",
                "The balance would exceed its maximum.",
            ),
            Refusal::UnknownCursor => ApiError::invalid(
                unprocessable,
                "invalid_starting_after",
                "starting_after is not one of your payments.",
            )
            .with_param("starting_after"),
        }
    }
}

/// The request body, or 413 `body_too_large` / 400 `invalid_body` when axum could not read it.
pub fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::invalid(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "The request body is larger than 1 MiB.",
            )
        } else {
            ApiError::invalid(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "The request body could not be read.",
            )
        }
    })
}

/// Parses `body` as `T` (whose serde attributes deny unknown fields).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::invalid(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "The request body is not valid JSON.",
            ),
            Category::Data => data_error(&error.to_string()),
        }
    })
}

/// serde's data errors name the field between backticks; turn them into the contract's codes.
fn data_error(message: &str) -> ApiError {
    let field = message.split('`').nth(1).map(str::to_string);
    let (code, text) = if message.starts_with("unknown field") {
        (
            "unknown_field",
            "The request body has a field this route does not take.",
        )
    } else if message.starts_with("missing field") {
        ("missing_field", "The request body lacks a required field.")
    } else {
        (
            "invalid_type",
            "A field of the request body has the wrong type or value.",
        )
    };
    let error = ApiError::invalid(StatusCode::UNPROCESSABLE_ENTITY, code, text);
    match field {
        Some(field) if code != "invalid_type" => error.with_param(field),
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        count: u32,
    }

    #[test]
    fn body_errors_name_the_field() {
        let error = parse_body::<Sample>(b"{\"name\":\"a\",\"count\":1,\"x\":1}").unwrap_err();
        assert_eq!((error.code, error.param.as_deref()), ("unknown_field", Some("x")));
        let error = parse_body::<Sample>(b"{\"name\":\"a\"}").unwrap_err();
        assert_eq!(
            (error.code, error.param.as_deref()),
            ("missing_field", Some("count"))
        );
        let error = parse_body::<Sample>(b"{\"name\":1,\"count\":1}").unwrap_err();
        assert_eq!(error.code, "invalid_type");
        for bad in [&b""[..], b"{", b"nope"] {
            assert_eq!(
                parse_body::<Sample>(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
        }
    }

    #[test]
    fn body_has_the_contract_shape() {
        let body = ApiError::invalid_token().body("req_1");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["error"]["type"], "authentication_error");
        assert_eq!(value["error"]["code"], "invalid_token");
        assert!(value["error"]["param"].is_null());
        assert_eq!(value["request_id"], "req_1");
    }
}
