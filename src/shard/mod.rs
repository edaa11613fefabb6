//! Shards: one glommio executor per CPU, pinned, each owning its listeners, connections, counters
//! and (in later layers) its partition of users; and the mesh through which shards ask each other
//! for work ([`Shard::invoke_on`], as Seastar's `sharded<T>::invoke_on`).
//!
//! With `net`, this is the only module that uses glommio; the rest of the code sees [`Shard`],
//! [`spawn`] and [`sleep`]. Shard-local state is `Rc`/`Cell` and never crosses threads; what
//! crosses threads ([`Command`], [`Reply`]) owns its data. Nothing here knows about HTTP.

pub mod admission;
mod background;
pub mod disk;
mod forked;
pub mod mesh;
pub mod offload;

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::config::{parse_cpu_list, Config, ConfigError, Durability, SnapshotWriter, StorageBackend};
use crate::home::{Home, UserCommand, UserReply};
use crate::http::date;
use crate::metrics::{DbMetrics, ShardMetrics, Snapshot};
use crate::net::peer::{self, Hello, Outcome, PeerClient, PeerError, ServeSettings};
use crate::net::Connections;
use crate::net::Listener;
use crate::placement;
use crate::slots::Slot;
use crate::storage::journal::{Failed, Journal, JournalLog, Mode};
use crate::storage::layout::{Layout, LayoutError};
use crate::storage::recovery;
use crate::storage::scylla::bridge::Handle as DbHandle;
use crate::storage::scylla::rows::{self, RowLog, Stamps, Statements, Touched};
use crate::storage::writer::{Capture, Files, Writer, WriterConfig};
use crate::storage::Log;
use mesh::{Answer, Mesh, MeshError};

pub use crate::slots::{slot_range, SLOT_COUNT};

/// How often each shard refreshes its `Date`, expires connection deadlines and looks for a
/// shutdown request.
const TICK: Duration = Duration::from_millis(100);

/// Process-wide facts and flags, shared by all shards; written at start-up and shutdown only.
#[derive(Debug)]
pub struct Cluster {
    /// This node's name.
    pub node_id: String,
    /// Number of shards.
    pub shards: usize,
    /// CPU of each shard.
    pub cpus: Vec<usize>,
    /// This node's slots, its shards' parts of them, and the other nodes.
    pub placement: placement::Placement,
    ready: AtomicUsize,
    shutdown: Arc<AtomicBool>,
    /// The start-up responder (see `server`) must stop: a shard is about to listen.
    starting_stop: AtomicBool,
    /// The start-up responder has closed its listener (or never had one).
    starting_closed: AtomicBool,
}

impl Cluster {
    /// Asks every shard to drain and stop (from a signal handler's flag or a failed shard).
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// The flag signal handlers set.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Asks the start-up responder to close its listener (a shard is about to bind the address).
    pub fn stop_starting(&self) {
        self.starting_stop.store(true, Ordering::Release);
    }

    /// Whether the start-up responder was asked to close.
    pub fn starting_stop_requested(&self) -> bool {
        self.starting_stop.load(Ordering::Acquire)
    }

    /// A start-up responder is listening (until [`Cluster::mark_starting_closed`]).
    pub fn open_starting(&self) {
        self.starting_closed.store(false, Ordering::Release);
    }

    /// The start-up responder has closed its listener, or there is none.
    pub fn mark_starting_closed(&self) {
        self.starting_closed.store(true, Ordering::Release);
    }

    /// Whether the start-up responder is gone.
    pub fn starting_closed(&self) -> bool {
        self.starting_closed.load(Ordering::Acquire)
    }

    /// Whether shutdown was requested.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Whether every shard has started and is accepting.
    pub fn all_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) == self.shards
    }
}

/// What one shard tells the others about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Shard id.
    pub shard: usize,
    /// CPU it is pinned to.
    pub cpu: usize,
    /// First slot it owns.
    pub first_slot: u32,
    /// Last slot it owns.
    pub last_slot: u32,
    /// Its shard-aware port.
    pub port: u16,
}

/// A request from one shard to another.
#[derive(Debug)]
pub enum Command {
    /// Copy your counters.
    Snapshot,
    /// Describe yourself.
    Describe,
    /// A user-scoped command for a user whose home is the receiving shard.
    User(UserCommand),
    /// A user-scoped command whose reply need not wait for its own changes to be durable (they
    /// are redone after a crash); see [`Shard::invoke_on_home_unsynced`].
    Unsynced(UserCommand),
}

impl Command {
    /// A user-scoped command, [`Command::Unsynced`] if `unsynced`.
    fn user(unsynced: bool, command: UserCommand) -> Command {
        if unsynced {
            Command::Unsynced(command)
        } else {
            Command::User(command)
        }
    }
}

