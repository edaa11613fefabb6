//! The money routes: `POST /v1/deposits` (admin API key), `GET /v1/balances`, `POST /v1/payments`
//! and `GET /v1/payments`, with idempotency keys on the two POSTs.
//!
//! Everything a POST needs from outside the state — parsing, validation, the new id, the clock —
//! is done before the lock is taken. Then ONE lock acquisition checks the session, checks the key,
//! moves the money, records the payment and stores the answer (4xx included) under the key, so a
//! retry is replayed byte for byte with `Idempotent-Replayed: true` and no key is ever "in use".

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{self, RawQuery};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{body_of, parse_body, ApiError, ErrorType};
use crate::limits::{AMOUNT_MAX, DESCRIPTION_CHARS_MAX, IDEMPOTENCY_KEY_CHARS_MAX, PAGE_DEFAULT, PAGE_MAX};
use crate::reply::{self, random_id, Reply};
use crate::state::{KeyCheck, Payment, PaymentOrder, Scope, State, StoredAnswer, CURRENCIES};
use crate::App;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DepositRequest {
    user_id: String,
    amount: serde_json::Number,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    to: String,
    amount: serde_json::Number,
    currency: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Serialize)]
struct DepositBody<'a> {
    id: &'a str,
    user_id: &'a str,
    amount: u64,
    currency: &'a str,
    created_at: &'a str,
}

#[derive(Serialize)]
struct BalancesBody {
    data: Vec<BalanceItem>,
}

#[derive(Serialize)]
struct BalanceItem {
    currency: &'static str,
    available: u64,
}

/// The payment object, fields in the contract's order.
#[derive(Serialize)]
struct PaymentBody<'a> {
    id: &'a str,
    from: &'a str,
    to: &'a str,
    amount: u64,
    currency: &'a str,
    description: Option<&'a str>,
    status: &'static str,
    amount_refunded: u64,
    created_at: &'a str,
}

#[derive(Serialize)]
struct PageBody<'a> {
    data: Vec<PaymentBody<'a>>,
    has_more: bool,
}

/// A validated deposit, with its id and time drawn.
struct DepositOrder {
    id: String,
    user_id: String,
    amount: u64,
    currency: &'static str,
    created_at: String,
}

/// What an idempotent POST knows before it takes the lock.
struct Idempotent {
    scope: Scope,
    key: String,
    fingerprint: [u8; 32],
}

/// `POST /v1/deposits`.
pub async fn deposit(
    extract::State(app): extract::State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = reply::request_id(&headers);
    reply::respond(deposit_inner(&app, &headers, body, &request_id), &request_id)
}

fn deposit_inner(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    let admin = presented.is_some_and(|key| bool::from(key.ct_eq(app.admin_api_key.as_bytes())));
    if !admin {
        return Err(ApiError::unauthenticated(
            "invalid_api_key",
            "Deposits need Authorization: Bearer <admin API key>.",
        ));
    }
    let key = idempotency_key(headers)?;
    let body = body_of(body)?;
    let idempotent = Idempotent {
        scope: Scope::Admin,
        key,
        fingerprint: fingerprint("POST /v1/deposits", &body),
    };
    let order = deposit_order(&body);
    let mut state = app.lock();
    once(&mut state, idempotent, request_id, |state| {
        let order = order?;
        state.deposit(&order.user_id, order.amount, order.currency)?;
        Ok(Reply::new(
            StatusCode::CREATED,
            &DepositBody {
                id: &order.id,
                user_id: &order.user_id,
                amount: order.amount,
                currency: order.currency,
                created_at: &order.created_at,
            },
        ))
    })
}

fn deposit_order(body: &[u8]) -> Result<DepositOrder, ApiError> {
    let request: DepositRequest = parse_body(body)?;
    Ok(DepositOrder {
        amount: amount_of(&request.amount)?,
        currency: currency_of(&request.currency)?,
        user_id: request.user_id,
        id: random_id("dep_")?,
        created_at: reply::now_rfc3339(),
    })
}

