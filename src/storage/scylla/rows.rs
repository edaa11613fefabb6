//! A shard's state as rows of the ScyllaDB tables ([`super::schema`]): which rows a frame of
//! records touches ([`keys_of`]), their current values read from the state ([`writes_of`]), the
//! statement that writes each ([`Statements`]), and a shard's slots loaded back ([`load`]).
//!
//! Rows are written with their values *at the end of a batch*: the writer collects the keys a
//! batch's frames touched (before each frame applies, when for instance a revoked session's
//! owner is still known), and when it cuts the batch — synchronously, so no later frame has
//! been applied — reads each key's current value and sends them all as one logged batch. The
//! database therefore always holds the state after some batch, whole: a payment's debit
//! never without its credit. Values are absolute (a balance, not a difference), so a retried
//! batch writes the same thing again; a key whose state is gone (a revoked session, a settled
//! transfer, a released idempotency key) becomes a delete.

use std::collections::HashMap;
use std::hash::Hash;

use futures_lite::StreamExt;
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::DbError;
use crate::auth::state::{AuthState, Session as AuthSession, TokenHash, User};
use crate::payments::idempotency::{Change, Fingerprint, Scope, Store};
use crate::payments::ledger::{Currency, Event as LedgerEvent, Ledger, LedgerRows, Payment, Transfer};
use crate::slots::{Slot, UserId};
use crate::storage::{Record, StateView};

/// A row a record touched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RowKey {
    /// `users` and `credentials`.
    User(UserId),
    /// `sessions` and the session's `refresh_families` rows.
    Session {
        /// Owner.
        user: UserId,
        /// Session id.
        session: String,
    },
    /// `accounts`.
    Account {
        /// Owner.
        user: UserId,
        /// Currency.
        currency: Currency,
    },
    /// `payments`, in the slot of one party.
    Payment {
        /// The party whose slot holds the row.
        party: UserId,
        /// Payment id.
        payment: String,
    },
    /// `ledger_entries`: one entry of a user's payment history.
    History {
        /// Whose history.
        user: UserId,
        /// Payment id.
        payment: String,
    },
    /// `deposits`.
    Deposit {
        /// Recipient.
        user: UserId,
        /// Deposit id.
        deposit: String,
    },
    /// `refunds`.
    Refund {
        /// The payee who refunded.
        user: UserId,
        /// Refund id.
        refund: String,
        /// Payment refunded.
        payment: String,
        /// Minor units.
        amount: u64,
    },
    /// `outbox`.
    Outbox {
        /// Whose debit the credit carries.
        sender: UserId,
        /// Transfer id.
        transfer: String,
    },
    /// `received_transfers`.
    Received {
        /// The user credited.
        user: UserId,
        /// Transfer id.
        transfer: String,
    },
    /// `idempotency_keys`.
    Idempotency {
        /// Whose key.
        scope: Scope,
        /// The key.
        key: String,
    },
}

/// The rows `records` will change, read against the state before they apply.
pub fn keys_of(records: &[Record], state: &StateView<'_>, keys: &mut impl Extend<RowKey>) {
    use crate::auth::state::Event as AuthEvent;
    for record in records {
        match record {
            Record::Auth(AuthEvent::UserCreated(user)) => keys.extend([RowKey::User(user.id.clone())]),
            Record::Auth(AuthEvent::SessionCreated { user, session, .. }) => keys.extend([RowKey::Session {
                user: user.clone(),
                session: session.clone(),
            }]),
            Record::Auth(
                AuthEvent::SessionRefreshed { session, .. } | AuthEvent::SessionRevoked { session, .. },
            ) => {
                if let Some(user) = state.auth.session_owner(session) {
                    keys.extend([RowKey::Session {
                        user: user.clone(),
                        session: session.clone(),
                    }]);
                }
            }
            Record::Ledger(event) => ledger_keys(event, state.ledger, keys),
            Record::Idempotency(
                Change::Claimed { scope, key, .. }
                | Change::Completed { scope, key, .. }
                | Change::Released { scope, key },
            ) => keys.extend([RowKey::Idempotency {
                scope: scope.clone(),
                key: key.clone(),
            }]),
            Record::Pending { transfer, scope, .. } => {
                if let Scope::User(sender) = scope {
                    keys.extend([RowKey::Outbox {
                        sender: sender.clone(),
                        transfer: transfer.clone(),
                    }]);
                }
            }
        }
    }
}

