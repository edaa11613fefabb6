//! A user's home shard: executes the user-scoped commands of the users whose slots this shard owns,
//! against its [`AuthState`], with the per-username login throttle and the per-user request limit.
//!
//! Commands arrive as owned values, from the local API or over the mesh, and are answered with
//! owned replies; they are never HTTP. Every authenticated command names its session, so a revoked
//! session stops working at once on every route. No I/O and no clock reads: time comes with each
//! command. Shard-local.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::auth::state::{AuthError, AuthState, Command, Event, RevokeReason, TokenHash};
use crate::config::{AuthConfig, MoneyConfig};
use crate::payments::idempotency::{self, Begin, Change, Fingerprint, Scope};
use crate::payments::ledger::{self, Currency, Ledger, LedgerError, Payment, Transfer};
use crate::placement::{Placement, SlotRange};
use crate::ratelimit::Limiter;
use crate::slots::Slot;
use crate::slots::UserId;
use crate::storage::{Log, MemoryLog, Record, StateView};

/// A user-scoped request to the user's home shard.
#[derive(Debug, Serialize, Deserialize)]
pub enum UserCommand {
    /// Sign up (the password is already hashed).
    CreateUser {
        /// New id, in the username's slot.
        id: UserId,
        /// Case-folded, validated username.
        username: String,
        /// argon2id PHC string.
        password_hash: String,
        /// Unix milliseconds.
        now_ms: u64,
    },
    /// Before a password check: may this username try now, and what are its credentials?
    LoginLookup {
        /// Case-folded username.
        username: String,
        /// Unix milliseconds.
        now_ms: u64,
    },
    /// A password check failed.
    LoginFailed {
        /// Case-folded username.
        username: String,
        /// Unix milliseconds.
        now_ms: u64,
    },
    /// A password check passed: open a session.
    CreateSession {
        /// User.
        user: UserId,
        /// New session id.
        session: String,
        /// Hash of the new refresh token.
        refresh_hash: TokenHash,
        /// Unix milliseconds.
        refresh_expires_at_ms: u64,
        /// Unix milliseconds.
        now_ms: u64,
    },
    /// Rotate a refresh token.
    Refresh {
        /// Hash of the presented token.
        presented: TokenHash,
        /// Hash of its replacement.
        replacement: TokenHash,
        /// Unix milliseconds.
        refresh_expires_at_ms: u64,
        /// Unix milliseconds.
        now_ms: u64,
    },
    /// Claim or look up an idempotency key (on the shard that keeps the key).
    IdempotencyBegin {
        /// Whose key.
        scope: Scope,
        /// The key.
        key: String,
        /// The request it comes with.
        fingerprint: Fingerprint,
        /// Unix milliseconds.
        now_ms: u64,
    },
    /// Store the final answer for a claimed key (a 5xx releases it instead).
    IdempotencyComplete {
        /// Whose key.
        scope: Scope,
        /// The key.
        key: String,
        /// Status to replay.
        status: u16,
        /// Body to replay, byte for byte.
        body: Vec<u8>,
    },
    /// Find a user of this shard by user id or case-folded username.
    ResolveUser {
        /// `usr_…` or a username.
        to: String,
    },
    /// Pay: debit the payer (and credit a local payee), storing `answer` for the payer's
    /// idempotency `key` once the payment is complete.
    Pay {
        /// The payment.
        payment: Payment,
        /// The payer's idempotency key.
        key: String,
        /// The 201 body to store for the key.
        answer: Vec<u8>,
        /// Unix milliseconds.
        now_ms: u64,
    },
    /// Refund by the payee, storing `answer` for the payee's idempotency `key` once complete.
    Refund {
        /// `ref_…`
        refund: String,
        /// The payment.
        payment: String,
        /// Who asks.
        by: UserId,
        /// Minor units (decided with `RefundAmount`).
        amount: u64,
        /// The payee's idempotency key.
        key: String,
        /// The 201 body to store for the key.
        answer: Vec<u8>,
        /// Unix milliseconds.
        now_ms: u64,
    },
    /// Apply a credit from another shard (idempotent).
    Receive(Transfer),
    /// The receiving shard applied a transfer of this shard's outbox.
    Settle {
        /// The transfer's id.
        transfer: String,
    },
    /// Outbox entries not acknowledged and not sent for `older_than_ms`: what to resend now.
    OutboxDue {
        /// Unix milliseconds.
        now_ms: u64,
        /// Minimum time since the last attempt.
        older_than_ms: u64,
    },
    /// Credit a user of this shard (the admin deposit).
    Deposit {
        /// `dep_…`
        id: String,
        /// Recipient.
        user: UserId,
        /// Minor units.
        amount: u64,
        /// Currency.
        currency: Currency,
    },
    /// A request with a verified access token: check the session, count the request, act.
    Authenticated {
        /// The token's `sub`.
        user: UserId,
        /// The token's `sid`.
        session: String,
        /// Unix milliseconds.
        now_ms: u64,
        /// What to do.
        action: UserAction,
    },
}

/// What an authenticated request does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserAction {
    /// `GET /v1/me`
    Me,
    /// `GET /v1/sessions`
    ListSessions,
    /// `DELETE /v1/sessions/current`
    RevokeCurrent,
    /// `DELETE /v1/sessions`
    RevokeAll,
    /// `GET /v1/balances`
    Balances,
    /// Claim an idempotency key of this user (before a payment or refund).
    BeginIdempotent {
        /// The key.
        key: String,
        /// The request it comes with.
        fingerprint: Fingerprint,
    },
    /// `GET /v1/payments/{id}`
    GetPayment(String),
    /// `GET /v1/payments`
    ListPayments {
        /// Cursor: list the payments older than this one.
        starting_after: Option<String>,
        /// Page size.
        limit: usize,
    },
    /// How much a refund of `payment` by this user would be (`amount`, or the rest).
    RefundAmount {
        /// The payment.
        payment: String,
        /// The asked amount; `None` for the rest.
        amount: Option<u64>,
    },
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// Id.
    pub id: UserId,
    /// Case-folded username.
    pub username: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
}

/// A session as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Session id.
    pub session: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds.
    pub last_used_at_ms: u64,
}

/// The home shard's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum UserReply {
    /// A user (signup, `/v1/me`).
    User(UserView),
    /// The credentials for a password check; `None` for an unknown username.
    Credentials(Option<(UserId, String)>),
    /// A session was opened or refreshed for this user.
    Session {
        /// User.
        user: UserId,
        /// Session id.
        session: String,
    },
    /// The user's sessions, oldest first.
    Sessions(Vec<SessionView>),
    /// Done, nothing to show.
    Done,
    /// What to do with an idempotent request.
    Idempotency(Begin),
    /// A payment.
    Payment(Box<Payment>),
    /// A page of payments, newest first, and whether more follow.
    Payments(Vec<Payment>, bool),
    /// A credit to send to another shard before the answer.
    Transfer(Transfer),
    /// Transfers to resend.
    Transfers(Vec<Transfer>),
    /// A refund amount and currency.
    RefundAmount(u64, Currency),
    /// Balances, in currency order.
    Balances(Vec<(Currency, u64)>),
    /// Refused.
    Refused(HomeError),
}

/// Why the home shard refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HomeError {
    /// 409: the username belongs to another user.
    UsernameTaken,
    /// 401: unknown, expired, rotated or revoked refresh token.
    InvalidRefreshToken,
    /// 401: the session is revoked or unknown, or the user is.
    NotAuthenticated,
    /// 429 on login: too many failed attempts for this username.
    TooManyAttempts {
        /// Seconds until another attempt is allowed.
        retry_after_seconds: u64,
    },
    /// 429: the user's request rate is exceeded.
    RateLimited {
        /// Seconds until another request is allowed.
        retry_after_seconds: u64,
    },
    /// A freshly drawn id collided; the caller draws again (astronomically rare).
    IdCollision,
    /// 404: no such user.
    UserNotFound,
    /// A ledger refusal (422 and friends).
    Ledger(LedgerError),
    /// 422: the `starting_after` cursor is not one of the user's payments.
    UnknownCursor,
}

