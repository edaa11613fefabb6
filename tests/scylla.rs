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

mod round_trip {
    //! A shard's state written as rows, batch by batch as the writer cuts them, and loaded back:
    //! the loaded state must hold the same facts.

    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;
    use std::rc::Rc;

    use shardpay::config::{AuthConfig, MoneyConfig};
    use shardpay::home::{Home, UserAction, UserCommand, UserReply};
    use shardpay::payments::idempotency::Scope;
    use shardpay::payments::ledger::{Currency, Payment, Transfer};
    use shardpay::slots::{slot_range, Slot, UserId};
    use shardpay::storage::scylla::rows::{self, Loaded, RowKey, Statements};
    use shardpay::storage::{Log, Record, StateView};

    const SHARDS: usize = 2;

    /// The writer's side of a shard: the keys its frames touched since the last cut.
    #[derive(Clone, Default)]
    struct Touched(Rc<RefCell<HashSet<RowKey>>>);

    impl Log for Touched {
        fn append(&mut self, _records: &[Record]) {}

        fn before_apply(&mut self, records: &[Record], state: &StateView<'_>) {
            rows::keys_of(records, state, &mut *self.0.borrow_mut());
        }
    }

    struct World {
        homes: Vec<Home>,
        touched: Vec<Touched>,
        now_ms: u64,
        next: u64,
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    impl World {
        fn new() -> World {
            let touched: Vec<Touched> = (0..SHARDS).map(|_| Touched::default()).collect();
            let homes = touched
                .iter()
                .enumerate()
                .map(|(shard, log)| {
                    Home::new(shard, SHARDS, &AuthConfig::default(), &MoneyConfig::default())
                        .with_log(Box::new(log.clone()))
                })
                .collect();
            World {
                homes,
                touched,
                now_ms: 1_900_000_000_000,
                next: 0,
            }
        }

        fn tick(&mut self) -> u64 {
            self.now_ms += 7;
            self.next += 1;
            self.next
        }

        fn run(&mut self, user: &UserId, command: UserCommand) -> UserReply {
            self.homes[user.slot().shard(SHARDS)].execute(command)
        }

        /// A user whose home is `shard`.
        fn user(&mut self, shard: usize) -> UserId {
            loop {
                let n = self.tick();
                let username = format!("user{n}");
                let slot = Slot::of_username(&username);
                if slot.shard(SHARDS) != shard {
                    continue;
                }
                let id = UserId::new(slot, [n as u8, 1, 2, 3, 4, 5, 6, 7, 8, (n >> 8) as u8]);
                let reply = self.homes[shard].execute(UserCommand::CreateUser {
                    id: id.clone(),
                    username,
                    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
                    now_ms: self.now_ms,
                });
                assert!(matches!(reply, UserReply::User(_)), "{reply:?}");
                return id;
            }
        }

        fn login(&mut self, user: &UserId) -> (String, [u8; 32]) {
            let n = self.tick();
            let session = format!("ses_{n:024x}");
            let hash = [n as u8; 32];
            let now_ms = self.now_ms;
            let reply = self.run(
                user,
                UserCommand::CreateSession {
                    user: user.clone(),
                    session: session.clone(),
                    refresh_hash: hash,
                    refresh_expires_at_ms: now_ms + 86_400_000,
                    now_ms,
                },
            );
            assert!(matches!(reply, UserReply::Session { .. }), "{reply:?}");
            (session, hash)
        }

        fn refresh(&mut self, user: &UserId, presented: [u8; 32]) -> [u8; 32] {
            let n = self.tick();
            let replacement = [n as u8 ^ 0x5a; 32];
            let now_ms = self.now_ms;
            let reply = self.run(
                user,
                UserCommand::Refresh {
                    presented,
                    replacement,
                    refresh_expires_at_ms: now_ms + 86_400_000,
                    now_ms,
                },
            );
            assert!(matches!(reply, UserReply::Session { .. }), "{reply:?}");
            replacement
        }

        fn deposit(&mut self, user: &UserId, amount: u64) {
            let n = self.tick();
            let key = format!("deposit-{n}");
            let home = Slot::of_bytes(key.as_bytes()).shard(SHARDS);
            let now_ms = self.now_ms;
            let begin = self.homes[home].execute(UserCommand::IdempotencyBegin {
                scope: Scope::Admin,
                key: key.clone(),
                fingerprint: [n as u8; 32],
                now_ms,
            });
            assert!(matches!(begin, UserReply::Idempotency(_)), "{begin:?}");
            let reply = self.run(
                user,
                UserCommand::Deposit {
                    id: format!("dep_{n:024x}"),
                    user: user.clone(),
                    amount,
                    currency: usd(),
                },
            );
            assert!(matches!(reply, UserReply::Done), "{reply:?}");
            self.homes[home].execute(UserCommand::IdempotencyComplete {
                scope: Scope::Admin,
                key,
                status: 201,
                body: format!("{{\"deposit\":{n}}}").into_bytes(),
            });
        }

        /// A keyed payment; a cross-shard one is received, and settled when `settle`.
        fn pay(&mut self, from: &UserId, to: &UserId, amount: u64, settle: bool) -> String {
            let n = self.tick();
            let key = format!("pay-{n}");
            let now_ms = self.now_ms;
            let session = self.homes[from.slot().shard(SHARDS)]
                .auth()
                .sessions_of(from)
                .first()
                .map(|session| session.id.clone())
                .expect("the payer is logged in");
            let begin = self.run(
                from,
                UserCommand::Authenticated {
                    user: from.clone(),
                    session,
                    now_ms,
                    action: UserAction::BeginIdempotent {
                        key: key.clone(),
                        fingerprint: [n as u8; 32],
                    },
                },
            );
            assert!(matches!(begin, UserReply::Idempotency(_)), "{begin:?}");
            let payment = Payment {
                id: format!("pay_{n:024x}"),
                from: from.clone(),
                to: to.clone(),
                amount,
                currency: usd(),
                description: (n % 2 == 0).then(|| format!("payment {n}")),
                amount_refunded: 0,
                created_at_ms: now_ms,
            };
            let id = payment.id.clone();
            match self.run(
                from,
                UserCommand::Pay {
                    payment,
                    key,
                    answer: format!("{{\"payment\":{n}}}").into_bytes(),
                    now_ms,
                },
            ) {
                UserReply::Done => {}
                UserReply::Transfer(transfer) => self.deliver(from, to, transfer, settle),
                other => panic!("{other:?}"),
            }
            id
        }

        fn deliver(&mut self, sender: &UserId, recipient: &UserId, transfer: Transfer, settle: bool) {
            let id = transfer.id().to_string();
            let reply = self.run(recipient, UserCommand::Receive(transfer));
            assert!(matches!(reply, UserReply::Done), "{reply:?}");
            if settle {
                let reply = self.run(sender, UserCommand::Settle { transfer: id });
                assert!(matches!(reply, UserReply::Done), "{reply:?}");
            }
        }

        fn refund(&mut self, payee: &UserId, payer: &UserId, payment: &str, amount: u64, settle: bool) {
            let n = self.tick();
            let now_ms = self.now_ms;
            match self.run(
                payee,
                UserCommand::Refund {
                    refund: format!("ref_{n:024x}"),
                    payment: payment.to_string(),
                    by: payee.clone(),
                    amount,
                    key: format!("refund-{n}"),
                    answer: b"{}".to_vec(),
                    now_ms,
                },
            ) {
                UserReply::Done => {}
                UserReply::Transfer(transfer) => self.deliver(payee, payer, transfer, settle),
                other => panic!("{other:?}"),
            }
        }

        /// What the writer does when it cuts a batch: every touched row's current value.
        fn cut(&mut self, shard: usize) -> Vec<rows::Write> {
            let keys: Vec<RowKey> = self.touched[shard].0.borrow_mut().drain().collect();
            rows::writes_of(keys.iter(), &self.homes[shard], self.now_ms)
        }
    }