/// `GET /v1/balances`.
pub async fn balances(extract::State(app): extract::State<Arc<App>>, headers: HeaderMap) -> Response {
    let request_id = reply::request_id(&headers);
    let result = app.auth.verify(&headers).and_then(|claims| {
        let balances = {
            let state = app.lock();
            state
                .session_user(&claims.sid, &claims.sub)
                .ok_or_else(ApiError::invalid_token)?;
            state.balances(&claims.sub)
        };
        let data = balances
            .into_iter()
            .map(|(currency, available)| BalanceItem { currency, available })
            .collect();
        Ok(Reply::new(StatusCode::OK, &BalancesBody { data }))
    });
    reply::respond(result, &request_id)
}

/// `POST /v1/payments`.
pub async fn pay(
    extract::State(app): extract::State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = reply::request_id(&headers);
    reply::respond(pay_inner(&app, &headers, body, &request_id), &request_id)
}

fn pay_inner(
    app: &App,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_id: &str,
) -> Result<Reply, ApiError> {
    let claims = app.auth.verify(headers)?;
    let key = idempotency_key(headers)?;
    let body = body_of(body)?;
    let idempotent = Idempotent {
        scope: Scope::User(claims.sub.clone()),
        key,
        fingerprint: fingerprint("POST /v1/payments", &body),
    };
    let order = payment_order(&body);
    let mut state = app.lock();
    state
        .session_user(&claims.sid, &claims.sub)
        .ok_or_else(ApiError::invalid_token)?;
    once(&mut state, idempotent, request_id, |state| {
        let payment = state.pay(&claims.sub, order?)?;
        Ok(Reply::new(StatusCode::CREATED, &payment_body(payment)))
    })
}

fn payment_order(body: &[u8]) -> Result<PaymentOrder, ApiError> {
    let request: PayRequest = parse_body(body)?;
    let amount = amount_of(&request.amount)?;
    let currency = currency_of(&request.currency)?;
    if request
        .description
        .as_ref()
        .is_some_and(|description| description.chars().count() > DESCRIPTION_CHARS_MAX)
    {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_description",
            "description is at most 200 characters.",
        )
        .with_param("description"));
    }
    Ok(PaymentOrder {
        id: random_id("pay_")?,
        to: request.to,
        amount,
        currency,
        description: request.description,
        created_at: reply::now_rfc3339(),
    })
}

/// `GET /v1/payments?limit=1..100&starting_after=<payment id>`.
pub async fn list_payments(
    extract::State(app): extract::State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let request_id = reply::request_id(&headers);
    let result = app.auth.verify(&headers).and_then(|claims| {
        let (limit, starting_after) = page_query(query.as_deref().unwrap_or(""))?;
        let (page, has_more) = {
            let state = app.lock();
            state
                .session_user(&claims.sid, &claims.sub)
                .ok_or_else(ApiError::invalid_token)?;
            state.payments_page(&claims.sub, starting_after, limit)?
        };
        let body = PageBody {
            data: page.iter().map(payment_body).collect(),
            has_more,
        };
        Ok(Reply::new(StatusCode::OK, &body))
    });
    reply::respond(result, &request_id)
}

/// `limit` (1 to 100, default 10) and `starting_after` from a query string; other names are ignored.
fn page_query(query: &str) -> Result<(usize, Option<&str>), ApiError> {
    let mut limit = PAGE_DEFAULT;
    let mut starting_after = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|limit| (1..=PAGE_MAX).contains(limit))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "invalid_limit",
                            "limit is a number from 1 to 100.",
                        )
                        .with_param("limit")
                    })?;
            }
            "starting_after" => starting_after = Some(value),
            _ => {}
        }
    }
    Ok((limit, starting_after))
}

/// Runs `execute` once per idempotency key, with the lock held: a fresh key executes and stores
/// the answer (a 4xx included; a 5xx is not stored, so a retry executes again), a known key with
/// the same request replays the stored answer, a known key with another request is refused.
fn once(
    state: &mut State,
    idempotent: Idempotent,
    request_id: &str,
    execute: impl FnOnce(&mut State) -> Result<Reply, ApiError>,
) -> Result<Reply, ApiError> {
    match state.check_key(&idempotent.scope, &idempotent.key, &idempotent.fingerprint) {
        KeyCheck::Fresh => {}
        KeyCheck::Replay(stored) => {
            return Ok(Reply {
                status: stored.status,
                body: stored.body,
                replayed: true,
            })
        }
        KeyCheck::Reused => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorType::Idempotency,
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request.",
            ))
        }
    }
    let reply = match execute(state) {
        Ok(reply) => reply,
        Err(error) if error.status.is_server_error() => return Err(error),
        Err(error) => Reply {
            status: error.status,
            body: error.body(request_id),
            replayed: false,
        },
    };
    let answer = StoredAnswer {
        fingerprint: idempotent.fingerprint,
        status: reply.status,
        body: reply.body.clone(),
    };
    state.store_answer(idempotent.scope, idempotent.key, answer);
    Ok(reply)
}

