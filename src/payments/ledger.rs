//! One shard's money: balances of the users it owns, the payments and refunds they sent or
//! received, and the outbox of cross-shard credits not yet acknowledged — as a deterministic state
//! machine (`decide` → events → `apply`), like `auth::state`.
//!
//! A payment between two users of this shard is one step: debit and credit together. Between two
//! shards it is two-step: the payer's shard *reserves* (debits the payer and puts a credit in its
//! outbox), the payee's shard *applies* the credit once — deduplicated by payment id, so a repeated
//! message is harmless — and acknowledges, and the payer's shard *settles* (clears the outbox
//! entry). Until settled, the outbox entry is resent as often as needed. Refunds mirror this from
//! the payee's shard. Money is never created or destroyed: every debit has exactly one credit.
//!
//! Invariants, checked after every applied event: no balance is negative (balances are unsigned
//! and every debit is checked), and this shard's `deposited + credits in − debits out` equals the
//! sum of its balances. No I/O, no clock, no randomness: ids and times come with each command.
//!
//! Resharding: a ledger serializes whole (a snapshot), [`Ledger::merge`] combines old shards'
//! ledgers and [`Ledger::split`] divides one among new shards, each user's money, payments,
//! deposit records and outbox entries going with the user. After a reshard a payer and payee may
//! share a shard while a credit between them is still in the outbox: it is resent to this very
//! shard and applied once, like any other.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::segmap::SegMap;
use crate::slots::UserId;

/// Largest amount of one deposit, payment or refund, in minor units (the contract's 10^15).
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000;
/// Longest payment description, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 200;

/// An ISO 4217 currency code (three upper-case letters). Decoding checks it too, so a log or
/// snapshot from elsewhere cannot make [`Currency::as_str`] panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "[u8; 3]")]
pub struct Currency([u8; 3]);

impl TryFrom<[u8; 3]> for Currency {
    type Error = String;

    fn try_from(bytes: [u8; 3]) -> Result<Currency, String> {
        if bytes.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency(bytes))
        } else {
            Err(format!("not a currency code: {bytes:?}"))
        }
    }
}

impl Currency {
    /// The code, if it is three ASCII upper-case letters.
    pub fn parse(code: &str) -> Option<Currency> {
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Currency(bytes))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("validated ASCII")
    }
}

/// A payment as both parties see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// `pay_…`
    pub id: String,
    /// Payer.
    pub from: UserId,
    /// Payee.
    pub to: UserId,
    /// Minor units.
    pub amount: u64,
    /// Currency.
    pub currency: Currency,
    /// Free text, at most [`DESCRIPTION_CHARS_MAX`] characters.
    pub description: Option<String>,
    /// Refunded so far, minor units.
    pub amount_refunded: u64,
    /// Unix milliseconds.
    pub created_at_ms: u64,
}

/// A credit travelling from one shard to another: the second half of a payment or a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transfer {
    /// Credit the payee of a payment (sent by the payer's shard).
    Payment(Payment),
    /// Credit the payer with a refund of a payment (sent by the payee's shard).
    Refund {
        /// `ref_…`
        refund: String,
        /// The payment refunded.
        payment: String,
        /// Who gets the money back (the payer).
        to: UserId,
        /// Minor units.
        amount: u64,
        /// Currency.
        currency: Currency,
    },
}

impl Transfer {
    /// The id that deduplicates it on the receiving shard.
    pub fn id(&self) -> &str {
        match self {
            Transfer::Payment(payment) => &payment.id,
            Transfer::Refund { refund, .. } => refund,
        }
    }

    /// The user credited on the receiving shard (which is that user's home shard).
    pub fn recipient(&self) -> &UserId {
        self.credit().0
    }

    fn credit(&self) -> (&UserId, Currency, u64) {
        match self {
            Transfer::Payment(payment) => (&payment.to, payment.currency, payment.amount),
            Transfer::Refund {
                to, currency, amount, ..
            } => (to, *currency, *amount),
        }
    }
}

/// A request to change the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Credit a user from outside (the admin deposit).
    Deposit {
        /// `dep_…`
        id: String,
        /// Recipient (a user of this shard).
        user: UserId,
        /// Minor units.
        amount: u64,
        /// Currency.
        currency: Currency,
    },
    /// Pay another user. `payee_local` says whether the payee's home is this shard.
    Pay {
        /// The payment (the caller drew its id and validated its fields).
        payment: Payment,
        /// Whether the payee lives on this shard.
        payee_local: bool,
    },
    /// Apply a credit sent by another shard (idempotent).
    Receive(Transfer),
    /// The other shard acknowledged a transfer from the outbox.
    Settle {
        /// The transfer's id.
        transfer: String,
    },
    /// Refund (part of) a received payment, by its payee. `payer_local` says whether the payer's
    /// home is this shard.
    Refund {
        /// `ref_…`
        refund: String,
        /// The payment.
        payment: String,
        /// Who asks (must be the payee).
        by: UserId,
        /// Minor units; `None` refunds the rest.
        amount: Option<u64>,
        /// Whether the payer lives on this shard.
        payer_local: bool,
    },
}

/// What happened; the unit of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Money entered from outside.
    Deposited {
        /// Deposit id.
        id: String,
        /// Recipient.
        user: UserId,
        /// Minor units.
        amount: u64,
        /// Currency.
        currency: Currency,
    },
    /// A payment within this shard: payer debited and payee credited together.
    PaidLocally(Payment),
    /// The payer was debited and a credit for another shard entered the outbox.
    Reserved(Transfer),
    /// A credit from another shard was applied.
    Received(Transfer),
    /// An outbox entry was acknowledged.
    Settled {
        /// The transfer's id.
        transfer: String,
    },
    /// A refund within this shard: payee debited, payer credited, the payment updated.
    RefundedLocally {
        /// Refund id.
        refund: String,
        /// Payment id.
        payment: String,
        /// Minor units.
        amount: u64,
    },
    /// A refund to another shard: the payee was debited and the payment updated here; the credit
    /// for the payer entered the outbox.
    RefundReserved {
        /// Refund id.
        refund: String,
        /// Payment id.
        payment: String,
        /// Minor units.
        amount: u64,
        /// The credit for the payer's shard.
        transfer: Transfer,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LedgerError {
    /// The amount is 0 or above [`AMOUNT_MAX`].
    #[error("invalid amount")]
    InvalidAmount,
    /// The payer does not have the money.
    #[error("insufficient funds")]
    InsufficientFunds,
    /// Paying oneself.
    #[error("self payment")]
    SelfPayment,
    /// The description is too long.
    #[error("description too long")]
    DescriptionTooLong,
    /// No such payment visible to this user.
    #[error("payment not found")]
    PaymentNotFound,
    /// Only the payee refunds.
    #[error("only the payee can refund")]
    NotThePayee,
    /// More than what is left of the payment.
    #[error("refund exceeds payment")]
    RefundExceedsPayment,
    /// The id is already used (the caller draws another).
    #[error("id already used")]
    IdTaken,
    /// A balance would exceed u64.
    #[error("balance overflow")]
    BalanceOverflow,
}

/// A payment as this ledger holds it: one record, whichever of its two sides — the payer's, the
/// payee's — belong to users of this shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    /// With both sides here, `amount_refunded` is the payee's view: it counts a refund from when it
    /// is reserved, the payer's side only from when it arrives.
    payment: Payment,
    /// The payer's side is here: the payment is in the payer's history.
    payer_side: bool,
    /// The payee's side is here: its credit was applied here, and the payee may refund it.
    payee_side: bool,
}

impl Held {
    fn visible_to(&self, viewer: &UserId) -> bool {
        (self.payer_side && &self.payment.from == viewer) || (self.payee_side && &self.payment.to == viewer)
    }
}

/// A deposit as the ledger remembers it, so that a deposit retried under the same id (after a
/// crash, or a lost answer) can be recognised and answered instead of applied twice. Kept on the
/// shard of its user: see [`Ledger::deposit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DepositRecord {
    /// Recipient.
    user: UserId,
    /// Minor units.
    amount: u64,
    currency: Currency,
}

impl DepositRecord {
    fn parts(&self) -> (&UserId, u64, Currency) {
        (&self.user, self.amount, self.currency)
    }
}

/// A credit in the outbox, with the user whose debit it carries (who owns it when resharding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Outgoing {
    /// The payer of a payment, the payee of a refunded payment.
    sender: UserId,
    transfer: Transfer,
}

