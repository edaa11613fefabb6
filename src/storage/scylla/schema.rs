//! The keyspace and its tables; `shardpay db migrate` creates them idempotently.
//!
//! Every table is partitioned by slot (0..16384), the unit a node leases and a shard owns, so a
//! shard loads its state with one paged query per slot, spread over the cluster, and no partition
//! grows with the number of users beyond one slot's share. Every write is an idempotent upsert
//! or delete (no counters, no list appends): a retry after a timeout is safe. Rows written by a
//! lease holder carry a write timestamp derived from its lease epoch ([`super::leases`]), so a
//! late write of a former holder never overwrites a newer one. Rows that expire (sessions,
//! refresh tokens, idempotency keys) are written with a TTL.

use std::collections::{BTreeMap, BTreeSet};

use scylla::client::session::Session;

use super::DbError;
use crate::config::ScyllaConfig;

/// Version of the table layout below; `schema_version` records it.
pub const SCHEMA_VERSION: i32 = 1;

/// The tables, in creation order: name and body of `CREATE TABLE IF NOT EXISTS ks.name (...)`.
pub const TABLES: &[(&str, &str)] = &[
    // Written by `shardpay db migrate`: which layout the keyspace holds.
    (
        "schema_version",
        "component text PRIMARY KEY, version int, migrated_at timestamp",
    ),
    // Which node holds which 64-slot block, taken and renewed by lightweight transactions.
    (
        "slot_leases",
        "block int PRIMARY KEY, owner text, epoch bigint, expires_at_ms bigint",
    ),
    // A user and the case-folded username it was created with (unique within its slot, which
    // the username determines).
    (
        "users",
        "slot int, user_id text, username text, created_at_ms bigint, \
         PRIMARY KEY ((slot), user_id)",
    ),
    // The argon2id PHC string of a user's password.
    (
        "credentials",
        "slot int, user_id text, password_hash text, \
         PRIMARY KEY ((slot), user_id)",
    ),
    // A login session with its current refresh token; TTL: until the refresh token expires.
    (
        "sessions",
        "slot int, user_id text, session_id text, created_at_ms bigint, refresh_hash blob, \
         refresh_expires_at_ms bigint, PRIMARY KEY ((slot), user_id, session_id)",
    ),
    // The refresh family of a session: tokens already rotated (oldest at position 0), kept to
    // detect reuse; rewritten whole when it changes; TTL as the session's.
    (
        "refresh_families",
        "slot int, session_id text, position int, token_hash blob, \
         PRIMARY KEY ((slot), session_id, position)",
    ),
    // A user's balance in one currency, written as an absolute value by the user's home shard.
    (
        "accounts",
        "slot int, user_id text, currency text, balance bigint, \
         PRIMARY KEY ((slot), user_id, currency)",
    ),
    // A payment as its payer's or payee's slot sees it (each side's slot keeps a row, with the
    // side it holds).
    (
        "payments",
        "slot int, payment_id text, payer text, payee text, amount bigint, currency text, \
         description text, amount_refunded bigint, created_at_ms bigint, payer_side boolean, \
         payee_side boolean, PRIMARY KEY ((slot), payment_id)",
    ),
    // Each user's payments in the order they were recorded: the payment history.
    (
        "ledger_entries",
        "slot int, user_id text, seq bigint, kind text, reference text, amount bigint, \
         currency text, at_ms bigint, PRIMARY KEY ((slot), user_id, seq)",
    ),
    // Admin deposits, by id (a retried deposit is recognised by its id).
    (
        "deposits",
        "slot int, deposit_id text, user_id text, amount bigint, currency text, \
         PRIMARY KEY ((slot), deposit_id)",
    ),
    // Refunds, by id, in the slot of the user who made them (ids are never reused).
    (
        "refunds",
        "slot int, refund_id text, payment_id text, amount bigint, \
         PRIMARY KEY ((slot), refund_id)",
    ),
    // Idempotency keys with the request's fingerprint and the stored answer (status 0: the
    // request is running); TTL: until the key may be forgotten.
    (
        "idempotency_keys",
        "slot int, scope text, key text, fingerprint blob, status int, answer blob, \
         expires_at_ms bigint, PRIMARY KEY ((slot), scope, key)",
    ),
    // Credits sent to another shard and not yet acknowledged (the transfer encoded), with the
    // answer released to the idempotency key when they are.
    (
        "outbox",
        "slot int, transfer_id text, seq bigint, sender text, transfer blob, answer_scope text, \
         answer_key text, answer blob, PRIMARY KEY ((slot), transfer_id)",
    ),
    // Credits received from other shards, so that a repeated one is only acknowledged again.
    (
        "received_transfers",
        "slot int, transfer_id text, user_id text, PRIMARY KEY ((slot), transfer_id)",
    ),
];

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Whether the keyspace was created now.
    pub keyspace_created: bool,
    /// Whether the keyspace's replication was changed to the configured one (a full repair
    /// must follow).
    pub replication_changed: bool,
    /// Tables created now.
    pub created: Vec<String>,
    /// Tables that were there already.
    pub existing: Vec<String>,
}

/// The replication map of `CREATE KEYSPACE`, e.g.
/// `{'class': 'NetworkTopologyStrategy', 'dc1': '3'}`.
pub fn replication_map(config: &ScyllaConfig) -> Result<String, DbError> {
    let factors = config
        .replication_factors()
        .map_err(|error| DbError::new("scylla.replication", error.message))?;
    let mut map = String::from("{'class': 'NetworkTopologyStrategy'");
    for (dc, factor) in factors {
        map.push_str(&format!(", '{dc}': '{factor}'"));
    }
    map.push('}');
    Ok(map)
}

