//! A serving process from start to stop: plan the shards, and on each one bind its listeners
//! (the public address with SO_REUSEPORT and its shard-aware port), build its API, accept until a
//! shutdown signal, then drain within the deadline. Wiring only: no request handling here.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{Api, ROUTE_NAMES};
use crate::config::{Config, ConfigError};
use crate::http::connection::Settings;
use crate::net::tls::{self, Certificates};
use crate::net::{self, Listener};
use crate::shard::{self, Launch, ScyllaShared, Shard, ShardError};
use crate::storage::scylla::node::Node;

/// How to start, beyond the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Truncate a log damaged in the middle instead of refusing to start (`--repair`).
    pub repair: bool,
}

/// Recovers the stored state, serves until SIGINT or SIGTERM, then drains and returns.
pub fn serve(config: Config, options: ServeOptions) -> Result<(), ShardError> {
    let config = Arc::new(config);
    let mut launch = Launch::new(config.clone())?;
    match (config.storage.backend, config.storage.durability) {
        (crate::config::StorageBackend::Memory, _) => {
            tracing::warn!("storage.backend is \"memory\": nothing survives a restart")
        }
        (_, crate::config::Durability::None) => tracing::warn!(
            "storage.durability is \"none\": changes are answered before they are on disk, and a \
             crash loses the last ones (for benchmarks only)"
        ),
        _ => {}
    }
    // Certificates are checked before anything starts, so a bad pair fails at once.
    let tls = TlsShared::load(&config)?;
    let reloader = watch_sighup(tls.clone())?;
    // Recovery (and a resharding) can take a while: meanwhile the public address answers that
    // the server is starting, instead of refusing connections.
    let starting_tls = match &tls {
        Some(shared) if config.tls.public => Some(shared.acceptor(&config)?.server_config()),
        _ => None,
    };
    let starting = answer_while_starting(
        config.listen_addr(),
        config.server.backlog,
        launch.cluster.clone(),
        starting_tls,
    );
    launch.open_storage(options.repair)?;
    let scylla = match config.storage.backend {
        crate::config::StorageBackend::Scylla => {
            let node = Node::start(
                &config.scylla,
                &launch.cluster.node_id,
                launch.cluster.placement.slots(),
                |reason| {
                    tracing::error!(%reason, "the slot leases are lost: stopping at once");
                    eprintln!("shardpay: {reason}; stopping");
                    // Another node may serve these slots now: no drain, no more writes.
                    std::process::exit(1);
                },
            )
            .map_err(|error| ShardError::Storage(error.to_string()))?;
            launch.use_scylla(ScyllaShared {
                handle: node.handle.clone(),
                statements: node.statements.clone(),
                epochs: node.epochs.clone(),
                durable_limit: Duration::from_millis(config.scylla.request_timeout_ms),
                pending_frames_max: config.scylla.pending_frames_max,
            });
            Some(node)
        }
        _ => None,
    };
    // The first SIGINT or SIGTERM starts the drain; a second one while draining exits at once
    // with status 1 (handlers run in registration order, so the check sees the earlier signal).
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let flag = launch.cluster.shutdown_flag();
        signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())
            .and_then(|_| signal_hook::flag::register(signal, flag))
            .map_err(|error| ShardError::Spawn {
                shard: 0,
                message: format!("cannot install the signal handler: {error}"),
            })?;
    }
    let cluster = launch.cluster.clone();
    tracing::info!(
        node = %cluster.node_id,
        shards = cluster.shards,
        cpus = ?cluster.cpus,
        listen = %config.server.listen,
        shard_port_base = config.server.shard_port_base,
        storage = ?config.storage.backend,
        data_dir = %config.storage.data_dir,
        tls_public = config.tls.public,
        tls_shard_ports = config.tls.shard_ports,
        "starting"
    );
    // One argon2id hash (tens of ms), here rather than on every shard's executor.
    let dummy_hash: Arc<str> = crate::auth::password::dummy_hash(&config.auth.password_params())
        .expect("password parameters are validated at load")
        .into();
    let outcome = launch.run(ROUTE_NAMES, move |shard| {
        run_shard(shard, config.clone(), tls.clone(), dummy_hash.clone())
    });
    if let Some(starting) = starting {
        let _ = starting.join();
    }
    if let Some(node) = scylla {
        node.stop();
    }
    reloader.stop();
    outcome?;
    tracing::info!("stopped");
    Ok(())
}

/// What the shards share of TLS: the certificate pair (reloaded on SIGHUP) and the ticket keys.
#[derive(Clone)]
struct TlsShared {
    certificates: Arc<Certificates>,
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
}

