//! Configuration: the one place where every limit, timeout and setting has a name, a unit and a default.
//!
//! Precedence is command line > environment (`SHARDPAY_<SECTION>_<KEY>`) > file > built-in defaults.
//! Loading never panics: every bad value becomes a [`ConfigError`] naming the key, which the binary
//! prints on one line before exiting with status 2. This module must never start anything.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Every setting of a shardpay process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners, shards and shutdown.
    pub server: ServerConfig,
    /// Size limits on what a client may send.
    pub limits: LimitsConfig,
    /// Deadlines on client I/O.
    pub timeouts: TimeoutsConfig,
    /// The shard-to-shard mesh.
    pub mesh: MeshConfig,
    /// Users, sessions and tokens.
    pub auth: AuthConfig,
    /// Money.
    pub money: MoneyConfig,
    /// Where state is stored.
    pub storage: StorageConfig,
    /// TLS on the listeners.
    pub tls: TlsConfig,
    /// Refusing work when a shard falls behind.
    pub overload: OverloadConfig,
    /// The ScyllaDB (or Apache Cassandra) cluster of the scale-out store.
    pub scylla: ScyllaConfig,
    /// Several shardpay nodes, each serving a range of slots.
    pub cluster: ClusterConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[server]`: listeners, shards and shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public address every shard binds with SO_REUSEPORT.
    pub listen: String,
    /// First shard-aware port: shard `i` also listens on `shard_port_base + i` on the listen address's IP.
    pub shard_port_base: u16,
    /// Number of shards; 0 means one per CPU in `cpus` (or per online CPU when `cpus` is empty).
    pub shards: usize,
    /// CPUs to pin shards to, e.g. `"0-3,6"`; shard `i` runs on the `i`-th CPU of the list. Empty: all online CPUs.
    pub cpus: String,
    /// Name of this node in `/v1/cluster`; empty means the host name.
    pub node_id: String,
    /// Listen backlog of every listener.
    pub backlog: u32,
    /// Longest time a graceful shutdown waits for in-flight requests before exiting.
    pub drain_timeout_ms: u64,
    /// Memory each shard's io_uring registers for I/O buffers (locked memory is often capped at 8 MiB per user).
    pub io_memory_bytes: usize,
    /// Threads per shard for work that must not run on the executor (password hashing), not pinned.
    pub blocking_threads: usize,
    /// How long an idle shard keeps polling for work before it sleeps, in microseconds (0: it
    /// sleeps at once). Polling costs the CPU it spins on; it saves the wake-up of a sleeping
    /// shard, which is slow where another thread runs on the shard's core (see PERFORMANCE.md).
    pub spin_before_park_us: u64,
}

/// `[limits]`: size limits on what a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request line (method, target, version); longer is 414.
    pub request_line_bytes_max: usize,
    /// Largest request head (request line and headers); larger is 431.
    pub header_bytes_max: usize,
    /// Most header fields in one request; more is 431.
    pub header_count_max: usize,
    /// Largest request body, declared or chunked; larger is 413, refused before the body is read.
    pub body_bytes_max: usize,
    /// Largest chunked trailer section.
    pub trailer_bytes_max: usize,
    /// Most open connections per shard; further connections are accepted and closed at once.
    pub connections_per_shard_max: usize,
    /// Most open connections from one client IP address per shard; 0: no limit.
    pub connections_per_ip_max: usize,
    /// Response bytes buffered for one connection before they are written, even mid-pipeline.
    pub response_buffer_bytes_max: usize,
}

/// `[timeouts]`: deadlines on client I/O.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Time a client has to send a whole request head, from its first byte (or from connect); then 408 and close.
    pub header_read_timeout_ms: u64,
    /// Time a keep-alive connection may stay idle between requests before it is closed.
    pub idle_timeout_ms: u64,
    /// Longest wait for the next bytes of a request body; then 408 and close.
    pub body_read_timeout_ms: u64,
    /// Longest time writing one batch of responses may take (a client that does not read, or
    /// reads too slowly); then the connection is closed.
    pub write_timeout_ms: u64,
    /// Slowest average rate, in bytes per second, at which a request (head and body) may arrive
    /// once `min_receive_rate_grace_ms` has passed since its first byte; slower is 408 and close.
    /// 0: no minimum.
    pub min_receive_bytes_per_second: u64,
    /// Time a request may take before `min_receive_bytes_per_second` applies.
    pub min_receive_rate_grace_ms: u64,
    /// After an error response that closes the connection, how long unread input is drained so the
    /// client can read the response instead of getting a reset.
    pub linger_timeout_ms: u64,
}

/// `[overload]`: admission control. When a shard's queueing delay stays above the target, part of
/// the new `/v1` requests get 503 with `Retry-After` at once, so the admitted ones are served in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverloadConfig {
    /// Whether requests are refused when a shard falls behind (the delay is measured either way).
    pub enabled: bool,
    /// Queueing delay, in microseconds, a shard keeps its admitted work near: the share of
    /// refused requests rises while the measured delay is above it and falls while below.
    pub queue_delay_target_us: u64,
    /// `Retry-After` of the 503, in seconds.
    pub retry_after_seconds: u64,
}

/// Smallest `overload.queue_delay_target_us`: below it the timer's own jitter would look like overload.
pub const QUEUE_DELAY_TARGET_US_MIN: u64 = 100;

impl Default for OverloadConfig {
    fn default() -> Self {
        OverloadConfig {
            enabled: true,
            queue_delay_target_us: 5000,
            retry_after_seconds: 1,
        }
    }
}

impl OverloadConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(QUEUE_DELAY_TARGET_US_MIN..=10_000_000).contains(&self.queue_delay_target_us) {
            return Err(error(
                "overload.queue_delay_target_us",
                format!("must be from {QUEUE_DELAY_TARGET_US_MIN} to 10000000 (10 s)"),
            ));
        }
        if !(1..=3600).contains(&self.retry_after_seconds) {
            return Err(error("overload.retry_after_seconds", "must be from 1 to 3600"));
        }
        Ok(())
    }
}

/// `[scylla]`: the ScyllaDB or Apache Cassandra cluster (`shardpay db ...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`, comma-separated; the driver discovers the other nodes.
    pub nodes: String,
    /// Keyspace of shardpay's tables.
    pub keyspace: String,
    /// Replication of the keyspace `shardpay db migrate` creates, as NetworkTopologyStrategy
    /// factors per datacenter: `"dc1:3,dc2:3"`.
    pub replication: String,
    /// Datacenter whose nodes the driver prefers (DC-aware load balancing); empty: any.
    pub local_datacenter: String,
    /// Consistency of reads and writes: ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, EACH_QUORUM,
    /// LOCAL_ONE.
    pub consistency: String,
    /// Consistency of the Paxos phase of lightweight transactions (slot leases): SERIAL or
    /// LOCAL_SERIAL.
    pub serial_consistency: String,
    /// User name for PasswordAuthenticator; empty: no authentication.
    pub username: String,
    /// Its password (set it from the environment: SHARDPAY_SCYLLA_PASSWORD).
    pub password: String,
    /// Longest wait for a connection to a node.
    pub connect_timeout_ms: u64,
    /// Longest wait for one statement's answer, retries included.
    pub request_timeout_ms: u64,
    /// Statements the bridge keeps in flight at once; more wait in its queue.
    pub in_flight_max: usize,
    /// Requests the bridge's queue holds; a shard sending to a full queue waits (backpressure).
    pub queue_depth: usize,
    /// How long a node's lease on its slots lasts without renewal (renewed every third of it).
    pub lease_seconds: u64,
    /// Frames a shard lets wait for the database; beyond, its requests get 503 at once (bounds
    /// the backlog of an outage and the size of the batch that carries it).
    pub pending_frames_max: u64,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        ScyllaConfig {
            nodes: "127.0.0.1:9042".to_string(),
            keyspace: "shardpay".to_string(),
            replication: "datacenter1:1".to_string(),
            local_datacenter: String::new(),
            consistency: "LOCAL_QUORUM".to_string(),
            serial_consistency: "LOCAL_SERIAL".to_string(),
            username: String::new(),
            password: String::new(),
            connect_timeout_ms: 5000,
            request_timeout_ms: 5000,
            in_flight_max: 256,
            queue_depth: 4096,
            lease_seconds: 30,
            pending_frames_max: 1000,
        }
    }
}

/// Consistency levels `scylla.consistency` accepts.
pub const CONSISTENCY_LEVELS: &[&str] = &[
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "LOCAL_ONE",
];

impl ScyllaConfig {
    /// The contact points (validated).
    pub fn node_list(&self) -> Vec<String> {
        self.nodes
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `scylla.replication` as (datacenter, factor) pairs (validated).
    pub fn replication_factors(&self) -> Result<Vec<(String, u32)>, ConfigError> {
        let mut factors: Vec<(String, u32)> = Vec::new();
        for part in self.replication.split(',').map(str::trim) {
            let parsed = part.split_once(':').and_then(|(dc, factor)| {
                let dc = dc.trim();
                let factor = factor.trim().parse::<u32>().ok()?;
                let name_ok = !dc.is_empty()
                    && dc.len() <= 48
                    && dc
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                (name_ok && (1..=15).contains(&factor)).then(|| (dc.to_string(), factor))
            });
            let Some((dc, factor)) = parsed else {
                return Err(error(
                    "scylla.replication",
                    format!(
                        "expected DATACENTER:FACTOR pairs such as \"dc1:3,dc2:3\" (factor 1 to 15), got {:?}",
                        self.replication
                    ),
                ));
            };
            if factors.iter().any(|(seen, _)| *seen == dc) {
                return Err(error(
                    "scylla.replication",
                    format!("datacenter {dc} named twice"),
                ));
            }
            factors.push((dc, factor));
        }
        Ok(factors)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let nodes = self.node_list();
        if nodes.is_empty() {
            return Err(error("scylla.nodes", "must name at least one host:port"));
        }
        for node in &nodes {
            let port = node.rsplit_once(':').and_then(|(host, port)| {
                (!host.is_empty()).then_some(())?;
                port.parse::<u16>().ok().filter(|port| *port != 0)
            });
            if port.is_none() {
                return Err(error("scylla.nodes", format!("expected host:port, got {node:?}")));
            }
        }
        let keyspace = &self.keyspace;
        if keyspace.is_empty()
            || keyspace.len() > 48
            || !keyspace.starts_with(|c: char| c.is_ascii_lowercase())
            || !keyspace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(error(
                "scylla.keyspace",
                "must be 1 to 48 characters: a lowercase letter, then lowercase letters, digits and _",
            ));
        }
        self.replication_factors()?;
        if !CONSISTENCY_LEVELS.contains(&self.consistency.as_str()) {
            return Err(error(
                "scylla.consistency",
                format!("must be one of {}", CONSISTENCY_LEVELS.join(", ")),
            ));
        }
        if !["SERIAL", "LOCAL_SERIAL"].contains(&self.serial_consistency.as_str()) {
            return Err(error(
                "scylla.serial_consistency",
                "must be SERIAL or LOCAL_SERIAL",
            ));
        }
        if self.username.is_empty() != self.password.is_empty() {
            return Err(error(
                "scylla.password",
                "scylla.username and scylla.password are set together or not at all",
            ));
        }
        positive("scylla.connect_timeout_ms", self.connect_timeout_ms)?;
        positive("scylla.request_timeout_ms", self.request_timeout_ms)?;
        if !(1..=65_536).contains(&self.in_flight_max) {
            return Err(error("scylla.in_flight_max", "must be from 1 to 65536"));
        }
        if !(1..=1_048_576).contains(&self.queue_depth) {
            return Err(error("scylla.queue_depth", "must be from 1 to 1048576"));
        }
        if !(1..=100_000).contains(&self.pending_frames_max) {
            return Err(error("scylla.pending_frames_max", "must be from 1 to 100000"));
        }
        if !(3..=3600).contains(&self.lease_seconds) {
            return Err(error("scylla.lease_seconds", "must be from 3 to 3600"));
        }
        Ok(())
    }
}

/// `[mesh]`: the shard-to-shard channels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// Capacity of each directed shard-to-shard queue; a full queue makes the sender wait (backpressure).
    pub queue_depth: usize,
    /// Longest time a request waits for another shard's reply before it fails with 503.
    pub reply_timeout_ms: u64,
}

/// `[auth]`: users, sessions and tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `iss` claim of access tokens, checked on every request.
    pub issuer: String,
    /// HS256 keys as `kid:secret` pairs separated by commas; secrets are base64url (no padding)
    /// of at least 32 bytes. Every key verifies; `jwt_signing_kid` signs. Rotate by adding the new
    /// key, switching the signing kid, and removing the old key once its tokens have expired.
    pub jwt_keys: String,
    /// The key id that signs new tokens.
    pub jwt_signing_kid: String,
    /// Whether the built-in development key (and, later, admin key) may be used. Production: false.
    pub dev_keys_allowed: bool,
    /// Lifetime of access tokens.
    pub access_token_ttl_seconds: u64,
    /// Lifetime of a refresh token (each refresh issues a new one with a new lifetime).
    pub refresh_token_ttl_seconds: u64,
    /// argon2id memory per hash, in KiB (OWASP: 19456).
    pub password_memory_kib: u32,
    /// argon2id passes (OWASP: 2).
    pub password_iterations: u32,
    /// argon2id lanes (OWASP: 1).
    pub password_parallelism: u32,
    /// Password hashes computing at once per shard (on its blocking threads).
    pub password_hashes_in_flight_max: usize,
    /// Password hashes waiting per shard; beyond it signup and login answer 503.
    pub password_hash_queue_max: usize,
    /// Failed logins per username per window before further attempts get 429.
    pub login_failures_per_username_max: u32,
    /// Login attempts per client IP per window and receiving shard before 429.
    pub login_attempts_per_ip_max: u32,
    /// The login throttling window.
    pub login_window_seconds: u64,
    /// Sustained authenticated requests per user per second (on the user's home shard).
    pub user_requests_per_second: u32,
    /// Authenticated requests a user may burst above the sustained rate.
    pub user_request_burst: u32,
    /// Most keys each rate limiter tracks per shard (usernames, IPs, users).
    pub rate_limit_entries_max: usize,
}

/// `[money]`: currencies, the admin API key and idempotency keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoneyConfig {
    /// Accepted ISO 4217 codes, comma-separated.
    pub currencies: String,
    /// The admin API key for `POST /v1/deposits` (`Authorization: Bearer <key>`), at least 16
    /// characters. The development key is refused when `auth.dev_keys_allowed` is false.
    pub admin_api_key: String,
    /// How long an idempotency key and its stored answer are kept.
    pub idempotency_retention_seconds: u64,
    /// Most idempotency keys kept per shard; beyond it new keys get 503 until old ones expire.
    pub idempotency_keys_max: usize,
}

/// The development admin API key. Refused when `auth.dev_keys_allowed` is false.
pub const DEV_ADMIN_API_KEY: &str = "dev-admin-key-not-for-production";

/// The development JWT secret (base64url). Refused when `auth.dev_keys_allowed` is false.
pub const DEV_JWT_SECRET: &str = "ZGV2ZWxvcG1lbnQta2V5LW5vdC1mb3ItcHJvZHVjdGlvbi11c2U";

/// `[cluster]`: several shardpay nodes, each serving a range of slots (needs the ScyllaDB store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's slots, `FIRST-LAST`, whole blocks of 64 slots; default every slot.
    pub slots: String,
    /// The other nodes, comma-separated `FIRST-LAST=HOST:PORT` (their `cluster.listen`).
    pub peers: String,
    /// Address every shard binds (SO_REUSEPORT) for the other nodes' commands; needed with peers.
    pub listen: String,
    /// Secret the nodes present to each other, at least 32 characters; needed with peers (set
    /// it from the environment: SHARDPAY_CLUSTER_SECRET).
    pub secret: String,
    /// Longest wait for another node's answer, and for a connection to it.
    pub request_timeout_ms: u64,
    /// Commands one shard keeps in flight to one node; more wait.
    pub in_flight_max: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            slots: "0-16383".to_string(),
            peers: String::new(),
            listen: String::new(),
            secret: String::new(),
            request_timeout_ms: 5000,
            in_flight_max: 1024,
        }
    }
}

/// Shortest `cluster.secret`.
pub const CLUSTER_SECRET_MIN: usize = 32;

impl ClusterConfig {
    fn validate(&self, shards: usize, backend: StorageBackend) -> Result<(), ConfigError> {
        crate::placement::Placement::new(&self.slots, shards.max(1), &self.peers).map_err(|message| {
            let key = if message.contains("HOST:PORT") {
                "cluster.peers"
            } else {
                "cluster.slots"
            };
            error(key, message)
        })?;
        let placement = self.placement(shards.max(1));
        if !placement.is_single() {
            if backend != StorageBackend::Scylla {
                return Err(error(
                    "cluster.peers",
                    "several nodes need storage.backend = \"scylla\" (its slot leases keep two nodes from serving the same slots)",
                ));
            }
            self.listen.parse::<SocketAddr>().map_err(|_| {
                error(
                    "cluster.listen",
                    format!(
                        "with peers, expected the IP:PORT the other nodes reach, got {:?}",
                        self.listen
                    ),
                )
            })?;
            if self.secret.len() < CLUSTER_SECRET_MIN {
                return Err(error(
                    "cluster.secret",
                    format!("with peers, must be at least {CLUSTER_SECRET_MIN} characters, the same on every node"),
                ));
            }
        }
        positive("cluster.request_timeout_ms", self.request_timeout_ms)?;
        if self.in_flight_max == 0 || self.in_flight_max > 65536 {
            return Err(error("cluster.in_flight_max", "must be from 1 to 65536"));
        }
        Ok(())
    }

    /// This node's placement with `shards` shards (the configuration must be valid).
    pub fn placement(&self, shards: usize) -> crate::placement::Placement {
        crate::placement::Placement::new(&self.slots, shards.max(1), &self.peers)
            .unwrap_or_else(|_| crate::placement::Placement::single(shards))
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a `tracing` filter; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

/// `[storage]`: where each shard's state is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `wal` (the embedded per-shard write-ahead log) or `memory` (nothing survives a restart).
    pub backend: StorageBackend,
    /// Directory of the write-ahead log (created if missing).
    pub data_dir: String,
    /// `fsync`: a change is answered only after it is on disk. `none`: answered at once, written
    /// without `fdatasync`; a crash loses recent changes (benchmarks only).
    pub durability: Durability,
    /// A log segment file is closed at about this size, and preallocated to it.
    pub segment_bytes: u64,
    /// A shard writes a snapshot of its state after this many log bytes, then deletes the
    /// segments the snapshot covers.
    pub snapshot_bytes: u64,
    /// Who encodes and writes a snapshot: `fork`, a child process forked with the state as of
    /// that moment, while the shard keeps serving; or `shard`, the shard itself, which serves
    /// nothing while it encodes (about 4 s per GB of state) but needs no memory for the pages
    /// it changes meanwhile.
    pub snapshot_writer: SnapshotWriter,
}

/// `[tls]`: TLS (rustls; TLS 1.2 and 1.3, ALPN `http/1.1`, no 0-RTT) on the listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The public address speaks TLS.
    pub public: bool,
    /// The shard-aware ports speak TLS.
    pub shard_ports: bool,
    /// PEM certificate chain, the server's certificate first. Read again on SIGHUP.
    pub cert_path: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate. Read again on SIGHUP.
    pub key_path: String,
    /// Longest time from accepting a connection to the end of its TLS handshake.
    pub handshake_timeout_ms: u64,
    /// TLS sessions each shard keeps for resumption by session id; 0 turns that off.
    pub session_cache_entries: usize,
    /// Issue session tickets (stateless resumption on any shard).
    pub tickets: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            public: false,
            shard_ports: false,
            cert_path: String::new(),
            key_path: String::new(),
            handshake_timeout_ms: 10_000,
            session_cache_entries: 4096,
            tickets: true,
        }
    }
}

/// Most `tls.session_cache_entries` per shard.
pub const TLS_SESSION_CACHE_LIMIT: usize = 1_000_000;

impl TlsConfig {
    /// Whether any listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.public || self.shard_ports
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled() {
            if self.cert_path.trim().is_empty() {
                return Err(error(
                    "tls.cert_path",
                    "required when tls.public or tls.shard_ports is true (`shardpay gen-cert` makes one for development)",
                ));
            }
            if self.key_path.trim().is_empty() {
                return Err(error(
                    "tls.key_path",
                    "required when tls.public or tls.shard_ports is true",
                ));
            }
        }
        positive("tls.handshake_timeout_ms", self.handshake_timeout_ms)?;
        if self.session_cache_entries > TLS_SESSION_CACHE_LIMIT {
            return Err(error(
                "tls.session_cache_entries",
                format!("at most {TLS_SESSION_CACHE_LIMIT}"),
            ));
        }
        Ok(())
    }
}

/// Storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// The embedded per-shard write-ahead log.
    Wal,
    /// Memory only.
    Memory,
    /// The ScyllaDB (or Cassandra) cluster of `[scylla]`.
    Scylla,
}

/// When a logged change counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After `fdatasync`.
    Fsync,
    /// At once (benchmarks only).
    None,
}

/// Who writes a shard's snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotWriter {
    /// A forked child process.
    Fork,
    /// The shard, on its own thread.
    Shard,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Wal,
            data_dir: "data".to_string(),
            durability: Durability::Fsync,
            segment_bytes: 64 << 20,
            snapshot_bytes: 256 << 20,
            snapshot_writer: SnapshotWriter::Fork,
        }
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.trim().is_empty() {
            return Err(error("storage.data_dir", "must not be empty"));
        }
        if self.segment_bytes < 1 << 20 || self.segment_bytes > 1 << 30 || self.segment_bytes % 4096 != 0 {
            return Err(error(
                "storage.segment_bytes",
                "must be a multiple of 4096 from 1048576 (1 MiB) to 1073741824 (1 GiB)",
            ));
        }
        if self.snapshot_bytes < 1 << 20 {
            return Err(error(
                "storage.snapshot_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        Ok(())
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".to_string(),
            shard_port_base: 7100,
            shards: 0,
            cpus: String::new(),
            node_id: String::new(),
            backlog: 1024,
            drain_timeout_ms: 10_000,
            io_memory_bytes: 1 << 20,
            blocking_threads: 2,
            spin_before_park_us: 0,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            request_line_bytes_max: 8 * 1024,
            header_bytes_max: 16 * 1024,
            header_count_max: 64,
            body_bytes_max: 1024 * 1024,
            trailer_bytes_max: 4 * 1024,
            connections_per_shard_max: 10_000,
            connections_per_ip_max: 1000,
            response_buffer_bytes_max: 256 * 1024,
        }
    }
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            write_timeout_ms: 30_000,
            linger_timeout_ms: 2_000,
            min_receive_bytes_per_second: 1024,
            min_receive_rate_grace_ms: 5000,
        }
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            queue_depth: 1024,
            reply_timeout_ms: 5_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "shardpay".to_string(),
            jwt_keys: format!("dev:{DEV_JWT_SECRET}"),
            jwt_signing_kid: "dev".to_string(),
            dev_keys_allowed: true,
            access_token_ttl_seconds: 900,
            refresh_token_ttl_seconds: 30 * 24 * 3600,
            password_memory_kib: 19_456,
            password_iterations: 2,
            password_parallelism: 1,
            password_hashes_in_flight_max: 2,
            password_hash_queue_max: 64,
            login_failures_per_username_max: 5,
            login_attempts_per_ip_max: 30,
            login_window_seconds: 300,
            user_requests_per_second: 100,
            user_request_burst: 200,
            rate_limit_entries_max: 100_000,
        }
    }
}

impl Default for MoneyConfig {
    fn default() -> Self {
        MoneyConfig {
            currencies: "USD,EUR,GBP,JPY".to_string(),
            admin_api_key: DEV_ADMIN_API_KEY.to_string(),
            idempotency_retention_seconds: 24 * 3600,
            idempotency_keys_max: 1_000_000,
        }
    }
}

impl MoneyConfig {
    fn validate(&self, dev_keys_allowed: bool) -> Result<(), ConfigError> {
        self.currency_list()?;
        if self.admin_api_key.len() < 16 || self.admin_api_key.len() > 256 {
            return Err(error(
                "money.admin_api_key",
                "must be 16 to 256 characters (e.g. from the environment: SHARDPAY_MONEY_ADMIN_API_KEY)",
            ));
        }
        if !self.admin_api_key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(error(
                "money.admin_api_key",
                "must be visible ASCII without spaces",
            ));
        }
        if !dev_keys_allowed && self.admin_api_key == DEV_ADMIN_API_KEY {
            return Err(error(
                "money.admin_api_key",
                "the development key is refused because auth.dev_keys_allowed is false",
            ));
        }
        positive(
            "money.idempotency_retention_seconds",
            self.idempotency_retention_seconds,
        )?;
        positive("money.idempotency_keys_max", self.idempotency_keys_max as u64)?;
        Ok(())
    }

    /// The accepted currencies (validated at load).
    pub fn currency_list(&self) -> Result<Vec<crate::payments::ledger::Currency>, ConfigError> {
        let mut list = Vec::new();
        for code in self
            .currencies
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            let currency = crate::payments::ledger::Currency::parse(code).ok_or_else(|| {
                error(
                    "money.currencies",
                    format!("{code:?} is not three upper-case letters"),
                )
            })?;
            if !list.contains(&currency) {
                list.push(currency);
            }
        }
        if list.is_empty() {
            return Err(error("money.currencies", "must list at least one currency"));
        }
        Ok(list)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// Compile-time ceiling of `limits.header_count_max`: the parser's header array has this many slots.
pub const HEADER_COUNT_LIMIT: usize = 256;
/// Most shards one process runs.
pub const SHARD_COUNT_LIMIT: usize = 1024;

/// A configuration that cannot be used, naming the key (`section.key`) at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `section.key` of the bad setting, or the file for errors that are about the whole file.
    pub key: String,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Settings given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--shards`
    pub shards: Option<usize>,
    /// `--cpus`
    pub cpus: Option<String>,
    /// `--shard-port-base`
    pub shard_port_base: Option<u16>,
}

