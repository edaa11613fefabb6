//! The ScyllaDB store against a real Apache Cassandra node: `shardpay db` through the real
//! binary, slot leases, and the runtime-agnostic bridge.
//!
//! These tests need a node: `scripts/cassandra.sh start`, then
//! `CASSANDRA_NODE=127.0.0.1:9042 cargo test --test scylla -- --ignored` (scripts/test.sh does
//! both). Each test works in a keyspace of its own.

mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardpay::config::ScyllaConfig;
use shardpay::storage::scylla::bridge::Bridge;
use shardpay::storage::scylla::leases::{LeaseError, Leases, BLOCKS};
use shardpay::storage::scylla::{connect, runtime, schema, DbError};

const NEEDS: &str = "needs Cassandra: scripts/cassandra.sh start, then CASSANDRA_NODE=127.0.0.1:9042";

/// The node under test; a missing one fails the test rather than skipping it.
fn node() -> String {
    std::env::var("CASSANDRA_NODE").unwrap_or_else(|_| panic!("CASSANDRA_NODE is not set ({NEEDS})"))
}

/// A keyspace no other test (or earlier run) uses.
fn fresh_keyspace(purpose: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() % 1_000_000_000;
    format!(
        "t_{purpose}_{}_{stamp}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn config(keyspace: &str) -> ScyllaConfig {
    ScyllaConfig {
        nodes: node(),
        keyspace: keyspace.to_string(),
        lease_seconds: 30,
        ..ScyllaConfig::default()
    }
}

/// Runs `shardpay db ARGS` against `keyspace`.
fn db(keyspace: &str, args: &[&str]) -> Output {
    Command::new(common::binary())
        .arg("db")
        .args(args)
        .env("SHARDPAY_SCYLLA_NODES", node())
        .env("SHARDPAY_SCYLLA_KEYSPACE", keyspace)
        .output()
        .expect("run shardpay db")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn migrated(keyspace: &str) -> ScyllaConfig {
    let config = config(keyspace);
    runtime()
        .unwrap()
        .block_on(async {
            let session = connect(&config).await?;
            schema::migrate(&session, &config).await
        })
        .expect("migrate");
    config
}

#[test]
#[ignore = "needs Cassandra (see the module documentation)"]
fn db_migrate_creates_everything_once_and_status_reports_the_version() {
    let keyspace = fresh_keyspace("migrate");
    let before = db(&keyspace, &["status"]);
    assert!(!before.status.success());
    assert!(
        stderr(&before).contains("not migrated: run `shardpay db migrate`"),
        "{}",
        stderr(&before)
    );

    let first = db(&keyspace, &["migrate"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = stdout(&first);
    assert!(text.contains(&format!("created keyspace {keyspace}")), "{text}");
    for (table, _) in schema::TABLES {
        assert!(
            text.contains(&format!("created table {keyspace}.{table}\n")),
            "{table}: {text}"
        );
    }

    let second = db(&keyspace, &["migrate"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = stdout(&second);
    assert!(text.contains(&format!("keyspace {keyspace} exists")), "{text}");
    assert!(
        !text.contains("created"),
        "a second migration creates nothing: {text}"
    );

    let status = db(&keyspace, &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(stdout(&status).contains(&format!("at schema version {}", schema::SCHEMA_VERSION)));
}

#[test]
#[ignore = "needs Cassandra (see the module documentation)"]
fn migrate_sets_the_configured_replication() {
    let keyspace = fresh_keyspace("replication");
    let config = config(&keyspace);
    let migrate = || {
        runtime()
            .unwrap()
            .block_on(async {
                let session = connect(&config).await?;
                schema::migrate(&session, &config).await
            })
            .unwrap()
    };
    // A keyspace made by hand with another strategy: migrating moves it to the configured
    // NetworkTopologyStrategy factors, and says so; migrating again changes nothing.
    runtime().unwrap().block_on(async {
        let session = connect(&config).await.unwrap();
        session
            .query_unpaged(
                format!("CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
                (),
            )
            .await
            .unwrap();
    });
    let migration = migrate();
    assert!(migration.replication_changed);
    assert!(!migration.keyspace_created);
    assert_eq!(migration.created.len(), schema::TABLES.len());
    let again = migrate();
    assert!(!again.replication_changed);
    assert!(again.created.is_empty());
}

#[test]
#[ignore = "needs Cassandra (see the module documentation)"]
fn db_commands_name_an_unreachable_cluster() {
    let output = Command::new(common::binary())
        .args(["db", "migrate"])
        .env(
            "SHARDPAY_SCYLLA_NODES",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .env("SHARDPAY_SCYLLA_CONNECT_TIMEOUT_MS", "1000")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with("shardpay: db: connecting to 127.0.0.1:"),
        "{}",
        stderr(&output)
    );
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
#[ignore = "needs Cassandra (see the module documentation)"]
fn two_nodes_lease_disjoint_ranges_and_a_third_cannot_take_either() {
    let keyspace = fresh_keyspace("leases");
    let config = migrated(&keyspace);
    runtime().unwrap().block_on(async {
        let session = Arc::new(connect(&config).await.unwrap());
        let node = |name: &str| {
            let session = session.clone();
            let config = config.clone();
            let owner = name.to_string();
            async move { Arc::new(Leases::new(session, &config, owner).await.unwrap()) }
        };
        let a = node("node-a/1").await;
        let b = node("node-b/1").await;
        let c = node("node-c/1").await;
        let now = now_ms();

        let held_a = a.acquire(0, 8191, now).await.unwrap();
        let held_b = b.acquire(8192, 16383, now).await.unwrap();
        assert_eq!(held_a.len() + held_b.len(), usize::from(BLOCKS));
        assert!(held_a.iter().chain(&held_b).all(|lease| lease.epoch == 1));

        // The third node is refused either range, and a range across both, naming a holder.
        for (first, last) in [(0, 8191), (8192, 16383), (8128, 8255)] {
            match c.acquire(first, last, now + 1000).await {
                Err(LeaseError::Held { owner, .. }) => assert!(owner == "node-a/1" || owner == "node-b/1"),
                other => panic!("{first}-{last}: {other:?}"),
            }
        }
        // All or none: the refused attempt across both ranges kept nothing. A node of the same
        // name but another incarnation is refused too while the lease runs.
        let listed = a.list().await.unwrap();
        assert_eq!(listed.len(), usize::from(BLOCKS));
        assert!(listed
            .iter()
            .all(|lease| lease.owner == "node-a/1" || lease.owner == "node-b/1"));
        let a_again = node("node-a/2").await;
        assert!(matches!(
            a_again.acquire(0, 63, now).await,
            Err(LeaseError::Held { .. })
        ));

        // Renewal keeps the lease; releasing hands it over at once, with a higher epoch.
        let mut held_a = held_a;
        a.renew(&mut held_a, now + 5000).await.unwrap();
        assert!(held_a
            .iter()
            .all(|lease| lease.expires_at_ms == now + 5000 + 30_000));
        a.release(&held_a[..1]).await.unwrap();
        let taken = c.acquire(0, 63, now + 6000).await.unwrap();
        assert_eq!(
            (taken[0].block, taken[0].epoch, taken[0].owner.as_str()),
            (0, 2, "node-c/1")
        );
        // The former holder cannot renew what it lost, and a lease kept alive stays its holder's.
        match a.renew(&mut held_a[..1], now + 7000).await {
            Err(LeaseError::Lost { block: 0 }) => {}
            other => panic!("{other:?}"),
        }

        // An expired lease (b stopped renewing) is taken over, and b's renewal then fails.
        let later = now + 31_000;
        let taken = c.acquire(8192, 8255, later).await.unwrap();
        assert_eq!(taken[0].epoch, 2);
        let mut held_b = held_b;
        assert!(matches!(
            b.renew(&mut held_b[..1], later).await,
            Err(LeaseError::Lost { block: 128 })
        ));
    });

    // The binary lists them.
    let output = db(&keyspace, &["leases"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("0-63  node-c/1"), "{text}");
    assert!(text.contains("8192-8255  node-c/1"), "{text}");
    assert!(text.contains("64-127  node-a/1"), "{text}");
    assert!(text.contains("256 of 256 blocks recorded"), "{text}");
}

#[test]
#[ignore = "needs Cassandra (see the module documentation)"]
fn a_range_that_splits_a_block_is_refused_before_any_write() {
    let keyspace = fresh_keyspace("unaligned");
    let config = migrated(&keyspace);
    runtime().unwrap().block_on(async {
        let session = Arc::new(connect(&config).await.unwrap());
        let leases = Arc::new(Leases::new(session, &config, "n/1".into()).await.unwrap());
        let error = leases.acquire(10, 8191, now_ms()).await.unwrap_err();
        assert!(
            error.to_string().contains("not whole lease blocks of 64 slots"),
            "{error}"
        );
        assert!(leases.list().await.unwrap().is_empty());
    });
}

#[test]
#[ignore = "needs Cassandra (see the module documentation)"]
fn the_bridge_serves_callers_on_any_runtime_through_a_small_queue() {
    let keyspace = fresh_keyspace("bridge");
    let mut config = migrated(&keyspace);
    config.queue_depth = 4;
    config.in_flight_max = 8;
    let bridge = Bridge::start(&config).unwrap();
    // Callers on plain threads, blocking on futures-lite's executor: no tokio in sight.
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let handle = bridge.handle();
            let keyspace = keyspace.clone();
            std::thread::spawn(move || {
                futures_lite::future::block_on(async {
                    for i in 0..50 {
                        let keyspace = keyspace.clone();
                        let block = thread * 50 + i;
                        let answer = handle
                            .call("writing a row", move |session| async move {
                                session
                                    .query_unpaged(
                                        format!("INSERT INTO {keyspace}.slot_leases (block, owner, epoch, expires_at_ms) VALUES (?, 'bridge', 0, 0)"),
                                        (block,),
                                    )
                                    .await
                                    .map_err(|error| DbError::new("insert", error))?;
                                Ok(block)
                            })
                            .await
                            .unwrap();
                        assert_eq!(answer, block);
                    }
                })
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let handle = bridge.handle();
    let count: i64 = futures_lite::future::block_on(handle.call("counting", move |session| async move {
        let rows = session
            .query_unpaged(format!("SELECT count(*) FROM {keyspace}.slot_leases"), ())
            .await
            .map_err(|error| DbError::new("count", error))?
            .into_rows_result()
            .map_err(|error| DbError::new("count", error))?;
        let (count,) = rows
            .single_row::<(i64,)>()
            .map_err(|error| DbError::new("count", error))?;
        Ok(count)
    }))
    .unwrap();
    assert_eq!(count, 200);
    // A database error comes back as the caller's error, naming what was done.
    let error = futures_lite::future::block_on(handle.call("a bad statement", |session| async move {
        session
            .query_unpaged("SELECT nothing FROM nowhere.none", ())
            .await
            .map_err(|error| DbError::new("a bad statement", error))?;
        Ok(())
    }))
    .unwrap_err();
    assert_eq!(error.what, "a bad statement");
    drop(handle);
    drop(bridge);
    let _ = Duration::ZERO;
}