/// One shard's money. Serializes whole, as a snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    balances: HashMap<(UserId, Currency), u64>,
    /// Payments where this shard's user is payer or payee.
    payments: SegMap<String, Held>,
    /// Per user: payment ids in the order they were recorded here (oldest first).
    history: HashMap<UserId, Vec<String>>,
    /// Credits sent to other shards and not yet acknowledged, by sequence number, oldest first.
    outbox: BTreeMap<u64, Outgoing>,
    /// Transfer id → sequence number in `outbox`.
    outbox_index: HashMap<String, u64>,
    next_outbox: u64,
    /// Transfers received from other shards (deduplication), with the user they credited.
    received: SegMap<String, UserId>,
    /// Refund ids and deposit ids used here.
    used_ids: HashSet<String>,
    /// Deposits to users of this shard, by id. No limit of its own: deposits are admin operations,
    /// rare, and every deposit id is already kept for good in `used_ids`; this adds a user id, an
    /// amount and a currency per deposit, so it grows no faster than `used_ids` does.
    deposits: HashMap<String, DepositRecord>,
    /// Flows, per currency, for the conservation check.
    deposited: HashMap<Currency, u128>,
    credited_in: HashMap<Currency, u128>,
    debited_out: HashMap<Currency, u128>,
    /// Sum of balances per currency, kept as balances change, so the books check is O(currencies).
    totals: HashMap<Currency, u128>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// A user's available balance.
    pub fn balance(&self, user: &UserId, currency: Currency) -> u64 {
        self.balances.get(&(user.clone(), currency)).copied().unwrap_or(0)
    }

    /// A user's balances, in currency order (currencies ever held).
    pub fn balances_of(&self, user: &UserId) -> Vec<(Currency, u64)> {
        let mut balances: Vec<_> = self
            .balances
            .iter()
            .filter(|((owner, _), _)| owner == user)
            .map(|((_, currency), amount)| (*currency, *amount))
            .collect();
        balances.sort();
        balances
    }

    /// A payment, if `viewer` is its payer or payee.
    pub fn payment(&self, id: &str, viewer: &UserId) -> Option<&Payment> {
        self.payments
            .get(id)
            .filter(|held| held.visible_to(viewer))
            .map(|held| &held.payment)
    }

    /// A user's payments, sent and received, newest first, after the cursor `starting_after`.
    /// Returns at most `limit` and whether there are more.
    pub fn payments_of(
        &self,
        user: &UserId,
        starting_after: Option<&str>,
        limit: usize,
    ) -> (Vec<&Payment>, bool) {
        let Some(ids) = self.history.get(user) else {
            return (Vec::new(), false);
        };
        let end = match starting_after {
            Some(cursor) => ids.iter().position(|id| id == cursor).unwrap_or(0),
            None => ids.len(),
        };
        let page: Vec<&Payment> = ids[..end]
            .iter()
            .rev()
            .take(limit)
            .filter_map(|id| self.payments.get(id).map(|held| &held.payment))
            .collect();
        let has_more = end > page.len();
        (page, has_more)
    }

    /// Credits waiting for an acknowledgement, oldest first: what recovery resends.
    pub fn outbox(&self) -> impl Iterator<Item = &Transfer> {
        self.outbox.values().map(|outgoing| &outgoing.transfer)
    }

    /// Money of `currency` that left this shard in credits not yet acknowledged.
    pub fn in_flight(&self, currency: Currency) -> u128 {
        self.outbox()
            .filter(|t| t.credit().1 == currency)
            .map(|t| u128::from(t.credit().2))
            .sum()
    }

    /// Every currency this ledger has seen.
    pub fn currencies(&self) -> Vec<Currency> {
        let mut all: Vec<Currency> = self
            .deposited
            .keys()
            .chain(self.credited_in.keys())
            .copied()
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Sum of balances in `currency`.
    pub fn total(&self, currency: Currency) -> u128 {
        self.totals.get(&currency).copied().unwrap_or(0)
    }

    /// Deposits made on this shard in `currency`.
    pub fn deposited(&self, currency: Currency) -> u128 {
        self.deposited.get(&currency).copied().unwrap_or(0)
    }

    /// The deposit made under `id` to a user of this shard, if any, as its user, amount (minor
    /// units) and currency: what a retried deposit with this id is answered with (the caller
    /// compares it with the retried request). `None` where
    /// [`Command::Deposit`] with this id is still refused as [`LedgerError::IdTaken`] means the id
    /// serves something else here — a payment, a refund, or (after a reshard, which copies used
    /// ids to every shard) a deposit to a user who lives on another shard.
    pub fn deposit(&self, id: &str) -> Option<(&UserId, u64, Currency)> {
        self.deposits.get(id).map(DepositRecord::parts)
    }

    /// Whether a transfer from another shard was applied here.
    pub fn has_received(&self, transfer: &str) -> bool {
        self.received.contains_key(transfer)
    }

    /// The events `command` causes, without changing anything.
    pub fn decide(&self, command: &Command) -> Result<Vec<Event>, LedgerError> {
        match command {
            Command::Deposit {
                id,
                user,
                amount,
                currency,
            } => {
                check_amount(*amount)?;
                if self.id_in_use(id) {
                    return Err(LedgerError::IdTaken);
                }
                self.balance(user, *currency)
                    .checked_add(*amount)
                    .ok_or(LedgerError::BalanceOverflow)?;
                Ok(vec![Event::Deposited {
                    id: id.clone(),
                    user: user.clone(),
                    amount: *amount,
                    currency: *currency,
                }])
            }
            Command::Pay { payment, payee_local } => {
                check_amount(payment.amount)?;
                if payment.from == payment.to {
                    return Err(LedgerError::SelfPayment);
                }
                if payment
                    .description
                    .as_ref()
                    .is_some_and(|d| d.chars().count() > DESCRIPTION_CHARS_MAX)
                {
                    return Err(LedgerError::DescriptionTooLong);
                }
                if self.id_in_use(&payment.id) {
                    return Err(LedgerError::IdTaken);
                }
                if self.balance(&payment.from, payment.currency) < payment.amount {
                    return Err(LedgerError::InsufficientFunds);
                }
                let payment = Payment {
                    amount_refunded: 0,
                    ..payment.clone()
                };
                if *payee_local {
                    self.balance(&payment.to, payment.currency)
                        .checked_add(payment.amount)
                        .ok_or(LedgerError::BalanceOverflow)?;
                    Ok(vec![Event::PaidLocally(payment)])
                } else {
                    Ok(vec![Event::Reserved(Transfer::Payment(payment))])
                }
            }
            Command::Receive(transfer) => {
                if self.received.contains_key(transfer.id()) {
                    // Already applied: acknowledging again is all that is left to do.
                    return Ok(Vec::new());
                }
                let (to, currency, amount) = transfer.credit();
                check_amount(amount)?;
                self.balance(to, currency)
                    .checked_add(amount)
                    .ok_or(LedgerError::BalanceOverflow)?;
                Ok(vec![Event::Received(transfer.clone())])
            }
            Command::Settle { transfer } => {
                if self.outbox_index.contains_key(transfer) {
                    Ok(vec![Event::Settled {
                        transfer: transfer.clone(),
                    }])
                } else {
                    Ok(Vec::new())
                }
            }
            Command::Refund {
                refund,
                payment,
                by,
                amount,
                payer_local,
            } => {
                let found = self.payment(payment, by).ok_or(LedgerError::PaymentNotFound)?;
                if &found.to != by {
                    return Err(LedgerError::NotThePayee);
                }
                if self.id_in_use(refund) {
                    return Err(LedgerError::IdTaken);
                }
                let left = found.amount - found.amount_refunded;
                let amount = amount.unwrap_or(left);
                if amount == 0 && left == 0 {
                    return Err(LedgerError::RefundExceedsPayment);
                }
                check_amount(amount)?;
                if amount > left {
                    return Err(LedgerError::RefundExceedsPayment);
                }
                if self.balance(by, found.currency) < amount {
                    return Err(LedgerError::InsufficientFunds);
                }
                if *payer_local {
                    self.balance(&found.from, found.currency)
                        .checked_add(amount)
                        .ok_or(LedgerError::BalanceOverflow)?;
                    Ok(vec![Event::RefundedLocally {
                        refund: refund.clone(),
                        payment: payment.clone(),
                        amount,
                    }])
                } else {
                    Ok(vec![Event::RefundReserved {
                        refund: refund.clone(),
                        payment: payment.clone(),
                        amount,
                        transfer: Transfer::Refund {
                            refund: refund.clone(),
                            payment: payment.clone(),
                            to: found.from.clone(),
                            amount,
                            currency: found.currency,
                        },
                    }])
                }
            }
        }
    }

    /// Applies an event decided earlier (or replayed). Panics on an event that would break an
    /// invariant: that is a bug in `decide`, and continuing would corrupt money.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Deposited {
                id,
                user,
                amount,
                currency,
            } => {
                self.used_ids.insert(id.clone());
                let record = DepositRecord {
                    user: user.clone(),
                    amount: *amount,
                    currency: *currency,
                };
                let earlier = self.deposits.insert(id.clone(), record);
                assert!(earlier.is_none(), "deposit {id} applied twice");
                self.credit(user, *currency, *amount);
                *self.deposited.entry(*currency).or_default() += u128::from(*amount);
            }
            Event::PaidLocally(payment) => {
                self.debit(&payment.from, payment.currency, payment.amount);
                self.credit(&payment.to, payment.currency, payment.amount);
                self.record(payment, true, true);
            }
            Event::Reserved(transfer) => {
                let Transfer::Payment(payment) = transfer else {
                    panic!("only payments are reserved by Reserved");
                };
                self.debit(&payment.from, payment.currency, payment.amount);
                *self.debited_out.entry(payment.currency).or_default() += u128::from(payment.amount);
                self.record(payment, true, false);
                self.push_outbox(Outgoing {
                    sender: payment.from.clone(),
                    transfer: transfer.clone(),
                });
            }
            Event::Received(transfer) => {
                let (to, currency, amount) = transfer.credit();
                let to = to.clone();
                self.received.insert(transfer.id().to_string(), to.clone());
                self.credit(&to, currency, amount);
                *self.credited_in.entry(currency).or_default() += u128::from(amount);
                match transfer {
                    // After a reshard the payer's side may already be here: one record, both sides.
                    Transfer::Payment(payment) => self.record(payment, false, true),
                    Transfer::Refund { payment, amount, .. } => {
                        // The payer's copy of the payment, when this shard holds one — unless the
                        // payee's side is here too (after a reshard): it counted the refund when it
                        // was reserved.
                        if self.payments.get(payment).is_some_and(|held| !held.payee_side) {
                            let _ = self.record_refund(payment, *amount);
                        }
                    }
                }
            }
            Event::Settled { transfer } => {
                if let Some(sequence) = self.outbox_index.remove(transfer) {
                    self.outbox.remove(&sequence);
                }
            }
            Event::RefundedLocally {
                refund,
                payment,
                amount,
            } => {
                self.used_ids.insert(refund.clone());
                let (from, to, currency) = self
                    .record_refund(payment, *amount)
                    .expect("decided against a known payment");
                self.debit(&to, currency, *amount);
                self.credit(&from, currency, *amount);
            }
            Event::RefundReserved {
                refund,
                payment,
                amount,
                transfer,
            } => {
                self.used_ids.insert(refund.clone());
                let (_, to, currency) = self
                    .record_refund(payment, *amount)
                    .expect("decided against a known payment");
                self.debit(&to, currency, *amount);
                *self.debited_out.entry(currency).or_default() += u128::from(*amount);
                self.push_outbox(Outgoing {
                    sender: to,
                    transfer: transfer.clone(),
                });
            }
        }
        // Checked in production too: it costs a few additions per currency, and a ledger whose
        // books do not balance must stop before it answers anyone.
        assert!(
            self.conserved(),
            "money not conserved on this shard after {event:?}"
        );
        debug_assert!(self.totals_match_balances(), "running totals drifted");
    }

    /// Decides and applies in one step.
    pub fn execute(&mut self, command: &Command) -> Result<Vec<Event>, LedgerError> {
        let events = self.decide(command)?;
        for event in &events {
            self.apply(event);
        }
        Ok(events)
    }

    /// This shard's books balance: deposits + credits in − debits out = balances, per currency.
    pub fn conserved(&self) -> bool {
        self.currencies()
            .into_iter()
            .chain(self.debited_out.keys().copied())
            .all(|currency| {
                let inflow = self.deposited(currency) + self.credited_in.get(&currency).copied().unwrap_or(0);
                let outflow = self.debited_out.get(&currency).copied().unwrap_or(0);
                inflow.checked_sub(outflow) == Some(self.total(currency))
            })
    }

    /// The running totals equal the balances summed from scratch (a test-build check).
    fn totals_match_balances(&self) -> bool {
        let mut summed: HashMap<Currency, u128> = HashMap::new();
        for ((_, currency), amount) in &self.balances {
            *summed.entry(*currency).or_default() += u128::from(*amount);
        }
        summed.iter().all(|(currency, sum)| self.total(*currency) == *sum)
            && self
                .totals
                .iter()
                .all(|(currency, total)| summed.get(currency).copied().unwrap_or(0) == *total)
    }

    /// Whether any deposit, payment, refund or received transfer here has this id. Transfers are
    /// deduplicated by id on the receiving shard, so an id must never serve twice: a payment
    /// reusing a refund's id would be taken for a repeat and its credit lost.
    fn id_in_use(&self, id: &str) -> bool {
        self.used_ids.contains(id)
            || self.payments.contains_key(id)
            || self.outbox_index.contains_key(id)
            || self.received.contains_key(id)
    }

    /// Adds a refund to a payment's `amount_refunded` (never beyond its amount) and returns its
    /// payer, payee and currency; `None` if this shard holds no copy of the payment.
    fn record_refund(&mut self, payment: &str, amount: u64) -> Option<(UserId, UserId, Currency)> {
        let record = &mut self.payments.get_mut(payment)?.payment;
        record.amount_refunded += amount;
        assert!(record.amount_refunded <= record.amount, "refunded more than paid");
        Some((record.from.clone(), record.to.clone(), record.currency))
    }

    fn credit(&mut self, user: &UserId, currency: Currency, amount: u64) {
        let balance = self.balances.entry((user.clone(), currency)).or_insert(0);
        *balance = balance.checked_add(amount).expect("decided: no overflow");
        *self.totals.entry(currency).or_default() += u128::from(amount);
    }

    fn debit(&mut self, user: &UserId, currency: Currency, amount: u64) {
        let balance = self.balances.entry((user.clone(), currency)).or_insert(0);
        *balance = balance.checked_sub(amount).expect("decided: no negative balance");
        *self.totals.entry(currency).or_default() -= u128::from(amount);
    }

    /// Records a payment's payer side, payee side or both, each once: into the party's history,
    /// and into the one record of the payment.
    fn record(&mut self, payment: &Payment, payer_side: bool, payee_side: bool) {
        let held = self.payments.entry(payment.id.clone()).or_insert_with(|| Held {
            payment: payment.clone(),
            payer_side: false,
            payee_side: false,
        });
        let new_payer = payer_side && !held.payer_side;
        let new_payee = payee_side && !held.payee_side;
        held.payer_side |= payer_side;
        held.payee_side |= payee_side;
        for (party, new) in [(&payment.from, new_payer), (&payment.to, new_payee)] {
            if new {
                self.history
                    .entry(party.clone())
                    .or_default()
                    .push(payment.id.clone());
            }
        }
    }

    fn push_outbox(&mut self, outgoing: Outgoing) {
        let sequence = self.next_outbox;
        self.next_outbox += 1;
        self.outbox_index
            .insert(outgoing.transfer.id().to_string(), sequence);
        self.outbox.insert(sequence, outgoing);
    }
}