impl TlsShared {
    /// `None` when no listener speaks TLS; an error naming the file when the pair is unusable.
    fn load(config: &Config) -> Result<Option<TlsShared>, ShardError> {
        if !config.tls.enabled() {
            return Ok(None);
        }
        let (certificates, info) = Certificates::load(&config.tls).map_err(|error| {
            let key = match &error {
                tls::CertificateError::Read { path, .. } | tls::CertificateError::Invalid { path, .. }
                    if path.as_os_str() == config.tls.key_path.as_str() =>
                {
                    "tls.key_path"
                }
                _ => "tls.cert_path",
            };
            ShardError::Config(ConfigError {
                key: key.to_string(),
                message: error.to_string(),
            })
        })?;
        log_certificate("TLS certificate loaded", &info);
        let ticketer = tls::ticketer(&config.tls).map_err(|error| ShardError::Spawn {
            shard: 0,
            message: format!("cannot make TLS ticket keys: {error}"),
        })?;
        Ok(Some(TlsShared {
            certificates,
            ticketer,
        }))
    }

    /// A shard's acceptor (its own rustls configuration and session cache).
    fn acceptor(&self, config: &Config) -> Result<tls::Acceptor, ShardError> {
        tls::Acceptor::new(&self.certificates, self.ticketer.clone(), &config.tls).map_err(|error| {
            ShardError::Spawn {
                shard: 0,
                message: format!("cannot configure TLS: {error}"),
            }
        })
    }
}

fn log_certificate(message: &str, info: &tls::CertificateInfo) {
    if info.valid_now {
        tracing::info!(
            subject = %info.subject,
            names = ?info.names,
            not_after = %info.not_after,
            sha256 = %info.sha256,
            chain = info.chain_length,
            "{message}"
        );
    } else {
        tracing::warn!(
            subject = %info.subject,
            names = ?info.names,
            not_before = %info.not_before,
            not_after = %info.not_after,
            sha256 = %info.sha256,
            "{message}, but it is not valid now: clients will refuse it"
        );
    }
}

/// The SIGHUP thread: reloads the certificate pair (when TLS is on) on every SIGHUP.
struct Reloader {
    handle: signal_hook::iterator::Handle,
    thread: std::thread::JoinHandle<()>,
}

impl Reloader {
    fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

/// Installs the SIGHUP handler (so SIGHUP never ends the process) and its thread.
fn watch_sighup(tls: Option<TlsShared>) -> Result<Reloader, ShardError> {
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]).map_err(|error| {
            ShardError::Spawn {
                shard: 0,
                message: format!("cannot install the SIGHUP handler: {error}"),
            }
        })?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                match &tls {
                    None => tracing::info!("SIGHUP: TLS is off, nothing to reload"),
                    Some(shared) => match shared.certificates.reload() {
                        Ok(info) => log_certificate("SIGHUP: TLS certificate reloaded", &info),
                        Err(error) => tracing::error!(
                            %error,
                            "SIGHUP: the new TLS certificate pair is refused; the current one stays"
                        ),
                    },
                }
            }
        })
        .map_err(|error| ShardError::Spawn {
            shard: 0,
            message: format!("cannot start the SIGHUP thread: {error}"),
        })?;
    Ok(Reloader { handle, thread })
}

