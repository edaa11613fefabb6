//! The auth API (docs: ../shared/spec/api.md, "Auth") through the real binary, black-box: sign-up and
//! its validation, login and tokens verified independently of the server's own JWT code, login
//! throttling, refresh rotation and reuse detection, logout, the session list, /v1/me, every kind of
//! bad credential, token expiry, key rotation, and `X-Shard` naming the user's home shard whichever
//! shard port the request came in on.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use shardpay::slots::{Slot, UserId};

use common::{Client, Response, Server};

/// The test signing key, and others (all at least 32 bytes, as HS256 requires).
const SECRET_1: &[u8] = b"shardpay-test-secret-one-0123456789abcdef";
const SECRET_2: &[u8] = b"shardpay-test-secret-two-0123456789abcdef";
const WRONG_SECRET: &[u8] = b"not-the-server-secret-at-all-0123456789ab";

const PASSWORD: &str = "correct horse battery staple";
const DEFAULT_ISSUER: &str = "shardpay";

// ---------------------------------------------------------------------------------------------
// Server and requests

/// base64url without padding.
fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `SHARDPAY_AUTH_JWT_KEYS` for these keys.
fn keys_env(keys: &[(&str, &[u8])]) -> String {
    keys.iter()
        .map(|(kid, secret)| format!("{kid}:{}", b64(secret)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A server with cheap password hashing and key `k1` = [`SECRET_1`]; `extra` overrides.
fn start(shards: usize, extra: &[(&str, &str)]) -> Server {
    let keys = keys_env(&[("k1", SECRET_1)]);
    let mut env: Vec<(&str, &str)> = vec![
        ("SHARDPAY_AUTH_PASSWORD_MEMORY_KIB", "64"),
        ("SHARDPAY_AUTH_PASSWORD_ITERATIONS", "1"),
        ("SHARDPAY_AUTH_JWT_KEYS", &keys),
        ("SHARDPAY_AUTH_JWT_SIGNING_KID", "k1"),
    ];
    env.extend_from_slice(extra);
    Server::start(shards, &env)
}

/// One request on a fresh connection, with extra header lines and an optional JSON body.
fn request_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    match body {
        Some(body) => raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )),
        None => raw.push_str("\r\n"),
    }
    let mut client = Client::connect(port);
    client.send(raw.as_bytes());
    client.read_response()
}

/// One request, authenticated with `token` if given.
fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Response {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    request_with(port, method, path, &headers, body)
}

fn signup(port: u16, username: &str, password: &str) -> Response {
    let body = json!({"username": username, "password": password}).to_string();
    request(port, "POST", "/v1/users", None, Some(&body))
}

fn login(port: u16, username: &str, password: &str) -> Response {
    let body = json!({"username": username, "password": password}).to_string();
    request(port, "POST", "/v1/sessions", None, Some(&body))
}

fn refresh(port: u16, refresh_token: &str) -> Response {
    let body = json!({"refresh_token": refresh_token}).to_string();
    request(port, "POST", "/v1/sessions/refresh", None, Some(&body))
}

fn me(port: u16, token: &str) -> Response {
    request(port, "GET", "/v1/me", Some(token), None)
}

fn sessions(port: u16, token: &str) -> Response {
    request(port, "GET", "/v1/sessions", Some(token), None)
}

fn logout(port: u16, token: &str) -> Response {
    request(port, "DELETE", "/v1/sessions/current", Some(token), None)
}

fn logout_everywhere(port: u16, token: &str) -> Response {
    request(port, "DELETE", "/v1/sessions", Some(token), None)
}

/// Signs up and returns the created user.
fn signup_ok(port: u16, username: &str) -> Value {
    let response = signup(port, username, PASSWORD);
    assert_eq!(response.status, 201, "sign-up of {username}: {}", response.text());
    response.json()
}

/// A logged-in session's tokens.
#[derive(Debug, Clone)]
struct Tokens {
    session_id: String,
    access: String,
    refresh: String,
}

impl Tokens {
    fn from(response: &Response, what: &str) -> Tokens {
        assert_eq!(response.status, 201, "{what}: {}", response.text());
        let body = response.json();
        let text = |key: &str| {
            body[key]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: {key} missing: {body}"))
                .to_string()
        };
        Tokens {
            session_id: text("session_id"),
            access: text("access_token"),
            refresh: text("refresh_token"),
        }
    }
}

fn login_ok(port: u16, username: &str) -> Tokens {
    Tokens::from(&login(port, username, PASSWORD), &format!("login of {username}"))
}

fn refresh_ok(port: u16, refresh_token: &str) -> Tokens {
    Tokens::from(&refresh(port, refresh_token), "refresh")
}

// ---------------------------------------------------------------------------------------------
// Assertions

/// The keys of a JSON object.
fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn key_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// Checks a contract error: status, `error.type` (if given), `error.code`, `error.param` (if given;
/// `Some(None)` for null), a message, and `request_id` equal to `X-Request-Id`.
fn assert_error(
    response: &Response,
    status: u16,
    kind: Option<&str>,
    code: &str,
    param: Option<Option<&str>>,
    what: &str,
) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
    let body = response.json();
    let error = &body["error"];
    assert_eq!(error["code"], code, "{what}: {body}");
    if let Some(kind) = kind {
        assert_eq!(error["type"], kind, "{what}: {body}");
    }
    assert!(
        matches!(
            error["type"].as_str(),
            Some(
                "invalid_request_error"
                    | "authentication_error"
                    | "idempotency_error"
                    | "rate_limit_error"
                    | "api_error"
            )
        ),
        "{what}: {body}"
    );
    match param {
        Some(Some(param)) => assert_eq!(error["param"], param, "{what}: {body}"),
        Some(None) => assert!(error["param"].is_null(), "{what}: param should be null: {body}"),
        None => assert!(
            error["param"].is_null() || error["param"].is_string(),
            "{what}: {body}"
        ),
    }
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{what}: {body}"
    );
    assert_eq!(
        body["request_id"].as_str(),
        response.header("x-request-id"),
        "{what}: {body}"
    );
}

