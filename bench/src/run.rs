//! One benchmark run: discover the target, set up users, start the workers on their CPUs, print
//! progress, and gather everything into a [`Report`].

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::{now_ns, NS_PER_SECOND};
use crate::latency::{Latencies, LatencySummary};
use crate::procstat::{cpu_time, CpuTime};
use crate::scenario::{Generator, Kind, Mix, Scenario, User, UserSet, Workload, KINDS};
use crate::setup::{self, SetupError, Target, UserPlan};
use crate::timeline::{Timeline, TimelineEntry};
use crate::tls::{Negotiated, TlsClient, TlsSettings};
use crate::worker::{self, ConnectionPlan, Progress, WorkerPlan, WorkerResult};

/// Most connections one run opens.
pub const CONNECTIONS_MAX: usize = 100_000;
/// Most requests in flight per connection.
pub const DEPTH_MAX: usize = 1024;
/// Most worker threads.
pub const THREADS_MAX: usize = 1024;
/// Most benchmark users.
pub const USERS_MAX: usize = 1_000_000;
/// Delay between the workers' creation and the common start, so they begin together.
const START_DELAY_NS: u64 = 50_000_000;

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `http://host:port` or `https://host:port` of the target's public address (a path is
    /// ignored). https: the shard ports (`shard_aware`) are contacted over TLS too.
    pub url: String,
    /// The workload.
    pub scenario: Scenario,
    /// For `mixed`: the mix (`None`: the documented default).
    pub mix: Option<Mix>,
    /// Connections in all.
    pub connections: usize,
    /// Requests in flight per connection (pipelining depth).
    pub depth: usize,
    /// Worker threads.
    pub threads: usize,
    /// CPUs to pin the workers to (worker i on `cpus[i % len]`); empty: not pinned.
    pub cpus: Vec<usize>,
    /// Open loop at this many requests per second in all; `None`: closed loop.
    pub rate: Option<f64>,
    /// Load before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Benchmark users to create.
    pub users: usize,
    /// Connect each user's requests to the user's home shard port.
    pub shard_aware: bool,
    /// Place the users on the slots of the node at this URL (its `/v1/cluster`) instead of the
    /// target's: with several shardpay nodes, every request to the target is then carried out
    /// on that node.
    pub placement_url: Option<String>,
    /// Share of payments to a user on another shard; `None`: payees at random.
    pub cross_shard_ratio: Option<f64>,
    /// Admin API key for the set-up deposits.
    pub admin_key: String,
    /// Password of the benchmark users.
    pub password: String,
    /// Currency of deposits and payments.
    pub currency: String,
    /// Deposit per user, minor units.
    pub deposit: u64,
    /// Amount of each payment, minor units.
    pub payment_amount: u64,
    /// Connections used by the set-up.
    pub setup_connections: usize,
    /// The server's process ids (several: the nodes of a cluster), to report their CPU time per
    /// request, summed.
    pub server_pids: Vec<u32>,
    /// Print a progress line every second.
    pub progress: bool,
    /// https: PEM file of the CA certificates to trust (required for https).
    pub cacert: Option<PathBuf>,
    /// https: the name the server's certificate must be valid for (default: the URL's host).
    pub tls_server_name: Option<String>,
    /// https: keep a client session cache and resume sessions.
    pub tls_resumption: bool,
    /// Each connection sends one request with `Connection: close`, reads the answer, closes
    /// and reconnects: measures connection set-up (TLS handshakes) per second.
    pub new_connection_per_request: bool,
    /// Report a per-second timeline since the load started (`--timeline`).
    pub timeline: bool,
    /// Start the load at this wall-clock time (Unix ms) rather than right after the set-up; a
    /// set-up that ends later starts the load at once (the report says when it began).
    pub start_at_unix_ms: Option<u64>,
}