fn ledger_keys(event: &LedgerEvent, ledger: &Ledger, keys: &mut impl Extend<RowKey>) {
    let account = |user: &UserId, currency: Currency| RowKey::Account {
        user: user.clone(),
        currency,
    };
    let payment_row = |party: &UserId, payment: &str| RowKey::Payment {
        party: party.clone(),
        payment: payment.to_string(),
    };
    let history = |user: &UserId, payment: &str| RowKey::History {
        user: user.clone(),
        payment: payment.to_string(),
    };
    match event {
        LedgerEvent::Deposited {
            id, user, currency, ..
        } => keys.extend([
            RowKey::Deposit {
                user: user.clone(),
                deposit: id.clone(),
            },
            account(user, *currency),
        ]),
        LedgerEvent::PaidLocally(payment) => keys.extend([
            account(&payment.from, payment.currency),
            account(&payment.to, payment.currency),
            payment_row(&payment.from, &payment.id),
            payment_row(&payment.to, &payment.id),
            history(&payment.from, &payment.id),
            history(&payment.to, &payment.id),
        ]),
        LedgerEvent::Reserved(transfer) => {
            if let Transfer::Payment(payment) = transfer {
                keys.extend([
                    account(&payment.from, payment.currency),
                    payment_row(&payment.from, &payment.id),
                    history(&payment.from, &payment.id),
                    RowKey::Outbox {
                        sender: payment.from.clone(),
                        transfer: payment.id.clone(),
                    },
                ]);
            }
        }
        LedgerEvent::Received(transfer) => {
            let received = |user: &UserId| RowKey::Received {
                user: user.clone(),
                transfer: transfer.id().to_string(),
            };
            match transfer {
                Transfer::Payment(payment) => keys.extend([
                    account(&payment.to, payment.currency),
                    payment_row(&payment.to, &payment.id),
                    history(&payment.to, &payment.id),
                    received(&payment.to),
                ]),
                Transfer::Refund {
                    payment,
                    to,
                    currency,
                    ..
                } => keys.extend([account(to, *currency), payment_row(to, payment), received(to)]),
            }
        }
        LedgerEvent::Settled { transfer } => {
            if let Some((_, sender, _)) = ledger.outgoing(transfer) {
                keys.extend([RowKey::Outbox {
                    sender: sender.clone(),
                    transfer: transfer.clone(),
                }]);
            }
        }
        LedgerEvent::RefundedLocally {
            refund,
            payment,
            amount,
        } => {
            if let Some((paid, _, _)) = ledger.held(payment) {
                keys.extend([
                    account(&paid.to, paid.currency),
                    account(&paid.from, paid.currency),
                    payment_row(&paid.from, payment),
                    payment_row(&paid.to, payment),
                    RowKey::Refund {
                        user: paid.to.clone(),
                        refund: refund.clone(),
                        payment: payment.clone(),
                        amount: *amount,
                    },
                ]);
            }
        }
        LedgerEvent::RefundReserved {
            refund,
            payment,
            amount,
            transfer,
        } => {
            if let Some((paid, _, _)) = ledger.held(payment) {
                keys.extend([
                    account(&paid.to, paid.currency),
                    payment_row(&paid.to, payment),
                    RowKey::Refund {
                        user: paid.to.clone(),
                        refund: refund.clone(),
                        payment: payment.clone(),
                        amount: *amount,
                    },
                    RowKey::Outbox {
                        sender: paid.to.clone(),
                        transfer: transfer.id().to_string(),
                    },
                ]);
            }
        }
    }
}

/// The keys a shard's frames touched since its writer's last cut.
pub type Touched = std::rc::Rc<std::cell::RefCell<std::collections::HashSet<RowKey>>>;

/// The [`Log`](crate::storage::Log) of a shard on the ScyllaDB store: an append takes the next
/// sequence number of the journal (in [`Mode::External`](crate::storage::journal::Mode)), and
/// the rows each frame touches are noted for the writer.
pub struct RowLog {
    /// Sequence numbers and durability.
    pub journal: std::rc::Rc<crate::storage::journal::Journal>,
    /// Shared with the writer.
    pub touched: Touched,
}

impl crate::storage::Log for RowLog {
    fn append(&mut self, records: &[Record]) {
        self.journal.append(records);
    }

    fn before_apply(&mut self, records: &[Record], state: &StateView<'_>) {
        keys_of(records, state, &mut *self.touched.borrow_mut());
    }
}

/// Where the writer reads the current values of the rows (a shard's `Home`).
pub trait StateSource {
    /// Users and sessions.
    fn auth(&self) -> &AuthState;
    /// Money.
    fn ledger(&self) -> &Ledger;
    /// Idempotency keys.
    fn idempotency(&self) -> &Store;
    /// The answer waiting for a transfer's acknowledgement: scope, key, body.
    fn pending_answer(&self, transfer: &str) -> Option<(&Scope, &str, &[u8])>;
}

/// A statement of [`Statements`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stmt {
    /// Upsert `users`.
    User,
    /// Upsert `credentials`.
    Credential,
    /// Upsert `sessions` (TTL).
    Session,
    /// Delete a `sessions` row.
    SessionDelete,
    /// Delete a session's `refresh_families` rows.
    FamilyDelete,
    /// Insert a `refresh_families` row (TTL), after the family's delete.
    FamilyRow,
    /// Upsert `accounts`.
    Account,
    /// Upsert `payments`.
    Payment,
    /// Upsert `ledger_entries`.
    History,
    /// Upsert `deposits`.
    Deposit,
    /// Upsert `refunds`.
    Refund,
    /// Upsert `outbox`.
    Outbox,
    /// Delete an `outbox` row.
    OutboxDelete,
    /// Upsert `received_transfers`.
    Received,
    /// Upsert `idempotency_keys` (TTL).
    Key,
    /// Delete an `idempotency_keys` row.
    KeyDelete,
}