/// An idempotency answer to store once a cross-shard transfer is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PendingAnswer {
    scope: Scope,
    key: String,
    answer: Vec<u8>,
}

/// One shard's user-scoped state.
pub struct Home {
    /// Where every decided event goes before it is applied.
    log: Box<dyn Log>,
    /// The slots this shard owns.
    slots: SlotRange,
    auth: AuthState,
    ledger: Ledger,
    /// Answers waiting for their transfer's acknowledgement, by transfer id.
    pending: HashMap<String, PendingAnswer>,
    /// When each outbox entry was last sent, Unix milliseconds.
    last_sent: HashMap<String, u64>,
    idempotency: idempotency::Store,
    /// Retention (ms) and capacity of the idempotency store, from the configuration.
    idempotency_limits: (u64, usize),
    login_failures: Limiter<String>,
    user_requests: Limiter<UserId>,
}

impl Home {
    /// Empty state of `shard` of `shards`, with the limits of the configuration.
    pub fn new(shard: usize, shards: usize, config: &AuthConfig, money: &MoneyConfig) -> Home {
        let login_quota = config
            .login_failure_quota()
            .expect("auth limits are validated at load");
        let user_quota = config
            .user_request_quota()
            .expect("auth limits are validated at load");
        Home {
            log: Box::new(MemoryLog::new()),
            slots: Placement::single(shards).shard_slots(shard),
            auth: AuthState::new(),
            ledger: Ledger::new(),
            pending: HashMap::new(),
            last_sent: HashMap::new(),
            idempotency: idempotency::Store::new(
                money.idempotency_retention_seconds.saturating_mul(1000),
                money.idempotency_keys_max,
            ),
            idempotency_limits: (
                money.idempotency_retention_seconds.saturating_mul(1000),
                money.idempotency_keys_max,
            ),
            login_failures: Limiter::new(login_quota, config.rate_limit_entries_max),
            user_requests: Limiter::new(user_quota, config.rate_limit_entries_max),
        }
    }

    /// Executes one command.
    pub fn execute(&mut self, command: UserCommand) -> UserReply {
        match command {
            UserCommand::CreateUser {
                id,
                username,
                password_hash,
                now_ms,
            } => {
                let command = Command::CreateUser {
                    id,
                    username,
                    password_hash,
                    now_ms,
                };
                match self.commit_auth(&command) {
                    Ok(events) => match events.first() {
                        Some(Event::UserCreated(user)) => UserReply::User(UserView {
                            id: user.id.clone(),
                            username: user.username.clone(),
                            created_at_ms: user.created_at_ms,
                        }),
                        _ => unreachable!("CreateUser decides UserCreated"),
                    },
                    Err(AuthError::UsernameTaken) => UserReply::Refused(HomeError::UsernameTaken),
                    Err(_) => UserReply::Refused(HomeError::IdCollision),
                }
            }
            UserCommand::LoginLookup { username, now_ms } => {
                if let Err(retry) = self.login_failures.would_allow(&username, now_ms) {
                    return UserReply::Refused(HomeError::TooManyAttempts {
                        retry_after_seconds: retry.seconds(),
                    });
                }
                UserReply::Credentials(
                    self.auth
                        .user_by_username(&username)
                        .map(|user| (user.id.clone(), user.password_hash.clone())),
                )
            }
            UserCommand::LoginFailed { username, now_ms } => {
                let _ = self.login_failures.check(&username, now_ms);
                UserReply::Done
            }
            UserCommand::CreateSession {
                user,
                session,
                refresh_hash,
                refresh_expires_at_ms,
                now_ms,
            } => {
                let command = Command::CreateSession {
                    user: user.clone(),
                    session: session.clone(),
                    refresh_hash,
                    refresh_expires_at_ms,
                    now_ms,
                };
                match self.commit_auth(&command) {
                    Ok(_) => {
                        if let Some(found) = self.auth.user(&user) {
                            // A successful login clears the username's failures.
                            let username = found.username.clone();
                            self.login_failures.reset(&username);
                        }
                        UserReply::Session { user, session }
                    }
                    Err(AuthError::UnknownUser) => UserReply::Refused(HomeError::NotAuthenticated),
                    Err(_) => UserReply::Refused(HomeError::IdCollision),
                }
            }
            UserCommand::Refresh {
                presented,
                replacement,
                refresh_expires_at_ms,
                now_ms,
            } => {
                let command = Command::Refresh {
                    presented,
                    replacement,
                    refresh_expires_at_ms,
                    now_ms,
                };
                match self.commit_auth(&command) {
                    Ok(events) => {
                        match events.first() {
                            Some(Event::SessionRefreshed { session, .. }) => {
                                let user = self
                                    .auth
                                    .session_owner(session)
                                    .expect("a refreshed session is live")
                                    .clone();
                                UserReply::Session {
                                    user,
                                    session: session.clone(),
                                }
                            }
                            // Reuse revoked the session; the presenter learns only that it failed.
                            Some(Event::SessionRevoked {
                                reason: RevokeReason::RefreshTokenReused,
                                ..
                            }) => UserReply::Refused(HomeError::InvalidRefreshToken),
                            _ => UserReply::Refused(HomeError::InvalidRefreshToken),
                        }
                    }
                    Err(AuthError::SessionIdTaken) => UserReply::Refused(HomeError::IdCollision),
                    Err(_) => UserReply::Refused(HomeError::InvalidRefreshToken),
                }
            }
            UserCommand::IdempotencyBegin {
                scope,
                key,
                fingerprint,
                now_ms,
            } => UserReply::Idempotency(self.claim(&scope, &key, fingerprint, now_ms)),
            UserCommand::IdempotencyComplete {
                scope,
                key,
                status,
                body,
            } => {
                let change = self.idempotency.decide_complete(&scope, &key, status, body);
                self.commit(Vec::new(), change.into_iter().collect());
                UserReply::Done
            }
            UserCommand::ResolveUser { to } => {
                let found = match UserId::parse(&to) {
                    Some(id) => self.auth.user(&id),
                    None => self.auth.user_by_username(&to),
                };
                match found {
                    Some(user) => UserReply::User(UserView {
                        id: user.id.clone(),
                        username: user.username.clone(),
                        created_at_ms: user.created_at_ms,
                    }),
                    None => UserReply::Refused(HomeError::UserNotFound),
                }
            }
            UserCommand::Pay {
                payment,
                key,
                answer,
                now_ms,
            } => {
                let payee_local = self.is_local(payment.to.slot());
                let scope = Scope::User(payment.from.clone());
                let command = ledger::Command::Pay { payment, payee_local };
                match self.ledger.decide(&command) {
                    Ok(events) => self.after_transfer(events, scope, key, answer, now_ms),
                    Err(LedgerError::IdTaken) => UserReply::Refused(HomeError::IdCollision),
                    Err(error) => UserReply::Refused(HomeError::Ledger(error)),
                }
            }
            UserCommand::Refund {
                refund,
                payment,
                by,
                amount,
                key,
                answer,
                now_ms,
            } => {
                let Some(found) = self.ledger.payment(&payment, &by) else {
                    return UserReply::Refused(HomeError::Ledger(LedgerError::PaymentNotFound));
                };
                let payer_local = self.is_local(found.from.slot());
                let scope = Scope::User(by.clone());
                let command = ledger::Command::Refund {
                    refund,
                    payment,
                    by,
                    amount: Some(amount),
                    payer_local,
                };
                match self.ledger.decide(&command) {
                    Ok(events) => self.after_transfer(events, scope, key, answer, now_ms),
                    Err(LedgerError::IdTaken) => UserReply::Refused(HomeError::IdCollision),
                    Err(error) => UserReply::Refused(HomeError::Ledger(error)),
                }
            }
            UserCommand::Receive(transfer) => match self.commit_ledger(&ledger::Command::Receive(transfer)) {
                Ok(_) => UserReply::Done,
                Err(error) => UserReply::Refused(HomeError::Ledger(error)),
            },
            UserCommand::Settle { transfer } => {
                self.last_sent.remove(&transfer);
                let Ok(events) = self.ledger.decide(&ledger::Command::Settle {
                    transfer: transfer.clone(),
                }) else {
                    return UserReply::Done;
                };
                // The waiting answer becomes the key's stored answer in the same append
                // (applying `Settled` drops the pending answer).
                let completion = self.pending.get(&transfer).and_then(|pending| {
                    self.idempotency.decide_complete(
                        &pending.scope,
                        &pending.key,
                        201,
                        pending.answer.clone(),
                    )
                });
                self.commit(events, completion.into_iter().collect());
                UserReply::Done
            }
            UserCommand::OutboxDue {
                now_ms,
                older_than_ms,
            } => {
                let mut due = Vec::new();
                for transfer in self.ledger.outbox() {
                    let last = self.last_sent.get(transfer.id()).copied().unwrap_or(0);
                    if now_ms.saturating_sub(last) >= older_than_ms {
                        due.push(transfer.clone());
                    }
                }
                for transfer in &due {
                    self.last_sent.insert(transfer.id().to_string(), now_ms);
                }
                UserReply::Transfers(due)
            }
            UserCommand::Deposit {
                id,
                user,
                amount,
                currency,
            } => {
                if self.auth.user(&user).is_none() {
                    return UserReply::Refused(HomeError::UserNotFound);
                }
                let command = ledger::Command::Deposit {
                    id: id.clone(),
                    user: user.clone(),
                    amount,
                    currency,
                };
                match self.commit_ledger(&command) {
                    Ok(_) => UserReply::Done,
                    // Deposit ids derive from the idempotency key: the same deposit, applied by
                    // an attempt a restart interrupted before its key was answered.
                    Err(LedgerError::IdTaken) => match self.ledger.deposit(&id) {
                        Some((to, done, done_currency))
                            if *to == user && done == amount && done_currency == currency =>
                        {
                            UserReply::Done
                        }
                        _ => UserReply::Refused(HomeError::IdCollision),
                    },
                    Err(error) => UserReply::Refused(HomeError::Ledger(error)),
                }
            }
            UserCommand::Authenticated {
                user,
                session,
                now_ms,
                action,
            } => self.authenticated(user, session, now_ms, action),
        }
    }

