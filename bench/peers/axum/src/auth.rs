//! The auth routes (`POST /v1/users`, `POST /v1/sessions`, `GET /v1/me`) and what every
//! authenticated route does first: verify the HS256 access token, then, under the state lock,
//! check that its session still exists (so a revocation takes effect at once).
//!
//! Password hashes run on tokio's blocking threads, at most
//! [`PASSWORD_HASHES_IN_FLIGHT_MAX`] at once, never on a worker thread and never under the lock.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::body::Bytes;
use axum::extract;
use axum::extract::rejection::BytesRejection;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::error::{body_of, parse_body, ApiError, ErrorType};
use crate::limits::{
    ACCESS_TOKEN_TTL_SECONDS, JWT_SECRET_BYTES_MIN, PASSWORD_BYTES, PASSWORD_HASHES_IN_FLIGHT_MAX,
    PASSWORD_ITERATIONS, PASSWORD_MEMORY_KIB, PASSWORD_PARALLELISM, REFRESH_TOKEN_TTL_SECONDS,
    TOKEN_BYTES_MAX, USERNAME_CHARS,
};
use crate::reply::{self, hex, random, random_id, Reply};
use crate::state::{Session, User};
use crate::App;

/// The `iss` claim of every token this peer issues and accepts.
const ISSUER: &str = "shardpay-peer";
/// The `kid` header of every token.
const KEY_ID: &str = "dev";

/// Tokens and password hashing.
pub struct Auth {
    encoding_key: EncodingKey,
    decoding_key: DecodingKey,
    header: Header,
    validation: Validation,
    argon2: Argon2<'static>,
    /// Verified against for unknown usernames, so they cost what a wrong password costs.
    dummy_hash: String,
    hashing: Arc<Semaphore>,
}

/// The claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Session id.
    pub sid: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Issuer.
    pub iss: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct UserBody<'a> {
    id: &'a str,
    username: &'a str,
    created_at: &'a str,
}

#[derive(Serialize)]
struct SessionBody<'a> {
    session_id: &'a str,
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    refresh_token: &'a str,
    refresh_expires_in: u64,
}

impl Auth {
    /// Keys from `jwt_secret`; computes the dummy hash (one argon2id hash, on this thread).
    pub fn new(jwt_secret: &str) -> anyhow::Result<Auth> {
        anyhow::ensure!(
            jwt_secret.len() >= JWT_SECRET_BYTES_MIN,
            "--jwt-secret must be at least {JWT_SECRET_BYTES_MIN} bytes"
        );
        let params = Params::new(
            PASSWORD_MEMORY_KIB,
            PASSWORD_ITERATIONS,
            PASSWORD_PARALLELISM,
            None,
        )
        .map_err(|error| anyhow::anyhow!("argon2 parameters: {error}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        // A password one byte longer than any accepted one: nobody can log in with it.
        let dummy_password = [b'x'; *PASSWORD_BYTES.end() + 1];
        let dummy_salt = SaltString::encode_b64(b"peer-axum-dummy!")
            .map_err(|error| anyhow::anyhow!("dummy salt: {error}"))?;
        let dummy_hash = argon2
            .hash_password(&dummy_password, &dummy_salt)
            .map_err(|error| anyhow::anyhow!("dummy hash: {error}"))?
            .to_string();
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(KEY_ID.to_string());
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Ok(Auth {
            encoding_key: EncodingKey::from_secret(jwt_secret.as_bytes()),
            decoding_key: DecodingKey::from_secret(jwt_secret.as_bytes()),
            header,
            validation,
            argon2,
            dummy_hash,
            hashing: Arc::new(Semaphore::new(PASSWORD_HASHES_IN_FLIGHT_MAX)),
        })
    }

    /// Checks `Authorization: Bearer <jwt>`: signature, `alg`, `exp` and `iss`. The caller still
    /// has to check the session under the lock.
    pub fn verify(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let value = headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthenticated(
                "missing_token",
                "This route needs Authorization: Bearer <access token>.",
            )
        })?;
        let token = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
            .filter(|token| token.len() <= TOKEN_BYTES_MAX)
            .and_then(|token| std::str::from_utf8(token).ok())
            .ok_or_else(ApiError::invalid_token)?;
        jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding_key, &self.validation)
            .map(|data| data.claims)
            .map_err(|_| ApiError::invalid_token())
    }

    /// Runs `work` on a blocking thread once a hashing permit is free.
    async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("Password hashing is shut down."))?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the hash is done, even if the client goes away meanwhile.
            let _permit = permit;
            work(&argon2)
        })
        .await
        .map_err(|_| ApiError::internal("Password hashing failed."))
    }
}

/// `POST /v1/users`.
pub async fn signup(
    extract::State(app): extract::State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = reply::request_id(&headers);
    reply::respond(signup_inner(&app, body).await, &request_id)
}