impl RunConfig {
    /// The defaults of the command line, for `url` and `scenario`.
    pub fn new(url: &str, scenario: Scenario) -> Self {
        Self {
            url: url.to_string(),
            scenario,
            mix: None,
            connections: 64,
            depth: 1,
            threads: 1,
            cpus: Vec::new(),
            rate: None,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            users: 100,
            shard_aware: false,
            placement_url: None,
            cross_shard_ratio: None,
            admin_key: "dev-admin-key-not-for-production".into(),
            password: "benchmark-password-1".into(),
            currency: "USD".into(),
            deposit: 1_000_000_000_000,
            payment_amount: 1,
            setup_connections: 8,
            server_pids: Vec::new(),
            progress: false,
            cacert: None,
            tls_server_name: None,
            tls_resumption: true,
            new_connection_per_request: false,
            timeline: false,
            start_at_unix_ms: None,
        }
    }
}

/// A run that could not be made.
#[derive(Debug)]
pub enum RunError {
    /// A setting is out of range or inconsistent.
    Config(String),
    /// The set-up phase failed.
    Setup(SetupError),
    /// A worker or the system failed.
    Io(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Config(message) => f.write_str(message),
            RunError::Setup(error) => write!(f, "set-up failed: {error}"),
            RunError::Io(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Latencies and counts of one request kind.
#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    /// Correct answers in the measured window.
    pub ok: u64,
    /// Failed requests in the measured window.
    pub failed: u64,
    /// Correct answers per second.
    pub ok_per_second: f64,
    /// Latency of correct answers, µs.
    pub latency_us: LatencySummary,
    /// Answers 503 `overloaded` (refused by the server's admission control) in the window.
    pub shed: u64,
    /// Latency of the shed answers, µs.
    pub shed_latency_us: LatencySummary,
}

/// One error kind.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorReport {
    /// Occurrences (warm-up included).
    pub count: u64,
    /// The first one's details.
    pub example: String,
}

/// CPU time of a process over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// Process id (`null`: the load generator itself).
    pub pid: Option<u32>,
    /// Further processes whose CPU time is counted with `pid`'s (the other nodes of a cluster).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub more_pids: Vec<u32>,
    /// User + system CPU µs per correct answer.
    pub cpu_us_per_request: Option<f64>,
    /// User CPU µs per correct answer.
    pub user_us_per_request: Option<f64>,
    /// System CPU µs per correct answer.
    pub system_us_per_request: Option<f64>,
    /// User + system CPU µs per answer, correct or shed (503 `overloaded`): what an answer cost
    /// when part of them were cheap refusals.
    pub cpu_us_per_answer: Option<f64>,
    /// CPU time over wall time (1.0 = one core busy).
    pub cores_busy: f64,
}

/// TLS of an https run.
#[derive(Debug, Clone, Serialize)]
pub struct TlsReport {
    /// The name the server's certificate was verified for.
    pub server_name: String,
    /// The CA file trusted.
    pub cacert: String,
    /// Whether the client kept a session cache (resumption on).
    pub resumption: bool,
    /// What the first handshake agreed on (`null`: no handshake completed).
    pub negotiated: Option<Negotiated>,
}

/// Connections set up in the measured window: a TCP connect and, over https, a TLS handshake.
/// With `new_connection_per_request` every request pays one.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeReport {
    /// Connections set up (TCP connect done and, over TLS, handshake done) in the window.
    pub completed: u64,
    /// Per second of the window.
    pub per_second: f64,
    /// https: handshakes that resumed a session (`null`: plain HTTP).
    pub resumed: Option<u64>,
    /// https: resumed / completed (`null`: plain HTTP or none completed).
    pub resumed_share: Option<f64>,
    /// The server's CPU µs per connection set up (with `--server-pid`; `null` without or with
    /// none set up).
    pub server_cpu_us_per_handshake: Option<f64>,
    /// The client's CPU µs per connection set up.
    pub client_cpu_us_per_handshake: Option<f64>,
}