    fn authenticated(&mut self, user: UserId, session: String, now_ms: u64, action: UserAction) -> UserReply {
        if self.auth.session(&user, &session).is_none() {
            return UserReply::Refused(HomeError::NotAuthenticated);
        }
        if let Err(retry) = self.user_requests.check(&user, now_ms) {
            return UserReply::Refused(HomeError::RateLimited {
                retry_after_seconds: retry.seconds(),
            });
        }
        self.auth.touch(&session, now_ms);
        match action {
            UserAction::Me => match self.auth.user(&user) {
                Some(found) => UserReply::User(UserView {
                    id: found.id.clone(),
                    username: found.username.clone(),
                    created_at_ms: found.created_at_ms,
                }),
                None => UserReply::Refused(HomeError::NotAuthenticated),
            },
            UserAction::ListSessions => UserReply::Sessions(
                self.auth
                    .sessions_of(&user)
                    .into_iter()
                    .map(|s| SessionView {
                        session: s.id.clone(),
                        created_at_ms: s.created_at_ms,
                        last_used_at_ms: s.last_used_at_ms,
                    })
                    .collect(),
            ),
            UserAction::RevokeCurrent => {
                let _ = self.commit_auth(&Command::RevokeSession { user, session });
                UserReply::Done
            }
            UserAction::RevokeAll => {
                let _ = self.commit_auth(&Command::RevokeAllSessions { user });
                UserReply::Done
            }
            UserAction::Balances => UserReply::Balances(self.ledger.balances_of(&user)),
            UserAction::BeginIdempotent { key, fingerprint } => {
                UserReply::Idempotency(self.claim(&Scope::User(user), &key, fingerprint, now_ms))
            }
            UserAction::GetPayment(id) => match self.ledger.payment(&id, &user) {
                Some(payment) => UserReply::Payment(Box::new(payment.clone())),
                None => UserReply::Refused(HomeError::Ledger(LedgerError::PaymentNotFound)),
            },
            UserAction::ListPayments {
                starting_after,
                limit,
            } => {
                if let Some(cursor) = &starting_after {
                    if self.ledger.payment(cursor, &user).is_none() {
                        return UserReply::Refused(HomeError::UnknownCursor);
                    }
                }
                let (page, more) = self.ledger.payments_of(&user, starting_after.as_deref(), limit);
                UserReply::Payments(page.into_iter().cloned().collect(), more)
            }
            UserAction::RefundAmount { payment, amount } => match self.ledger.payment(&payment, &user) {
                Some(found) if found.to == user => {
                    let left = found.amount - found.amount_refunded;
                    UserReply::RefundAmount(amount.unwrap_or(left), found.currency)
                }
                // Only the payee refunds; to anyone else the payment does not exist.
                _ => UserReply::Refused(HomeError::Ledger(LedgerError::PaymentNotFound)),
            },
        }
    }
}

impl Home {
    /// Uses `log` instead of the in-memory log (tests, and the durable log).
    pub fn with_log(mut self, log: Box<dyn Log>) -> Home {
        self.log = log;
        self
    }

    /// Decides an auth command, stores its events, then applies them.
    fn commit_auth(&mut self, command: &Command) -> Result<Vec<Event>, AuthError> {
        let events = self.auth.decide(command)?;
        if !events.is_empty() {
            let records: Vec<Record> = events.iter().cloned().map(Record::Auth).collect();
            self.log.append(&records);
            self.log.before_apply(
                &records,
                &StateView {
                    auth: &self.auth,
                    ledger: &self.ledger,
                },
            );
            for event in &events {
                self.auth.apply(event);
            }
        }
        Ok(events)
    }

    /// Decides a ledger command, stores its events, then applies them.
    fn commit_ledger(&mut self, command: &ledger::Command) -> Result<Vec<ledger::Event>, LedgerError> {
        let events = self.ledger.decide(command)?;
        self.commit(events.clone(), Vec::new());
        Ok(events)
    }

    /// Whether `slot` belongs to this shard.
    fn is_local(&self, slot: Slot) -> bool {
        self.slots.contains(slot.number())
    }

    /// Sets the slots this shard owns when its node serves only part of them (`Home::new`
    /// divides all the slots).
    pub fn set_slots(&mut self, slots: SlotRange) {
        self.slots = slots;
    }

    /// After a payment or refund was decided: log its events, and — when it was local — the
    /// key's answer with them, in one append, then apply; a cross-shard one keeps its answer
    /// until the other shard acknowledges the transfer the caller must now send.
    fn after_transfer(
        &mut self,
        events: Vec<ledger::Event>,
        scope: Scope,
        key: String,
        answer: Vec<u8>,
        now_ms: u64,
    ) -> UserReply {
        let transfer = events.iter().find_map(|event| match event {
            ledger::Event::Reserved(transfer) => Some(transfer.clone()),
            ledger::Event::RefundReserved { transfer, .. } => Some(transfer.clone()),
            _ => None,
        });
        match transfer {
            None => {
                let completion = self.idempotency.decide_complete(&scope, &key, 201, answer);
                self.commit(events, completion.into_iter().collect());
                UserReply::Done
            }
            Some(transfer) => {
                let pending = Record::Pending {
                    transfer: transfer.id().to_string(),
                    scope,
                    key,
                    answer,
                };
                self.commit_with(events, Vec::new(), Some(pending));
                self.last_sent.insert(transfer.id().to_string(), now_ms);
                UserReply::Transfer(transfer)
            }
        }
    }

    /// Claims or looks up an idempotency key, logging a claim before applying it.
    fn claim(&mut self, scope: &Scope, key: &str, fingerprint: Fingerprint, now_ms: u64) -> Begin {
        let (begin, change) = self.idempotency.decide_begin(scope, key, fingerprint, now_ms);
        self.commit(Vec::new(), change.into_iter().collect());
        begin
    }

