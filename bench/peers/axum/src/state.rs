//! The peer's whole state: users, sessions, balances, payments and idempotency answers in plain
//! `HashMap`s, kept behind the ONE `Mutex` in `App`. Everything here runs with that lock held.
//!
//! It must never read the clock, draw random numbers, hash passwords or do I/O: callers pass ids
//! and timestamps in, so the lock is held only for map work. Nothing expires and nothing is
//! written anywhere: a restart forgets everything.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::http::StatusCode;

/// The currencies accepted, as shardpay's default configuration has them.
pub const CURRENCIES: [&str; 4] = ["USD", "EUR", "GBP", "JPY"];

/// A signed-up user.
pub struct User {
    /// `usr_` + 24 hex digits.
    pub id: String,
    /// Case-folded username.
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Available balance per currency ever held; sorted, as `GET /v1/balances` lists them.
    pub balances: BTreeMap<&'static str, u64>,
    /// Ids of the payments sent and received, oldest first.
    pub payments: Vec<String>,
}

/// A login session; deleting it revokes its access tokens at once.
pub struct Session {
    /// The user the session belongs to.
    pub user_id: String,
}

/// A payment, as the payment object shows it.
#[derive(Clone)]
pub struct Payment {
    /// `pay_` + 24 hex digits.
    pub id: String,
    /// Payer's user id.
    pub from: String,
    /// Payee's user id.
    pub to: String,
    /// Minor units.
    pub amount: u64,
    /// One of [`CURRENCIES`].
    pub currency: &'static str,
    /// Free text, at most 200 characters.
    pub description: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A payment asked for, with its id and time already drawn; the payee is not resolved yet.
pub struct PaymentOrder {
    /// `pay_` + 24 hex digits.
    pub id: String,
    /// Payee: a user id or a username.
    pub to: String,
    /// Minor units, already checked to be in 1..=`limits::AMOUNT_MAX`.
    pub amount: u64,
    /// One of [`CURRENCIES`].
    pub currency: &'static str,
    /// Free text, already checked.
    pub description: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// Who an idempotency key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The admin API key (deposits).
    Admin,
    /// A user, by id (payments).
    User(String),
}

/// The final answer stored under an idempotency key.
#[derive(Clone)]
pub struct StoredAnswer {
    /// SHA-256 over the request line and the body.
    pub fingerprint: [u8; 32],
    /// The status sent.
    pub status: StatusCode,
    /// The body sent, byte for byte.
    pub body: Bytes,
}

/// What an idempotency key says about a request.
pub enum KeyCheck {
    /// Never used: execute the request and store its answer.
    Fresh,
    /// Used with the same request: send this answer again.
    Replay(StoredAnswer),
    /// Used with another request.
    Reused,
}

/// Why the state refused a command; each maps to one contract error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The username belongs to someone else.
    UsernameTaken,
    /// A freshly drawn id is already in use (96 random bits: never in practice).
    IdCollision,
    /// A deposit names a user who does not exist.
    UserNotFound,
    /// A payment names a payee who does not exist.
    PayeeNotFound,
    /// Payer and payee are the same user.
    SelfPayment,
    /// The payer's balance is below the amount.
    InsufficientFunds,
    /// The credit would overflow the receiver's balance.
    BalanceOverflow,
    /// `starting_after` is not one of the user's payments.
    UnknownCursor,
}

/// All of it. Maps start empty and grow without bound (no expiry, no cap): a benchmark peer.
#[derive(Default)]
pub struct State {
    users: HashMap<String, User>,
    user_ids_by_username: HashMap<String, String>,
    sessions: HashMap<String, Session>,
    payments: HashMap<String, Payment>,
    idempotency: HashMap<(Scope, String), StoredAnswer>,
}

impl State {
    /// Adds a user whose username is free.
    pub fn create_user(&mut self, user: User) -> Result<&User, Refusal> {
        if self.user_ids_by_username.contains_key(&user.username) {
            return Err(Refusal::UsernameTaken);
        }
        if self.users.contains_key(&user.id) {
            return Err(Refusal::IdCollision);
        }
        let id = user.id.clone();
        self.user_ids_by_username
            .insert(user.username.clone(), id.clone());
        Ok(self.users.entry(id).or_insert(user))
    }