/// 401 `authentication_error` with `WWW-Authenticate: Bearer`.
fn assert_unauthenticated(response: &Response, what: &str) {
    assert_eq!(response.status, 401, "{what}: {}", response.text());
    let body = response.json();
    assert_eq!(body["error"]["type"], "authentication_error", "{what}: {body}");
    assert!(body["error"]["code"].is_string(), "{what}: no error code: {body}");
    assert_eq!(
        body["request_id"].as_str(),
        response.header("x-request-id"),
        "{what}"
    );
    let challenge = response
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate: {:?}", response.headers));
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: WWW-Authenticate is {challenge:?}"
    );
}

fn assert_invalid_refresh_token(response: &Response, what: &str) {
    assert_error(response, 401, None, "invalid_refresh_token", None, what);
}

/// A 429 with a `Retry-After` of 1 to `max` seconds.
fn assert_rate_limited(response: &Response, code: Option<&str>, max: u64, what: &str) {
    assert_eq!(response.status, 429, "{what}: {}", response.text());
    let body = response.json();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{what}: {body}");
    if let Some(code) = code {
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
    }
    let retry_after: u64 = response
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After: {:?}", response.headers))
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After is not whole seconds: {:?}", response.headers));
    assert!(
        (1..=max).contains(&retry_after),
        "{what}: Retry-After {retry_after} not in 1..={max}"
    );
}

fn assert_shard(response: &Response, shard: usize, what: &str) {
    assert_eq!(
        response.header("x-shard"),
        Some(shard.to_string().as_str()),
        "{what}: X-Shard should be the home shard {shard}"
    );
}

fn assert_no_content(response: &Response, what: &str) {
    assert_eq!(response.status, 204, "{what}: {}", response.text());
    assert!(response.body.is_empty(), "{what}: 204 with a body");
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_base64url(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `ses_` + 24 lower-case hex digits.
fn assert_session_id(id: &str) {
    let hex = id
        .strip_prefix("ses_")
        .unwrap_or_else(|| panic!("session id {id:?}"));
    assert!(hex.len() == 24 && is_lower_hex(hex), "session id {id:?}");
}

/// `rt_` + the user's slot as 4 hex digits + 43 base64url characters (32 bytes).
fn assert_refresh_token(token: &str, slot: Slot) {
    let rest = token
        .strip_prefix("rt_")
        .unwrap_or_else(|| panic!("refresh token {token:?}"));
    assert_eq!(rest.len(), 4 + 43, "refresh token {token:?}");
    assert_eq!(
        &rest[..4],
        format!("{:04x}", slot.number()),
        "refresh token slot {token:?}"
    );
    assert!(is_base64url(&rest[4..]), "refresh token {token:?}");
}

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146097 + day_of_era - 719468
}

/// Parses an RFC 3339 UTC timestamp (`Z` or `+00:00`) to Unix seconds, or panics.
fn rfc3339_seconds(text: &str) -> i64 {
    let bad = || -> ! { panic!("not an RFC 3339 UTC timestamp: {text:?}") };
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        bad();
    }
    let digits = |range: std::ops::Range<usize>| -> i64 {
        let part = &text[range];
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            bad();
        }
        part.parse().unwrap()
    };
    if bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' || bytes[13] != b':' || bytes[16] != b':' {
        bad();
    }
    let (year, month, day) = (digits(0..4), digits(5..7), digits(8..10));
    let (hour, minute, second) = (digits(11..13), digits(14..16), digits(17..19));
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            bad();
        }
        rest = &fraction[end..];
    }
    if rest != "Z" && rest != "+00:00" {
        bad();
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        bad();
    }
    days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
}

/// An RFC 3339 UTC timestamp within a minute of now.
fn assert_recent(value: &Value, what: &str) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {value}"));
    let seconds = rfc3339_seconds(text);
    let now = now() as i64;
    assert!(
        (now - 60..=now + 60).contains(&seconds),
        "{what}: {text} is not about now"
    );
}

/// The home shard of a username.
fn home_shard(username: &str, shards: usize) -> usize {
    Slot::of_username(&username.to_ascii_lowercase()).shard(shards)
}

/// The first `{prefix}{n}` whose home shard is `shard` of `shards`.
fn username_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| home_shard(name, shards) == shard)
        .unwrap()
}

/// `name` with its first letter upper-cased.
fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    let first = chars.next().unwrap().to_ascii_uppercase();
    std::iter::once(first).chain(chars).collect()
}

// ---------------------------------------------------------------------------------------------
// JWTs, independently of the server's code

fn hmac_sha256(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

/// Checks an access token's header and HS256 signature under `secret` and returns its claims.
fn verify_jwt(token: &str, kid: &str, secret: &[u8]) -> Value {
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "not a compact JWS: {token}");
    for segment in &segments {
        assert!(
            is_base64url(segment),
            "segment is not base64url without padding: {token}"
        );
    }
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segments[0]).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
        "JWT header"
    );
    let signing_input = format!("{}.{}", segments[0], segments[1]);
    let signature = URL_SAFE_NO_PAD.decode(segments[2]).unwrap();
    assert_eq!(
        signature,
        hmac_sha256(secret, signing_input.as_bytes()),
        "HS256 signature does not verify with the {kid} secret"
    );
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segments[1]).unwrap()).unwrap()
}

/// A token with this header and claims, HS256-signed with `secret`.
fn craft_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = hmac_sha256(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&signature))
}

fn header(kid: &str) -> Value {
    json!({"alg": "HS256", "typ": "JWT", "kid": kid})
}