    /// Logs ledger events and idempotency changes in one append, then applies them.
    fn commit(&mut self, events: Vec<ledger::Event>, changes: Vec<Change>) {
        self.commit_with(events, changes, None);
    }

    /// As [`Home::commit`], with a pending cross-shard answer in the same append.
    fn commit_with(&mut self, events: Vec<ledger::Event>, changes: Vec<Change>, pending: Option<Record>) {
        if events.is_empty() && changes.is_empty() && pending.is_none() {
            return;
        }
        let records: Vec<Record> = events
            .into_iter()
            .map(Record::Ledger)
            .chain(changes.into_iter().map(Record::Idempotency))
            .chain(pending)
            .collect();
        self.log.append(&records);
        self.log.before_apply(
            &records,
            &StateView {
                auth: &self.auth,
                ledger: &self.ledger,
            },
        );
        for record in records {
            self.apply(record);
        }
    }

    /// Applies one logged record: after it was appended, or when replaying the log.
    fn apply(&mut self, record: Record) {
        match record {
            Record::Auth(event) => self.auth.apply(&event),
            Record::Ledger(event) => {
                if let ledger::Event::Settled { transfer } = &event {
                    self.pending.remove(transfer);
                }
                self.ledger.apply(&event);
            }
            Record::Idempotency(change) => self.idempotency.apply(&change),
            Record::Pending {
                transfer,
                scope,
                key,
                answer,
            } => {
                self.pending
                    .insert(transfer, PendingAnswer { scope, key, answer });
            }
        }
    }

    /// After recovery: releases the idempotency keys whose request a stop interrupted (claimed,
    /// never answered, and not waiting for another shard's acknowledgement), so that a retry
    /// executes again instead of getting 409 until the key expires. Safe: a payment's key is
    /// answered in the same append as the payment (or waits as a pending answer), and a deposit's
    /// id derives from its key, so a retried deposit that was applied is recognised. Returns how
    /// many keys were released.
    pub fn release_interrupted(&mut self) -> usize {
        let waiting: std::collections::HashSet<(&Scope, &str)> = self
            .pending
            .values()
            .map(|pending| (&pending.scope, pending.key.as_str()))
            .collect();
        let released: Vec<Change> = self
            .idempotency
            .running()
            .into_iter()
            .filter(|(scope, key)| !waiting.contains(&(scope, key.as_str())))
            .map(|(scope, key)| Change::Released { scope, key })
            .collect();
        let count = released.len();
        self.commit(Vec::new(), released);
        count
    }

    /// The shard's money (read-only; for checks and tests).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The shard's users and sessions (read-only).
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    /// The shard's idempotency keys (read-only).
    pub fn idempotency(&self) -> &idempotency::Store {
        &self.idempotency
    }

    /// The answer waiting for a cross-shard transfer's acknowledgement: the idempotency key's
    /// scope and key, and the 201 body.
    pub fn pending_answer(&self, transfer: &str) -> Option<(&Scope, &str, &[u8])> {
        self.pending
            .get(transfer)
            .map(|pending| (&pending.scope, pending.key.as_str(), pending.answer.as_slice()))
    }

    /// Replaces the logged state with one loaded from rows (the ScyllaDB store): users and
    /// sessions, money, the idempotency keys as the changes that make them, and the answers
    /// waiting for acknowledgements (transfer, scope, key, body).
    pub fn restore_parts(
        &mut self,
        auth: AuthState,
        ledger: Ledger,
        keys: Vec<Change>,
        pending: Vec<(String, Scope, String, Vec<u8>)>,
    ) {
        self.auth = auth;
        self.ledger = ledger;
        let (retention_ms, entries_max) = self.idempotency_limits;
        self.idempotency = idempotency::Store::new(retention_ms, entries_max);
        for change in &keys {
            self.idempotency.apply(change);
        }
        self.pending = pending
            .into_iter()
            .map(|(transfer, scope, key, answer)| (transfer, PendingAnswer { scope, key, answer }))
            .collect();
    }

    /// Replays records read back from the log (recovery), in order.
    pub fn replay(&mut self, records: Vec<Record>) {
        for record in records {
            self.apply(record);
        }
    }

    /// The shard's logged state, encoded for a snapshot. Rate limits, session use times and
    /// resend times are not part of it (they are not logged either).
    pub fn encode_state(&self) -> Vec<u8> {
        let state = StateRef {
            auth: &self.auth,
            ledger: &self.ledger,
            idempotency: &self.idempotency,
            pending: &self.pending,
        };
        bincode::serialize(&state).expect("the state serializes")
    }

    /// Replaces the logged state with a snapshot's (from [`Home::encode_state`]).
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: State =
            bincode::deserialize(bytes).map_err(|error| format!("the snapshot does not decode: {error}"))?;
        self.set_state(state);
        Ok(())
    }

    fn set_state(&mut self, state: State) {
        self.auth = state.auth;
        self.ledger = state.ledger;
        self.idempotency = state
            .idempotency
            .with_limits(self.idempotency_limits.0, self.idempotency_limits.1);
        self.pending = state.pending;
    }

    /// Moves the state of `parts` (old shards) to `shards` new shards (resharding): every user's
    /// data goes to the shard of the user's slot, admin idempotency keys to the shard of the
    /// key's slot. Each result is a snapshot body for [`Home::restore_state`].
    pub fn reshard(parts: Vec<Home>, shards: usize) -> Vec<Vec<u8>> {
        let mut auth = Vec::with_capacity(parts.len());
        let mut ledgers = Vec::with_capacity(parts.len());
        let mut stores = Vec::with_capacity(parts.len());
        let mut pending = HashMap::new();
        for part in parts {
            auth.push(part.auth);
            ledgers.push(part.ledger);
            stores.push(part.idempotency);
            pending.extend(part.pending);
        }
        let user_shard = |user: &UserId| user.slot().shard(shards);
        let key_shard = |scope: &Scope, key: &str| match scope {
            Scope::User(user) => user.slot().shard(shards),
            Scope::Admin => Slot::of_bytes(key.as_bytes()).shard(shards),
        };
        let auth = AuthState::merge(auth).split(&user_shard, shards);
        let ledgers = Ledger::merge(ledgers).split(&user_shard, shards);
        let stores = idempotency::Store::merge(stores).split(&key_shard, shards);
        let mut pendings: Vec<HashMap<String, PendingAnswer>> = (0..shards).map(|_| HashMap::new()).collect();
        for (transfer, answer) in pending {
            let shard = key_shard(&answer.scope, &answer.key);
            pendings[shard].insert(transfer, answer);
        }
        auth.into_iter()
            .zip(ledgers)
            .zip(stores)
            .zip(pendings)
            .map(|(((auth, ledger), idempotency), pending)| {
                bincode::serialize(&State {
                    auth,
                    ledger,
                    idempotency,
                    pending,
                })
                .expect("the state serializes")
            })
            .collect()
    }
}

impl crate::storage::recovery::Sink for Home {
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.restore_state(snapshot)
    }

    fn replay(&mut self, records: Vec<Record>) {
        Home::replay(self, records);
    }
}

/// The logged state of a shard, as a snapshot stores it.
#[derive(serde::Deserialize, serde::Serialize)]
struct State {
    auth: AuthState,
    ledger: Ledger,
    idempotency: idempotency::Store,
    pending: HashMap<String, PendingAnswer>,
}

