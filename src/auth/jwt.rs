//! Access tokens: HS256 JSON Web Tokens (RFC 7519) in the JWS compact form (RFC 7515 §7.1), signed
//! with one key of a [`KeySet`] and verified with any key of it, so keys can be rotated.
//!
//! This module owns the token format: the header, the claims, the signature and every check a token
//! must pass. It must never read the clock, draw random bytes, do I/O or panic on a token: the caller
//! passes the time in, and every bad token is a [`JwtError`]. It knows nothing of sessions or
//! revocation; a token that verifies here is only well-formed, signed, current and ours.
//!
//! Tokens are what any standard JWT library produces and accepts given the key: header
//! `{"alg":"HS256","typ":"JWT","kid":"<kid>"}`, claims `sub`, `sid`, `iat`, `exp`, `iss`, each
//! segment base64url without padding (RFC 7515 §2), signature HMAC-SHA256 over
//! `base64url(header) "." base64url(payload)` (RFC 7518 §3.2).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Longest token [`KeySet::verify`] looks at; longer is [`JwtError::TokenTooLong`] before any decoding.
pub const TOKEN_BYTES_MAX: usize = 4096;
/// Most keys a [`KeySet`] holds: the signing key and the older ones still verifying.
pub const KEYS_MAX: usize = 16;
/// Longest key id (`kid`); key ids are 1 to this many characters of `[A-Za-z0-9._-]`.
pub const KEY_ID_CHARS_MAX: usize = 64;
/// Shortest secret: RFC 7518 §3.2 requires a key at least as long as the HMAC-SHA256 output.
pub const SECRET_BYTES_MIN: usize = 32;
/// Longest secret: anything longer is a mistake (HMAC hashes keys beyond 64 bytes down anyway).
pub const SECRET_BYTES_MAX: usize = 512;
/// How far in the future a token's `iat` may be and still verify: clock skew between nodes.
pub const ISSUED_AT_FUTURE_SECONDS_MAX: u64 = 60;

/// The only signing algorithm issued and accepted (RFC 7518 §3.1).
const ALGORITHM: &str = "HS256";

/// HMAC-SHA256, the MAC behind HS256.
type HmacSha256 = Hmac<Sha256>;

/// Why a key, a key set or a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The token is longer than [`TOKEN_BYTES_MAX`].
    #[error("token is {token_bytes} bytes, more than the {TOKEN_BYTES_MAX} allowed")]
    TokenTooLong {
        /// Length of the refused token.
        token_bytes: usize,
    },
    /// The token is not three base64url segments holding a JSON header and JSON claims of the right types.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is missing or is not HS256 (this refuses `none`, HS512, RS256 and the like).
    #[error("token algorithm is missing or not HS256")]
    UnsupportedAlgorithm,
    /// The header has a `crit` member: it names extensions this module does not implement (RFC 7515 §4.1.11).
    #[error("token header has critical extensions")]
    UnsupportedCriticalHeader,
    /// The header has no `kid`, so there is no key to verify with.
    #[error("token header has no key id")]
    MissingKeyId,
    /// The header's `kid` names no key of the set (unknown, or removed by rotation).
    #[error("token key id is not a known key")]
    UnknownKey,
    /// The signature does not match the header and payload under the named key.
    #[error("token signature is wrong")]
    BadSignature,
    /// The token's `exp` is at or before now.
    #[error("token has expired")]
    Expired,
    /// The token's `iat` is more than [`ISSUED_AT_FUTURE_SECONDS_MAX`] after now.
    #[error("token is issued in the future")]
    NotYetValid,
    /// The token's `iss` is not the expected issuer.
    #[error("token issuer is wrong")]
    WrongIssuer,
    /// A key's secret is shorter than [`SECRET_BYTES_MIN`].
    #[error("key secret is {secret_bytes} bytes, fewer than the {SECRET_BYTES_MIN} required")]
    WeakKey {
        /// Length of the refused secret.
        secret_bytes: usize,
    },
    /// A key's secret is longer than [`SECRET_BYTES_MAX`].
    #[error("key secret is {secret_bytes} bytes, more than the {SECRET_BYTES_MAX} allowed")]
    SecretTooLong {
        /// Length of the refused secret.
        secret_bytes: usize,
    },
    /// A key id is empty, longer than [`KEY_ID_CHARS_MAX`] or has a character outside `[A-Za-z0-9._-]`.
    #[error("key id must be 1 to {KEY_ID_CHARS_MAX} characters of A-Z, a-z, 0-9, '.', '_', '-'")]
    InvalidKeyId,
    /// A key set was given no keys.
    #[error("a key set needs at least one key")]
    NoKeys,
    /// A key set was given more than [`KEYS_MAX`] keys.
    #[error("a key set holds at most {KEYS_MAX} keys, {keys} given")]
    TooManyKeys {
        /// Number of keys given.
        keys: usize,
    },
    /// Two keys of a set have the same id.
    #[error("key id {0:?} appears more than once in the key set")]
    DuplicateKeyId(String),
    /// The signing key id names no key of the set.
    #[error("signing key id {0:?} is not in the key set")]
    UnknownSigningKey(String),
}