/// Claims valid for five minutes from now.
fn claims(sub: &str, sid: &str) -> Value {
    let now = now();
    json!({"sub": sub, "sid": sid, "iat": now, "exp": now + 300, "iss": DEFAULT_ISSUER})
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn signup_returns_the_user_and_validates_input() {
    let server = start(2, &[]);
    let name = username_on_shard("alice", 1, 2);

    // Mixed case in, case-folded out; through the other shard's port.
    let created = signup(server.shard_port(0), &capitalized(&name), PASSWORD);
    assert_eq!(created.status, 201, "{}", created.text());
    assert_shard(&created, 1, "sign-up");
    assert_eq!(created.header("content-type"), Some("application/json"));
    let user = created.json();
    assert_eq!(keys(&user), key_set(&["id", "username", "created_at"]), "{user}");
    assert_eq!(user["username"], name.as_str());
    let id = UserId::parse(user["id"].as_str().unwrap()).unwrap_or_else(|| panic!("user id: {user}"));
    assert_eq!(
        id.slot(),
        Slot::of_username(&name),
        "the id carries the username's slot"
    );
    assert_recent(&user["created_at"], "created_at");

    // Taken, whatever the case and the port.
    for (port, username) in [
        (server.shard_port(1), name.clone()),
        (server.shard_port(0), name.to_ascii_uppercase()),
        (server.port, capitalized(&name)),
    ] {
        let taken = signup(port, &username, "another long password");
        assert_error(
            &taken,
            409,
            Some("invalid_request_error"),
            "username_taken",
            None,
            &format!("duplicate {username}"),
        );
        assert_shard(&taken, 1, "duplicate sign-up");
    }

    let port = server.port;
    let long_name = "x".repeat(33);
    for bad in [
        "ab",
        "",
        long_name.as_str(),
        "has space",
        "bjørn",
        "semi;colon",
        "a/b",
        "tab\tname",
        "émile",
    ] {
        assert_error(
            &signup(port, bad, PASSWORD),
            422,
            Some("invalid_request_error"),
            "invalid_username",
            Some(Some("username")),
            &format!("username {bad:?}"),
        );
    }
    let longest_name = "y".repeat(32);
    for good in ["abc", "ABD", "a_b.c-9", longest_name.as_str()] {
        let created = signup(port, good, PASSWORD);
        assert_eq!(created.status, 201, "username {good:?}: {}", created.text());
        assert_eq!(created.json()["username"], good.to_ascii_lowercase());
    }

    let too_long = "p".repeat(1025);
    for (index, bad) in ["", "123456789", too_long.as_str()].iter().enumerate() {
        assert_error(
            &signup(port, &format!("weak{index}"), bad),
            422,
            Some("invalid_request_error"),
            "weak_password",
            Some(Some("password")),
            &format!("password of {} bytes", bad.len()),
        );
    }
    // Lengths are in bytes: five two-byte characters are long enough.
    let longest = "q".repeat(1024);
    for (index, good) in ["0123456789", "ééééé", longest.as_str()].iter().enumerate() {
        let created = signup(port, &format!("strong{index}"), good);
        assert_eq!(
            created.status,
            201,
            "password of {} bytes: {}",
            good.len(),
            created.text()
        );
    }

    // Malformed JSON, unknown and missing fields.
    for body in [
        r#"{"username":"#,
        "",
        "not json",
        r#"{"username":"m1","password":"0123456789abc"}x"#,
    ] {
        assert_error(
            &request(port, "POST", "/v1/users", None, Some(body)),
            400,
            Some("invalid_request_error"),
            "invalid_json",
            None,
            &format!("body {body:?}"),
        );
    }
    let unknown = json!({"username": "probe_user", "password": PASSWORD, "email": "a@b.c"}).to_string();
    assert_error(
        &request(port, "POST", "/v1/users", None, Some(&unknown)),
        422,
        Some("invalid_request_error"),
        "unknown_field",
        Some(Some("email")),
        "unknown field",
    );
    let missing_password = json!({"username": "probe_user"}).to_string();
    assert_error(
        &request(port, "POST", "/v1/users", None, Some(&missing_password)),
        422,
        Some("invalid_request_error"),
        "missing_field",
        Some(Some("password")),
        "missing password",
    );
    let missing_username = json!({"password": PASSWORD}).to_string();
    assert_error(
        &request(port, "POST", "/v1/users", None, Some(&missing_username)),
        422,
        Some("invalid_request_error"),
        "missing_field",
        Some(Some("username")),
        "missing username",
    );
    let wrong_type = json!({"username": 5, "password": PASSWORD}).to_string();
    let refused = request(port, "POST", "/v1/users", None, Some(&wrong_type));
    assert!(
        refused.status == 400 || refused.status == 422,
        "username of the wrong type: {} {}",
        refused.status,
        refused.text()
    );
    assert!(refused.json()["error"]["code"].is_string());
    // The refused requests created nothing.
    signup_ok(port, "probe_user");
}

#[test]
fn login_issues_tokens_that_verify_independently() {
    let server = start(
        2,
        &[
            ("SHARDPAY_AUTH_ISSUER", "shardpay-test"),
            ("SHARDPAY_AUTH_ACCESS_TOKEN_TTL_SECONDS", "600"),
            ("SHARDPAY_AUTH_REFRESH_TOKEN_TTL_SECONDS", "86400"),
        ],
    );
    let name = username_on_shard("bob", 1, 2);
    let user = signup_ok(server.shard_port(1), &name);

    let before = now();
    let response = login(server.shard_port(0), &capitalized(&name), PASSWORD);
    let after = now();
    assert_eq!(response.status, 201, "{}", response.text());
    assert_shard(&response, 1, "login through shard 0");
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(
        keys(&body),
        key_set(&[
            "session_id",
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in"
        ]),
        "{body}"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["refresh_expires_in"], 86400);
    let tokens = Tokens::from(&response, "login");
    assert_session_id(&tokens.session_id);
    assert_refresh_token(&tokens.refresh, Slot::of_username(&name));

    let claims = verify_jwt(&tokens.access, "k1", SECRET_1);
    assert_eq!(claims["sub"], user["id"], "{claims}");
    assert_eq!(claims["sid"], tokens.session_id.as_str(), "{claims}");
    assert_eq!(claims["iss"], "shardpay-test", "{claims}");
    let iat = claims["iat"].as_u64().unwrap_or_else(|| panic!("iat: {claims}"));
    let exp = claims["exp"].as_u64().unwrap_or_else(|| panic!("exp: {claims}"));
    assert_eq!(exp - iat, 600, "exp - iat is the access TTL: {claims}");
    assert!(
        (before.saturating_sub(1)..=after + 1).contains(&iat),
        "iat {iat} not now: {claims}"
    );

    // The token works on every port and names the user.
    for port in [server.port, server.shard_port(0), server.shard_port(1)] {
        let found = me(port, &tokens.access);
        assert_eq!(found.status, 200, "{}", found.text());
        assert_shard(&found, 1, "/v1/me");
        assert_eq!(found.json(), user);
    }

    // A second login is another session with other tokens.
    let second = login_ok(server.shard_port(1), &name);
    assert_ne!(second.session_id, tokens.session_id);
    assert_ne!(second.access, tokens.access);
    assert_ne!(second.refresh, tokens.refresh);
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_401() {
    let server = start(2, &[]);
    let name = username_on_shard("carol", 0, 2);
    signup_ok(server.port, &name);
    let ghost = username_on_shard("ghost", 0, 2);

    let wrong_password = login(server.shard_port(1), &name, "not the password at all");
    let unknown_user = login(server.shard_port(1), &ghost, "not the password at all");
    for (response, what) in [
        (&wrong_password, "wrong password"),
        (&unknown_user, "unknown user"),
    ] {
        assert_error(response, 401, None, "invalid_credentials", None, what);
    }
    let without_request_id = |response: &Response| {
        let mut body = response.json();
        body.as_object_mut().unwrap().remove("request_id");
        body
    };
    assert_eq!(
        without_request_id(&wrong_password),
        without_request_id(&unknown_user)
    );
    let header_names = |response: &Response| -> BTreeSet<String> {
        response
            .headers
            .iter()
            .map(|(name, _)| name.to_ascii_lowercase())
            .collect()
    };
    assert_eq!(header_names(&wrong_password), header_names(&unknown_user));

    // The right password still logs in.
    login_ok(server.shard_port(1), &name);
}

#[test]
fn failed_logins_per_username_are_throttled() {
    let server = start(2, &[("SHARDPAY_AUTH_LOGIN_FAILURES_PER_USERNAME_MAX", "3")]);
    let name = username_on_shard("dave", 1, 2);
    let other = username_on_shard("erin", 1, 2);
    signup_ok(server.shard_port(1), &name);
    signup_ok(server.shard_port(1), &other);

    for attempt in 0..3 {
        assert_error(
            &login(server.shard_port(0), &name, "wrong password!"),
            401,
            None,
            "invalid_credentials",
            None,
            &format!("failure {attempt}"),
        );
    }
    // Throttled even with the right password, on every port, whatever the case.
    let blocked = login(server.shard_port(0), &name, PASSWORD);
    assert_rate_limited(
        &blocked,
        Some("too_many_attempts"),
        300,
        "right password after 3 failures",
    );
    assert_rate_limited(
        &login(server.shard_port(1), &name.to_ascii_uppercase(), PASSWORD),
        Some("too_many_attempts"),
        300,
        "upper-cased username through the home shard",
    );
    assert_rate_limited(
        &login(server.port, &name, "wrong password!"),
        Some("too_many_attempts"),
        300,
        "another wrong password",
    );
    // Another user of the same shard is not affected.
    login_ok(server.shard_port(0), &other);
}

#[test]
fn login_attempts_per_ip_are_throttled() {
    let server = start(2, &[("SHARDPAY_AUTH_LOGIN_ATTEMPTS_PER_IP_MAX", "3")]);
    let name = username_on_shard("frank", 0, 2);
    signup_ok(server.shard_port(1), &name);

    // Three attempts for three different (unknown) usernames: only the per-IP limit can apply.
    for attempt in 0..3 {
        assert_error(
            &login(
                server.shard_port(0),
                &format!("nobody{attempt}"),
                "wrong password!",
            ),
            401,
            None,
            "invalid_credentials",
            None,
            &format!("attempt {attempt}"),
        );
    }
    let blocked = login(server.shard_port(0), &name, PASSWORD);
    assert_rate_limited(
        &blocked,
        Some("too_many_attempts"),
        300,
        "fourth attempt from the IP",
    );
    // The limit is kept by the receiving shard: shard 1 has seen no attempt from this IP.
    login_ok(server.shard_port(1), &name);
}

#[test]
fn refresh_rotates_the_pair_and_keeps_the_session() {
    let server = start(2, &[]);
    let name = username_on_shard("grace", 1, 2);
    let user = signup_ok(server.port, &name);
    let first = login_ok(server.shard_port(0), &name);

    let response = refresh(server.shard_port(0), &first.refresh);
    assert_eq!(response.status, 201, "{}", response.text());
    assert_shard(&response, 1, "refresh through shard 0");
    let body = response.json();
    assert_eq!(
        keys(&body),
        key_set(&[
            "session_id",
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "refresh_expires_in"
        ]),
        "{body}"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["refresh_expires_in"], 2592000);
    let second = Tokens::from(&response, "refresh");
    assert_eq!(second.session_id, first.session_id);
    assert_ne!(second.refresh, first.refresh);
    assert_refresh_token(&second.refresh, Slot::of_username(&name));
    let claims = verify_jwt(&second.access, "k1", SECRET_1);
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["sid"], first.session_id.as_str());
    assert_eq!(me(server.shard_port(0), &second.access).status, 200);

    let third = refresh_ok(server.shard_port(1), &second.refresh);
    assert_eq!(third.session_id, first.session_id);
    assert_eq!(me(server.shard_port(1), &third.access).status, 200);

    // Unknown, malformed and missing tokens.
    let slot = format!("{:04x}", Slot::of_username(&name).number());
    let unknown = format!("rt_{slot}{}", "A".repeat(43));
    for token in [unknown.as_str(), "nope", "rt_", "rt_zzzz"] {
        assert_invalid_refresh_token(&refresh(server.port, token), &format!("refresh token {token:?}"));
    }
    assert_error(
        &request(server.port, "POST", "/v1/sessions/refresh", None, Some("{}")),
        422,
        Some("invalid_request_error"),
        "missing_field",
        Some(Some("refresh_token")),
        "no refresh token",
    );
    let extra = json!({"refresh_token": third.refresh, "scope": "all"}).to_string();
    assert_error(
        &request(server.port, "POST", "/v1/sessions/refresh", None, Some(&extra)),
        422,
        Some("invalid_request_error"),
        "unknown_field",
        Some(Some("scope")),
        "unknown field",
    );
    assert_error(
        &request(server.port, "POST", "/v1/sessions/refresh", None, Some("{")),
        400,
        Some("invalid_request_error"),
        "invalid_json",
        None,
        "malformed JSON",
    );

    // Still one session, and the latest pair still works.
    let list = sessions(server.shard_port(0), &third.access);
    assert_eq!(list.status, 200, "{}", list.text());
    let data = list.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 1, "{data}");
    assert_eq!(data[0]["session_id"], first.session_id.as_str());

    // The first refresh token stopped working once rotated.
    assert_invalid_refresh_token(&refresh(server.shard_port(0), &first.refresh), "rotated token");
}

