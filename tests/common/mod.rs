//! Test harness: starts the real `shardpay` binary on free loopback ports and talks raw HTTP/1.1
//! to it over real sockets. Each test gets its own server process.

#![allow(dead_code)]

pub mod tls;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ports handed out in this test process, so two tests never pick the same one.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago and is not handed to another test of this process.
///
/// Ports come from below the kernel's ephemeral range (`ip_local_port_range`): a port the
/// kernel hands out itself (`bind(0)`) is also one it may give any test's outgoing connection
/// before the server under test binds it, and the server then fails with "Address already in
/// use" (seen in CI).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let (low, high) = static_port_range();
    let span = u32::from(high - low);
    // Start each test process somewhere else in the range, so that concurrent test binaries
    // rarely probe the same ports.
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    loop {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = low + (seed.wrapping_add(step) % span) as u16;
        let mut taken = TAKEN.lock().unwrap();
        let taken = taken.get_or_insert_with(HashSet::new);
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
}

/// The ports tests pick from: 20000 up to the start of the ephemeral range (at most 32767).
fn static_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.clamp(21_000, 32_768);
    (20_000, high)
}

/// `count` consecutive free ports.
pub fn free_port_range(count: usize) -> u16 {
    'search: loop {
        let base = free_port();
        if base + count as u16 > static_port_range().1 {
            continue;
        }
        let mut held = Vec::new();
        for offset in 0..count as u16 {
            match TcpListener::bind(("127.0.0.1", base + offset)) {
                Ok(listener) => held.push(listener),
                Err(_) => continue 'search,
            }
        }
        let mut taken = TAKEN.lock().unwrap();
        let taken = taken.get_or_insert_with(HashSet::new);
        for offset in 1..count as u16 {
            if !taken.insert(base + offset) {
                continue 'search;
            }
        }
        return base;
    }
}

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_shardpay")
}

/// A running server process; killed when dropped.
pub struct Server {
    pub child: Option<Child>,
    /// Public port.
    pub port: u16,
    /// First shard-aware port.
    pub shard_port_base: u16,
    pub shards: usize,
    stderr_path: std::path::PathBuf,
    /// The data directory, removed on drop when the harness made it.
    pub data_dir: std::path::PathBuf,
    owns_data_dir: bool,
    /// For servers whose listeners speak TLS: a client trusting their CA, and which listeners.
    pub tls: Option<TlsListeners>,
    /// The keyspace of a server on the ScyllaDB backend (TEST_STORAGE_BACKEND=scylla).
    keyspace: Option<String>,
    /// On the ScyllaDB backend (either way): starts take leases, may wait out a killed
    /// holder's, and load from the database.
    on_scylla: bool,
}

/// Which listeners of a test server speak TLS, and a client configuration that trusts them.
#[derive(Clone)]
pub struct TlsListeners {
    pub client: std::sync::Arc<rustls::ClientConfig>,
    pub public: bool,
    pub shard_ports: bool,
}

/// Environment every test server gets: small io_uring memory so many servers fit under the
/// locked-memory cap, quiet logs, and no admission control: the test harness runs many servers
/// and clients at once on few cores, and the time each server waits for a core is queueing delay
/// it would refuse requests for. `tests/overload.rs` turns it on (its settings come later).
const BASE_ENV: &[(&str, &str)] = &[
    ("SHARDPAY_OVERLOAD_ENABLED", "false"),
    ("SHARDPAY_SERVER_IO_MEMORY_BYTES", "262144"),
    ("SHARDPAY_STORAGE_SEGMENT_BYTES", "1048576"),
    ("RUST_LOG", "warn"),
];