/// The ledger's rows, as the ScyllaDB store keeps them (one row per fact, each in the slot of
/// the user it belongs to), and the ledger they rebuild.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerRows {
    /// Balances: user, currency, minor units.
    pub balances: Vec<(UserId, Currency, u64)>,
    /// Payments with the sides held here (rows of one payment are combined).
    pub payments: Vec<(Payment, bool, bool)>,
    /// History: user, position, payment id.
    pub history: Vec<(UserId, u64, String)>,
    /// Outbox: position, sender, transfer.
    pub outbox: Vec<(u64, UserId, Transfer)>,
    /// Received transfers: id, credited user.
    pub received: Vec<(String, UserId)>,
    /// Deposits: id, user, minor units, currency.
    pub deposits: Vec<(String, UserId, u64, Currency)>,
    /// Refund ids used here.
    pub refunds: Vec<String>,
}

impl Ledger {
    /// A payment held here, with whether its payer's and its payee's sides are here.
    pub fn held(&self, id: &str) -> Option<(&Payment, bool, bool)> {
        self.payments
            .get(id)
            .map(|held| (&held.payment, held.payer_side, held.payee_side))
    }

    /// Where `payment` is in `user`'s history (0: the oldest).
    pub fn history_position(&self, user: &UserId, payment: &str) -> Option<usize> {
        self.history.get(user)?.iter().rposition(|id| id == payment)
    }

    /// An unacknowledged credit in the outbox: its position, sender and transfer.
    pub fn outgoing(&self, transfer: &str) -> Option<(u64, &UserId, &Transfer)> {
        let sequence = *self.outbox_index.get(transfer)?;
        self.outbox
            .get(&sequence)
            .map(|outgoing| (sequence, &outgoing.sender, &outgoing.transfer))
    }

    /// The user a received transfer credited.
    pub fn received_by(&self, transfer: &str) -> Option<&UserId> {
        self.received.get(transfer)
    }