#[test]
fn reusing_a_rotated_refresh_token_revokes_that_session_only() {
    let server = start(2, &[]);
    let name = username_on_shard("heidi", 1, 2);
    let bystander = username_on_shard("ivan", 1, 2);
    signup_ok(server.port, &name);
    signup_ok(server.port, &bystander);
    let a1 = login_ok(server.shard_port(0), &name);
    let b = login_ok(server.shard_port(1), &name);
    let c = login_ok(server.shard_port(0), &bystander);

    let a2 = refresh_ok(server.shard_port(0), &a1.refresh);
    assert_eq!(me(server.shard_port(0), &a2.access).status, 200);

    // The rotated token comes back: refused, and the whole session is revoked.
    assert_invalid_refresh_token(&refresh(server.shard_port(0), &a1.refresh), "reused token");
    assert_invalid_refresh_token(
        &refresh(server.shard_port(1), &a2.refresh),
        "newest token of a session revoked by reuse",
    );
    for port in [server.shard_port(0), server.shard_port(1)] {
        for (token, what) in [
            (&a1.access, "first access token"),
            (&a2.access, "refreshed access token"),
        ] {
            assert_unauthenticated(&me(port, token), &format!("{what} after reuse, port {port}"));
            assert_unauthenticated(
                &sessions(port, token),
                &format!("{what} listing sessions after reuse"),
            );
        }
    }

    // The user's other session and other users are untouched.
    assert_eq!(me(server.shard_port(0), &b.access).status, 200);
    let list = sessions(server.shard_port(0), &b.access);
    assert_eq!(list.status, 200, "{}", list.text());
    let ids: Vec<Value> = list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].clone())
        .collect();
    assert_eq!(ids, [json!(b.session_id)]);
    let b2 = refresh_ok(server.shard_port(0), &b.refresh);
    assert_eq!(me(server.shard_port(1), &b2.access).status, 200);
    assert_eq!(me(server.shard_port(1), &c.access).status, 200);
    refresh_ok(server.shard_port(1), &c.refresh);
}

