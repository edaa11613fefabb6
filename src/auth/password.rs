//! Password hashing: argon2id (RFC 9106) stored as PHC strings
//! (`$argon2id$v=19$m=<KiB>,t=<iterations>,p=<lanes>$<salt>$<hash>`).
//!
//! This module owns how a password becomes a stored hash and how a password is checked against one.
//! It must never draw random bytes, read the clock or do I/O: the caller passes the salt in. It never
//! logs or returns a password, and never panics on a password or a stored string: every bad input is
//! a [`PasswordError`]. Verification uses the parameters stored in the hash, so raising
//! [`PasswordParams`] later keeps old hashes verifiable; [`needs_rehash`] says when to upgrade one.

use argon2::password_hash::{self, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Longest password accepted; longer is [`PasswordError::PasswordTooLong`] before any hashing.
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Longest stored PHC string accepted; longer is [`PasswordError::PhcTooLong`] before parsing.
pub const PHC_BYTES_MAX: usize = 512;
/// Length of the salt the caller draws for each new hash (RFC 9106 §3.1 recommends 16 bytes).
pub const SALT_BYTES: usize = 16;
/// Length of the hash output written in new PHC strings.
pub const HASH_BYTES: usize = 32;
/// Least memory a hash may use (argon2's own minimum: 8 blocks of 1 KiB).
pub const MEMORY_KIB_MIN: u32 = 8;
/// Most memory a hash may use, 1 GiB, so a stored string can never make one check allocate more.
pub const MEMORY_KIB_MAX: u32 = 1024 * 1024;
/// Fewest passes over memory.
pub const ITERATIONS_MIN: u32 = 1;
/// Most passes over memory, so a stored string can never make one check take unbounded time.
pub const ITERATIONS_MAX: u32 = 10;
/// Fewest lanes.
pub const PARALLELISM_MIN: u32 = 1;
/// Most lanes.
pub const PARALLELISM_MAX: u32 = 16;

/// The only algorithm identifier issued and accepted.
const ALGORITHM_ID: &str = "argon2id";
/// The only argon2 version issued and accepted (0x13, written `v=19`).
const VERSION: u32 = 0x13;
/// Salt of [`dummy_hash`]: fixed, so the dummy hash is the same on every shard and every start.
const DUMMY_SALT: &[u8; SALT_BYTES] = b"shardpay-dummy!!";
/// Least salt argon2 accepts in a stored string (RFC 9106 §3.1).
const STORED_SALT_BYTES_MIN: usize = 8;

/// Why a password could not be hashed or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The password is longer than [`PASSWORD_BYTES_MAX`].
    #[error("password is {password_bytes} bytes, more than the {PASSWORD_BYTES_MAX} allowed")]
    PasswordTooLong {
        /// Length of the refused password.
        password_bytes: usize,
    },
    /// The stored string is longer than [`PHC_BYTES_MAX`].
    #[error("stored password hash is {phc_bytes} bytes, more than the {PHC_BYTES_MAX} allowed")]
    PhcTooLong {
        /// Length of the refused string.
        phc_bytes: usize,
    },
    /// The stored string is not a well-formed PHC string with `m`, `t`, `p`, a salt and a hash.
    #[error("stored password hash is malformed: {0}")]
    MalformedPhc(&'static str),
    /// The stored string is well-formed but not argon2id version 19.
    #[error("stored password hash is not argon2id v=19: {0}")]
    UnsupportedHash(&'static str),
    /// Memory is outside [`MEMORY_KIB_MIN`]..=[`MEMORY_KIB_MAX`].
    #[error("argon2 memory {memory_kib} KiB is outside {MEMORY_KIB_MIN}..={MEMORY_KIB_MAX} KiB")]
    MemoryOutOfRange {
        /// The refused memory, KiB.
        memory_kib: u32,
    },
    /// Iterations are outside [`ITERATIONS_MIN`]..=[`ITERATIONS_MAX`].
    #[error("argon2 iterations {iterations} are outside {ITERATIONS_MIN}..={ITERATIONS_MAX}")]
    IterationsOutOfRange {
        /// The refused iteration count.
        iterations: u32,
    },
    /// Parallelism is outside [`PARALLELISM_MIN`]..=[`PARALLELISM_MAX`].
    #[error("argon2 parallelism {parallelism} is outside {PARALLELISM_MIN}..={PARALLELISM_MAX}")]
    ParallelismOutOfRange {
        /// The refused lane count.
        parallelism: u32,
    },
    /// Argon2 needs at least 8 KiB of memory per lane.
    #[error("argon2 memory {memory_kib} KiB is less than 8 KiB for each of {parallelism} lanes")]
    MemoryBelowParallelism {
        /// The refused memory, KiB.
        memory_kib: u32,
        /// The lane count it was too small for.
        parallelism: u32,
    },
    /// Argon2 itself refused; the checks above make this unreachable, but it is an error, not a panic.
    #[error("argon2 failed: {0}")]
    Hashing(password_hash::Error),
}

/// Argon2id cost parameters for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory per hash, KiB.
    pub memory_kib: u32,
    /// Passes over that memory.
    pub iterations: u32,
    /// Lanes (argon2's `p`); the hash is computed on one thread whatever this is.
    pub parallelism: u32,
}

/// OWASP's Password Storage Cheat Sheet minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
impl Default for PasswordParams {
    fn default() -> Self {
        PasswordParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordParams {
    /// Checks every parameter against its named bounds, and that memory is at least 8 KiB per lane.
    pub fn validate(&self) -> Result<(), PasswordError> {
        if !(MEMORY_KIB_MIN..=MEMORY_KIB_MAX).contains(&self.memory_kib) {
            return Err(PasswordError::MemoryOutOfRange {
                memory_kib: self.memory_kib,
            });
        }
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&self.iterations) {
            return Err(PasswordError::IterationsOutOfRange {
                iterations: self.iterations,
            });
        }
        if !(PARALLELISM_MIN..=PARALLELISM_MAX).contains(&self.parallelism) {
            return Err(PasswordError::ParallelismOutOfRange {
                parallelism: self.parallelism,
            });
        }
        if self.memory_kib < 8 * self.parallelism {
            return Err(PasswordError::MemoryBelowParallelism {
                memory_kib: self.memory_kib,
                parallelism: self.parallelism,
            });
        }
        Ok(())
    }
}

/// Hashes `password` with argon2id under `params` and the caller's random `salt`, returning a PHC
/// string of at most [`PHC_BYTES_MAX`] bytes. Takes as long as `params` make it (tens of
/// milliseconds with the defaults): run it where blocking a shard that long is acceptable.
pub fn hash_password(
    password: &[u8],
    salt: &[u8; SALT_BYTES],
    params: &PasswordParams,
) -> Result<String, PasswordError> {
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(PasswordError::PasswordTooLong {
            password_bytes: password.len(),
        });
    }
    params.validate()?;
    hash_unchecked(password, salt, params)
}

/// Checks `password` against a stored PHC string with the parameters stored in it: `Ok(true)` on a
/// match, `Ok(false)` on a wrong password (compared in constant time), and an error for an
/// oversized password or a stored string that is malformed, not argon2id v=19, or whose parameters
/// are outside the bounds of [`PasswordParams::validate`] (so no stored string can make one check
/// use more than 1 GiB or 10 passes).
pub fn verify_password(password: &[u8], phc: &str) -> Result<bool, PasswordError> {
    if password.len() > PASSWORD_BYTES_MAX {
        return Err(PasswordError::PasswordTooLong {
            password_bytes: password.len(),
        });
    }
    let stored = parse_phc(phc)?;
    // The verifier hashes with the algorithm, version and parameters of `stored.hash`, which
    // `parse_phc` has checked, and compares outputs in constant time (`password_hash::Output`'s `Eq`).
    match Argon2::default().verify_password(password, &stored.hash) {
        Ok(()) => Ok(true),
        Err(password_hash::Error::Password) => Ok(false),
        Err(error) => Err(PasswordError::Hashing(error)),
    }
}

/// A valid hash under `params` of a fixed password no caller can submit, for logins to unknown users.
///
/// Why: a login that skipped hashing for an unknown user would answer in microseconds instead of
/// the tens of milliseconds a wrong password takes, telling an attacker which usernames exist. The
/// caller computes this once at start-up with the current parameters, and for an unknown user runs
/// [`verify_password`] against it and then refuses regardless of the result, so both failures cost
/// the same time. The fixed password is one byte longer than [`PASSWORD_BYTES_MAX`],
/// longer than [`verify_password`] accepts, so no password can actually match it. Hashes stored under older,
/// cheaper parameters still take less time until [`needs_rehash`] has upgraded them.
///
/// Errors only when `params` fail [`PasswordParams::validate`].
pub fn dummy_hash(params: &PasswordParams) -> Result<String, PasswordError> {
    params.validate()?;
    let password = [b'x'; PASSWORD_BYTES_MAX + 1];
    hash_unchecked(&password, DUMMY_SALT, params)
}

/// Whether a stored hash should be replaced by a fresh [`hash_password`] under `params` at the next
/// successful login: its algorithm, version, memory, iterations, parallelism or output length
/// differ, or it cannot be parsed at all.
pub fn needs_rehash(phc: &str, params: &PasswordParams) -> bool {
    match parse_phc(phc) {
        Ok(stored) => stored.params != *params || stored.hash_bytes != HASH_BYTES,
        Err(_) => true,
    }
}

/// A stored PHC string that passed every check of [`parse_phc`].
struct StoredHash<'a> {
    hash: PasswordHash<'a>,
    params: PasswordParams,
    hash_bytes: usize,
}