/// Prefix of every environment variable that sets a key.
pub const ENV_PREFIX: &str = "SHARDPAY_";

impl Config {
    /// Builds the configuration from defaults, an optional TOML file, the given environment
    /// variables (name, value) and the command line, in increasing precedence, and validates it.
    pub fn load(
        file: Option<&Path>,
        environment: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    error(
                        &path.display().to_string(),
                        format!("cannot read the file: {err}"),
                    )
                })?;
                let value: toml::Table = toml::from_str(&text).map_err(|err| {
                    let detail = err.message().to_string();
                    error(&path.display().to_string(), format!("not valid TOML: {detail}"))
                })?;
                value
            }
            None => toml::Table::new(),
        };
        apply_environment(&mut table, environment)?;
        apply_overrides(&mut table, overrides);
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner().message().to_string();
            error(&key, inner)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between values that their types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        server.listen.parse::<SocketAddr>().map_err(|_| {
            error(
                "server.listen",
                format!("expected IP:PORT, got {:?}", server.listen),
            )
        })?;
        if server.shards > SHARD_COUNT_LIMIT {
            return Err(error("server.shards", format!("at most {SHARD_COUNT_LIMIT}")));
        }
        parse_cpu_list(&server.cpus).map_err(|message| error("server.cpus", message))?;
        if server.shard_port_base == 0 {
            return Err(error("server.shard_port_base", "must be a port number from 1"));
        }
        if server.backlog == 0 {
            return Err(error("server.backlog", "must be at least 1"));
        }
        if server.blocking_threads == 0 || server.blocking_threads > 64 {
            return Err(error("server.blocking_threads", "must be from 1 to 64"));
        }
        if server.spin_before_park_us > 10_000 {
            return Err(error("server.spin_before_park_us", "must be from 0 to 10000"));
        }
        if server.io_memory_bytes < 64 * 1024 {
            return Err(error("server.io_memory_bytes", "must be at least 65536"));
        }
        let limits = &self.limits;
        positive(
            "limits.request_line_bytes_max",
            limits.request_line_bytes_max as u64,
        )?;
        if limits.header_bytes_max < limits.request_line_bytes_max {
            return Err(error(
                "limits.header_bytes_max",
                "must be at least limits.request_line_bytes_max",
            ));
        }
        if limits.header_count_max == 0 || limits.header_count_max > HEADER_COUNT_LIMIT {
            return Err(error(
                "limits.header_count_max",
                format!("must be from 1 to {HEADER_COUNT_LIMIT}"),
            ));
        }
        positive(
            "limits.connections_per_shard_max",
            limits.connections_per_shard_max as u64,
        )?;
        if limits.response_buffer_bytes_max < 4096 {
            return Err(error("limits.response_buffer_bytes_max", "must be at least 4096"));
        }
        let timeouts = &self.timeouts;
        positive("timeouts.header_read_timeout_ms", timeouts.header_read_timeout_ms)?;
        positive("timeouts.idle_timeout_ms", timeouts.idle_timeout_ms)?;
        positive("timeouts.body_read_timeout_ms", timeouts.body_read_timeout_ms)?;
        positive("timeouts.write_timeout_ms", timeouts.write_timeout_ms)?;
        positive("mesh.queue_depth", self.mesh.queue_depth as u64)?;
        positive("mesh.reply_timeout_ms", self.mesh.reply_timeout_ms)?;
        self.auth.validate()?;
        self.money.validate(self.auth.dev_keys_allowed)?;
        self.storage.validate()?;
        self.tls.validate()?;
        self.overload.validate()?;
        self.scylla.validate()?;
        // With `server.shards = 0` the count is known at launch, which checks the division again.
        self.cluster.validate(self.server.shards, self.storage.backend)?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|err| error("log.level", format!("not a valid filter: {err}")))?;
        Ok(())
    }

    /// The public listen address (validated).
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .expect("server.listen is validated at load")
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.issuer.is_empty() || self.issuer.len() > 256 {
            return Err(error("auth.issuer", "must be 1 to 256 characters"));
        }
        if self.jwt_keys.trim().is_empty() {
            return Err(error(
                "auth.jwt_keys",
                "no keys (e.g. from the environment: SHARDPAY_AUTH_JWT_KEYS=kid:secret and SHARDPAY_AUTH_JWT_SIGNING_KID=kid)",
            ));
        }
        self.key_set()?;
        if !self.dev_keys_allowed && self.jwt_keys.contains(DEV_JWT_SECRET) {
            return Err(error(
                "auth.jwt_keys",
                "the development key is refused because auth.dev_keys_allowed is false",
            ));
        }
        self.password_params()
            .validate()
            .map_err(|err| error("auth.password_memory_kib", err.to_string()))?;
        positive("auth.access_token_ttl_seconds", self.access_token_ttl_seconds)?;
        positive("auth.refresh_token_ttl_seconds", self.refresh_token_ttl_seconds)?;
        positive(
            "auth.password_hashes_in_flight_max",
            self.password_hashes_in_flight_max as u64,
        )?;
        positive(
            "auth.login_failures_per_username_max",
            u64::from(self.login_failures_per_username_max),
        )?;
        positive(
            "auth.login_attempts_per_ip_max",
            u64::from(self.login_attempts_per_ip_max),
        )?;
        positive("auth.login_window_seconds", self.login_window_seconds)?;
        positive(
            "auth.user_requests_per_second",
            u64::from(self.user_requests_per_second),
        )?;
        positive("auth.user_request_burst", u64::from(self.user_request_burst))?;
        positive("auth.rate_limit_entries_max", self.rate_limit_entries_max as u64)?;
        if self.rate_limit_entries_max > 10_000_000 {
            return Err(error("auth.rate_limit_entries_max", "at most 10000000"));
        }
        self.login_failure_quota()?;
        self.login_attempt_quota()?;
        self.user_request_quota()?;
        Ok(())
    }

    /// Failed logins per username per window.
    pub fn login_failure_quota(&self) -> Result<crate::ratelimit::Quota, ConfigError> {
        let window_ms = self.login_window_seconds.saturating_mul(1000);
        let failures = self.login_failures_per_username_max;
        crate::ratelimit::Quota::new(failures, window_ms, failures)
            .map_err(|err| error("auth.login_failures_per_username_max", err.to_string()))
    }

    /// Login attempts per client IP per window.
    pub fn login_attempt_quota(&self) -> Result<crate::ratelimit::Quota, ConfigError> {
        let window_ms = self.login_window_seconds.saturating_mul(1000);
        let attempts = self.login_attempts_per_ip_max;
        crate::ratelimit::Quota::new(attempts, window_ms, attempts)
            .map_err(|err| error("auth.login_attempts_per_ip_max", err.to_string()))
    }

    /// Authenticated requests per user: the sustained rate per second and the burst.
    pub fn user_request_quota(&self) -> Result<crate::ratelimit::Quota, ConfigError> {
        crate::ratelimit::Quota::new(self.user_requests_per_second, 1000, self.user_request_burst)
            .map_err(|err| error("auth.user_requests_per_second", err.to_string()))
    }

    /// The JWT keys (validated at load).
    pub fn key_set(&self) -> Result<crate::auth::jwt::KeySet, ConfigError> {
        use base64::Engine as _;
        let mut keys = Vec::new();
        for pair in self.jwt_keys.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kid, secret) = pair
                .split_once(':')
                .ok_or_else(|| error("auth.jwt_keys", "expected kid:secret pairs separated by commas"))?;
            let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(secret.trim())
                .map_err(|_| {
                    error(
                        "auth.jwt_keys",
                        format!("the secret of key {kid:?} is not base64url"),
                    )
                })?;
            keys.push(
                crate::auth::jwt::Key::new(kid.trim(), &secret)
                    .map_err(|err| error("auth.jwt_keys", format!("key {kid:?}: {err}")))?,
            );
        }
        crate::auth::jwt::KeySet::new(keys, &self.jwt_signing_kid)
            .map_err(|err| error("auth.jwt_keys", err.to_string()))
    }

    /// The argon2id parameters.
    pub fn password_params(&self) -> crate::auth::password::PasswordParams {
        crate::auth::password::PasswordParams {
            memory_kib: self.password_memory_kib,
            iterations: self.password_iterations,
            parallelism: self.password_parallelism,
        }
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(error(key, "must be at least 1"));
    }
    Ok(())
}

