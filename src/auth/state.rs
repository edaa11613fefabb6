//! The auth state of one shard — users, credentials, sessions and refresh tokens of the users whose
//! slots it owns — as a deterministic state machine.
//!
//! [`AuthState::decide`] checks a [`Command`] against the state and returns the [`Event`]s it
//! causes, or an [`AuthError`]; [`AuthState::apply`] applies an event and cannot fail. Storage
//! logs events between the two (`append → durable → apply → respond`) and replays them at start.
//! Nothing here does I/O, reads a clock or draws random numbers: times, ids, token hashes and
//! password hashes come in with the command. Refresh tokens are stored only as SHA-256 hashes.
//!
//! For snapshots the state serializes whole; for resharding [`AuthState::merge`] combines old
//! shards' states and [`AuthState::split`] divides one among new shards, each user with their
//! sessions and refresh tokens.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::slots::UserId;

/// Most sessions one user may hold; creating one more revokes the oldest.
pub const SESSIONS_PER_USER_MAX: usize = 64;
/// Rotated refresh-token hashes remembered per session, for reuse detection. A token rotated
/// longer ago than this many rotations is refused as unknown rather than treated as reuse.
pub const ROTATED_TOKENS_PER_SESSION_MAX: usize = 32;

/// SHA-256 of a refresh token.
pub type TokenHash = [u8; 32];

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Id (embeds the slot).
    pub id: UserId,
    /// Case-folded username.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
}

/// A session: one login, with its current refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id.
    pub id: String,
    /// Owner.
    pub user: UserId,
    /// Login time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Last authenticated use, Unix milliseconds (kept in memory only: not an event).
    pub last_used_at_ms: u64,
    /// Hash of the refresh token that works now.
    pub refresh_hash: TokenHash,
    /// When the current refresh token stops working, Unix milliseconds.
    pub refresh_expires_at_ms: u64,
    /// Hashes of earlier refresh tokens, newest last, for reuse detection.
    rotated: VecDeque<TokenHash>,
}

impl Session {
    /// A session as stored: `rotated` holds the earlier refresh-token hashes, oldest first (only
    /// the newest [`ROTATED_TOKENS_PER_SESSION_MAX`] are kept).
    pub fn restored(
        id: String,
        user: UserId,
        created_at_ms: u64,
        refresh_hash: TokenHash,
        refresh_expires_at_ms: u64,
        rotated: Vec<TokenHash>,
    ) -> Session {
        let skip = rotated.len().saturating_sub(ROTATED_TOKENS_PER_SESSION_MAX);
        Session {
            id,
            user,
            created_at_ms,
            last_used_at_ms: created_at_ms,
            refresh_hash,
            refresh_expires_at_ms,
            rotated: rotated.into_iter().skip(skip).collect(),
        }
    }

    /// The earlier refresh-token hashes remembered for reuse detection, oldest first.
    pub fn rotated(&self) -> impl Iterator<Item = &TokenHash> {
        self.rotated.iter()
    }
}

/// A request to change the auth state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Sign up. The caller case-folded and validated the username and hashed the password.
    CreateUser {
        /// New id, in the username's slot.
        id: UserId,
        /// Case-folded username.
        username: String,
        /// argon2id PHC string.
        password_hash: String,
        /// Now, Unix milliseconds.
        now_ms: u64,
    },
    /// Log in. The caller verified the password.
    CreateSession {
        /// User.
        user: UserId,
        /// New session id.
        session: String,
        /// Hash of the new refresh token.
        refresh_hash: TokenHash,
        /// Refresh token expiry, Unix milliseconds.
        refresh_expires_at_ms: u64,
        /// Now, Unix milliseconds.
        now_ms: u64,
    },
    /// Exchange a refresh token for a new one.
    Refresh {
        /// Hash of the presented token.
        presented: TokenHash,
        /// Hash of the replacement token.
        replacement: TokenHash,
        /// Replacement expiry, Unix milliseconds.
        refresh_expires_at_ms: u64,
        /// Now, Unix milliseconds.
        now_ms: u64,
    },
    /// Log out one session.
    RevokeSession {
        /// Owner (a user may revoke only their own sessions).
        user: UserId,
        /// Session.
        session: String,
    },
    /// Log out everywhere.
    RevokeAllSessions {
        /// User.
        user: UserId,
    },
}