/// Parses and checks a stored PHC string: bounded length, argon2id, `v=19`, exactly `m`, `t`, `p`
/// within bounds, a salt of at least 8 bytes and a hash.
fn parse_phc(phc: &str) -> Result<StoredHash<'_>, PasswordError> {
    if phc.len() > PHC_BYTES_MAX {
        return Err(PasswordError::PhcTooLong { phc_bytes: phc.len() });
    }
    let hash = PasswordHash::new(phc).map_err(|_| PasswordError::MalformedPhc("not a PHC string"))?;
    let salt = hash.salt.ok_or(PasswordError::MalformedPhc("no salt"))?;
    let hash_bytes = hash
        .hash
        .as_ref()
        .ok_or(PasswordError::MalformedPhc("no hash"))?
        .len();
    if hash.algorithm.as_str() != ALGORITHM_ID {
        return Err(PasswordError::UnsupportedHash("algorithm is not argon2id"));
    }
    if hash.version != Some(VERSION) {
        return Err(PasswordError::UnsupportedHash("version is not v=19"));
    }
    let exactly_m_t_p = PasswordError::MalformedPhc("parameters must be exactly m, t and p");
    if hash.params.iter().count() != 3 {
        return Err(exactly_m_t_p);
    }
    let decimal = |name: &str| hash.params.get_decimal(name).ok_or(exactly_m_t_p.clone());
    let params = PasswordParams {
        memory_kib: decimal("m")?,
        iterations: decimal("t")?,
        parallelism: decimal("p")?,
    };
    params.validate()?;
    let mut salt_buffer = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buffer)
        .map_err(|_| PasswordError::MalformedPhc("salt is not base64"))?
        .len();
    if salt_bytes < STORED_SALT_BYTES_MIN {
        return Err(PasswordError::MalformedPhc("salt is shorter than 8 bytes"));
    }
    Ok(StoredHash {
        hash,
        params,
        hash_bytes,
    })
}

