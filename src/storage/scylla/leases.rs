//! Slot leases: which node serves which slots, so that two shardpay nodes never both do.
//!
//! The 16384 slots form [`BLOCKS`] blocks of [`BLOCK_SLOTS`]; a node leases the blocks of its
//! slot range, one row of `slot_leases` each, by lightweight transaction (Paxos, at
//! `scylla.serial_consistency`):
//!
//! - **acquire**: `INSERT … IF NOT EXISTS` for a block never leased (epoch 1); otherwise a
//!   compare-and-set on the epoch, allowed only once the holder's lease has expired, that
//!   raises the epoch by one. A lease that has not expired is never taken, even by a node of the
//!   same name: a second process started by mistake is refused, not given the slots.
//! - **renew**: moves the expiry, only if the row still names this holder and epoch.
//! - **release** (clean shutdown): expires the lease at once, so a restart need not wait.
//!
//! The epoch fences a former holder: each acquisition raises it, and rows are written with
//! timestamps that start from it ([`Lease::write_timestamp_base`]), so a write that a paused
//! former holder sends late loses to every write of the new holder. Expiry compares wall clocks
//! of different nodes: keep them synchronised (NTP) well within `scylla.lease_seconds`, and a
//! holder stops serving a block when it could not renew before its own deadline.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use tokio::task::JoinSet;

use super::DbError;
use crate::config::ScyllaConfig;
use crate::slots::SLOT_COUNT;

/// Slots per lease block.
pub const BLOCK_SLOTS: u16 = 64;
/// Lease blocks: every slot is in exactly one.
pub const BLOCKS: u16 = (SLOT_COUNT / BLOCK_SLOTS as u32) as u16;
/// The last slot.
const SLOT_LAST: u16 = (SLOT_COUNT - 1) as u16;

/// A block held (or, in [`Leases::list`], recorded) by a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Block number; slots `block * 64 ..= block * 64 + 63`.
    pub block: u16,
    /// The holder: node name and incarnation.
    pub owner: String,
    /// Raised by every acquisition.
    pub epoch: i64,
    /// When the lease ends unless renewed, Unix milliseconds.
    pub expires_at_ms: i64,
}

impl Lease {
    /// The first write timestamp (microseconds) of this holder's rows: every epoch has its own
    /// range of 2^40 µs (12.7 days of a clock-based counter), above every earlier epoch's.
    pub fn write_timestamp_base(&self) -> i64 {
        self.epoch << 40
    }
}