#[test]
fn logout_revokes_the_current_session_at_once() {
    let server = start(2, &[]);
    let name = username_on_shard("judy", 1, 2);
    signup_ok(server.port, &name);
    let s1 = login_ok(server.shard_port(0), &name);
    let s2 = login_ok(server.shard_port(0), &name);

    let response = logout(server.shard_port(0), &s1.access);
    assert_no_content(&response, "logout");
    assert_shard(&response, 1, "logout through shard 0");

    for port in [server.shard_port(0), server.shard_port(1), server.port] {
        assert_unauthenticated(
            &me(port, &s1.access),
            &format!("/v1/me after logout, port {port}"),
        );
        assert_unauthenticated(&sessions(port, &s1.access), "/v1/sessions after logout");
    }
    assert_unauthenticated(&logout(server.shard_port(1), &s1.access), "second logout");
    assert_unauthenticated(
        &logout_everywhere(server.shard_port(1), &s1.access),
        "logout everywhere with a logged-out token",
    );
    assert_invalid_refresh_token(
        &refresh(server.shard_port(1), &s1.refresh),
        "refresh after logout",
    );

    // The other session is untouched.
    assert_eq!(me(server.shard_port(0), &s2.access).status, 200);
    let list = sessions(server.shard_port(1), &s2.access);
    assert_eq!(list.status, 200, "{}", list.text());
    let data = list.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 1, "{data}");
    assert_eq!(data[0]["session_id"], s2.session_id.as_str());
    refresh_ok(server.shard_port(0), &s2.refresh);
}

#[test]
fn logout_everywhere_revokes_every_session_of_the_user() {
    let server = start(2, &[]);
    let name = username_on_shard("ken", 0, 2);
    let bystander = username_on_shard("lena", 0, 2);
    signup_ok(server.port, &name);
    signup_ok(server.port, &bystander);
    let all: Vec<Tokens> = (0..3)
        .map(|n| login_ok(server.shard_port(n % 2), &name))
        .collect();
    let other = login_ok(server.shard_port(1), &bystander);

    let response = logout_everywhere(server.shard_port(1), &all[1].access);
    assert_no_content(&response, "logout everywhere");
    assert_shard(&response, 0, "logout everywhere through shard 1");

    for (index, tokens) in all.iter().enumerate() {
        for port in [server.shard_port(0), server.shard_port(1)] {
            assert_unauthenticated(
                &me(port, &tokens.access),
                &format!("session {index}, port {port}"),
            );
        }
        assert_unauthenticated(&sessions(server.shard_port(0), &tokens.access), "session list");
        assert_invalid_refresh_token(
            &refresh(server.shard_port(1), &tokens.refresh),
            &format!("refresh of session {index}"),
        );
    }
    assert_eq!(me(server.shard_port(1), &other.access).status, 200);

    // Logging in again starts afresh.
    let again = login_ok(server.shard_port(1), &name);
    let list = sessions(server.shard_port(1), &again.access);
    assert_eq!(list.status, 200, "{}", list.text());
    let data = list.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 1, "{data}");
    assert_eq!(data[0]["session_id"], again.session_id.as_str());
    assert_eq!(data[0]["current"], true);
}