/// Until the first shard is about to listen, a plain thread listens on the public address and
/// answers each request on its own connection: `/healthz` 200 `ok` (the process is alive),
/// anything else 503 `starting` with `Retry-After: 1`. Without it, nothing would listen while the
/// shards recover their state (the shards that are up then answer `/readyz` 503 themselves until
/// every shard is). Before closing it answers what is queued. `None` when the address cannot be
/// bound (the shards then report why).
fn answer_while_starting(
    address: SocketAddr,
    backlog: u32,
    cluster: Arc<shard::Cluster>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Option<std::thread::JoinHandle<()>> {
    let listener = net::bind_std(address, backlog).ok()?;
    cluster.open_starting();
    let spawned = std::thread::Builder::new().name("starting".into()).spawn({
        let cluster = cluster.clone();
        move || {
            loop {
                let stopping = cluster.starting_stop_requested() || cluster.shutdown_requested();
                match listener.accept() {
                    Ok((stream, _)) => answer_starting(stream, tls.as_ref()),
                    Err(_) if stopping => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            drop(listener);
            cluster.mark_starting_closed();
        }
    });
    match spawned {
        Ok(handle) => Some(handle),
        Err(_) => {
            cluster.mark_starting_closed();
            None
        }
    }
}

/// Reads one request head (at most 8 KiB, within a second) and answers it, closing; over TLS
/// when the public address speaks TLS.
fn answer_starting(stream: std::net::TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    match tls {
        None => answer_starting_on(stream),
        Some(config) => {
            let Ok(connection) = rustls::ServerConnection::new(config.clone()) else {
                return;
            };
            let mut stream = rustls::StreamOwned::new(connection, stream);
            answer_starting_on(&mut stream);
            stream.conn.send_close_notify();
            let _ = std::io::Write::flush(&mut stream);
        }
    }
}

fn answer_starting_on(mut stream: impl std::io::Read + std::io::Write) {
    let mut head = [0u8; 8192];
    let mut filled = 0;
    while filled < head.len() && !head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut head[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    let path = head[..filled].split(|&b| b == b' ').nth(1).unwrap_or_default();
    let response = if path == b"/healthz" {
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            .to_string()
    } else {
        let mut body = Vec::new();
        let error =
            crate::api::error::ApiError::unavailable("starting", "The server is recovering its state.");
        crate::api::error::encode_body(&error, "req_starting", &mut body);
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             retry-after: 1\r\nconnection: close\r\n\r\n{}",
            body.len(),
            String::from_utf8_lossy(&body)
        )
    };
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

/// One shard's life: listen, serve, drain.
async fn run_shard(
    shard: Rc<Shard>,
    config: Arc<Config>,
    tls: Option<TlsShared>,
    dummy_hash: Arc<str>,
) -> Result<(), String> {
    let acceptor = match &tls {
        Some(shared) => Some(Rc::new(
            shared.acceptor(&config).map_err(|error| error.to_string())?,
        )),
        None => None,
    };
    let public_tls = acceptor.clone().filter(|_| config.tls.public);
    let own_tls = acceptor.filter(|_| config.tls.shard_ports);
    let public = config.listen_addr();
    // The start-up responder closes before any shard listens on the public address, so that no
    // connection is queued on a listener that is about to close (it would be reset).
    shard.cluster.stop_starting();
    while !shard.cluster.starting_closed() {
        shard::sleep(Duration::from_millis(1)).await;
    }
    let own = SocketAddr::new(public.ip(), shard.info.port);
    let backlog = config.server.backlog;
    let public_listener = Listener::bind(public, backlog, true)
        .map_err(|error| format!("cannot listen on {public}: {error}"))?;
    // The shard-aware port is this shard's alone: no SO_REUSEPORT, so a second process fails here.
    let own_listener =
        Listener::bind(own, backlog, false).map_err(|error| format!("cannot listen on {own}: {error}"))?;
    let api = Rc::new(Api::new(shard.clone(), &config, &dummy_hash));
    let settings = Rc::new(Settings::from_config(&config));
    let write_timeout = Duration::from_millis(config.timeouts.write_timeout_ms);
    for (listener, tls) in [(public_listener, public_tls), (own_listener, own_tls)] {
        shard::spawn(net::accept_loop(
            listener,
            tls,
            api.clone(),
            shard.connections.clone(),
            settings.clone(),
            shard.metrics.clone(),
            write_timeout,
        ));
    }
    shard.mark_ready();
    tracing::info!(shard = shard.id(), cpu = shard.info.cpu, %public, port = shard.info.port, "shard serving");
    shard.connections.wait_draining().await;
    let open = shard.connections.open();
    tracing::info!(shard = shard.id(), open_connections = open, "draining");
    let deadline = Duration::from_millis(config.server.drain_timeout_ms);
    let drained = futures_lite::future::or(
        async {
            shard.connections.wait_closed().await;
            true
        },
        async {
            shard::sleep(deadline).await;
            false
        },
    )
    .await;
    if !drained {
        tracing::warn!(
            shard = shard.id(),
            open_connections = shard.connections.open(),
            "drain deadline passed; closing the remaining connections"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn ask(address: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn while_the_shards_recover_the_public_address_answers_starting() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = Config::default();
        config.server.listen = format!("127.0.0.1:{port}");
        let launch = Launch::new(Arc::new(config.clone())).unwrap();
        let responder =
            answer_while_starting(config.listen_addr(), 16, launch.cluster.clone(), None).unwrap();
        let ready = ask(config.listen_addr(), "/readyz");
        assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
        assert!(
            ready.contains("retry-after: 1") && ready.contains("\"code\":\"starting\""),
            "{ready}"
        );
        assert!(ask(config.listen_addr(), "/v1/balances").starts_with("HTTP/1.1 503"));
        let health = ask(config.listen_addr(), "/healthz");
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
            "{health}"
        );
        // It closes when a shard is about to listen, and says so.
        assert!(!launch.cluster.starting_closed());
        launch.cluster.stop_starting();
        responder.join().unwrap();
        assert!(launch.cluster.starting_closed());
    }

    #[test]
    fn the_start_up_responder_speaks_tls_when_the_public_address_does() {
        use rustls::pki_types::pem::PemObject;
        let dir = std::env::temp_dir().join(format!("shardpay-starting-tls-{}", std::process::id()));
        let names = ["localhost".to_string()];
        let generated = crate::certgen::generate(&dir, &names, 30).unwrap();
        let mut config = Config::default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        config.server.listen = format!("127.0.0.1:{port}");
        config.tls.public = true;
        config.tls.cert_path = generated.server_cert.display().to_string();
        config.tls.key_path = generated.server_key.display().to_string();
        let shared = TlsShared::load(&config).unwrap().unwrap();
        let server_config = shared.acceptor(&config).unwrap().server_config();
        let launch = Launch::new(Arc::new(config.clone())).unwrap();
        let responder = answer_while_starting(
            config.listen_addr(),
            16,
            launch.cluster.clone(),
            Some(server_config),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_file(&generated.ca_cert).unwrap())
            .unwrap();
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let connection = rustls::ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap();
        let tcp = std::net::TcpStream::connect(config.listen_addr()).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"code\":\"starting\""), "{answer}");
        launch.cluster.stop_starting();
        responder.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
