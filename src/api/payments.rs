//! The payment routes: pay, read one payment, list payments, refund.
//!
//! A payment is executed on the payer's home shard; when the payee lives on another shard, the
//! receiving shard carries the credit there (the payee's shard applies it once, by payment id) and
//! back for settlement, and answers 201 only after both sides applied it. If the credit cannot be
//! delivered now, the payer's shard keeps it in its outbox and resends it in the background; the
//! client gets 503 `payment_pending`, and a retry with the same idempotency key gets 409 until the
//! payment completes, then the stored 201. Refunds mirror this from the payee's shard. Every final
//! answer (201 and 4xx) is stored under the user's idempotency key and replayed byte for byte.

use serde::{Deserialize, Serialize};

use super::auth::{
    hex, mesh_failure, now_ms, random, refused, unexpected, verify_bearer, Answer, Auth, Failure,
    ID_DRAWS_MAX,
};
use super::error::{self, ApiError, ErrorType};
use super::json::{parse_body, rfc3339};
use super::money::{amount_of, fingerprint, idempotency_key_of, idempotency_refusal, Money};
use crate::home::{HomeError, UserAction, UserCommand, UserReply};
use crate::payments::idempotency::Begin;
use crate::payments::ledger::{Payment, Transfer, DESCRIPTION_CHARS_MAX};
use crate::shard::Shard;
use crate::slots::{Slot, UserId};

/// Default and largest page of `GET /v1/payments`.
const PAGE_DEFAULT: usize = 10;
const PAGE_MAX: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    to: String,
    amount: serde_json::Number,
    currency: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRequest {
    #[serde(default)]
    amount: Option<serde_json::Number>,
}

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
    created_at: String,
}

#[derive(Serialize)]
struct PageBody<'a> {
    data: Vec<PaymentBody<'a>>,
    has_more: bool,
}

#[derive(Serialize)]
struct RefundBody<'a> {
    id: &'a str,
    payment_id: &'a str,
    amount: u64,
    currency: &'a str,
    created_at: String,
}

/// The payment object of the contract, fields in the contract's order.
fn payment_value(payment: &Payment) -> PaymentBody<'_> {
    PaymentBody {
        id: &payment.id,
        from: payment.from.as_str(),
        to: payment.to.as_str(),
        amount: payment.amount,
        currency: payment.currency.as_str(),
        description: payment.description.as_deref(),
        status: "succeeded",
        amount_refunded: payment.amount_refunded,
        created_at: rfc3339(payment.created_at_ms),
    }
}

/// How a money-moving request ended before it is stored under its key.
enum Outcome {
    /// Complete; the home shard stored the 201 under the key.
    Done(Vec<u8>),
    /// The credit is in the outbox and will be resent; the key stays claimed until then.
    Pending,
}

/// `POST /v1/payments`.
pub async fn pay(
    auth: &Auth,
    money: &Money,
    shard: &Shard,
    body: &[u8],
    authorization: Option<&[u8]>,
    idempotency_key: Option<&[u8]>,
    request_id: &str,
) -> Result<Answer, Failure> {
    let (payer, _session, key, now) = begin(
        auth,
        shard,
        authorization,
        idempotency_key,
        "POST /v1/payments",
        body,
    )
    .await?;
    let payer = match payer {
        Began::Proceed(payer) => payer,
        Began::Answered(answer) => return Ok(answer),
    };
    let outcome = execute_payment(money, shard, body, &payer, &key, now).await;
    finish(shard, &payer, key, outcome, request_id).await
}

/// `POST /v1/payments/{id}/refunds`.
pub async fn refund(
    auth: &Auth,
    shard: &Shard,
    payment: &str,
    body: &[u8],
    authorization: Option<&[u8]>,
    idempotency_key: Option<&[u8]>,
    request_id: &str,
) -> Result<Answer, Failure> {
    let path = format!("POST /v1/payments/{payment}/refunds");
    let (payee, session, key, now) = begin(auth, shard, authorization, idempotency_key, &path, body).await?;
    let payee = match payee {
        Began::Proceed(payee) => payee,
        Began::Answered(answer) => return Ok(answer),
    };
    let outcome = execute_refund(shard, payment, body, &payee, &session, &key, now).await;
    finish(shard, &payee, key, outcome, request_id).await
}

