//! The auth routes: signup, login, refresh, logout, logout everywhere, the session list and
//! `/v1/me`. This module turns HTTP requests into owned [`UserCommand`]s for the user's home
//! shard and the replies into responses.
//!
//! What runs where: access tokens are verified on the receiving shard (no hop); password hashes
//! are computed on the receiving shard's blocking threads (never on an executor), bounded per
//! shard; everything about a user — credentials, sessions, the username's failed logins, the
//! user's request rate — is decided on the home shard, which checks the session on every
//! authenticated command so a revocation takes effect at once. Client IPs are throttled on the
//! receiving shard. Clock reads and random draws happen here, never in the state machines.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorType};
use super::json::{parse_body, rfc3339};
use crate::auth::jwt::{Claims, KeySet};
use crate::auth::password::{self, PasswordParams};
use crate::config::AuthConfig;
use crate::home::{HomeError, SessionView, UserAction, UserCommand, UserReply, UserView};
use crate::ratelimit::Limiter;
use crate::shard::offload::Offload;
use crate::shard::Shard;
use crate::slots::{Slot, UserId};

/// Shortest and longest username, after case folding.
const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=32;
/// Shortest and longest password, in bytes.
const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 10..=password::PASSWORD_BYTES_MAX;
/// Random bytes in a refresh token (256 bits).
const REFRESH_RANDOM_BYTES: usize = 32;
/// `rt_` + 4 hex digits of slot + base64url of the random bytes.
const REFRESH_TOKEN_LENGTH: usize = 3 + 4 + 43;
/// Times a freshly drawn id may collide before the request fails.
pub(super) const ID_DRAWS_MAX: usize = 3;

/// What the auth routes of one shard need.
pub struct Auth {
    keys: KeySet,
    issuer: String,
    access_ttl_seconds: u64,
    refresh_ttl_seconds: u64,
    params: PasswordParams,
    /// Verified against for unknown usernames, so they cost what a wrong password costs.
    dummy_hash: String,
    hashing: Offload,
    login_attempts_by_ip: RefCell<Limiter<IpAddr>>,
}

impl Auth {
    /// From the (validated) configuration and the dummy hash of its password parameters
    /// ([`password::dummy_hash`], computed once per process, off the shards' executors).
    pub fn new(config: &AuthConfig, dummy_hash: &str) -> Auth {
        let params = config.password_params();
        Auth {
            keys: config.key_set().expect("auth.jwt_keys is validated at load"),
            issuer: config.issuer.clone(),
            access_ttl_seconds: config.access_token_ttl_seconds,
            refresh_ttl_seconds: config.refresh_token_ttl_seconds,
            params,
            dummy_hash: dummy_hash.to_string(),
            hashing: Offload::new(
                config.password_hashes_in_flight_max,
                config.password_hash_queue_max,
            ),
            login_attempts_by_ip: RefCell::new(Limiter::new(
                config
                    .login_attempt_quota()
                    .expect("auth limits are validated at load"),
                config.rate_limit_entries_max,
            )),
        }
    }
}

/// A successful answer: status, JSON body (empty for 204), and the shard that decided it.
pub struct Answer {
    /// Status.
    pub status: u16,
    /// JSON body, empty for 204.
    pub body: Vec<u8>,
    /// The user's home shard, for `X-Shard`.
    pub home: usize,
    /// A stored answer sent again for an idempotency key (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

/// An error and the shard that decided it (the home shard when one was reached).
pub struct Failure {
    /// The error.
    pub error: ApiError,
    /// The user's home shard, when known.
    pub home: Option<usize>,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure { error, home: None }
    }
}

/// The auth routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRoute {
    /// `POST /v1/users`
    Signup,
    /// `POST /v1/sessions`
    Login,
    /// `POST /v1/sessions/refresh`
    Refresh,
    /// `GET /v1/sessions`
    ListSessions,
    /// `DELETE /v1/sessions/current`
    RevokeCurrent,
    /// `DELETE /v1/sessions`
    RevokeAll,
    /// `GET /v1/me`
    Me,
    /// `GET /v1/balances`
    Balances,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Serialize)]
struct UserBody<'a> {
    id: &'a str,
    username: &'a str,
    created_at: String,
}

#[derive(Serialize)]
struct SessionBody<'a> {
    session_id: &'a str,
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: &'a str,
    refresh_expires_in: u64,
}

