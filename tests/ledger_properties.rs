//! Property tests of `payments::ledger` as a cluster: 2–3 shards, each with its own `Ledger`, and
//! 4–6 users with a fixed home shard, driven by a random schedule of deposits, payments, refunds
//! and network steps. The network loses, duplicates, delays and reorders the credits between shards
//! and their acknowledgements, and any outbox entry may be resent at any time (recovery).
//!
//! After every step: each shard's books balance, every accepted debit was covered, money is
//! conserved across the cluster (balances + credits not yet applied = deposits), every transfer is
//! applied at most once, and no payment is refunded beyond its amount. After a final lossless
//! recovery: outboxes are empty, every user holds exactly what the accepted commands say, and both
//! copies of every payment agree. Replaying each shard's events rebuilds the same ledger.
//!
//! Ids are unique across the cluster, as the callers draw them at random.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use shardpay::payments::ledger::{
    Command, Currency, Event, Ledger, LedgerError, Payment, Transfer, AMOUNT_MAX,
};
use shardpay::slots::{Slot, UserId};

/// The currencies the schedule uses.
const CURRENCY_CODES: [&str; 2] = ["USD", "EUR"];
/// Rounds of resend-everything-then-deliver-everything before recovery is declared stuck.
const RECOVERY_ROUNDS_MAX: usize = 3;
/// Steps in one schedule.
const SCHEDULE_STEPS_MAX: usize = 120;

fn currency(index: usize) -> Currency {
    Currency::parse(CURRENCY_CODES[index % CURRENCY_CODES.len()]).expect("valid code")
}

/// How much a payment or refund asks for, relative to what there is.
#[derive(Debug, Clone)]
enum Amount {
    /// 0 (always refused).
    Zero,
    /// A fixed amount, which may or may not be covered.
    Fixed(u64),
    /// Everything: the payer's whole balance, or the rest of a payment (`amount: None`).
    All,
    /// More than there is, by this much: the balance for a payment, the rest for a refund.
    Over(u64),
    /// Above [`AMOUNT_MAX`].
    TooLarge,
}

/// Who asks for a refund.
#[derive(Debug, Clone)]
enum Refunder {
    /// The payee (the only one allowed).
    Payee,
    /// The payer.
    Payer,
    /// Any user, maybe neither party.
    Anyone(Index),
}

/// One step of a schedule. Indexes pick among what exists when the step runs.
#[derive(Debug, Clone)]
enum Step {
    /// An admin deposit to a user, on its home shard.
    Deposit {
        user: Index,
        amount: u64,
        currency: usize,
    },
    /// A payment to another user, on the payer's home shard.
    Pay {
        payer: Index,
        payee: Index,
        amount: Amount,
        currency: usize,
    },
    /// A refund of an accepted payment, on the refunder's home shard.
    Refund {
        payment: Index,
        by: Refunder,
        amount: Amount,
    },
    /// The shard (re)sends one of its outbox entries.
    Send { shard: Index, entry: Index },
    /// The shard resends its whole outbox, as after a restart.
    SendAll { shard: Index },
    /// A message in flight arrives; with `keep`, a copy stays in flight (a duplicate).
    Deliver { message: Index, keep: bool },
    /// A message in flight is lost.
    Drop { message: Index },
}

/// A message between shards.
#[derive(Debug, Clone)]
enum Message {
    /// A credit from shard `from` for shard `to` to apply.
    Receive {
        from: usize,
        to: usize,
        transfer: Transfer,
    },
    /// Tells shard `to` that its outbox entry `transfer` was applied.
    Ack { to: usize, transfer: String },
}

/// A payment the ledger accepted, as the simulator knows it.
#[derive(Debug, Clone)]
struct Known {
    id: String,
    payer: usize,
    payee: usize,
    amount: u64,
    currency: Currency,
    /// Refunds accepted so far.
    refunded: u64,
}

