//! Storage: where a shard's decided events go before they are applied — the one door every state
//! change passes (`decide → append → apply → respond`).
//!
//! [`Log::append`] hands records to the shard's [`journal::Journal`] and returns; the shard applies
//! them at once, but answers only after [`journal::Journal::durable`] says the records it observed
//! are on disk (group commit: [`writer`]). The embedded backend is a per-shard write-ahead log of
//! [`frame`]s in segment files under `data_dir/gen-G/shard-NNN/` ([`layout`]), with [`snapshot`]s,
//! rebuilt at start-up by [`recovery`]. Storage knows nothing about HTTP, shards or the state it
//! stores: records and snapshot bodies are opaque to it. A storage failure is final: nothing more
//! is acknowledged and the process stops.
pub mod disk;
pub mod frame;
pub mod journal;
pub mod layout;
pub mod recovery;
pub mod scylla;
pub mod snapshot;
pub mod writer;

#[cfg(test)]
mod sim_tests;

use serde::{Deserialize, Serialize};

use crate::auth::state::{AuthState, Event as AuthEvent};
use crate::payments::idempotency::{Change as IdempotencyChange, Scope};
use crate::payments::ledger::{Event as LedgerEvent, Ledger};

/// One logged fact: an event of one of the shard's state machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Users and sessions.
    Auth(AuthEvent),
    /// Money.
    Ledger(LedgerEvent),
    /// Idempotency keys and their stored answers.
    Idempotency(IdempotencyChange),
    /// The answer of a cross-shard payment or refund, kept until the other shard acknowledges
    /// the credit (then it becomes the key's stored answer).
    Pending {
        /// The transfer's id.
        transfer: String,
        /// Whose idempotency key.
        scope: Scope,
        /// The key.
        key: String,
        /// The 201 body.
        answer: Vec<u8>,
    },
}

/// What a log may read of the state between appending records and their being applied.
pub struct StateView<'a> {
    /// Users and sessions.
    pub auth: &'a AuthState,
    /// Money.
    pub ledger: &'a Ledger,
}

/// A shard's log.
pub trait Log {
    /// Hands `records` (in order, as one atomic frame) to storage before they are applied. The
    /// caller's answers wait for the journal's durability; a storage failure shows there.
    fn append(&mut self, records: &[Record]);

    /// Called after [`Log::append`] and before the records are applied, with the state they will
    /// change: a store of rows (ScyllaDB) notes which rows they touch — a revoked session's
    /// owner, for one, is known only before the revocation applies. Does nothing by default.
    fn before_apply(&mut self, _records: &[Record], _state: &StateView<'_>) {}
}

/// The in-memory log: nothing survives the process. It counts what passed through it, and in
/// tests can keep the records to prove that replaying them rebuilds the state.
#[derive(Debug, Default)]
pub struct MemoryLog {
    appended: u64,
    kept: Option<Vec<Record>>,
}

impl MemoryLog {
    /// A log that counts records and keeps none (the server's).
    pub fn new() -> Self {
        Self::default()
    }

    /// A log that keeps every record (tests).
    pub fn keeping() -> Self {
        MemoryLog {
            appended: 0,
            kept: Some(Vec::new()),
        }
    }

    /// Records appended so far.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// The kept records, for a log made with [`MemoryLog::keeping`].
    pub fn records(&self) -> &[Record] {
        self.kept.as_deref().unwrap_or_default()
    }
}

impl Log for MemoryLog {
    fn append(&mut self, records: &[Record]) {
        self.appended += records.len() as u64;
        if let Some(kept) = &mut self.kept {
            kept.extend_from_slice(records);
        }
    }
}
