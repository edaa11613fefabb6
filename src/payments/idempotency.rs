//! Idempotency keys for the money routes (`POST /v1/payments`, `/v1/deposits`, refunds), as the
//! contract defines them: a retry with the same key and the same request gets the stored response
//! byte for byte; the same key with another request is refused; the same key while the first
//! request still runs is told to retry.
//!
//! A key is scoped to its owner (a user, or the admin key) and kept at least the configured time.
//! Only final answers are stored — 2xx and 4xx; a 5xx is abandoned so a retry can succeed. The store
//! is bounded: expired keys are dropped first, and when every slot holds a live key new keys are
//! refused rather than forgetting a promise. Pure and shard-local: time comes with each call.
//!
//! The store serializes whole, as a snapshot (its limits are re-applied from configuration with
//! [`Store::with_limits`]); for resharding [`Store::merge`] combines old shards' stores and
//! [`Store::split`] divides one among new shards by a function of each key and its scope.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::segmap::SegMap;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum State {
    Running,
    Done { status: u16, body: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    fingerprint: Fingerprint,
    state: State,
    expires_at_ms: u64,
}

/// A stored answer: status and body.
pub type Answer<'a> = (u16, &'a [u8]);

/// One shard's idempotency keys. Serializes whole, as a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    entries: SegMap<(Scope, String), Entry>,
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
            entries: SegMap::new(),
            expiry: BTreeSet::new(),
            retention_ms,
            entries_max: entries_max.max(1),
        }
    }

    /// The same keys, kept `retention_ms` after first use, at most `entries_max`: the
    /// configuration's limits, re-applied to a store loaded from a snapshot or resharded (which
    /// does not choose them). A store already holding more keys refuses new ones until enough
    /// expire; keys already claimed keep the expiry they were given.
    pub fn with_limits(mut self, retention_ms: u64, entries_max: usize) -> Store {
        self.retention_ms = retention_ms;
        self.entries_max = entries_max.max(1);
        self
    }

    /// Combines the stores of several shards into one (the first half of a reshard). A key held
    /// by two parts (it should not be) keeps the first part's entry. The limits are the largest of
    /// the parts'; apply the configuration's with [`Store::with_limits`].
    pub fn merge(parts: Vec<Store>) -> Store {
        let mut merged = Store::new(0, 1);
        for part in parts {
            merged.retention_ms = merged.retention_ms.max(part.retention_ms);
            merged.entries_max = merged.entries_max.max(part.entries_max);
            for (id, entry) in part.entries {
                merged.insert(id, entry);
            }
        }
        merged
    }

    /// Divides this store into `parts` stores (the second half of a reshard): each key goes to
    /// part `owner(scope, key)` — a user's keys with the user, the admin's wherever the caller
    /// puts them. Every part keeps this store's limits.
    ///
    /// Panics if `parts` is 0 or `owner` names a part out of range (a bug in the caller).
    pub fn split(self, owner: &dyn Fn(&Scope, &str) -> usize, parts: usize) -> Vec<Store> {
        assert!(parts > 0, "a store split into no parts");
        let mut split: Vec<Store> = (0..parts)
            .map(|_| Store::new(self.retention_ms, self.entries_max))
            .collect();
        for (id, entry) in self.entries {
            let part = owner(&id.0, &id.1);
            assert!(part < parts, "owner named part {part} of {parts}");
            split[part].insert(id, entry);
        }
        split
    }

    /// Adds a whole entry with its place in the expiry order, unless the key is held.
    fn insert(&mut self, id: (Scope, String), entry: Entry) {
        if self.entries.contains_key(&id) {
            return;
        }
        self.expiry
            .insert((entry.expires_at_ms, id.0.clone(), id.1.clone()));
        self.entries.insert(id, entry);
    }

    /// The keys whose request is still running (after a restart: interrupted ones).
    pub fn running(&self) -> Vec<(Scope, String)> {
        let mut keys: Vec<(Scope, String)> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.state == State::Running)
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// A held key: the request's fingerprint, its answer (`None` while the request runs) and when
    /// it may be forgotten (Unix milliseconds).
    pub fn entry(&self, scope: &Scope, key: &str) -> Option<(&Fingerprint, Option<Answer<'_>>, u64)> {
        let entry = self.entries.get(&(scope.clone(), key.to_string()))?;
        let answer = match &entry.state {
            State::Running => None,
            State::Done { status, body } => Some((*status, body.as_slice())),
        };
        Some((&entry.fingerprint, answer, entry.expires_at_ms))
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
    use std::collections::HashMap;

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

    fn through_bincode(store: &Store) -> Store {
        let bytes = bincode::serialize(store).expect("a store serializes");
        bincode::deserialize(&bytes).expect("a store deserializes")
    }

    fn user_scope(n: u8) -> Scope {
        Scope::User(UserId::new(Slot::of_username(&format!("user{n}")), [n; 10]))
    }

    /// Where a key lives among `shards`: a user's with the user, the admin's by the key's slot.
    fn key_shard(scope: &Scope, key: &str, shards: usize) -> usize {
        match scope {
            Scope::User(user) => user.slot().shard(shards),
            Scope::Admin => Slot::of_bytes(key.as_bytes()).shard(shards),
        }
    }

    /// Keys of 20 users and the admin on `shards` shards: per scope one answered, one running.
    fn populated(shards: usize) -> (Vec<Store>, Vec<Scope>) {
        let mut stores: Vec<Store> = (0..shards).map(|_| Store::new(DAY_MS, 100)).collect();
        let scopes: Vec<Scope> = (0..20).map(user_scope).chain([Scope::Admin]).collect();
        for (n, scope) in scopes.iter().enumerate() {
            for key in [format!("done{n}"), format!("running{n}")] {
                let store = &mut stores[key_shard(scope, &key, shards)];
                assert_eq!(store.begin(scope, &key, [n as u8; 32], n as u64), Begin::Proceed);
            }
            let key = format!("done{n}");
            stores[key_shard(scope, &key, shards)].complete(scope, &key, 201, vec![n as u8]);
        }
        (stores, scopes)
    }

    #[test]
    fn a_snapshot_round_trips_and_takes_its_limits_from_configuration() {
        let (stores, _) = populated(1);
        let store = &stores[0];
        let copy = through_bincode(store);
        assert_eq!(&copy, store);
        assert_eq!(copy.len(), 42);
        // Configuration now allows fewer keys than are held: new ones wait, held ones answer.
        let mut limited = copy.with_limits(DAY_MS, 10);
        assert_eq!(limited.begin(&alice(), "new", [1; 32], 100), Begin::Full);
        assert!(matches!(
            limited.begin(&user_scope(3), "done3", [3; 32], 100),
            Begin::Replay { status: 201, .. }
        ));
        // A shorter retention applies to keys claimed from now on.
        let mut quick = through_bincode(store).with_limits(10, 100);
        assert_eq!(quick.begin(&alice(), "new", [1; 32], 100), Begin::Proceed);
        quick.complete(&alice(), "new", 201, Vec::new());
        quick.expire(110);
        assert_eq!(quick.begin(&alice(), "new", [2; 32], 110), Begin::Proceed);
    }

    #[test]
    fn resharding_moves_each_key_to_the_shard_its_owner_names() {
        for new_shards in [1usize, 2, 3, 4] {
            for merge_first in [true, false] {
                let (old, scopes) = populated(2);
                let owner = |scope: &Scope, key: &str| key_shard(scope, key, new_shards);
                let mut new: Vec<Store> = if merge_first {
                    Store::merge(old.iter().map(through_bincode).collect()).split(&owner, new_shards)
                } else {
                    let mut columns: Vec<Vec<Store>> = (0..new_shards).map(|_| Vec::new()).collect();
                    for store in old {
                        for (column, part) in columns.iter_mut().zip(store.split(&owner, new_shards)) {
                            column.push(part);
                        }
                    }
                    columns.into_iter().map(Store::merge).collect()
                };
                assert_eq!(new.iter().map(Store::len).sum::<usize>(), 42);
                for (n, scope) in scopes.iter().enumerate() {
                    let (done, running) = (format!("done{n}"), format!("running{n}"));
                    for (shard, store) in new.iter().enumerate() {
                        for key in [&done, &running] {
                            let held = store.entries.contains_key(&(scope.clone(), key.clone()));
                            assert_eq!(held, shard == owner(scope, key), "{scope:?} {key} on {shard}");
                        }
                    }
                    let store = &mut new[owner(scope, &done)];
                    assert_eq!(
                        store.begin(scope, &done, [n as u8; 32], 1_000),
                        Begin::Replay {
                            status: 201,
                            body: vec![n as u8]
                        }
                    );
                    assert_eq!(store.begin(scope, &done, [99; 32], 1_000), Begin::Reused);
                    let store = &mut new[owner(scope, &running)];
                    assert_eq!(store.begin(scope, &running, [n as u8; 32], 1_000), Begin::InUse);
                }
                // Expiry still works: answered keys go after retention, running ones stay.
                for store in &mut new {
                    store.expire(DAY_MS + 100);
                    assert!(store.entries.values().all(|entry| entry.state == State::Running));
                    assert_eq!(store.expiry.len(), store.len());
                }
                assert_eq!(new.iter().map(Store::len).sum::<usize>(), 21);
            }
        }
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
