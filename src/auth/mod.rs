//! Authentication: credentials (argon2id password hashes, [`password`]), access tokens (HS256
//! JWTs with key rotation, [`jwt`]), and each shard's users and sessions as a deterministic state
//! machine ([`state`]).
//!
//! All of it is pure: auth must never do I/O, read the clock or draw random bytes — time, salts,
//! ids and keys are passed in by the caller, so every result is deterministic and testable. It
//! never logs a password, a secret or a token, and stores refresh tokens only as hashes.

pub mod jwt;
pub mod password;
pub mod state;