#[derive(Serialize)]
struct SessionListBody {
    data: Vec<SessionItem>,
}

#[derive(Serialize)]
struct SessionItem {
    session_id: String,
    created_at: String,
    last_used_at: String,
    current: bool,
}

/// Handles one auth route. `authorization` is the `Authorization` header, `peer` the client IP.
pub async fn handle(
    auth: &Auth,
    shard: &Shard,
    route: AuthRoute,
    body: &[u8],
    authorization: Option<&[u8]>,
    peer: Option<IpAddr>,
) -> Result<Answer, Failure> {
    match route {
        AuthRoute::Signup => signup(auth, shard, body).await,
        AuthRoute::Login => login(auth, shard, body, peer).await,
        AuthRoute::Refresh => refresh(auth, shard, body).await,
        AuthRoute::ListSessions => authenticated(auth, shard, authorization, UserAction::ListSessions).await,
        AuthRoute::RevokeCurrent => {
            authenticated(auth, shard, authorization, UserAction::RevokeCurrent).await
        }
        AuthRoute::RevokeAll => authenticated(auth, shard, authorization, UserAction::RevokeAll).await,
        AuthRoute::Me => authenticated(auth, shard, authorization, UserAction::Me).await,
        AuthRoute::Balances => authenticated(auth, shard, authorization, UserAction::Balances).await,
    }
}

async fn signup(auth: &Auth, shard: &Shard, body: &[u8]) -> Result<Answer, Failure> {
    let credentials: Credentials = parse_body(body)?;
    let username = fold_username(&credentials.username).ok_or_else(|| {
        ApiError::new(
            422,
            ErrorType::InvalidRequestError,
            "invalid_username",
            "A username is 3 to 32 characters of a-z, 0-9, '_', '.' and '-' (upper case is folded).",
        )
        .with_param("username")
    })?;
    if !PASSWORD_BYTES.contains(&credentials.password.len()) {
        return Err(ApiError::new(
            422,
            ErrorType::InvalidRequestError,
            "weak_password",
            "A password is 10 to 1024 bytes long.",
        )
        .with_param("password")
        .into());
    }
    let salt: [u8; password::SALT_BYTES] = random()?;
    let params = auth.params;
    let secret = credentials.password.into_bytes();
    shard
        .metrics
        .password_checks
        .set(shard.metrics.password_checks.get() + 1);
    let password_hash = auth
        .hashing
        .run(move || password::hash_password(&secret, &salt, &params))
        .await
        .map_err(|_| busy())?
        .map_err(|error| internal(format!("password hashing failed: {error}")))?;
    let slot = Slot::of_username(&username);
    let home = shard.home_of(slot);
    for _ in 0..ID_DRAWS_MAX {
        let id = UserId::new(slot, random()?);
        let command = UserCommand::CreateUser {
            id,
            username: username.clone(),
            password_hash: password_hash.clone(),
            now_ms: now_ms(),
        };
        match shard.invoke_on_home(slot, command).await.map_err(mesh_failure)? {
            UserReply::User(user) => {
                return Ok(Answer {
                    status: 201,
                    body: user_body(&user),
                    home,
                    replayed: false,
                })
            }
            UserReply::Refused(HomeError::IdCollision) => continue,
            UserReply::Refused(error) => return Err(refused(error, home)),
            other => return Err(unexpected(&other)),
        }
    }
    Err(internal("could not draw a free user id").into())
}

