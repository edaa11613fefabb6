//! Crash simulation: the real journal, writer, recovery and home state machines over a simulated
//! disk that, at a seeded crash point, loses, reorders or tears (at 512 bytes) every write not
//! covered by a completed `fdatasync`. Over thousands of seeds: every acknowledged payment and
//! deposit is recovered, idempotency keys replay their answers, money is conserved, and no
//! answer was released before its frame was durable. A failing seed is printed; replay it with
//! `SHARDPAY_SIM_SEED=<seed> cargo test --lib crash_simulation_seeds_1_to`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use crate::config::{AuthConfig, MoneyConfig};
use crate::home::{Home, UserCommand, UserReply};
use crate::payments::idempotency::{Begin, Scope};
use crate::payments::ledger::{Currency, Payment};
use crate::slots::{Slot, UserId};
use crate::storage::disk::{snapshot_name, Disk, SegmentFile, TEMPORARY_SUFFIX};
use crate::storage::journal::{Journal, JournalLog, Mode};
use crate::storage::recovery;
use crate::storage::snapshot;
use crate::storage::writer::{Capture, Files, Writer, WriterConfig};

const SHARDS: usize = 2;
const SECTOR: usize = 512;

/// xorshift64*: small, seeded, reproducible.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct SimFile {
    /// What survives a crash for certain.
    durable: Vec<u8>,
    /// Writes since the last completed sync, in issue order.
    unsynced: Vec<(u64, Vec<u8>)>,
}

struct SimState {
    files: BTreeMap<String, SimFile>,
    ops: u64,
    crash_at: u64,
    crashed: bool,
    rng: Rng,
}

/// One shard's simulated directory.
#[derive(Clone)]
struct SimDisk(Rc<RefCell<SimState>>);

fn crashed() -> io::Error {
    io::Error::other("simulated crash")
}

impl SimDisk {
    fn new(crash_at: u64, seed: u64) -> SimDisk {
        SimDisk(Rc::new(RefCell::new(SimState {
            files: BTreeMap::new(),
            ops: 0,
            crash_at,
            crashed: false,
            rng: Rng::new(seed),
        })))
    }

    /// Counts an operation; the one at the crash point and every later one fail.
    fn op(&self) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        if state.crashed {
            return Err(crashed());
        }
        state.ops += 1;
        if state.ops >= state.crash_at {
            state.crashed = true;
            return Err(crashed());
        }
        Ok(())
    }

    /// `write_temporary_std` on this disk: `name` + `TEMPORARY_SUFFIX`, durable once written.
    async fn write_temporary(&self, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.latency().await;
        self.op()?;
        let file = SimFile {
            durable: bytes,
            unsynced: Vec::new(),
        };
        self.0
            .borrow_mut()
            .files
            .insert(format!("{name}{TEMPORARY_SUFFIX}"), file);
        Ok(())
    }

    /// Lets other tasks run, so appends pile up into batches as on a real disk.
    async fn latency(&self) {
        let turns = self.0.borrow_mut().rng.below(4);
        for _ in 0..turns {
            futures_lite::future::yield_now().await;
        }
    }

    /// The disk after the crash: durable bytes, plus each unsynced write dropped, applied or
    /// torn at sector granularity, in a shuffled order. `lose_all` drops every unsynced write.
    fn image(&self, rng: &mut Rng, lose_all: bool) -> BTreeMap<String, Vec<u8>> {
        let state = self.0.borrow();
        let mut out = BTreeMap::new();
        for (name, file) in &state.files {
            let mut bytes = file.durable.clone();
            let mut writes = file.unsynced.clone();
            for i in (1..writes.len()).rev() {
                writes.swap(i, rng.below(i as u64 + 1) as usize);
            }
            if !lose_all {
                for (offset, data) in writes {
                    let how = rng.below(3);
                    for (n, sector) in data.chunks(SECTOR).enumerate() {
                        let keep = match how {
                            0 => false,
                            1 => true,
                            _ => rng.below(2) == 0,
                        };
                        if keep {
                            let at = offset as usize + n * SECTOR;
                            if bytes.len() < at + sector.len() {
                                bytes.resize(at + sector.len(), 0);
                            }
                            bytes[at..at + sector.len()].copy_from_slice(sector);
                        }
                    }
                }
            }
            out.insert(name.clone(), bytes);
        }
        out
    }

    /// Whether frame `seq` is durable on this disk now (decoding the durable bytes).
    fn durable_through(&self, seq: u64) -> bool {
        let state = self.0.borrow();
        let mut last = 0;
        for (name, file) in &state.files {
            if crate::storage::disk::parse_segment_name(name).is_none() {
                continue;
            }
            let mut pos = 0;
            while let Some(frame) = crate::storage::frame::decode(&file.durable[pos..]) {
                last = last.max(frame.seq);
                pos += frame.size();
            }
        }
        last >= seq
    }
}

