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

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::slots::UserId;

/// Largest amount of one deposit, payment or refund, in minor units (the contract's 10^15).
pub const AMOUNT_MAX: u64 = 1_000_000_000_000_000;
/// Longest payment description, in characters.
pub const DESCRIPTION_CHARS_MAX: usize = 200;

/// An ISO 4217 currency code (three upper-case letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Currency([u8; 3]);

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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// One shard's money.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ledger {
    balances: HashMap<(UserId, Currency), u64>,
    /// Payments where this shard's user is payer or payee.
    payments: HashMap<String, Payment>,
    /// Per user: payment ids in the order they were recorded here (oldest first).
    history: HashMap<UserId, Vec<String>>,
    /// Credits sent to other shards and not yet acknowledged, by transfer id, oldest first.
    outbox: BTreeMap<u64, Transfer>,
    outbox_index: HashMap<String, u64>,
    next_outbox: u64,
    /// Transfers received from other shards (deduplication).
    received: HashSet<String>,
    /// Refund ids and deposit ids used here.
    used_ids: HashSet<String>,
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
            .filter(|p| &p.from == viewer || &p.to == viewer)
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
            .filter_map(|id| self.payments.get(id))
            .collect();
        let has_more = end > page.len();
        (page, has_more)
    }

    /// Credits waiting for an acknowledgement, oldest first: what recovery resends.
    pub fn outbox(&self) -> impl Iterator<Item = &Transfer> {
        self.outbox.values()
    }

    /// Money of `currency` that left this shard in credits not yet acknowledged.
    pub fn in_flight(&self, currency: Currency) -> u128 {
        self.outbox
            .values()
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

    /// Whether a transfer from another shard was applied here.
    pub fn has_received(&self, transfer: &str) -> bool {
        self.received.contains(transfer)
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
                if self.received.contains(transfer.id()) {
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
                self.credit(user, *currency, *amount);
                *self.deposited.entry(*currency).or_default() += u128::from(*amount);
            }
            Event::PaidLocally(payment) => {
                self.debit(&payment.from, payment.currency, payment.amount);
                self.credit(&payment.to, payment.currency, payment.amount);
                self.record(payment.clone(), &[&payment.from, &payment.to]);
            }
            Event::Reserved(transfer) => {
                let Transfer::Payment(payment) = transfer else {
                    panic!("only payments are reserved by Reserved");
                };
                self.debit(&payment.from, payment.currency, payment.amount);
                *self.debited_out.entry(payment.currency).or_default() += u128::from(payment.amount);
                self.record(payment.clone(), &[&payment.from]);
                self.push_outbox(transfer.clone());
            }
            Event::Received(transfer) => {
                self.received.insert(transfer.id().to_string());
                let (to, currency, amount) = transfer.credit();
                let to = to.clone();
                self.credit(&to, currency, amount);
                *self.credited_in.entry(currency).or_default() += u128::from(amount);
                match transfer {
                    Transfer::Payment(payment) => self.record(payment.clone(), &[&payment.to]),
                    Transfer::Refund { payment, amount, .. } => {
                        // The payer's copy of the payment, when this shard holds one.
                        let _ = self.record_refund(payment, *amount);
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
                self.push_outbox(transfer.clone());
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
            || self.received.contains(id)
    }

    /// Adds a refund to a payment's `amount_refunded` (never beyond its amount) and returns its
    /// payer, payee and currency; `None` if this shard holds no copy of the payment.
    fn record_refund(&mut self, payment: &str, amount: u64) -> Option<(UserId, UserId, Currency)> {
        let record = self.payments.get_mut(payment)?;
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

    fn record(&mut self, payment: Payment, parties: &[&UserId]) {
        for party in parties {
            self.history
                .entry((*party).clone())
                .or_default()
                .push(payment.id.clone());
        }
        self.payments.insert(payment.id.clone(), payment);
    }

    fn push_outbox(&mut self, transfer: Transfer) {
        let sequence = self.next_outbox;
        self.next_outbox += 1;
        self.outbox_index.insert(transfer.id().to_string(), sequence);
        self.outbox.insert(sequence, transfer);
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
}
