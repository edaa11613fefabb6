//! Every limit of the peer in one place, units last. The values are shardpay's defaults, so both
//! servers refuse and accept the same requests.

/// Largest request body, in bytes (axum's `DefaultBodyLimit`).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// Password hashes and verifications running at once (shardpay's `password_hashes_in_flight_max`).
pub const PASSWORD_HASHES_IN_FLIGHT_MAX: usize = 2;
/// argon2id memory per hash, in KiB (OWASP).
pub const PASSWORD_MEMORY_KIB: u32 = 19_456;
/// argon2id passes (OWASP).
pub const PASSWORD_ITERATIONS: u32 = 2;
/// argon2id lanes (OWASP).
pub const PASSWORD_PARALLELISM: u32 = 1;
/// Shortest and longest password, in bytes.
pub const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 10..=1024;
/// Shortest and longest username, in characters after case folding.
pub const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=32;
/// Lifetime of an access token, in seconds.
pub const ACCESS_TOKEN_TTL_SECONDS: u64 = 900;
/// Lifetime of a refresh token, in seconds (30 days). No route takes refresh tokens here.
pub const REFRESH_TOKEN_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Longest access token looked at before any decoding, in bytes.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Shortest JWT secret: RFC 7518 §3.2 wants at least the HMAC-SHA256 output size.
pub const JWT_SECRET_BYTES_MIN: usize = 32;
/// Longest `Idempotency-Key`, in characters.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;
/// Largest amount of one deposit or payment, in minor units (10^15).
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000;
/// Longest payment description, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 200;
/// Default and largest page of `GET /v1/payments`.
pub const PAGE_DEFAULT: usize = 10;
/// Largest page of `GET /v1/payments`.
pub const PAGE_MAX: usize = 100;
/// How long open connections may take to finish after SIGTERM/SIGINT, in milliseconds.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
