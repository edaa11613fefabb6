//! `shardpay db …`: the database commands an operator runs, each connecting, doing one thing and
//! printing what it did.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{connect, leases, runtime, schema, DbError};
use crate::config::ScyllaConfig;

/// A `db` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbCommand {
    /// Create the keyspace and tables (idempotent).
    Migrate,
    /// Print the schema version the keyspace records.
    Status,
    /// List the slot leases.
    Leases,
}

/// Runs `command` against the configured cluster, printing to `out`.
pub fn run(config: &ScyllaConfig, command: DbCommand, out: &mut dyn Write) -> Result<(), DbError> {
    let printing = |error: std::io::Error| DbError::new("printing", error);
    runtime()?.block_on(async {
        let session = connect(config).await?;
        match command {
            DbCommand::Migrate => {
                let migration = schema::migrate(&session, config).await?;
                let keyspace = &config.keyspace;
                if migration.keyspace_created {
                    writeln!(out, "created keyspace {keyspace} ({})", config.replication).map_err(printing)?;
                } else if migration.replication_changed {
                    writeln!(
                        out,
                        "changed the replication of keyspace {keyspace} to {}: run a full repair (nodetool repair -full {keyspace}) on every node",
                        config.replication
                    )
                    .map_err(printing)?;
                } else {
                    writeln!(out, "keyspace {keyspace} exists").map_err(printing)?;
                }
                for table in &migration.created {
                    writeln!(out, "created table {keyspace}.{table}").map_err(printing)?;
                }
                if !migration.existing.is_empty() {
                    writeln!(out, "tables already there: {}", migration.existing.join(", ")).map_err(printing)?;
                }
                writeln!(out, "schema version {}", schema::SCHEMA_VERSION).map_err(printing)?;
            }
            DbCommand::Status => match schema::version(&session, &config.keyspace).await? {
                Some(version) => writeln!(
                    out,
                    "keyspace {} at schema version {version} (this binary: {})",
                    config.keyspace,
                    schema::SCHEMA_VERSION
                )
                .map_err(printing)?,
                None => {
                    return Err(DbError::new(
                        format!("keyspace {}", config.keyspace),
                        "not migrated: run `shardpay db migrate`",
                    ))
                }
            },
            DbCommand::Leases => {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_millis() as i64);
                let leases = leases::list(&session, &config.keyspace).await?;
                writeln!(out, "{:>11}  {:<40} {:>6}  state", "slots", "owner", "epoch").map_err(printing)?;
                for lease in &leases {
                    let first = u32::from(lease.block) * u32::from(leases::BLOCK_SLOTS);
                    let slots = format!("{first}-{}", first + u32::from(leases::BLOCK_SLOTS) - 1);
                    let state = if lease.expires_at_ms >= now_ms {
                        format!("held, {} ms left", lease.expires_at_ms - now_ms)
                    } else {
                        "expired".to_string()
                    };
                    writeln!(out, "{slots:>11}  {:<40} {:>6}  {state}", lease.owner, lease.epoch).map_err(printing)?;
                }
                writeln!(out, "{} of {} blocks recorded", leases.len(), leases::BLOCKS).map_err(printing)?;
            }
        }
        Ok(())
    })
}