/// `GET /v1/payments/{id}`.
pub async fn get(
    auth: &Auth,
    shard: &Shard,
    id: &str,
    authorization: Option<&[u8]>,
) -> Result<Answer, Failure> {
    let reply = read(auth, shard, authorization, UserAction::GetPayment(id.to_string())).await?;
    match reply {
        (UserReply::Payment(payment), home) => Ok(json_answer(200, &payment_value(&payment), home)),
        (UserReply::Refused(error), home) => Err(refused(error, home)),
        (other, _) => Err(unexpected(&other)),
    }
}

/// `GET /v1/payments?limit=&starting_after=`.
pub async fn list(
    auth: &Auth,
    shard: &Shard,
    query: Option<&str>,
    authorization: Option<&[u8]>,
) -> Result<Answer, Failure> {
    let mut limit = PAGE_DEFAULT;
    let mut starting_after = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=PAGE_MAX).contains(n))
                    .ok_or_else(|| {
                        Failure::from(
                            ApiError::new(
                                422,
                                ErrorType::InvalidRequestError,
                                "invalid_limit",
                                "limit is a number from 1 to 100.",
                            )
                            .with_param("limit"),
                        )
                    })?
            }
            "starting_after" => starting_after = Some(value.to_string()),
            _ => {}
        }
    }
    let action = UserAction::ListPayments {
        starting_after,
        limit,
    };
    match read(auth, shard, authorization, action).await? {
        (UserReply::Payments(page, has_more), home) => {
            let body = PageBody {
                data: page.iter().map(payment_value).collect(),
                has_more,
            };
            Ok(json_answer(200, &body, home))
        }
        (UserReply::Refused(error), home) => Err(refused(error, home)),
        (other, _) => Err(unexpected(&other)),
    }
}

/// An authenticated read on the user's home shard.
async fn read(
    auth: &Auth,
    shard: &Shard,
    authorization: Option<&[u8]>,
    action: UserAction,
) -> Result<(UserReply, usize), Failure> {
    let now = now_ms();
    let claims = verify_bearer(auth, authorization, now / 1000)?;
    let user = UserId::parse(&claims.sub).ok_or_else(|| refused(HomeError::NotAuthenticated, shard.id()))?;
    let slot = user.slot();
    let command = UserCommand::Authenticated {
        user,
        session: claims.sid,
        now_ms: now,
        action,
    };
    let reply = shard.invoke_on_home(slot, command).await.map_err(mesh_failure)?;
    Ok((reply, shard.home_of(slot)))
}

enum Began {
    Proceed(UserId),
    Answered(Answer),
}

/// Authenticates, reads the idempotency key and claims it on the user's home shard.
async fn begin(
    auth: &Auth,
    shard: &Shard,
    authorization: Option<&[u8]>,
    idempotency_key: Option<&[u8]>,
    request_line: &str,
    body: &[u8],
) -> Result<(Began, String, String, u64), Failure> {
    let now = now_ms();
    let claims = verify_bearer(auth, authorization, now / 1000)?;
    let user = UserId::parse(&claims.sub).ok_or_else(|| refused(HomeError::NotAuthenticated, shard.id()))?;
    let key = idempotency_key_of(idempotency_key)?;
    let slot = user.slot();
    let home = shard.home_of(slot);
    let command = UserCommand::Authenticated {
        user: user.clone(),
        session: claims.sid.clone(),
        now_ms: now,
        action: UserAction::BeginIdempotent {
            key: key.clone(),
            fingerprint: fingerprint(request_line, body),
        },
    };
    let reply = match shard.invoke_on_home(slot, command).await {
        Ok(reply) => reply,
        Err(error) => {
            release_unacknowledged_claim(
                shard,
                slot,
                crate::payments::idempotency::Scope::User(user.clone()),
                &key,
                &error,
            )
            .await;
            return Err(mesh_failure(error));
        }
    };
    let began = match reply {
        UserReply::Idempotency(Begin::Proceed) => Began::Proceed(user),
        UserReply::Idempotency(Begin::Replay { status, body }) => Began::Answered(Answer {
            status,
            body,
            home,
            replayed: true,
        }),
        UserReply::Idempotency(refusal) => return Err(idempotency_refusal(&refusal, home)),
        UserReply::Refused(error) => return Err(refused(error, home)),
        other => return Err(unexpected(&other)),
    };
    Ok((began, claims.sid, key, now))
}