#[test]
fn sessions_list_marks_the_current_session() {
    let server = start(2, &[]);
    let name = username_on_shard("mallory", 1, 2);
    let other_name = username_on_shard("niaj", 1, 2);
    signup_ok(server.port, &name);
    signup_ok(server.port, &other_name);
    let s1 = login_ok(server.shard_port(0), &name);
    let s2 = login_ok(server.shard_port(1), &name);
    let other = login_ok(server.shard_port(0), &other_name);

    for (mine, theirs) in [(&s1, &s2), (&s2, &s1)] {
        let response = sessions(server.shard_port(0), &mine.access);
        assert_eq!(response.status, 200, "{}", response.text());
        assert_shard(&response, 1, "session list through shard 0");
        let body = response.json();
        assert_eq!(keys(&body), key_set(&["data"]), "{body}");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2, "{body}");
        for entry in data {
            assert_eq!(
                keys(entry),
                key_set(&["session_id", "created_at", "last_used_at", "current"]),
                "{entry}"
            );
            assert_recent(&entry["created_at"], "created_at");
            assert_recent(&entry["last_used_at"], "last_used_at");
            assert!(
                rfc3339_seconds(entry["last_used_at"].as_str().unwrap())
                    >= rfc3339_seconds(entry["created_at"].as_str().unwrap()),
                "{entry}"
            );
        }
        let current = |id: &str| {
            data.iter()
                .find(|entry| entry["session_id"] == id)
                .unwrap_or_else(|| panic!("{id} not listed: {body}"))["current"]
                .clone()
        };
        assert_eq!(current(&mine.session_id), true, "{body}");
        assert_eq!(current(&theirs.session_id), false, "{body}");
    }

    // Another user sees only their own session.
    let response = sessions(server.shard_port(1), &other.access);
    assert_eq!(response.status, 200, "{}", response.text());
    let data = response.json()["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 1, "{data}");
    assert_eq!(data[0]["session_id"], other.session_id.as_str());
    assert_eq!(data[0]["current"], true);
}

#[test]
fn me_returns_the_authenticated_user() {
    let server = start(2, &[]);
    let first = username_on_shard("olivia", 0, 2);
    let second = username_on_shard("peggy", 1, 2);
    let users = [signup_ok(server.port, &first), signup_ok(server.port, &second)];
    for (index, name) in [&first, &second].iter().enumerate() {
        let tokens = login_ok(server.port, name);
        for shard in 0..2 {
            let response = me(server.shard_port(shard), &tokens.access);
            assert_eq!(response.status, 200, "{}", response.text());
            assert_eq!(response.header("content-type"), Some("application/json"));
            assert_shard(&response, index, "/v1/me");
            let body = response.json();
            assert_eq!(keys(&body), key_set(&["id", "username", "created_at"]), "{body}");
            assert_eq!(body, users[index]);
        }
    }
}