impl Stmt {
    const ALL: [Stmt; 16] = [
        Stmt::User,
        Stmt::Credential,
        Stmt::Session,
        Stmt::SessionDelete,
        Stmt::FamilyDelete,
        Stmt::FamilyRow,
        Stmt::Account,
        Stmt::Payment,
        Stmt::History,
        Stmt::Deposit,
        Stmt::Refund,
        Stmt::Outbox,
        Stmt::OutboxDelete,
        Stmt::Received,
        Stmt::Key,
        Stmt::KeyDelete,
    ];

    /// The CQL, for keyspace `ks`. Upserts end with `USING [TTL ? AND] TIMESTAMP ?`; deletes
    /// start their values with the timestamp (`USING TIMESTAMP ?` precedes `WHERE`).
    fn cql(self, ks: &str) -> String {
        match self {
            Stmt::User => format!("INSERT INTO {ks}.users (slot, user_id, username, created_at_ms) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
            Stmt::Credential => format!("INSERT INTO {ks}.credentials (slot, user_id, password_hash) VALUES (?, ?, ?) USING TIMESTAMP ?"),
            Stmt::Session => format!("INSERT INTO {ks}.sessions (slot, user_id, session_id, created_at_ms, refresh_hash, refresh_expires_at_ms) VALUES (?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"),
            Stmt::SessionDelete => format!("DELETE FROM {ks}.sessions USING TIMESTAMP ? WHERE slot = ? AND user_id = ? AND session_id = ?"),
            Stmt::FamilyDelete => format!("DELETE FROM {ks}.refresh_families USING TIMESTAMP ? WHERE slot = ? AND session_id = ?"),
            Stmt::FamilyRow => format!("INSERT INTO {ks}.refresh_families (slot, session_id, position, token_hash) VALUES (?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"),
            Stmt::Account => format!("INSERT INTO {ks}.accounts (slot, user_id, currency, balance) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
            Stmt::Payment => format!("INSERT INTO {ks}.payments (slot, payment_id, payer, payee, amount, currency, description, amount_refunded, created_at_ms, payer_side, payee_side) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
            Stmt::History => format!("INSERT INTO {ks}.ledger_entries (slot, user_id, seq, kind, reference, amount, currency, at_ms) VALUES (?, ?, ?, 'payment', ?, ?, ?, ?) USING TIMESTAMP ?"),
            Stmt::Deposit => format!("INSERT INTO {ks}.deposits (slot, deposit_id, user_id, amount, currency) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"),
            Stmt::Refund => format!("INSERT INTO {ks}.refunds (slot, refund_id, payment_id, amount) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"),
            Stmt::Outbox => format!("INSERT INTO {ks}.outbox (slot, transfer_id, seq, sender, transfer, answer_scope, answer_key, answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"),
            Stmt::OutboxDelete => format!("DELETE FROM {ks}.outbox USING TIMESTAMP ? WHERE slot = ? AND transfer_id = ?"),
            Stmt::Received => format!("INSERT INTO {ks}.received_transfers (slot, transfer_id, user_id) VALUES (?, ?, ?) USING TIMESTAMP ?"),
            Stmt::Key => format!("INSERT INTO {ks}.idempotency_keys (slot, scope, key, fingerprint, status, answer, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"),
            Stmt::KeyDelete => format!("DELETE FROM {ks}.idempotency_keys USING TIMESTAMP ? WHERE slot = ? AND scope = ? AND key = ?"),
        }
    }

    fn is_delete(self) -> bool {
        matches!(
            self,
            Stmt::SessionDelete | Stmt::FamilyDelete | Stmt::OutboxDelete | Stmt::KeyDelete
        )
    }
}

/// One statement with its values (without the TTL and timestamp, which the writer adds).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Which statement.
    pub stmt: Stmt,
    /// Its values, in order; `None` is null.
    pub values: Vec<Option<CqlValue>>,
    /// Seconds to live, for the statements that take one.
    pub ttl: Option<i32>,
}

fn slot_value(user: &UserId) -> Option<CqlValue> {
    Some(CqlValue::Int(user.slot().number() as i32))
}

fn text(value: &str) -> Option<CqlValue> {
    Some(CqlValue::Text(value.to_string()))
}

fn bigint(value: u64) -> Option<CqlValue> {
    // Amounts, times and positions fit: amounts are capped far below 2^63.
    Some(CqlValue::BigInt(value.min(i64::MAX as u64) as i64))
}

fn blob(value: &[u8]) -> Option<CqlValue> {
    Some(CqlValue::Blob(value.to_vec()))
}

/// The text form of a scope in `idempotency_keys` and `outbox`.
pub fn scope_text(scope: &Scope) -> &str {
    match scope {
        Scope::User(user) => user.as_str(),
        Scope::Admin => "admin",
    }
}

fn scope_of(text: &str) -> Option<Scope> {
    if text == "admin" {
        Some(Scope::Admin)
    } else {
        UserId::parse(text).map(Scope::User)
    }
}

/// The slot of an idempotency key's row: its user's, or for the admin's keys the key's own.
pub fn key_slot(scope: &Scope, key: &str) -> Slot {
    match scope {
        Scope::User(user) => user.slot(),
        Scope::Admin => Slot::of_bytes(key.as_bytes()),
    }
}

/// Seconds until `at_ms`, at least 1 (a TTL of 0 would mean "forever").
fn ttl_until(at_ms: u64, now_ms: u64) -> i32 {
    (at_ms.saturating_sub(now_ms).div_ceil(1000)).clamp(1, i32::MAX as u64) as i32
}

/// The statements that store the current value of each of `keys` (or delete what is gone).
pub fn writes_of<'a>(
    keys: impl IntoIterator<Item = &'a RowKey>,
    state: &impl StateSource,
    now_ms: u64,
) -> Vec<Write> {
    let mut writes = Vec::new();
    let mut push = |stmt: Stmt, values: Vec<Option<CqlValue>>, ttl: Option<i32>| {
        writes.push(Write { stmt, values, ttl })
    };
    for key in keys {
        match key {
            RowKey::User(id) => {
                if let Some(user) = state.auth().user(id) {
                    push(
                        Stmt::User,
                        vec![
                            slot_value(id),
                            text(id.as_str()),
                            text(&user.username),
                            bigint(user.created_at_ms),
                        ],
                        None,
                    );
                    push(
                        Stmt::Credential,
                        vec![slot_value(id), text(id.as_str()), text(&user.password_hash)],
                        None,
                    );
                }
            }
            RowKey::Session { user, session } => match state.auth().session(user, session) {
                Some(live) => {
                    let ttl = ttl_until(live.refresh_expires_at_ms, now_ms);
                    push(
                        Stmt::Session,
                        vec![
                            slot_value(user),
                            text(user.as_str()),
                            text(session),
                            bigint(live.created_at_ms),
                            blob(&live.refresh_hash),
                            bigint(live.refresh_expires_at_ms),
                        ],
                        Some(ttl),
                    );
                    push(Stmt::FamilyDelete, vec![slot_value(user), text(session)], None);
                    for (position, hash) in live.rotated().enumerate() {
                        push(
                            Stmt::FamilyRow,
                            vec![
                                slot_value(user),
                                text(session),
                                Some(CqlValue::Int(position as i32)),
                                blob(hash),
                            ],
                            Some(ttl),
                        );
                    }
                }
                None => {
                    push(
                        Stmt::SessionDelete,
                        vec![slot_value(user), text(user.as_str()), text(session)],
                        None,
                    );
                    push(Stmt::FamilyDelete, vec![slot_value(user), text(session)], None);
                }
            },
            RowKey::Account { user, currency } => push(
                Stmt::Account,
                vec![
                    slot_value(user),
                    text(user.as_str()),
                    text(currency.as_str()),
                    bigint(state.ledger().balance(user, *currency)),
                ],
                None,
            ),
            RowKey::Payment { party, payment } => {
                if let Some((paid, payer_side, payee_side)) = state.ledger().held(payment) {
                    let slot = party.slot();
                    push(
                        Stmt::Payment,
                        vec![
                            slot_value(party),
                            text(payment),
                            text(paid.from.as_str()),
                            text(paid.to.as_str()),
                            bigint(paid.amount),
                            text(paid.currency.as_str()),
                            paid.description.as_deref().and_then(text),
                            bigint(paid.amount_refunded),
                            bigint(paid.created_at_ms),
                            Some(CqlValue::Boolean(payer_side && paid.from.slot() == slot)),
                            Some(CqlValue::Boolean(payee_side && paid.to.slot() == slot)),
                        ],
                        None,
                    );
                }
            }
            RowKey::History { user, payment } => {
                let ledger = state.ledger();
                if let (Some(position), Some((paid, _, _))) =
                    (ledger.history_position(user, payment), ledger.held(payment))
                {
                    push(
                        Stmt::History,
                        vec![
                            slot_value(user),
                            text(user.as_str()),
                            bigint(position as u64),
                            text(payment),
                            bigint(paid.amount),
                            text(paid.currency.as_str()),
                            bigint(paid.created_at_ms),
                        ],
                        None,
                    );
                }
            }
            RowKey::Deposit { user, deposit } => {
                if let Some((recipient, amount, currency)) = state.ledger().deposit(deposit) {
                    push(
                        Stmt::Deposit,
                        vec![
                            slot_value(user),
                            text(deposit),
                            text(recipient.as_str()),
                            bigint(amount),
                            text(currency.as_str()),
                        ],
                        None,
                    );
                }
            }
            RowKey::Refund {
                user,
                refund,
                payment,
                amount,
            } => push(
                Stmt::Refund,
                vec![slot_value(user), text(refund), text(payment), bigint(*amount)],
                None,
            ),
            RowKey::Outbox { sender, transfer } => match state.ledger().outgoing(transfer) {
                Some((sequence, owner, outgoing)) => {
                    let encoded = bincode::serialize(outgoing).expect("a transfer serializes");
                    let answer = state.pending_answer(transfer);
                    push(
                        Stmt::Outbox,
                        vec![
                            slot_value(sender),
                            text(transfer),
                            bigint(sequence),
                            text(owner.as_str()),
                            blob(&encoded),
                            answer.and_then(|(scope, _, _)| text(scope_text(scope))),
                            answer.and_then(|(_, key, _)| text(key)),
                            answer.and_then(|(_, _, body)| blob(body)),
                        ],
                        None,
                    );
                }
                None => push(Stmt::OutboxDelete, vec![slot_value(sender), text(transfer)], None),
            },
            RowKey::Received { user, transfer } => {
                if state.ledger().received_by(transfer).is_some() {
                    push(
                        Stmt::Received,
                        vec![slot_value(user), text(transfer), text(user.as_str())],
                        None,
                    );
                }
            }
            RowKey::Idempotency { scope, key } => {
                let slot = Some(CqlValue::Int(key_slot(scope, key).number() as i32));
                match state.idempotency().entry(scope, key) {
                    Some((fingerprint, answer, expires_at_ms)) => push(
                        Stmt::Key,
                        vec![
                            slot,
                            text(scope_text(scope)),
                            text(key),
                            blob(fingerprint),
                            Some(CqlValue::Int(answer.map_or(0, |(status, _)| i32::from(status)))),
                            answer.and_then(|(_, body)| blob(body)),
                            bigint(expires_at_ms),
                        ],
                        Some(ttl_until(expires_at_ms, now_ms)),
                    ),
                    None => push(
                        Stmt::KeyDelete,
                        vec![slot, text(scope_text(scope)), text(key)],
                        None,
                    ),
                }
            }
        }
    }
    writes
}

/// The prepared statements of one keyspace.
pub struct Statements {
    writes: HashMap<Stmt, PreparedStatement>,
    reads: HashMap<Table, PreparedStatement>,
}

/// A table [`load`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Table {
    Users,
    Credentials,
    Sessions,
    Families,
    Accounts,
    Payments,
    History,
    Deposits,
    Refunds,
    Outbox,
    Received,
    Keys,
}