/// One HMAC key and its id (`kid`), valid by construction.
#[derive(Clone)]
pub struct Key {
    kid: String,
    secret: Vec<u8>,
}

impl Key {
    /// Checks and makes a key: `kid` is 1 to [`KEY_ID_CHARS_MAX`] characters of `[A-Za-z0-9._-]`
    /// (so it needs no escaping in the header), `secret` is [`SECRET_BYTES_MIN`] to
    /// [`SECRET_BYTES_MAX`] bytes.
    pub fn new(kid: &str, secret: &[u8]) -> Result<Key, JwtError> {
        let kid_is_valid = !kid.is_empty()
            && kid.len() <= KEY_ID_CHARS_MAX
            && kid
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
        if !kid_is_valid {
            return Err(JwtError::InvalidKeyId);
        }
        if secret.len() < SECRET_BYTES_MIN {
            return Err(JwtError::WeakKey {
                secret_bytes: secret.len(),
            });
        }
        if secret.len() > SECRET_BYTES_MAX {
            return Err(JwtError::SecretTooLong {
                secret_bytes: secret.len(),
            });
        }
        Ok(Key {
            kid: kid.to_string(),
            secret: secret.to_vec(),
        })
    }

    /// The key id, as it appears in the `kid` header of the tokens it signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// Never prints the secret.
impl fmt::Debug for Key {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Key")
            .field("kid", &self.kid)
            .field("secret_bytes", &self.secret.len())
            .finish()
    }
}

/// A key of a set, keyed once so each token costs one clone of the HMAC state, not a key schedule.
#[derive(Clone)]
struct KeyEntry {
    kid: String,
    mac: HmacSha256,
}

/// The keys tokens are verified with (1 to [`KEYS_MAX`]) and the one new tokens are signed with.
///
/// Rotation: add a new key and make it the signing key; tokens signed by the old key keep verifying
/// until the old key is removed from the set (at the earliest once every token it signed has expired).
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<KeyEntry>,
    signing_index: usize,
}

impl KeySet {
    /// Makes a key set from `keys`, signing with the key whose id is `signing_kid`. Refuses an empty
    /// set, more than [`KEYS_MAX`] keys, duplicate ids and a signing id that is not in the set.
    pub fn new(keys: Vec<Key>, signing_kid: &str) -> Result<KeySet, JwtError> {
        if keys.is_empty() {
            return Err(JwtError::NoKeys);
        }
        if keys.len() > KEYS_MAX {
            return Err(JwtError::TooManyKeys { keys: keys.len() });
        }
        for (index, key) in keys.iter().enumerate() {
            if keys[..index].iter().any(|earlier| earlier.kid == key.kid) {
                return Err(JwtError::DuplicateKeyId(key.kid.clone()));
            }
        }
        let signing_index = keys
            .iter()
            .position(|key| key.kid == signing_kid)
            .ok_or_else(|| JwtError::UnknownSigningKey(signing_kid.to_string()))?;
        let keys = keys
            .into_iter()
            .map(|key| KeyEntry {
                mac: hmac_for(&key.secret),
                kid: key.kid,
            })
            .collect();
        Ok(KeySet { keys, signing_index })
    }

    /// The id of the key new tokens are signed with.
    pub fn signing_kid(&self) -> &str {
        &self.keys[self.signing_index].kid
    }