/// The simulated cluster, with what the accepted commands say should happen.
struct Cluster {
    shards: Vec<Ledger>,
    users: Vec<UserId>,
    home: HashMap<UserId, usize>,
    network: Vec<Message>,
    /// Each shard's applied events, in order: what storage would log.
    logs: Vec<Vec<Event>>,
    payments: Vec<Known>,
    /// How many times each transfer was applied at its destination.
    applied: HashMap<String, u32>,
    /// Each user's balance once every credit has arrived, per currency.
    expected: HashMap<(usize, Currency), u64>,
    next_id: u64,
    now_ms: u64,
}

impl Cluster {
    /// `homes[n]` is user `n`'s shard.
    fn new(shard_count: usize, homes: &[usize]) -> Cluster {
        let users: Vec<UserId> = (0..homes.len())
            .map(|n| UserId::new(Slot::of_username(&format!("user{n}")), [n as u8; 10]))
            .collect();
        Cluster {
            shards: vec![Ledger::new(); shard_count],
            home: users.iter().cloned().zip(homes.iter().copied()).collect(),
            users,
            network: Vec::new(),
            logs: vec![Vec::new(); shard_count],
            payments: Vec::new(),
            applied: HashMap::new(),
            expected: HashMap::new(),
            next_id: 0,
            now_ms: 0,
        }
    }

    fn home_of(&self, user: usize) -> usize {
        self.home[&self.users[user]]
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }

    fn execute(&mut self, shard: usize, command: &Command) -> Result<Vec<Event>, LedgerError> {
        let result = self.shards[shard].execute(command);
        if let Ok(events) = &result {
            self.logs[shard].extend(events.iter().cloned());
        }
        result
    }

    fn expect(&mut self, user: usize, currency: Currency) -> &mut u64 {
        self.expected.entry((user, currency)).or_default()
    }

    /// The user a transfer credits, its shard, the currency and the amount.
    fn destination(&self, transfer: &Transfer) -> (usize, usize, Currency, u64) {
        let (to, currency, amount) = match transfer {
            Transfer::Payment(payment) => (&payment.to, payment.currency, payment.amount),
            Transfer::Refund {
                to, currency, amount, ..
            } => (to, *currency, *amount),
        };
        let user = self.users.iter().position(|u| u == to).expect("a known user");
        (user, self.home[to], currency, amount)
    }

    /// Outbox entries not yet applied at their destination, as (credited user, currency, amount).
    fn pending(&self) -> Vec<(usize, Currency, u64)> {
        let mut pending = Vec::new();
        for ledger in &self.shards {
            for transfer in ledger.outbox() {
                let (user, shard, currency, amount) = self.destination(transfer);
                if !self.shards[shard].has_received(transfer.id()) {
                    pending.push((user, currency, amount));
                }
            }
        }
        pending
    }

    fn run(&mut self, step: &Step) {
        self.now_ms += 1;
        match step {
            Step::Deposit {
                user,
                amount,
                currency: code,
            } => self.deposit(user.index(self.users.len()), *amount, currency(*code)),
            Step::Pay {
                payer,
                payee,
                amount,
                currency: code,
            } => {
                let count = self.users.len();
                let payer = payer.index(count);
                let payee = (payer + 1 + payee.index(count - 1)) % count;
                self.pay(payer, payee, amount, currency(*code));
            }
            Step::Refund { payment, by, amount } => {
                if self.payments.is_empty() {
                    return;
                }
                let payment = payment.index(self.payments.len());
                let known = &self.payments[payment];
                let by = match by {
                    Refunder::Payee => known.payee,
                    Refunder::Payer => known.payer,
                    Refunder::Anyone(user) => user.index(self.users.len()),
                };
                self.refund(payment, by, amount);
            }
            Step::Send { shard, entry } => {
                let shard = shard.index(self.shards.len());
                let outbox: Vec<Transfer> = self.shards[shard].outbox().cloned().collect();
                if !outbox.is_empty() {
                    self.send(shard, outbox[entry.index(outbox.len())].clone());
                }
            }
            Step::SendAll { shard } => self.send_all(shard.index(self.shards.len())),
            Step::Deliver { message, keep } => {
                if !self.network.is_empty() {
                    self.deliver(message.index(self.network.len()), *keep);
                }
            }
            Step::Drop { message } => {
                if !self.network.is_empty() {
                    self.network.remove(message.index(self.network.len()));
                }
            }
        }
        self.check();
    }