#[test]
fn bad_or_missing_credentials_get_401_with_www_authenticate() {
    let server = start(2, &[]);
    let name = username_on_shard("quinn", 1, 2);
    let other_name = username_on_shard("rupert", 0, 2);
    let user = signup_ok(server.port, &name);
    let other = signup_ok(server.port, &other_name);
    let session = login_ok(server.shard_port(0), &name);
    let user_id = user["id"].as_str().unwrap();
    let sid = session.session_id.as_str();

    // Control: a token crafted here with the right key and real ids is accepted.
    let crafted = craft_token(&header("k1"), &claims(user_id, sid), SECRET_1);
    let accepted = me(server.shard_port(0), &crafted);
    assert_eq!(accepted.status, 200, "crafted valid token: {}", accepted.text());

    let now = now();
    let expired = craft_token(
        &header("k1"),
        &json!({"sub": user_id, "sid": sid, "iat": now - 1000, "exp": now - 10, "iss": DEFAULT_ISSUER}),
        SECRET_1,
    );
    let wrong_secret = craft_token(&header("k1"), &claims(user_id, sid), WRONG_SECRET);
    let unknown_kid = craft_token(&header("k9"), &claims(user_id, sid), SECRET_1);
    let mut wrong_issuer_claims = claims(user_id, sid);
    wrong_issuer_claims["iss"] = json!("someone-else");
    let wrong_issuer = craft_token(&header("k1"), &wrong_issuer_claims, SECRET_1);
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": "k1"})
            .to_string()
            .as_bytes()),
        b64(claims(user_id, sid).to_string().as_bytes())
    );
    let hs512_header = json!({"alg": "HS512", "typ": "JWT", "kid": "k1"});
    let wrong_alg = craft_token(&hs512_header, &claims(user_id, sid), SECRET_1);
    let no_such_session = craft_token(
        &header("k1"),
        &claims(user_id, "ses_000000000000000000000000"),
        SECRET_1,
    );
    let someone_elses_session = craft_token(
        &header("k1"),
        &claims(other["id"].as_str().unwrap(), sid),
        SECRET_1,
    );
    // The real token with its claims swapped for another user's and the signature kept.
    let tampered = {
        let segments: Vec<&str> = session.access.split('.').collect();
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segments[1]).unwrap()).unwrap();
        payload["sub"] = other["id"].clone();
        format!(
            "{}.{}.{}",
            segments[0],
            b64(payload.to_string().as_bytes()),
            segments[2]
        )
    };
    let revoked = {
        let gone = login_ok(server.shard_port(1), &name);
        assert_no_content(&logout(server.shard_port(1), &gone.access), "logout");
        gone.access
    };

    let bearer = |token: &str| format!("Bearer {token}");
    let cases: Vec<(String, Option<String>)> = vec![
        ("no Authorization".into(), None),
        ("Bearer garbage".into(), Some("Bearer garbage".into())),
        ("empty Bearer".into(), Some("Bearer ".into())),
        (
            "Basic credentials".into(),
            Some("Basic cXVpbm46cGFzc3dvcmQ=".into()),
        ),
        ("a token without a scheme".into(), Some(session.access.clone())),
        ("expired token".into(), Some(bearer(&expired))),
        (
            "token signed with a wrong secret".into(),
            Some(bearer(&wrong_secret)),
        ),
        ("token with an unknown kid".into(), Some(bearer(&unknown_kid))),
        ("token with a wrong issuer".into(), Some(bearer(&wrong_issuer))),
        ("alg none".into(), Some(bearer(&unsigned))),
        ("alg HS512".into(), Some(bearer(&wrong_alg))),
        ("token for no such session".into(), Some(bearer(&no_such_session))),
        (
            "token naming another user's session".into(),
            Some(bearer(&someone_elses_session)),
        ),
        ("tampered claims".into(), Some(bearer(&tampered))),
        ("token of a revoked session".into(), Some(bearer(&revoked))),
    ];
    let routes = [
        ("GET", "/v1/me"),
        ("GET", "/v1/sessions"),
        ("DELETE", "/v1/sessions/current"),
        ("DELETE", "/v1/sessions"),
    ];
    for (what, authorization) in &cases {
        for (method, path) in routes {
            let headers: Vec<(&str, &str)> = authorization
                .iter()
                .map(|value| ("Authorization", value.as_str()))
                .collect();
            for port in [server.shard_port(0), server.shard_port(1)] {
                let response = request_with(port, method, path, &headers, None);
                assert_unauthenticated(&response, &format!("{what}: {method} {path} on port {port}"));
            }
        }
    }

    // None of that revoked anything.
    assert_eq!(me(server.shard_port(1), &session.access).status, 200);
    assert_eq!(
        sessions(server.shard_port(1), &session.access).json()["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn x_shard_is_the_home_shard_from_every_port() {
    let shards = 3;
    let server = start(shards, &[]);
    let ports = [
        server.port,
        server.shard_port(0),
        server.shard_port(1),
        server.shard_port(2),
    ];
    for home in 0..shards {
        let name = username_on_shard("trent", home, shards);
        let created = signup(ports[home + 1], &name, PASSWORD);
        assert_eq!(created.status, 201, "{}", created.text());
        assert_shard(&created, home, &format!("sign-up of {name}"));
        for port in ports {
            let what = |route: &str| format!("{route} for {name} (home {home}) on port {port}");
            let taken = signup(port, &name, PASSWORD);
            assert_eq!(taken.status, 409, "{}", taken.text());
            assert_shard(&taken, home, &what("duplicate sign-up"));

            let response = login(port, &name, PASSWORD);
            assert_shard(&response, home, &what("login"));
            let tokens = Tokens::from(&response, &what("login"));

            let response = refresh(port, &tokens.refresh);
            assert_shard(&response, home, &what("refresh"));
            let tokens = Tokens::from(&response, &what("refresh"));

            let response = me(port, &tokens.access);
            assert_eq!(response.status, 200, "{}", response.text());
            assert_shard(&response, home, &what("/v1/me"));

            let response = sessions(port, &tokens.access);
            assert_eq!(response.status, 200, "{}", response.text());
            assert_shard(&response, home, &what("/v1/sessions"));

            let response = logout(port, &tokens.access);
            assert_no_content(&response, &what("logout"));
            assert_shard(&response, home, &what("logout"));
        }
    }
}

#[test]
fn access_tokens_expire_after_their_ttl() {
    // A TTL of 2, not 1: with whole-second `iat`, a 1-second token may expire the moment it is issued.
    let server = start(2, &[("SHARDPAY_AUTH_ACCESS_TOKEN_TTL_SECONDS", "2")]);
    let name = username_on_shard("sybil", 1, 2);
    signup_ok(server.port, &name);
    let response = login(server.shard_port(0), &name, PASSWORD);
    assert_eq!(response.json()["expires_in"], 2, "{}", response.text());
    let tokens = Tokens::from(&response, "login");
    let claims = verify_jwt(&tokens.access, "k1", SECRET_1);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        2
    );
    assert_eq!(me(server.shard_port(0), &tokens.access).status, 200);

    std::thread::sleep(Duration::from_millis(3500));
    for port in [server.shard_port(0), server.shard_port(1)] {
        assert_unauthenticated(&me(port, &tokens.access), "expired access token");
        assert_unauthenticated(&sessions(port, &tokens.access), "expired access token");
    }
    // The refresh token outlives it.
    let renewed = refresh_ok(server.shard_port(0), &tokens.refresh);
    assert_eq!(renewed.session_id, tokens.session_id);
    assert_eq!(me(server.shard_port(1), &renewed.access).status, 200);
}