/// With `TEST_STORAGE_BACKEND=scylla` (and `CASSANDRA_NODE`), every test server keeps its state in
/// the Cassandra node instead of a write-ahead log: scripts/test.sh runs the API contract tests
/// (tests/auth.rs, money.rs, payments.rs) a second time so. Each data directory maps to a keyspace
/// of its own (migrated before the start), so a test that restarts a server on its data directory
/// finds its state again. `None`: the embedded log, as the test asked.
fn scylla_env(env: &[(&str, &str)], data_dir: &std::path::Path) -> Option<Vec<(String, String)>> {
    if std::env::var("TEST_STORAGE_BACKEND").ok().as_deref() != Some("scylla")
        || env.iter().any(|(name, _)| *name == "SHARDPAY_STORAGE_BACKEND")
    {
        return None;
    }
    let node = std::env::var("CASSANDRA_NODE").expect("TEST_STORAGE_BACKEND=scylla needs CASSANDRA_NODE");
    // A keyspace name from the data directory: the same directory, the same keyspace.
    let hash = data_dir
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let keyspace = format!("t_api_{hash:016x}");
    migrate_keyspace(&node, &keyspace);
    Some(vec![
        ("SHARDPAY_STORAGE_BACKEND".into(), "scylla".into()),
        ("SHARDPAY_SCYLLA_NODES".into(), node),
        ("SHARDPAY_SCYLLA_KEYSPACE".into(), keyspace),
        // Long enough that a busy test node never lets a live server's lease lapse, short
        // enough that a restart after a kill waits little.
        ("SHARDPAY_SCYLLA_LEASE_SECONDS".into(), "10".into()),
    ])
}

/// Runs `shardpay db migrate` for `keyspace` on the Cassandra node `node` (host:port); a failure
/// fails the test with the command's stderr.
pub fn migrate_keyspace(node: &str, keyspace: &str) {
    let migrated = Command::new(binary())
        .args(["db", "migrate"])
        .env("SHARDPAY_SCYLLA_NODES", node)
        .env("SHARDPAY_SCYLLA_KEYSPACE", keyspace)
        .output()
        .expect("run shardpay db migrate");
    assert!(
        migrated.status.success(),
        "shardpay db migrate: {}",
        String::from_utf8_lossy(&migrated.stderr)
    );
}

/// The sum over shards (and other labels) of the samples of metric `name` in a /metrics text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The USD balance a user's token sees (0 when the user never held USD).
pub fn usd_balance(port: u16, token: &str) -> u64 {
    let response = get_with(port, "/v1/balances", &[&format!("Authorization: Bearer {token}")]);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["data"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["currency"] == "USD"))
        .and_then(|row| row["available"].as_u64())
        .unwrap_or(0)
}