/// A claim that was applied but not acknowledged (the store did not take it in time, or the
/// home shard's reply timed out) would hold its key as "running" until a restart: it is released
/// at once, so that a retry executes. Best effort: the release is applied even when its own
/// acknowledgement fails too, and is stored with the next batch.
pub(super) async fn release_unacknowledged_claim(
    shard: &Shard,
    slot: crate::slots::Slot,
    scope: crate::payments::idempotency::Scope,
    key: &str,
    error: &crate::shard::mesh::MeshError,
) {
    use crate::net::peer::PeerError;
    use crate::shard::mesh::MeshError;
    // On another node, a broken connection may also have lost the reply of an applied claim.
    if matches!(
        error,
        MeshError::StorageFailed(_)
            | MeshError::Timeout(_)
            | MeshError::Node(PeerError::StorageFailed | PeerError::Timeout | PeerError::Unreachable)
    ) {
        let release = UserCommand::IdempotencyComplete {
            scope,
            key: key.to_string(),
            status: 503,
            body: Vec::new(),
        };
        let _ = shard.invoke_on_home(slot, release).await;
    }
}

/// Stores a final answer under the key (a 4xx here; the home shard stores a 201 itself) and
/// turns the outcome into the response.
async fn finish(
    shard: &Shard,
    user: &UserId,
    key: String,
    outcome: Result<Outcome, Failure>,
    request_id: &str,
) -> Result<Answer, Failure> {
    let slot = user.slot();
    let home = shard.home_of(slot);
    match outcome {
        Ok(Outcome::Done(body)) => Ok(Answer {
            status: 201,
            body,
            home,
            replayed: false,
        }),
        Ok(Outcome::Pending) => Err(Failure {
            error: ApiError::unavailable(
                "payment_pending",
                "The other shard did not confirm yet; the transfer completes in the background. Retry with the same Idempotency-Key.",
            ),
            home: Some(home),
        }),
        Err(failure) => {
            let mut encoded = Vec::new();
            error::encode_body(&failure.error, request_id, &mut encoded);
            // A 5xx is not stored (the home shard releases the key), so a retry executes again.
            let complete = UserCommand::IdempotencyComplete {
                scope: crate::payments::idempotency::Scope::User(user.clone()),
                key,
                status: failure.error.status,
                body: encoded.clone(),
            };
            shard.invoke_on_home(slot, complete).await.map_err(mesh_failure)?;
            if failure.error.status >= 500 {
                return Err(failure);
            }
            Ok(Answer {
                status: failure.error.status,
                body: encoded,
                home: failure.home.unwrap_or(home),
                replayed: false,
            })
        }
    }
}

async fn execute_payment(
    money: &Money,
    shard: &Shard,
    body: &[u8],
    payer: &UserId,
    key: &str,
    now: u64,
) -> Result<Outcome, Failure> {
    let request: PayRequest = parse_body(body)?;
    let amount = amount_of(&request.amount)?;
    let currency = money.currency(&request.currency)?;
    if request
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > DESCRIPTION_CHARS_MAX)
    {
        return Err(ApiError::new(
            422,
            ErrorType::InvalidRequestError,
            "invalid_description",
            "description is at most 200 characters.",
        )
        .with_param("description")
        .into());
    }
    let payee = resolve_payee(shard, &request.to).await?;
    if &payee == payer {
        return Err(ApiError::new(
            422,
            ErrorType::InvalidRequestError,
            "self_payment",
            "A payment needs two different users.",
        )
        .with_param("to")
        .into());
    }
    for _ in 0..ID_DRAWS_MAX {
        let payment = Payment {
            id: format!("pay_{}", hex(&random::<12>()?)),
            from: payer.clone(),
            to: payee.clone(),
            amount,
            currency,
            description: request.description.clone(),
            amount_refunded: 0,
            created_at_ms: now,
        };
        let answer = serde_json::to_vec(&payment_value(&payment)).expect("plain values serialize");
        let command = UserCommand::Pay {
            payment,
            key: key.to_string(),
            answer: answer.clone(),
            now_ms: now,
        };
        match shard
            .invoke_on_home(payer.slot(), command)
            .await
            .map_err(mesh_failure)?
        {
            UserReply::Done => return Ok(Outcome::Done(answer)),
            UserReply::Transfer(transfer) => return deliver(shard, payer.slot(), transfer, answer).await,
            UserReply::Refused(HomeError::IdCollision) => continue,
            UserReply::Refused(error) => return Err(refused(error, shard.home_of(payer.slot()))),
            other => return Err(unexpected(&other)),
        }
    }
    Err(super::auth::internal("could not draw a free payment id").into())
}