/// Creates the keyspace and every table that is missing, sets the keyspace's replication to the
/// configured one, and records [`SCHEMA_VERSION`]. Safe to run any number of times, also while
/// nodes serve: it never drops or rewrites data.
pub async fn migrate(session: &Session, config: &ScyllaConfig) -> Result<Migration, DbError> {
    let keyspace = &config.keyspace;
    let wanted = replication_map(config)?;
    let before = current_replication(session, keyspace).await?;
    run(
        session,
        &format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {wanted} AND durable_writes = true"
        ),
    )
    .await?;
    let mut replication_changed = false;
    if let Some(existing) = &before {
        let wanted_factors: BTreeMap<String, String> = config
            .replication_factors()
            .map_err(|error| DbError::new("scylla.replication", error.message))?
            .into_iter()
            .map(|(dc, factor)| (dc, factor.to_string()))
            .collect();
        let mut existing = existing.clone();
        let class = existing.remove("class").unwrap_or_default();
        if !class.ends_with("NetworkTopologyStrategy") || existing != wanted_factors {
            run(
                session,
                &format!("ALTER KEYSPACE {keyspace} WITH replication = {wanted}"),
            )
            .await?;
            replication_changed = true;
        }
    }
    let present = tables(session, keyspace).await?;
    let mut migration = Migration {
        keyspace_created: before.is_none(),
        replication_changed,
        created: Vec::new(),
        existing: Vec::new(),
    };
    for (name, body) in TABLES {
        run(
            session,
            &format!("CREATE TABLE IF NOT EXISTS {keyspace}.{name} ({body})"),
        )
        .await?;
        if present.contains(*name) {
            migration.existing.push(name.to_string());
        } else {
            migration.created.push(name.to_string());
        }
    }
    session
        .query_unpaged(
            format!(
                "INSERT INTO {keyspace}.schema_version (component, version, migrated_at) \
                 VALUES ('shardpay', ?, toTimestamp(now()))"
            ),
            (SCHEMA_VERSION,),
        )
        .await
        .map_err(|error| DbError::new("recording the schema version", error))?;
    Ok(migration)
}

/// The layout version the keyspace records, `None` before the first migration.
pub async fn version(session: &Session, keyspace: &str) -> Result<Option<i32>, DbError> {
    if current_replication(session, keyspace).await?.is_none()
        || !tables(session, keyspace).await?.contains("schema_version")
    {
        return Ok(None);
    }
    let result = session
        .query_unpaged(
            format!("SELECT version FROM {keyspace}.schema_version WHERE component = 'shardpay'"),
            (),
        )
        .await
        .map_err(|error| DbError::new("reading the schema version", error))?;
    let rows = result
        .into_rows_result()
        .map_err(|error| DbError::new("reading the schema version", error))?;
    let version = rows
        .maybe_first_row::<(Option<i32>,)>()
        .map_err(|error| DbError::new("reading the schema version", error))?;
    Ok(version.and_then(|(version,)| version))
}

/// The tables of `keyspace`.
async fn tables(session: &Session, keyspace: &str) -> Result<BTreeSet<String>, DbError> {
    let what = "listing the keyspace's tables";
    let result = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .map_err(|error| DbError::new(what, error))?;
    let rows = result
        .into_rows_result()
        .map_err(|error| DbError::new(what, error))?;
    let mut names = BTreeSet::new();
    for row in rows
        .rows::<(String,)>()
        .map_err(|error| DbError::new(what, error))?
    {
        names.insert(row.map_err(|error| DbError::new(what, error))?.0);
    }
    Ok(names)
}

/// The keyspace's replication options, `None` when it does not exist.
async fn current_replication(
    session: &Session,
    keyspace: &str,
) -> Result<Option<BTreeMap<String, String>>, DbError> {
    let what = "reading the keyspace's replication";
    let result = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (keyspace,),
        )
        .await
        .map_err(|error| DbError::new(what, error))?;
    let rows = result
        .into_rows_result()
        .map_err(|error| DbError::new(what, error))?;
    let row = rows
        .maybe_first_row::<(BTreeMap<String, String>,)>()
        .map_err(|error| DbError::new(what, error))?;
    Ok(row.map(|(replication,)| replication))
}

/// How long a schema change may take. Longer than `scylla.request_timeout_ms`: the coordinator
/// answers only once the cluster agrees on the new schema, which takes seconds on a busy node (a
/// `CREATE KEYSPACE` exceeded 5 s in CI while other tests loaded the node). Every statement here
/// is idempotent, so a migration that timed out can simply be run again.
const SCHEMA_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn run(session: &Session, text: &str) -> Result<(), DbError> {
    let mut statement = scylla::statement::Statement::new(text);
    statement.set_request_timeout(Some(SCHEMA_CHANGE_TIMEOUT));
    session
        .query_unpaged(statement, ())
        .await
        .map_err(|error| DbError::new(text.to_string(), error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_map_lists_each_datacenter() {
        let config = ScyllaConfig {
            replication: "dc1:3, dc2:2".to_string(),
            ..ScyllaConfig::default()
        };
        assert_eq!(
            replication_map(&config).unwrap(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': '3', 'dc2': '2'}"
        );
    }

    #[test]
    fn every_table_is_partitioned_by_slot_or_keyed_by_one_column() {
        for (name, body) in TABLES {
            assert!(
                body.contains("PRIMARY KEY ((slot)") || body.contains(" PRIMARY KEY,"),
                "{name}: {body}"
            );
            // No counters and no collections: every write must be an idempotent upsert.
            for banned in ["counter", "list<", "set<", "map<"] {
                assert!(!body.contains(banned), "{name} uses {banned}");
            }
        }
    }
}