/// The answer to a [`Command`].
#[derive(Debug)]
pub enum Reply {
    /// Counters.
    Snapshot(Box<Snapshot>),
    /// Description.
    Describe(ShardInfo),
    /// The home shard's answer to a user-scoped command.
    User(UserReply),
    /// The command was executed but its changes could not be stored: nothing is acknowledged.
    StorageFailed,
}

/// One shard's state, owned by its executor thread.
pub struct Shard {
    /// Process-wide facts.
    pub cluster: Arc<Cluster>,
    /// Counters.
    pub metrics: Rc<ShardMetrics>,
    /// Open connections and the drain.
    pub connections: Rc<Connections>,
    /// Whether new API requests are served or refused (overload).
    pub admission: Rc<admission::Admission>,
    /// What this shard tells about itself.
    pub info: ShardInfo,
    /// The users whose slots this shard owns.
    home: RefCell<Home>,
    /// Where the home's changes go; answers wait for it.
    journal: Rc<Journal>,
    /// With the ScyllaDB store: how long an answer waits for the database before a 503.
    durable_limit: Option<Duration>,
    /// With the ScyllaDB store: frames waiting for the database beyond which commands are refused.
    backlog_max: Option<u64>,
    mesh: Mesh<Command, Reply>,
    /// A connection to each other node (indexed like `cluster.placement.peers()`).
    peers: Vec<PeerClient<UserReply>>,
}

impl Shard {
    /// This shard's id.
    pub fn id(&self) -> usize {
        self.info.shard
    }

    /// Runs `command` on `target`: directly when it is this shard, else over the mesh. The reply
    /// comes once every change it observed is durable (on either shard).
    pub async fn invoke_on(&self, target: usize, command: Command) -> Result<Reply, MeshError> {
        if target == self.id() {
            if self.backlogged(&command) {
                return Err(MeshError::Backlogged(target));
            }
            let unsynced = matches!(command, Command::Unsynced(_));
            let reply = self.execute(command);
            if unsynced {
                return Ok(reply);
            }
            let seq = self.journal.written();
            if self.journal.durable_seq() >= seq {
                return Ok(reply);
            }
            match self.durable(seq).await {
                Ok(()) => Ok(reply),
                Err(_) => Err(MeshError::StorageFailed(target)),
            }
        } else {
            match self.mesh.send_to(target, command).await? {
                Reply::StorageFailed => Err(MeshError::StorageFailed(target)),
                reply => Ok(reply),
            }
        }
    }