struct SimSegment {
    disk: SimDisk,
    name: String,
}

impl Disk for SimDisk {
    type File = SimSegment;

    async fn create(&self, name: &str, size: u64) -> io::Result<SimSegment> {
        self.latency().await;
        self.op()?;
        let file = SimFile {
            durable: vec![0; size as usize],
            unsynced: Vec::new(),
        };
        self.0.borrow_mut().files.insert(name.to_string(), file);
        Ok(SimSegment {
            disk: self.clone(),
            name: name.to_string(),
        })
    }

    async fn publish(&self, name: &str) -> io::Result<()> {
        self.latency().await;
        self.op()?;
        let mut state = self.0.borrow_mut();
        let file = state
            .files
            .remove(&format!("{name}{TEMPORARY_SUFFIX}"))
            .ok_or_else(|| io::Error::other(format!("no {name}{TEMPORARY_SUFFIX} to publish")))?;
        state.files.insert(name.to_string(), file);
        Ok(())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.latency().await;
        self.op()?;
        self.0.borrow_mut().files.remove(name);
        Ok(())
    }
}

impl SegmentFile for SimSegment {
    async fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.disk.latency().await;
        // A write cut off by the crash may still have reached the disk, in part.
        if let Some(file) = self.disk.0.borrow_mut().files.get_mut(&self.name) {
            file.unsynced.push((offset, bytes.to_vec()));
        }
        self.disk.op()
    }

    async fn sync(&self) -> io::Result<()> {
        self.disk.latency().await;
        self.disk.op()?;
        let mut state = self.disk.0.borrow_mut();
        if let Some(file) = state.files.get_mut(&self.name) {
            for (offset, data) in std::mem::take(&mut file.unsynced) {
                let at = offset as usize;
                if file.durable.len() < at + data.len() {
                    file.durable.resize(at + data.len(), 0);
                }
                file.durable[at..at + data.len()].copy_from_slice(&data);
            }
        }
        Ok(())
    }
}

fn config() -> (AuthConfig, MoneyConfig) {
    (AuthConfig::default(), MoneyConfig::default())
}

fn new_home(shard: usize) -> Home {
    let (auth, money) = config();
    Home::new(shard, SHARDS, &auth, &money)
}

/// A running shard: its home, journal and disk.
struct SimShard {
    seed: u64,
    home: RefCell<Home>,
    journal: Rc<Journal>,
    disk: SimDisk,
}

impl SimShard {
    /// Executes and answers once what the command observed is durable, as `Shard::invoke_on`.
    /// Checks that the answer is not released before the frame is on the simulated disk.
    async fn invoke(&self, command: UserCommand) -> Option<UserReply> {
        let reply = self.home.borrow_mut().execute(command);
        let seq = self.journal.written();
        self.journal.durable(seq).await.ok()?;
        assert!(
            self.disk.durable_through(seq),
            "seed {}: answered before frame {seq} was durable (replay: SHARDPAY_SIM_SEED={})",
            self.seed,
            self.seed
        );
        Some(reply)
    }
}