/// Everything a run measured; `--json` writes it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always "shardpay-bench".
    pub tool: &'static str,
    /// The tool's version.
    pub version: &'static str,
    /// The target's public URL.
    pub url: String,
    /// Scenario name.
    pub scenario: &'static str,
    /// The mix as `kind=weight,…`.
    pub mix: String,
    /// "closed" or "open".
    pub mode: &'static str,
    /// Open loop: the requested rate per second in all.
    pub rate_per_second: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Worker threads.
    pub threads: usize,
    /// CPUs the workers were pinned to.
    pub cpus: Vec<usize>,
    /// The target's shards (1 without `/v1/cluster`).
    pub shards: usize,
    /// Whether requests went to each user's home shard port.
    pub shard_aware: bool,
    /// Benchmark users created.
    pub users: usize,
    /// `--cross-shard-ratio` (null: payees at random).
    pub cross_shard_ratio: Option<f64>,
    /// Share of correct payments that went to another shard.
    pub payments_cross_shard_share: Option<f64>,
    /// Seconds of load before measuring.
    pub warmup_s: f64,
    /// Measured seconds.
    pub duration_s: f64,
    /// Correct answers in the measured window.
    pub ok: u64,
    /// Failed requests in the measured window.
    pub failed: u64,
    /// Errors of any kind (warm-up included): requests and connection failures.
    pub errors: u64,
    /// Correct answers per second.
    pub requests_per_second: f64,
    /// Latency of all correct answers, µs.
    pub latency_us: LatencySummary,
    /// Answers 503 `overloaded` in the measured window: refused by the server's admission
    /// control, neither correct nor failed (not in `errors_by_kind`, not in `latency_us`).
    pub shed: u64,
    /// Shed answers per second.
    pub shed_per_second: f64,
    /// Correct and shed answers per second.
    pub answered_per_second: f64,
    /// Requests written in the measured window, per second (open loop: the offered rate the
    /// client kept).
    pub sent_per_second: f64,
    /// Latency of the shed answers, µs (from the same start or due time as `latency_us`).
    pub shed_latency_us: LatencySummary,
    /// Per request kind of the mix.
    pub kinds: BTreeMap<&'static str, KindReport>,
    /// Errors by kind.
    pub errors_by_kind: BTreeMap<String, ErrorReport>,
    /// The load generator's own CPU time.
    pub client_cpu: CpuReport,
    /// The server's CPU time (with `--server-pid`).
    pub server_cpu: Option<CpuReport>,
    /// Connections opened, reconnects included.
    pub connects: u64,
    /// Open loop: how late the client wrote requests, µs (1 µs resolution): from the due time, or
    /// from when a connection busy with earlier requests got room, to the write. Latencies include
    /// it; a large one means the client could not keep its schedule.
    pub client_send_lag_us: Option<LatencySummary>,
    /// https: the TLS settings and what was negotiated (`null`: plain HTTP).
    pub tls: Option<TlsReport>,
    /// Each connection sent one request with `Connection: close` and was reopened; latencies then
    /// run from the connect (or, open loop, the due time) to the answer.
    pub new_connection_per_request: bool,
    /// Connections set up in the measured window (handshakes/s).
    pub handshakes: HandshakeReport,
    /// When the load began (warm-up included), CLOCK_MONOTONIC ns: comparable between runs on
    /// the same machine (since boot).
    pub load_started_monotonic_ns: u64,
    /// When the load began, Unix time in ms.
    pub load_started_unix_ms: u64,
    /// `--start-at-unix-ms`: the start asked for (`null`: right after the set-up).
    pub start_at_unix_ms: Option<u64>,
    /// `--timeline`: one entry per whole second since the load started, warm-up included (at
    /// most 3600); `null` without it.
    pub timeline: Option<Vec<TimelineEntry>>,
}

/// A target URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// The address to connect to.
    pub address: SocketAddr,
    /// `host[:port]` as written: the Host header.
    pub authority: String,
    /// The host alone (no port, no brackets): the default TLS server name.
    pub host: String,
    /// https.
    pub tls: bool,
}

/// Takes an `http://` or `https://` URL apart (default ports 80 and 443).
pub fn parse_url(url: &str) -> Result<ParsedUrl, RunError> {
    let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, false, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, true, 443)
    } else {
        return Err(RunError::Config(format!(
            "URL '{url}' must start with http:// or https://"
        )));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(RunError::Config(format!("URL '{url}' has no host")));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        && !authority.ends_with(']');
    let with_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let host = match with_port.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => authority.to_string(),
    };
    if host.is_empty() {
        return Err(RunError::Config(format!("URL '{url}' has no host")));
    }
    let address = with_port
        .to_socket_addrs()
        .map_err(|error| RunError::Config(format!("URL '{url}': {error}")))?
        .next()
        .ok_or_else(|| RunError::Config(format!("URL '{url}': the host has no address")))?;
    Ok(ParsedUrl {
        address,
        authority: authority.to_string(),
        host,
        tls,
    })
}

