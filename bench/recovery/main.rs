//! recovery-data: writes a shardpay data directory holding many users and payments, exactly as
//! the server would have written it, so that `scripts/bench-recovery.sh` can time a start-up
//! (recovery) against it.
//!
//! It drives the real per-shard state machines ([`Home`]) with the commands the API sends —
//! signup, an admin deposit per user, payments between random users (cross-shard ones as the
//! server runs them: `Pay` on the payer's home, `Receive` on the payee's, `Settle` on the
//! payer's) — and gives each `Home` a [`Log`] that lays every append out as one frame
//! (`storage::frame`), in preallocated segment files of the default `storage.segment_bytes`,
//! under the directory layout of `storage::layout`. Snapshots are the state's own encoding
//! (`Home::encode_state`) in a `storage::snapshot` file; which ones are written:
//! - by default none: every frame stays in the log (the longest recovery);
//! - `--snapshot`: one after all commands, and no log;
//! - `--snapshot-then-log P`: one after the first P payments, and the frames after it as log;
//! - `--writer-snapshots`: whenever the server's writer would take one (every default
//!   `storage.snapshot_bytes` of log), keeping the newest and the log after it.
//!
//! It never computes argon2 (every user gets the same PHC string, of the real length), never
//! runs a server, and refuses a data directory that is not empty.
//!
//! Usage:
//!   cargo run --release --example recovery-data -- --data-dir DIR --shards N \
//!       --users 1000000 --payments 5000000 \
//!       [--snapshot | --snapshot-then-log P | --writer-snapshots] [--seed S]

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use serde::Serialize;
use sha2::{Digest, Sha256};
use shardpay::api::json::rfc3339;
use shardpay::api::money::deposit_id;
use shardpay::config::{AuthConfig, MoneyConfig, StorageConfig};
use shardpay::home::{Home, HomeError, UserCommand, UserReply};
use shardpay::payments::idempotency::{Begin, Scope};
use shardpay::payments::ledger::{Currency, Payment};
use shardpay::slots::{Slot, UserId};
use shardpay::storage::disk::{segment_name, snapshot_name, sync_dir, write_atomic_std, BLOCK};
use shardpay::storage::layout::Layout;
use shardpay::storage::{frame, snapshot, Log, Record};
use shardpay_bench::rng::Rng;

/// One argon2id PHC string for every user, with the server's parameters and the real lengths
/// (16-byte salt, 32-byte hash): the bytes a real signup stores, without the 60 ms per user.
const PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2hhcmRwYXlyZWNvdmVyeQ$Vb2xq3bA7dY0nS1mFq0qJk8p7oG6v8Z7m3cE5uQvHkA";
/// Every deposit, in minor units: enough that no payment is refused for funds.
const DEPOSIT_AMOUNT: u64 = 100_000_000;
/// Payments are 1 to this many minor units.
const PAYMENT_AMOUNT_MAX: u64 = 10_000;
/// Largest shard count the server accepts (`SHARD_COUNT_LIMIT` in src/config.rs).
const SHARDS_MAX: usize = 1024;
/// Draws of a fresh id before giving up (the API's `ID_DRAWS_MAX`).
const ID_DRAWS_MAX: usize = 8;
/// Bytes of the write buffer in front of each segment file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Progress lines while generating.
const PROGRESS_STEPS: u64 = 10;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "Writes a shardpay data directory of many users and payments, for timing recovery")]
struct Args {
    /// The data directory to create (must not exist, or be empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// Shard count the data is laid out for (start the server with the same --shards).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Users to sign up (each gets one admin deposit).
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Payments between random users.
    #[arg(long, default_value_t = 5_000_000)]
    payments: u64,
    /// After all commands, write each shard's state as a snapshot and keep no log.
    #[arg(long, conflicts_with_all = ["snapshot_then_log", "writer_snapshots"])]
    snapshot: bool,
    /// Snapshot after the first P payments and keep the frames after it as log (0: after the
    /// signups and deposits).
    #[arg(long, value_name = "P", conflicts_with = "writer_snapshots")]
    snapshot_then_log: Option<u64>,
    /// Snapshot each shard whenever its writer would (every default `storage.snapshot_bytes`
    /// of log), keeping the newest snapshot and the log after it: what a server that ran
    /// these commands leaves.
    #[arg(long)]
    writer_snapshots: bool,
    /// With --writer-snapshots: log bytes between snapshots instead of the default
    /// `storage.snapshot_bytes` (small values test the mechanism on small data).
    #[arg(long, requires = "writer_snapshots", value_name = "BYTES")]
    snapshot_bytes: Option<u64>,
    /// Seed of every random choice and id (the data depends only on it and the other options,
    /// apart from the times).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Unix milliseconds of the last payment (default: now). Earlier commands are 1 ms apart.
    #[arg(long)]
    end_ms: Option<u64>,
}