#[test]
fn tokens_signed_with_an_older_key_still_verify() {
    let keys = keys_env(&[("k2", SECRET_2), ("k1", SECRET_1)]);
    let server = start(
        2,
        &[
            ("SHARDPAY_AUTH_JWT_KEYS", &keys),
            ("SHARDPAY_AUTH_JWT_SIGNING_KID", "k2"),
        ],
    );
    let name = username_on_shard("trudy", 0, 2);
    let user = signup_ok(server.port, &name);
    let session = login_ok(server.shard_port(1), &name);

    // New tokens are signed with k2.
    let issued = verify_jwt(&session.access, "k2", SECRET_2);
    let user_id = user["id"].as_str().unwrap();
    assert_eq!(issued["sub"], user_id);
    assert_eq!(me(server.shard_port(1), &session.access).status, 200);

    // A token signed with the older k1 is still accepted, on every shard.
    let old_key = craft_token(&header("k1"), &claims(user_id, &session.session_id), SECRET_1);
    for port in [server.shard_port(0), server.shard_port(1)] {
        let response = me(port, &old_key);
        assert_eq!(
            response.status,
            200,
            "k1 token on port {port}: {}",
            response.text()
        );
        assert_eq!(response.json(), user);
    }

    // A kid must match its key.
    let k1_signed_with_k2 = craft_token(&header("k1"), &claims(user_id, &session.session_id), SECRET_2);
    let k2_signed_with_k1 = craft_token(&header("k2"), &claims(user_id, &session.session_id), SECRET_1);
    let unknown = craft_token(&header("k3"), &claims(user_id, &session.session_id), SECRET_1);
    for (token, what) in [
        (&k1_signed_with_k2, "kid k1 signed with k2's secret"),
        (&k2_signed_with_k1, "kid k2 signed with k1's secret"),
        (&unknown, "kid k3"),
    ] {
        assert_unauthenticated(&me(server.shard_port(0), token), what);
    }

    // Revoking the session revokes tokens of every key.
    assert_no_content(
        &logout(server.shard_port(0), &old_key),
        "logout with the k1 token",
    );
    assert_unauthenticated(
        &me(server.shard_port(1), &session.access),
        "k2 token after logout",
    );
    assert_unauthenticated(&me(server.shard_port(1), &old_key), "k1 token after logout");
}

#[test]
fn requests_per_user_are_rate_limited() {
    let server = start(
        1,
        &[
            ("SHARDPAY_AUTH_USER_REQUESTS_PER_SECOND", "1"),
            ("SHARDPAY_AUTH_USER_REQUEST_BURST", "3"),
        ],
    );
    signup_ok(server.port, "victor");
    signup_ok(server.port, "walter");
    let busy = login_ok(server.port, "victor");
    let calm = login_ok(server.port, "walter");

    assert_eq!(me(server.port, &busy.access).status, 200, "first request");
    // A burst of 3 refilled at 1 per second: within a few more requests, one must be refused.
    let limited = (0..6)
        .map(|_| me(server.port, &busy.access))
        .find(|response| response.status != 200)
        .expect("no 429 within 7 requests for a burst of 3 at 1/s");
    assert_rate_limited(&limited, None, 60, "over the per-user rate");
    // Per user: another user is served.
    assert_eq!(me(server.port, &calm.access).status, 200);
}

/// `shardpay_password_checks_total` summed over shards.
fn password_checks(port: u16) -> u64 {
    let text = common::get(port, "/metrics").text();
    text.lines()
        .filter(|line| line.starts_with("shardpay_password_checks_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn unknown_user_costs_what_a_wrong_password_costs() {
    // Behaviour, not timing: a login for an unknown username runs one argon2id verification (against
    // a dummy hash), exactly as a wrong password does, so the two cannot be told apart by the work.
    let server = start(1, &[("SHARDPAY_AUTH_LOGIN_FAILURES_PER_USERNAME_MAX", "100")]);
    signup_ok(server.port, "uma");
    let before = password_checks(server.port);
    assert_eq!(login(server.port, "uma", "not the password at all").status, 401);
    let after_wrong_password = password_checks(server.port);
    assert_eq!(
        login(server.port, "nobody_at_all", "not the password at all").status,
        401
    );
    let after_unknown_user = password_checks(server.port);
    assert_eq!(
        after_wrong_password - before,
        1,
        "a wrong password runs one verification"
    );
    assert_eq!(
        after_unknown_user - after_wrong_password,
        1,
        "an unknown user runs one verification too"
    );
}

/// Regression: a refresh within the same second as the login returned a byte-identical access
/// token (same claims, no token id). Every token now carries a random `jti`.
#[test]
fn every_issued_access_token_is_distinct() {
    let server = start(1, &[]);
    signup_ok(server.port, "tess");
    let first = login_ok(server.port, "tess");
    let second = refresh_ok(server.port, &first.refresh);
    let third = refresh_ok(server.port, &second.refresh);
    assert_ne!(first.access, second.access);
    assert_ne!(second.access, third.access);
    let response = login(server.port, "tess", PASSWORD);
    assert_eq!(response.header("cache-control"), Some("no-store"));
}

/// Password hashing is bounded per shard: beyond the running and queued hashes, signup and login
/// answer 503 `overloaded` with `Retry-After` instead of queueing without limit — and recover.
#[test]
fn password_hashing_beyond_the_queue_is_refused_with_503() {
    let server = start(
        1,
        &[
            ("SHARDPAY_AUTH_PASSWORD_HASHES_IN_FLIGHT_MAX", "1"),
            ("SHARDPAY_AUTH_PASSWORD_HASH_QUEUE_MAX", "0"),
            // Real cost, so hashes overlap.
            ("SHARDPAY_AUTH_PASSWORD_MEMORY_KIB", "19456"),
            ("SHARDPAY_AUTH_PASSWORD_ITERATIONS", "2"),
        ],
    );
    let port = server.port;
    let threads: Vec<_> = (0..12)
        .map(|n| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"username":"crowd{n}","password":"{PASSWORD}"}}"#);
                common::post(port, "/v1/users", &[], &body)
            })
        })
        .collect();
    let responses: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<&Response> = responses.iter().filter(|r| r.status == 503).collect();
    assert!(responses.iter().all(|r| r.status == 201 || r.status == 503));
    assert!(
        !refused.is_empty(),
        "twelve concurrent hashes with one slot and no queue"
    );
    for response in &refused {
        assert_eq!(response.json()["error"]["code"], "overloaded");
        assert_eq!(response.header("retry-after"), Some("1"));
    }
    // Once the crowd has passed, hashing works again.
    assert_eq!(
        common::post(
            port,
            "/v1/users",
            &[],
            &format!(r#"{{"username":"later","password":"{PASSWORD}"}}"#)
        )
        .status,
        201
    );
}