fn validate(config: &RunConfig) -> Result<(), RunError> {
    let bad = |message: String| Err(RunError::Config(message));
    if config.connections == 0 || config.connections > CONNECTIONS_MAX {
        return bad(format!("--connections must be 1 to {CONNECTIONS_MAX}"));
    }
    if config.depth == 0 || config.depth > DEPTH_MAX {
        return bad(format!("--depth must be 1 to {DEPTH_MAX}"));
    }
    if config.threads == 0 || config.threads > THREADS_MAX {
        return bad(format!("--threads must be 1 to {THREADS_MAX}"));
    }
    if config.threads > config.connections {
        return bad(format!(
            "--threads {} is more than --connections {}: each thread needs a connection",
            config.threads, config.connections
        ));
    }
    if let Some(rate) = config.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return bad("--rate must be a positive number of requests per second".into());
        }
    }
    if config.duration.is_zero() {
        return bad("--duration must be positive".into());
    }
    if config.users == 0 || config.users > USERS_MAX {
        return bad(format!("--users must be 1 to {USERS_MAX}"));
    }
    if let Some(ratio) = config.cross_shard_ratio {
        if !(0.0..=1.0).contains(&ratio) {
            return bad("--cross-shard-ratio must be from 0 to 1".into());
        }
    }
    if config.payment_amount == 0 {
        return bad("--payment-amount must be positive".into());
    }
    if config.new_connection_per_request && config.depth != 1 {
        return bad(
            "--new-connection-per-request sends one request per connection: --depth must be 1".into(),
        );
    }
    let https = config.url.starts_with("https://");
    if https && config.cacert.is_none() {
        return bad(format!(
            "{} is https: --cacert PATH must name the PEM file of the CA certificates to trust \
             (there is no insecure mode)",
            config.url
        ));
    }
    if !https && (config.cacert.is_some() || config.tls_server_name.is_some()) {
        return bad("--cacert and --tls-server-name apply to https URLs only".into());
    }
    Ok(())
}

/// A per-run prefix for usernames and idempotency keys: "b" and 6 random base-36 characters.
fn run_prefix() -> String {
    let mut value = crate::rng::seed(0);
    let mut prefix = String::from("b");
    for _ in 0..6 {
        let digit = (value % 36) as u32;
        value /= 36;
        prefix.push(char::from_digit(digit, 36).expect("below 36"));
    }
    prefix
}