    /// Whether `other` holds the same facts: balances, payments with their sides, histories,
    /// the outbox in order, received transfers, deposits and used ids. The flow counters and the
    /// outbox's position numbers may differ (a ledger restored from rows renumbers and derives
    /// them); what a load from the ScyllaDB store must reproduce.
    pub fn same_facts(&self, other: &Ledger) -> bool {
        let nonzero = |ledger: &Ledger| -> HashMap<(UserId, Currency), u64> {
            ledger
                .balances
                .iter()
                .filter(|(_, amount)| **amount > 0)
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
        let outbox = |ledger: &Ledger| -> Vec<Outgoing> { ledger.outbox.values().cloned().collect() };
        let payments = |ledger: &Ledger| -> HashMap<String, Held> {
            ledger
                .payments
                .iter()
                .map(|(id, held)| (id.clone(), held.clone()))
                .collect()
        };
        let received = |ledger: &Ledger| -> HashMap<String, UserId> {
            ledger
                .received
                .iter()
                .map(|(id, user)| (id.clone(), user.clone()))
                .collect()
        };
        nonzero(self) == nonzero(other)
            && payments(self) == payments(other)
            && self.history == other.history
            && outbox(self) == outbox(other)
            && received(self) == received(other)
            && self.used_ids == other.used_ids
            && self.deposits == other.deposits
            && self
                .totals
                .iter()
                .filter(|(_, t)| **t > 0)
                .collect::<HashMap<_, _>>()
                == other
                    .totals
                    .iter()
                    .filter(|(_, t)| **t > 0)
                    .collect::<HashMap<_, _>>()
            && self.deposited == other.deposited
    }

    /// The ledger `rows` describe. Flows are not stored row by row: deposits are summed from
    /// the deposit rows, and the cross-shard flows are set to what balances the books (the
    /// balances minus the deposits), so [`Ledger::conserved`] holds and keeps checking every
    /// later event.
    pub fn restore(rows: LedgerRows) -> Ledger {
        let mut ledger = Ledger::new();
        for (user, currency, amount) in rows.balances {
            ledger.credit(&user, currency, amount);
        }
        for (payment, payer_side, payee_side) in rows.payments {
            match ledger.payments.get_mut(&payment.id) {
                None => {
                    ledger.payments.insert(
                        payment.id.clone(),
                        Held {
                            payment,
                            payer_side,
                            payee_side,
                        },
                    );
                }
                Some(held) => {
                    held.payment.amount_refunded = held.payment.amount_refunded.max(payment.amount_refunded);
                    held.payer_side |= payer_side;
                    held.payee_side |= payee_side;
                }
            }
        }
        let mut history = rows.history;
        history.sort();
        for (user, _, payment) in history {
            ledger.history.entry(user).or_default().push(payment);
        }
        let mut outbox = rows.outbox;
        outbox.sort_by_key(|(sequence, _, _)| *sequence);
        for (_, sender, transfer) in outbox {
            if !ledger.outbox_index.contains_key(transfer.id()) {
                ledger.push_outbox(Outgoing { sender, transfer });
            }
        }
        for (id, user) in rows.received {
            ledger.received.insert(id, user);
        }
        for (id, user, amount, currency) in rows.deposits {
            ledger.used_ids.insert(id.clone());
            *ledger.deposited.entry(currency).or_default() += u128::from(amount);
            ledger.deposits.insert(
                id,
                DepositRecord {
                    user,
                    amount,
                    currency,
                },
            );
        }
        ledger.used_ids.extend(rows.refunds);
        let mut currencies: BTreeSet<Currency> = ledger.totals.keys().copied().collect();
        currencies.extend(ledger.deposited.keys().copied());
        for currency in currencies {
            let total = ledger.total(currency);
            let deposited = ledger.deposited(currency);
            if total >= deposited {
                ledger.credited_in.insert(currency, total - deposited);
            } else {
                ledger.debited_out.insert(currency, deposited - total);
            }
        }
        assert!(ledger.conserved(), "a restored ledger balances by construction");
        ledger
    }
}

/// Resharding: moving money, payments and credits in flight between shard layouts.
impl Ledger {
    /// Combines the ledgers of several shards into one (the first half of a reshard). Each
    /// user's balances, history and outbox entries come from the part that held them; the two
    /// copies of a payment between users of different parts become one record holding both sides
    /// (refunds only grow, so it keeps the larger `amount_refunded`: the payee's view). Outbox
    /// entries keep their order within each part, parts in the order given. The flow counters are
    /// summed, so each part's books balancing makes the result's balance, and deposits summed over
    /// all shards do not change. Deposit records are combined; should two parts hold different
    /// deposits under one id (ids are checked per shard only), the first part's is kept — the id
    /// stays used either way, and records never affect money.
    ///
    /// Panics if a part's books do not balance: check [`Ledger::conserved`] on a loaded snapshot.
    pub fn merge(parts: Vec<Ledger>) -> Ledger {
        let mut merged = Ledger::new();
        for part in parts {
            assert!(part.conserved(), "merging a ledger whose books do not balance");
            for (key, amount) in part.balances {
                // A user's money lives on one shard; were it on two, adding keeps it all.
                let balance = merged.balances.entry(key).or_insert(0);
                *balance = balance
                    .checked_add(amount)
                    .expect("one user's balance held by two parts overflows");
            }
            for (id, held) in part.payments {
                match merged.payments.get_mut(&id) {
                    None => {
                        merged.payments.insert(id, held);
                    }
                    Some(record) => {
                        record.payment.amount_refunded =
                            record.payment.amount_refunded.max(held.payment.amount_refunded);
                        record.payer_side |= held.payer_side;
                        record.payee_side |= held.payee_side;
                    }
                }
            }
            for (user, ids) in part.history {
                match merged.history.entry(user) {
                    Entry::Vacant(vacant) => {
                        vacant.insert(ids);
                    }
                    Entry::Occupied(mut occupied) => {
                        let list = occupied.get_mut();
                        let known: HashSet<String> = list.iter().cloned().collect();
                        list.extend(ids.into_iter().filter(|id| !known.contains(id)));
                    }
                }
            }
            for outgoing in part.outbox.into_values() {
                if !merged.outbox_index.contains_key(outgoing.transfer.id()) {
                    merged.push_outbox(outgoing);
                }
            }
            for (id, recipient) in part.received {
                merged.received.entry(id).or_insert(recipient);
            }
            merged.used_ids.extend(part.used_ids);
            for (id, record) in part.deposits {
                merged.deposits.entry(id).or_insert(record);
            }
            for (sums, counters) in [
                (&mut merged.deposited, part.deposited),
                (&mut merged.credited_in, part.credited_in),
                (&mut merged.debited_out, part.debited_out),
                (&mut merged.totals, part.totals),
            ] {
                for (currency, amount) in counters {
                    *sums.entry(currency).or_default() += amount;
                }
            }
        }
        assert!(merged.conserved(), "money not conserved by a merge");
        debug_assert!(
            merged.totals_match_balances(),
            "running totals drifted in a merge"
        );
        merged
    }