/// A new empty directory under the system's temporary directory.
pub fn temp_dir(purpose: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("shardpay-{purpose}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    /// Starts `shards` shards with extra `SHARDPAY_…` settings and waits until `/readyz` is 200.
    pub fn start(shards: usize, env: &[(&str, &str)]) -> Server {
        Self::start_with(shards, env, |_| {})
    }

    /// As [`Server::start`], letting the caller adjust the command (e.g. resource limits).
    pub fn start_with(shards: usize, env: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> Server {
        Self::start_full(shards, env, None, adjust)
    }

    /// A server whose public address and/or shard ports speak TLS with `certs`.
    pub fn start_tls(
        shards: usize,
        env: &[(&str, &str)],
        certs: &tls::Certs,
        public: bool,
        shard_ports: bool,
    ) -> Server {
        let client = tls::client_config(&certs.ca());
        Self::start_tls_checked_by(shards, env, certs, public, shard_ports, client)
    }

    /// As [`Server::start_tls`] for a certificate that clients refuse (expired, wrong host,
    /// unknown issuer): readiness is checked with a client that accepts any certificate.
    pub fn start_tls_unverified(
        shards: usize,
        env: &[(&str, &str)],
        certs: &tls::Certs,
        public: bool,
        shard_ports: bool,
    ) -> Server {
        let client = tls::accept_any_certificate();
        Self::start_tls_checked_by(shards, env, certs, public, shard_ports, client)
    }

    /// A TLS server whose readiness is checked with `client`.
    fn start_tls_checked_by(
        shards: usize,
        env: &[(&str, &str)],
        certs: &tls::Certs,
        public: bool,
        shard_ports: bool,
        client: std::sync::Arc<rustls::ClientConfig>,
    ) -> Server {
        let tls_env = certs.env(public, shard_ports);
        let mut all: Vec<(&str, &str)> = tls_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(env);
        let listeners = TlsListeners {
            client,
            public,
            shard_ports,
        };
        Self::start_full(shards, &all, Some(listeners), |_| {})
    }

    fn start_full(
        shards: usize,
        env: &[(&str, &str)],
        tls: Option<TlsListeners>,
        adjust: impl FnOnce(&mut Command),
    ) -> Server {
        let port = free_port();
        let shard_port_base = free_port_range(shards);
        let stderr_path =
            std::env::temp_dir().join(format!("shardpay-test-{}-{port}.log", std::process::id()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        // Each server its own data directory, unless the test names one (restarts).
        let given = env
            .iter()
            .find(|(name, _)| *name == "SHARDPAY_STORAGE_DATA_DIR")
            .map(|(_, dir)| std::path::PathBuf::from(dir));
        let owns_data_dir = given.is_none();
        let data_dir = given.unwrap_or_else(|| temp_dir("data"));
        let scylla = scylla_env(env, &data_dir);
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--shard-port-base")
            .arg(shard_port_base.to_string())
            .arg("--shards")
            .arg(shards.to_string())
            .envs(BASE_ENV.iter().copied())
            .env("SHARDPAY_STORAGE_DATA_DIR", &data_dir)
            .envs(env.iter().copied())
            .envs(scylla.iter().flatten().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        adjust(&mut command);
        let child = command.spawn().expect("start shardpay");
        let mut server = Server {
            child: Some(child),
            port,
            shard_port_base,
            shards,
            stderr_path,
            data_dir,
            owns_data_dir,
            tls,
            on_scylla: scylla.is_some()
                || env
                    .iter()
                    .any(|(name, value)| *name == "SHARDPAY_STORAGE_BACKEND" && *value == "scylla"),
            keyspace: scylla.as_ref().and_then(|env| {
                env.iter()
                    .find(|(name, _)| name == "SHARDPAY_SCYLLA_KEYSPACE")
                    .map(|(_, keyspace)| keyspace.clone())
            }),
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        // On the ScyllaDB backend a start also takes the slot leases (256 lightweight
        // transactions) and loads 16384 slots from a test node that other tests keep busy.
        let limit = if self.on_scylla { 90 } else { 20 };
        let deadline = Instant::now() + Duration::from_secs(limit);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("shardpay exited during start-up ({status}): {}", self.stderr());
            }
            if let Ok(response) = self.try_get_on(self.port, "/readyz") {
                if response.status == 200 {
                    // Every shard's own port must be up too.
                    if (0..self.shards)
                        .all(|shard| self.try_get_on(self.shard_port(shard), "/healthz").is_ok())
                    {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "shardpay not ready in time: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One GET on a fresh connection to `port`, over TLS if that listener speaks it.
    pub fn try_get_on(&self, port: u16, path: &str) -> std::io::Result<Response> {
        match &self.tls {
            Some(tls) if (port == self.port && tls.public) || (port != self.port && tls.shard_ports) => {
                tls::try_get(port, &tls.client, path)
            }
            _ => try_get(port, path),
        }
    }

    /// The shard-aware port of `shard`.
    pub fn shard_port(&self, shard: usize) -> u16 {
        self.shard_port_base + shard as u16
    }

    /// A new connection to the public port.
    pub fn connect(&self) -> Client {
        Client::connect(self.port)
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
        if self.owns_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
            // Its keyspace too (TEST_STORAGE_BACKEND=scylla): hundreds of tables left behind
            // would exhaust the test node's heap.
            if let Some(keyspace) = self.keyspace.take() {
                drop_keyspace(&keyspace);
            }
        }
    }
}

/// Drops a test keyspace (best effort).
fn drop_keyspace(keyspace: &str) {
    let Ok(node) = std::env::var("CASSANDRA_NODE") else {
        return;
    };
    let config = shardpay::config::ScyllaConfig {
        nodes: node,
        keyspace: keyspace.to_string(),
        ..shardpay::config::ScyllaConfig::default()
    };
    let Ok(runtime) = shardpay::storage::scylla::runtime() else {
        return;
    };
    runtime.block_on(async {
        if let Ok(session) = shardpay::storage::scylla::connect(&config).await {
            let _ = session
                .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
                .await;
        }
    });
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text()))
    }
}

/// A raw HTTP/1.1 client connection.
pub struct Client {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    /// A client on an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Writes raw bytes, ignoring errors (the server may already have closed).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Reads one response; `head_only` for responses to HEAD (no body whatever the length).
    pub fn read_response_for(&mut self, head_only: bool) -> Response {
        self.try_read_response(head_only).expect("a response")
    }

    /// Reads one response.
    pub fn read_response(&mut self) -> Response {
        self.read_response_for(false)
    }

    /// Reads one response, or `None` if the connection ends first.
    pub fn try_read_response(&mut self, head_only: bool) -> Option<Response> {
        loop {
            if let Some((response, used)) = parse_response(&self.buffer, head_only) {
                self.buffer.drain(..used);
                if response.status == 100 {
                    continue;
                }
                return Some(response);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == ErrorKind::ConnectionReset => return None,
                Err(error) => panic!("read failed: {error}"),
            }
        }
    }

    /// Reads an interim `100 Continue`, or panics.
    pub fn read_continue(&mut self) {
        loop {
            if self.buffer.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n") {
                self.buffer.drain(..25);
                return;
            }
            assert!(
                self.buffer.len() < 25,
                "expected 100 Continue, got {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
            let mut chunk = [0u8; 1024];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "closed before 100 Continue");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// True if the server closes the connection (EOF or reset) within the read timeout, with
    /// no further response bytes.
    pub fn closed(&mut self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                false
            }
            Err(error) => matches!(
                error.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
            ),
        }
    }

    /// Sends a GET with `Host` and returns the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_response()
    }
}

fn parse_response(buffer: &[u8], head_only: bool) -> Option<(Response, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_length = match response.parse(buffer).expect("a valid response head") {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial => return None,
    };
    let status = response.code.unwrap();
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.parse().expect("numeric Content-Length"))
        .unwrap_or(0);
    let body_length = if head_only || status == 100 || status == 204 {
        0
    } else {
        length
    };
    if buffer.len() < head_length + body_length {
        return None;
    }
    let body = buffer[head_length..head_length + body_length].to_vec();
    Some((
        Response {
            status,
            headers,
            body,
        },
        head_length + body_length,
    ))
}

/// A POST with extra header lines (`"Name: value"`) and a body, on a fresh connection.
pub fn post(port: u16, path: &str, headers: &[&str], body: &str) -> Response {
    let mut client = Client::connect(port);
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        raw.push_str(header);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    client.send(raw.as_bytes());
    client.read_response()
}

/// A GET with extra header lines (`"Name: value"`), on a fresh connection.
pub fn get_with(port: u16, path: &str, headers: &[&str]) -> Response {
    let mut client = Client::connect(port);
    let mut raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\n");
    for header in headers {
        raw.push_str(header);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    client.send(raw.as_bytes());
    client.read_response()
}

/// One GET on a fresh connection.
pub fn try_get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut buffer = Vec::new();
    stream.read_to_end(&mut buffer)?;
    parse_response(&buffer, false)
        .map(|(response, _)| response)
        .ok_or_else(|| std::io::Error::new(ErrorKind::UnexpectedEof, "incomplete response"))
}

/// One GET on a fresh connection; panics on failure.
pub fn get(port: u16, path: &str) -> Response {
    try_get(port, path).unwrap_or_else(|error| panic!("GET {path} on port {port}: {error}"))
}
