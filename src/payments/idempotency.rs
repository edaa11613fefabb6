//! Idempotency keys for the money routes (`POST /v1/payments`, `/v1/deposits`, refunds), as the
//! contract defines them: a retry with the same key and the same request gets the stored response
//! byte for byte; the same key with another request is refused; the same key while the first
//! request still runs is told to retry.
//!
//! A key is scoped to its owner (a user, or the admin key) and kept at least the configured time.
//! Only final answers are stored — 2xx and 4xx; a 5xx is abandoned so a retry can succeed. The store
//! is bounded: expired keys are dropped first, and when every slot holds a live key new keys are
//! refused rather than forgetting a promise. Pure and shard-local: time comes with each call.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::slots::UserId;

/// Longest key, in characters (visible ASCII).
pub const KEY_CHARS_MAX: usize = 255;

/// Whose key it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// An authenticated user.
    User(UserId),
    /// The admin API key (deposits).
    Admin,
}

/// The request a key was first used with: method, path and a hash of the body.
pub type Fingerprint = [u8; 32];

/// What to do with a request that carries a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// New key: execute the request, then [`Store::complete`] or [`Store::abandon`].
    Proceed,
    /// Seen with the same request and answered: send this again, with `Idempotent-Replayed: true`.
    Replay {
        /// Stored status.
        status: u16,
        /// Stored body, byte for byte.
        body: Vec<u8>,
    },
    /// The first request with this key is still running: 409 `idempotency_key_in_use`.
    InUse,
    /// Seen with a different request: 422 `idempotency_key_reused`.
    Reused,
    /// Every slot holds a live key: 503, retry later.
    Full,
}