    /// Divides this ledger into `parts` ledgers (the second half of a reshard): each user's
    /// balances, payment history and outbox entries go to part `owner(user)` — an outbox entry
    /// with its sender (a payment's payer, a refund's payee), a received transfer's id with its
    /// recipient, a deposit's record with its user — and a payment to the part of each side held
    /// here. When a payment's two sides part ways, the payer's copy leaves out the refunds still
    /// on their way to it. Ids used here are copied to every part (so a deposit id stays refused
    /// everywhere, while only its user's part answers [`Ledger::deposit`]). Outbox entries keep
    /// their order.
    ///
    /// The parts' flow counters start afresh: each part opens with its balances plus its own
    /// credits not yet applied as deposited; what this ledger had deposited beyond that (or short
    /// of it: credits applied here whose sender has settled) is attributed to the first parts. So
    /// every part's books balance and the parts' deposits sum to this ledger's: summed over all
    /// shards, deposits never change.
    ///
    /// Panics if `parts` is 0, if `owner` names a part out of range (a bug in the caller), or if
    /// this ledger's books do not balance.
    pub fn split(self, owner: &dyn Fn(&UserId) -> usize, parts: usize) -> Vec<Ledger> {
        assert!(parts > 0, "a ledger split into no parts");
        assert!(self.conserved(), "splitting a ledger whose books do not balance");
        let part_of = |user: &UserId| {
            let part = owner(user);
            assert!(part < parts, "owner named part {part} of {parts}");
            part
        };
        // Refunds reserved by a payee here and not yet applied to the payer's copy: what that copy
        // lacks when the payment's two sides go to different parts.
        let mut refunds_on_the_way: HashMap<String, u64> = HashMap::new();
        // Per part and currency: its outbox entries not applied anywhere in this ledger.
        let mut unapplied: Vec<HashMap<Currency, u128>> = vec![HashMap::new(); parts];
        for outgoing in self.outbox.values() {
            let transfer = &outgoing.transfer;
            if self.received.contains_key(transfer.id()) {
                continue;
            }
            let (_, currency, amount) = transfer.credit();
            *unapplied[part_of(&outgoing.sender)].entry(currency).or_default() += u128::from(amount);
            if let Transfer::Refund { payment, amount, .. } = transfer {
                *refunds_on_the_way.entry(payment.clone()).or_default() += amount;
            }
        }
        let mut currencies: BTreeSet<Currency> = self.currencies().into_iter().collect();
        currencies.extend(self.debited_out.keys().chain(self.totals.keys()));
        currencies.extend(unapplied.iter().flat_map(HashMap::keys));
        let deposited: Vec<(Currency, u128)> = currencies
            .into_iter()
            .map(|currency| (currency, self.deposited(currency)))
            .collect();

        let mut split: Vec<Ledger> = (0..parts)
            .map(|_| Ledger {
                next_outbox: self.next_outbox,
                used_ids: self.used_ids.clone(),
                ..Ledger::default()
            })
            .collect();
        for ((user, currency), amount) in self.balances {
            let part = &mut split[part_of(&user)];
            *part.totals.entry(currency).or_default() += u128::from(amount);
            part.balances.insert((user, currency), amount);
        }
        for (id, held) in self.payments {
            let payer_part = held.payer_side.then(|| part_of(&held.payment.from));
            let payee_part = held.payee_side.then(|| part_of(&held.payment.to));
            match (payer_part, payee_part) {
                (Some(payer), Some(payee)) if payer == payee => {
                    split[payer].payments.insert(id, held);
                }
                (payer_part, payee_part) => {
                    if let Some(payee) = payee_part {
                        let payee_copy = Held {
                            payment: held.payment.clone(),
                            payer_side: false,
                            payee_side: true,
                        };
                        split[payee].payments.insert(id.clone(), payee_copy);
                    }
                    if let Some(payer) = payer_part {
                        let mut payment = held.payment;
                        if payee_part.is_some() {
                            let on_the_way = refunds_on_the_way.get(&id).copied().unwrap_or(0);
                            payment.amount_refunded = payment.amount_refunded.saturating_sub(on_the_way);
                        }
                        let payer_copy = Held {
                            payment,
                            payer_side: true,
                            payee_side: false,
                        };
                        split[payer].payments.insert(id, payer_copy);
                    }
                }
            }
        }
        for (user, ids) in self.history {
            split[part_of(&user)].history.insert(user, ids);
        }
        for (sequence, outgoing) in self.outbox {
            let part = &mut split[part_of(&outgoing.sender)];
            part.outbox_index
                .insert(outgoing.transfer.id().to_string(), sequence);
            part.outbox.insert(sequence, outgoing);
        }
        for (id, recipient) in self.received {
            split[part_of(&recipient)].received.insert(id, recipient);
        }
        for (id, record) in self.deposits {
            split[part_of(&record.user)].deposits.insert(id, record);
        }
        for (currency, deposited) in deposited {
            open_books(&mut split, &unapplied, currency, deposited);
        }
        for part in &split {
            assert!(part.conserved(), "money not conserved by a split");
            debug_assert!(part.totals_match_balances(), "running totals drifted in a split");
        }
        split
    }
}

/// Sets the flow counters of the parts of a split in `currency`: each part's deposits are its
/// balances plus its credits not yet applied (`unapplied`), adjusted so that they sum to
/// `deposited`, and its credits in or debits out make its books balance.
fn open_books(
    parts: &mut [Ledger],
    unapplied: &[HashMap<Currency, u128>],
    currency: Currency,
    deposited: u128,
) {
    let mut shares: Vec<u128> = parts
        .iter()
        .zip(unapplied)
        .map(|(part, unapplied)| part.total(currency) + unapplied.get(&currency).copied().unwrap_or(0))
        .collect();
    let opening: u128 = shares.iter().sum();
    if deposited >= opening {
        // Money that left and was settled before the split: attributed to the first part.
        shares[0] += deposited - opening;
    } else {
        // Credits applied here whose debits were counted elsewhere: taken from the first parts.
        let mut short = opening - deposited;
        for share in &mut shares {
            let taken = short.min(*share);
            *share -= taken;
            short -= taken;
        }
        assert_eq!(short, 0, "the parts hold more than all deposits");
    }
    for (part, share) in parts.iter_mut().zip(shares) {
        let total = part.total(currency);
        if share > 0 {
            part.deposited.insert(currency, share);
        }
        if share > total {
            part.debited_out.insert(currency, share - total);
        } else if total > share {
            part.credited_in.insert(currency, total - share);
        }
    }
}

fn check_amount(amount: u64) -> Result<(), LedgerError> {
    if amount == 0 || amount > AMOUNT_MAX {
        return Err(LedgerError::InvalidAmount);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::Slot;

    fn user(name: &str) -> UserId {
        UserId::new(Slot::of_username(name), [1; 10])
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    /// Found by the `wal_record` fuzz target's review: a stored currency was decoded unchecked,
    /// and `as_str` panicked on one that was not ASCII.
    #[test]
    fn a_stored_currency_is_checked_when_decoded() {
        let encoded = bincode::serialize(&usd()).unwrap();
        assert_eq!(encoded, b"USD");
        assert_eq!(bincode::deserialize::<Currency>(&encoded).unwrap(), usd());
        for bad in [&b"\xff\xfe\xfd"[..], b"usd", b"US1"] {
            assert!(bincode::deserialize::<Currency>(bad).is_err(), "{bad:?}");
        }
    }

    fn deposit(ledger: &mut Ledger, id: &str, to: &UserId, amount: u64) {
        ledger
            .execute(&Command::Deposit {
                id: id.into(),
                user: to.clone(),
                amount,
                currency: usd(),
            })
            .unwrap();
    }

    fn payment(id: &str, from: &UserId, to: &UserId, amount: u64) -> Payment {
        Payment {
            id: id.into(),
            from: from.clone(),
            to: to.clone(),
            amount,
            currency: usd(),
            description: None,
            amount_refunded: 0,
            created_at_ms: 1,
        }
    }

    #[test]
    fn currencies() {
        assert!(Currency::parse("USD").is_some());
        for bad in ["usd", "US", "USDD", "U$D", ""] {
            assert!(Currency::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn local_payments_move_money_in_one_step() {
        let (alice, bob) = (user("alice"), user("bob"));
        let mut ledger = Ledger::new();
        deposit(&mut ledger, "dep_1", &alice, 100);
        let pay = |amount| Command::Pay {
            payment: payment("pay_1", &alice, &bob, amount),
            payee_local: true,
        };
        assert_eq!(ledger.decide(&pay(101)), Err(LedgerError::InsufficientFunds));
        assert_eq!(ledger.decide(&pay(0)), Err(LedgerError::InvalidAmount));
        ledger.execute(&pay(60)).unwrap();
        assert_eq!(
            (ledger.balance(&alice, usd()), ledger.balance(&bob, usd())),
            (40, 60)
        );
        assert_eq!(ledger.decide(&pay(1)), Err(LedgerError::IdTaken));
        assert_eq!(ledger.payment("pay_1", &bob).unwrap().amount, 60);
        assert!(
            ledger.payment("pay_1", &user("carol")).is_none(),
            "no existence leak"
        );
        assert!(ledger.conserved());
    }

    #[test]
    fn cross_shard_payments_reserve_receive_once_and_settle() {
        let (alice, bob) = (user("alice"), user("bob"));
        let (mut payer_shard, mut payee_shard) = (Ledger::new(), Ledger::new());
        deposit(&mut payer_shard, "dep_1", &alice, 100);
        let events = payer_shard
            .execute(&Command::Pay {
                payment: payment("pay_1", &alice, &bob, 30),
                payee_local: false,
            })
            .unwrap();
        let Event::Reserved(transfer) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(payer_shard.balance(&alice, usd()), 70);
        assert_eq!(payer_shard.in_flight(usd()), 30);
        // Delivered twice: applied once.
        payee_shard.execute(&Command::Receive(transfer.clone())).unwrap();
        assert!(payee_shard
            .execute(&Command::Receive(transfer.clone()))
            .unwrap()
            .is_empty());
        assert_eq!(payee_shard.balance(&bob, usd()), 30);
        payer_shard
            .execute(&Command::Settle {
                transfer: "pay_1".into(),
            })
            .unwrap();
        assert!(payer_shard
            .execute(&Command::Settle {
                transfer: "pay_1".into()
            })
            .unwrap()
            .is_empty());
        assert_eq!(payer_shard.outbox().count(), 0);
        assert_eq!(
            payer_shard.total(usd()) + payee_shard.total(usd()),
            payer_shard.deposited(usd())
        );
        // Both sides show the payment.
        assert!(payer_shard.payment("pay_1", &alice).is_some());
        assert!(payee_shard.payment("pay_1", &bob).is_some());
    }

    #[test]
    fn refunds_by_the_payee_only_and_never_beyond_the_payment() {
        let (alice, bob) = (user("alice"), user("bob"));
        let mut ledger = Ledger::new();
        deposit(&mut ledger, "dep_1", &alice, 100);
        ledger
            .execute(&Command::Pay {
                payment: payment("pay_1", &alice, &bob, 50),
                payee_local: true,
            })
            .unwrap();
        let refund = |id: &str, by: &UserId, amount| Command::Refund {
            refund: id.into(),
            payment: "pay_1".into(),
            by: by.clone(),
            amount,
            payer_local: true,
        };
        assert_eq!(
            ledger.decide(&refund("ref_1", &alice, Some(10))),
            Err(LedgerError::NotThePayee)
        );
        assert_eq!(
            ledger.decide(&refund("ref_1", &bob, Some(51))),
            Err(LedgerError::RefundExceedsPayment)
        );
        ledger.execute(&refund("ref_1", &bob, Some(20))).unwrap();
        ledger.execute(&refund("ref_2", &bob, None)).unwrap();
        assert_eq!(ledger.balance(&alice, usd()), 100);
        assert_eq!(ledger.payment("pay_1", &alice).unwrap().amount_refunded, 50);
        assert_eq!(
            ledger.decide(&refund("ref_3", &bob, None)),
            Err(LedgerError::RefundExceedsPayment)
        );
        assert!(ledger.conserved());
    }

    /// Regression (found by the cluster simulator): a payment could take the id of a deposit or of
    /// a received transfer; the receiving shard would then drop its credit as a repeat.
    #[test]
    fn an_id_never_serves_twice() {
        let (alice, bob) = (user("alice"), user("bob"));
        let mut ledger = Ledger::new();
        deposit(&mut ledger, "dep_1", &alice, 100);
        let reuse = Command::Pay {
            payment: payment("dep_1", &alice, &bob, 1),
            payee_local: false,
        };
        assert_eq!(ledger.decide(&reuse), Err(LedgerError::IdTaken));
        ledger
            .execute(&Command::Receive(Transfer::Payment(payment(
                "pay_x", &bob, &alice, 5,
            ))))
            .unwrap();
        let reuse = Command::Pay {
            payment: payment("pay_x", &alice, &bob, 1),
            payee_local: false,
        };
        assert_eq!(ledger.decide(&reuse), Err(LedgerError::IdTaken));
    }

    #[test]
    fn pagination_is_newest_first_with_a_cursor() {
        let (alice, bob) = (user("alice"), user("bob"));
        let mut ledger = Ledger::new();
        deposit(&mut ledger, "dep_1", &alice, 100);
        for n in 0..5 {
            ledger
                .execute(&Command::Pay {
                    payment: payment(&format!("pay_{n}"), &alice, &bob, 1),
                    payee_local: true,
                })
                .unwrap();
        }
        let ids =
            |page: (Vec<&Payment>, bool)| (page.0.iter().map(|p| p.id.clone()).collect::<Vec<_>>(), page.1);
        assert_eq!(
            ids(ledger.payments_of(&bob, None, 2)),
            (vec!["pay_4".into(), "pay_3".into()], true)
        );
        assert_eq!(
            ids(ledger.payments_of(&bob, Some("pay_3"), 2)),
            (vec!["pay_2".into(), "pay_1".into()], true)
        );
        assert_eq!(
            ids(ledger.payments_of(&bob, Some("pay_1"), 2)),
            (vec!["pay_0".into()], false)
        );
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn through_bincode(ledger: &Ledger) -> Ledger {
        let bytes = bincode::serialize(ledger).expect("a ledger serializes");
        bincode::deserialize(&bytes).expect("a ledger deserializes")
    }

    fn reserve(ledger: &mut Ledger, payment: Payment) -> Transfer {
        let events = ledger
            .execute(&Command::Pay {
                payment,
                payee_local: false,
            })
            .unwrap();
        match &events[..] {
            [Event::Reserved(transfer)] => transfer.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn reserve_refund(
        ledger: &mut Ledger,
        refund: &str,
        payment: &str,
        by: &UserId,
        amount: u64,
    ) -> Transfer {
        let events = ledger
            .execute(&Command::Refund {
                refund: refund.into(),
                payment: payment.into(),
                by: by.clone(),
                amount: Some(amount),
                payer_local: false,
            })
            .unwrap();
        match &events[..] {
            [Event::RefundReserved { transfer, .. }] => transfer.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_snapshot_round_trips_through_bincode() {
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let mut ledger = Ledger::new();
        deposit(&mut ledger, "dep_1", &alice, 100);
        ledger
            .execute(&Command::Deposit {
                id: "dep_2".into(),
                user: bob.clone(),
                amount: 7,
                currency: eur(),
            })
            .unwrap();
        ledger
            .execute(&Command::Pay {
                payment: payment("pay_1", &alice, &bob, 10),
                payee_local: true,
            })
            .unwrap();
        reserve(&mut ledger, payment("pay_2", &alice, &carol, 20));
        reserve(&mut ledger, payment("pay_3", &alice, &carol, 5));
        ledger
            .execute(&Command::Settle {
                transfer: "pay_2".into(),
            })
            .unwrap();
        ledger
            .execute(&Command::Receive(Transfer::Payment(payment(
                "pay_4", &carol, &bob, 9,
            ))))
            .unwrap();
        reserve_refund(&mut ledger, "ref_1", "pay_4", &bob, 4);
        let copy = through_bincode(&ledger);
        assert_eq!(copy, ledger);
        assert_eq!(
            copy.outbox().map(Transfer::id).collect::<Vec<_>>(),
            ["pay_3", "ref_1"]
        );
        assert!(copy.has_received("pay_4"));
        assert_eq!(copy.deposit("dep_1"), Some((&alice, 100, usd())));
        assert_eq!(copy.deposit("dep_2"), Some((&bob, 7, eur())));
        assert_eq!(copy.deposit("pay_1"), None, "only deposits are deposits");
        assert!(copy.conserved());
    }

    /// A deposit retried under its id (after a crash, or a lost answer) is refused, whatever its
    /// fields, and the ledger tells what was deposited under that id.
    #[test]
    fn a_retried_deposit_is_refused_and_its_record_answers() {
        let (alice, bob) = (user("alice"), user("bob"));
        let mut ledger = Ledger::new();
        assert_eq!(ledger.deposit("dep_1"), None);
        deposit(&mut ledger, "dep_1", &alice, 100);
        for (to, amount) in [(&alice, 100), (&bob, 5)] {
            let retry = Command::Deposit {
                id: "dep_1".into(),
                user: to.clone(),
                amount,
                currency: usd(),
            };
            assert_eq!(ledger.decide(&retry), Err(LedgerError::IdTaken));
        }
        assert_eq!(ledger.deposit("dep_1"), Some((&alice, 100, usd())));
        assert_eq!(ledger.balance(&alice, usd()), 100);
        // An id taken by a payment is refused too, but is no deposit.
        ledger
            .execute(&Command::Pay {
                payment: payment("pay_1", &alice, &bob, 1),
                payee_local: true,
            })
            .unwrap();
        let reuse = Command::Deposit {
            id: "pay_1".into(),
            user: alice.clone(),
            amount: 1,
            currency: usd(),
        };
        assert_eq!(ledger.decide(&reuse), Err(LedgerError::IdTaken));
        assert_eq!(ledger.deposit("pay_1"), None);
    }

    /// Before a reshard ids are checked per shard, so two shards may each have used one deposit
    /// id: merging them must not panic, keeps the first part's record and the id stays used.
    #[test]
    fn merging_shards_that_used_one_deposit_id_keeps_the_first_record() {
        let (alice, bob) = (user("alice"), user("bob"));
        let (mut first, mut second) = (Ledger::new(), Ledger::new());
        deposit(&mut first, "dep_1", &alice, 10);
        deposit(&mut second, "dep_1", &bob, 20);
        let merged = Ledger::merge(vec![first, second]);
        assert_eq!(merged.deposit("dep_1"), Some((&alice, 10, usd())));
        assert_eq!(
            (merged.balance(&alice, usd()), merged.balance(&bob, usd())),
            (10, 20)
        );
        let retry = Command::Deposit {
            id: "dep_1".into(),
            user: bob.clone(),
            amount: 20,
            currency: usd(),
        };
        assert_eq!(merged.decide(&retry), Err(LedgerError::IdTaken));
    }

    /// After a reshard a payer and payee may share a shard while the payment's credit is still in
    /// its outbox: resent to this very shard, it credits the payee once and keeps one record.
    #[test]
    fn a_credit_resent_to_the_payers_own_shard_is_applied_once() {
        let (alice, bob) = (user("alice"), user("bob"));
        let mut ledger = Ledger::new();
        deposit(&mut ledger, "dep_1", &alice, 100);
        let transfer = reserve(&mut ledger, payment("pay_1", &alice, &bob, 30));
        assert!(
            ledger.payment("pay_1", &bob).is_none(),
            "not the payee's before it arrives"
        );
        for _ in 0..2 {
            ledger.execute(&Command::Receive(transfer.clone())).unwrap();
        }
        ledger
            .execute(&Command::Settle {
                transfer: "pay_1".into(),
            })
            .unwrap();
        assert_eq!(
            (ledger.balance(&alice, usd()), ledger.balance(&bob, usd())),
            (70, 30)
        );
        assert_eq!(ledger.payments.len(), 1);
        for party in [&alice, &bob] {
            let (page, more) = ledger.payments_of(party, None, 10);
            assert_eq!((page.len(), more), (1, false), "{party}");
        }
        assert_eq!(ledger.payment("pay_1", &bob), ledger.payment("pay_1", &alice));
        assert_eq!(ledger.outbox().count(), 0);
        assert!(ledger.conserved());
        assert_eq!(ledger.total(usd()), ledger.deposited(usd()));
    }

    /// A refund in flight when the payer's and payee's shards merge: the payee's side counted it
    /// when reserving, so its arrival credits the payer without counting it again.
    #[test]
    fn a_refund_arriving_where_both_sides_are_is_counted_once() {
        let (alice, bob) = (user("alice"), user("bob"));
        let (mut payer_shard, mut payee_shard) = (Ledger::new(), Ledger::new());
        deposit(&mut payer_shard, "dep_1", &alice, 100);
        let transfer = reserve(&mut payer_shard, payment("pay_1", &alice, &bob, 50));
        payee_shard.execute(&Command::Receive(transfer)).unwrap();
        payer_shard
            .execute(&Command::Settle {
                transfer: "pay_1".into(),
            })
            .unwrap();
        let refund = reserve_refund(&mut payee_shard, "ref_1", "pay_1", &bob, 20);

        let mut merged = Ledger::merge(vec![payer_shard.clone(), payee_shard.clone()]);
        assert_eq!(merged.payments.len(), 1);
        assert_eq!(merged.payment("pay_1", &bob).unwrap().amount_refunded, 20);
        merged.execute(&Command::Receive(refund.clone())).unwrap();
        merged
            .execute(&Command::Settle {
                transfer: "ref_1".into(),
            })
            .unwrap();
        assert_eq!(
            (merged.balance(&alice, usd()), merged.balance(&bob, usd())),
            (70, 30)
        );
        assert_eq!(merged.payment("pay_1", &alice).unwrap().amount_refunded, 20);
        assert_eq!(
            merged.decide(&Command::Refund {
                refund: "ref_2".into(),
                payment: "pay_1".into(),
                by: bob.clone(),
                amount: Some(31),
                payer_local: true,
            }),
            Err(LedgerError::RefundExceedsPayment)
        );

        // Split apart again before it arrives: the payer's copy leaves the refund out until then.
        let merged = Ledger::merge(vec![payer_shard, payee_shard]);
        let owner = |user: &UserId| usize::from(user == &bob);
        let mut parts = merged.split(&owner, 2);
        assert_eq!(parts[0].payment("pay_1", &alice).unwrap().amount_refunded, 0);
        assert!(parts[0].payment("pay_1", &bob).is_none());
        assert_eq!(parts[1].payment("pay_1", &bob).unwrap().amount_refunded, 20);
        assert_eq!(parts[1].outbox().collect::<Vec<_>>(), [&refund]);
        parts[0].execute(&Command::Receive(refund)).unwrap();
        parts[1]
            .execute(&Command::Settle {
                transfer: "ref_1".into(),
            })
            .unwrap();
        assert_eq!(parts[0].payment("pay_1", &alice), parts[1].payment("pay_1", &bob));
        assert_eq!(
            (parts[0].balance(&alice, usd()), parts[1].balance(&bob, usd())),
            (70, 30)
        );
        for part in &parts {
            assert!(part.conserved());
        }
        assert_eq!(
            parts.iter().map(|p| p.total(usd())).sum::<u128>(),
            parts.iter().map(|p| p.deposited(usd())).sum::<u128>()
        );
    }

    /// How a reshard is carried out.
    #[derive(Debug, Clone, Copy)]
    enum Route {
        /// Merge all old shards into one, then split it among the new ones.
        MergeThenSplit,
        /// Split each old shard among the new ones, then merge each new shard's parts.
        SplitThenMerge,
    }

    /// A payment the cluster accepted.
    #[derive(Debug, Clone)]
    struct Known {
        id: String,
        payer: UserId,
        payee: UserId,
        currency: Currency,
        amount: u64,
        refunded: u64,
    }

    /// What a user's shard shows of the user: balances, and payment ids newest first.
    type View = (Vec<(Currency, u64)>, Vec<String>);

    /// Ledgers of a cluster whose users live on the shard of their slot, with what the accepted
    /// commands say each user holds once every credit has arrived.
    struct Cluster {
        shards: Vec<Ledger>,
        users: Vec<UserId>,
        expected: HashMap<(UserId, Currency), u64>,
        payments: Vec<Known>,
        /// Transfers applied at their destination, with the user credited.
        applied: HashMap<String, UserId>,
        /// Deposits accepted, by id.
        deposits: Vec<(String, DepositRecord)>,
        next_id: u64,
    }

    impl Cluster {
        fn new(users: usize, shards: usize) -> Cluster {
            Cluster {
                shards: vec![Ledger::new(); shards],
                users: (0..users).map(|n| user(&format!("user{n}"))).collect(),
                expected: HashMap::new(),
                payments: Vec::new(),
                applied: HashMap::new(),
                deposits: Vec::new(),
                next_id: 0,
            }
        }

        fn home(&self, user: &UserId) -> usize {
            user.slot().shard(self.shards.len())
        }

        fn fresh_id(&mut self, prefix: &str) -> String {
            self.next_id += 1;
            format!("{prefix}_{}", self.next_id)
        }

        fn expect(&mut self, user: &UserId, currency: Currency) -> &mut u64 {
            self.expected.entry((user.clone(), currency)).or_default()
        }

        fn deposit(&mut self, user: usize, amount: u64, currency: Currency) {
            let user = self.users[user].clone();
            let id = self.fresh_id("dep");
            let command = Command::Deposit {
                id: id.clone(),
                user: user.clone(),
                amount,
                currency,
            };
            let home = self.home(&user);
            self.shards[home].execute(&command).expect("a valid deposit");
            *self.expect(&user, currency) += amount;
            self.deposits.push((
                id,
                DepositRecord {
                    user,
                    amount,
                    currency,
                },
            ));
        }

        /// Each deposit is known on its user's shard, which refuses its id again, and on no
        /// other shard.
        fn check_deposits(&self) {
            for (id, record) in &self.deposits {
                let home = self.home(&record.user);
                for (shard, ledger) in self.shards.iter().enumerate() {
                    let expected = (shard == home).then(|| record.parts());
                    assert_eq!(
                        ledger.deposit(id),
                        expected,
                        "{id} on shard {shard} of {}",
                        self.shards.len()
                    );
                }
                let retry = Command::Deposit {
                    id: id.clone(),
                    user: record.user.clone(),
                    amount: record.amount,
                    currency: record.currency,
                };
                assert_eq!(
                    self.shards[home].decide(&retry),
                    Err(LedgerError::IdTaken),
                    "{id}"
                );
            }
        }

        /// Pays on the payer's shard; a credit for another shard stays in the outbox. The index
        /// of the payment, if accepted.
        fn pay(&mut self, payer: usize, payee: usize, amount: u64, currency: Currency) -> Option<usize> {
            let (payer, payee) = (self.users[payer].clone(), self.users[payee].clone());
            let home = self.home(&payer);
            let payment = Payment {
                id: self.fresh_id("pay"),
                from: payer.clone(),
                to: payee.clone(),
                amount,
                currency,
                description: None,
                amount_refunded: 0,
                created_at_ms: self.next_id,
            };
            let command = Command::Pay {
                payee_local: self.home(&payee) == home,
                payment: payment.clone(),
            };
            self.shards[home].execute(&command).ok()?;
            *self.expect(&payer, currency) -= amount;
            *self.expect(&payee, currency) += amount;
            self.payments.push(Known {
                id: payment.id,
                payer,
                payee,
                currency,
                amount,
                refunded: 0,
            });
            Some(self.payments.len() - 1)
        }

        /// Refunds on the payee's shard; a credit for another shard stays in the outbox. The
        /// refund's id, if accepted.
        fn refund(&mut self, payment: usize, amount: u64) -> Option<String> {
            let known = self.payments[payment].clone();
            let home = self.home(&known.payee);
            let refund = self.fresh_id("ref");
            let command = Command::Refund {
                refund: refund.clone(),
                payment: known.id,
                by: known.payee.clone(),
                amount: Some(amount),
                payer_local: self.home(&known.payer) == home,
            };
            self.shards[home].execute(&command).ok()?;
            *self.expect(&known.payee, known.currency) -= amount;
            *self.expect(&known.payer, known.currency) += amount;
            self.payments[payment].refunded += amount;
            Some(refund)
        }

        /// Every outbox entry, with its shard, oldest first per shard.
        fn outboxes(&self) -> Vec<(usize, Transfer)> {
            self.shards
                .iter()
                .enumerate()
                .flat_map(|(shard, ledger)| ledger.outbox().map(move |t| (shard, t.clone())))
                .collect()
        }

        /// The recipient's shard applies an outbox entry (and does not acknowledge it yet).
        fn receive(&mut self, transfer: &Transfer) {
            let home = self.home(transfer.recipient());
            let events = self.shards[home]
                .execute(&Command::Receive(transfer.clone()))
                .unwrap_or_else(|error| panic!("a credit refused ({error}): {transfer:?}"));
            if !events.is_empty() {
                let earlier = self
                    .applied
                    .insert(transfer.id().to_string(), transfer.recipient().clone());
                assert!(earlier.is_none(), "{} applied twice", transfer.id());
            }
            assert!(self.shards[home].has_received(transfer.id()));
        }

        /// Sends an outbox entry from `shard` to its recipient's shard and acknowledges it.
        fn deliver(&mut self, shard: usize, transfer: &Transfer) {
            self.receive(transfer);
            self.shards[shard]
                .execute(&Command::Settle {
                    transfer: transfer.id().to_string(),
                })
                .expect("a settlement is never refused");
        }

        fn deliver_id(&mut self, id: &str) {
            let (shard, transfer) = self
                .outboxes()
                .into_iter()
                .find(|(_, t)| t.id() == id)
                .expect("in an outbox");
            self.deliver(shard, &transfer);
        }

        fn receive_id(&mut self, id: &str) {
            let (_, transfer) = self
                .outboxes()
                .into_iter()
                .find(|(_, t)| t.id() == id)
                .expect("in an outbox");
            self.receive(&transfer);
        }

        /// What each user's shard shows: balances, and payment ids newest first.
        fn views(&self) -> Vec<View> {
            self.users
                .iter()
                .map(|user| {
                    let ledger = &self.shards[self.home(user)];
                    let (page, more) = ledger.payments_of(user, None, usize::MAX);
                    assert!(!more);
                    let ids = page.iter().map(|p| p.id.clone()).collect();
                    (ledger.balances_of(user), ids)
                })
                .collect()
        }

        /// Moves every ledger through a snapshot and then to `shards` new shards.
        fn reshard(&mut self, shards: usize, route: Route) {
            self.check();
            let before = self.views();
            let owner = |user: &UserId| user.slot().shard(shards);
            let old: Vec<Ledger> = std::mem::take(&mut self.shards)
                .iter()
                .map(|ledger| {
                    let copy = through_bincode(ledger);
                    assert_eq!(&copy, ledger);
                    copy
                })
                .collect();
            self.shards = match route {
                Route::MergeThenSplit => Ledger::merge(old).split(&owner, shards),
                Route::SplitThenMerge => {
                    let mut columns: Vec<Vec<Ledger>> = vec![Vec::new(); shards];
                    for ledger in old {
                        for (column, part) in columns.iter_mut().zip(ledger.split(&owner, shards)) {
                            column.push(part);
                        }
                    }
                    columns.into_iter().map(Ledger::merge).collect()
                }
            };
            assert_eq!(self.shards.len(), shards);
            assert_eq!(self.views(), before, "a user's balances or payments changed");
            for (shard, ledger) in self.shards.iter().enumerate() {
                for user in self.users.iter().filter(|u| self.home(u) != shard) {
                    assert!(ledger.balances_of(user).is_empty(), "{user} away from home");
                    assert!(
                        ledger.payments_of(user, None, 1).0.is_empty(),
                        "{user} away from home"
                    );
                }
            }
            self.check();
        }

        /// Resends every outbox entry (to whatever shard, this one included) until all settle.
        fn recover(&mut self) {
            for _ in 0..3 {
                for (shard, transfer) in self.outboxes() {
                    self.deliver(shard, &transfer);
                    self.check();
                }
                if self.outboxes().is_empty() {
                    return;
                }
            }
            panic!("outboxes still not empty after recovery");
        }

        /// What holds at any time.
        fn check(&self) {
            for (shard, ledger) in self.shards.iter().enumerate() {
                assert!(ledger.conserved(), "shard {shard}'s books do not balance");
                debug_assert!(ledger.totals_match_balances());
            }
            // Outbox entries not yet applied at their destination.
            let pending: Vec<Transfer> = self
                .outboxes()
                .into_iter()
                .map(|(_, transfer)| transfer)
                .filter(|t| !self.shards[self.home(t.recipient())].has_received(t.id()))
                .collect();
            for currency in [usd(), eur()] {
                let balances: u128 = self.shards.iter().map(|l| l.total(currency)).sum();
                let deposited: u128 = self.shards.iter().map(|l| l.deposited(currency)).sum();
                let in_flight: u128 = pending
                    .iter()
                    .filter(|t| t.credit().1 == currency)
                    .map(|t| u128::from(t.credit().2))
                    .sum();
                assert_eq!(balances + in_flight, deposited, "{currency:?} not conserved");
                for user in &self.users {
                    let on_the_way: u64 = pending
                        .iter()
                        .filter(|t| t.recipient() == user && t.credit().1 == currency)
                        .map(|t| t.credit().2)
                        .sum();
                    let expected = self.expected.get(&(user.clone(), currency)).copied().unwrap_or(0);
                    for (shard, ledger) in self.shards.iter().enumerate() {
                        let held = ledger.balance(user, currency);
                        if shard == self.home(user) {
                            assert_eq!(held + on_the_way, expected, "{user}'s {currency:?}");
                        } else {
                            assert_eq!(held, 0, "{user} holds {currency:?} away from home");
                        }
                    }
                }
            }
            // Each outbox entry is on its sender's shard; each applied transfer is known there.
            for (shard, transfer) in self.outboxes() {
                let sender = match &transfer {
                    Transfer::Payment(payment) => payment.from.clone(),
                    Transfer::Refund { payment, .. } => {
                        let known = self.payments.iter().find(|k| &k.id == payment).unwrap();
                        known.payee.clone()
                    }
                };
                assert_eq!(self.home(&sender), shard, "{transfer:?} away from its sender");
            }
            for (id, recipient) in &self.applied {
                assert!(
                    self.shards[self.home(recipient)].has_received(id),
                    "{id} forgotten"
                );
            }
            self.check_deposits();
            for known in &self.payments {
                let payer_shard = &self.shards[self.home(&known.payer)];
                let payer_copy = payer_shard
                    .payment(&known.id, &known.payer)
                    .expect("the payer sees the payment");
                let payee_copy = self.shards[self.home(&known.payee)].payment(&known.id, &known.payee);
                for copy in [Some(payer_copy), payee_copy].into_iter().flatten() {
                    assert_eq!((copy.amount, copy.currency), (known.amount, known.currency));
                    assert!(copy.amount_refunded <= copy.amount);
                }
                assert!(payer_copy.amount_refunded <= known.refunded);
                match payee_copy {
                    Some(copy) => assert_eq!(copy.amount_refunded, known.refunded, "{known:?}"),
                    None => assert_eq!(known.refunded, 0, "refunded before it arrived"),
                }
                // Listed once for each party that sees it.
                for (party, sees) in [(&known.payer, true), (&known.payee, payee_copy.is_some())] {
                    let ledger = &self.shards[self.home(party)];
                    let listed = ledger
                        .payments_of(party, None, usize::MAX)
                        .0
                        .iter()
                        .filter(|p| p.id == known.id)
                        .count();
                    assert_eq!(
                        listed,
                        usize::from(sees),
                        "{party} lists {} {listed} times",
                        known.id
                    );
                }
            }
        }

        /// What holds once recovery is done.
        fn check_recovered(&self) {
            self.check();
            assert!(self.outboxes().is_empty());
            for currency in [usd(), eur()] {
                let balances: u128 = self.shards.iter().map(|l| l.total(currency)).sum();
                let deposited: u128 = self.shards.iter().map(|l| l.deposited(currency)).sum();
                assert_eq!(balances, deposited);
                for user in &self.users {
                    let expected = self.expected.get(&(user.clone(), currency)).copied().unwrap_or(0);
                    assert_eq!(self.shards[self.home(user)].balance(user, currency), expected);
                }
            }
            for known in &self.payments {
                let copy = |party: &UserId| self.shards[self.home(party)].payment(&known.id, party);
                let (payer_copy, payee_copy) = (copy(&known.payer), copy(&known.payee));
                assert_eq!(payer_copy, payee_copy, "{known:?}");
                assert_eq!(payer_copy.unwrap().amount_refunded, known.refunded);
            }
        }
    }

    /// 40 users on 2 shards, with local payments, cross-shard payments settled, applied but not
    /// acknowledged, and still in flight, and refunds of each kind.
    fn busy_cluster() -> Cluster {
        let mut cluster = Cluster::new(40, 2);
        for n in 0..40 {
            cluster.deposit(n, 1_000 + n as u64, usd());
            if n % 3 == 0 {
                cluster.deposit(n, 500, eur());
            }
        }
        let mut kinds = [0usize; 2];
        for n in 0..40 {
            let payee = (n * 7 + 3) % 40;
            let currency = if n % 3 == 0 && payee % 3 == 0 {
                eur()
            } else {
                usd()
            };
            let payment = cluster.pay(n, payee, 10 + n as u64, currency).expect("covered");
            let known = cluster.payments[payment].clone();
            let cross = cluster.home(&known.payer) != cluster.home(&known.payee);
            kinds[usize::from(cross)] += 1;
            // A second, later payment back, so histories interleave sent and received.
            cluster.pay(payee, n, 1, usd()).expect("covered");
            match (n % 6, cross) {
                (0, true) => cluster.deliver_id(&known.id),
                (1, true) => cluster.receive_id(&known.id),
                (2, true) => {} // in flight
                (_, true) => {
                    cluster.deliver_id(&known.id);
                    let refund = cluster.refund(payment, 5).expect("refundable");
                    match n % 6 {
                        3 => cluster.deliver_id(&refund),
                        4 => cluster.receive_id(&refund),
                        _ => {
                            cluster.refund(payment, 2).expect("refundable"); // two in flight
                        }
                    }
                }
                (_, false) => {
                    if n % 2 == 0 {
                        cluster.refund(payment, 3).expect("refundable");
                    }
                }
            }
            cluster.check();
        }
        // Credits back and forth still on their way, and their applied-but-unacknowledged kin.
        for (index, (shard, transfer)) in cluster.outboxes().into_iter().enumerate() {
            if index % 4 == 0 {
                cluster.receive(&transfer);
            } else if index % 4 == 1 {
                cluster.deliver(shard, &transfer);
            }
        }
        assert!(
            kinds[0] >= 5 && kinds[1] >= 5,
            "local and cross-shard payments: {kinds:?}"
        );
        assert!(cluster.outboxes().len() >= 10);
        cluster.check();
        cluster
    }

    #[test]
    fn resharding_two_to_one_to_two_moves_money_and_delivers_credits_in_flight_once() {
        let mut cluster = busy_cluster();
        assert!(cluster.deposits.len() >= 40);
        cluster.reshard(1, Route::MergeThenSplit);
        for (id, record) in &cluster.deposits {
            assert_eq!(cluster.shards[0].deposit(id), Some(record.parts()), "{id} merged");
        }
        // On one shard every entry is for this very shard; deliver some, keep the rest.
        for (shard, transfer) in cluster.outboxes().into_iter().step_by(3) {
            cluster.deliver(shard, &transfer);
        }
        cluster.pay(0, 1, 1, usd()).expect("covered");
        cluster.check();
        cluster.reshard(2, Route::MergeThenSplit);
        // Each deposit is found on its user's new shard only; its id is refused on every shard.
        for (id, record) in &cluster.deposits {
            let home = cluster.home(&record.user);
            for (shard, ledger) in cluster.shards.iter().enumerate() {
                assert_eq!(
                    ledger.deposit(id).is_some(),
                    shard == home,
                    "{id} on shard {shard}"
                );
                let retry = Command::Deposit {
                    id: id.clone(),
                    user: record.user.clone(),
                    amount: record.amount,
                    currency: record.currency,
                };
                assert_eq!(ledger.decide(&retry), Err(LedgerError::IdTaken), "{id}");
            }
        }
        cluster.recover();
        cluster.check_recovered();
    }

    #[test]
    fn resharding_two_to_three_by_either_route_delivers_credits_in_flight_once() {
        for route in [Route::MergeThenSplit, Route::SplitThenMerge] {
            let mut cluster = busy_cluster();
            cluster.reshard(3, route);
            // The new shards work as shards: pay and refund across them, then recover.
            let payment = cluster.pay(5, 6, 4, usd()).expect("covered");
            if cluster.home(&cluster.users[5]) != cluster.home(&cluster.users[6]) {
                cluster.deliver_id(&cluster.payments[payment].id.clone());
            }
            cluster.refund(payment, 4).expect("refundable");
            cluster.check();
            cluster.recover();
            cluster.check_recovered();
        }
    }

    /// A step of the resharding property.
    #[derive(Debug, Clone)]
    enum Step {
        Deposit(usize, u64, bool),
        Pay(usize, usize, u64, bool),
        Refund(usize, u64),
        /// Apply an outbox entry, without acknowledging it.
        Receive(usize),
        /// Apply and acknowledge an outbox entry.
        Deliver(usize),
        Reshard(usize, bool),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            2 => (0usize..8, 1u64..=100, any::<bool>()).prop_map(|(u, a, e)| Step::Deposit(u, a, e)),
            5 => (0usize..8, 1usize..8, 1u64..=60, any::<bool>())
                .prop_map(|(u, v, a, e)| Step::Pay(u, v, a, e)),
            3 => (0usize..64, 1u64..=30).prop_map(|(p, a)| Step::Refund(p, a)),
            3 => (0usize..64).prop_map(Step::Receive),
            3 => (0usize..64).prop_map(Step::Deliver),
            1 => (1usize..=4, any::<bool>()).prop_map(|(s, r)| Step::Reshard(s, r)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Whatever was in flight, resharding any number of times by either route keeps every
        /// user's money, payments and credits on their shard, and a recovery then delivers every
        /// credit exactly once with both copies of every payment in agreement.
        #[test]
        fn resharding_at_any_point_conserves_money(
            shards in 1usize..=3,
            steps in proptest::collection::vec(step(), 1..100),
        ) {
            let mut cluster = Cluster::new(8, shards);
            let currency = |eur_chosen: bool| if eur_chosen { eur() } else { usd() };
            for step in steps {
                match step {
                    Step::Deposit(user, amount, code) => cluster.deposit(user, amount, currency(code)),
                    Step::Pay(payer, offset, amount, code) => {
                        let _ = cluster.pay(payer, (payer + offset) % 8, amount, currency(code));
                    }
                    Step::Refund(payment, amount) => {
                        if !cluster.payments.is_empty() {
                            let _ = cluster.refund(payment % cluster.payments.len(), amount);
                        }
                    }
                    Step::Receive(entry) | Step::Deliver(entry) => {
                        let outboxes = cluster.outboxes();
                        if !outboxes.is_empty() {
                            let (shard, transfer) = &outboxes[entry % outboxes.len()];
                            if matches!(step, Step::Receive(_)) {
                                cluster.receive(transfer);
                            } else {
                                cluster.deliver(*shard, transfer);
                            }
                        }
                    }
                    Step::Reshard(shards, merge_first) => {
                        let route = if merge_first { Route::MergeThenSplit } else { Route::SplitThenMerge };
                        cluster.reshard(shards, route);
                    }
                }
                cluster.check();
            }
            cluster.recover();
            cluster.check_recovered();
        }
    }
}