    /// Signs `claims` with the signing key: `base64url(header).base64url(claims).base64url(HMAC)`.
    ///
    /// The claims are the caller's own (ids it issued), so nothing here can fail; a token whose
    /// claims make it longer than [`TOKEN_BYTES_MAX`] would not verify, which short ids never reach.
    pub fn sign(&self, claims: &Claims) -> String {
        let key = &self.keys[self.signing_index];
        // The kid needs no JSON escaping: `Key::new` allows only `[A-Za-z0-9._-]`.
        let header = format!(r#"{{"alg":"{ALGORITHM}","typ":"JWT","kid":"{}"}}"#, key.kid);
        let payload = serde_json::to_vec(claims).expect("claims of strings and integers always serialize");
        let mut token =
            String::with_capacity(base64_length(header.len()) + base64_length(payload.len()) + 45);
        URL_SAFE_NO_PAD.encode_string(header.as_bytes(), &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let mut mac = key.mac.clone();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Verifies `token` at `now_seconds` (Unix time) for `issuer` and returns its claims.
    ///
    /// In order: length at most [`TOKEN_BYTES_MAX`]; exactly three segments of canonical base64url
    /// without padding; a JSON object header with `alg` HS256, no `crit`, and a `kid` of this set;
    /// the HMAC over the first two segments as sent, compared in constant time; only then the
    /// claims, a JSON object with string `sub`, `sid`, `iss` and unsigned integer `iat`, `exp`
    /// (other claims are ignored); `exp` after now; `iat` at most
    /// [`ISSUED_AT_FUTURE_SECONDS_MAX`] after now; `iss` equal to `issuer`.
    pub fn verify(&self, token: &str, now_seconds: u64, issuer: &str) -> Result<Claims, JwtError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(JwtError::TokenTooLong {
                token_bytes: token.len(),
            });
        }
        let mut segments = token.split('.');
        let (Some(header_segment), Some(payload_segment), Some(signature_segment), None) =
            (segments.next(), segments.next(), segments.next(), segments.next())
        else {
            return Err(JwtError::Malformed(
                "a token has exactly three dot-separated segments",
            ));
        };

        let header: Header = parse_json_object(
            &decode_segment(header_segment)?,
            "header is not a valid JSON header",
        )?;
        if header.alg.as_deref() != Some(ALGORITHM) {
            return Err(JwtError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            return Err(JwtError::UnsupportedCriticalHeader);
        }
        let kid = header.kid.ok_or(JwtError::MissingKeyId)?;
        let key = self
            .keys
            .iter()
            .find(|key| key.kid == kid)
            .ok_or(JwtError::UnknownKey)?;

        // The MAC covers the segments exactly as sent (RFC 7515 §5.2 step 8), not a re-encoding.
        let signing_input = &token[..header_segment.len() + 1 + payload_segment.len()];
        let signature = decode_segment(signature_segment)?;
        let mut mac = key.mac.clone();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature).map_err(|_| JwtError::BadSignature)?;

        let claims: Claims = parse_json_object(
            &decode_segment(payload_segment)?,
            "claims are missing or of the wrong type",
        )?;
        if claims.exp <= now_seconds {
            return Err(JwtError::Expired);
        }
        if claims.iat > now_seconds.saturating_add(ISSUED_AT_FUTURE_SECONDS_MAX) {
            return Err(JwtError::NotYetValid);
        }
        if claims.iss != issuer {
            return Err(JwtError::WrongIssuer);
        }
        Ok(claims)
    }
}

/// Lists the key ids and which one signs; never prints a secret.
impl fmt::Debug for KeySet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("KeySet")
            .field(
                "kids",
                &self.keys.iter().map(|key| key.kid.as_str()).collect::<Vec<_>>(),
            )
            .field("signing_kid", &self.signing_kid())
            .finish()
    }
}

/// The claims of an access token (RFC 7519 §4.1 names, plus `sid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the user id.
    pub sub: String,
    /// The session id, so revoking the session revokes the token.
    pub sid: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds; the token is refused from this second on.
    pub exp: u64,
    /// Issuer: which deployment signed the token.
    pub iss: String,
    /// Token id (RFC 7519 §4.1.7): random, so no two tokens are alike even within one second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// The header members this module reads; the others (`typ`, ...) are ignored, as RFC 7515 allows.
#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde::de::IgnoredAny>,
}

/// Makes the HMAC state for a secret.
fn hmac_for(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Decodes one segment: canonical base64url, no padding, no stray trailing bits, so every token has
/// exactly one spelling and no altered token carries a valid signature.
fn decode_segment(segment: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed("a segment is not base64url without padding"))
}

/// Parses a JSON object into `T`. A JSON array is refused first: serde's derived structs would
/// otherwise accept their fields as a sequence, which is not a JWT.
fn parse_json_object<T: serde::de::DeserializeOwned>(
    json: &[u8],
    reason: &'static str,
) -> Result<T, JwtError> {
    let first = json
        .iter()
        .find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(JwtError::Malformed("header and claims must be JSON objects"));
    }
    serde_json::from_slice(json).map_err(|_| JwtError::Malformed(reason))
}