/// Runs the benchmark.
pub fn run(config: &RunConfig) -> Result<Report, RunError> {
    validate(config)?;
    let url = parse_url(&config.url)?;
    let tls = match (&config.cacert, url.tls) {
        (Some(cacert), true) => {
            let settings = TlsSettings {
                cacert: cacert.clone(),
                server_name: config.tls_server_name.clone().unwrap_or_else(|| url.host.clone()),
                resumption: config.tls_resumption,
            };
            Some(TlsClient::new(&settings).map_err(|error| RunError::Config(error.0))?)
        }
        _ => None,
    };
    let host = url.authority;
    let mix = config.scenario.mix(config.mix.clone());
    let strict = config.shard_aware || mix.needs_users();
    let mut target = setup::discover(url.address, &host, tls.clone(), strict).map_err(RunError::Setup)?;
    if let Some(placement_url) = &config.placement_url {
        if config.shard_aware {
            return Err(RunError::Config(
                "--placement-url and --shard-aware do not go together (the users' shards are on another node)".into(),
            ));
        }
        let placement = parse_url(placement_url)?;
        let placed =
            setup::discover(placement.address, &placement.authority, tls, true).map_err(RunError::Setup)?;
        if placed.ranges.is_empty() {
            return Err(RunError::Config(format!(
                "--placement-url {placement_url} has no cluster map (GET /v1/cluster)"
            )));
        }
        target.shards = placed.shards;
        target.ranges = placed.ranges;
    }
    if config.shard_aware && target.ranges.is_empty() {
        return Err(RunError::Config(
            "--shard-aware needs the server's cluster map (GET /v1/cluster), which this target does not have"
                .into(),
        ));
    }
    if config.shard_aware && config.connections < target.shards {
        return Err(RunError::Config(format!(
            "--shard-aware needs at least one connection per shard: {} connections for {} shards",
            config.connections, target.shards
        )));
    }
    let prefix = run_prefix();
    let plan = UserPlan {
        count: config.users,
        per_shard_min: if mix.contains(Kind::Payment) { 2 } else { 1 },
        prefix: prefix.clone(),
        tag: 'u',
        log_in: true,
        password: config.password.clone(),
        admin_key: config.admin_key.clone(),
        deposit: config.deposit,
        currency: config.currency.clone(),
        connections: config.setup_connections,
    };
    let token_kinds = mix
        .entries()
        .iter()
        .any(|(kind, _)| kind.needs_users() && *kind != Kind::Login);
    let users: Vec<User> = if token_kinds {
        setup::create_users(&target, &plan).map_err(RunError::Setup)?
    } else {
        Vec::new()
    };
    // Logins go to users of their own (a tenth as many, at least one per shard): a user's
    // sessions are capped, and the oldest is revoked first, which would be the token users'.
    let login_users: Vec<User> = if mix.contains(Kind::Login) {
        let plan = UserPlan {
            count: (config.users / 10).max(1),
            per_shard_min: 1,
            tag: 'l',
            log_in: false,
            deposit: 0,
            ..plan
        };
        setup::create_users(&target, &plan).map_err(RunError::Setup)?
    } else {
        Vec::new()
    };
    let workload = Arc::new(Workload {
        mix: mix.clone(),
        users: UserSet::new(users, target.shards),
        login_users: UserSet::new(login_users, target.shards),
        shards: target.shards,
        cross_shard_ratio: config.cross_shard_ratio,
        // A new connection per request: every request asks the server to close.
        host_header: if config.new_connection_per_request {
            format!("Host: {host}\r\nConnection: close\r\n").into_bytes()
        } else {
            format!("Host: {host}\r\n").into_bytes()
        },
        run_prefix: prefix,
        password: config.password.clone(),
        currency: config.currency.clone(),
        payment_amount: config.payment_amount,
    });
    let results = run_workers(config, &target, &workload)?;
    Ok(build_report(
        config,
        &target,
        &mix,
        workload.users.users.len(),
        results,
    ))
}

struct Measured {
    workers: Vec<WorkerResult>,
    load_started_monotonic_ns: u64,
    load_started_unix_ms: u64,
    client_cpu: CpuTime,
    server_cpu: Option<CpuTime>,
    wall_s: f64,
}