/// Applies `SHARDPAY_<SECTION>_<KEY>` variables. Names are derived from the defaults, so every key
/// has one; an unknown `SHARDPAY_` variable is an error rather than a silently ignored typo.
fn apply_environment(
    table: &mut toml::Table,
    environment: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
    for (name, raw) in environment {
        let Some(suffix) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let mut found = None;
        for (section, keys) in &defaults {
            let Some(keys) = keys.as_table() else { continue };
            for (key, default) in keys {
                if suffix.eq_ignore_ascii_case(&format!("{section}_{key}")) {
                    found = Some((section.clone(), key.clone(), default.clone()));
                }
            }
        }
        let Some((section, key, default)) = found else {
            return Err(error(
                &name,
                "unknown environment variable (no such configuration key)",
            ));
        };
        let value = match default {
            toml::Value::Integer(_) => raw.trim().parse::<i64>().map(toml::Value::Integer).map_err(|_| {
                error(
                    &format!("{section}.{key}"),
                    format!("expected an integer, got {raw:?} (from {name})"),
                )
            })?,
            toml::Value::Boolean(_) => {
                raw.trim()
                    .parse::<bool>()
                    .map(toml::Value::Boolean)
                    .map_err(|_| {
                        error(
                            &format!("{section}.{key}"),
                            format!("expected true or false, got {raw:?} (from {name})"),
                        )
                    })?
            }
            _ => toml::Value::String(raw),
        };
        section_table(table, &section)?.insert(key, value);
    }
    Ok(())
}

