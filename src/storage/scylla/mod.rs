//! The ScyllaDB (or Apache Cassandra) store: the scale-out alternative to the embedded log.
//!
//! The `scylla` driver needs tokio; shardpay's shards run glommio. So the driver lives on its own
//! thread with its own tokio runtime ([`bridge`]), and shards reach it through bounded,
//! runtime-agnostic channels: a shard's executor never blocks on the database. [`schema`] creates
//! the keyspace and tables (`shardpay db migrate`), and [`leases`] gives each node exclusive,
//! fenced ownership of its slots through lightweight transactions.
//!
//! Only this module and its children import `scylla` or `tokio`.

pub mod bridge;
pub mod cli;
pub mod leases;
pub mod node;
pub mod rows;
pub mod schema;

use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{Consistency, SerialConsistency};

use crate::config::ScyllaConfig;

/// A database operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {message}")]
pub struct DbError {
    /// What was being done.
    pub what: String,
    /// The driver's or the database's explanation.
    pub message: String,
}

impl DbError {
    /// An error of `what`, explained by `message`.
    pub fn new(what: impl Into<String>, message: impl ToString) -> DbError {
        DbError {
            what: what.into(),
            message: message.to_string(),
        }
    }
}

/// `scylla.consistency` as the driver's type (validated by the configuration).
pub fn consistency(name: &str) -> Consistency {
    match name {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => Consistency::LocalQuorum,
    }
}

/// `scylla.serial_consistency` as the driver's type (validated by the configuration).
pub fn serial_consistency(name: &str) -> SerialConsistency {
    match name {
        "SERIAL" => SerialConsistency::Serial,
        _ => SerialConsistency::LocalSerial,
    }
}

/// Connects to the cluster with the configured contact points, credentials, consistency levels
/// and timeouts. Runs on a tokio runtime.
pub async fn connect(config: &ScyllaConfig) -> Result<Session, DbError> {
    let profile = ExecutionProfile::builder()
        .consistency(consistency(&config.consistency))
        .serial_consistency(Some(serial_consistency(&config.serial_consistency)))
        .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(config.node_list())
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .default_execution_profile_handle(profile.into_handle());
    if !config.local_datacenter.is_empty() {
        builder = builder.prefer_datacenter(config.local_datacenter.clone());
    }
    if !config.username.is_empty() {
        builder = builder.user(&config.username, &config.password);
    }
    builder
        .build()
        .await
        .map_err(|error| DbError::new(format!("connecting to {}", config.nodes), error))
}

/// A current-thread tokio runtime for one-off database work off the shards (the `db` commands).
pub fn runtime() -> Result<tokio::runtime::Runtime, DbError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| DbError::new("starting a tokio runtime", error))
}