/// A change to the store: the unit of the log, so keys and their answers survive with the
/// events they belong to. Expiry is not logged: it follows from the times in the changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new key was claimed for a request.
    Claimed {
        /// Whose key.
        scope: Scope,
        /// The key.
        key: String,
        /// The request.
        fingerprint: Fingerprint,
        /// When it may be forgotten, Unix milliseconds.
        expires_at_ms: u64,
    },
    /// The request's final answer.
    Completed {
        /// Whose key.
        scope: Scope,
        /// The key.
        key: String,
        /// Status to replay.
        status: u16,
        /// Body to replay.
        body: Vec<u8>,
    },
    /// The request ended without a final answer (5xx): the key is free again.
    Released {
        /// Whose key.
        scope: Scope,
        /// The key.
        key: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Running,
    Done { status: u16, body: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    fingerprint: Fingerprint,
    state: State,
    expires_at_ms: u64,
}

/// One shard's idempotency keys.
#[derive(Debug, Clone)]
pub struct Store {
    entries: HashMap<(Scope, String), Entry>,
    /// (expiry, scope, key), for dropping expired keys in order.
    expiry: BTreeSet<(u64, Scope, String)>,
    retention_ms: u64,
    entries_max: usize,
}

/// Whether a header value is a valid key: 1 to 255 visible ASCII characters.
pub fn valid_key(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= KEY_CHARS_MAX && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

impl Store {
    /// Keeps each key `retention_ms` after it was first used; at most `entries_max` keys.
    pub fn new(retention_ms: u64, entries_max: usize) -> Store {
        Store {
            entries: HashMap::new(),
            expiry: BTreeSet::new(),
            retention_ms,
            entries_max: entries_max.max(1),
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks a request up. A new key comes back as [`Begin::Proceed`] with the [`Change`] that
    /// claims it, for the caller to log and [`Store::apply`].
    pub fn decide_begin(
        &mut self,
        scope: &Scope,
        key: &str,
        fingerprint: Fingerprint,
        now_ms: u64,
    ) -> (Begin, Option<Change>) {
        self.expire(now_ms);
        let id = (scope.clone(), key.to_string());
        if let Some(entry) = self.entries.get(&id) {
            if entry.fingerprint != fingerprint {
                return (Begin::Reused, None);
            }
            let begin = match &entry.state {
                State::Running => Begin::InUse,
                State::Done { status, body } => Begin::Replay {
                    status: *status,
                    body: body.clone(),
                },
            };
            return (begin, None);
        }
        if self.entries.len() >= self.entries_max {
            return (Begin::Full, None);
        }
        let change = Change::Claimed {
            scope: scope.clone(),
            key: key.to_string(),
            fingerprint,
            expires_at_ms: now_ms.saturating_add(self.retention_ms),
        };
        (Begin::Proceed, Some(change))
    }

    /// The change that stores a claimed key's final answer — or, for a 5xx, releases the key so
    /// a retry executes again. `None` when the key is not claimed.
    pub fn decide_complete(&self, scope: &Scope, key: &str, status: u16, body: Vec<u8>) -> Option<Change> {
        let entry = self.entries.get(&(scope.clone(), key.to_string()))?;
        if entry.state != State::Running {
            return None;
        }
        Some(if status >= 500 {
            Change::Released {
                scope: scope.clone(),
                key: key.to_string(),
            }
        } else {
            Change::Completed {
                scope: scope.clone(),
                key: key.to_string(),
                status,
                body,
            }
        })
    }

    /// Applies a change decided earlier (or replayed from the log).
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Claimed {
                scope,
                key,
                fingerprint,
                expires_at_ms,
            } => {
                self.expiry.insert((*expires_at_ms, scope.clone(), key.clone()));
                self.entries.insert(
                    (scope.clone(), key.clone()),
                    Entry {
                        fingerprint: *fingerprint,
                        state: State::Running,
                        expires_at_ms: *expires_at_ms,
                    },
                );
            }
            Change::Completed {
                scope,
                key,
                status,
                body,
            } => {
                if let Some(entry) = self.entries.get_mut(&(scope.clone(), key.clone())) {
                    entry.state = State::Done {
                        status: *status,
                        body: body.clone(),
                    };
                }
            }
            Change::Released { scope, key } => self.abandon(scope, key),
        }
    }

    /// Decides and applies in one step, without a log (tests, and callers that log nothing).
    pub fn begin(&mut self, scope: &Scope, key: &str, fingerprint: Fingerprint, now_ms: u64) -> Begin {
        let (begin, change) = self.decide_begin(scope, key, fingerprint, now_ms);
        if let Some(change) = change {
            self.apply(&change);
        }
        begin
    }

    /// Stores the final answer of a request that [`Begin::Proceed`]ed (a 5xx releases the key).
    pub fn complete(&mut self, scope: &Scope, key: &str, status: u16, body: Vec<u8>) {
        if let Some(change) = self.decide_complete(scope, key, status, body) {
            self.apply(&change);
        }
    }

    /// Releases a key whose request did not reach a final answer.
    pub fn abandon(&mut self, scope: &Scope, key: &str) {
        if let Some(entry) = self.entries.remove(&(scope.clone(), key.to_string())) {
            self.expiry
                .remove(&(entry.expires_at_ms, scope.clone(), key.to_string()));
        }
    }

    /// Drops every key whose retention has passed. Keys still running are kept: their request
    /// has not answered yet.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(first) = self.expiry.first() {
            if first.0 > now_ms {
                break;
            }
            let (expires_at_ms, scope, key) = self.expiry.pop_first().expect("just looked");
            let id = (scope, key);
            match self.entries.get(&id) {
                Some(entry) if entry.state == State::Running => {
                    // Keep it until it completes; look again one retention later.
                    let later = expires_at_ms.saturating_add(self.retention_ms.max(1));
                    self.entries.get_mut(&id).expect("present").expires_at_ms = later;
                    self.expiry.insert((later, id.0, id.1));
                }
                Some(_) => {
                    self.entries.remove(&id);
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::slots::Slot;

    fn alice() -> Scope {
        Scope::User(UserId::new(Slot::of_username("alice"), [1; 10]))
    }

    const DAY_MS: u64 = 24 * 3600 * 1000;

    #[test]
    fn keys_are_validated() {
        assert!(valid_key(b"a"));
        assert!(valid_key(&[b'~'; KEY_CHARS_MAX]));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'a'; KEY_CHARS_MAX + 1]));
        assert!(!valid_key(b"has space"));
        assert!(!valid_key("é".as_bytes()));
    }

    #[test]
    fn the_contract_cases() {
        let mut store = Store::new(DAY_MS, 10);
        let request = [1; 32];
        assert_eq!(store.begin(&alice(), "k", request, 0), Begin::Proceed);
        assert_eq!(store.begin(&alice(), "k", request, 1), Begin::InUse);
        assert_eq!(store.begin(&alice(), "k", [2; 32], 1), Begin::Reused);
        store.complete(&alice(), "k", 201, b"{\"id\":1}".to_vec());
        assert_eq!(
            store.begin(&alice(), "k", request, 2),
            Begin::Replay {
                status: 201,
                body: b"{\"id\":1}".to_vec()
            }
        );
        // The same key of someone else is another key.
        assert_eq!(store.begin(&Scope::Admin, "k", [2; 32], 2), Begin::Proceed);
    }

    #[test]
    fn client_errors_are_stored_server_errors_released() {
        let mut store = Store::new(DAY_MS, 10);
        assert_eq!(store.begin(&alice(), "a", [1; 32], 0), Begin::Proceed);
        store.complete(&alice(), "a", 422, b"no money".to_vec());
        assert!(matches!(
            store.begin(&alice(), "a", [1; 32], 1),
            Begin::Replay { status: 422, .. }
        ));
        assert_eq!(store.begin(&alice(), "b", [1; 32], 0), Begin::Proceed);
        store.complete(&alice(), "b", 503, b"busy".to_vec());
        assert_eq!(store.begin(&alice(), "b", [1; 32], 1), Begin::Proceed);
    }

    #[test]
    fn keys_expire_after_retention_but_not_while_running() {
        let mut store = Store::new(DAY_MS, 10);
        store.begin(&alice(), "done", [1; 32], 0);
        store.complete(&alice(), "done", 201, Vec::new());
        store.begin(&alice(), "running", [1; 32], 0);
        assert!(matches!(
            store.begin(&alice(), "done", [1; 32], DAY_MS - 1),
            Begin::Replay { .. }
        ));
        store.expire(DAY_MS);
        assert_eq!(
            store.begin(&alice(), "done", [9; 32], DAY_MS),
            Begin::Proceed,
            "forgotten"
        );
        assert_eq!(
            store.begin(&alice(), "running", [1; 32], DAY_MS),
            Begin::InUse,
            "kept while running"
        );
    }

    #[test]
    fn a_full_store_refuses_new_keys_instead_of_forgetting_live_ones() {
        let mut store = Store::new(DAY_MS, 2);
        store.begin(&alice(), "a", [1; 32], 0);
        store.begin(&alice(), "b", [1; 32], 0);
        assert_eq!(store.begin(&alice(), "c", [1; 32], 1), Begin::Full);
        store.complete(&alice(), "a", 201, Vec::new());
        assert_eq!(
            store.begin(&alice(), "c", [1; 32], DAY_MS + 1),
            Begin::Proceed,
            "a expired"
        );
        assert!(matches!(
            store.begin(&alice(), "b", [1; 32], DAY_MS + 1),
            Begin::InUse
        ));
    }

    proptest! {
        /// Whatever the interleaving, a key answers the first fingerprint it saw until it expires:
        /// never Replay for another fingerprint, never Proceed twice while held.
        #[test]
        fn a_key_keeps_its_first_request(
            steps in prop::collection::vec((0u8..3, 0u8..2, 0u8..4, 0u64..1000), 1..80),
        ) {
            let mut store = Store::new(5_000, 4);
            let mut now = 0u64;
            let mut held: HashMap<u8, (u8, bool)> = HashMap::new(); // key -> (fingerprint, done)
            for (key, fingerprint, action, advance) in steps {
                now += advance;
                store.expire(now);
                // Keys the store forgot are new again for the model too.
                held.retain(|key, _| store.entries.contains_key(&(alice(), key.to_string())));
                let name = key.to_string();
                match action {
                    0 | 1 => {
                        let outcome = store.begin(&alice(), &name, [fingerprint; 32], now);
                        match outcome {
                            Begin::Proceed => {
                                prop_assert!(!held.contains_key(&key), "proceeded for a held key");
                                held.insert(key, (fingerprint, false));
                            }
                            Begin::Replay { .. } => {
                                let (first, done) = held[&key];
                                prop_assert_eq!(first, fingerprint);
                                prop_assert!(done);
                            }
                            Begin::InUse => prop_assert_eq!(held[&key], (fingerprint, false)),
                            Begin::Reused => prop_assert_ne!(held[&key].0, fingerprint),
                            Begin::Full => prop_assert!(store.len() >= 4),
                        }
                    }
                    2 => {
                        if let Some(entry) = held.get_mut(&key) {
                            if !entry.1 {
                                store.complete(&alice(), &name, 201, vec![entry.0]);
                                entry.1 = true;
                            }
                        }
                    }
                    _ => {
                        if held.get(&key).is_some_and(|entry| !entry.1) {
                            store.abandon(&alice(), &name);
                            held.remove(&key);
                        }
                    }
                }
                prop_assert!(store.len() <= 4);
            }
        }
    }
}