fn apply_overrides(table: &mut toml::Table, overrides: &Overrides) {
    let server = section_table(table, "server").expect("server is a table or absent");
    if let Some(listen) = &overrides.listen {
        server.insert("listen".into(), toml::Value::String(listen.clone()));
    }
    if let Some(shards) = overrides.shards {
        server.insert("shards".into(), toml::Value::Integer(shards as i64));
    }
    if let Some(cpus) = &overrides.cpus {
        server.insert("cpus".into(), toml::Value::String(cpus.clone()));
    }
    if let Some(port) = overrides.shard_port_base {
        server.insert("shard_port_base".into(), toml::Value::Integer(i64::from(port)));
    }
}

fn section_table<'t>(table: &'t mut toml::Table, section: &str) -> Result<&'t mut toml::Table, ConfigError> {
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    entry
        .as_table_mut()
        .ok_or_else(|| error(section, "expected a table"))
}

/// Parses a CPU list such as `"0-3,6"` into CPU numbers in the given order, without duplicates.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    let text = text.trim();
    if text.is_empty() {
        return Ok(cpus);
    }
    for part in text.split(',') {
        let part = part.trim();
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (parse_cpu(a)?, parse_cpu(b)?),
            None => {
                let cpu = parse_cpu(part)?;
                (cpu, cpu)
            }
        };
        if first > last {
            return Err(format!("range {part:?} runs backwards"));
        }
        for cpu in first..=last {
            if cpus.contains(&cpu) {
                return Err(format!("CPU {cpu} is listed twice"));
            }
            cpus.push(cpu);
        }
    }
    Ok(cpus)
}