/// Why leases could not be taken or kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The range does not start and end on block boundaries.
    #[error("slots {first}-{last} are not whole lease blocks of {BLOCK_SLOTS} slots (first a multiple of {BLOCK_SLOTS}, last one less than a multiple)")]
    Unaligned {
        /// First slot asked for.
        first: u16,
        /// Last slot asked for.
        last: u16,
    },
    /// Another holder's lease has not expired.
    #[error("slots {}-{} are leased to {owner} until {expires_at_ms} (Unix ms)", block * BLOCK_SLOTS, block * BLOCK_SLOTS + BLOCK_SLOTS - 1)]
    Held {
        /// The block.
        block: u16,
        /// Its holder.
        owner: String,
        /// When that lease ends unless renewed.
        expires_at_ms: i64,
    },
    /// The lease was taken over or released by someone else: stop serving its slots.
    #[error("the lease of slots {}-{} was lost", block * BLOCK_SLOTS, block * BLOCK_SLOTS + BLOCK_SLOTS - 1)]
    Lost {
        /// The block.
        block: u16,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Takes, renews and releases one node's leases.
pub struct Leases {
    session: Arc<Session>,
    owner: String,
    lease_ms: i64,
    insert: PreparedStatement,
    take: PreparedStatement,
    renew: PreparedStatement,
    read: PreparedStatement,
    list: PreparedStatement,
}

impl Leases {
    /// Prepares the statements for holder `owner` (unique per process: name and incarnation),
    /// with the keyspace, lease length and serial consistency of `config`.
    pub async fn new(session: Arc<Session>, config: &ScyllaConfig, owner: String) -> Result<Leases, DbError> {
        let keyspace = &config.keyspace;
        let prepare = |cql: String| {
            let session = session.clone();
            async move {
                session
                    .prepare(cql.clone())
                    .await
                    .map_err(|error| DbError::new(format!("preparing {cql}"), error))
            }
        };
        let table = format!("{keyspace}.slot_leases");
        Ok(Leases {
            insert: prepare(format!(
                "INSERT INTO {table} (block, owner, epoch, expires_at_ms) VALUES (?, ?, 1, ?) IF NOT EXISTS"
            ))
            .await?,
            take: prepare(format!(
                "UPDATE {table} SET owner = ?, epoch = ?, expires_at_ms = ? WHERE block = ? IF epoch = ? AND expires_at_ms < ?"
            ))
            .await?,
            renew: prepare(format!(
                "UPDATE {table} SET expires_at_ms = ? WHERE block = ? IF owner = ? AND epoch = ?"
            ))
            .await?,
            read: {
                let mut read = prepare(format!(
                    "SELECT block, owner, epoch, expires_at_ms FROM {table} WHERE block = ?"
                ))
                .await?;
                // A serial read sees the outcome of every Paxos round, also one in progress.
                read.set_consistency(match super::serial_consistency(&config.serial_consistency) {
                    scylla::statement::SerialConsistency::Serial => scylla::statement::Consistency::Serial,
                    scylla::statement::SerialConsistency::LocalSerial => {
                        scylla::statement::Consistency::LocalSerial
                    }
                });
                read
            },
            list: prepare(format!("SELECT block, owner, epoch, expires_at_ms FROM {table}")).await?,
            session,
            owner,
            lease_ms: config.lease_seconds as i64 * 1000,
        })
    }

    /// This holder's name.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Leases every block of slots `first..=last` (whole blocks), all or none: when one is held
    /// by another node, the blocks taken meanwhile are released and the holder is named.
    pub async fn acquire(
        self: &Arc<Self>,
        first: u16,
        last: u16,
        now_ms: i64,
    ) -> Result<Vec<Lease>, LeaseError> {
        let blocks = blocks_of(first, last)?;
        let mut tasks = JoinSet::new();
        for block in blocks {
            let leases = self.clone();
            tasks.spawn(async move { leases.acquire_block(block, now_ms).await });
        }
        let mut taken = Vec::new();
        let mut refused = None;
        while let Some(outcome) = tasks.join_next().await {
            match outcome.map_err(|error| DbError::new("acquiring a lease", error))? {
                Ok(lease) => taken.push(lease),
                Err(error) => {
                    // Keep the most telling refusal: a holder's name beats a database error.
                    if !matches!(refused, Some(LeaseError::Held { .. })) {
                        refused = Some(error);
                    }
                }
            }
        }
        if let Some(error) = refused {
            self.release(&taken).await?;
            return Err(error);
        }
        taken.sort_by_key(|lease| lease.block);
        Ok(taken)
    }

    async fn acquire_block(&self, block: u16, now_ms: i64) -> Result<Lease, LeaseError> {
        let expires_at_ms = now_ms + self.lease_ms;
        let result = self
            .session
            .execute_unpaged(&self.insert, (i32::from(block), &self.owner, expires_at_ms))
            .await
            .map_err(|error| DbError::new(format!("leasing block {block}"), error))?;
        if applied(result, "leasing a block")?.is_none() {
            return Ok(self.held(block, 1, expires_at_ms));
        }
        // The block has a row: take it over if its lease has expired. A lost race (another node
        // took it between the read and the update) is retried from the read.
        for _ in 0..3 {
            let current = self.read_block(block).await?;
            if current.expires_at_ms >= now_ms {
                return Err(LeaseError::Held {
                    block,
                    owner: current.owner,
                    expires_at_ms: current.expires_at_ms,
                });
            }
            let epoch = current.epoch + 1;
            let result = self
                .session
                .execute_unpaged(
                    &self.take,
                    (
                        &self.owner,
                        epoch,
                        expires_at_ms,
                        i32::from(block),
                        current.epoch,
                        now_ms,
                    ),
                )
                .await
                .map_err(|error| DbError::new(format!("taking over block {block}"), error))?;
            if applied(result, "taking over a block")?.is_none() {
                return Ok(self.held(block, epoch, expires_at_ms));
            }
        }
        Err(DbError::new(
            format!("leasing block {block}"),
            "lost three races for it in a row",
        )
        .into())
    }

    fn held(&self, block: u16, epoch: i64, expires_at_ms: i64) -> Lease {
        Lease {
            block,
            owner: self.owner.clone(),
            epoch,
            expires_at_ms,
        }
    }

    /// Extends each lease to `now_ms + lease`; a lease taken over or released meanwhile is
    /// [`LeaseError::Lost`] (the others are still renewed).
    pub async fn renew(&self, leases: &mut [Lease], now_ms: i64) -> Result<(), LeaseError> {
        let expires_at_ms = now_ms + self.lease_ms;
        let mut lost = None;
        for lease in leases.iter_mut() {
            let result = self
                .session
                .execute_unpaged(
                    &self.renew,
                    (expires_at_ms, i32::from(lease.block), &lease.owner, lease.epoch),
                )
                .await
                .map_err(|error| DbError::new(format!("renewing block {}", lease.block), error))?;
            if applied(result, "renewing a lease")?.is_none() {
                lease.expires_at_ms = expires_at_ms;
            } else {
                lost.get_or_insert(LeaseError::Lost { block: lease.block });
            }
        }
        lost.map_or(Ok(()), Err)
    }

    /// Ends `leases` now (clean shutdown), so another node or a restart takes them at once.
    pub async fn release(&self, leases: &[Lease]) -> Result<(), DbError> {
        for lease in leases {
            // Expiring is a renewal to the past; a lease already lost is left as it is.
            let result = self
                .session
                .execute_unpaged(
                    &self.renew,
                    (0_i64, i32::from(lease.block), &lease.owner, lease.epoch),
                )
                .await
                .map_err(|error| DbError::new(format!("releasing block {}", lease.block), error))?;
            applied(result, "releasing a lease")?;
        }
        Ok(())
    }

    async fn read_block(&self, block: u16) -> Result<Lease, DbError> {
        let what = format!("reading the lease of block {block}");
        let result = self
            .session
            .execute_unpaged(&self.read, (i32::from(block),))
            .await
            .map_err(|error| DbError::new(what.clone(), error))?;
        let rows = result
            .into_rows_result()
            .map_err(|error| DbError::new(what.clone(), error))?;
        let row = rows
            .maybe_first_row::<(i32, Option<String>, Option<i64>, Option<i64>)>()
            .map_err(|error| DbError::new(what.clone(), error))?
            .ok_or_else(|| DbError::new(what, "no row"))?;
        Ok(lease_of(row))
    }

    /// Every recorded lease, expired ones included, by block.
    pub async fn list(&self) -> Result<Vec<Lease>, DbError> {
        list_with(&self.session, &self.list).await
    }
}

/// Every recorded lease of `keyspace`, by block (for `shardpay db leases`).
pub async fn list(session: &Session, keyspace: &str) -> Result<Vec<Lease>, DbError> {
    let statement = session
        .prepare(format!(
            "SELECT block, owner, epoch, expires_at_ms FROM {keyspace}.slot_leases"
        ))
        .await
        .map_err(|error| DbError::new("preparing the lease listing", error))?;
    list_with(session, &statement).await
}

async fn list_with(session: &Session, statement: &PreparedStatement) -> Result<Vec<Lease>, DbError> {
    let what = "listing the leases";
    let mut leases = Vec::new();
    let mut pager = session
        .execute_iter(statement.clone(), ())
        .await
        .map_err(|error| DbError::new(what, error))?
        .rows_stream::<(i32, Option<String>, Option<i64>, Option<i64>)>()
        .map_err(|error| DbError::new(what, error))?;
    use futures_lite::StreamExt;
    while let Some(row) = pager.next().await {
        leases.push(lease_of(row.map_err(|error| DbError::new(what, error))?));
    }
    leases.sort_by_key(|lease| lease.block);
    Ok(leases)
}

fn lease_of((block, owner, epoch, expires_at_ms): (i32, Option<String>, Option<i64>, Option<i64>)) -> Lease {
    Lease {
        block: u16::try_from(block).unwrap_or(u16::MAX),
        owner: owner.unwrap_or_default(),
        epoch: epoch.unwrap_or(0),
        expires_at_ms: expires_at_ms.unwrap_or(0),
    }
}

/// The blocks of slots `first..=last`, which must be whole blocks.
pub fn blocks_of(first: u16, last: u16) -> Result<std::ops::RangeInclusive<u16>, LeaseError> {
    if first > last || last > SLOT_LAST || first % BLOCK_SLOTS != 0 || (last + 1) % BLOCK_SLOTS != 0 {
        return Err(LeaseError::Unaligned { first, last });
    }
    Ok(first / BLOCK_SLOTS..=last / BLOCK_SLOTS)
}

/// `None` when a lightweight transaction applied; otherwise the current values it returned.
fn applied(result: QueryResult, what: &str) -> Result<Option<Row>, DbError> {
    let rows = result
        .into_rows_result()
        .map_err(|error| DbError::new(what, error))?;
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(|error| DbError::new(what, error))?
        .ok_or_else(|| DbError::new(what, "no [applied] row"))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(true))) => Ok(None),
        Some(Some(CqlValue::Boolean(false))) => Ok(Some(row)),
        other => Err(DbError::new(
            what,
            format!("unexpected [applied] column {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_slots_once() {
        assert_eq!(BLOCKS, 256);
        assert_eq!(blocks_of(0, 16383).unwrap(), 0..=255);
        assert_eq!(blocks_of(8192, 16383).unwrap(), 128..=255);
        assert_eq!(blocks_of(64, 127).unwrap(), 1..=1);
    }

    #[test]
    fn ranges_that_split_a_block_are_refused() {
        for (first, last) in [(1, 63), (0, 62), (0, 64), (100, 50), (0, 16384)] {
            assert!(
                matches!(blocks_of(first, last), Err(LeaseError::Unaligned { .. })),
                "{first}-{last}"
            );
        }
    }

    #[test]
    fn later_epochs_write_above_earlier_ones() {
        let lease = |epoch| Lease {
            block: 0,
            owner: String::new(),
            epoch,
            expires_at_ms: 0,
        };
        // A clock-based counter of an old epoch stays below the new epoch's first timestamp.
        assert!(lease(1).write_timestamp_base() + (1 << 40) - 1 < lease(2).write_timestamp_base());
    }
}