    /// The user id and password hash stored for a username.
    pub fn credentials(&self, username: &str) -> Option<(String, String)> {
        let id = self.user_ids_by_username.get(username)?;
        let user = self.users.get(id)?;
        Some((user.id.clone(), user.password_hash.clone()))
    }

    /// Opens a session under a freshly drawn id.
    pub fn create_session(&mut self, session_id: String, session: Session) -> Result<(), Refusal> {
        if self.sessions.contains_key(&session_id) {
            return Err(Refusal::IdCollision);
        }
        self.sessions.insert(session_id, session);
        Ok(())
    }

    /// The user of a live session, if the session exists and belongs to `user_id`.
    pub fn session_user(&self, session_id: &str, user_id: &str) -> Option<&User> {
        self.sessions
            .get(session_id)
            .filter(|session| session.user_id == user_id)
            .and_then(|session| self.users.get(&session.user_id))
    }

    /// What `key` of `scope` says about a request with `fingerprint`.
    pub fn check_key(&self, scope: &Scope, key: &str, fingerprint: &[u8; 32]) -> KeyCheck {
        // The tuple key needs owned parts; one clone per idempotent request is the plain way.
        match self.idempotency.get(&(scope.clone(), key.to_string())) {
            None => KeyCheck::Fresh,
            Some(stored) if &stored.fingerprint == fingerprint => KeyCheck::Replay(stored.clone()),
            Some(_) => KeyCheck::Reused,
        }
    }

    /// Stores the final answer to a request under its key.
    pub fn store_answer(&mut self, scope: Scope, key: String, answer: StoredAnswer) {
        let previous = self.idempotency.insert((scope, key), answer);
        assert!(previous.is_none(), "an idempotency key is answered once");
    }

    /// Credits `amount` of `currency` to a user.
    pub fn deposit(&mut self, user_id: &str, amount: u64, currency: &'static str) -> Result<(), Refusal> {
        let user = self.users.get_mut(user_id).ok_or(Refusal::UserNotFound)?;
        let balance = user.balances.entry(currency).or_insert(0);
        *balance = balance.checked_add(amount).ok_or(Refusal::BalanceOverflow)?;
        Ok(())
    }

    /// Moves money from `payer` to the payee the order names and records the payment.
    pub fn pay(&mut self, payer: &str, order: PaymentOrder) -> Result<&Payment, Refusal> {
        let payee = self.resolve(&order.to).ok_or(Refusal::PayeeNotFound)?;
        if payee == payer {
            return Err(Refusal::SelfPayment);
        }
        if self.payments.contains_key(&order.id) {
            return Err(Refusal::IdCollision);
        }
        let available = self.balance(payer, order.currency);
        if available < order.amount {
            return Err(Refusal::InsufficientFunds);
        }
        let received = self
            .balance(&payee, order.currency)
            .checked_add(order.amount)
            .ok_or(Refusal::BalanceOverflow)?;
        // Every check passed: from here on nothing can fail, so the books stay balanced.
        let payer_user = self.users.get_mut(payer).expect("the payer is authenticated");
        payer_user
            .balances
            .insert(order.currency, available - order.amount);
        payer_user.payments.push(order.id.clone());
        let payee_user = self.users.get_mut(&payee).expect("the payee was just resolved");
        payee_user.balances.insert(order.currency, received);
        payee_user.payments.push(order.id.clone());
        let payment = Payment {
            id: order.id,
            from: payer.to_string(),
            to: payee,
            amount: order.amount,
            currency: order.currency,
            description: order.description,
            created_at: order.created_at,
        };
        Ok(self.payments.entry(payment.id.clone()).or_insert(payment))
    }

