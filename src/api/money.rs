//! The money routes served so far: `POST /v1/deposits` (admin API key, idempotency key) and
//! `GET /v1/balances` (authenticated, through `auth::authenticated`).
//!
//! Idempotency follows the contract: the key's answer is stored, 4xx included, and replayed byte
//! for byte with `Idempotent-Replayed: true`; so error bodies of an idempotent request are encoded
//! here, with the request id, rather than by the generic error path. An admin key is kept on the
//! shard owning the key's slot (CRC16 of the key), so every shard finds it and a key reused for
//! another user is caught. Clock reads and random draws happen here, never in the ledger.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::{hex, mesh_failure, now_ms, refused_error, unexpected, Answer, Failure};
use super::error::{self, ApiError, ErrorType};
use super::json::{parse_body, rfc3339};
use crate::config::MoneyConfig;
use crate::home::{HomeError, UserCommand, UserReply};
use crate::payments::idempotency::{valid_key, Begin, Scope};
use crate::payments::ledger::{Currency, AMOUNT_MAX};
use crate::shard::Shard;
use crate::slots::{Slot, UserId};

/// What the money routes of one shard need.
pub struct Money {
    currencies: Vec<Currency>,
    admin_api_key: String,
}

impl Money {
    /// An accepted currency, or 422 `unsupported_currency`.
    pub fn currency(&self, code: &str) -> Result<Currency, Failure> {
        Currency::parse(code)
            .filter(|currency| self.currencies.contains(currency))
            .ok_or_else(|| {
                Failure::from(
                    ApiError::new(
                        422,
                        ErrorType::InvalidRequestError,
                        "unsupported_currency",
                        "currency is not one this server accepts.",
                    )
                    .with_param("currency"),
                )
            })
    }