    /// Executes a command from another shard: the reply now when everything is durable, else
    /// once it is.
    fn serve_remote(&self, command: Command) -> Answer<Reply, impl Future<Output = Reply> + 'static> {
        if self.backlogged(&command) {
            return Answer::Now(Reply::StorageFailed);
        }
        let unsynced = matches!(command, Command::Unsynced(_));
        let reply = self.execute(command);
        if unsynced {
            return Answer::Now(reply);
        }
        let seq = self.journal.written();
        if self.journal.durable_seq() >= seq {
            return Answer::Now(reply);
        }
        let durable = self.durable(seq);
        Answer::Later(async move {
            match durable.await {
                Ok(()) => reply,
                Err(_) => Reply::StorageFailed,
            }
        })
    }

    /// Whether `command` must be refused unexecuted: with the ScyllaDB store, when
    /// `scylla.pending_frames_max` frames already wait for the database (it is unreachable or
    /// slower than the load), so that the backlog — and the batch that will carry it — stays
    /// bounded. Counters and descriptions are always served.
    fn backlogged(&self, command: &Command) -> bool {
        let refused = matches!(command, Command::User(_) | Command::Unsynced(_))
            && self
                .backlog_max
                .is_some_and(|max| self.journal.written() - self.journal.durable_seq() >= max);
        if refused {
            DbMetrics::bump(&self.metrics.db.backlog_refusals);
        }
        refused
    }

    /// Resolves once frame `seq` is durable; with the ScyllaDB store, fails after
    /// `durable_limit` (the database is unreachable: the request gets a 503, and the change is
    /// written when the database is back).
    fn durable(&self, seq: u64) -> impl Future<Output = Result<(), Failed>> + 'static {
        let durable = self.journal.durable(seq);
        let limit = self.durable_limit;
        let metrics = self.metrics.clone();
        async move {
            match limit {
                None => durable.await,
                Some(limit) => {
                    futures_lite::future::or(durable, async move {
                        sleep(limit).await;
                        DbMetrics::bump(&metrics.db.answer_timeouts);
                        Err(Failed(
                            "the database did not acknowledge the change in time".into(),
                        ))
                    })
                    .await
                }
            }
        }
    }

    /// The journal's counters: frames appended and batches written.
    pub fn journal_stats(&self) -> crate::storage::journal::Stats {
        self.journal.stats()
    }

    /// Runs a user-scoped command on the home shard of `slot`: on this node, or on the node that
    /// serves the slot.
    pub async fn invoke_on_home(&self, slot: Slot, command: UserCommand) -> Result<UserReply, MeshError> {
        self.invoke_on_slot(slot, false, command).await
    }

    /// As [`Shard::invoke_on_home`], but the reply does not wait for the command's own changes to
    /// be durable (it still comes after the command ran). Only for changes that are redone after
    /// a crash: settling a transfer, whose credit was durable on both shards before (an unsettled
    /// transfer is resent, deduplicated, and settled again). Saves a cross-shard payment one of
    /// its three log waits.
    pub async fn invoke_on_home_unsynced(
        &self,
        slot: Slot,
        command: UserCommand,
    ) -> Result<UserReply, MeshError> {
        self.invoke_on_slot(slot, true, command).await
    }

    async fn invoke_on_slot(
        &self,
        slot: Slot,
        unsynced: bool,
        command: UserCommand,
    ) -> Result<UserReply, MeshError> {
        match self.cluster.placement.home(slot) {
            placement::Home::Shard(home) => {
                match self.invoke_on(home, Command::user(unsynced, command)).await? {
                    Reply::User(reply) => Ok(reply),
                    _ => unreachable!("a user command is answered with a user reply"),
                }
            }
            placement::Home::Peer(peer) => {
                let Some(client) = self.peers.get(peer) else {
                    return Err(MeshError::Node(PeerError::Unreachable));
                };
                let (_, reply) = client
                    .call(slot.number(), unsynced, &command)
                    .await
                    .map_err(MeshError::Node)?;
                Ok(reply)
            }
        }
    }

    /// Runs a command another node sent for `slot`, which this node must serve.
    async fn serve_node(&self, slot: u32, unsynced: bool, command: UserCommand) -> Outcome<UserReply> {
        let served = &self.metrics.node_commands_served;
        served.set(served.get() + 1);
        let Some(home) = Slot::new(slot).and_then(|slot| self.cluster.placement.local_shard(slot)) else {
            return Outcome::Failed(PeerError::NotServed);
        };
        match self.invoke_on(home, Command::user(unsynced, command)).await {
            Ok(Reply::User(reply)) => Outcome::Reply { shard: home, reply },
            Ok(_) => Outcome::Failed(PeerError::ShardUnavailable),
            Err(MeshError::StorageFailed(_)) => Outcome::Failed(PeerError::StorageFailed),
            Err(MeshError::Backlogged(_)) => Outcome::Failed(PeerError::Backlogged),
            Err(MeshError::Timeout(_)) => Outcome::Failed(PeerError::Timeout),
            Err(_) => Outcome::Failed(PeerError::ShardUnavailable),
        }
    }

    /// The shard that owns `slot`: of this node, or of the node that serves it (once this shard
    /// has reached that node, which tells its shard count; before, this shard).
    pub fn home_of(&self, slot: Slot) -> usize {
        match self.cluster.placement.home(slot) {
            placement::Home::Shard(home) => home,
            placement::Home::Peer(peer) => {
                let (Some(client), Some(range)) =
                    (self.peers.get(peer), self.cluster.placement.peers().get(peer))
                else {
                    return self.id();
                };
                match client.shards() {
                    0 => self.id(),
                    shards => range.slots.part_of(slot.number(), shards),
                }
            }
        }
    }

    /// Runs a command on every shard, in shard order.
    pub async fn invoke_on_all(&self, command: impl Fn() -> Command) -> Result<Vec<Reply>, MeshError> {
        let mut replies = Vec::with_capacity(self.mesh.shards());
        for target in 0..self.mesh.shards() {
            replies.push(self.invoke_on(target, command()).await?);
        }
        Ok(replies)
    }

    /// Whether the process is ready for traffic: every shard started and none is draining.
    pub fn ready(&self) -> bool {
        self.cluster.all_ready() && !self.connections.draining()
    }

    /// Executes a command on this shard.
    fn execute(&self, command: Command) -> Reply {
        match command {
            Command::Snapshot => {
                let mut snapshot = self.metrics.snapshot(self.connections.open());
                snapshot.requests_shed = self.admission.refused();
                snapshot.queue_delay_seconds = self.admission.delay().as_secs_f64();
                snapshot.shed_share = self.admission.share();
                let log = self.journal.stats();
                snapshot.log_frames = log.frames;
                snapshot.log_batches = log.batches;
                snapshot.log_bytes = log.bytes;
                if self.durable_limit.is_some() {
                    let pending = self.journal.written() - self.journal.durable_seq();
                    snapshot.db = Some(self.metrics.db.snapshot(pending));
                }
                snapshot.nodes = (self.cluster.placement.peers().iter())
                    .zip(&self.peers)
                    .map(|(peer, client)| {
                        let (sent, failed) = client.counts();
                        (peer.slots.to_string(), sent, failed)
                    })
                    .collect();
                Reply::Snapshot(Box::new(snapshot))
            }
            Command::Describe => Reply::Describe(self.info.clone()),
            Command::User(command) | Command::Unsynced(command) => {
                Reply::User(self.home.borrow_mut().execute(command))
            }
        }
    }

    /// Counts this shard as started; `/readyz` turns 200 once every shard has.
    pub fn mark_ready(&self) {
        self.cluster.ready.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `future` in the background on the current shard.
pub fn spawn(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// Waits for `duration` on the current shard.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Why the shards could not run.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The configuration does not fit this machine.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An executor could not be created.
    #[error("cannot start shard {shard}: {message}")]
    Spawn {
        /// Shard id.
        shard: usize,
        /// The executor's error.
        message: String,
    },
    /// The data directory cannot be used.
    #[error("storage: {0}")]
    Storage(String),
    /// A shard failed while starting or running.
    #[error("shard {shard} failed: {message}")]
    Failed {
        /// Shard id.
        shard: usize,
        /// What went wrong.
        message: String,
    },
}

/// The CPUs this process may run on (its affinity mask, which honours `taskset`).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a zeroed cpu_set_t of the size we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let count = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..count).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// The CPU of each shard, from `server.shards` and `server.cpus`. More shards than CPUs are
/// placed round-robin (useful for tests; a production deployment uses one shard per CPU).
pub fn placement(config: &Config) -> Result<Vec<usize>, ConfigError> {
    let allowed = allowed_cpus();
    let listed = parse_cpu_list(&config.server.cpus).map_err(|message| ConfigError {
        key: "server.cpus".into(),
        message,
    })?;
    let cpus = if listed.is_empty() {
        allowed.clone()
    } else {
        listed
    };
    if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
        return Err(ConfigError {
            key: "server.cpus".into(),
            message: format!("CPU {cpu} is not available to this process (available: {allowed:?})"),
        });
    }
    let shards = if config.server.shards == 0 {
        cpus.len()
    } else {
        config.server.shards
    };
    let last_port = u32::from(config.server.shard_port_base) + shards as u32 - 1;
    if last_port > u32::from(u16::MAX) {
        return Err(ConfigError {
            key: "server.shard_port_base".into(),
            message: format!("{shards} shards need ports up to {last_port}"),
        });
    }
    Ok((0..shards).map(|shard| cpus[shard % cpus.len()]).collect())
}