/// Hashes without the length and parameter checks, which the callers have done (or, for the dummy
/// password, deliberately exceeded).
fn hash_unchecked(
    password: &[u8],
    salt: &[u8; SALT_BYTES],
    params: &PasswordParams,
) -> Result<String, PasswordError> {
    let argon2_params = Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(HASH_BYTES),
    )
    .map_err(|error| PasswordError::Hashing(error.into()))?;
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon2_params);
    let salt = SaltString::encode_b64(salt).map_err(PasswordError::Hashing)?;
    let hash = hasher
        .hash_password(password, &salt)
        .map_err(PasswordError::Hashing)?;
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so the tests run in milliseconds even unoptimised.
    const FAST: PasswordParams = PasswordParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    const SALT: &[u8; SALT_BYTES] = b"0123456789abcdef";
    const OTHER_SALT: &[u8; SALT_BYTES] = b"fedcba9876543210";

    fn fast_hash(password: &[u8]) -> String {
        hash_password(password, SALT, &FAST).expect("valid input")
    }

    #[test]
    fn hash_then_verify_round_trips_and_a_wrong_password_is_false() {
        let phc = fast_hash(b"correct horse battery staple");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(phc.len() <= PHC_BYTES_MAX);
        assert_eq!(verify_password(b"correct horse battery staple", &phc), Ok(true));
        assert_eq!(verify_password(b"correct horse battery stapl", &phc), Ok(false));
        assert_eq!(verify_password(b"", &phc), Ok(false));
        assert_eq!(verify_password(&[0xff; PASSWORD_BYTES_MAX], &phc), Ok(false));
    }

    #[test]
    fn hashing_is_deterministic_and_the_salt_matters() {
        assert_eq!(fast_hash(b"password1"), fast_hash(b"password1"));
        let other = hash_password(b"password1", OTHER_SALT, &FAST).expect("valid input");
        assert_ne!(fast_hash(b"password1"), other);
        assert_eq!(verify_password(b"password1", &other), Ok(true));
    }

    #[test]
    fn verification_uses_the_parameters_stored_in_the_hash() {
        let stronger = PasswordParams {
            memory_kib: 128,
            iterations: 2,
            parallelism: 2,
        };
        let phc = hash_password(b"password1", SALT, &stronger).expect("valid input");
        assert!(phc.starts_with("$argon2id$v=19$m=128,t=2,p=2$"), "{phc}");
        assert_eq!(verify_password(b"password1", &phc), Ok(true));
        assert_eq!(verify_password(b"password2", &phc), Ok(false));
    }

    #[test]
    fn empty_and_maximal_passwords_hash_and_longer_ones_are_refused() {
        assert_eq!(verify_password(b"", &fast_hash(b"")), Ok(true));
        let longest = [b'a'; PASSWORD_BYTES_MAX];
        assert_eq!(verify_password(&longest, &fast_hash(&longest)), Ok(true));
        let too_long = [b'a'; PASSWORD_BYTES_MAX + 1];
        let refused = Err(PasswordError::PasswordTooLong {
            password_bytes: PASSWORD_BYTES_MAX + 1,
        });
        assert_eq!(hash_password(&too_long, SALT, &FAST), refused);
        assert_eq!(
            verify_password(&too_long, &fast_hash(b"x")).map(|_| ()),
            refused.map(|_: String| ())
        );
    }

    #[test]
    fn malformed_or_foreign_stored_strings_are_errors_not_false() {
        let phc = fast_hash(b"password1");
        let (prefix, hash_part) = phc.rsplit_once('$').expect("five parts");
        let salt_part = prefix.rsplit_once('$').expect("salt").1;
        for bad in [
            String::new(),
            "garbage".to_string(),
            "$".to_string(),
            "$argon2id".to_string(),
            "$argon2id$v=19$m=64,t=1,p=1".to_string(),
            format!("$argon2id$v=19$m=64,t=1,p=1${salt_part}"),
            format!("$argon2id$v=19$m=64,t=1${salt_part}${hash_part}"),
            format!("$argon2id$v=19$m=64,t=1,p=1,x=2${salt_part}${hash_part}"),
            format!("$argon2id$v=19$m=64,t=1,p=1,keyid=AAAA${salt_part}${hash_part}"),
            format!("$argon2id$v=19$m=abc,t=1,p=1${salt_part}${hash_part}"),
            format!("$argon2id$v=19$m=64,t=1,p=1$!!!!${hash_part}"),
            format!("$argon2id$v=19$m=64,t=1,p=1$c2FsdA${hash_part}"), // 4-byte salt
            format!("$argon2id$v=19$m=64,t=1,p=1${salt_part}$!!!!"),
            format!("{phc}$extra"),
            phc.replace('$', "#"),
        ] {
            assert!(
                matches!(
                    verify_password(b"password1", &bad),
                    Err(PasswordError::MalformedPhc(_))
                ),
                "{bad:?}: {:?}",
                verify_password(b"password1", &bad)
            );
        }
        for foreign in [
            phc.replacen("argon2id", "argon2i", 1),
            phc.replacen("argon2id", "argon2d", 1),
            phc.replacen("argon2id", "scrypt", 1),
            phc.replacen("$v=19", "$v=16", 1),
            phc.replacen("$v=19", "", 1),
        ] {
            assert!(
                matches!(
                    verify_password(b"password1", &foreign),
                    Err(PasswordError::UnsupportedHash(_))
                ),
                "{foreign:?}: {:?}",
                verify_password(b"password1", &foreign)
            );
        }
    }

    #[test]
    fn stored_parameters_outside_the_bounds_are_refused_before_hashing() {
        let phc = fast_hash(b"password1");
        let huge_memory = phc.replacen("m=64", "m=4194304", 1);
        assert_eq!(
            verify_password(b"password1", &huge_memory),
            Err(PasswordError::MemoryOutOfRange {
                memory_kib: 4_194_304
            })
        );
        let many_passes = phc.replacen("t=1", "t=1000000", 1);
        assert_eq!(
            verify_password(b"password1", &many_passes),
            Err(PasswordError::IterationsOutOfRange {
                iterations: 1_000_000
            })
        );
        let too_long = format!("{phc}{}", "A".repeat(PHC_BYTES_MAX));
        assert_eq!(
            verify_password(b"password1", &too_long),
            Err(PasswordError::PhcTooLong {
                phc_bytes: too_long.len()
            })
        );
    }

    #[test]
    fn parameters_are_validated() {
        assert_eq!(PasswordParams::default().validate(), Ok(()));
        assert_eq!(FAST.validate(), Ok(()));
        let with = |memory_kib, iterations, parallelism| {
            PasswordParams {
                memory_kib,
                iterations,
                parallelism,
            }
            .validate()
        };
        assert_eq!(with(MEMORY_KIB_MIN, 1, 1), Ok(()));
        assert_eq!(with(MEMORY_KIB_MAX, ITERATIONS_MAX, PARALLELISM_MAX), Ok(()));
        assert_eq!(
            with(7, 1, 1),
            Err(PasswordError::MemoryOutOfRange { memory_kib: 7 })
        );
        assert_eq!(
            with(MEMORY_KIB_MAX + 1, 1, 1),
            Err(PasswordError::MemoryOutOfRange {
                memory_kib: MEMORY_KIB_MAX + 1
            })
        );
        assert_eq!(
            with(64, 0, 1),
            Err(PasswordError::IterationsOutOfRange { iterations: 0 })
        );
        assert_eq!(
            with(64, 11, 1),
            Err(PasswordError::IterationsOutOfRange { iterations: 11 })
        );
        assert_eq!(
            with(64, 1, 0),
            Err(PasswordError::ParallelismOutOfRange { parallelism: 0 })
        );
        assert_eq!(
            with(512, 1, 17),
            Err(PasswordError::ParallelismOutOfRange { parallelism: 17 })
        );
        assert_eq!(
            with(64, 1, 16),
            Err(PasswordError::MemoryBelowParallelism {
                memory_kib: 64,
                parallelism: 16
            })
        );
        assert!(hash_password(
            b"x",
            SALT,
            &PasswordParams {
                iterations: 0,
                ..FAST
            }
        )
        .is_err());
        assert!(dummy_hash(&PasswordParams {
            memory_kib: 0,
            ..FAST
        })
        .is_err());
    }

    #[test]
    fn the_dummy_hash_is_fixed_valid_and_matches_no_password() {
        let dummy = dummy_hash(&FAST).expect("valid params");
        assert_eq!(dummy, dummy_hash(&FAST).expect("valid params"));
        assert!(dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{dummy}");
        assert!(!needs_rehash(&dummy, &FAST));
        // Pseudo-random passwords from a fixed xorshift sequence, plus the obvious guesses.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for length in [0usize, 1, 10, 64, 255, PASSWORD_BYTES_MAX] {
            let password: Vec<u8> = (0..length)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            assert_eq!(verify_password(&password, &dummy), Ok(false));
        }
        assert_eq!(verify_password(&[b'x'; PASSWORD_BYTES_MAX], &dummy), Ok(false));
        assert!(verify_password(&[b'x'; PASSWORD_BYTES_MAX + 1], &dummy).is_err());
    }

    #[test]
    fn needs_rehash_when_parameters_change_or_the_string_is_unusable() {
        let phc = fast_hash(b"password1");
        assert!(!needs_rehash(&phc, &FAST));
        assert!(needs_rehash(&phc, &PasswordParams::default()));
        assert!(needs_rehash(
            &phc,
            &PasswordParams {
                iterations: 2,
                ..FAST
            }
        ));
        assert!(needs_rehash(
            &phc,
            &PasswordParams {
                memory_kib: 128,
                ..FAST
            }
        ));
        assert!(needs_rehash(
            &phc,
            &PasswordParams {
                parallelism: 2,
                ..FAST
            }
        ));
        assert!(needs_rehash("garbage", &FAST));
        assert!(needs_rehash(&phc.replacen("argon2id", "argon2i", 1), &FAST));
        // A 16-byte output from another implementation verifies but is upgraded.
        let short_output = "$argon2id$v=19$m=64,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(verify_password(b"password1", short_output), Ok(false));
        assert!(needs_rehash(short_output, &FAST));
        let defaults = "$argon2id$v=19$m=19456,t=2,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(!needs_rehash(defaults, &PasswordParams::default()));
    }

    #[test]
    fn default_parameters_are_owasps_and_hash_as_such() {
        let defaults = PasswordParams::default();
        assert_eq!(
            defaults,
            PasswordParams {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 1
            }
        );
        let phc = hash_password(b"password1", SALT, &defaults).expect("valid input");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!needs_rehash(&phc, &defaults));
    }
}