async fn signup_inner(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Reply, ApiError> {
    let credentials: Credentials = parse_body(&body_of(body)?)?;
    let username = fold_username(&credentials.username).ok_or_else(|| {
        ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_username",
            "A username is 3 to 32 characters of a-z, 0-9, '_', '.' and '-' (upper case is folded).",
        )
        .with_param("username")
    })?;
    if !PASSWORD_BYTES.contains(&credentials.password.len()) {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
            "A password is 10 to 1024 bytes long.",
        )
        .with_param("password"));
    }
    let salt =
        SaltString::encode_b64(&random::<16>()?).map_err(|_| ApiError::internal("Password salt failed."))?;
    let password = credentials.password;
    let password_hash = app
        .auth
        .hash(move |argon2| {
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
        })
        .await?
        .map_err(|_| ApiError::internal("Password hashing failed."))?;
    let user = User {
        id: random_id("usr_")?,
        username,
        password_hash,
        created_at: reply::now_rfc3339(),
        balances: Default::default(),
        payments: Vec::new(),
    };
    let mut state = app.lock();
    let user = state.create_user(user)?;
    Ok(Reply::new(StatusCode::CREATED, &user_body(user)))
}

/// `POST /v1/sessions`.
pub async fn login(
    extract::State(app): extract::State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = reply::request_id(&headers);
    reply::respond(login_inner(&app, body).await, &request_id)
}

async fn login_inner(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Reply, ApiError> {
    let credentials: Credentials = parse_body(&body_of(body)?)?;
    // A malformed username is just an unknown one: the same answer, the same work.
    let known = fold_username(&credentials.username).and_then(|username| app.lock().credentials(&username));
    let stored_hash = known
        .as_ref()
        .map_or_else(|| app.auth.dummy_hash.clone(), |(_, hash)| hash.clone());
    let password = credentials.password;
    let matches = if password.len() > *PASSWORD_BYTES.end() {
        false
    } else {
        app.auth
            .hash(move |argon2| {
                PasswordHash::new(&stored_hash)
                    .is_ok_and(|hash| argon2.verify_password(password.as_bytes(), &hash).is_ok())
            })
            .await?
    };
    let user_id = match (matches, known) {
        (true, Some((user_id, _))) => user_id,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorType::Authentication,
                "invalid_credentials",
                "The username or password is wrong.",
            ))
        }
    };
    let session_id = random_id("ses_")?;
    // Opaque and random like shardpay's; no route here takes it back, so it is not stored.
    let refresh_token = format!("rt_{}", hex(&random::<32>()?));
    let session = Session {
        user_id: user_id.clone(),
    };
    app.lock().create_session(session_id.clone(), session)?;
    let issued_at = unix_seconds();
    let claims = Claims {
        sub: user_id,
        sid: session_id.clone(),
        iat: issued_at,
        exp: issued_at + ACCESS_TOKEN_TTL_SECONDS,
        iss: ISSUER.to_string(),
    };
    let access_token = jsonwebtoken::encode(&app.auth.header, &claims, &app.auth.encoding_key)
        .map_err(|_| ApiError::internal("Token signing failed."))?;
    let body = SessionBody {
        session_id: &session_id,
        access_token: &access_token,
        token_type: "Bearer",
        expires_in: ACCESS_TOKEN_TTL_SECONDS,
        refresh_token: &refresh_token,
        refresh_expires_in: REFRESH_TOKEN_TTL_SECONDS,
    };
    Ok(Reply::new(StatusCode::CREATED, &body))
}

/// `GET /v1/me`.
pub async fn me(extract::State(app): extract::State<Arc<App>>, headers: HeaderMap) -> Response {
    let request_id = reply::request_id(&headers);
    let result = app.auth.verify(&headers).and_then(|claims| {
        let state = app.lock();
        let user = state
            .session_user(&claims.sid, &claims.sub)
            .ok_or_else(ApiError::invalid_token)?;
        Ok(Reply::new(StatusCode::OK, &user_body(user)))
    });
    reply::respond(result, &request_id)
}

fn user_body(user: &User) -> UserBody<'_> {
    UserBody {
        id: &user.id,
        username: &user.username,
        created_at: &user.created_at,
    }
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

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

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
    fn tokens_verify_only_when_signed_current_and_ours() {
        let auth = Auth::new("0123456789abcdef0123456789abcdef").unwrap();
        let now = unix_seconds();
        let sign = |exp: u64, iss: &str, key: &EncodingKey| {
            let claims = Claims {
                sub: "usr_1".into(),
                sid: "ses_1".into(),
                iat: now,
                exp,
                iss: iss.into(),
            };
            jsonwebtoken::encode(&auth.header, &claims, key).unwrap()
        };
        let bearer = |token: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            headers
        };
        let good = sign(now + 60, ISSUER, &auth.encoding_key);
        assert_eq!(auth.verify(&bearer(&good)).unwrap().sid, "ses_1");
        let other_key = EncodingKey::from_secret(b"another-secret-another-secret-xx");
        for bad in [
            sign(now - 1, ISSUER, &auth.encoding_key),
            sign(now + 60, "someone-else", &auth.encoding_key),
            sign(now + 60, ISSUER, &other_key),
            "not-a-token".to_string(),
        ] {
            assert_eq!(auth.verify(&bearer(&bad)).unwrap_err().code, "invalid_token");
        }
        assert_eq!(auth.verify(&HeaderMap::new()).unwrap_err().code, "missing_token");
    }
}