fn run_workers(config: &RunConfig, target: &Target, workload: &Arc<Workload>) -> Result<Measured, RunError> {
    let mut plans: Vec<Vec<ConnectionPlan>> = vec![Vec::new(); config.threads];
    for index in 0..config.connections {
        let plan = if config.shard_aware {
            let shard = index % target.shards;
            let address = target
                .shard_address(shard)
                .expect("a validated cluster map lists every shard");
            ConnectionPlan {
                address,
                shard: Some(shard),
            }
        } else {
            ConnectionPlan {
                address: target.address,
                shard: None,
            }
        };
        plans[index % config.threads].push(plan);
    }
    let mut start_ns = now_ns() + START_DELAY_NS;
    if let Some(at_ms) = config.start_at_unix_ms {
        let wait_ns = (at_ms as u128 * 1_000_000).saturating_sub(unix_now_ns());
        start_ns = start_ns.max(now_ns() + wait_ns.min(u64::MAX as u128 / 2) as u64);
    }
    let load_started_unix_ms = (unix_now_ns() + u128::from(start_ns.saturating_sub(now_ns()))) / 1_000_000;
    let measure_start_ns = start_ns + config.warmup.as_nanos() as u64;
    let end_ns = measure_start_ns + config.duration.as_nanos() as u64;
    let progress: Vec<Arc<Progress>> = (0..config.threads).map(|_| Arc::default()).collect();
    let mut handles = Vec::with_capacity(config.threads);
    for (thread, connections) in plans.into_iter().enumerate() {
        let rate_per_connection = config.rate.map(|rate| rate / config.connections as f64);
        let plan = WorkerPlan {
            thread,
            cpu: (!config.cpus.is_empty()).then(|| config.cpus[thread % config.cpus.len()]),
            connections,
            depth: config.depth,
            rate_per_connection,
            start_ns,
            measure_start_ns,
            end_ns,
            tls: target.tls.as_ref().map(TlsClient::with_own_session_cache),
            one_request_per_connection: config.new_connection_per_request,
            timeline: config.timeline,
        };
        let generator = Generator::new(Arc::clone(workload), thread, crate::rng::seed(thread + 1));
        let progress = Arc::clone(&progress[thread]);
        let handle = std::thread::Builder::new()
            .name(format!("bench-worker-{thread}"))
            .spawn(move || worker::run(plan, generator, progress))
            .map_err(RunError::Io)?;
        handles.push(handle);
    }

    // Progress and the CPU readings at the edges of the measured window.
    let sleep_until = |deadline: u64| {
        let now = now_ns();
        if deadline > now {
            std::thread::sleep(Duration::from_nanos(deadline - now));
        }
    };
    let read_server = |stage: &str| -> Result<Option<CpuTime>, RunError> {
        let mut sum: Option<CpuTime> = None;
        for &pid in &config.server_pids {
            let time = cpu_time(Some(pid)).map_err(|error| {
                RunError::Io(std::io::Error::new(
                    error.kind(),
                    format!("reading the server's CPU time (pid {pid}) at the {stage} of the run: {error}"),
                ))
            })?;
            let total = sum.unwrap_or_default();
            sum = Some(CpuTime {
                user_us: total.user_us + time.user_us,
                system_us: total.system_us + time.system_us,
            });
        }
        Ok(sum)
    };
    let mut last_ok = 0u64;
    let mut last_shed = 0u64;
    let mut last_ns = start_ns;
    let mut print_progress = |label: &str, until: u64| {
        let mut tick = last_ns;
        while tick < until {
            tick = (tick + NS_PER_SECOND).min(until);
            sleep_until(tick);
            if config.progress {
                let ok: u64 = progress
                    .iter()
                    .map(|p| p.ok.load(std::sync::atomic::Ordering::Relaxed))
                    .sum();
                let errors: u64 = progress
                    .iter()
                    .map(|p| p.errors.load(std::sync::atomic::Ordering::Relaxed))
                    .sum();
                let shed: u64 = progress
                    .iter()
                    .map(|p| p.shed.load(std::sync::atomic::Ordering::Relaxed))
                    .sum();
                let elapsed = (tick - start_ns) as f64 / 1e9;
                let seconds = (tick - last_ns) as f64 / 1e9;
                let rate = (ok - last_ok) as f64 / seconds;
                let shed_rate = (shed - last_shed) as f64 / seconds;
                eprintln!(
                    "[{elapsed:6.1} s] {label:<8} {rate:>12.0} req/s   shed {shed_rate:.0}/s   errors {errors}"
                );
                last_ok = ok;
                last_shed = shed;
            }
            last_ns = tick;
        }
    };
    print_progress("warm-up", measure_start_ns);
    let client_before = cpu_time(None).map_err(RunError::Io)?;
    let server_before = read_server("start")?;
    print_progress("measure", end_ns);
    let client_after = cpu_time(None).map_err(RunError::Io)?;
    let server_after = read_server("end")?;
    let mut workers = Vec::with_capacity(handles.len());
    for handle in handles {
        let result = handle
            .join()
            .map_err(|_| RunError::Io(std::io::Error::other("a worker thread panicked")))?
            .map_err(RunError::Io)?;
        workers.push(result);
    }
    Ok(Measured {
        workers,
        load_started_monotonic_ns: start_ns,
        load_started_unix_ms: load_started_unix_ms as u64,
        client_cpu: client_after.since(client_before),
        server_cpu: server_after
            .zip(server_before)
            .map(|(after, before)| after.since(before)),
        // Answers are counted by their arrival within [measure start, end): exactly this long.
        wall_s: config.duration.as_secs_f64(),
    })
}