impl Table {
    const ALL: [Table; 12] = [
        Table::Users,
        Table::Credentials,
        Table::Sessions,
        Table::Families,
        Table::Accounts,
        Table::Payments,
        Table::History,
        Table::Deposits,
        Table::Refunds,
        Table::Outbox,
        Table::Received,
        Table::Keys,
    ];

    fn cql(self, ks: &str) -> String {
        let (columns, table) = match self {
            Table::Users => ("user_id, username, created_at_ms", "users"),
            Table::Credentials => ("user_id, password_hash", "credentials"),
            Table::Sessions => (
                "user_id, session_id, created_at_ms, refresh_hash, refresh_expires_at_ms",
                "sessions",
            ),
            Table::Families => ("session_id, position, token_hash", "refresh_families"),
            Table::Accounts => ("user_id, currency, balance", "accounts"),
            Table::Payments => (
                "payment_id, payer, payee, amount, currency, description, amount_refunded, created_at_ms, payer_side, payee_side",
                "payments",
            ),
            Table::History => ("user_id, seq, reference", "ledger_entries"),
            Table::Deposits => ("deposit_id, user_id, amount, currency", "deposits"),
            Table::Refunds => ("refund_id", "refunds"),
            Table::Outbox => (
                "transfer_id, seq, sender, transfer, answer_scope, answer_key, answer",
                "outbox",
            ),
            Table::Received => ("transfer_id, user_id", "received_transfers"),
            Table::Keys => (
                "scope, key, fingerprint, status, answer, expires_at_ms",
                "idempotency_keys",
            ),
        };
        format!("SELECT {columns} FROM {ks}.{table} WHERE slot IN ?")
    }
}