async fn execute_refund(
    shard: &Shard,
    payment: &str,
    body: &[u8],
    payee: &UserId,
    session: &str,
    key: &str,
    now: u64,
) -> Result<Outcome, Failure> {
    let request: RefundRequest = parse_body(body)?;
    let asked = request.amount.as_ref().map(amount_of).transpose()?;
    let slot = payee.slot();
    let home = shard.home_of(slot);
    let how_much = UserCommand::Authenticated {
        user: payee.clone(),
        session: session.to_string(),
        now_ms: now,
        action: UserAction::RefundAmount {
            payment: payment.to_string(),
            amount: asked,
        },
    };
    let (amount, currency) = match shard.invoke_on_home(slot, how_much).await.map_err(mesh_failure)? {
        UserReply::RefundAmount(amount, currency) => (amount, currency),
        UserReply::Refused(error) => return Err(refused(error, home)),
        other => return Err(unexpected(&other)),
    };
    if amount == 0 {
        return Err(refused(
            HomeError::Ledger(crate::payments::ledger::LedgerError::RefundExceedsPayment),
            home,
        ));
    }
    for _ in 0..ID_DRAWS_MAX {
        let refund = format!("ref_{}", hex(&random::<12>()?));
        let answer = serde_json::to_vec(&RefundBody {
            id: &refund,
            payment_id: payment,
            amount,
            currency: currency.as_str(),
            created_at: rfc3339(now),
        })
        .expect("plain structs serialize");
        let command = UserCommand::Refund {
            refund,
            payment: payment.to_string(),
            by: payee.clone(),
            amount,
            key: key.to_string(),
            answer: answer.clone(),
            now_ms: now,
        };
        match shard.invoke_on_home(slot, command).await.map_err(mesh_failure)? {
            UserReply::Done => return Ok(Outcome::Done(answer)),
            UserReply::Transfer(transfer) => return deliver(shard, slot, transfer, answer).await,
            UserReply::Refused(HomeError::IdCollision) => continue,
            UserReply::Refused(error) => return Err(refused(error, home)),
            other => return Err(unexpected(&other)),
        }
    }
    Err(super::auth::internal("could not draw a free refund id").into())
}

/// Carries a reserved credit to the recipient's shard and the acknowledgement back. If either
/// hop fails, the credit stays in the sender's outbox and is resent in the background.
async fn deliver(
    shard: &Shard,
    sender: Slot,
    transfer: Transfer,
    answer: Vec<u8>,
) -> Result<Outcome, Failure> {
    let id = transfer.id().to_string();
    let recipient = transfer.recipient().slot();
    match shard
        .invoke_on_home(recipient, UserCommand::Receive(transfer))
        .await
    {
        Ok(UserReply::Done) => {}
        Ok(other) => {
            tracing::error!(?other, "a credit was refused by its recipient's shard");
            return Ok(Outcome::Pending);
        }
        Err(_) => return Ok(Outcome::Pending),
    }
    // The debit and the credit are durable: the settle is bookkeeping, redone after a crash.
    match shard
        .invoke_on_home_unsynced(sender, UserCommand::Settle { transfer: id })
        .await
    {
        Ok(UserReply::Done) => Ok(Outcome::Done(answer)),
        _ => Ok(Outcome::Pending),
    }
}

/// Finds the payee by user id or username on the payee's home shard.
async fn resolve_payee(shard: &Shard, to: &str) -> Result<UserId, Failure> {
    let not_found = || {
        Failure::from(
            ApiError::new(
                404,
                ErrorType::InvalidRequestError,
                "payee_not_found",
                "No such payee.",
            )
            .with_param("to"),
        )
    };
    let (slot, name) = match UserId::parse(to) {
        Some(id) => (id.slot(), id.to_string()),
        None => {
            let folded = to.to_ascii_lowercase();
            (Slot::of_username(&folded), folded)
        }
    };
    match shard
        .invoke_on_home(slot, UserCommand::ResolveUser { to: name })
        .await
        .map_err(mesh_failure)?
    {
        UserReply::User(user) => Ok(user.id),
        UserReply::Refused(_) => Err(not_found()),
        other => Err(unexpected(&other)),
    }
}

fn json_answer(status: u16, value: &impl Serialize, home: usize) -> Answer {
    Answer {
        status,
        body: serde_json::to_vec(value).expect("plain values serialize"),
        home,
        replayed: false,
    }
}