    /// From the (validated) configuration.
    pub fn new(config: &MoneyConfig) -> Money {
        Money {
            currencies: config
                .currency_list()
                .expect("money.currencies is validated at load"),
            admin_api_key: config.admin_api_key.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DepositRequest {
    user_id: String,
    amount: serde_json::Number,
    currency: String,
}

#[derive(Serialize)]
struct DepositBody<'a> {
    id: &'a str,
    user_id: &'a str,
    amount: u64,
    currency: &'a str,
    created_at: String,
}

#[derive(Serialize)]
struct BalancesBody {
    data: Vec<BalanceItem>,
}

#[derive(Serialize)]
struct BalanceItem {
    currency: String,
    available: u64,
}

/// `{"data":[{"currency","available"}]}`
pub fn balances_body(balances: &[(Currency, u64)]) -> Vec<u8> {
    let data = balances
        .iter()
        .map(|(currency, available)| BalanceItem {
            currency: currency.as_str().to_string(),
            available: *available,
        })
        .collect();
    serde_json::to_vec(&BalancesBody { data }).expect("plain structs serialize")
}

/// `POST /v1/deposits`.
pub async fn deposit(
    money: &Money,
    shard: &Shard,
    body: &[u8],
    authorization: Option<&[u8]>,
    idempotency_key: Option<&[u8]>,
    request_id: &str,
) -> Result<Answer, Failure> {
    let presented = authorization.and_then(|value| value.strip_prefix(b"Bearer "));
    let admin = presented.is_some_and(|key| bool::from(key.ct_eq(money.admin_api_key.as_bytes())));
    if !admin {
        let mut error = ApiError::new(
            401,
            ErrorType::AuthenticationError,
            "invalid_api_key",
            "Deposits need Authorization: Bearer <admin API key>.",
        );
        error.bearer_challenge = true;
        return Err(error.into());
    }
    let key = idempotency_key_of(idempotency_key)?;
    let key_slot = Slot::of_bytes(key.as_bytes());
    let key_shard = shard.home_of(key_slot);
    let fingerprint = fingerprint("POST /v1/deposits", body);
    let begin = UserCommand::IdempotencyBegin {
        scope: Scope::Admin,
        key: key.clone(),
        fingerprint,
        now_ms: now_ms(),
    };
    let reply = match shard.invoke_on_home(key_slot, begin).await {
        Ok(reply) => reply,
        Err(error) => {
            super::payments::release_unacknowledged_claim(shard, key_slot, Scope::Admin, &key, &error).await;
            return Err(mesh_failure(error));
        }
    };
    match reply {
        UserReply::Idempotency(Begin::Proceed) => {}
        UserReply::Idempotency(Begin::Replay { status, body }) => {
            return Ok(Answer {
                status,
                body,
                home: key_shard,
                replayed: true,
            })
        }
        UserReply::Idempotency(refusal) => return Err(idempotency_refusal(&refusal, key_shard)),
        other => return Err(unexpected(&other)),
    }
    // From here on every answer is final for this key, errors included, and is stored.
    let (status, answer_body, home) = match execute_deposit(money, shard, body, &key).await {
        Ok((body, home)) => (201, body, home),
        Err(failure) => {
            let mut encoded = Vec::new();
            error::encode_body(&failure.error, request_id, &mut encoded);
            (failure.error.status, encoded, failure.home.unwrap_or(key_shard))
        }
    };
    let complete = UserCommand::IdempotencyComplete {
        scope: Scope::Admin,
        key,
        status,
        body: answer_body.clone(),
    };
    shard
        .invoke_on_home(key_slot, complete)
        .await
        .map_err(mesh_failure)?;
    Ok(Answer {
        status,
        body: answer_body,
        home,
        replayed: false,
    })
}

/// The id of the deposit made with idempotency key `key`: derived from the key, so that a
/// deposit applied by an attempt a crash interrupted (before its key was answered) is found
/// again by the retry instead of being applied twice.
pub fn deposit_id(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!("dep_{}", hex(&digest[..12]))
}

async fn execute_deposit(
    money: &Money,
    shard: &Shard,
    body: &[u8],
    key: &str,
) -> Result<(Vec<u8>, usize), Failure> {
    let request: DepositRequest = parse_body(body)?;
    let amount = amount_of(&request.amount)?;
    let currency = money.currency(&request.currency)?;
    let user = UserId::parse(&request.user_id)
        .ok_or_else(|| Failure::from(refused_error(HomeError::UserNotFound).with_param("user_id")))?;
    let slot = user.slot();
    let home = shard.home_of(slot);
    let id = deposit_id(key);
    let command = UserCommand::Deposit {
        id: id.clone(),
        user: user.clone(),
        amount,
        currency,
    };
    match shard.invoke_on_home(slot, command).await.map_err(mesh_failure)? {
        UserReply::Done => {
            let body = DepositBody {
                id: &id,
                user_id: user.as_str(),
                amount,
                currency: currency.as_str(),
                created_at: rfc3339(now_ms()),
            };
            Ok((serde_json::to_vec(&body).expect("plain structs serialize"), home))
        }
        // The key's deposit exists with other details: the key was reused after a restart
        // released it.
        UserReply::Refused(HomeError::IdCollision) => Err(idempotency_refusal(&Begin::Reused, home)),
        UserReply::Refused(HomeError::UserNotFound) => Err(Failure {
            error: refused_error(HomeError::UserNotFound).with_param("user_id"),
            home: Some(home),
        }),
        UserReply::Refused(error) => Err(Failure {
            error: refused_error(error),
            home: Some(home),
        }),
        other => Err(unexpected(&other)),
    }
}

/// An amount field: an integer number of minor units from 1 to 10^15, else 422 `invalid_amount`.
pub(super) fn amount_of(number: &serde_json::Number) -> Result<u64, Failure> {
    number
        .as_u64()
        .filter(|amount| (1..=AMOUNT_MAX).contains(amount))
        .ok_or_else(|| {
            ApiError::new(
                422,
                ErrorType::InvalidRequestError,
                "invalid_amount",
                "amount is an integer number of minor units from 1 to 10^15.",
            )
            .with_param("amount")
            .into()
        })
}

/// What an idempotency key remembers of its request: the request line and a hash of the body.
pub(super) fn fingerprint(request_line: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(request_line.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hasher.finalize().into()
}

/// The `Idempotency-Key` header: required, 1 to 255 visible ASCII characters.
pub(super) fn idempotency_key_of(value: Option<&[u8]>) -> Result<String, Failure> {
    let value = value.ok_or_else(|| {
        Failure::from(
            ApiError::new(
                400,
                ErrorType::IdempotencyError,
                "idempotency_key_missing",
                "This route needs an Idempotency-Key header.",
            )
            .with_param("Idempotency-Key"),
        )
    })?;
    if !valid_key(value) {
        return Err(ApiError::new(
            400,
            ErrorType::IdempotencyError,
            "idempotency_key_invalid",
            "An Idempotency-Key is 1 to 255 visible ASCII characters.",
        )
        .with_param("Idempotency-Key")
        .into());
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

pub(super) fn idempotency_refusal(begin: &Begin, home: usize) -> Failure {
    let error = match begin {
        Begin::InUse => ApiError::new(
            409,
            ErrorType::IdempotencyError,
            "idempotency_key_in_use",
            "A request with this Idempotency-Key is still running; retry shortly.",
        )
        .retry_after(1),
        Begin::Reused => ApiError::new(
            422,
            ErrorType::IdempotencyError,
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request.",
        ),
        _ => ApiError::unavailable(
            "idempotency_keys_full",
            "Too many idempotency keys are held; retry later.",
        ),
    };
    Failure {
        error,
        home: Some(home),
    }
}