fn parse_cpu(text: &str) -> Result<usize, String> {
    let cpu: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a CPU list such as \"0-3,6\", got {text:?}"))?;
    if cpu >= 4096 {
        return Err(format!("CPU {cpu} is out of range"));
    }
    Ok(cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scylla_settings_are_checked() {
        let config = load_env(&[
            ("SHARDPAY_SCYLLA_NODES", "10.0.0.1:9042, db2:19042"),
            ("SHARDPAY_SCYLLA_REPLICATION", "dc1:3,dc2:2"),
        ])
        .unwrap();
        assert_eq!(config.scylla.node_list(), ["10.0.0.1:9042", "db2:19042"]);
        assert_eq!(
            config.scylla.replication_factors().unwrap(),
            [("dc1".to_string(), 3), ("dc2".to_string(), 2)]
        );
        for (name, value, key) in [
            ("SHARDPAY_SCYLLA_NODES", "", "scylla.nodes"),
            ("SHARDPAY_SCYLLA_NODES", "db1", "scylla.nodes"),
            ("SHARDPAY_SCYLLA_NODES", "db1:0", "scylla.nodes"),
            ("SHARDPAY_SCYLLA_KEYSPACE", "Shard-Pay", "scylla.keyspace"),
            ("SHARDPAY_SCYLLA_REPLICATION", "3", "scylla.replication"),
            ("SHARDPAY_SCYLLA_REPLICATION", "dc1:0", "scylla.replication"),
            ("SHARDPAY_SCYLLA_REPLICATION", "dc1:3,dc1:3", "scylla.replication"),
            ("SHARDPAY_SCYLLA_REPLICATION", "dc'1:3", "scylla.replication"),
            ("SHARDPAY_SCYLLA_CONSISTENCY", "MOST", "scylla.consistency"),
            (
                "SHARDPAY_SCYLLA_SERIAL_CONSISTENCY",
                "QUORUM",
                "scylla.serial_consistency",
            ),
            ("SHARDPAY_SCYLLA_USERNAME", "shardpay", "scylla.password"),
            ("SHARDPAY_SCYLLA_LEASE_SECONDS", "1", "scylla.lease_seconds"),
            ("SHARDPAY_SCYLLA_QUEUE_DEPTH", "0", "scylla.queue_depth"),
        ] {
            let err = load_env(&[(name, value)]).unwrap_err();
            assert_eq!(err.key, key, "{name}={value}: {err}");
        }
    }

    /// The configuration from built-in defaults and `pairs` as the environment.
    fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, env(pairs), &Overrides::default())
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn snapshots_are_written_by_a_forked_process_unless_told_otherwise() {
        assert_eq!(
            load_env(&[]).unwrap().storage.snapshot_writer,
            SnapshotWriter::Fork
        );
        let shard = load_env(&[("SHARDPAY_STORAGE_SNAPSHOT_WRITER", "shard")]).unwrap();
        assert_eq!(shard.storage.snapshot_writer, SnapshotWriter::Shard);
        let err = load_env(&[("SHARDPAY_STORAGE_SNAPSHOT_WRITER", "thread")]).unwrap_err();
        assert_eq!(err.key, "storage.snapshot_writer", "{err}");
    }

    #[test]
    fn defaults_are_valid() {
        let config = load_env(&[]).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn precedence_is_cli_then_environment_then_file() {
        let dir = std::env::temp_dir().join(format!("shardpay-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1\"\nshards = 3\ncpus = \"0\"\n[limits]\nbody_bytes_max = 5\n",
        )
        .unwrap();
        let environment = env(&[
            ("SHARDPAY_SERVER_SHARDS", "2"),
            ("SHARDPAY_SERVER_CPUS", "1"),
            ("PATH", "/bin"),
        ]);
        let overrides = Overrides {
            shards: Some(1),
            ..Overrides::default()
        };
        let config = Config::load(Some(&file), environment, &overrides).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:1"); // file
        assert_eq!(config.limits.body_bytes_max, 5); // file
        assert_eq!(config.server.cpus, "1"); // environment over file
        assert_eq!(config.server.shards, 1); // command line over environment
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load_env(&[("SHARDPAY_LIMITS_BODY_BYTES_MAX", "lots")]).unwrap_err();
        assert_eq!(err.key, "limits.body_bytes_max");
        let err = load_env(&[("SHARDPAY_NOPE", "1")]).unwrap_err();
        assert_eq!(err.key, "SHARDPAY_NOPE");
        let overrides = Overrides {
            listen: Some("nowhere".into()),
            ..Overrides::default()
        };
        let err = Config::load(None, env(&[]), &overrides).unwrap_err();
        assert_eq!(err.key, "server.listen");
        let err = load_env(&[("SHARDPAY_LIMITS_HEADER_COUNT_MAX", "0")]).unwrap_err();
        assert_eq!(err.key, "limits.header_count_max");
        let err = load_env(&[("SHARDPAY_SERVER_SPIN_BEFORE_PARK_US", "10001")]).unwrap_err();
        assert_eq!(err.key, "server.spin_before_park_us");
        let spinning = load_env(&[("SHARDPAY_SERVER_SPIN_BEFORE_PARK_US", "10000")])
            .expect("the upper bound is allowed");
        assert_eq!(spinning.server.spin_before_park_us, 10_000);
    }

    #[test]
    fn the_development_key_is_refused_when_dev_keys_are_not_allowed() {
        let err = load_env(&[("SHARDPAY_AUTH_DEV_KEYS_ALLOWED", "false")]).unwrap_err();
        assert_eq!(err.key, "auth.jwt_keys");
        let own_key = "own:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0";
        let config = load_env(&[
            ("SHARDPAY_AUTH_DEV_KEYS_ALLOWED", "false"),
            ("SHARDPAY_AUTH_JWT_KEYS", own_key),
            ("SHARDPAY_AUTH_JWT_SIGNING_KID", "own"),
            ("SHARDPAY_MONEY_ADMIN_API_KEY", "an-admin-key-of-my-own"),
        ])
        .unwrap();
        assert_eq!(config.auth.key_set().unwrap().signing_kid(), "own");
        let err = load_env(&[("SHARDPAY_AUTH_JWT_KEYS", "dev:short")]).unwrap_err();
        assert_eq!(err.key, "auth.jwt_keys");
    }

    #[test]
    fn money_settings_are_checked() {
        let err = load_env(&[("SHARDPAY_MONEY_CURRENCIES", "USD,euro")]).unwrap_err();
        assert_eq!(err.key, "money.currencies");
        let err = load_env(&[("SHARDPAY_MONEY_ADMIN_API_KEY", "short")]).unwrap_err();
        assert_eq!(err.key, "money.admin_api_key");
        let production = [
            ("SHARDPAY_AUTH_DEV_KEYS_ALLOWED", "false"),
            (
                "SHARDPAY_AUTH_JWT_KEYS",
                "own:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0",
            ),
            ("SHARDPAY_AUTH_JWT_SIGNING_KID", "own"),
        ];
        let err = load_env(&production).unwrap_err();
        assert_eq!(err.key, "money.admin_api_key");
    }

    #[test]
    fn rate_limits_that_cannot_be_enforced_are_refused() {
        // A request rate above one per millisecond cannot be expressed by the limiter.
        let err = load_env(&[("SHARDPAY_AUTH_USER_REQUESTS_PER_SECOND", "5000")]).unwrap_err();
        assert_eq!(err.key, "auth.user_requests_per_second");
        let err = load_env(&[
            ("SHARDPAY_AUTH_LOGIN_WINDOW_SECONDS", "1"),
            ("SHARDPAY_AUTH_LOGIN_ATTEMPTS_PER_IP_MAX", "5000"),
        ])
        .unwrap_err();
        assert_eq!(err.key, "auth.login_attempts_per_ip_max");
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("shardpay-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[limits]\nbody_bytes_max = \"big\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert_eq!(err.key, "limits.body_bytes_max");
        std::fs::write(&file, "[limits]\nbody_byte_max = 1\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.key.starts_with("limits"), "{err}");
        assert!(err.message.contains("body_byte_max"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert!(parse_cpu_list("1,1").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }
}

#[cfg(test)]
mod shipped_files {
    use super::*;

    fn load_file(name: &str) -> Config {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
        Config::load(Some(&path), Vec::new(), &Overrides::default())
            .unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    #[test]
    fn default_toml_documents_the_built_in_defaults() {
        assert_eq!(load_file("default.toml"), Config::default());
    }

    #[test]
    fn every_key_is_in_default_toml() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))
            .unwrap();
        let written: toml::Table = toml::from_str(&text).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(
            written, defaults,
            "config/default.toml must list every key with its default"
        );
    }

    #[test]
    fn other_shipped_files_load() {
        load_file("bench.toml");
        // The production example holds no secrets: it refuses to start until they are set...
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
        let err = Config::load(Some(&path), Vec::new(), &Overrides::default()).unwrap_err();
        assert_eq!(err.key, "auth.jwt_keys");
        // ...from the environment.
        let secrets = [
            (
                "SHARDPAY_AUTH_JWT_KEYS",
                "k1:c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0",
            ),
            ("SHARDPAY_AUTH_JWT_SIGNING_KID", "k1"),
            ("SHARDPAY_MONEY_ADMIN_API_KEY", "a-long-random-admin-key"),
        ];
        let environment = secrets
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>();
        let production = Config::load(Some(&path), environment, &Overrides::default()).unwrap();
        assert_eq!(production.log.format, LogFormat::Json);
        assert!(!production.auth.dev_keys_allowed);
    }
}