/// The open segment of a shard.
struct Segment {
    /// The file, written sequentially from its start.
    file: BufWriter<File>,
    /// Sequence number of its first frame (its name).
    first: u64,
    /// Bytes of frames written to it.
    len: u64,
}

/// What was written for one shard.
#[derive(Debug, Default, Clone, Copy)]
struct ShardStats {
    /// Frames appended over the shard's whole history (its last sequence number).
    frames: u64,
    /// Frames in the log files (after the snapshot, if any).
    log_frames: u64,
    /// Bytes of frames in the log files.
    log_bytes: u64,
    /// Segment files.
    segments: u64,
    /// Snapshots taken (only the newest is kept).
    snapshots: u64,
    /// Sequence number of the snapshot kept (0: none).
    snapshot_seq: u64,
    /// Size of the snapshot file.
    snapshot_bytes: u64,
}

/// One shard's directory as its writer would leave it: frames in segment files, and the newest
/// snapshot, which covers every frame before the segments.
struct ShardFiles {
    /// The shard's directory (`gen-G/shard-NNN`).
    dir: PathBuf,
    /// `storage.segment_bytes`: a segment's preallocated size, and where it is closed.
    segment_bytes: u64,
    /// Take a snapshot once this many bytes were logged since the last one, as the writer does
    /// with `storage.snapshot_bytes` (`None`: only when told).
    snapshot_every_bytes: Option<u64>,
    /// Bytes of frames logged since the last snapshot.
    since_snapshot_bytes: u64,
    /// Whether frames go to disk; before a snapshot that will cover them, they are only counted.
    writing: bool,
    /// The segment frames are appended to.
    segment: Option<Segment>,
    /// First sequence numbers of the closed segments.
    closed: Vec<u64>,
    /// The newest snapshot (sequence number, file), written at the end: only it is kept.
    snapshot: Option<(u64, Vec<u8>)>,
    /// The frame being written (reused).
    encoded: Vec<u8>,
    /// What was written so far.
    stats: ShardStats,
    /// The first write error; nothing is written after it.
    failed: Option<io::Error>,
}

impl ShardFiles {
    fn new(dir: PathBuf, segment_bytes: u64, snapshot_every_bytes: Option<u64>, writing: bool) -> ShardFiles {
        ShardFiles {
            dir,
            segment_bytes,
            snapshot_every_bytes,
            since_snapshot_bytes: 0,
            writing,
            segment: None,
            closed: Vec::new(),
            snapshot: None,
            encoded: Vec::new(),
            stats: ShardStats::default(),
            failed: None,
        }
    }

    /// One append: the next frame, alone in its batch (batch = seq), as the writer lays it out.
    fn append(&mut self, records: &[Record]) {
        self.stats.frames += 1;
        let seq = self.stats.frames;
        if !self.writing || self.failed.is_some() {
            return;
        }
        self.encoded.clear();
        if frame::encode(&mut self.encoded, seq, seq, records).is_none() {
            self.failed = Some(io::Error::other(format!(
                "frame {seq} is larger than a frame may be"
            )));
            return;
        }
        if let Err(error) = self.write_frame(seq) {
            self.failed = Some(error);
        }
    }

    fn write_frame(&mut self, seq: u64) -> io::Result<()> {
        let bytes = self.encoded.len() as u64;
        // The writer's rule: a segment is closed when the next batch would pass segment_bytes.
        let full = self
            .segment
            .as_ref()
            .is_some_and(|segment| segment.len > 0 && segment.len + bytes > self.segment_bytes);
        if full {
            self.close_segment()?;
        }
        if self.segment.is_none() {
            let size = self.segment_bytes.max(bytes).next_multiple_of(BLOCK as u64);
            self.segment = Some(Segment {
                file: BufWriter::with_capacity(
                    WRITE_BUFFER_BYTES,
                    create_preallocated(&self.dir, seq, size)?,
                ),
                first: seq,
                len: 0,
            });
        }
        let segment = self.segment.as_mut().expect("a segment is open");
        segment.file.write_all(&self.encoded)?;
        segment.len += bytes;
        self.stats.log_frames += 1;
        self.stats.log_bytes += bytes;
        self.since_snapshot_bytes += bytes;
        Ok(())
    }