/// The `Idempotency-Key` header: required, 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorType::Idempotency,
            "idempotency_key_missing",
            "This route needs an Idempotency-Key header.",
        )
        .with_param("Idempotency-Key")
    })?;
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= IDEMPOTENCY_KEY_CHARS_MAX
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    match (valid, value.to_str()) {
        (true, Ok(key)) => Ok(key.to_string()),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorType::Idempotency,
            "idempotency_key_invalid",
            "An Idempotency-Key is 1 to 255 visible ASCII characters.",
        )
        .with_param("Idempotency-Key")),
    }
}

/// What an idempotency key remembers of its request: the request line and a hash of the body.
fn fingerprint(request_line: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(request_line.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hasher.finalize().into()
}

/// An amount field: an integer number of minor units from 1 to 10^15, else 422 `invalid_amount`.
fn amount_of(number: &serde_json::Number) -> Result<u64, ApiError> {
    number
        .as_u64()
        .filter(|amount| (1..=AMOUNT_MAX).contains(amount))
        .ok_or_else(ApiError::invalid_amount)
}

/// An accepted currency, else 422 `unsupported_currency`.
fn currency_of(code: &str) -> Result<&'static str, ApiError> {
    CURRENCIES
        .iter()
        .find(|currency| **currency == code)
        .copied()
        .ok_or_else(|| {
            ApiError::invalid(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported_currency",
                "currency is not one this server accepts.",
            )
            .with_param("currency")
        })
}

fn payment_body(payment: &Payment) -> PaymentBody<'_> {
    PaymentBody {
        id: &payment.id,
        from: &payment.from,
        to: &payment.to,
        amount: payment.amount,
        currency: payment.currency,
        description: payment.description.as_deref(),
        status: "succeeded",
        amount_refunded: 0,
        created_at: &payment.created_at,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn page_queries() {
        assert_eq!(page_query("").unwrap(), (10, None));
        assert_eq!(
            page_query("limit=1&starting_after=pay_1&x=y").unwrap(),
            (1, Some("pay_1"))
        );
        for bad in ["limit=0", "limit=101", "limit=", "limit=ten"] {
            assert_eq!(page_query(bad).unwrap_err().code, "invalid_limit");
        }
    }

    #[test]
    fn idempotency_keys() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            idempotency_key(&headers).unwrap_err().code,
            "idempotency_key_missing"
        );
        headers.insert("idempotency-key", HeaderValue::from_static("has space"));
        assert_eq!(
            idempotency_key(&headers).unwrap_err().code,
            "idempotency_key_invalid"
        );
        let long = "k".repeat(IDEMPOTENCY_KEY_CHARS_MAX + 1);
        headers.insert("idempotency-key", HeaderValue::from_str(&long).unwrap());
        assert!(idempotency_key(&headers).is_err());
        headers.insert("idempotency-key", HeaderValue::from_static("key-1"));
        assert_eq!(idempotency_key(&headers).unwrap(), "key-1");
    }

    #[test]
    fn amounts_and_currencies() {
        let number = |text: &str| serde_json::from_str::<serde_json::Number>(text).unwrap();
        assert_eq!(amount_of(&number("1")).unwrap(), 1);
        assert_eq!(amount_of(&number("1000000000000000")).unwrap(), AMOUNT_MAX);
        for bad in ["0", "-1", "1.5", "1000000000000001"] {
            assert_eq!(amount_of(&number(bad)).unwrap_err().code, "invalid_amount");
        }
        assert_eq!(currency_of("EUR").unwrap(), "EUR");
        assert_eq!(currency_of("usd").unwrap_err().code, "unsupported_currency");
    }
}