    #[test]
    #[ignore = "needs Cassandra (see the module documentation)"]
    fn a_shards_state_loads_back_from_its_rows() {
        let keyspace = fresh_keyspace("rows");
        let config = migrated(&keyspace);
        let mut world = World::new();
        let runtime = runtime().unwrap();
        let session = runtime.block_on(connect(&config)).unwrap();
        let statements = runtime
            .block_on(Statements::prepare(&session, &keyspace))
            .unwrap();
        let mut stamps = rows::Stamps {
            epochs: Arc::new(vec![1; 256]),
            counter: 0,
        };
        let mut flush = |world: &mut World| {
            for shard in 0..SHARDS {
                let writes = world.cut(shard);
                runtime
                    .block_on(rows::write(&session, &statements, &writes, &stamps))
                    .unwrap();
                stamps.counter += 2;
            }
        };

        let (a, b) = (world.user(0), world.user(0));
        let (c, d) = (world.user(1), world.user(1));
        for user in [&a, &b, &c, &d] {
            world.login(user);
        }
        let (_, first) = world.login(&a);
        let second = world.refresh(&a, first);
        flush(&mut world);
        let third = world.refresh(&a, second);
        world.refresh(&a, third);
        let (revoked, _) = world.login(&b);
        let now_ms = world.now_ms;
        world.run(
            &b,
            UserCommand::Authenticated {
                user: b.clone(),
                session: revoked,
                now_ms,
                action: UserAction::RevokeCurrent,
            },
        );
        for (user, amount) in [(&a, 10_000), (&b, 5_000), (&c, 7_000), (&d, 1_000)] {
            world.deposit(user, amount);
        }
        flush(&mut world);

        let local = world.pay(&a, &b, 1_200, true);
        let settled = world.pay(&a, &c, 800, true);
        let unsettled = world.pay(&c, &a, 300, false);
        world.pay(&d, &b, 250, true);
        flush(&mut world);
        world.refund(&b, &a, &local, 200, true);
        world.refund(&c, &a, &settled, 100, false);
        world.pay(&b, &a, 50, true);
        // A key claimed and never answered: it loads as running.
        let now_ms = world.now_ms;
        let session_c = world.homes[1].auth().sessions_of(&c)[0].id.clone();
        world.run(
            &c,
            UserCommand::Authenticated {
                user: c.clone(),
                session: session_c,
                now_ms,
                action: UserAction::BeginIdempotent {
                    key: "never-answered".into(),
                    fingerprint: [9; 32],
                },
            },
        );
        flush(&mut world);

        for (shard, original) in world.homes.iter().enumerate() {
            let (first, last) = slot_range(shard, SHARDS);
            let slots: Vec<i32> = (first as i32..=last as i32).collect();
            let mut loaded = Loaded::default();
            for group in slots.chunks(512) {
                loaded.extend(
                    runtime
                        .block_on(rows::load(&session, &statements, group))
                        .unwrap(),
                );
            }
            let mut restored = Home::new(shard, SHARDS, &AuthConfig::default(), &MoneyConfig::default());
            restored.restore_parts(
                shardpay::auth::state::AuthState::restore(loaded.users, loaded.sessions),
                shardpay::payments::ledger::Ledger::restore(loaded.ledger),
                loaded.keys,
                loaded.pending,
            );
            let ledger = original.ledger();
            assert!(
                ledger.same_facts(restored.ledger()),
                "shard {shard}: the ledger differs\noriginal: {ledger:?}\nrestored: {:?}",
                restored.ledger()
            );
            assert!(restored.ledger().conserved());
            assert_eq!(
                original.idempotency(),
                restored.idempotency(),
                "shard {shard}: idempotency keys differ"
            );
            for user in [&a, &b, &c, &d] {
                assert_eq!(original.auth().user(user), restored.auth().user(user));
                let view = |home: &Home| {
                    home.auth()
                        .sessions_of(user)
                        .into_iter()
                        .map(|s| {
                            (
                                s.id.clone(),
                                s.created_at_ms,
                                s.refresh_hash,
                                s.refresh_expires_at_ms,
                                s.rotated().copied().collect::<Vec<_>>(),
                            )
                        })
                        .collect::<Vec<_>>()
                };
                assert_eq!(view(original), view(&restored), "sessions of {user}");
            }
            assert_eq!(
                original.pending_answer(&unsettled),
                restored.pending_answer(&unsettled)
            );
        }
        // The facts the scenario made are there, not just equal: the unsettled payment and
        // refund wait in their senders' outboxes, with the payment's answer.
        let shard_of = |user: &UserId| user.slot().shard(SHARDS);
        assert!(world.homes[shard_of(&c)].ledger().outgoing(&unsettled).is_some());
        assert!(world.homes[shard_of(&c)].pending_answer(&unsettled).is_some());
        assert_eq!(
            world.homes[shard_of(&a)].auth().sessions_of(&a)[1]
                .rotated()
                .count(),
            3
        );
    }
}

/// A second process on the same keyspace is refused while the first holds the slot leases, and
/// names the holder; once the first stops cleanly (releasing its leases) a new one starts at once.
#[test]
#[ignore = "needs Cassandra (see the module documentation)"]
fn a_second_node_cannot_take_slots_a_running_node_holds() {
    let keyspace = fresh_keyspace("second");
    migrated(&keyspace);
    let node = node();
    let env = [
        ("SHARDPAY_STORAGE_BACKEND", "scylla"),
        ("SHARDPAY_SCYLLA_NODES", node.as_str()),
        ("SHARDPAY_SCYLLA_KEYSPACE", keyspace.as_str()),
        // Renewed every 4 s: a busy test node must not let the first node's lease lapse (it
        // would then stop, rightly, and the second would take the slots).
        ("SHARDPAY_SCYLLA_LEASE_SECONDS", "12"),
        ("SHARDPAY_SERVER_NODE_ID", "first"),
    ];
    let mut first = common::Server::start(1, &env);
    let signup = common::post(
        first.port,
        "/v1/users",
        &[],
        r#"{"username":"leaseholder","password":"correct horse battery"}"#,
    );
    assert_eq!(signup.status, 201, "{}", signup.text());

    let second = Command::new(common::binary())
        .args(["serve", "--shards", "1", "--listen"])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--shard-port-base")
        .arg(common::free_port_range(1).to_string())
        .envs(
            env.iter()
                .filter(|(name, _)| *name != "SHARDPAY_SERVER_NODE_ID")
                .copied(),
        )
        .env("SHARDPAY_SERVER_NODE_ID", "second")
        .env("SHARDPAY_SERVER_IO_MEMORY_BYTES", "262144")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must give up by itself, at the latest when the lease it saw would have expired (plus
    // the margin); if it is still running well after that, it took the slots.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut second = second;
    while second.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let output = second.wait_with_output().unwrap();
            panic!(
                "the second node did not give up: {}\n--- first: {}",
                stderr(&output),
                first.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = second.wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let text = stderr(&second);
    assert!(text.contains("are leased to first/"), "{text}");
    // It waited until the lease it first saw would have run out (a crashed holder's would
    // have), plus the clock margin, and gave up because the holder renewed it.
    assert!(text.contains("waiting for its lease to expire"), "{text}");

    // A clean stop releases the leases: the next node takes them without waiting and sees the
    // data.
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(20)).is_some());
    let next = common::Server::start(1, &env);
    assert!(
        !next.stderr().contains("waiting for its lease"),
        "{}",
        next.stderr()
    );
    let login = common::post(
        next.port,
        "/v1/sessions",
        &[],
        r#"{"username":"leaseholder","password":"correct horse battery"}"#,
    );
    assert_eq!(login.status, 201, "{}", login.text());
}