    /// Whether the writer would take a snapshot now.
    fn snapshot_due(&self) -> bool {
        self.snapshot_every_bytes
            .is_some_and(|every| self.since_snapshot_bytes >= every)
    }

    fn close_segment(&mut self) -> io::Result<()> {
        if let Some(segment) = self.segment.take() {
            segment.file.into_inner().map_err(|error| error.into_error())?;
            self.closed.push(segment.first);
        }
        Ok(())
    }

    /// Takes the state `body` as the snapshot of the frames so far, as the writer does: the
    /// segment is closed, the segments it covers (all) and the older snapshot go, later frames
    /// are logged in a new segment.
    fn take_snapshot(&mut self, body: &[u8]) -> io::Result<()> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        self.close_segment()?;
        for first in self.closed.drain(..) {
            std::fs::remove_file(self.dir.join(segment_name(first)))?;
        }
        let seq = self.stats.frames;
        self.snapshot = Some((seq, snapshot::encode(seq, body)));
        self.stats.snapshots += 1;
        self.stats.log_frames = 0;
        self.stats.log_bytes = 0;
        self.since_snapshot_bytes = 0;
        self.writing = true;
        Ok(())
    }

    /// Writes the snapshot and makes everything durable; the first error of the run, if any.
    fn finish(&mut self) -> io::Result<ShardStats> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        self.close_segment()?;
        for first in &self.closed {
            File::options()
                .write(true)
                .open(self.dir.join(segment_name(*first)))?
                .sync_all()?;
        }
        self.stats.segments = self.closed.len() as u64;
        if let Some((seq, file)) = self.snapshot.take() {
            write_atomic_std(&self.dir, &snapshot_name(seq), &file)?;
            self.stats.snapshot_seq = seq;
            self.stats.snapshot_bytes = file.len() as u64;
        }
        sync_dir(&self.dir)?;
        Ok(self.stats)
    }
}

/// Creates segment `wal-<first_seq>.log` with `size` bytes allocated (reading as zeroes), as
/// the server's `DmaDisk::create` does with fallocate.
fn create_preallocated(dir: &Path, first_seq: u64, size: u64) -> io::Result<File> {
    let file = File::create(dir.join(segment_name(first_seq)))?;
    let length = libc::off_t::try_from(size).map_err(io::Error::other)?;
    // SAFETY: fallocate on a descriptor we own, for a range of a file opened for writing.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(error);
        }
        // A file system without fallocate: the same length, as a sparse file.
        file.set_len(size)?;
    }
    Ok(file)
}

/// A shard's log as the `Home` sees it: every append goes to the shard's files.
struct FileLog(Rc<RefCell<ShardFiles>>);

impl Log for FileLog {
    fn append(&mut self, records: &[Record]) {
        self.0.borrow_mut().append(records);
    }
}

/// The 201 body of `POST /v1/payments`: the contract's payment object, fields in its order
/// (as `api::payments::payment_value` encodes it).
#[derive(Serialize)]
struct PaymentBody<'a> {
    id: &'a str,
    from: &'a str,
    to: &'a str,
    amount: u64,
    currency: &'a str,
    description: Option<&'a str>,
    status: &'static str,
    amount_refunded: u64,
    created_at: String,
}

/// The body of `POST /v1/payments`, for the idempotency key's fingerprint.
#[derive(Serialize)]
struct PayRequest<'a> {
    to: &'a str,
    amount: u64,
    currency: &'a str,
}

/// All shards' state machines and files, and the clock and random draws they are driven with.
struct Generator {
    /// Shard count.
    shards: usize,
    /// Each shard's state machines.
    homes: Vec<Home>,
    /// Each shard's files (shared with its `Home`'s log).
    files: Vec<Rc<RefCell<ShardFiles>>>,
    /// Ids, payment amounts, keys.
    rng: Rng,
    /// The clock the commands carry, Unix milliseconds.
    now_ms: u64,
}

impl Generator {
    fn home_of(&self, user: &UserId) -> usize {
        user.slot().shard(self.shards)
    }