    /// A user's balances, sorted by currency.
    pub fn balances(&self, user_id: &str) -> Vec<(&'static str, u64)> {
        self.users
            .get(user_id)
            .map(|user| user.balances.iter().map(|(c, a)| (*c, *a)).collect())
            .unwrap_or_default()
    }

    /// Up to `limit` of a user's payments, newest first, older than `starting_after`, and whether
    /// there are more.
    pub fn payments_page(
        &self,
        user_id: &str,
        starting_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Payment>, bool), Refusal> {
        let Some(user) = self.users.get(user_id) else {
            return Ok((Vec::new(), false));
        };
        let end = match starting_after {
            Some(cursor) => user
                .payments
                .iter()
                .position(|id| id == cursor)
                .ok_or(Refusal::UnknownCursor)?,
            None => user.payments.len(),
        };
        let page: Vec<Payment> = user.payments[..end]
            .iter()
            .rev()
            .take(limit)
            .filter_map(|id| self.payments.get(id).cloned())
            .collect();
        let has_more = end > page.len();
        Ok((page, has_more))
    }

    /// A payee by user id, else by (case-folded) username.
    fn resolve(&self, to: &str) -> Option<String> {
        if self.users.contains_key(to) {
            return Some(to.to_string());
        }
        self.user_ids_by_username.get(&to.to_ascii_lowercase()).cloned()
    }

    fn balance(&self, user_id: &str, currency: &str) -> u64 {
        self.users
            .get(user_id)
            .and_then(|user| user.balances.get(currency).copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, username: &str) -> User {
        User {
            id: id.to_string(),
            username: username.to_string(),
            password_hash: String::new(),
            created_at: String::new(),
            balances: BTreeMap::new(),
            payments: Vec::new(),
        }
    }

    fn order(id: &str, to: &str, amount: u64) -> PaymentOrder {
        PaymentOrder {
            id: id.to_string(),
            to: to.to_string(),
            amount,
            currency: "USD",
            description: None,
            created_at: String::new(),
        }
    }

    #[test]
    fn payments_move_money_and_list_newest_first() {
        let mut state = State::default();
        state.create_user(user("usr_a", "alice")).unwrap();
        state.create_user(user("usr_b", "bob")).unwrap();
        assert_eq!(
            state.create_user(user("usr_c", "alice")).err(),
            Some(Refusal::UsernameTaken)
        );
        state.deposit("usr_a", 100, "USD").unwrap();
        assert_eq!(
            state.pay("usr_a", order("pay_1", "nobody", 1)).err(),
            Some(Refusal::PayeeNotFound)
        );
        assert_eq!(
            state.pay("usr_a", order("pay_1", "ALICE", 1)).err(),
            Some(Refusal::SelfPayment)
        );
        assert_eq!(
            state.pay("usr_a", order("pay_1", "bob", 101)).err(),
            Some(Refusal::InsufficientFunds)
        );
        state.pay("usr_a", order("pay_1", "Bob", 60)).unwrap();
        state.pay("usr_a", order("pay_2", "usr_b", 40)).unwrap();
        assert_eq!(state.balances("usr_a"), vec![("USD", 0)]);
        assert_eq!(state.balances("usr_b"), vec![("USD", 100)]);
        let (page, more) = state.payments_page("usr_b", None, 1).unwrap();
        assert_eq!((page[0].id.as_str(), more), ("pay_2", true));
        let (page, more) = state.payments_page("usr_b", Some("pay_2"), 1).unwrap();
        assert_eq!((page[0].id.as_str(), more), ("pay_1", false));
        assert_eq!(
            state.payments_page("usr_b", Some("pay_9"), 1).err(),
            Some(Refusal::UnknownCursor)
        );
    }

    #[test]
    fn balances_never_overflow() {
        let mut state = State::default();
        state.create_user(user("usr_a", "alice")).unwrap();
        state.deposit("usr_a", u64::MAX, "EUR").unwrap();
        assert_eq!(state.deposit("usr_a", 1, "EUR"), Err(Refusal::BalanceOverflow));
        assert_eq!(state.deposit("usr_x", 1, "EUR"), Err(Refusal::UserNotFound));
    }
}