/// The CPU placement and shared state of a run, made before any shard starts.
pub struct Launch {
    /// Shared state; register signal handlers on its shutdown flag.
    pub cluster: Arc<Cluster>,
    config: Arc<Config>,
    /// The data directory (the embedded log), open and locked.
    layout: Option<Arc<Layout>>,
    repair: bool,
    /// The database (the ScyllaDB store).
    scylla: Option<ScyllaShared>,
}

/// What the shards share of the ScyllaDB store: the way to the driver's thread, the prepared
/// statements, and the epochs of the node's slot leases.
#[derive(Clone)]
pub struct ScyllaShared {
    /// The bridge to the driver's thread.
    pub handle: DbHandle,
    /// Prepared statements of the keyspace.
    pub statements: Arc<Statements>,
    /// Epoch of each lease block (by block number), for the write timestamps.
    pub epochs: Arc<Vec<i64>>,
    /// Longest wait for the database's acknowledgement before a request fails with 503.
    pub durable_limit: Duration,
    /// Frames waiting for the database beyond which a shard refuses commands with 503.
    pub pending_frames_max: u64,
}

impl Launch {
    /// Plans the shards of `config`.
    pub fn new(config: Arc<Config>) -> Result<Launch, ShardError> {
        let cpus = placement(&config)?;
        let node_id = if config.server.node_id.is_empty() {
            host_name()
        } else {
            config.server.node_id.clone()
        };
        let placement = placement::Placement::new(&config.cluster.slots, cpus.len(), &config.cluster.peers)
            .map_err(|message| ConfigError {
            key: "cluster.slots".into(),
            message,
        })?;
        let cluster = Arc::new(Cluster {
            node_id,
            shards: cpus.len(),
            cpus,
            placement,
            ready: AtomicUsize::new(0),
            shutdown: Arc::new(AtomicBool::new(false)),
            starting_stop: AtomicBool::new(false),
            starting_closed: AtomicBool::new(true),
        });
        Ok(Launch {
            cluster,
            config,
            layout: None,
            repair: false,
            scylla: None,
        })
    }