/// The users: four per shard, with ids in their usernames' slots.
fn users() -> Vec<(UserId, String)> {
    let mut users = Vec::new();
    let mut per_shard = [0; SHARDS];
    let mut n = 0;
    while per_shard.iter().any(|&count| count < 4) {
        let name = format!("user{n}");
        n += 1;
        let slot = Slot::of_username(&name);
        let shard = slot.shard(SHARDS);
        if per_shard[shard] < 4 {
            per_shard[shard] += 1;
            users.push((UserId::new(slot, [n as u8; 10]), name));
        }
    }
    users
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

/// What the clients were told succeeded.
#[derive(Default)]
struct Acknowledged {
    deposits: Vec<(String, UserId, u64)>,
    payments: Vec<(Payment, String, [u8; 32])>,
}

/// One seed: run the workload until the crash, recover both shards from two crash images, and
/// check the invariants. Returns a description of the first violation.
async fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let crash_at = 5 + rng.below(400);
    let snapshot_bytes = if rng.below(2) == 0 { 2048 } else { u64::MAX };
    let users = users();
    let acked = Rc::new(RefCell::new(Acknowledged::default()));
    let shards: Vec<Rc<SimShard>> = (0..SHARDS)
        .map(|shard| {
            let journal = Journal::new(Mode::Fsync, 0);
            let disk = SimDisk::new(crash_at + shard as u64 * rng.below(40), seed ^ shard as u64);
            Rc::new(SimShard {
                seed,
                home: RefCell::new(new_home(shard).with_log(Box::new(JournalLog(journal.clone())))),
                journal,
                disk,
            })
        })
        .collect();
    let home_of = |user: &UserId| user.slot().shard(SHARDS);

    let mut writers = Vec::new();
    {
        for shard in &shards {
            let this = Rc::downgrade(shard);
            // As the real shard: the state is taken at once, its file written while logging
            // goes on.
            let source = Box::new(move || {
                let shard = this.upgrade().expect("the shard outlives its writer");
                let seq = shard.journal.written();
                let file = snapshot::encode(seq, &shard.home.borrow().encode_state());
                let disk = shard.disk.clone();
                Capture {
                    seq,
                    written: Box::pin(async move { disk.write_temporary(&snapshot_name(seq), file).await }),
                }
            });
            let writer = Writer::new(
                shard.disk.clone(),
                shard.journal.clone(),
                WriterConfig {
                    segment_bytes: 8192,
                    snapshot_bytes,
                },
                Files {
                    segments: Vec::new(),
                    snapshots: Vec::new(),
                },
                source,
            );
            writers.push(glommio::spawn_local(async move {
                writer.run().await;
            }));
        }
        // Sign up and fund everyone.
        for (i, (id, name)) in users.iter().enumerate() {
            let shard = &shards[home_of(id)];
            let created = shard
                .invoke(UserCommand::CreateUser {
                    id: id.clone(),
                    username: name.clone(),
                    password_hash: "x".into(),
                    now_ms: 1,
                })
                .await;
            if created.is_none() {
                break;
            }
            let deposit = format!("dep_{seed}_{i}");
            let done = shard
                .invoke(UserCommand::Deposit {
                    id: deposit.clone(),
                    user: id.clone(),
                    amount: 1000,
                    currency: usd(),
                })
                .await;
            match done {
                Some(UserReply::Done) => acked.borrow_mut().deposits.push((deposit, id.clone(), 1000)),
                _ => break,
            }
        }
        // Four clients paying each other until the disks crash.
        let mut clients = Vec::new();
        for client in 0..4u64 {
            let shards = shards.clone();
            let users = users.clone();
            let acked = acked.clone();
            let mut rng = Rng::new(seed ^ ((client + 1) * 7919));
            clients.push(glommio::spawn_local(async move {
                for n in 0..40 {
                    let from = &users[rng.below(users.len() as u64) as usize].0;
                    let mut to = &users[rng.below(users.len() as u64) as usize].0;
                    if to == from {
                        to = &users[(users.iter().position(|u| &u.0 == from).unwrap() + 1) % users.len()].0;
                    }
                    let payer = &shards[from.slot().shard(SHARDS)];
                    let payee = &shards[to.slot().shard(SHARDS)];
                    let key = format!("key-{client}-{n}");
                    let scope = Scope::User(from.clone());
                    let began = payer
                        .invoke(UserCommand::IdempotencyBegin {
                            scope: scope.clone(),
                            key: key.clone(),
                            fingerprint: [n as u8; 32],
                            now_ms: 2,
                        })
                        .await;
                    match began {
                        Some(UserReply::Idempotency(Begin::Proceed)) => {}
                        _ => return,
                    }
                    let payment = Payment {
                        id: format!("pay_{client}_{n}"),
                        from: from.clone(),
                        to: to.clone(),
                        amount: 1 + rng.below(30),
                        currency: usd(),
                        description: None,
                        amount_refunded: 0,
                        created_at_ms: 2,
                    };
                    let answer = payment.id.clone().into_bytes();
                    let paid = payer
                        .invoke(UserCommand::Pay {
                            payment: payment.clone(),
                            key: key.clone(),
                            answer,
                            now_ms: 2,
                        })
                        .await;
                    match paid {
                        Some(UserReply::Done) => {}
                        Some(UserReply::Transfer(transfer)) => {
                            let id = transfer.id().to_string();
                            match payee.invoke(UserCommand::Receive(transfer)).await {
                                Some(UserReply::Done) => {}
                                _ => return,
                            }
                            // As the server: the answer does not wait for the settle's write.
                            let settled = payer
                                .home
                                .borrow_mut()
                                .execute(UserCommand::Settle { transfer: id });
                            assert!(matches!(settled, UserReply::Done), "{settled:?}");
                        }
                        Some(UserReply::Refused(_)) => continue,
                        _ => return,
                    }
                    acked.borrow_mut().payments.push((payment, key, [n as u8; 32]));
                }
            }));
        }
        for client in clients {
            client.await;
        }
    }
    // Writers still waiting for a batch are cancelled.
    drop(writers);

    // Recover each shard from a crash image, twice: losing every unsynced write, and a random mix.
    for lose_all in [true, false] {
        let mut image_rng = Rng::new(seed.rotate_left(17) ^ u64::from(lose_all));
        let dir = scratch(seed, lose_all);
        let mut homes = Vec::new();
        for (shard, sim) in shards.iter().enumerate() {
            let shard_dir = dir.join(format!("shard-{shard}"));
            std::fs::create_dir_all(&shard_dir).unwrap();
            for (name, bytes) in sim.disk.image(&mut image_rng, lose_all) {
                std::fs::write(shard_dir.join(name), bytes).unwrap();
            }
            let mut home = new_home(shard);
            recovery::recover(&shard_dir, false, &mut home)
                .map_err(|error| format!("shard {shard} does not recover (lose_all {lose_all}): {error}"))?;
            homes.push(home);
        }
        let _ = std::fs::remove_dir_all(&dir);
        check(&mut homes, &acked.borrow()).map_err(|error| format!("lose_all {lose_all}: {error}"))?;
    }
    Ok(())
}

