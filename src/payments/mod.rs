//! Money: each shard's ledger of balances, payments, refunds and cross-shard credits
//! ([`ledger`]), a deterministic state machine with its invariants checked in code, and the
//! idempotency keys of the money routes ([`idempotency`]).
//!
//! Like `auth`, this module is pure: no I/O, no clock, no randomness. It is not yet behind HTTP
//! routes; the payment routes, idempotency keys and their storage build on it.

pub mod idempotency;
pub mod ledger;