async fn login(auth: &Auth, shard: &Shard, body: &[u8], peer: Option<IpAddr>) -> Result<Answer, Failure> {
    let credentials: Credentials = parse_body(body)?;
    let now = now_ms();
    let ip = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Err(retry) = auth.login_attempts_by_ip.borrow_mut().check(&ip, now) {
        return Err(too_many_attempts(retry.seconds()).into());
    }
    // A malformed username is just an unknown one: the same answer, the same work.
    let username = fold_username(&credentials.username);
    let slot = Slot::of_username(username.as_deref().unwrap_or(""));
    let home = shard.home_of(slot);
    let known = match &username {
        Some(username) => {
            let lookup = UserCommand::LoginLookup {
                username: username.clone(),
                now_ms: now,
            };
            match shard.invoke_on_home(slot, lookup).await.map_err(mesh_failure)? {
                UserReply::Credentials(found) => found,
                UserReply::Refused(error) => return Err(refused(error, home)),
                other => return Err(unexpected(&other)),
            }
        }
        None => None,
    };
    let stored = known
        .as_ref()
        .map_or_else(|| auth.dummy_hash.clone(), |(_, hash)| hash.clone());
    let secret = credentials.password.into_bytes();
    shard
        .metrics
        .password_checks
        .set(shard.metrics.password_checks.get() + 1);
    let matches = auth
        .hashing
        .run(move || password::verify_password(&secret, &stored))
        .await
        .map_err(|_| busy())?
        .unwrap_or(false);
    let user = match (matches, known) {
        (true, Some((user, _))) => user,
        _ => {
            if let Some(username) = username {
                let failed = UserCommand::LoginFailed {
                    username,
                    now_ms: now,
                };
                shard.invoke_on_home(slot, failed).await.map_err(mesh_failure)?;
            }
            return Err(Failure {
                error: ApiError::new(
                    401,
                    ErrorType::AuthenticationError,
                    "invalid_credentials",
                    "The username or password is wrong.",
                ),
                home: Some(home),
            });
        }
    };
    let refresh_expires_at_ms = now.saturating_add(auth.refresh_ttl_seconds.saturating_mul(1000));
    issue_tokens(auth, shard, slot, now, |refresh_hash| {
        Ok(UserCommand::CreateSession {
            user: user.clone(),
            session: format!("ses_{}", hex(&random::<12>()?)),
            refresh_hash,
            refresh_expires_at_ms,
            now_ms: now,
        })
    })
    .await
}

async fn refresh(auth: &Auth, shard: &Shard, body: &[u8]) -> Result<Answer, Failure> {
    let request: RefreshBody = parse_body(body)?;
    let slot = refresh_token_slot(&request.refresh_token)
        .ok_or_else(|| Failure::from(refused_error(HomeError::InvalidRefreshToken)))?;
    let now = now_ms();
    let presented = token_hash(&request.refresh_token);
    let refresh_expires_at_ms = now.saturating_add(auth.refresh_ttl_seconds.saturating_mul(1000));
    issue_tokens(auth, shard, slot, now, |replacement| {
        Ok(UserCommand::Refresh {
            presented,
            replacement,
            refresh_expires_at_ms,
            now_ms: now,
        })
    })
    .await
}

/// Draws a refresh token in `slot`, asks the home shard to open or refresh a session with its hash
/// (the command is built by `command`), and answers with the new token pair. A drawn id that
/// collides is drawn again, a bounded number of times.
async fn issue_tokens(
    auth: &Auth,
    shard: &Shard,
    slot: Slot,
    now: u64,
    command: impl Fn([u8; 32]) -> Result<UserCommand, ApiError>,
) -> Result<Answer, Failure> {
    let home = shard.home_of(slot);
    for _ in 0..ID_DRAWS_MAX {
        let refresh_token = new_refresh_token(slot)?;
        let request = command(token_hash(&refresh_token))?;
        match shard.invoke_on_home(slot, request).await.map_err(mesh_failure)? {
            UserReply::Session { user, session } => {
                return Ok(Answer {
                    status: 201,
                    body: session_body(auth, &user, &session, &refresh_token, now)?,
                    home,
                    replayed: false,
                })
            }
            UserReply::Refused(HomeError::IdCollision) => continue,
            UserReply::Refused(error) => return Err(refused(error, home)),
            other => return Err(unexpected(&other)),
        }
    }
    Err(internal("could not draw a free session id or refresh token").into())
}

async fn authenticated(
    auth: &Auth,
    shard: &Shard,
    authorization: Option<&[u8]>,
    action: UserAction,
) -> Result<Answer, Failure> {
    let now = now_ms();
    let claims = verify_bearer(auth, authorization, now / 1000)?;
    let user = UserId::parse(&claims.sub).ok_or_else(|| Failure::from(invalid_token()))?;
    let slot = user.slot();
    let home = shard.home_of(slot);
    let command = UserCommand::Authenticated {
        user,
        session: claims.sid.clone(),
        now_ms: now,
        action,
    };
    match shard.invoke_on_home(slot, command).await.map_err(mesh_failure)? {
        UserReply::User(user) => Ok(Answer {
            status: 200,
            body: user_body(&user),
            home,
            replayed: false,
        }),
        UserReply::Sessions(sessions) => Ok(Answer {
            status: 200,
            body: sessions_body(&sessions, &claims.sid),
            home,
            replayed: false,
        }),
        UserReply::Balances(balances) => Ok(Answer {
            status: 200,
            body: super::money::balances_body(&balances),
            home,
            replayed: false,
        }),
        UserReply::Done => Ok(Answer {
            status: 204,
            body: Vec::new(),
            home,
            replayed: false,
        }),
        UserReply::Refused(error) => Err(refused(error, home)),
        other => Err(unexpected(&other)),
    }
}