    fn deposit(&mut self, user: usize, amount: u64, currency: Currency) {
        let id = self.fresh_id("dep");
        let command = Command::Deposit {
            id,
            user: self.users[user].clone(),
            amount,
            currency,
        };
        self.execute(self.home_of(user), &command)
            .expect("a valid deposit");
        *self.expect(user, currency) += amount;
    }

    fn pay(&mut self, payer: usize, payee: usize, amount: &Amount, currency: Currency) {
        let shard = self.home_of(payer);
        let payee_local = self.home_of(payee) == shard;
        let ledger = &self.shards[shard];
        let (payer_id, payee_id) = (self.users[payer].clone(), self.users[payee].clone());
        let payer_before = ledger.balance(&payer_id, currency);
        let payee_before = ledger.balance(&payee_id, currency);
        let outbox_before = ledger.outbox().count();
        let amount = match amount {
            Amount::Zero => 0,
            Amount::Fixed(amount) => *amount,
            Amount::All => payer_before,
            Amount::Over(excess) => payer_before + excess,
            Amount::TooLarge => AMOUNT_MAX + 1,
        };
        let wanted = if amount == 0 || amount > AMOUNT_MAX {
            Err(LedgerError::InvalidAmount)
        } else if amount > payer_before {
            Err(LedgerError::InsufficientFunds)
        } else {
            Ok(())
        };
        let payment = Payment {
            id: self.fresh_id("pay"),
            from: payer_id.clone(),
            to: payee_id.clone(),
            amount,
            currency,
            description: Some(format!("step {}", self.now_ms)),
            amount_refunded: 0,
            created_at_ms: self.now_ms,
        };
        let command = Command::Pay {
            payment: payment.clone(),
            payee_local,
        };
        let result = self.execute(shard, &command);
        assert_eq!(result.clone().map(|_| ()), wanted, "{command:?}");
        if result.is_err() {
            return;
        }
        // The debit was covered and happened once; a local payee is credited at once, a remote
        // one through exactly one new outbox entry.
        let ledger = &self.shards[shard];
        assert!(payer_before >= amount);
        assert_eq!(ledger.balance(&payer_id, currency), payer_before - amount);
        if payee_local {
            assert_eq!(ledger.balance(&payee_id, currency), payee_before + amount);
            assert_eq!(ledger.outbox().count(), outbox_before);
        } else {
            assert_eq!(ledger.outbox().count(), outbox_before + 1);
        }
        *self.expect(payer, currency) -= amount;
        *self.expect(payee, currency) += amount;
        self.payments.push(Known {
            id: payment.id,
            payer,
            payee,
            amount,
            currency,
            refunded: 0,
        });
    }