fn build_report(config: &RunConfig, target: &Target, mix: &Mix, users: usize, measured: Measured) -> Report {
    let duration_s = measured.wall_s;
    let mut all = Latencies::new();
    let mut kinds = BTreeMap::new();
    let mut ok = 0;
    let mut failed = 0;
    let mut cross_shard = 0;
    let mut errors_by_kind: BTreeMap<String, ErrorReport> = BTreeMap::new();
    let mut connects = 0;
    let mut handshakes = 0;
    let mut resumed = 0;
    let mut negotiated = None;
    let mut send_lag = Latencies::new();
    let mut shed_all = Latencies::new();
    let mut shed = 0;
    let mut sent = 0;
    let mut timeline: Option<Timeline> = None;
    for worker in &measured.workers {
        send_lag.merge(&worker.send_lag);
        sent += worker.sent;
        if let Some(theirs) = &worker.timeline {
            match &mut timeline {
                Some(mine) => mine.merge(theirs),
                None => timeline = Some(theirs.clone()),
            }
        }
        cross_shard += worker.payments_cross_shard;
        connects += worker.connects;
        handshakes += worker.handshakes;
        resumed += worker.resumed_handshakes;
        if negotiated.is_none() {
            negotiated.clone_from(&worker.negotiated);
        }
        for (name, error) in &worker.errors {
            let entry = errors_by_kind.entry(name.clone()).or_insert_with(|| ErrorReport {
                count: 0,
                example: error.example.clone(),
            });
            entry.count += error.count;
        }
    }
    for kind in KINDS {
        if !mix.contains(kind) {
            continue;
        }
        let mut latencies = Latencies::new();
        let mut shed_latencies = Latencies::new();
        let mut kind_ok = 0;
        let mut kind_failed = 0;
        let mut kind_shed = 0;
        for worker in &measured.workers {
            let result = &worker.kinds[kind.index()];
            latencies.merge(&result.latencies);
            shed_latencies.merge(&result.shed_latencies);
            kind_ok += result.ok;
            kind_failed += result.failed;
            kind_shed += result.shed;
        }
        all.merge(&latencies);
        shed_all.merge(&shed_latencies);
        ok += kind_ok;
        failed += kind_failed;
        shed += kind_shed;
        kinds.insert(
            kind.name(),
            KindReport {
                ok: kind_ok,
                failed: kind_failed,
                ok_per_second: kind_ok as f64 / duration_s,
                latency_us: latencies.summary(),
                shed: kind_shed,
                shed_latency_us: shed_latencies.summary(),
            },
        );
    }
    let payments = kinds.get("payment").map_or(0, |report| report.ok);
    let cpu_report = |pids: &[u32], time: CpuTime| CpuReport {
        pid: pids.first().copied(),
        more_pids: pids.iter().skip(1).copied().collect(),
        cpu_us_per_request: (ok > 0).then(|| time.total_us() as f64 / ok as f64),
        user_us_per_request: (ok > 0).then(|| time.user_us as f64 / ok as f64),
        system_us_per_request: (ok > 0).then(|| time.system_us as f64 / ok as f64),
        cpu_us_per_answer: (ok + shed > 0).then(|| time.total_us() as f64 / (ok + shed) as f64),
        cores_busy: time.total_us() as f64 / 1e6 / duration_s,
    };
    Report {
        tool: "shardpay-bench",
        version: env!("CARGO_PKG_VERSION"),
        url: config.url.clone(),
        scenario: config.scenario.name(),
        mix: mix.describe(),
        mode: if config.rate.is_some() { "open" } else { "closed" },
        rate_per_second: config.rate,
        connections: config.connections,
        depth: config.depth,
        threads: config.threads,
        cpus: config.cpus.clone(),
        shards: target.shards,
        shard_aware: config.shard_aware,
        users,
        cross_shard_ratio: config.cross_shard_ratio,
        payments_cross_shard_share: (payments > 0).then(|| cross_shard as f64 / payments as f64),
        warmup_s: config.warmup.as_secs_f64(),
        duration_s,
        ok,
        failed,
        errors: errors_by_kind.values().map(|error| error.count).sum(),
        requests_per_second: ok as f64 / duration_s,
        latency_us: all.summary(),
        shed,
        shed_per_second: shed as f64 / duration_s,
        answered_per_second: (ok + shed) as f64 / duration_s,
        sent_per_second: sent as f64 / duration_s,
        shed_latency_us: shed_all.summary(),
        kinds,
        errors_by_kind,
        client_cpu: cpu_report(&[], measured.client_cpu),
        server_cpu: measured
            .server_cpu
            .map(|time| cpu_report(&config.server_pids, time)),
        connects,
        client_send_lag_us: config.rate.map(|_| send_lag.summary()),
        tls: target.tls.as_ref().map(|tls| TlsReport {
            server_name: tls.settings().server_name.clone(),
            cacert: tls.settings().cacert.display().to_string(),
            resumption: tls.settings().resumption,
            negotiated,
        }),
        new_connection_per_request: config.new_connection_per_request,
        handshakes: HandshakeReport {
            completed: handshakes,
            per_second: handshakes as f64 / duration_s,
            resumed: target.tls.is_some().then_some(resumed),
            resumed_share: (target.tls.is_some() && handshakes > 0)
                .then(|| resumed as f64 / handshakes as f64),
            server_cpu_us_per_handshake: measured
                .server_cpu
                .filter(|_| handshakes > 0)
                .map(|time| time.total_us() as f64 / handshakes as f64),
            client_cpu_us_per_handshake: (handshakes > 0)
                .then(|| measured.client_cpu.total_us() as f64 / handshakes as f64),
        },
        load_started_monotonic_ns: measured.load_started_monotonic_ns,
        load_started_unix_ms: measured.load_started_unix_ms,
        start_at_unix_ms: config.start_at_unix_ms,
        timeline: timeline.map(|timeline| timeline.entries()),
    }
}