/// Checks `Authorization: Bearer <jwt>` on this shard.
pub(super) fn verify_bearer(
    auth: &Auth,
    authorization: Option<&[u8]>,
    now_seconds: u64,
) -> Result<Claims, Failure> {
    let value = authorization.ok_or_else(|| {
        let mut error = ApiError::new(
            401,
            ErrorType::AuthenticationError,
            "missing_token",
            "This route needs Authorization: Bearer <access token>.",
        );
        error.bearer_challenge = true;
        Failure::from(error)
    })?;
    let token = value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
        .and_then(|token| std::str::from_utf8(token).ok())
        .ok_or_else(|| Failure::from(invalid_token()))?;
    auth.keys
        .verify(token.trim(), now_seconds, &auth.issuer)
        .map_err(|_| Failure::from(invalid_token()))
}

/// Case-folds (ASCII) and validates a username.
fn fold_username(raw: &str) -> Option<String> {
    let folded = raw.to_ascii_lowercase();
    let valid = USERNAME_CHARS.contains(&folded.len())
        && folded
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    valid.then_some(folded)
}

fn new_refresh_token(slot: Slot) -> Result<String, ApiError> {
    let bytes: [u8; REFRESH_RANDOM_BYTES] = random()?;
    Ok(format!(
        "rt_{:04x}{}",
        slot.number(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The slot a refresh token was issued in, if it is well formed.
fn refresh_token_slot(token: &str) -> Option<Slot> {
    let rest = token.strip_prefix("rt_")?;
    if token.len() != REFRESH_TOKEN_LENGTH
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let slot = u32::from_str_radix(&rest[..4], 16).ok()?;
    Slot::new(slot)
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn session_body(
    auth: &Auth,
    user: &UserId,
    session: &str,
    refresh_token: &str,
    now_ms: u64,
) -> Result<Vec<u8>, ApiError> {
    let issued_at = now_ms / 1000;
    let claims = Claims {
        sub: user.to_string(),
        sid: session.to_string(),
        iat: issued_at,
        exp: issued_at + auth.access_ttl_seconds,
        iss: auth.issuer.clone(),
        jti: Some(hex(&random::<12>()?)),
    };
    let body = SessionBody {
        session_id: session,
        access_token: auth.keys.sign(&claims),
        token_type: "Bearer",
        expires_in: auth.access_ttl_seconds,
        refresh_token,
        refresh_expires_in: auth.refresh_ttl_seconds,
    };
    Ok(serde_json::to_vec(&body).expect("plain structs serialize"))
}

fn user_body(user: &UserView) -> Vec<u8> {
    serde_json::to_vec(&UserBody {
        id: user.id.as_str(),
        username: &user.username,
        created_at: rfc3339(user.created_at_ms),
    })
    .expect("plain structs serialize")
}

fn sessions_body(sessions: &[SessionView], current: &str) -> Vec<u8> {
    let data = sessions
        .iter()
        .map(|s| SessionItem {
            session_id: s.session.clone(),
            created_at: rfc3339(s.created_at_ms),
            last_used_at: rfc3339(s.last_used_at_ms),
            current: s.session == current,
        })
        .collect();
    serde_json::to_vec(&SessionListBody { data }).expect("plain structs serialize")
}

pub(super) fn refused_error(error: HomeError) -> ApiError {
    match error {
        HomeError::UsernameTaken => ApiError::new(
            409,
            ErrorType::InvalidRequestError,
            "username_taken",
            "This username is taken.",
        )
        .with_param("username"),
        HomeError::InvalidRefreshToken => ApiError::new(
            401,
            ErrorType::AuthenticationError,
            "invalid_refresh_token",
            "The refresh token is unknown, expired, already used or revoked.",
        ),
        HomeError::NotAuthenticated => invalid_token(),
        HomeError::TooManyAttempts { retry_after_seconds } => too_many_attempts(retry_after_seconds),
        HomeError::RateLimited { retry_after_seconds } => ApiError::new(
            429,
            ErrorType::RateLimitError,
            "rate_limited",
            "Too many requests for this user.",
        )
        .retry_after(retry_after_seconds),
        HomeError::IdCollision => internal("an id collided"),
        HomeError::UserNotFound => ApiError::new(
            404,
            ErrorType::InvalidRequestError,
            "user_not_found",
            "No such user.",
        ),
        HomeError::Ledger(error) => ledger_error(error),
        HomeError::UnknownCursor => ApiError::new(
            422,
            ErrorType::InvalidRequestError,
            "invalid_starting_after",
            "starting_after is not one of your payments.",
        )
        .with_param("starting_after"),
    }
}

/// The contract's status and code for a ledger refusal.
fn ledger_error(error: crate::payments::ledger::LedgerError) -> ApiError {
    use crate::payments::ledger::LedgerError;
    let invalid = |status, code, message: &'static str| {
        ApiError::new(status, ErrorType::InvalidRequestError, code, message)
    };
    match error {
        LedgerError::InvalidAmount => invalid(
            422,
            "invalid_amount",
            "amount is an integer number of minor units from 1 to 10^15.",
        )
        .with_param("amount"),
        LedgerError::InsufficientFunds => invalid(422, "insufficient_funds", "The balance is too low."),
        LedgerError::SelfPayment => invalid(422, "self_payment", "A payment needs two different users."),
        LedgerError::DescriptionTooLong => invalid(
            422,
            "invalid_description",
            "description is at most 200 characters.",
        )
        .with_param("description"),
        LedgerError::PaymentNotFound | LedgerError::NotThePayee => {
            invalid(404, "payment_not_found", "No such payment.")
        }
        LedgerError::RefundExceedsPayment => invalid(
            422,
            "refund_exceeds_payment",
            "The refund exceeds what is left of the payment.",
        ),
        LedgerError::BalanceOverflow => {
            invalid(422, "balance_overflow", "The balance would exceed its maximum.")
        }
        LedgerError::IdTaken => internal("an id collided"),
    }
}

pub(super) fn refused(error: HomeError, home: usize) -> Failure {
    Failure {
        error: refused_error(error),
        home: Some(home),
    }
}

fn invalid_token() -> ApiError {
    let mut error = ApiError::new(
        401,
        ErrorType::AuthenticationError,
        "invalid_token",
        "The access token is invalid, expired or revoked.",
    );
    error.bearer_challenge = true;
    error
}

fn too_many_attempts(retry_after_seconds: u64) -> ApiError {
    ApiError::new(
        429,
        ErrorType::RateLimitError,
        "too_many_attempts",
        "Too many login attempts; try again later.",
    )
    .retry_after(retry_after_seconds)
}

fn busy() -> ApiError {
    ApiError::unavailable("overloaded", "Too many password checks are waiting; try again.")
}

pub(super) fn internal(message: impl Into<String>) -> ApiError {
    let message = message.into();
    tracing::error!(%message, "internal error");
    ApiError::new(500, ErrorType::ApiError, "internal_error", message)
}

pub(super) fn unexpected(reply: &UserReply) -> Failure {
    internal(format!("unexpected reply from the home shard: {reply:?}")).into()
}

pub(super) fn mesh_failure(error: crate::shard::mesh::MeshError) -> Failure {
    ApiError::unavailable("shard_unavailable", error.to_string()).into()
}

pub(super) fn random<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|error| internal(format!("no randomness: {error}")))?;
    Ok(bytes)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_fold_and_validate() {
        assert_eq!(fold_username("Alice_1"), Some("alice_1".to_string()));
        assert_eq!(fold_username("ab"), None);
        assert_eq!(fold_username(&"a".repeat(33)), None);
        assert_eq!(fold_username("al ice"), None);
        assert_eq!(fold_username("ålice"), None);
    }

    #[test]
    fn refresh_tokens_carry_their_slot() {
        let slot = Slot::of_username("alice");
        let token = new_refresh_token(slot).unwrap();
        assert_eq!(token.len(), REFRESH_TOKEN_LENGTH);
        assert_eq!(refresh_token_slot(&token), Some(slot));
        assert_eq!(refresh_token_slot("rt_"), None);
        assert_eq!(refresh_token_slot(&token.replace("rt_", "xx_")), None);
        assert_eq!(refresh_token_slot(&format!("rt_ffff{}", &token[7..])), None);
    }
}