    fn refund(&mut self, payment: usize, by: usize, amount: &Amount) {
        let known = self.payments[payment].clone();
        let shard = self.home_of(by);
        let payer_local = self.home_of(known.payer) == shard;
        let ledger = &self.shards[shard];
        let (payer_id, by_id) = (self.users[known.payer].clone(), self.users[by].clone());
        let by_before = ledger.balance(&by_id, known.currency);
        let payer_before = ledger.balance(&payer_id, known.currency);
        let outbox_before = ledger.outbox().count();
        let left = known.amount - known.refunded;
        let requested = match amount {
            Amount::Zero => Some(0),
            Amount::Fixed(amount) => Some(*amount),
            Amount::All => None,
            Amount::Over(excess) => Some(left + excess),
            Amount::TooLarge => Some(AMOUNT_MAX + 1),
        };
        let resolved = requested.unwrap_or(left);
        // The payer's shard always knows the payment; the payee's once the credit has arrived.
        let visible = payer_local || ledger.has_received(&known.id);
        let wanted = if by != known.payer && by != known.payee {
            Err(LedgerError::PaymentNotFound)
        } else if by == known.payer {
            Err(LedgerError::NotThePayee)
        } else if !visible {
            Err(LedgerError::PaymentNotFound)
        } else if resolved == 0 && left == 0 {
            Err(LedgerError::RefundExceedsPayment)
        } else if resolved == 0 || resolved > AMOUNT_MAX {
            Err(LedgerError::InvalidAmount)
        } else if resolved > left {
            Err(LedgerError::RefundExceedsPayment)
        } else if resolved > by_before {
            Err(LedgerError::InsufficientFunds)
        } else {
            Ok(())
        };
        let command = Command::Refund {
            refund: self.fresh_id("ref"),
            payment: known.id.clone(),
            by: by_id.clone(),
            amount: requested,
            payer_local,
        };
        let result = self.execute(shard, &command);
        assert_eq!(result.clone().map(|_| ()), wanted, "{command:?} with {left} left");
        if result.is_err() {
            return;
        }
        let ledger = &self.shards[shard];
        assert!(by_before >= resolved);
        assert_eq!(ledger.balance(&by_id, known.currency), by_before - resolved);
        if payer_local {
            assert_eq!(ledger.balance(&payer_id, known.currency), payer_before + resolved);
            assert_eq!(ledger.outbox().count(), outbox_before);
        } else {
            assert_eq!(ledger.outbox().count(), outbox_before + 1);
        }
        *self.expect(by, known.currency) -= resolved;
        *self.expect(known.payer, known.currency) += resolved;
        self.payments[payment].refunded += resolved;
    }

    fn send(&mut self, from: usize, transfer: Transfer) {
        let (_, to, _, _) = self.destination(&transfer);
        assert_ne!(from, to, "an outbox entry for this very shard: {transfer:?}");
        self.network.push(Message::Receive { from, to, transfer });
    }

    fn send_all(&mut self, shard: usize) {
        let outbox: Vec<Transfer> = self.shards[shard].outbox().cloned().collect();
        for transfer in outbox {
            self.send(shard, transfer);
        }
    }

    fn deliver(&mut self, message: usize, keep: bool) {
        let message = if keep {
            self.network[message].clone()
        } else {
            self.network.remove(message)
        };
        match message {
            Message::Receive { from, to, transfer } => {
                let id = transfer.id().to_string();
                let events = self
                    .execute(to, &Command::Receive(transfer.clone()))
                    .unwrap_or_else(|error| panic!("a credit refused ({error}): {transfer:?}"));
                if !events.is_empty() {
                    let times = self.applied.entry(id.clone()).or_default();
                    *times += 1;
                    assert_eq!(*times, 1, "{id} applied twice");
                }
                assert!(self.shards[to].has_received(&id));
                self.network.push(Message::Ack {
                    to: from,
                    transfer: id,
                });
            }
            Message::Ack { to, transfer } => {
                self.execute(to, &Command::Settle { transfer })
                    .expect("a settlement is never refused");
            }
        }
    }