/// Length of the unpadded base64 encoding of `bytes` bytes.
fn base64_length(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// jwt.io's current example secret (38 bytes).
    const SECRET: &[u8] = b"a-string-secret-at-least-256-bits-long";
    const OTHER_SECRET: &[u8] = b"another-secret-that-is-also-32-bytes-or-more";
    const ISSUER: &str = "shardpay";
    const NOW: u64 = 1_700_000_000;

    fn claims() -> Claims {
        Claims {
            sub: "user-42".to_string(),
            sid: "session-7".to_string(),
            iat: NOW,
            exp: NOW + 900,
            iss: ISSUER.to_string(),
            jti: None,
        }
    }

    fn key_set(kid: &str) -> KeySet {
        KeySet::new(vec![Key::new(kid, SECRET).expect("valid key")], kid).expect("valid key set")
    }

    fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Builds a token the way an independent implementation would: the `hmac` and `sha2` crates
    /// directly over whatever header and payload text it chose.
    fn independent_token(header: &str, payload: &str, secret: &[u8]) -> String {
        let signing_input = format!("{}.{}", encode(header.as_bytes()), encode(payload.as_bytes()));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", encode(&mac.finalize().into_bytes()))
    }

    /// Replaces one segment of a token.
    fn with_segment(token: &str, index: usize, replacement: &str) -> String {
        let mut segments: Vec<&str> = token.split('.').collect();
        segments[index] = replacement;
        segments.join(".")
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let keys = key_set("k1");
        let token = keys.sign(&claims());
        assert_eq!(keys.verify(&token, NOW, ISSUER), Ok(claims()));
        assert_eq!(token.split('.').count(), 3);
        assert!(!token.contains('='), "no padding");
    }

    #[test]
    fn header_is_exactly_the_documented_one() {
        let token = key_set("key-1").sign(&claims());
        let header = URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("segment"))
            .expect("base64");
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT","kid":"key-1"}"#);
    }

    #[test]
    fn rotation_keeps_old_tokens_verifying_until_the_old_key_is_removed() {
        let old_key = Key::new("2024-01", SECRET).expect("valid");
        let new_key = Key::new("2024-02", OTHER_SECRET).expect("valid");
        let before = KeySet::new(vec![old_key.clone()], "2024-01").expect("valid");
        let old_token = before.sign(&claims());

        let during = KeySet::new(vec![old_key, new_key.clone()], "2024-02").expect("valid");
        assert_eq!(during.signing_kid(), "2024-02");
        assert_eq!(during.verify(&old_token, NOW, ISSUER), Ok(claims()));
        let new_token = during.sign(&claims());
        assert_ne!(new_token, old_token);
        assert_eq!(during.verify(&new_token, NOW, ISSUER), Ok(claims()));

        let after = KeySet::new(vec![new_key], "2024-02").expect("valid");
        assert_eq!(after.verify(&old_token, NOW, ISSUER), Err(JwtError::UnknownKey));
        assert_eq!(after.verify(&new_token, NOW, ISSUER), Ok(claims()));
    }

    #[test]
    fn a_known_kid_with_the_wrong_secret_is_a_bad_signature() {
        let signer = KeySet::new(vec![Key::new("k1", OTHER_SECRET).expect("valid")], "k1").expect("valid");
        let token = signer.sign(&claims());
        assert_eq!(
            key_set("k1").verify(&token, NOW, ISSUER),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_header_or_signature_fails() {
        let keys = key_set("k1");
        let token = keys.sign(&claims());

        let mut admin = claims();
        admin.sub = "admin".to_string();
        let forged_payload = encode(&serde_json::to_vec(&admin).expect("serializes"));
        assert_eq!(
            keys.verify(&with_segment(&token, 1, &forged_payload), NOW, ISSUER),
            Err(JwtError::BadSignature)
        );

        let reordered_header = encode(br#"{"kid":"k1","alg":"HS256","typ":"JWT"}"#);
        assert_eq!(
            keys.verify(&with_segment(&token, 0, &reordered_header), NOW, ISSUER),
            Err(JwtError::BadSignature)
        );

        let mut signature = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(2).expect("segment"))
            .expect("base64");
        signature[0] ^= 1;
        assert_eq!(
            keys.verify(&with_segment(&token, 2, &encode(&signature)), NOW, ISSUER),
            Err(JwtError::BadSignature)
        );
        let short_signature = encode(&signature[..31]);
        assert_eq!(
            keys.verify(&with_segment(&token, 2, &short_signature), NOW, ISSUER),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            keys.verify(&with_segment(&token, 2, ""), NOW, ISSUER),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn algorithms_other_than_hs256_are_refused_even_when_correctly_signed() {
        let keys = key_set("k1");
        let payload = serde_json::to_string(&claims()).expect("serializes");
        for header in [
            r#"{"alg":"none","typ":"JWT","kid":"k1"}"#,
            r#"{"alg":"HS512","typ":"JWT","kid":"k1"}"#,
            r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#,
            r#"{"alg":"hs256","typ":"JWT","kid":"k1"}"#,
            r#"{"alg":"","typ":"JWT","kid":"k1"}"#,
            r#"{"typ":"JWT","kid":"k1"}"#,
        ] {
            let token = independent_token(header, &payload, SECRET);
            assert_eq!(
                keys.verify(&token, NOW, ISSUER),
                Err(JwtError::UnsupportedAlgorithm),
                "{header}"
            );
        }
        // alg "none" with an empty signature, the classic forgery.
        let unsigned = format!(
            "{}.{}.",
            encode(br#"{"alg":"none","kid":"k1"}"#),
            encode(payload.as_bytes())
        );
        assert_eq!(
            keys.verify(&unsigned, NOW, ISSUER),
            Err(JwtError::UnsupportedAlgorithm)
        );
        // alg of the wrong JSON type.
        let numeric = independent_token(r#"{"alg":256,"kid":"k1"}"#, &payload, SECRET);
        assert!(matches!(
            keys.verify(&numeric, NOW, ISSUER),
            Err(JwtError::Malformed(_))
        ));
        // A duplicate member could be read differently by another parser: refused outright.
        let duplicate = independent_token(r#"{"alg":"none","alg":"HS256","kid":"k1"}"#, &payload, SECRET);
        assert!(matches!(
            keys.verify(&duplicate, NOW, ISSUER),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn kid_must_be_present_and_known_and_crit_is_refused() {
        let keys = key_set("k1");
        let payload = serde_json::to_string(&claims()).expect("serializes");
        let no_kid = independent_token(r#"{"alg":"HS256","typ":"JWT"}"#, &payload, SECRET);
        assert_eq!(keys.verify(&no_kid, NOW, ISSUER), Err(JwtError::MissingKeyId));
        let other_kid = independent_token(r#"{"alg":"HS256","kid":"k2"}"#, &payload, SECRET);
        assert_eq!(keys.verify(&other_kid, NOW, ISSUER), Err(JwtError::UnknownKey));
        let crit = independent_token(
            r#"{"alg":"HS256","kid":"k1","crit":["exp"],"exp":1}"#,
            &payload,
            SECRET,
        );
        assert_eq!(
            keys.verify(&crit, NOW, ISSUER),
            Err(JwtError::UnsupportedCriticalHeader)
        );
    }

    #[test]
    fn expiry_is_exclusive_and_iat_may_lead_by_the_allowed_skew_only() {
        let keys = key_set("k1");
        let token = keys.sign(&claims());
        let expiry = claims().exp;
        assert!(keys.verify(&token, expiry - 1, ISSUER).is_ok());
        assert_eq!(keys.verify(&token, expiry, ISSUER), Err(JwtError::Expired));
        assert_eq!(keys.verify(&token, u64::MAX, ISSUER), Err(JwtError::Expired));

        let issued = claims().iat;
        assert!(keys
            .verify(&token, issued - ISSUED_AT_FUTURE_SECONDS_MAX, ISSUER)
            .is_ok());
        assert_eq!(
            keys.verify(&token, issued - ISSUED_AT_FUTURE_SECONDS_MAX - 1, ISSUER),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(keys.verify(&token, 0, ISSUER), Err(JwtError::NotYetValid));
    }

    #[test]
    fn wrong_issuer_is_refused() {
        let keys = key_set("k1");
        let token = keys.sign(&claims());
        assert_eq!(
            keys.verify(&token, NOW, "someone-else"),
            Err(JwtError::WrongIssuer)
        );
        assert_eq!(keys.verify(&token, NOW, ""), Err(JwtError::WrongIssuer));
    }

    #[test]
    fn claims_must_be_present_with_the_right_types_and_extra_claims_are_ignored() {
        let keys = key_set("k1");
        let header = r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#;
        let extra = r#"{"sub":"user-42","sid":"session-7","iat":1700000000,"exp":1700000900,"iss":"shardpay","name":"Jo","admin":true}"#;
        assert_eq!(
            keys.verify(&independent_token(header, extra, SECRET), NOW, ISSUER),
            Ok(claims())
        );
        for payload in [
            r#"{"sid":"session-7","iat":1700000000,"exp":1700000900,"iss":"shardpay"}"#,
            r#"{"sub":"user-42","iat":1700000000,"exp":1700000900,"iss":"shardpay"}"#,
            r#"{"sub":"user-42","sid":"session-7","exp":1700000900,"iss":"shardpay"}"#,
            r#"{"sub":"user-42","sid":"session-7","iat":1700000000,"iss":"shardpay"}"#,
            r#"{"sub":"user-42","sid":"session-7","iat":1700000000,"exp":1700000900}"#,
            r#"{"sub":42,"sid":"session-7","iat":1700000000,"exp":1700000900,"iss":"shardpay"}"#,
            r#"{"sub":"user-42","sid":"session-7","iat":"1700000000","exp":1700000900,"iss":"shardpay"}"#,
            r#"{"sub":"user-42","sid":"session-7","iat":1700000000,"exp":1700000900.5,"iss":"shardpay"}"#,
            r#"{"sub":"user-42","sid":"session-7","iat":-1,"exp":1700000900,"iss":"shardpay"}"#,
            r#"{"sub":"user-42","sid":"session-7","iat":1700000000,"exp":null,"iss":"shardpay"}"#,
            r#"{"sub":"a","sub":"b","sid":"session-7","iat":1700000000,"exp":1700000900,"iss":"shardpay"}"#,
            r#"["user-42","session-7",1700000000,1700000900,"shardpay"]"#,
            r#"{"sub":"user-42","sid":"session-7","iat":1700000000,"exp":1700000900,"iss":"shardpay"} trailing"#,
            "",
            "null",
        ] {
            let token = independent_token(header, payload, SECRET);
            assert!(
                matches!(keys.verify(&token, NOW, ISSUER), Err(JwtError::Malformed(_))),
                "{payload}"
            );
        }
        let array_header = independent_token(r#"["HS256","k1"]"#, extra, SECRET);
        assert!(matches!(
            keys.verify(&array_header, NOW, ISSUER),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_malformed_and_never_panics() {
        let keys = key_set("k1");
        let valid = keys.sign(&claims());
        let header_segment = valid.split('.').next().expect("segment");
        let padded_header = format!("{header_segment}=");
        for token in [
            "",
            ".",
            "..",
            "...",
            "abc",
            "abc.def",
            "a.b.c.d",
            "\u{0}.\u{0}.\u{0}",
            "é.é.é",
            "!!!.!!!.!!!",
            "eyJ.eyJ.eyJ",
            &format!("{valid}."),
            &format!(".{valid}"),
            &format!("{valid}.{valid}"),
            &with_segment(&valid, 0, &padded_header),
            &with_segment(&valid, 0, "e30"), // "{}": no alg
        ] {
            let result = keys.verify(token, NOW, ISSUER);
            assert!(result.is_err(), "{token:?} verified");
        }
        assert!(matches!(
            keys.verify("a.b.c.d", NOW, ISSUER),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            keys.verify("!!!.e30.e30", NOW, ISSUER),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn tokens_longer_than_the_limit_are_refused_before_decoding() {
        let keys = key_set("k1");
        let huge = "a".repeat(TOKEN_BYTES_MAX + 1);
        assert_eq!(
            keys.verify(&huge, NOW, ISSUER),
            Err(JwtError::TokenTooLong {
                token_bytes: TOKEN_BYTES_MAX + 1
            })
        );
        let mut long_claims = claims();
        long_claims.sub = "x".repeat(TOKEN_BYTES_MAX);
        let long_token = keys.sign(&long_claims);
        assert!(matches!(
            keys.verify(&long_token, NOW, ISSUER),
            Err(JwtError::TokenTooLong { .. })
        ));
        let ten_megabytes = format!("{}.{}.{}", "a".repeat(5 << 20), "b".repeat(5 << 20), "c");
        assert!(matches!(
            keys.verify(&ten_megabytes, NOW, ISSUER),
            Err(JwtError::TokenTooLong { .. })
        ));
    }

    #[test]
    fn keys_are_validated() {
        assert_eq!(
            Key::new("k1", &[7; 31]).map(|_| ()),
            Err(JwtError::WeakKey { secret_bytes: 31 })
        );
        assert_eq!(
            Key::new("k1", b"").map(|_| ()),
            Err(JwtError::WeakKey { secret_bytes: 0 })
        );
        assert!(Key::new("k1", &[7; SECRET_BYTES_MIN]).is_ok());
        assert!(Key::new("k1", &[7; SECRET_BYTES_MAX]).is_ok());
        assert_eq!(
            Key::new("k1", &[7; SECRET_BYTES_MAX + 1]).map(|_| ()),
            Err(JwtError::SecretTooLong {
                secret_bytes: SECRET_BYTES_MAX + 1
            })
        );
        assert!(Key::new(&"k".repeat(KEY_ID_CHARS_MAX), SECRET).is_ok());
        assert!(Key::new("Aa0._-", SECRET).is_ok());
        for kid in [
            "",
            "has space",
            "quote\"",
            "slash/",
            "é",
            "back\\slash",
            &"k".repeat(KEY_ID_CHARS_MAX + 1),
        ] {
            assert_eq!(
                Key::new(kid, SECRET).map(|_| ()),
                Err(JwtError::InvalidKeyId),
                "{kid:?}"
            );
        }
        let debug = format!("{:?}", Key::new("k1", SECRET).expect("valid"));
        assert!(
            !debug.contains("a-string-secret"),
            "Debug must not print the secret: {debug}"
        );
    }

    #[test]
    fn key_sets_are_validated() {
        let key = |kid: &str| Key::new(kid, SECRET).expect("valid");
        assert_eq!(KeySet::new(vec![], "k1").map(|_| ()), Err(JwtError::NoKeys));
        assert_eq!(
            KeySet::new(vec![key("k1"), key("k2"), key("k1")], "k1").map(|_| ()),
            Err(JwtError::DuplicateKeyId("k1".to_string()))
        );
        assert_eq!(
            KeySet::new(vec![key("k1")], "k2").map(|_| ()),
            Err(JwtError::UnknownSigningKey("k2".to_string()))
        );
        let sixteen: Vec<Key> = (0..KEYS_MAX).map(|index| key(&format!("k{index}"))).collect();
        assert!(KeySet::new(sixteen.clone(), "k15").is_ok());
        let mut seventeen = sixteen;
        seventeen.push(key("k16"));
        assert_eq!(
            KeySet::new(seventeen, "k1").map(|_| ()),
            Err(JwtError::TooManyKeys { keys: 17 })
        );
        let debug = format!("{:?}", key_set("k1"));
        assert!(
            !debug.contains("a-string-secret"),
            "Debug must not print the secret: {debug}"
        );
    }

    #[test]
    fn interoperates_with_an_independent_hs256_implementation() {
        let keys = key_set("k1");
        // A different member order and spacing than ours, and an extra claim: still a valid JWT.
        let header = r#"{ "typ": "JWT", "kid": "k1", "alg": "HS256" }"#;
        let payload = r#"{"iss":"shardpay","exp":1700000900,"iat":1700000000,"sid":"session-7","sub":"user-42","scope":"x"}"#;
        let token = independent_token(header, payload, SECRET);
        assert_eq!(keys.verify(&token, NOW, ISSUER), Ok(claims()));
        // `jti` is read when present.
        let with_id = payload.replace(r#""scope":"x""#, r#""jti":"t-1""#);
        let token = independent_token(header, &with_id, SECRET);
        let expected = Claims {
            jti: Some("t-1".to_string()),
            ..claims()
        };
        assert_eq!(keys.verify(&token, NOW, ISSUER), Ok(expected));

        // And our signature is plain HMAC-SHA256 over the first two segments, as any library checks it.
        let ours = keys.sign(&claims());
        let (signing_input, signature) = ours.rsplit_once('.').expect("three segments");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).expect("any key length");
        mac.update(signing_input.as_bytes());
        assert_eq!(signature, encode(&mac.finalize().into_bytes()));
    }

    /// Fixed vectors computed once, outside Rust, with Python 3's standard library:
    ///
    /// ```text
    /// import hmac, hashlib, base64
    /// b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    /// secret = b"a-string-secret-at-least-256-bits-long"
    /// signing_input = b64(header) + "." + b64(payload)
    /// token = signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    /// ```
    ///
    /// The first is the jwt.io example token (its header, payload and secret), whose signature
    /// `KMUFsIDT...QV30` jwt.io itself shows, so the HMAC path is checked against a published value.
    #[test]
    fn fixed_vectors_match_python_and_jwt_io() {
        const JWT_IO_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiYWRtaW4iOnRydWUsImlhdCI6MTUxNjIzOTAyMn0.KMUFsIDTnFmyG3nMiGM6H9FNFUROf3wh7SmqJp-QV30";
        assert_eq!(
            independent_token(
                r#"{"alg":"HS256","typ":"JWT"}"#,
                r#"{"sub":"1234567890","name":"John Doe","admin":true,"iat":1516239022}"#,
                SECRET
            ),
            JWT_IO_TOKEN
        );
        // The jwt.io token has no kid (and none of our claims): refused, not misread.
        assert_eq!(
            key_set("key-2018").verify(JWT_IO_TOKEN, 1_516_239_022, ISSUER),
            Err(JwtError::MissingKeyId)
        );

        // header {"alg":"HS256","typ":"JWT","kid":"key-2018"}
        // payload {"sub":"1234567890","sid":"session-1","iat":1516239022,"exp":1516242622,"iss":"shardpay"}
        const SHARDPAY_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImtleS0yMDE4In0.eyJzdWIiOiIxMjM0NTY3ODkwIiwic2lkIjoic2Vzc2lvbi0xIiwiaWF0IjoxNTE2MjM5MDIyLCJleHAiOjE1MTYyNDI2MjIsImlzcyI6InNoYXJkcGF5In0.-9hphsAwRiaN_YkhLBf0cgSnWDw2qwvo0Uzz2fxNga4";
        let expected = Claims {
            sub: "1234567890".to_string(),
            sid: "session-1".to_string(),
            iat: 1_516_239_022,
            exp: 1_516_242_622,
            iss: ISSUER.to_string(),
            jti: None,
        };
        let keys = key_set("key-2018");
        assert_eq!(keys.sign(&expected), SHARDPAY_TOKEN);
        assert_eq!(keys.verify(SHARDPAY_TOKEN, 1_516_239_022, ISSUER), Ok(expected));
    }

    /// One edit to a token's text.
    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(usize, char),
        Insert(usize, char),
        Remove(usize),
        Truncate(usize),
        Swap(usize, usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let character = prop_oneof![
            prop::sample::select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
                    .chars()
                    .collect::<Vec<_>>()
            ),
            any::<char>(),
        ];
        prop_oneof![
            (any::<usize>(), character.clone())
                .prop_map(|(at, replacement)| Mutation::Replace(at, replacement)),
            (any::<usize>(), character).prop_map(|(at, inserted)| Mutation::Insert(at, inserted)),
            any::<usize>().prop_map(Mutation::Remove),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<usize>()).prop_map(|(first, second)| Mutation::Swap(first, second)),
        ]
    }

    fn apply(token: &str, mutation: &Mutation) -> String {
        let mut characters: Vec<char> = token.chars().collect();
        let length = characters.len();
        match *mutation {
            Mutation::Replace(at, replacement) => characters[at % length] = replacement,
            Mutation::Insert(at, inserted) => characters.insert(at % (length + 1), inserted),
            Mutation::Remove(at) => {
                characters.remove(at % length);
            }
            Mutation::Truncate(at) => characters.truncate(at % length),
            Mutation::Swap(first, second) => characters.swap(first % length, second % length),
        }
        characters.into_iter().collect()
    }

    proptest! {
        #[test]
        fn random_strings_never_verify(input in any::<Vec<u8>>(), text in ".*") {
            let keys = key_set("k1");
            prop_assert!(keys.verify(&String::from_utf8_lossy(&input), NOW, ISSUER).is_err());
            prop_assert!(keys.verify(&text, NOW, ISSUER).is_err());
        }

        #[test]
        fn random_segments_never_verify(
            header in "[A-Za-z0-9_-]{0,80}",
            payload in "[A-Za-z0-9_-]{0,200}",
            signature in "[A-Za-z0-9_-]{0,60}",
        ) {
            let keys = key_set("k1");
            let token = [header, payload, signature].join(".");
            prop_assert!(keys.verify(&token, NOW, ISSUER).is_err());
        }

        #[test]
        fn mutated_tokens_never_verify(mutations in prop::collection::vec(mutation(), 1..4)) {
            let keys = key_set("k1");
            let token = keys.sign(&claims());
            let mut mutated = token.clone();
            for mutation in &mutations {
                if mutated.is_empty() {
                    break;
                }
                mutated = apply(&mutated, mutation);
            }
            let result = keys.verify(&mutated, NOW, ISSUER);
            if mutated == token {
                prop_assert_eq!(result, Ok(claims()));
            } else {
                prop_assert!(result.is_err(), "{} verified", mutated);
            }
        }
    }
}