/// Wall-clock time, ns since the Unix epoch.
fn unix_now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_address_host_and_scheme() {
        let url = parse_url("http://127.0.0.1:8080/ignored").unwrap();
        assert_eq!(url.address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(url.authority, "127.0.0.1:8080");
        assert_eq!(url.host, "127.0.0.1");
        assert!(!url.tls);
        assert_eq!(parse_url("http://127.0.0.1").unwrap().address.port(), 80);
        let url = parse_url("https://127.0.0.1:8443").unwrap();
        assert!(url.tls);
        assert_eq!((url.address.port(), url.host.as_str()), (8443, "127.0.0.1"));
        let url = parse_url("https://localhost/x").unwrap();
        assert_eq!((url.address.port(), url.host.as_str()), (443, "localhost"));
        assert_eq!(url.authority, "localhost");
        let url = parse_url("https://[::1]:8443").unwrap();
        assert_eq!((url.address.port(), url.host.as_str()), (8443, "::1"));
        for bad in [
            "ftp://127.0.0.1:8443",
            "127.0.0.1:8080",
            "http://",
            "http://:80",
            "https://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let base = RunConfig::new("http://127.0.0.1:1", Scenario::Plaintext);
        assert!(validate(&base).is_ok());
        type Change = fn(&mut RunConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.connections = 0, "--connections"),
            (|c| c.depth = 0, "--depth"),
            (|c| c.threads = 100, "--threads 100 is more than --connections 64"),
            (|c| c.rate = Some(0.0), "--rate"),
            (|c| c.rate = Some(f64::NAN), "--rate"),
            (|c| c.duration = Duration::ZERO, "--duration"),
            (|c| c.users = 0, "--users"),
            (|c| c.cross_shard_ratio = Some(1.5), "--cross-shard-ratio"),
            (
                |c| {
                    c.new_connection_per_request = true;
                    c.depth = 2;
                },
                "--depth must be 1",
            ),
            (|c| c.url = "https://127.0.0.1:1".into(), "--cacert PATH"),
            (|c| c.cacert = Some("ca.pem".into()), "apply to https URLs only"),
            (
                |c| c.tls_server_name = Some("localhost".into()),
                "apply to https URLs only",
            ),
        ];
        for (change, want) in cases {
            let mut config = base.clone();
            change(&mut config);
            let error = validate(&config).unwrap_err().to_string();
            assert!(error.contains(want), "{error}");
        }
    }

    #[test]
    fn run_prefixes_are_short_valid_usernames() {
        let prefix = run_prefix();
        assert_eq!(prefix.len(), 7);
        assert!(prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    }
}
