//! A serving node on the ScyllaDB store: connects, checks the schema, leases its slots, renews
//! the leases in the background, and releases them at a clean stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::bridge::{Bridge, Handle};
use super::leases::{Lease, LeaseError, Leases, BLOCKS};
use super::rows::Statements;
use super::{schema, DbError};
use crate::config::ScyllaConfig;
use crate::placement::SlotRange;

/// The node's connection to the database and its leases.
pub struct Node {
    /// The way to the driver's thread.
    pub handle: Handle,
    /// The keyspace's prepared statements.
    pub statements: Arc<Statements>,
    /// Epoch of each lease block held, by block number.
    pub epochs: Arc<Vec<i64>>,
    /// Who holds the leases: node name and incarnation.
    pub owner: String,
    leases: Arc<Leases>,
    held: Arc<Mutex<Vec<Lease>>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    lost: Arc<AtomicBool>,
    renewer: Option<JoinHandle<()>>,
    bridge: Option<Bridge>,
}

/// Margin for the clocks of two nodes when waiting for a lease to expire.
const LEASE_SKEW_MS: i64 = 2000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

impl Node {
    /// Connects, checks that the keyspace is migrated to this binary's schema, and leases the
    /// node's `slots` (whole lease blocks) for `node_id` (a lease another node holds is refused,
    /// naming it). `on_lost` runs on
    /// the renewal thread if a lease is lost or cannot be renewed before it expires: the node
    /// must then stop serving.
    pub fn start(
        config: &ScyllaConfig,
        node_id: &str,
        slots: SlotRange,
        on_lost: impl Fn(String) + Send + 'static,
    ) -> Result<Node, DbError> {
        let bridge = Bridge::start(config)?;
        let handle = bridge.handle();
        let keyspace = config.keyspace.clone();
        let version = futures_lite::future::block_on(
            handle.call("reading the schema version", move |session| async move {
                schema::version(&session, &keyspace).await
            }),
        )?;
        if version != Some(schema::SCHEMA_VERSION) {
            return Err(DbError::new(
                format!("keyspace {}", config.keyspace),
                match version {
                    None => "not migrated: run `shardpay db migrate`".to_string(),
                    Some(version) => format!(
                        "at schema version {version}, this binary needs {}: run `shardpay db migrate`",
                        schema::SCHEMA_VERSION
                    ),
                },
            ));
        }
        let keyspace = config.keyspace.clone();
        let statements = Arc::new(futures_lite::future::block_on(
            handle.call("preparing the statements", move |session| async move {
                Statements::prepare(&session, &keyspace).await
            }),
        )?);
        let mut incarnation = [0u8; 6];
        getrandom::getrandom(&mut incarnation)
            .map_err(|error| DbError::new("drawing an incarnation", error))?;
        let owner = format!(
            "{node_id}/{}",
            incarnation.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let lease_config = config.clone();
        let lease_owner = owner.clone();
        let leases = futures_lite::future::block_on(
            handle.call("preparing the lease statements", move |session| async move {
                Ok(Arc::new(Leases::new(session, &lease_config, lease_owner).await?))
            }),
        )?;
        // A lease still held may be a crashed process's: wait until it would have expired (as
        // first seen, plus a margin for clock skew), then refuse, naming the holder: a holder
        // that is alive has renewed it meanwhile. Per block: a holder renews its blocks one by
        // one, so a crashed one leaves expiries up to a renewal period apart, and waiting for the
        // first block seen gave up on a later one (a CI failure of the kill -9 loop).
        let mut first_seen_expiry: std::collections::HashMap<u16, i64> = std::collections::HashMap::new();
        let held = loop {
            let acquiring = leases.clone();
            let outcome =
                futures_lite::future::block_on(handle.call("taking the slot leases", move |_| async move {
                    Ok(acquiring
                        .acquire(slots.first as u16, slots.last as u16, now_ms())
                        .await)
                }))?;
            match outcome {
                Ok(held) => break held,
                Err(LeaseError::Held {
                    block,
                    owner,
                    expires_at_ms,
                }) if now_ms() < *first_seen_expiry.entry(block).or_insert(expires_at_ms) + LEASE_SKEW_MS => {
                    tracing::warn!(holder = %owner, "slots leased to another process; waiting for its lease to expire");
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(LeaseError::Db(error)) => return Err(error),
                Err(error) => return Err(DbError::new("taking the slot leases", error)),
            }
        };
        let mut epochs = vec![0; usize::from(BLOCKS)];
        for lease in &held {
            epochs[usize::from(lease.block)] = lease.epoch;
        }
        tracing::info!(owner = %owner, blocks = held.len(), %slots, "slot leases taken");
        let held = Arc::new(Mutex::new(held));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (handle, leases, held, stop, lost) = (
                handle.clone(),
                leases.clone(),
                held.clone(),
                stop.clone(),
                lost.clone(),
            );
            let period = Duration::from_millis(config.lease_seconds * 1000 / 3);
            std::thread::Builder::new()
                .name("scylla-leases".into())
                .spawn(move || renew(handle, leases, held, stop, lost, period, on_lost))
                .map_err(|error| DbError::new("starting the lease thread", error))?
        };
        Ok(Node {
            handle,
            statements,
            epochs: Arc::new(epochs),
            owner,
            leases,
            held,
            stop,
            lost,
            renewer: Some(renewer),
            bridge: Some(bridge),
        })
    }

    /// Stops renewing, releases the leases (so a restart or another node takes them at once),
    /// and closes the connection once every other handle is dropped.
    pub fn stop(mut self) {
        {
            let (stopped, wake) = &*self.stop;
            *stopped.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = true;
            wake.notify_all();
        }
        if let Some(renewer) = self.renewer.take() {
            let _ = renewer.join();
        }
        if !self.lost.load(Ordering::Relaxed) {
            let held = self
                .held
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            let leases = self.leases.clone();
            let released = futures_lite::future::block_on(
                self.handle
                    .call("releasing the slot leases", move |_| async move {
                        leases.release(&held).await
                    }),
            );
            match released {
                Ok(()) => tracing::info!(owner = %self.owner, "slot leases released"),
                Err(error) => {
                    tracing::warn!(%error, "could not release the slot leases (they expire by themselves)")
                }
            }
        }
        // The bridge's thread ends once every handle is gone: this one first.
        let Node { handle, bridge, .. } = self;
        drop(handle);
        drop(bridge);
    }
}

fn renew(
    handle: Handle,
    leases: Arc<Leases>,
    held: Arc<Mutex<Vec<Lease>>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    lost: Arc<AtomicBool>,
    period: Duration,
    on_lost: impl Fn(String),
) {
    let (stopped, wake) = &*stop;
    loop {
        let guard = stopped.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(guard, period, |stopped| !*stopped)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *guard {
            return;
        }
        drop(guard);
        let mut current = held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let deadline = current
            .iter()
            .map(|lease| lease.expires_at_ms)
            .min()
            .unwrap_or(i64::MAX);
        let renewing = leases.clone();
        let outcome =
            futures_lite::future::block_on(handle.call("renewing the slot leases", move |_| async move {
                let outcome = renewing.renew(&mut current, now_ms()).await;
                Ok((current, outcome))
            }));
        match outcome {
            Ok((renewed, Ok(()))) => *held.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = renewed,
            Ok((_, Err(error))) if !matches!(error, LeaseError::Db(_)) => {
                lost.store(true, Ordering::Relaxed);
                on_lost(error.to_string());
                return;
            }
            Ok((_, Err(error))) => warn_or_lose(&error.to_string(), deadline, period, &lost, &on_lost),
            Err(error) => warn_or_lose(&error.to_string(), deadline, period, &lost, &on_lost),
        }
        if lost.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// A renewal failed: keep trying while the leases run, give up (and stop serving) when the next
/// attempt would come after they expired.
fn warn_or_lose(error: &str, deadline: i64, period: Duration, lost: &AtomicBool, on_lost: &impl Fn(String)) {
    if now_ms() + period.as_millis() as i64 >= deadline {
        lost.store(true, Ordering::Relaxed);
        on_lost(format!(
            "the slot leases could not be renewed before they expire: {error}"
        ));
    } else {
        tracing::warn!(%error, "renewing the slot leases failed; retrying");
    }
}