/// What happened; the unit of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A user signed up.
    UserCreated(User),
    /// A user logged in.
    SessionCreated {
        /// User.
        user: UserId,
        /// Session id.
        session: String,
        /// Refresh token hash.
        refresh_hash: TokenHash,
        /// Refresh expiry, Unix milliseconds.
        refresh_expires_at_ms: u64,
        /// Login time, Unix milliseconds.
        created_at_ms: u64,
    },
    /// A refresh token was rotated.
    SessionRefreshed {
        /// Session id.
        session: String,
        /// The new token's hash.
        refresh_hash: TokenHash,
        /// The new token's expiry, Unix milliseconds.
        refresh_expires_at_ms: u64,
        /// Time of the refresh, Unix milliseconds.
        at_ms: u64,
    },
    /// A session ended: logout, logout everywhere, too many sessions, or refresh-token reuse.
    SessionRevoked {
        /// Session id.
        session: String,
        /// Why.
        reason: RevokeReason,
    },
}

/// Why a session was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// The user logged out.
    Logout,
    /// The user logged out everywhere.
    LogoutEverywhere,
    /// A rotated refresh token was presented again: it may have been stolen.
    RefreshTokenReused,
    /// The user opened more than [`SESSIONS_PER_USER_MAX`] sessions.
    TooManySessions,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The username belongs to another user.
    #[error("username taken")]
    UsernameTaken,
    /// The id is already in use (the caller must draw another).
    #[error("user id already exists")]
    UserIdTaken,
    /// No such user.
    #[error("no such user")]
    UnknownUser,
    /// No such session for this user, or it was revoked.
    #[error("no such session")]
    UnknownSession,
    /// The session id is already in use (the caller must draw another).
    #[error("session id already exists")]
    SessionIdTaken,
    /// The refresh token is unknown or expired.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
}

/// One shard's users and sessions. Serializes whole, as a snapshot.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    users: HashMap<UserId, User>,
    by_username: HashMap<String, UserId>,
    sessions: HashMap<String, Session>,
    sessions_by_user: HashMap<UserId, Vec<String>>,
    /// Current and rotated refresh-token hashes → session id.
    refresh_tokens: HashMap<TokenHash, String>,
}