impl Statements {
    /// Prepares every statement for keyspace `ks`.
    pub async fn prepare(session: &Session, ks: &str) -> Result<Statements, DbError> {
        let mut writes = HashMap::new();
        for stmt in Stmt::ALL {
            writes.insert(stmt, prepare_one(session, stmt.cql(ks)).await?);
        }
        let mut reads = HashMap::new();
        for table in Table::ALL {
            reads.insert(table, prepare_one(session, table.cql(ks)).await?);
        }
        Ok(Statements { writes, reads })
    }
}

async fn prepare_one(session: &Session, cql: String) -> Result<PreparedStatement, DbError> {
    session
        .prepare(cql.clone())
        .await
        .map_err(|error| DbError::new(format!("preparing {cql}"), error))
}

/// The write timestamps of one batch: each row's is its lease block's epoch shifted left by 40
/// bits, plus a counter that grows by 2 per batch (a family's rows take the odd one, after the
/// family's delete). So a batch overwrites every earlier batch of the same holder, and a holder
/// with a newer epoch overwrites every batch of an older one.
#[derive(Debug, Clone)]
pub struct Stamps {
    /// Epoch of each lease block, by block number.
    pub epochs: std::sync::Arc<Vec<i64>>,
    /// This batch's counter, even, below 2^40.
    pub counter: i64,
}

