//! Storage: where a shard's decided events go before they are applied — the one door every state
//! change passes (`decide → append → apply → respond`).
//!
//! [`Log::append`] returns once the records are as durable as the configured storage makes them;
//! only then are they applied and answered. A storage failure is fatal — the implementation stops
//! the process rather than let anything be acknowledged that was not stored — so callers never
//! handle one. This version ships the in-memory log: state lives only in the shards' memory and a
//! restart forgets it; the durable write-ahead log plugs in behind the same trait. Storage knows
//! nothing about HTTP or shards.

use serde::{Deserialize, Serialize};

use crate::auth::state::Event as AuthEvent;
use crate::payments::idempotency::Change as IdempotencyChange;
use crate::payments::ledger::Event as LedgerEvent;

/// One logged fact: an event of one of the shard's state machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Users and sessions.
    Auth(AuthEvent),
    /// Money.
    Ledger(LedgerEvent),
    /// Idempotency keys and their stored answers.
    Idempotency(IdempotencyChange),
}

/// A shard's log.
pub trait Log {
    /// Stores `records` (in order) before they are applied. Never returns on a storage failure.
    fn append(&mut self, records: &[Record]);
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