    /// Opens the data directory of the embedded log (moving the data when the shard count
    /// changed). `repair` truncates a damaged log instead of refusing to start.
    pub fn open_storage(&mut self, repair: bool) -> Result<(), ShardError> {
        self.repair = repair;
        if self.config.storage.backend != StorageBackend::Wal {
            return Ok(());
        }
        // Absolute, so that every later open (glommio's included, which does not resolve a
        // relative path) is independent of the working directory.
        let dir = std::path::absolute(&self.config.storage.data_dir)
            .map_err(|error| ShardError::Storage(format!("{}: {error}", self.config.storage.data_dir)))?;
        let config = self.config.clone();
        let layout = Layout::open(&dir, self.cluster.shards, |old, new| reshard(&config, old, new))
            .map_err(|error: LayoutError| ShardError::Storage(error.to_string()))?;
        self.layout = Some(Arc::new(layout));
        Ok(())
    }

    /// Stores the shards' state in the database of `shared` (`storage.backend = "scylla"`).
    pub fn use_scylla(&mut self, shared: ScyllaShared) {
        self.scylla = Some(shared);
    }

    /// Starts every shard, runs `start` on each, and returns when all have returned. A shard
    /// whose `start` fails asks the others to shut down; the first failure is returned.
    pub fn run<F, Fut>(self, routes: &'static [&'static str], start: F) -> Result<(), ShardError>
    where
        F: Fn(Rc<Shard>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        let Launch {
            cluster,
            config,
            layout,
            repair,
            scylla,
        } = self;
        let shards = cluster.shards;
        let ends = mesh::build::<Command, Reply>(shards, config.mesh.queue_depth);
        let mut handles = Vec::with_capacity(shards);
        for (shard, ends) in ends.into_iter().enumerate() {
            let cpu = cluster.cpus[shard];
            let shard_cluster = cluster.clone();
            let config = config.clone();
            let start = start.clone();
            let layout = layout.clone();
            let scylla = scylla.clone();
            let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("shard-{shard}"))
                .io_memory(config.server.io_memory_bytes)
                // glommio's preemption timer stays at its default (100 ms): at 1 ms, a shard of
                // glommio 0.9 now and then never finished starting (2 of 4 runs of
                // tests/payments.rs had a shard stuck before recovery; 0 of 8 at the default).
                // Not pinned to the shard's CPU (glommio's default): offloaded work such as
                // password hashing must not time-slice with the executor on its own core.
                .blocking_thread_pool_placement(PoolPlacement::Unbound(config.server.blocking_threads));
            if config.server.spin_before_park_us > 0 {
                builder = builder.spin_before_park(Duration::from_micros(config.server.spin_before_park_us));
            }
            let spawned = builder.spawn(move || async move {
                let cluster = shard_cluster;
                let slots = cluster.placement.shard_slots(shard);
                let (first_slot, last_slot) = (slots.first, slots.last);
                let metrics = Rc::new(ShardMetrics::new(shard, shards, routes));
                let connections = Connections::new(
                    config.limits.connections_per_shard_max,
                    config.limits.connections_per_ip_max,
                    TICK,
                );
                let reply_timeout = Duration::from_millis(config.mesh.reply_timeout_ms);
                let (mesh, receivers) = ends.connect(reply_timeout, metrics.clone()).await;
                let info = ShardInfo {
                    shard,
                    cpu,
                    first_slot,
                    last_slot,
                    port: config.server.shard_port_base + shard as u16,
                };
                let mut home = Home::new(shard, shards, &config.auth, &config.money);
                home.set_slots(slots);
                let (journal, files) = match &layout {
                    Some(layout) => {
                        let dir = layout.shard_dir(shard);
                        let started = std::time::Instant::now();
                        let recovered = recovery::recover(&dir, repair, &mut home)
                            .map_err(|error| format!("cannot recover shard {shard}: {error}"))?;
                        tracing::info!(
                            shard,
                            dir = %dir.display(),
                            snapshot_seq = recovered.snapshot_seq,
                            frames = recovered.frames,
                            last_seq = recovered.last_seq,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "recovered"
                        );
                        let mode = match config.storage.durability {
                            Durability::Fsync => Mode::Fsync,
                            Durability::None => Mode::NoSync,
                        };
                        (
                            Journal::new(mode, recovered.last_seq),
                            Some((dir, recovered.files)),
                        )
                    }
                    None => match &scylla {
                        Some(db) => {
                            load_slots(shard, db, first_slot, last_slot, &mut home).await?;
                            (Journal::new(Mode::External, 0), None)
                        }
                        None => (Journal::new(Mode::Memory, 0), None),
                    },
                };
                let touched = Touched::default();
                let log: Box<dyn Log> = match &scylla {
                    Some(_) => Box::new(RowLog {
                        journal: journal.clone(),
                        touched: touched.clone(),
                    }),
                    None => Box::new(JournalLog(journal.clone())),
                };
                let mut home = home.with_log(log);
                let released = home.release_interrupted();
                if released > 0 {
                    tracing::info!(
                        shard,
                        keys = released,
                        "released the idempotency keys of interrupted requests"
                    );
                }
                let admission = admission::Admission::new(&config.overload);
                let this = Rc::new(Shard {
                    cluster: cluster.clone(),
                    metrics: metrics.clone(),
                    connections: connections.clone(),
                    admission: admission.clone(),
                    info,
                    home: RefCell::new(home),
                    journal: journal.clone(),
                    durable_limit: scylla.as_ref().map(|db| db.durable_limit),
                    backlog_max: scylla.as_ref().map(|db| db.pending_frames_max),
                    mesh,
                    peers: peer_clients(&cluster, &config),
                });
                if !cluster.placement.is_single() {
                    serve_nodes(&this, &config)?;
                }
                if let Some((dir, files)) = files {
                    start_writer(&this, dir, files, &config);
                }
                if let Some(db) = scylla {
                    spawn(scylla_writer(this.clone(), db, touched));
                }
                for (peer, receiver) in receivers {
                    let served = this.clone();
                    spawn(mesh::serve_peer(
                        peer,
                        receiver,
                        metrics.clone(),
                        move |command| served.serve_remote(command),
                    ));
                }
                spawn(tick(cluster.clone(), connections));
                spawn(admission.pulse());
                spawn(resend_outbox(this.clone()));
                let outcome = start(this).await;
                if outcome.is_err() {
                    cluster.request_shutdown();
                }
                outcome
            });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    cluster.request_shutdown();
                    for handle in handles {
                        let _ = handle.join();
                    }
                    return Err(ShardError::Spawn {
                        shard,
                        message: error.to_string(),
                    });
                }
            }
        }
        let mut first_error = None;
        for (shard, handle) in handles.into_iter().enumerate() {
            let outcome = match handle.join() {
                Ok(Ok(())) => continue,
                Ok(Err(message)) => ShardError::Failed { shard, message },
                Err(error) => ShardError::Failed {
                    shard,
                    message: error.to_string(),
                },
            };
            first_error.get_or_insert(outcome);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The shard's clients of the other nodes.
fn peer_clients(cluster: &Cluster, config: &Config) -> Vec<PeerClient<UserReply>> {
    let slots = |range: placement::SlotRange| (range.first, range.last);
    cluster
        .placement
        .peers()
        .iter()
        .map(|peer| {
            let hello = Hello {
                secret: config.cluster.secret.clone(),
                node: cluster.node_id.clone(),
                slots: slots(peer.slots),
            };
            PeerClient::new(
                peer.address.clone(),
                hello,
                Duration::from_millis(config.cluster.request_timeout_ms),
                config.cluster.in_flight_max,
            )
        })
        .collect()
}

/// Binds `cluster.listen` on this shard (SO_REUSEPORT: every shard accepts) and serves the
/// other nodes' commands.
fn serve_nodes(shard: &Rc<Shard>, config: &Config) -> Result<(), String> {
    let address: std::net::SocketAddr = config
        .cluster
        .listen
        .parse()
        .map_err(|_| format!("cluster.listen {:?} is not IP:PORT", config.cluster.listen))?;
    let listener = Listener::bind(address, config.server.backlog, true)
        .map_err(|error| format!("cannot listen on cluster.listen {address}: {error}"))?;
    let slots = shard.cluster.placement.slots();
    let settings = Rc::new(ServeSettings {
        secret: config.cluster.secret.clone(),
        node: shard.cluster.node_id.clone(),
        shards: shard.cluster.shards,
        slots: (slots.first, slots.last),
        in_flight_max: config.cluster.in_flight_max,
    });
    let serving = Rc::downgrade(shard);
    let run = Rc::new(move |slot: u32, unsynced: bool, command: UserCommand| {
        let serving = serving.clone();
        async move {
            match serving.upgrade() {
                Some(shard) => shard.serve_node(slot, unsynced, command).await,
                None => Outcome::Failed(PeerError::ShardUnavailable),
            }
        }
    });
    spawn(peer::serve(listener, settings, run, || false));
    Ok(())
}

/// How often a shard looks again at work it awaits from another thread (see [`foreign`]).
const FOREIGN_POLL: Duration = Duration::from_millis(2);

/// Awaits a future that another thread completes (the database bridge). glommio 0.9 can lose a
/// wake-up sent from a thread that is not an executor: it queues the waker, but if the executor
/// is just going to sleep it does not look at that queue again, and sleeps until something else
/// happens (on an idle shard: forever). So the future is also polled every [`FOREIGN_POLL`]
/// while it is pending.
pub async fn foreign<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    loop {
        let polled = futures_lite::future::or(async { Some(future.as_mut().await) }, async {
            sleep(FOREIGN_POLL).await;
            None
        })
        .await;
        if let Some(output) = polled {
            return output;
        }
    }
}