impl crate::storage::scylla::rows::StateSource for Home {
    fn auth(&self) -> &AuthState {
        &self.auth
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn idempotency(&self) -> &idempotency::Store {
        &self.idempotency
    }

    fn pending_answer(&self, transfer: &str) -> Option<(&Scope, &str, &[u8])> {
        Home::pending_answer(self, transfer)
    }
}

/// [`State`] borrowed, to encode without copying (same fields, same order).
#[derive(serde::Serialize)]
struct StateRef<'a> {
    auth: &'a AuthState,
    ledger: &'a Ledger,
    idempotency: &'a idempotency::Store,
    pending: &'a HashMap<String, PendingAnswer>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> Home {
        let config = AuthConfig {
            login_failures_per_username_max: 2,
            login_window_seconds: 60,
            user_requests_per_second: 1,
            user_request_burst: 2,
            ..AuthConfig::default()
        };
        Home::new(0, 1, &config, &MoneyConfig::default())
    }

    fn signup(home: &mut Home, name: &str) -> UserId {
        let id = UserId::new(Slot::of_username(name), [7; 10]);
        let reply = home.execute(UserCommand::CreateUser {
            id: id.clone(),
            username: name.into(),
            password_hash: "phc".into(),
            now_ms: 1,
        });
        assert!(matches!(reply, UserReply::User(_)), "{reply:?}");
        id
    }

    #[test]
    fn login_failures_throttle_the_username_until_a_success() {
        let mut home = home();
        let alice = signup(&mut home, "alice");
        for _ in 0..2 {
            assert!(matches!(
                home.execute(UserCommand::LoginLookup {
                    username: "alice".into(),
                    now_ms: 10
                }),
                UserReply::Credentials(Some(_))
            ));
            home.execute(UserCommand::LoginFailed {
                username: "alice".into(),
                now_ms: 10,
            });
        }
        let throttled = home.execute(UserCommand::LoginLookup {
            username: "alice".into(),
            now_ms: 11,
        });
        assert!(
            matches!(throttled, UserReply::Refused(HomeError::TooManyAttempts { .. })),
            "{throttled:?}"
        );
        // After the window refills, a successful login resets the count.
        let later = 10 + 60_000;
        assert!(matches!(
            home.execute(UserCommand::LoginLookup {
                username: "alice".into(),
                now_ms: later
            }),
            UserReply::Credentials(Some(_))
        ));
        home.execute(UserCommand::CreateSession {
            user: alice,
            session: "ses_1".into(),
            refresh_hash: [1; 32],
            refresh_expires_at_ms: later + 1000,
            now_ms: later,
        });
        home.execute(UserCommand::LoginFailed {
            username: "alice".into(),
            now_ms: later,
        });
        assert!(matches!(
            home.execute(UserCommand::LoginLookup {
                username: "alice".into(),
                now_ms: later
            }),
            UserReply::Credentials(Some(_))
        ));
    }

    #[test]
    fn authenticated_commands_check_the_session_every_time() {
        let mut home = home();
        let alice = signup(&mut home, "alice");
        home.execute(UserCommand::CreateSession {
            user: alice.clone(),
            session: "ses_1".into(),
            refresh_hash: [1; 32],
            refresh_expires_at_ms: 10_000,
            now_ms: 5,
        });
        let me = |home: &mut Home, now_ms, action| {
            home.execute(UserCommand::Authenticated {
                user: alice.clone(),
                session: "ses_1".into(),
                now_ms,
                action,
            })
        };
        assert!(matches!(me(&mut home, 10, UserAction::Me), UserReply::User(_)));
        assert!(matches!(
            me(&mut home, 10, UserAction::RevokeCurrent),
            UserReply::Done
        ));
        assert!(matches!(
            me(&mut home, 10, UserAction::Me),
            UserReply::Refused(HomeError::NotAuthenticated)
        ));
    }

    #[test]
    fn the_user_request_limit_applies_after_the_burst() {
        let mut home = home();
        let alice = signup(&mut home, "alice");
        home.execute(UserCommand::CreateSession {
            user: alice.clone(),
            session: "ses_1".into(),
            refresh_hash: [1; 32],
            refresh_expires_at_ms: 10_000,
            now_ms: 5,
        });
        let mut limited = 0;
        for _ in 0..5 {
            let reply = home.execute(UserCommand::Authenticated {
                user: alice.clone(),
                session: "ses_1".into(),
                now_ms: 100,
                action: UserAction::Me,
            });
            if matches!(reply, UserReply::Refused(HomeError::RateLimited { .. })) {
                limited += 1;
            }
        }
        assert_eq!(limited, 3, "a burst of two, then limited");
    }

    /// A log the test can read after the home has used it.
    struct Shared(std::rc::Rc<std::cell::RefCell<MemoryLog>>);

    impl Log for Shared {
        fn append(&mut self, records: &[Record]) {
            self.0.borrow_mut().append(records);
        }
    }

    /// Every state change goes through the log: replaying the records rebuilds the state.
    #[test]
    fn replaying_the_log_rebuilds_the_state() {
        let log = std::rc::Rc::new(std::cell::RefCell::new(MemoryLog::keeping()));
        let mut home = home().with_log(Box::new(Shared(log.clone())));
        let alice = signup(&mut home, "alice");
        let bob = signup(&mut home, "bob");
        home.execute(UserCommand::CreateSession {
            user: alice.clone(),
            session: "ses_1".into(),
            refresh_hash: [1; 32],
            refresh_expires_at_ms: 10_000,
            now_ms: 5,
        });
        let usd = Currency::parse("USD").unwrap();
        home.execute(UserCommand::Deposit {
            id: "dep_1".into(),
            user: alice.clone(),
            amount: 100,
            currency: usd,
        });
        let payment = Payment {
            id: "pay_1".into(),
            from: alice.clone(),
            to: bob.clone(),
            amount: 30,
            currency: usd,
            description: None,
            amount_refunded: 0,
            created_at_ms: 6,
        };
        let claimed = home.execute(UserCommand::Authenticated {
            user: alice.clone(),
            session: "ses_1".into(),
            now_ms: 6,
            action: UserAction::BeginIdempotent {
                key: "k".into(),
                fingerprint: [3; 32],
            },
        });
        assert!(
            matches!(claimed, UserReply::Idempotency(Begin::Proceed)),
            "{claimed:?}"
        );
        let paid = home.execute(UserCommand::Pay {
            payment,
            key: "k".into(),
            answer: b"{}".to_vec(),
            now_ms: 6,
        });
        assert!(matches!(paid, UserReply::Done), "{paid:?}");
        home.execute(UserCommand::Refund {
            refund: "ref_1".into(),
            payment: "pay_1".into(),
            by: bob.clone(),
            amount: 10,
            key: "r".into(),
            answer: b"{}".to_vec(),
            now_ms: 7,
        });
        home.execute(UserCommand::Authenticated {
            user: alice.clone(),
            session: "ses_1".into(),
            now_ms: 8,
            action: UserAction::RevokeAll,
        });
        let records = log.borrow().records().to_vec();
        assert!(records.len() >= 7, "{records:?}");
        let mut auth = AuthState::new();
        let mut ledger = Ledger::new();
        let mut keys = idempotency::Store::new(3_600_000, 100);
        for record in &records {
            match record {
                Record::Auth(event) => auth.apply(event),
                Record::Ledger(event) => ledger.apply(event),
                Record::Idempotency(change) => keys.apply(change),
                Record::Pending { .. } => {}
            }
        }
        // The payment's key was completed in the same append as its ledger events.
        let pay_at = records
            .iter()
            .position(|r| matches!(r, Record::Ledger(ledger::Event::PaidLocally(_))));
        let done_at = records
            .iter()
            .position(|r| matches!(r, Record::Idempotency(Change::Completed { .. })));
        assert_eq!(done_at, pay_at.map(|at| at + 1), "{records:?}");
        // And the rebuilt store replays the stored answer.
        assert_eq!(
            keys.begin(&Scope::User(alice.clone()), "k", [3; 32], 9),
            Begin::Replay {
                status: 201,
                body: b"{}".to_vec()
            }
        );
        assert_eq!(ledger, home.ledger);
        assert_eq!(ledger.balance(&alice, usd), 80);
        assert_eq!(auth.user_by_username("bob"), home.auth.user_by_username("bob"));
        assert!(auth.sessions_of(&alice).is_empty() && home.auth.sessions_of(&alice).is_empty());
        // Records are plain data: they serialize for a durable log.
        let encoded = serde_json::to_string(&records).unwrap();
        assert_eq!(serde_json::from_str::<Vec<Record>>(&encoded).unwrap(), records);
    }

    /// The recovery path: a cross-shard payment whose credit was not acknowledged stays claimed
    /// (a retry is InUse), is offered for resending once it is old enough, and settling it stores
    /// the waiting 201 under the key.
    #[test]
    fn an_unacknowledged_credit_is_resent_and_settling_it_completes_the_key() {
        // Two shards; this home is shard 0, so a payee in the upper half of the slots is remote.
        let mut home = Home::new(0, 2, &AuthConfig::default(), &MoneyConfig::default());
        let alice = UserId::new(Slot::new(1).unwrap(), [1; 10]);
        let remote = UserId::new(Slot::new(16_000).unwrap(), [2; 10]);
        home.execute(UserCommand::CreateUser {
            id: alice.clone(),
            username: "alice".into(),
            password_hash: "phc".into(),
            now_ms: 1,
        });
        home.execute(UserCommand::CreateSession {
            user: alice.clone(),
            session: "ses_1".into(),
            refresh_hash: [1; 32],
            refresh_expires_at_ms: 100_000,
            now_ms: 1,
        });
        let usd = Currency::parse("USD").unwrap();
        home.execute(UserCommand::Deposit {
            id: "dep_1".into(),
            user: alice.clone(),
            amount: 50,
            currency: usd,
        });
        let begin = |home: &mut Home, now_ms| {
            home.execute(UserCommand::Authenticated {
                user: alice.clone(),
                session: "ses_1".into(),
                now_ms,
                action: UserAction::BeginIdempotent {
                    key: "k".into(),
                    fingerprint: [9; 32],
                },
            })
        };
        assert!(matches!(
            begin(&mut home, 10),
            UserReply::Idempotency(Begin::Proceed)
        ));
        let payment = Payment {
            id: "pay_1".into(),
            from: alice.clone(),
            to: remote,
            amount: 20,
            currency: usd,
            description: None,
            amount_refunded: 0,
            created_at_ms: 10,
        };
        let reply = home.execute(UserCommand::Pay {
            payment,
            key: "k".into(),
            answer: b"the 201 body".to_vec(),
            now_ms: 10,
        });
        let UserReply::Transfer(transfer) = reply else {
            panic!("{reply:?}")
        };
        // The credit was not acknowledged: a retry is told to wait.
        assert!(matches!(
            begin(&mut home, 20),
            UserReply::Idempotency(Begin::InUse)
        ));
        // Not yet old enough to resend; then it is, once per interval.
        let due = |home: &mut Home, now_ms| match home.execute(UserCommand::OutboxDue {
            now_ms,
            older_than_ms: 1000,
        }) {
            UserReply::Transfers(transfers) => transfers,
            other => panic!("{other:?}"),
        };
        assert!(due(&mut home, 500).is_empty());
        assert_eq!(due(&mut home, 1_010), vec![transfer.clone()]);
        assert!(due(&mut home, 1_500).is_empty(), "just resent");
        // The acknowledgement settles it and stores the answer.
        home.execute(UserCommand::Settle {
            transfer: transfer.id().to_string(),
        });
        match begin(&mut home, 1_600) {
            UserReply::Idempotency(Begin::Replay { status, body }) => {
                assert_eq!((status, body.as_slice()), (201, &b"the 201 body"[..]))
            }
            other => panic!("{other:?}"),
        }
        assert!(due(&mut home, 5_000).is_empty(), "settled credits are not resent");
    }
}