impl Stamps {
    fn of(&self, write: &Write) -> i64 {
        let slot = match write.values.first() {
            Some(Some(CqlValue::Int(slot))) => *slot,
            _ => 0,
        };
        let block = (slot.max(0) as usize) / usize::from(super::leases::BLOCK_SLOTS);
        let epoch = self.epochs.get(block).copied().unwrap_or(0);
        (epoch << 40) + self.counter + i64::from(write.stmt == Stmt::FamilyRow)
    }
}

/// Sends `writes` as one logged batch (all of it applies, or none), stamped by `stamps`. Safe to
/// repeat.
pub async fn write(
    session: &Session,
    statements: &Statements,
    writes: &[Write],
    stamps: &Stamps,
) -> Result<(), DbError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut batch = Batch::new(BatchType::Logged);
    let mut values: Vec<Vec<Option<CqlValue>>> = Vec::with_capacity(writes.len());
    for write in writes {
        batch.append_statement(statements.writes[&write.stmt].clone());
        let stamp = Some(CqlValue::BigInt(stamps.of(write)));
        let mut row = Vec::with_capacity(write.values.len() + 2);
        if write.stmt.is_delete() {
            row.push(stamp);
            row.extend(write.values.iter().cloned());
        } else {
            row.extend(write.values.iter().cloned());
            if let Some(ttl) = write.ttl {
                row.push(Some(CqlValue::Int(ttl)));
            }
            row.push(stamp);
        }
        values.push(row);
    }
    session
        .batch(&batch, values)
        .await
        .map_err(|error| DbError::new(format!("writing a batch of {} rows", writes.len()), error))?;
    Ok(())
}

/// A shard's slots as loaded: what [`crate::home::Home::restore_parts`] takes.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Users.
    pub users: Vec<User>,
    /// Their sessions.
    pub sessions: Vec<AuthSession>,
    /// Money.
    pub ledger: LedgerRows,
    /// Idempotency keys, as the changes that make them.
    pub keys: Vec<Change>,
    /// Answers waiting for acknowledgements: transfer, scope, key, body.
    pub pending: Vec<(String, Scope, String, Vec<u8>)>,
    /// Rows read.
    pub rows: u64,
}

fn bad(table: &str, what: impl std::fmt::Display) -> DbError {
    DbError::new(format!("loading {table}"), format!("a row is invalid: {what}"))
}

fn user_id(table: &str, text: &str) -> Result<UserId, DbError> {
    UserId::parse(text).ok_or_else(|| bad(table, format!("user id {text:?}")))
}

fn currency(table: &str, text: &str) -> Result<Currency, DbError> {
    Currency::parse(text).ok_or_else(|| bad(table, format!("currency {text:?}")))
}

fn unsigned(table: &str, value: i64) -> Result<u64, DbError> {
    u64::try_from(value).map_err(|_| bad(table, format!("negative value {value}")))
}

fn hash32(table: &str, bytes: &[u8]) -> Result<[u8; 32], DbError> {
    bytes
        .try_into()
        .map_err(|_| bad(table, format!("a hash of {} bytes", bytes.len())))
}

/// Reads every row of `table` in `slots`, page by page.
async fn read_all<R>(
    session: &Session,
    statements: &Statements,
    table: Table,
    slots: &[i32],
) -> Result<Vec<R>, DbError>
where
    R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata> + Send + 'static,
{
    let what = format!("loading {table:?}");
    let mut pages = session
        .execute_iter(statements.reads[&table].clone(), (slots,))
        .await
        .map_err(|error| DbError::new(what.clone(), error))?
        .rows_stream::<R>()
        .map_err(|error| DbError::new(what.clone(), error))?;
    let mut rows = Vec::new();
    while let Some(row) = pages.next().await {
        rows.push(row.map_err(|error| DbError::new(what.clone(), error))?);
    }
    Ok(rows)
}