/// Loads the state of slots `first..=last` from the database into `home`.
async fn load_slots(
    shard: usize,
    db: &ScyllaShared,
    first: u32,
    last: u32,
    home: &mut Home,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let statements = db.statements.clone();
    let loaded = foreign(db.handle.call("loading slots", move |session| {
        rows::load_range(session, statements, first, last)
    }))
    .await
    .map_err(|error| format!("cannot load shard {shard} from the database: {error}"))?;
    let count = loaded.rows;
    home.restore_parts(
        crate::auth::state::AuthState::restore(loaded.users, loaded.sessions),
        crate::payments::ledger::Ledger::restore(loaded.ledger),
        loaded.keys,
        loaded.pending,
    );
    tracing::info!(
        shard,
        slots = last - first + 1,
        rows = count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "loaded from the database"
    );
    Ok(())
}

/// The shard's writer on the ScyllaDB store: whenever frames were appended, it cuts a batch —
/// the current values of every row they touched — and sends it as one logged batch; once the
/// database acknowledged it, the answers waiting for those frames go out. A failed write is
/// retried (the same values and timestamps: idempotent) until the database takes it; meanwhile
/// answers wait, and fail with 503 after `durable_limit`.
async fn scylla_writer(shard: Rc<Shard>, db: ScyllaShared, touched: Touched) {
    let mut counter: i64 = 0;
    while let Some(batch) = shard.journal.next_batch().await {
        let keys: Vec<rows::RowKey> = touched.borrow_mut().drain().collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let writes = Arc::new(rows::writes_of(keys.iter(), &*shard.home.borrow(), now_ms));
        counter += 2;
        let stamps = Stamps {
            epochs: db.epochs.clone(),
            counter,
        };
        let mut failures: u64 = 0;
        let mut backoff = Duration::from_millis(20);
        loop {
            let (sent, statements, stamps) = (writes.clone(), db.statements.clone(), stamps.clone());
            let started = Instant::now();
            let outcome = foreign(db.handle.call("writing a batch", move |session| async move {
                rows::write(&session, &statements, &sent, &stamps).await
            }))
            .await;
            match outcome {
                Ok(()) => {
                    if !writes.is_empty() {
                        let metrics = &shard.metrics.db;
                        metrics.write_duration.observe(started.elapsed(), 1);
                        DbMetrics::bump(&metrics.batches);
                        metrics.rows.set(metrics.rows.get() + writes.len() as u64);
                    }
                    break;
                }
                Err(error) => {
                    DbMetrics::bump(&shard.metrics.db.write_failures);
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        tracing::warn!(
                            shard = shard.id(),
                            %error,
                            attempts = failures,
                            "database write failed; retrying (answers wait, and get 503 after scylla.request_timeout_ms)"
                        );
                    }
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        if failures > 0 {
            tracing::info!(
                shard = shard.id(),
                attempts = failures + 1,
                "database write succeeded again"
            );
        }
        shard.journal.stored(batch.last, batch.bytes);
    }
}

/// Starts the shard's log writer. A storage failure stops the process: nothing more can be
/// acknowledged, and the next start recovers what the log holds.
fn start_writer(shard: &Rc<Shard>, dir: std::path::PathBuf, files: Files, config: &Config) {
    let source = {
        let shard = Rc::downgrade(shard);
        let dir = dir.clone();
        let fork = config.storage.snapshot_writer == SnapshotWriter::Fork;
        Box::new(move || match shard.upgrade() {
            Some(shard) => {
                let seq = shard.journal.written();
                let id = shard.id();
                let started = Instant::now();
                let this = shard.clone();
                // Runs in the child process, on the state as of this instant (or here, now).
                let contents = move |out: &mut dyn std::io::Write| {
                    let body = this.home.borrow().encode_state();
                    out.write_all(&crate::storage::snapshot::header(seq, &body))?;
                    out.write_all(&body)
                };
                let written = forked::write_temporary(
                    fork,
                    format!("shard-{id}-snapshot"),
                    dir.clone(),
                    crate::storage::disk::snapshot_name(seq),
                    contents,
                );
                tracing::info!(
                    shard = id,
                    seq,
                    writer = if fork { "fork" } else { "shard" },
                    // What the shard spent on it: the fork, or all the encoding.
                    shard_paused_ms = started.elapsed().as_secs_f64() * 1e3,
                    "taking a snapshot"
                );
                Capture {
                    seq,
                    written: Box::pin(async move {
                        written.await?;
                        tracing::info!(
                            shard = id,
                            seq,
                            written_ms = started.elapsed().as_millis() as u64,
                            "snapshot file written"
                        );
                        Ok(())
                    }),
                }
            }
            None => Capture {
                seq: 0,
                written: Box::pin(async { Err(std::io::Error::other("the shard stopped")) }),
            },
        })
    };
    let writer = Writer::new(
        disk::DmaDisk::new(dir.clone(), config.storage.durability == Durability::Fsync),
        shard.journal.clone(),
        WriterConfig {
            segment_bytes: config.storage.segment_bytes,
            snapshot_bytes: config.storage.snapshot_bytes,
        },
        files,
        source,
    );
    let id = shard.id();
    spawn(async move {
        let failed = writer.run().await;
        tracing::error!(
            shard = id,
            dir = %dir.display(),
            error = %failed,
            "storage failed: nothing more is acknowledged; stopping (the next start recovers the log)"
        );
        eprintln!("shardpay: shard {id}: {failed} ({}); stopping", dir.display());
        // Let the waiting requests get their 503 before the process goes.
        sleep(Duration::from_millis(100)).await;
        std::process::exit(1);
    });
}

/// Moves the state of the shard directories `old` to `new` (another shard count): recovers each
/// old shard, redistributes every slot's state, and writes each new shard's as a snapshot.
fn reshard(config: &Config, old: &[std::path::PathBuf], new: &[std::path::PathBuf]) -> Result<(), String> {
    let mut parts = Vec::with_capacity(old.len());
    for (shard, dir) in old.iter().enumerate() {
        let mut home = Home::new(shard, old.len(), &config.auth, &config.money);
        recovery::recover(dir, false, &mut home)
            .map_err(|error| format!("cannot recover old shard {shard}: {error}"))?;
        parts.push(home);
    }
    for (dir, body) in new.iter().zip(Home::reshard(parts, new.len())) {
        let file = crate::storage::snapshot::encode(0, &body);
        crate::storage::disk::write_atomic_std(dir, &crate::storage::disk::snapshot_name(0), &file)
            .map_err(|error| format!("{}: {error}", dir.display()))?;
    }
    Ok(())
}

/// Per-shard housekeeping: the cached `Date`, connection deadlines, and starting the drain once
/// shutdown is requested.
async fn tick(cluster: Arc<Cluster>, connections: Rc<Connections>) {
    loop {
        date::refresh();
        connections.tick();
        if cluster.shutdown.load(Ordering::Relaxed) && !connections.draining() {
            connections.start_drain();
        }
        sleep(TICK).await;
    }
}

/// How often each shard looks for unacknowledged credits, and how long one waits before it is resent.
const RESEND_INTERVAL: Duration = Duration::from_secs(1);

/// Resends, forever, the credits of this shard's outbox that no acknowledgement has settled: the
/// recovery half of the two-step cross-shard protocol. The recipient applies a credit once (by
/// id), so resending one that already arrived is harmless; the acknowledgement settles it here,
/// which also stores the waiting idempotent answer.
async fn resend_outbox(shard: Rc<Shard>) {
    // The first pass runs at once: after a restart the outbox holds the credits in flight at the
    // stop, and their payers' idempotency keys answer 409 until they settle.
    let mut first = true;
    loop {
        if !first {
            sleep(RESEND_INTERVAL).await;
        }
        first = false;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let due = UserCommand::OutboxDue {
            now_ms,
            older_than_ms: RESEND_INTERVAL.as_millis() as u64,
        };
        let Reply::User(UserReply::Transfers(transfers)) = shard.execute(Command::User(due)) else {
            continue;
        };
        for transfer in transfers {
            let id = transfer.id().to_string();
            let recipient = transfer.recipient().slot();
            match shard
                .invoke_on_home(recipient, UserCommand::Receive(transfer))
                .await
            {
                Ok(UserReply::Done) => {
                    shard.execute(Command::User(UserCommand::Settle { transfer: id }));
                }
                Ok(other) => tracing::error!(?other, transfer = %id, "a resent credit was refused"),
                Err(error) => tracing::warn!(%error, transfer = %id, "resending a credit failed; will retry"),
            }
        }
    }
}

fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return "localhost".to_string();
    }
    let length = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..length]).into_owned()
}