/// The command protocol as JSON between nodes: every command, reply, action and refusal survives
/// a round trip, and malformed input is an error, never a panic or an unchecked value.
#[cfg(test)]
mod wire_tests {
    use super::*;

    fn alice() -> UserId {
        UserId::new(Slot::new(1).unwrap(), [1; 10])
    }

    fn bob() -> UserId {
        UserId::new(Slot::new(16_000).unwrap(), [0xab; 10])
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn payment() -> Payment {
        Payment {
            id: "pay_1".into(),
            from: alice(),
            to: bob(),
            amount: 30,
            currency: usd(),
            description: Some("lunch \u{1f35c} \"quoted\"".into()),
            amount_refunded: 5,
            created_at_ms: 6,
        }
    }

    fn refund_transfer() -> Transfer {
        Transfer::Refund {
            refund: "ref_1".into(),
            payment: "pay_1".into(),
            to: alice(),
            amount: 7,
            currency: Currency::parse("EUR").unwrap(),
        }
    }

    /// Distinct non-trivial bytes, so a reordering would show.
    fn hash(seed: u8) -> [u8; 32] {
        std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7))
    }

    /// Names a command's variant; exhaustive, so a new variant must be added to the tests.
    fn command_variant(command: &UserCommand) -> &'static str {
        match command {
            UserCommand::CreateUser { .. } => "CreateUser",
            UserCommand::LoginLookup { .. } => "LoginLookup",
            UserCommand::LoginFailed { .. } => "LoginFailed",
            UserCommand::CreateSession { .. } => "CreateSession",
            UserCommand::Refresh { .. } => "Refresh",
            UserCommand::IdempotencyBegin { .. } => "IdempotencyBegin",
            UserCommand::IdempotencyComplete { .. } => "IdempotencyComplete",
            UserCommand::ResolveUser { .. } => "ResolveUser",
            UserCommand::Pay { .. } => "Pay",
            UserCommand::Refund { .. } => "Refund",
            UserCommand::Receive(_) => "Receive",
            UserCommand::Settle { .. } => "Settle",
            UserCommand::OutboxDue { .. } => "OutboxDue",
            UserCommand::Deposit { .. } => "Deposit",
            UserCommand::Authenticated { .. } => "Authenticated",
        }
    }
    const COMMAND_VARIANTS: usize = 15;

    fn reply_variant(reply: &UserReply) -> &'static str {
        match reply {
            UserReply::User(_) => "User",
            UserReply::Credentials(_) => "Credentials",
            UserReply::Session { .. } => "Session",
            UserReply::Sessions(_) => "Sessions",
            UserReply::Done => "Done",
            UserReply::Idempotency(_) => "Idempotency",
            UserReply::Payment(_) => "Payment",
            UserReply::Payments(..) => "Payments",
            UserReply::Transfer(_) => "Transfer",
            UserReply::Transfers(_) => "Transfers",
            UserReply::RefundAmount(..) => "RefundAmount",
            UserReply::Balances(_) => "Balances",
            UserReply::Refused(_) => "Refused",
        }
    }
    const REPLY_VARIANTS: usize = 13;

    fn action_variant(action: &UserAction) -> &'static str {
        match action {
            UserAction::Me => "Me",
            UserAction::ListSessions => "ListSessions",
            UserAction::RevokeCurrent => "RevokeCurrent",
            UserAction::RevokeAll => "RevokeAll",
            UserAction::Balances => "Balances",
            UserAction::BeginIdempotent { .. } => "BeginIdempotent",
            UserAction::GetPayment(_) => "GetPayment",
            UserAction::ListPayments { .. } => "ListPayments",
            UserAction::RefundAmount { .. } => "RefundAmount",
        }
    }
    const ACTION_VARIANTS: usize = 9;

    fn error_variant(error: &HomeError) -> &'static str {
        match error {
            HomeError::UsernameTaken => "UsernameTaken",
            HomeError::InvalidRefreshToken => "InvalidRefreshToken",
            HomeError::NotAuthenticated => "NotAuthenticated",
            HomeError::TooManyAttempts { .. } => "TooManyAttempts",
            HomeError::RateLimited { .. } => "RateLimited",
            HomeError::IdCollision => "IdCollision",
            HomeError::UserNotFound => "UserNotFound",
            HomeError::Ledger(_) => "Ledger",
            HomeError::UnknownCursor => "UnknownCursor",
        }
    }
    const ERROR_VARIANTS: usize = 9;

    fn ledger_error_variant(error: &LedgerError) -> &'static str {
        match error {
            LedgerError::InvalidAmount => "InvalidAmount",
            LedgerError::InsufficientFunds => "InsufficientFunds",
            LedgerError::SelfPayment => "SelfPayment",
            LedgerError::DescriptionTooLong => "DescriptionTooLong",
            LedgerError::PaymentNotFound => "PaymentNotFound",
            LedgerError::NotThePayee => "NotThePayee",
            LedgerError::RefundExceedsPayment => "RefundExceedsPayment",
            LedgerError::IdTaken => "IdTaken",
            LedgerError::BalanceOverflow => "BalanceOverflow",
        }
    }
    const LEDGER_ERROR_VARIANTS: usize = 9;

    fn begin_variant(begin: &Begin) -> &'static str {
        match begin {
            Begin::Proceed => "Proceed",
            Begin::Replay { .. } => "Replay",
            Begin::InUse => "InUse",
            Begin::Reused => "Reused",
            Begin::Full => "Full",
        }
    }
    const BEGIN_VARIANTS: usize = 5;

    fn actions() -> Vec<UserAction> {
        vec![
            UserAction::Me,
            UserAction::ListSessions,
            UserAction::RevokeCurrent,
            UserAction::RevokeAll,
            UserAction::Balances,
            UserAction::BeginIdempotent {
                key: "key-1".into(),
                fingerprint: hash(3),
            },
            UserAction::GetPayment("pay_1".into()),
            UserAction::ListPayments {
                starting_after: Some("pay_0".into()),
                limit: 50,
            },
            UserAction::RefundAmount {
                payment: "pay_1".into(),
                amount: None,
            },
        ]
    }

    fn ledger_errors() -> Vec<LedgerError> {
        vec![
            LedgerError::InvalidAmount,
            LedgerError::InsufficientFunds,
            LedgerError::SelfPayment,
            LedgerError::DescriptionTooLong,
            LedgerError::PaymentNotFound,
            LedgerError::NotThePayee,
            LedgerError::RefundExceedsPayment,
            LedgerError::IdTaken,
            LedgerError::BalanceOverflow,
        ]
    }

    fn errors() -> Vec<HomeError> {
        vec![
            HomeError::UsernameTaken,
            HomeError::InvalidRefreshToken,
            HomeError::NotAuthenticated,
            HomeError::TooManyAttempts {
                retry_after_seconds: 60,
            },
            HomeError::RateLimited {
                retry_after_seconds: 1,
            },
            HomeError::IdCollision,
            HomeError::UserNotFound,
            HomeError::Ledger(LedgerError::InsufficientFunds),
            HomeError::UnknownCursor,
        ]
    }

    fn begins() -> Vec<Begin> {
        vec![
            Begin::Proceed,
            Begin::Replay {
                status: 201,
                body: br#"{"id":"pay_1"}"#.to_vec(),
            },
            Begin::InUse,
            Begin::Reused,
            Begin::Full,
        ]
    }

    fn commands() -> Vec<UserCommand> {
        let mut commands = vec![
            UserCommand::CreateUser {
                id: alice(),
                username: "alice".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                now_ms: 1,
            },
            UserCommand::LoginLookup {
                username: "alice".into(),
                now_ms: 2,
            },
            UserCommand::LoginFailed {
                username: "alice".into(),
                now_ms: 3,
            },
            UserCommand::CreateSession {
                user: alice(),
                session: "ses_1".into(),
                refresh_hash: hash(1),
                refresh_expires_at_ms: 10_000,
                now_ms: 4,
            },
            UserCommand::Refresh {
                presented: hash(1),
                replacement: hash(2),
                refresh_expires_at_ms: 20_000,
                now_ms: 5,
            },
            UserCommand::IdempotencyBegin {
                scope: Scope::Admin,
                key: "dep-key".into(),
                fingerprint: hash(4),
                now_ms: 6,
            },
            UserCommand::IdempotencyComplete {
                scope: Scope::User(alice()),
                key: "key-1".into(),
                status: 422,
                body: vec![0, 1, 2, 255, b'"', b'\\'],
            },
            UserCommand::ResolveUser { to: "bob".into() },
            UserCommand::Pay {
                payment: payment(),
                key: "key-1".into(),
                answer: b"{}".to_vec(),
                now_ms: 7,
            },
            UserCommand::Refund {
                refund: "ref_1".into(),
                payment: "pay_1".into(),
                by: bob(),
                amount: u64::MAX,
                key: "key-2".into(),
                answer: Vec::new(),
                now_ms: 8,
            },
            UserCommand::Receive(Transfer::Payment(payment())),
            UserCommand::Receive(refund_transfer()),
            UserCommand::Settle {
                transfer: "pay_1".into(),
            },
            UserCommand::OutboxDue {
                now_ms: 9,
                older_than_ms: 1000,
            },
            UserCommand::Deposit {
                id: "dep_1".into(),
                user: alice(),
                amount: 100,
                currency: usd(),
            },
        ];
        commands.extend(actions().into_iter().map(|action| UserCommand::Authenticated {
            user: alice(),
            session: "ses_1".into(),
            now_ms: 10,
            action,
        }));
        commands
    }

    fn replies() -> Vec<UserReply> {
        let mut replies = vec![
            UserReply::User(UserView {
                id: alice(),
                username: "alice".into(),
                created_at_ms: 1,
            }),
            UserReply::Credentials(Some((alice(), "$argon2id$phc".into()))),
            UserReply::Credentials(None),
            UserReply::Session {
                user: alice(),
                session: "ses_1".into(),
            },
            UserReply::Sessions(vec![
                SessionView {
                    session: "ses_1".into(),
                    created_at_ms: 1,
                    last_used_at_ms: 2,
                },
                SessionView {
                    session: "ses_2".into(),
                    created_at_ms: 3,
                    last_used_at_ms: 4,
                },
            ]),
            UserReply::Sessions(Vec::new()),
            UserReply::Done,
            UserReply::Payment(Box::new(payment())),
            UserReply::Payments(vec![payment(), payment()], true),
            UserReply::Transfer(refund_transfer()),
            UserReply::Transfers(vec![Transfer::Payment(payment()), refund_transfer()]),
            UserReply::RefundAmount(25, usd()),
            UserReply::Balances(vec![(Currency::parse("EUR").unwrap(), 0), (usd(), u64::MAX)]),
        ];
        replies.extend(begins().into_iter().map(UserReply::Idempotency));
        replies.extend(errors().into_iter().map(UserReply::Refused));
        replies.extend(
            ledger_errors()
                .into_iter()
                .map(|error| UserReply::Refused(HomeError::Ledger(error))),
        );
        replies
    }

    /// Through JSON and through the nodes' wire encoding (bincode): both must give the value back.
    fn round_trip<T: Serialize + serde::de::DeserializeOwned + std::fmt::Debug>(value: &T) -> T {
        let wire = crate::net::peer::encode(value).expect("encodes");
        let back: T = crate::net::peer::decode(&wire).unwrap_or_else(|e| panic!("{e}: {value:?}"));
        assert_eq!(format!("{back:?}"), format!("{value:?}"));
        for cut in 0..wire.len() {
            assert!(
                crate::net::peer::decode::<T>(&wire[..cut]).is_err(),
                "{value:?} cut at {cut}"
            );
        }
        let bytes = serde_json::to_vec(value).expect("serializes");
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }

    fn distinct(names: impl Iterator<Item = &'static str>) -> usize {
        names.collect::<std::collections::BTreeSet<_>>().len()
    }

    #[test]
    fn wire_garbage_and_huge_length_claims_are_errors() {
        use crate::net::peer::decode;
        // A command variant whose first byte string claims 2^60 bytes: refused by the bound,
        // without allocating.
        let mut huge = crate::net::peer::encode(&UserCommand::IdempotencyComplete {
            scope: Scope::Admin,
            key: "k".into(),
            status: 201,
            body: Vec::new(),
        })
        .unwrap();
        huge.pop();
        huge.push(0xfd);
        huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<UserCommand>(&huge).is_err());
        // Pseudo-random bytes never panic.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for length in 0..2000usize {
            let bytes: Vec<u8> = (0..length % 97)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode::<UserCommand>(&bytes);
            let _ = decode::<UserReply>(&bytes);
        }
    }

    #[test]
    fn wire_every_command_round_trips() {
        let commands = commands();
        assert_eq!(distinct(commands.iter().map(command_variant)), COMMAND_VARIANTS);
        for command in &commands {
            let back = round_trip(command);
            assert_eq!(format!("{back:?}"), format!("{command:?}"));
            // Re-encoding the decoded value gives the same bytes.
            assert_eq!(
                serde_json::to_vec(&back).unwrap(),
                serde_json::to_vec(command).unwrap()
            );
        }
    }

    #[test]
    fn wire_every_reply_round_trips() {
        let replies = replies();
        assert_eq!(distinct(replies.iter().map(reply_variant)), REPLY_VARIANTS);
        for reply in &replies {
            let back = round_trip(reply);
            assert_eq!(format!("{back:?}"), format!("{reply:?}"));
            assert_eq!(
                serde_json::to_vec(&back).unwrap(),
                serde_json::to_vec(reply).unwrap()
            );
        }
    }

    #[test]
    fn wire_every_action_error_and_begin_round_trips() {
        let actions = actions();
        assert_eq!(distinct(actions.iter().map(action_variant)), ACTION_VARIANTS);
        for action in &actions {
            assert_eq!(&round_trip(action), action);
        }
        let errors = errors();
        assert_eq!(distinct(errors.iter().map(error_variant)), ERROR_VARIANTS);
        for error in &errors {
            assert_eq!(&round_trip(error), error);
        }
        let ledger_errors = ledger_errors();
        assert_eq!(
            distinct(ledger_errors.iter().map(ledger_error_variant)),
            LEDGER_ERROR_VARIANTS
        );
        for error in &ledger_errors {
            assert_eq!(&round_trip(error), error);
        }
        let begins = begins();
        assert_eq!(distinct(begins.iter().map(begin_variant)), BEGIN_VARIANTS);
        for begin in &begins {
            assert_eq!(&round_trip(begin), begin);
        }
        // The other reachable types, by `==`.
        let view = UserView {
            id: bob(),
            username: "bob".into(),
            created_at_ms: 9,
        };
        assert_eq!(round_trip(&view), view);
        let session = SessionView {
            session: "ses_9".into(),
            created_at_ms: 1,
            last_used_at_ms: 2,
        };
        assert_eq!(round_trip(&session), session);
        assert_eq!(round_trip(&payment()), payment());
        assert_eq!(round_trip(&refund_transfer()), refund_transfer());
        for scope in [Scope::Admin, Scope::User(alice())] {
            assert_eq!(round_trip(&scope), scope);
        }
        assert_eq!(round_trip(&usd()), usd());
        let token: TokenHash = hash(5);
        assert_eq!(round_trip(&token), token);
    }

    /// Decodes `json` as `T`, which must fail (returning, not panicking).
    fn refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(json: &str) {
        let result = std::panic::catch_unwind(|| serde_json::from_str::<T>(json));
        match result {
            Ok(Err(_)) => {}
            Ok(Ok(value)) => panic!("accepted {json}: {value:?}"),
            Err(_) => panic!("panicked on {json}"),
        }
    }

    #[test]
    fn wire_malformed_input_is_an_error() {
        let good = serde_json::to_string(&UserCommand::CreateUser {
            id: alice(),
            username: "alice".into(),
            password_hash: "phc".into(),
            now_ms: 1,
        })
        .unwrap();
        // The valid form decodes; each corruption below must not.
        assert!(serde_json::from_str::<UserCommand>(&good).is_ok());
        let id = alice().as_str().to_string();

        // Truncated at every length.
        for end in 0..good.len() {
            refused::<UserCommand>(&good[..end]);
        }
        // Invalid user ids: bad prefix, wrong length, upper-case hex, slot out of range.
        let slot_out_of_range = format!("usr_ffff{}", &id[8..]);
        for bad in [
            "usr_nope".to_string(),
            format!("{id}0"),
            id[..id.len() - 1].to_string(),
            id.replace("usr_", "usx_"),
            id.to_uppercase(),
            bob().as_str().replace("ab", "AB"),
            slot_out_of_range,
        ] {
            refused::<UserCommand>(&good.replace(&id, &bad));
            refused::<UserReply>(&format!(r#"{{"Session":{{"user":"{bad}","session":"s"}}}}"#));
            refused::<Scope>(&format!(r#"{{"User":"{bad}"}}"#));
        }
        // An invalid id deep inside a payment inside a reply.
        let payment = serde_json::to_string(&UserReply::Payment(Box::new(payment()))).unwrap();
        refused::<UserReply>(&payment.replace(&bob().to_string(), "usr_0000"));

        // Hashes and fingerprints: wrong length, out-of-range byte, not an array.
        let session = serde_json::to_string(&UserCommand::CreateSession {
            user: alice(),
            session: "ses_1".into(),
            refresh_hash: [7; 32],
            refresh_expires_at_ms: 1,
            now_ms: 1,
        })
        .unwrap();
        assert!(serde_json::from_str::<UserCommand>(&session).is_ok());
        let hash32 = format!("[{}]", vec!["7"; 32].join(","));
        assert!(session.contains(&hash32));
        for bad in [
            format!("[{}]", vec!["7"; 31].join(",")),
            format!("[{}]", vec!["7"; 33].join(",")),
            format!("[256,{}]", vec!["7"; 31].join(",")),
            format!("[-1,{}]", vec!["7"; 31].join(",")),
            "[]".to_string(),
            "\"0707\"".to_string(),
            "null".to_string(),
        ] {
            refused::<UserCommand>(&session.replace(&hash32, &bad));
        }
        refused::<UserAction>(&format!(
            r#"{{"BeginIdempotent":{{"key":"k","fingerprint":[{}]}}}}"#,
            vec!["1"; 31].join(",")
        ));

        // Currencies: the bytes of "usd" (lower case), wrong length, a string.
        let deposit = serde_json::to_string(&UserCommand::Deposit {
            id: "dep_1".into(),
            user: alice(),
            amount: 1,
            currency: usd(),
        })
        .unwrap();
        assert!(deposit.contains("[85,83,68]"), "{deposit}");
        for bad in [
            "[117,115,100]",
            "[85,83]",
            "[85,83,68,68]",
            "\"USD\"",
            "[85,83,0]",
        ] {
            refused::<UserCommand>(&deposit.replace("[85,83,68]", bad));
        }
        refused::<UserReply>(r#"{"RefundAmount":[1,[117,115,100]]}"#);
        refused::<UserReply>(r#"{"Balances":[[[85,83,1],5]]}"#);

        // Unknown variants, missing fields, wrong types, negative and overflowing numbers.
        for bad in [
            r#""Nope""#,
            r#"{"Nope":{}}"#,
            r#"{"LoginLookup":{"username":"alice"}}"#,
            r#"{"LoginLookup":{"username":"alice","now_ms":-1}}"#,
            r#"{"LoginLookup":{"username":"alice","now_ms":18446744073709551616}}"#,
            r#"{"LoginLookup":{"username":7,"now_ms":1}}"#,
            r#"{"IdempotencyComplete":{"scope":"Admin","key":"k","status":70000,"body":[]}}"#,
            r#"{"IdempotencyComplete":{"scope":"Admin","key":"k","status":200,"body":[256]}}"#,
            r#"{"Authenticated":{"user":"x","session":"s","now_ms":1,"action":"Me"}}"#,
            r#"{"Authenticated":{"session":"s","now_ms":1,"action":"Fly"}}"#,
            "",
            "{",
            "[]",
            "null",
        ] {
            refused::<UserCommand>(bad);
        }
        for bad in [
            r#""Nope""#,
            r#"{"Refused":"Nope"}"#,
            r#"{"Refused":{"Ledger":"Broke"}}"#,
            "{}",
        ] {
            refused::<UserReply>(bad);
        }
        refused::<HomeError>(r#"{"TooManyAttempts":{}}"#);
        refused::<Begin>(r#"{"Replay":{"status":201}}"#);
    }
}