    /// The invariants that hold after every step.
    fn check(&self) {
        for (shard, ledger) in self.shards.iter().enumerate() {
            assert!(ledger.conserved(), "shard {shard}'s books do not balance");
        }
        let pending = self.pending();
        for code in 0..CURRENCY_CODES.len() {
            let currency = currency(code);
            // Global conservation: an entry already applied but not yet settled counts once.
            let balances: u128 = self.shards.iter().map(|l| l.total(currency)).sum();
            let in_flight: u128 = pending
                .iter()
                .filter(|(_, c, _)| *c == currency)
                .map(|(_, _, amount)| u128::from(*amount))
                .sum();
            let deposited: u128 = self.shards.iter().map(|l| l.deposited(currency)).sum();
            assert_eq!(balances + in_flight, deposited, "{currency:?} not conserved");
            // Per user: what the home shard holds plus what is on its way is what the accepted
            // commands say — so no credit was applied twice or lost, and none went elsewhere.
            for (user, id) in self.users.iter().enumerate() {
                let on_the_way: u64 = pending
                    .iter()
                    .filter(|(u, c, _)| *u == user && *c == currency)
                    .map(|(_, _, amount)| amount)
                    .sum();
                let expected = self.expected.get(&(user, currency)).copied().unwrap_or(0);
                for (shard, ledger) in self.shards.iter().enumerate() {
                    let held = ledger.balance(id, currency);
                    if shard == self.home_of(user) {
                        assert_eq!(held + on_the_way, expected, "user {user}'s {currency:?}");
                    } else {
                        assert_eq!(held, 0, "user {user} holds {currency:?} away from home");
                    }
                }
            }
        }
        for known in &self.payments {
            let payer_copy = self.shards[self.home_of(known.payer)]
                .payment(&known.id, &self.users[known.payer])
                .expect("the payer's shard records the payment");
            let payee_copy =
                self.shards[self.home_of(known.payee)].payment(&known.id, &self.users[known.payee]);
            for copy in [Some(payer_copy), payee_copy].into_iter().flatten() {
                assert_eq!(copy.amount, known.amount);
                assert!(copy.amount_refunded <= copy.amount, "over-refunded: {copy:?}");
            }
            // Refunds are decided on the payee's shard and reach the payer's later.
            if let Some(payee_copy) = payee_copy {
                assert_eq!(payee_copy.amount_refunded, known.refunded);
                assert!(payer_copy.amount_refunded <= known.refunded);
            } else {
                assert_eq!(known.refunded, 0, "refunded before it arrived: {known:?}");
            }
        }
    }

    /// Resends every outbox entry and delivers every message, without loss, until all is settled.
    fn recover(&mut self) {
        for _ in 0..RECOVERY_ROUNDS_MAX {
            for shard in 0..self.shards.len() {
                self.send_all(shard);
            }
            while !self.network.is_empty() {
                self.deliver(0, false);
                self.check();
            }
            if self.shards.iter().all(|l| l.outbox().next().is_none()) {
                return;
            }
        }
        panic!("outboxes still not empty after {RECOVERY_ROUNDS_MAX} rounds of recovery");
    }

    /// What holds once recovery is done.
    fn check_recovered(&self) {
        for (shard, ledger) in self.shards.iter().enumerate() {
            assert_eq!(ledger.outbox().count(), 0, "shard {shard}'s outbox");
        }
        for code in 0..CURRENCY_CODES.len() {
            let currency = currency(code);
            let balances: u128 = self.shards.iter().map(|l| l.total(currency)).sum();
            let deposited: u128 = self.shards.iter().map(|l| l.deposited(currency)).sum();
            assert_eq!(balances, deposited, "{currency:?}");
            for user in 0..self.users.len() {
                let held = self.shards[self.home_of(user)].balance(&self.users[user], currency);
                let expected = self.expected.get(&(user, currency)).copied().unwrap_or(0);
                assert_eq!(held, expected, "user {user}'s {currency:?}");
            }
        }
        for known in &self.payments {
            let copy = |user: usize| {
                self.shards[self.home_of(user)]
                    .payment(&known.id, &self.users[user])
                    .unwrap_or_else(|| panic!("user {user} does not see {known:?}"))
            };
            let (payer_copy, payee_copy) = (copy(known.payer), copy(known.payee));
            assert_eq!(payer_copy, payee_copy);
            assert_eq!(payer_copy.amount, known.amount);
            assert_eq!(payer_copy.amount_refunded, known.refunded);
        }
    }