    fn random_bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0u8; N];
        for chunk in bytes.chunks_mut(8) {
            let draw = self.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&draw[..chunk.len()]);
        }
        bytes
    }

    /// An Idempotency-Key as clients send them: a random UUID.
    fn idempotency_key(&mut self) -> String {
        let hex = hex(&self.random_bytes::<16>());
        format!(
            "{}-{}-4{}-8{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        )
    }

    /// `POST /v1/users`, then `POST /v1/deposits` for the new user (the admin key's own
    /// idempotency record is not kept: deposits would fill the key store).
    fn sign_up(&mut self, number: u64) -> anyhow::Result<UserId> {
        let username = format!("user_{number:08}");
        let slot = Slot::of_username(&username);
        let home = slot.shard(self.shards);
        let mut created = None;
        for _ in 0..ID_DRAWS_MAX {
            let id = UserId::new(slot, self.random_bytes());
            let reply = self.execute(
                home,
                UserCommand::CreateUser {
                    id: id.clone(),
                    username: username.clone(),
                    password_hash: PASSWORD_HASH.to_string(),
                    now_ms: self.now_ms,
                },
            )?;
            match reply {
                UserReply::User(_) => {
                    created = Some(id);
                    break;
                }
                UserReply::Refused(HomeError::IdCollision) => continue,
                other => bail!("signup of {username} on shard {home}: {other:?}"),
            }
        }
        let user = created.with_context(|| format!("no free user id for {username}"))?;
        self.now_ms += 1;
        let key = self.idempotency_key();
        let reply = self.execute(
            home,
            UserCommand::Deposit {
                id: deposit_id(&key),
                user: user.clone(),
                amount: DEPOSIT_AMOUNT,
                currency: usd(),
            },
        )?;
        ensure!(matches!(reply, UserReply::Done), "deposit to {user}: {reply:?}");
        self.now_ms += 1;
        Ok(user)
    }

    /// `POST /v1/payments` from `payer` to `payee`; with `keyed`, its idempotency key is claimed
    /// first (and so stores the 201). Returns whether it crossed shards.
    fn pay(&mut self, payer: &UserId, payee: &UserId, keyed: bool) -> anyhow::Result<bool> {
        let amount = 1 + self.rng.below(PAYMENT_AMOUNT_MAX);
        let currency = usd();
        let key = self.idempotency_key();
        let payer_home = self.home_of(payer);
        let payee_home = self.home_of(payee);
        if keyed {
            let request = PayRequest {
                to: payee.as_str(),
                amount,
                currency: currency.as_str(),
            };
            let body = serde_json::to_vec(&request).context("a request encodes")?;
            let reply = self.execute(
                payer_home,
                UserCommand::IdempotencyBegin {
                    scope: Scope::User(payer.clone()),
                    key: key.clone(),
                    fingerprint: fingerprint("POST /v1/payments", &body),
                    now_ms: self.now_ms,
                },
            )?;
            ensure!(
                matches!(reply, UserReply::Idempotency(Begin::Proceed)),
                "claiming key {key} of {payer}: {reply:?}"
            );
        }
        for _ in 0..ID_DRAWS_MAX {
            let payment = Payment {
                id: format!("pay_{}", hex(&self.random_bytes::<12>())),
                from: payer.clone(),
                to: payee.clone(),
                amount,
                currency,
                description: None,
                amount_refunded: 0,
                created_at_ms: self.now_ms,
            };
            let answer = serde_json::to_vec(&PaymentBody {
                id: &payment.id,
                from: payment.from.as_str(),
                to: payment.to.as_str(),
                amount,
                currency: currency.as_str(),
                description: None,
                status: "succeeded",
                amount_refunded: 0,
                created_at: rfc3339(self.now_ms),
            })
            .context("a payment encodes")?;
            let reply = self.execute(
                payer_home,
                UserCommand::Pay {
                    payment,
                    key: key.clone(),
                    answer,
                    now_ms: self.now_ms,
                },
            )?;
            let transfer = match reply {
                UserReply::Done => {
                    self.now_ms += 1;
                    return Ok(false);
                }
                UserReply::Transfer(transfer) => transfer,
                UserReply::Refused(HomeError::IdCollision) => continue,
                other => bail!("payment from {payer} to {payee}: {other:?}"),
            };
            let id = transfer.id().to_string();
            let reply = self.execute(payee_home, UserCommand::Receive(transfer))?;
            ensure!(
                matches!(reply, UserReply::Done),
                "credit {id} on shard {payee_home}: {reply:?}"
            );
            let reply = self.execute(payer_home, UserCommand::Settle { transfer: id.clone() })?;
            ensure!(
                matches!(reply, UserReply::Done),
                "settling {id} on shard {payer_home}: {reply:?}"
            );
            self.now_ms += 1;
            return Ok(true);
        }
        bail!("no free payment id")
    }

    /// Executes `command` on `shard`; then takes the shard's snapshot if its writer would.
    fn execute(&mut self, shard: usize, command: UserCommand) -> anyhow::Result<UserReply> {
        let reply = self.homes[shard].execute(command);
        if self.files[shard].borrow().snapshot_due() {
            self.snapshot(shard)?;
        }
        Ok(reply)
    }

    /// The shard's state as a snapshot; the frames after it are logged.
    fn snapshot(&mut self, shard: usize) -> anyhow::Result<()> {
        let body = self.homes[shard].encode_state();
        let mut files = self.files[shard].borrow_mut();
        files
            .take_snapshot(&body)
            .with_context(|| format!("snapshot of shard {shard} in {}", files.dir.display()))
    }

    /// Every shard's snapshot.
    fn snapshot_all(&mut self) -> anyhow::Result<()> {
        for shard in 0..self.shards {
            self.snapshot(shard)?;
        }
        Ok(())
    }

    /// Stops at the first write error of any shard.
    fn check_files(&self) -> anyhow::Result<()> {
        for files in &self.files {
            let mut files = files.borrow_mut();
            if let Some(error) = files.failed.take() {
                return Err(error).with_context(|| format!("writing the log in {}", files.dir.display()));
            }
        }
        Ok(())
    }
}