/// Loads the rows of `slots` (at most a few hundred per call: they go in one `IN`).
pub async fn load(session: &Session, statements: &Statements, slots: &[i32]) -> Result<Loaded, DbError> {
    let mut loaded = Loaded::default();

    let users: Vec<(String, String, i64)> = read_all(session, statements, Table::Users, slots).await?;
    let credentials: Vec<(String, String)> = read_all(session, statements, Table::Credentials, slots).await?;
    let mut hashes: HashMap<String, String> = credentials.into_iter().collect();
    let mut restored_users = Vec::with_capacity(users.len());
    for (id, username, created_at_ms) in users {
        let password_hash = hashes
            .remove(&id)
            .ok_or_else(|| bad("credentials", format!("user {id} has no credentials row")))?;
        restored_users.push(User {
            id: user_id("users", &id)?,
            username,
            password_hash,
            created_at_ms: unsigned("users", created_at_ms)?,
        });
    }
    let families: Vec<(String, i32, Vec<u8>)> = read_all(session, statements, Table::Families, slots).await?;
    let mut rotated: HashMap<String, Vec<(i32, TokenHash)>> = HashMap::new();
    for (session_id, position, hash) in families {
        rotated
            .entry(session_id)
            .or_default()
            .push((position, hash32("refresh_families", &hash)?));
    }
    let sessions: Vec<(String, String, i64, Vec<u8>, i64)> =
        read_all(session, statements, Table::Sessions, slots).await?;
    let mut restored_sessions = Vec::with_capacity(sessions.len());
    for (user, id, created_at_ms, refresh_hash, refresh_expires_at_ms) in sessions {
        let mut family = rotated.remove(&id).unwrap_or_default();
        family.sort();
        restored_sessions.push(AuthSession::restored(
            id,
            user_id("sessions", &user)?,
            unsigned("sessions", created_at_ms)?,
            hash32("sessions", &refresh_hash)?,
            unsigned("sessions", refresh_expires_at_ms)?,
            family.into_iter().map(|(_, hash)| hash).collect(),
        ));
    }
    loaded.rows += (restored_users.len() + restored_sessions.len()) as u64;
    loaded.users = restored_users;
    loaded.sessions = restored_sessions;

    let accounts: Vec<(String, String, i64)> = read_all(session, statements, Table::Accounts, slots).await?;
    for (user, code, balance) in accounts {
        loaded.ledger.balances.push((
            user_id("accounts", &user)?,
            currency("accounts", &code)?,
            unsigned("accounts", balance)?,
        ));
    }
    type PaymentRow = (
        String,
        String,
        String,
        i64,
        String,
        Option<String>,
        i64,
        i64,
        bool,
        bool,
    );
    let payments: Vec<PaymentRow> = read_all(session, statements, Table::Payments, slots).await?;
    for (id, payer, payee, amount, code, description, refunded, created_at_ms, payer_side, payee_side) in
        payments
    {
        let payment = Payment {
            id,
            from: user_id("payments", &payer)?,
            to: user_id("payments", &payee)?,
            amount: unsigned("payments", amount)?,
            currency: currency("payments", &code)?,
            description,
            amount_refunded: unsigned("payments", refunded)?,
            created_at_ms: unsigned("payments", created_at_ms)?,
        };
        loaded.ledger.payments.push((payment, payer_side, payee_side));
    }
    let history: Vec<(String, i64, String)> = read_all(session, statements, Table::History, slots).await?;
    for (user, position, payment) in history {
        loaded.ledger.history.push((
            user_id("ledger_entries", &user)?,
            unsigned("ledger_entries", position)?,
            payment,
        ));
    }
    let deposits: Vec<(String, String, i64, String)> =
        read_all(session, statements, Table::Deposits, slots).await?;
    for (id, user, amount, code) in deposits {
        loaded.ledger.deposits.push((
            id,
            user_id("deposits", &user)?,
            unsigned("deposits", amount)?,
            currency("deposits", &code)?,
        ));
    }
    let refunds: Vec<(String,)> = read_all(session, statements, Table::Refunds, slots).await?;
    loaded.ledger.refunds = refunds.into_iter().map(|(id,)| id).collect();
    type OutboxRow = (
        String,
        i64,
        String,
        Vec<u8>,
        Option<String>,
        Option<String>,
        Option<Vec<u8>>,
    );
    let outbox: Vec<OutboxRow> = read_all(session, statements, Table::Outbox, slots).await?;
    for (id, sequence, sender, encoded, answer_scope, answer_key, answer) in outbox {
        let transfer: Transfer = bincode::deserialize(&encoded)
            .map_err(|error| bad("outbox", format!("transfer {id}: {error}")))?;
        if transfer.id() != id {
            return Err(bad(
                "outbox",
                format!("row {id} holds transfer {}", transfer.id()),
            ));
        }
        if let (Some(scope), Some(key), Some(answer)) = (answer_scope, answer_key, answer) {
            let scope = scope_of(&scope).ok_or_else(|| bad("outbox", format!("scope {scope:?}")))?;
            loaded.pending.push((id.clone(), scope, key, answer));
        }
        loaded.ledger.outbox.push((
            unsigned("outbox", sequence)?,
            user_id("outbox", &sender)?,
            transfer,
        ));
    }
    let received: Vec<(String, String)> = read_all(session, statements, Table::Received, slots).await?;
    for (id, user) in received {
        loaded
            .ledger
            .received
            .push((id, user_id("received_transfers", &user)?));
    }
    loaded.rows += (loaded.ledger.balances.len()
        + loaded.ledger.payments.len()
        + loaded.ledger.history.len()
        + loaded.ledger.deposits.len()
        + loaded.ledger.refunds.len()
        + loaded.ledger.outbox.len()
        + loaded.ledger.received.len()) as u64;

    type KeyRow = (String, String, Vec<u8>, i32, Option<Vec<u8>>, i64);
    let keys: Vec<KeyRow> = read_all(session, statements, Table::Keys, slots).await?;
    for (scope, key, fingerprint, status, answer, expires_at_ms) in keys {
        let scope = scope_of(&scope).ok_or_else(|| bad("idempotency_keys", format!("scope {scope:?}")))?;
        let fingerprint: Fingerprint = hash32("idempotency_keys", &fingerprint)?;
        loaded.keys.push(Change::Claimed {
            scope: scope.clone(),
            key: key.clone(),
            fingerprint,
            expires_at_ms: unsigned("idempotency_keys", expires_at_ms)?,
        });
        if status != 0 {
            let status =
                u16::try_from(status).map_err(|_| bad("idempotency_keys", format!("status {status}")))?;
            loaded.keys.push(Change::Completed {
                scope,
                key,
                status,
                body: answer.unwrap_or_default(),
            });
        }
        loaded.rows += 1;
    }
    Ok(loaded)
}