impl AuthState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// The user with this id.
    pub fn user(&self, id: &UserId) -> Option<&User> {
        self.users.get(id)
    }

    /// The user with this case-folded username.
    pub fn user_by_username(&self, username: &str) -> Option<&User> {
        self.by_username.get(username).and_then(|id| self.users.get(id))
    }

    /// A live session of `user`.
    pub fn session(&self, user: &UserId, session: &str) -> Option<&Session> {
        self.sessions.get(session).filter(|s| &s.user == user)
    }

    /// The owner of a live session.
    pub fn session_owner(&self, session: &str) -> Option<&UserId> {
        self.sessions.get(session).map(|s| &s.user)
    }

    /// The live sessions of `user`, oldest first.
    pub fn sessions_of(&self, user: &UserId) -> Vec<&Session> {
        self.sessions_by_user
            .get(user)
            .map(|ids| ids.iter().filter_map(|id| self.sessions.get(id)).collect())
            .unwrap_or_default()
    }

    /// A live session by id, whoever owns it.
    pub fn session_by_id(&self, session: &str) -> Option<&Session> {
        self.sessions.get(session)
    }

    /// A state holding `users` and their `sessions` (the ScyllaDB store's load): what applying
    /// the events that made them would have built. A session whose user is not among `users` is
    /// dropped; a user's sessions are ordered by creation time.
    pub fn restore(users: Vec<User>, mut sessions: Vec<Session>) -> AuthState {
        let mut state = AuthState::new();
        for user in users {
            state.apply(&Event::UserCreated(user));
        }
        sessions.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        for session in sessions {
            if !state.users.contains_key(&session.user) {
                continue;
            }
            state
                .refresh_tokens
                .insert(session.refresh_hash, session.id.clone());
            for rotated in &session.rotated {
                state.refresh_tokens.insert(*rotated, session.id.clone());
            }
            state
                .sessions_by_user
                .entry(session.user.clone())
                .or_default()
                .push(session.id.clone());
            state.sessions.insert(session.id.clone(), session);
        }
        state
    }

    /// Records an authenticated use of a session (not logged: it is a hint for the session list).
    pub fn touch(&mut self, session: &str, now_ms: u64) {
        if let Some(session) = self.sessions.get_mut(session) {
            session.last_used_at_ms = session.last_used_at_ms.max(now_ms);
        }
    }

    /// The events `command` causes, without changing anything.
    pub fn decide(&self, command: &Command) -> Result<Vec<Event>, AuthError> {
        match command {
            Command::CreateUser {
                id,
                username,
                password_hash,
                now_ms,
            } => {
                if self.by_username.contains_key(username) {
                    return Err(AuthError::UsernameTaken);
                }
                if self.users.contains_key(id) {
                    return Err(AuthError::UserIdTaken);
                }
                Ok(vec![Event::UserCreated(User {
                    id: id.clone(),
                    username: username.clone(),
                    password_hash: password_hash.clone(),
                    created_at_ms: *now_ms,
                })])
            }
            Command::CreateSession {
                user,
                session,
                refresh_hash,
                refresh_expires_at_ms,
                now_ms,
            } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UnknownUser);
                }
                if self.sessions.contains_key(session) || self.refresh_tokens.contains_key(refresh_hash) {
                    return Err(AuthError::SessionIdTaken);
                }
                let mut events = Vec::with_capacity(2);
                let live = self.sessions_by_user.get(user).map_or(0, Vec::len);
                if live >= SESSIONS_PER_USER_MAX {
                    let oldest = &self.sessions_by_user[user][0];
                    events.push(Event::SessionRevoked {
                        session: oldest.clone(),
                        reason: RevokeReason::TooManySessions,
                    });
                }
                events.push(Event::SessionCreated {
                    user: user.clone(),
                    session: session.clone(),
                    refresh_hash: *refresh_hash,
                    refresh_expires_at_ms: *refresh_expires_at_ms,
                    created_at_ms: *now_ms,
                });
                Ok(events)
            }
            Command::Refresh {
                presented,
                replacement,
                refresh_expires_at_ms,
                now_ms,
            } => {
                let session_id = self
                    .refresh_tokens
                    .get(presented)
                    .ok_or(AuthError::InvalidRefreshToken)?;
                let session = &self.sessions[session_id];
                if session.refresh_hash != *presented {
                    // A rotated token came back: whoever holds the session may not be its owner.
                    return Ok(vec![Event::SessionRevoked {
                        session: session_id.clone(),
                        reason: RevokeReason::RefreshTokenReused,
                    }]);
                }
                if *now_ms >= session.refresh_expires_at_ms {
                    return Err(AuthError::InvalidRefreshToken);
                }
                if self.refresh_tokens.contains_key(replacement) {
                    return Err(AuthError::SessionIdTaken);
                }
                Ok(vec![Event::SessionRefreshed {
                    session: session_id.clone(),
                    refresh_hash: *replacement,
                    refresh_expires_at_ms: *refresh_expires_at_ms,
                    at_ms: *now_ms,
                }])
            }
            Command::RevokeSession { user, session } => {
                if self.session(user, session).is_none() {
                    return Err(AuthError::UnknownSession);
                }
                Ok(vec![Event::SessionRevoked {
                    session: session.clone(),
                    reason: RevokeReason::Logout,
                }])
            }
            Command::RevokeAllSessions { user } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UnknownUser);
                }
                Ok(self
                    .sessions_by_user
                    .get(user)
                    .into_iter()
                    .flatten()
                    .map(|session| Event::SessionRevoked {
                        session: session.clone(),
                        reason: RevokeReason::LogoutEverywhere,
                    })
                    .collect())
            }
        }
    }

    /// Applies an event decided earlier (or replayed from the log). Events are facts: applying
    /// one that no longer fits (a revoked session's revocation) changes nothing.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::UserCreated(user) => {
                self.by_username.insert(user.username.clone(), user.id.clone());
                self.users.insert(user.id.clone(), user.clone());
            }
            Event::SessionCreated {
                user,
                session,
                refresh_hash,
                refresh_expires_at_ms,
                created_at_ms,
            } => {
                self.refresh_tokens.insert(*refresh_hash, session.clone());
                self.sessions_by_user
                    .entry(user.clone())
                    .or_default()
                    .push(session.clone());
                self.sessions.insert(
                    session.clone(),
                    Session {
                        id: session.clone(),
                        user: user.clone(),
                        created_at_ms: *created_at_ms,
                        last_used_at_ms: *created_at_ms,
                        refresh_hash: *refresh_hash,
                        refresh_expires_at_ms: *refresh_expires_at_ms,
                        rotated: VecDeque::new(),
                    },
                );
            }
            Event::SessionRefreshed {
                session,
                refresh_hash,
                refresh_expires_at_ms,
                at_ms,
            } => {
                let Some(state) = self.sessions.get_mut(session) else {
                    return;
                };
                let old = std::mem::replace(&mut state.refresh_hash, *refresh_hash);
                state.rotated.push_back(old);
                if state.rotated.len() > ROTATED_TOKENS_PER_SESSION_MAX {
                    if let Some(forgotten) = state.rotated.pop_front() {
                        self.refresh_tokens.remove(&forgotten);
                    }
                }
                state.refresh_expires_at_ms = *refresh_expires_at_ms;
                state.last_used_at_ms = state.last_used_at_ms.max(*at_ms);
                self.refresh_tokens.insert(*refresh_hash, session.clone());
            }
            Event::SessionRevoked { session, .. } => {
                let Some(state) = self.sessions.remove(session) else {
                    return;
                };
                self.refresh_tokens.remove(&state.refresh_hash);
                for rotated in &state.rotated {
                    self.refresh_tokens.remove(rotated);
                }
                if let Some(ids) = self.sessions_by_user.get_mut(&state.user) {
                    ids.retain(|id| id != session);
                    if ids.is_empty() {
                        self.sessions_by_user.remove(&state.user);
                    }
                }
            }
        }
    }

    /// Decides and applies in one step (for callers without a log, and tests).
    pub fn execute(&mut self, command: &Command) -> Result<Vec<Event>, AuthError> {
        let events = self.decide(command)?;
        for event in &events {
            self.apply(event);
        }
        Ok(events)
    }

    /// Combines the states of several shards into one (the first half of a reshard). Each user
    /// lives on one shard, so nothing should collide; if an id, username or session id does, the
    /// first part's wins. Each user's sessions keep their order, oldest first.
    pub fn merge(parts: Vec<AuthState>) -> AuthState {
        let mut merged = AuthState::new();
        for part in parts {
            let AuthState {
                users,
                by_username,
                mut sessions,
                sessions_by_user,
                refresh_tokens: _,
            } = part;
            for (id, user) in users {
                merged.users.entry(id).or_insert(user);
            }
            for (username, id) in by_username {
                merged.by_username.entry(username).or_insert(id);
            }
            for ids in sessions_by_user.into_values() {
                for id in ids {
                    if let Some(session) = sessions.remove(&id) {
                        merged.insert_session(session);
                    }
                }
            }
        }
        merged
    }

    /// Divides this state into `parts` states (the second half of a reshard): each user, with
    /// their sessions (in order) and refresh tokens, goes to part `owner(user id)`.
    ///
    /// Panics if `parts` is 0 or `owner` names a part out of range (a bug in the caller).
    pub fn split(self, owner: &dyn Fn(&UserId) -> usize, parts: usize) -> Vec<AuthState> {
        assert!(parts > 0, "an auth state split into no parts");
        let part_of = |user: &UserId| {
            let part = owner(user);
            assert!(part < parts, "owner named part {part} of {parts}");
            part
        };
        let AuthState {
            users,
            by_username,
            mut sessions,
            sessions_by_user,
            refresh_tokens: _,
        } = self;
        let mut split: Vec<AuthState> = (0..parts).map(|_| AuthState::new()).collect();
        for (id, user) in users {
            split[part_of(&id)].users.insert(id, user);
        }
        for (username, id) in by_username {
            split[part_of(&id)].by_username.insert(username, id);
        }
        for ids in sessions_by_user.into_values() {
            for id in ids {
                if let Some(session) = sessions.remove(&id) {
                    split[part_of(&session.user)].insert_session(session);
                }
            }
        }
        split
    }

    /// Adds a whole session (with its refresh tokens) after the user's others, unless its id is
    /// taken. Refresh tokens are rebuilt from the sessions rather than copied, so they always
    /// point at a live session that knows them.
    fn insert_session(&mut self, session: Session) {
        if self.sessions.contains_key(&session.id) {
            return;
        }
        for token in session.rotated.iter().chain([&session.refresh_hash]) {
            self.refresh_tokens
                .entry(*token)
                .or_insert_with(|| session.id.clone());
        }
        self.sessions_by_user
            .entry(session.user.clone())
            .or_default()
            .push(session.id.clone());
        self.sessions.insert(session.id.clone(), session);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::slots::Slot;

    fn user_id(name: &str, n: u8) -> UserId {
        UserId::new(Slot::of_username(name), [n; 10])
    }

    fn hash(n: u32) -> TokenHash {
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&n.to_be_bytes());
        hash
    }

    fn signup(state: &mut AuthState, name: &str, n: u8) -> UserId {
        let id = user_id(name, n);
        state
            .execute(&Command::CreateUser {
                id: id.clone(),
                username: name.to_string(),
                password_hash: "$argon2id$test".to_string(),
                now_ms: 1,
            })
            .unwrap();
        id
    }

    fn login(state: &mut AuthState, user: &UserId, session: &str, token: u32) {
        state
            .execute(&Command::CreateSession {
                user: user.clone(),
                session: session.to_string(),
                refresh_hash: hash(token),
                refresh_expires_at_ms: 1_000,
                now_ms: 10,
            })
            .unwrap();
    }

    fn refresh(
        state: &mut AuthState,
        presented: u32,
        replacement: u32,
        now_ms: u64,
    ) -> Result<Vec<Event>, AuthError> {
        state.execute(&Command::Refresh {
            presented: hash(presented),
            replacement: hash(replacement),
            refresh_expires_at_ms: now_ms + 1_000,
            now_ms,
        })
    }

    #[test]
    fn usernames_are_unique() {
        let mut state = AuthState::new();
        let alice = signup(&mut state, "alice", 1);
        assert_eq!(state.user_by_username("alice").unwrap().id, alice);
        let again = state.decide(&Command::CreateUser {
            id: user_id("alice", 2),
            username: "alice".into(),
            password_hash: String::new(),
            now_ms: 2,
        });
        assert_eq!(again, Err(AuthError::UsernameTaken));
    }

    #[test]
    fn refresh_rotates_and_reuse_revokes_the_session() {
        let mut state = AuthState::new();
        let alice = signup(&mut state, "alice", 1);
        login(&mut state, &alice, "ses_a", 100);
        assert!(matches!(
            refresh(&mut state, 100, 101, 20).unwrap()[..],
            [Event::SessionRefreshed { .. }]
        ));
        assert_eq!(state.session(&alice, "ses_a").unwrap().refresh_hash, hash(101));
        // The new token works once more.
        refresh(&mut state, 101, 102, 30).unwrap();
        // The first token comes back: the whole session is revoked...
        let events = refresh(&mut state, 100, 103, 40).unwrap();
        assert_eq!(
            events,
            vec![Event::SessionRevoked {
                session: "ses_a".into(),
                reason: RevokeReason::RefreshTokenReused
            }]
        );
        assert!(state.session(&alice, "ses_a").is_none());
        // ...including the token that was current.
        assert_eq!(
            refresh(&mut state, 102, 104, 50),
            Err(AuthError::InvalidRefreshToken)
        );
    }

    #[test]
    fn expired_and_unknown_refresh_tokens_fail() {
        let mut state = AuthState::new();
        let alice = signup(&mut state, "alice", 1);
        login(&mut state, &alice, "ses_a", 100);
        assert_eq!(
            refresh(&mut state, 100, 101, 1_000),
            Err(AuthError::InvalidRefreshToken)
        );
        assert_eq!(
            refresh(&mut state, 999, 101, 20),
            Err(AuthError::InvalidRefreshToken)
        );
    }

    #[test]
    fn logout_and_logout_everywhere() {
        let mut state = AuthState::new();
        let alice = signup(&mut state, "alice", 1);
        let bob = signup(&mut state, "bob", 2);
        login(&mut state, &alice, "ses_a1", 1);
        login(&mut state, &alice, "ses_a2", 2);
        login(&mut state, &bob, "ses_b", 3);
        // Bob cannot revoke Alice's session.
        assert_eq!(
            state.decide(&Command::RevokeSession {
                user: bob.clone(),
                session: "ses_a1".into()
            }),
            Err(AuthError::UnknownSession)
        );
        state
            .execute(&Command::RevokeSession {
                user: alice.clone(),
                session: "ses_a1".into(),
            })
            .unwrap();
        assert_eq!(state.sessions_of(&alice).len(), 1);
        assert_eq!(
            refresh(&mut state, 1, 10, 20),
            Err(AuthError::InvalidRefreshToken)
        );
        state
            .execute(&Command::RevokeAllSessions { user: alice.clone() })
            .unwrap();
        assert!(state.sessions_of(&alice).is_empty());
        assert_eq!(state.sessions_of(&bob).len(), 1);
        refresh(&mut state, 3, 30, 20).unwrap();
    }

    #[test]
    fn the_oldest_session_makes_room() {
        let mut state = AuthState::new();
        let alice = signup(&mut state, "alice", 1);
        for n in 0..SESSIONS_PER_USER_MAX as u32 + 1 {
            login(&mut state, &alice, &format!("ses_{n}"), n);
        }
        assert_eq!(state.sessions_of(&alice).len(), SESSIONS_PER_USER_MAX);
        assert!(state.session(&alice, "ses_0").is_none());
        assert!(state
            .session(&alice, &format!("ses_{SESSIONS_PER_USER_MAX}"))
            .is_some());
    }

    #[test]
    fn reuse_detection_remembers_a_bounded_history() {
        let mut state = AuthState::new();
        let alice = signup(&mut state, "alice", 1);
        login(&mut state, &alice, "ses_a", 0);
        for n in 0..ROTATED_TOKENS_PER_SESSION_MAX as u32 + 1 {
            refresh(&mut state, n, n + 1, 20).unwrap();
        }
        // Token 0 was forgotten: unknown, and the session survives.
        assert_eq!(
            refresh(&mut state, 0, 500, 30),
            Err(AuthError::InvalidRefreshToken)
        );
        assert!(state.session(&alice, "ses_a").is_some());
        // Token 1 is still remembered: reuse.
        assert!(matches!(
            refresh(&mut state, 1, 501, 30).unwrap()[..],
            [Event::SessionRevoked {
                reason: RevokeReason::RefreshTokenReused,
                ..
            }]
        ));
    }

    fn through_bincode(state: &AuthState) -> AuthState {
        let bytes = bincode::serialize(state).expect("an auth state serializes");
        bincode::deserialize(&bytes).expect("an auth state deserializes")
    }

    /// Users on `shards` shards by their slot, each with sessions, some refreshed, one revoked.
    fn populated(users: u8, shards: usize) -> (Vec<AuthState>, Vec<UserId>) {
        let mut states: Vec<AuthState> = (0..shards).map(|_| AuthState::new()).collect();
        let mut ids = Vec::new();
        for n in 0..users {
            let name = format!("user{n}");
            let shard = Slot::of_username(&name).shard(shards);
            let id = signup(&mut states[shard], &name, n);
            let token = u32::from(n) * 1_000;
            for session in 0..3 {
                login(
                    &mut states[shard],
                    &id,
                    &format!("ses_{n}_{session}"),
                    token + session,
                );
            }
            // The middle session rotates twice; the first is logged out.
            refresh(&mut states[shard], token + 1, token + 10, 20).unwrap();
            refresh(&mut states[shard], token + 10, token + 11, 30).unwrap();
            states[shard]
                .execute(&Command::RevokeSession {
                    user: id.clone(),
                    session: format!("ses_{n}_0"),
                })
                .unwrap();
            ids.push(id);
        }
        (states, ids)
    }

    #[test]
    fn a_snapshot_round_trips_through_bincode() {
        let (states, ids) = populated(6, 1);
        let state = &states[0];
        let copy = through_bincode(state);
        assert_eq!(&copy, state);
        assert_eq!(copy.sessions_of(&ids[0]), state.sessions_of(&ids[0]));
        assert_eq!(copy.user_by_username("user3").unwrap().id, ids[3]);
    }

    #[test]
    fn resharding_moves_each_user_with_their_sessions_and_tokens() {
        for new_shards in [1usize, 2, 3, 5] {
            for merge_first in [true, false] {
                let (old, ids) = populated(30, 2);
                let snapshot = |state: &AuthState| {
                    ids.iter()
                        .map(|id| {
                            let sessions: Vec<Session> = state.sessions_of(id).into_iter().cloned().collect();
                            (state.user(id).cloned(), sessions)
                        })
                        .collect::<Vec<_>>()
                };
                let whole = AuthState::merge(old.iter().map(through_bincode).collect());
                let before = snapshot(&whole);
                let owner = |user: &UserId| user.slot().shard(new_shards);
                let mut new: Vec<AuthState> = if merge_first {
                    whole.split(&owner, new_shards)
                } else {
                    let mut columns: Vec<Vec<AuthState>> = (0..new_shards).map(|_| Vec::new()).collect();
                    for state in old {
                        for (column, part) in columns.iter_mut().zip(state.split(&owner, new_shards)) {
                            column.push(part);
                        }
                    }
                    columns.into_iter().map(AuthState::merge).collect()
                };
                assert_eq!(new.len(), new_shards);
                for (n, id) in ids.iter().enumerate() {
                    let home = owner(id);
                    let name = format!("user{n}");
                    for (shard, state) in new.iter().enumerate() {
                        let found = state.user_by_username(&name).map(|u| u.id.clone());
                        assert_eq!(found.as_ref(), (shard == home).then_some(id), "{name} on {shard}");
                        assert_eq!(state.sessions_of(id).is_empty(), shard != home);
                    }
                    // The same user, the same sessions in the same order.
                    let after: Vec<Session> = new[home].sessions_of(id).into_iter().cloned().collect();
                    assert_eq!((new[home].user(id).cloned(), after), before[n].clone());
                    // The current token works; a rotated one still gives the session away.
                    let token = n as u32 * 1_000;
                    refresh(&mut new[home], token + 2, token + 500, 40).unwrap();
                    assert_eq!(
                        refresh(&mut new[home], token + 10, token + 501, 40).unwrap(),
                        vec![Event::SessionRevoked {
                            session: format!("ses_{n}_1"),
                            reason: RevokeReason::RefreshTokenReused
                        }]
                    );
                    assert_eq!(
                        refresh(&mut new[home], token + 11, token + 502, 40),
                        Err(AuthError::InvalidRefreshToken)
                    );
                    // The logged-out session stays logged out.
                    assert_eq!(
                        refresh(&mut new[home], token, token + 503, 40),
                        Err(AuthError::InvalidRefreshToken)
                    );
                    // The username is still taken where it lives now.
                    assert_eq!(
                        new[home].decide(&Command::CreateUser {
                            id: user_id(&name, 200),
                            username: name.clone(),
                            password_hash: String::new(),
                            now_ms: 50,
                        }),
                        Err(AuthError::UsernameTaken)
                    );
                }
            }
        }
    }

    /// Operations for the replay property.
    #[derive(Debug, Clone)]
    enum Op {
        Login(u8, u8),
        Refresh(u8),
        Revoke(u8, u8),
        RevokeAll(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 0u8..20).prop_map(|(u, t)| Op::Login(u, t)),
            (0u8..40).prop_map(Op::Refresh),
            (0u8..3, 0u8..20).prop_map(|(u, s)| Op::Revoke(u, s)),
            (0u8..3).prop_map(Op::RevokeAll),
        ]
    }

    proptest! {
        /// Replaying the log of events rebuilds the same state, and the indexes stay consistent:
        /// every refresh hash points at a live session that knows it.
        #[test]
        fn replay_rebuilds_the_same_state(ops in prop::collection::vec(op(), 0..60)) {
            let mut state = AuthState::new();
            let mut log = Vec::new();
            let users: Vec<UserId> = ["ann", "bob", "cid"]
                .iter()
                .enumerate()
                .map(|(n, name)| {
                    let id = user_id(name, n as u8);
                    log.extend(state.execute(&Command::CreateUser {
                        id: id.clone(),
                        username: name.to_string(),
                        password_hash: String::new(),
                        now_ms: 0,
                    }).unwrap());
                    id
                })
                .collect();
            let mut next_token = 1_000u32;
            for (step, op) in ops.iter().enumerate() {
                let now_ms = step as u64;
                let command = match op {
                    Op::Login(u, s) => Command::CreateSession {
                        user: users[*u as usize].clone(),
                        session: format!("ses_{u}_{s}_{step}"),
                        refresh_hash: hash({ next_token += 1; next_token }),
                        refresh_expires_at_ms: now_ms + 30,
                        now_ms,
                    },
                    Op::Refresh(a) => Command::Refresh {
                        presented: hash(1_000 + u32::from(*a)),
                        replacement: hash({ next_token += 1; next_token }),
                        refresh_expires_at_ms: now_ms + 30,
                        now_ms,
                    },
                    Op::Revoke(u, s) => Command::RevokeSession {
                        user: users[*u as usize].clone(),
                        session: format!("ses_{u}_{s}_{}", step.saturating_sub(1)),
                    },
                    Op::RevokeAll(u) => Command::RevokeAllSessions { user: users[*u as usize].clone() },
                };
                if let Ok(events) = state.execute(&command) {
                    log.extend(events);
                }
            }
            let mut replayed = AuthState::new();
            for event in &log {
                replayed.apply(event);
            }
            prop_assert_eq!(&replayed.users, &state.users);
            prop_assert_eq!(&replayed.sessions, &state.sessions);
            prop_assert_eq!(&replayed.refresh_tokens, &state.refresh_tokens);
            for (token, session) in &state.refresh_tokens {
                let live = &state.sessions[session];
                prop_assert!(live.refresh_hash == *token || live.rotated.contains(token));
            }
            for user in &users {
                prop_assert!(state.sessions_of(user).len() <= SESSIONS_PER_USER_MAX);
            }
        }
    }
}