/// Resumes in-flight credits between the recovered homes, then checks every invariant.
fn check(homes: &mut [Home], acked: &Acknowledged) -> Result<(), String> {
    // What the resend loop does after a restart.
    for sender in 0..homes.len() {
        let UserReply::Transfers(due) = homes[sender].execute(UserCommand::OutboxDue {
            now_ms: u64::MAX,
            older_than_ms: 0,
        }) else {
            return Err("no outbox answer".into());
        };
        for transfer in due {
            let id = transfer.id().to_string();
            let recipient = transfer.recipient().slot().shard(SHARDS);
            match homes[recipient].execute(UserCommand::Receive(transfer)) {
                UserReply::Done => {}
                other => return Err(format!("a resent credit was refused: {other:?}")),
            }
            homes[sender].execute(UserCommand::Settle { transfer: id });
        }
    }
    for (payment, key, fingerprint) in &acked.payments {
        for (side, user) in [("payer", &payment.from), ("payee", &payment.to)] {
            let home = &homes[user.slot().shard(SHARDS)];
            if home.ledger().payment(&payment.id, user).is_none() {
                return Err(format!(
                    "acknowledged payment {} is lost on the {side}'s shard",
                    payment.id
                ));
            }
        }
        let payer = &mut homes[payment.from.slot().shard(SHARDS)];
        match payer.execute(UserCommand::IdempotencyBegin {
            scope: Scope::User(payment.from.clone()),
            key: key.clone(),
            fingerprint: *fingerprint,
            now_ms: 3,
        }) {
            // The same request again: the stored answer, byte for byte.
            UserReply::Idempotency(Begin::Replay { status: 201, body }) if body == payment.id.as_bytes() => {}
            other => {
                return Err(format!(
                    "key {key} of acknowledged {} answers {other:?}",
                    payment.id
                ))
            }
        }
    }
    let deposited: u128 = homes.iter().map(|h| h.ledger().deposited(usd())).sum();
    let total: u128 = homes.iter().map(|h| h.ledger().total(usd())).sum();
    let acked_deposits: u128 = acked.deposits.iter().map(|d| u128::from(d.2)).sum();
    if deposited < acked_deposits {
        return Err(format!("deposits {deposited} < acknowledged {acked_deposits}"));
    }
    if total != deposited {
        return Err(format!(
            "money is not conserved: balances {total} != deposits {deposited}"
        ));
    }
    for (shard, home) in homes.iter().enumerate() {
        if !home.ledger().conserved() {
            return Err(format!("shard {shard}'s books do not balance"));
        }
    }
    Ok(())
}

fn scratch(seed: u64, lose_all: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardpay-sim-{}-{seed}-{lose_all}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `seeds` (or only `SHARDPAY_SIM_SEED` when set) on one executor.
fn simulate(seeds: std::ops::RangeInclusive<u64>) {
    let seeds: Vec<u64> = match std::env::var("SHARDPAY_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("SHARDPAY_SIM_SEED is a number")],
        Err(_) => seeds.collect(),
    };
    let outcome = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(65536)
        .spawn(move || async move {
            for seed in seeds {
                if let Err(error) = run_seed(seed).await {
                    return Err(format!("seed {seed}: {error} (replay: SHARDPAY_SIM_SEED={seed})"));
                }
            }
            Ok(())
        })
        .unwrap()
        .join()
        .unwrap();
    if let Err(error) = outcome {
        panic!("{error}");
    }
}

// 2000 seeds in two halves, so they run in parallel.
#[test]
fn crash_simulation_seeds_1_to_1000() {
    simulate(1..=1000);
}

#[test]
fn crash_simulation_seeds_1001_to_2000() {
    simulate(1001..=2000);
}