/// Slots per query of [`load_range`] (one `IN` list).
pub const LOAD_SLOTS_PER_QUERY: usize = 256;
/// Groups of slots [`load_range`] reads at once.
pub const LOAD_GROUPS_IN_FLIGHT: usize = 8;

/// Loads slots `first..=last`: groups of [`LOAD_SLOTS_PER_QUERY`] slots, [`LOAD_GROUPS_IN_FLIGHT`]
/// at a time, each group's tables read one after the other.
pub async fn load_range(
    session: std::sync::Arc<Session>,
    statements: std::sync::Arc<Statements>,
    first: u32,
    last: u32,
) -> Result<Loaded, DbError> {
    let slots: Vec<i32> = (first as i32..=last as i32).collect();
    let mut groups = slots.chunks(LOAD_SLOTS_PER_QUERY).map(<[i32]>::to_vec);
    let mut loading = tokio::task::JoinSet::new();
    let mut loaded = Loaded::default();
    loop {
        while loading.len() < LOAD_GROUPS_IN_FLIGHT {
            let Some(group) = groups.next() else { break };
            let (session, statements) = (session.clone(), statements.clone());
            loading.spawn(async move { load(&session, &statements, &group).await });
        }
        let Some(done) = loading.join_next().await else {
            break;
        };
        loaded.extend(done.map_err(|error| DbError::new("loading slots", error))??);
    }
    Ok(loaded)
}

impl Loaded {
    /// Adds the rows of another group of slots.
    pub fn extend(&mut self, part: Loaded) {
        self.users.extend(part.users);
        self.sessions.extend(part.sessions);
        self.ledger.balances.extend(part.ledger.balances);
        self.ledger.payments.extend(part.ledger.payments);
        self.ledger.history.extend(part.ledger.history);
        self.ledger.outbox.extend(part.ledger.outbox);
        self.ledger.received.extend(part.ledger.received);
        self.ledger.deposits.extend(part.ledger.deposits);
        self.ledger.refunds.extend(part.ledger.refunds);
        self.keys.extend(part.keys);
        self.pending.extend(part.pending);
        self.rows += part.rows;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_names_its_table_and_stamps_its_rows() {
        for stmt in Stmt::ALL {
            let cql = stmt.cql("ks");
            assert!(cql.contains("TIMESTAMP ?"), "{cql}");
            assert_eq!(cql.starts_with("DELETE"), stmt.is_delete(), "{cql}");
            assert_eq!(
                cql.contains("TTL ?"),
                matches!(stmt, Stmt::Session | Stmt::FamilyRow | Stmt::Key),
                "{cql}"
            );
        }
    }

    #[test]
    fn ttls_round_up_and_never_mean_forever() {
        assert_eq!(ttl_until(10_001, 10_000), 1);
        assert_eq!(ttl_until(12_500, 10_000), 3);
        assert_eq!(ttl_until(5_000, 10_000), 1);
    }

    #[test]
    fn scopes_read_back_as_written() {
        let user = UserId::parse("usr_02ed00112233445566778899").unwrap();
        for scope in [Scope::Admin, Scope::User(user)] {
            assert_eq!(scope_of(scope_text(&scope)), Some(scope.clone()));
        }
        assert_eq!(scope_of("usr_nope"), None);
    }
}