    /// Replays each shard's log into a fresh ledger: it must be the same ledger.
    fn check_replay(&self) {
        for (shard, (ledger, log)) in self.shards.iter().zip(&self.logs).enumerate() {
            let mut replayed = Ledger::new();
            for event in log {
                replayed.apply(event);
            }
            assert_eq!(&replayed, ledger, "shard {shard} replayed");
        }
    }
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        1 => Just(Amount::Zero),
        6 => (1u64..=60).prop_map(Amount::Fixed),
        2 => Just(Amount::All),
        2 => (1u64..=20).prop_map(Amount::Over),
        1 => Just(Amount::TooLarge),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let refunder = prop_oneof![
        4 => Just(Refunder::Payee),
        1 => Just(Refunder::Payer),
        1 => any::<Index>().prop_map(Refunder::Anyone),
    ];
    prop_oneof![
        2 => (any::<Index>(), 1u64..=100, 0..CURRENCY_CODES.len())
            .prop_map(|(user, amount, currency)| Step::Deposit { user, amount, currency }),
        4 => (any::<Index>(), any::<Index>(), amount(), 0..CURRENCY_CODES.len())
            .prop_map(|(payer, payee, amount, currency)| Step::Pay { payer, payee, amount, currency }),
        3 => (any::<Index>(), refunder, amount())
            .prop_map(|(payment, by, amount)| Step::Refund { payment, by, amount }),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(shard, entry)| Step::Send { shard, entry }),
        1 => any::<Index>().prop_map(|shard| Step::SendAll { shard }),
        5 => (any::<Index>(), prop::bool::weighted(0.25))
            .prop_map(|(message, keep)| Step::Deliver { message, keep }),
        1 => any::<Index>().prop_map(|message| Step::Drop { message }),
    ]
}

/// A cluster and a schedule: the shard count, each user's home, each user's opening deposit per
/// currency (0 for none), and the steps. The first users are spread one per shard, so every shard
/// has someone.
#[derive(Debug, Clone)]
struct Scenario {
    shards: usize,
    homes: Vec<usize>,
    opening: Vec<[u64; CURRENCY_CODES.len()]>,
    steps: Vec<Step>,
}

impl Scenario {
    /// Opens the accounts and runs the steps, checking the invariants after each.
    fn run(&self) -> Cluster {
        let mut cluster = Cluster::new(self.shards, &self.homes);
        cluster.check();
        for (user, amounts) in self.opening.iter().enumerate() {
            for (code, amount) in amounts.iter().enumerate() {
                if *amount > 0 {
                    cluster.deposit(user, *amount, currency(code));
                }
            }
        }
        for step in &self.steps {
            cluster.run(step);
        }
        cluster
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let user = (0usize..3, [0u64..=150, 0u64..=150]);
    (
        2usize..=3,
        prop::collection::vec(user, 4..=6),
        prop::collection::vec(step(), 1..=SCHEDULE_STEPS_MAX),
    )
        .prop_map(|(shards, users, steps)| Scenario {
            shards,
            homes: users
                .iter()
                .enumerate()
                .map(|(n, (home, _))| if n < shards { n } else { home % shards })
                .collect(),
            opening: users.iter().map(|(_, opening)| *opening).collect(),
            steps,
        })
}

fn config() -> Config {
    // No regression files: this suite writes nothing next to the sources.
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Money is conserved and every transfer applied once however the network behaves, and a
    /// lossless recovery settles everything with both copies of every payment in agreement.
    #[test]
    fn cluster_conserves_money_and_settles_after_recovery(scenario in scenario()) {
        let mut cluster = scenario.run();
        cluster.recover();
        cluster.check_recovered();
    }

    /// Each shard's log of applied events rebuilds it, mid-flight and after recovery.
    #[test]
    fn replaying_each_shards_events_rebuilds_it(scenario in scenario()) {
        let mut cluster = scenario.run();
        cluster.check_replay();
        cluster.recover();
        cluster.check_replay();
    }
}