fn usd() -> Currency {
    Currency::parse("USD").expect("USD is a currency")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What an idempotency key remembers of its request (as `api::money::fingerprint`).
fn fingerprint(request_line: &str, body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(request_line.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    hasher.finalize().into()
}

/// Payer and payee of every payment, by user index, from their own stream of draws (so that
/// the keyed payments can be counted before any is made).
struct Pairs {
    rng: Rng,
    users: u64,
}

impl Iterator for Pairs {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let payer = self.rng.below(self.users);
        // Any other user.
        let mut payee = self.rng.below(self.users - 1);
        if payee >= payer {
            payee += 1;
        }
        Some((payer as usize, payee as usize))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=SHARDS_MAX).contains(&args.shards),
        "--shards must be from 1 to {SHARDS_MAX}"
    );
    ensure!(
        args.users >= 2,
        "--users must be at least 2 (a payment needs two users)"
    );
    ensure!(
        args.users < 100_000_000,
        "--users must be below 100000000 (usernames are user_ + 8 digits)"
    );
    let snapshot_at = match (args.snapshot, args.snapshot_then_log) {
        (true, _) => Some(args.payments),
        (false, Some(p)) => {
            ensure!(
                p <= args.payments,
                "--snapshot-then-log {p} is more than --payments"
            );
            Some(p)
        }
        (false, None) => None,
    };
    let mode = match (args.snapshot, snapshot_at, args.writer_snapshots) {
        (true, _, _) => "snapshot".to_string(),
        (false, Some(p), _) => format!("snapshot-then-log {p}"),
        (false, None, true) => "writer-snapshots".to_string(),
        (false, None, false) => "log".to_string(),
    };
    ensure!(args.snapshot_bytes != Some(0), "--snapshot-bytes must be above 0");
    if args.data_dir.exists() {
        let mut entries = std::fs::read_dir(&args.data_dir)
            .with_context(|| format!("reading {}", args.data_dir.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} is not empty: give a new or empty directory",
            args.data_dir.display()
        );
    }
    let started = Instant::now();
    let layout = Layout::open(&args.data_dir, args.shards, |_, _| {
        unreachable!("the directory was empty")
    })
    .context("creating the data directory")?;
    let storage = StorageConfig::default();
    let money = MoneyConfig::default();
    let auth = AuthConfig::default();
    let end_ms = args.end_ms.unwrap_or_else(now_ms);
    // Every user command and every payment takes 1 ms.
    let span_ms = 2 * args.users + args.payments;
    ensure!(end_ms > span_ms, "--end-ms is too early for this many commands");

    // Which payments claim a key: the last `idempotency_keys_max` of each payer's shard, so
    // that the key store holds what a full store would and never refuses a key.
    let pairs = || Pairs {
        rng: Rng::new(args.seed ^ 0x5061_6972_7300_0000),
        users: args.users,
    };
    let mut shard_of_user = Vec::with_capacity(args.users as usize);
    for number in 0..args.users {
        shard_of_user.push(Slot::of_username(&format!("user_{number:08}")).shard(args.shards) as u16);
    }
    let mut per_shard = vec![0u64; args.shards];
    for (payer, _) in pairs().take(args.payments as usize) {
        per_shard[usize::from(shard_of_user[payer])] += 1;
    }
    let keys_max = money.idempotency_keys_max as u64;
    let unkeyed: Vec<u64> = per_shard.iter().map(|&n| n.saturating_sub(keys_max)).collect();
    drop(shard_of_user);

    let mut generator = Generator {
        shards: args.shards,
        homes: Vec::with_capacity(args.shards),
        files: Vec::with_capacity(args.shards),
        rng: Rng::new(args.seed),
        now_ms: end_ms - span_ms,
    };
    for shard in 0..args.shards {
        let files = Rc::new(RefCell::new(ShardFiles::new(
            layout.shard_dir(shard),
            storage.segment_bytes,
            args.writer_snapshots
                .then_some(args.snapshot_bytes.unwrap_or(storage.snapshot_bytes)),
            snapshot_at.is_none(),
        )));
        let home = Home::new(shard, args.shards, &auth, &money).with_log(Box::new(FileLog(files.clone())));
        generator.homes.push(home);
        generator.files.push(files);
    }

    eprintln!(
        "recovery-data: {} users, {} payments, {} shard(s), {mode}, seed {}, into {}",
        args.users,
        args.payments,
        args.shards,
        args.seed,
        args.data_dir.display()
    );
    let mut users = Vec::with_capacity(args.users as usize);
    let mut users_per_shard = vec![0u64; args.shards];
    for number in 0..args.users {
        let user = generator.sign_up(number)?;
        users_per_shard[generator.home_of(&user)] += 1;
        users.push(user);
    }
    generator.check_files()?;
    eprintln!(
        "recovery-data: {} users signed up and funded ({:.1} s)",
        args.users,
        started.elapsed().as_secs_f64()
    );

    let mut seen = vec![0u64; args.shards];
    let mut cross_shard = 0u64;
    let step = (args.payments / PROGRESS_STEPS).max(1);
    for (done, (payer, payee)) in pairs().take(args.payments as usize).enumerate() {
        let done = done as u64;
        if snapshot_at == Some(done) {
            generator.snapshot_all()?;
        }
        let (payer, payee) = (&users[payer], &users[payee]);
        let shard = generator.home_of(payer);
        let keyed = seen[shard] >= unkeyed[shard];
        seen[shard] += 1;
        if generator.pay(payer, payee, keyed)? {
            cross_shard += 1;
        }
        if (done + 1) % step == 0 {
            generator.check_files()?;
            eprintln!(
                "recovery-data: {} payments ({:.1} s)",
                done + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if snapshot_at == Some(args.payments) {
        generator.snapshot_all()?;
    }

    let mut totals = ShardStats::default();
    for (shard, (home, files)) in generator.homes.iter().zip(&generator.files).enumerate() {
        ensure!(
            home.ledger().conserved(),
            "shard {shard}: the books do not balance"
        );
        let stats = files
            .borrow_mut()
            .finish()
            .with_context(|| format!("finishing shard {shard}"))?;
        println!(
            "shard={shard} users={} payer_payments={} keyed_payments={} frames={} snapshots={} \
             snapshot_seq={} log_frames={} segments={} log_bytes={} snapshot_bytes={}",
            users_per_shard[shard],
            per_shard[shard],
            per_shard[shard] - unkeyed[shard],
            stats.frames,
            stats.snapshots,
            stats.snapshot_seq,
            stats.log_frames,
            stats.segments,
            stats.log_bytes,
            stats.snapshot_bytes
        );
        totals.frames += stats.frames;
        totals.log_frames += stats.log_frames;
        totals.log_bytes += stats.log_bytes;
        totals.segments += stats.segments;
        totals.snapshot_bytes += stats.snapshot_bytes;
    }
    drop(layout);
    println!(
        "total mode={} shards={} users={} payments={} cross_shard_payments={} frames={} log_frames={} \
         segments={} log_bytes={} snapshot_bytes={} seed={} elapsed_s={:.1}",
        mode.replace(' ', "-"),
        args.shards,
        args.users,
        args.payments,
        cross_shard,
        totals.frames,
        totals.log_frames,
        totals.segments,
        totals.log_bytes,
        totals.snapshot_bytes,
        args.seed,
        started.elapsed().as_secs_f64()
    );
    // Everything is on disk. Freeing millions of allocations one by one would take longer than
    // a third of the generation; the process's end frees them at once.
    io::stdout().flush().context("writing the summary")?;
    std::process::exit(0)
}
