//! https: the client side of TLS for the set-up client and the workers, with rustls (ring
//! provider, TLS 1.2 and 1.3), the CA certificates of `--cacert` as the only roots, the server
//! name verified, ALPN `http/1.1`, and a client session cache (`--tls-resumption on`) or none.
//!
//! There is no insecure mode: an https run always verifies the server's certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Serialize;

/// Server names whose sessions a client session cache keeps (one per name; rustls keeps up to
/// 8 TLS 1.3 tickets per name). A run talks to one name.
const SESSION_CACHE_NAMES: usize = 16;

/// What `--cacert`, `--tls-server-name` and `--tls-resumption` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file of the CA certificates to trust.
    pub cacert: PathBuf,
    /// The name the server's certificate must be valid for: a DNS name or an IP address.
    pub server_name: String,
    /// Keep a client session cache (tickets and session ids) and resume sessions.
    pub resumption: bool,
}

/// A TLS client configuration: roots, server name, session cache. Cloning shares the session
/// cache; [`TlsClient::with_own_session_cache`] makes one that does not.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    settings: TlsSettings,
}

/// A TLS set-up that cannot be used (unreadable or empty CA file, bad server name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfigError(pub String);

impl std::fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsConfigError {}

/// Reads every certificate of the PEM file `path` into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|error| TlsConfigError(format!("--cacert {shown}: {error}")))?;
    let mut roots = RootCertStore::empty();
    for (index, certificate) in iter.enumerate() {
        let certificate = certificate.map_err(|error| {
            TlsConfigError(format!("--cacert {shown}: certificate {}: {error}", index + 1))
        })?;
        roots.add(certificate).map_err(|error| {
            TlsConfigError(format!(
                "--cacert {shown}: certificate {} is not a usable CA certificate: {error}",
                index + 1
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError(format!(
            "--cacert {shown}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"
        )));
    }
    Ok(roots)
}

impl TlsClient {
    /// A client for `settings`.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsConfigError> {
        let server_name = ServerName::try_from(settings.server_name.clone()).map_err(|_| {
            TlsConfigError(format!(
                "TLS server name '{}' is neither a DNS name nor an IP address",
                settings.server_name
            ))
        })?;
        let roots = load_roots(&settings.cacert)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsConfigError(format!("TLS configuration: {error}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = resumption(settings.resumption);
        Ok(Self {
            config: Arc::new(config),
            server_name,
            settings: settings.clone(),
        })
    }

    /// The same configuration with a session cache of its own (each worker thread gets one, so
    /// that no lock is shared between threads).
    pub fn with_own_session_cache(&self) -> Self {
        let mut config = (*self.config).clone();
        config.resumption = resumption(self.settings.resumption);
        Self {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
            settings: self.settings.clone(),
        }
    }

    /// A new client connection (nothing sent yet).
    pub fn connect(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
    }

    /// What the client was made of.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }
}

fn resumption(on: bool) -> Resumption {
    if on {
        // TLS 1.3 tickets, TLS 1.2 session ids and tickets.
        Resumption::in_memory_sessions(SESSION_CACHE_NAMES)
    } else {
        Resumption::disabled()
    }
}

/// What a handshake agreed on, for the report (recorded from the first handshake of a worker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Negotiated {
    /// e.g. `TLSv1_3`.
    pub protocol: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// The ALPN protocol the server chose (`null`: none).
    pub alpn: Option<String>,
}

impl Negotiated {
    /// What `connection` (whose handshake is done) agreed on.
    pub fn of(connection: &ClientConnection) -> Self {
        Self {
            protocol: connection
                .protocol_version()
                .map_or_else(|| "unknown".into(), |version| format!("{version:?}")),
            cipher_suite: connection
                .negotiated_cipher_suite()
                .map_or_else(|| "unknown".into(), |suite| format!("{:?}", suite.suite())),
            alpn: connection
                .alpn_protocol()
                .map(|alpn| String::from_utf8_lossy(alpn).into_owned()),
        }
    }
}

/// Whether the finished handshake of `connection` resumed a session.
pub fn resumed(connection: &ClientConnection) -> bool {
    connection.handshake_kind() == Some(HandshakeKind::Resumed)
}

/// The rustls error inside an I/O error from a TLS stream, if it is one.
pub fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

#[cfg(test)]
pub(crate) mod test_server {
    //! An in-process HTTP/1.1 server for the tests, over TLS (rustls) or plain TCP: a thread per
    //! connection, answering `GET /json` with the body the `json` kind expects, `/v1/cluster`
    //! with 404, and honouring `Connection: close`.

    use std::io::{ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
    use rustls::ServerConfig;
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A CA and a server certificate it signed for `localhost` and 127.0.0.1.
    pub struct Certificates {
        /// The CA certificate, PEM.
        pub ca_pem: String,
        /// The server certificate, DER.
        pub server: rustls_pki_types::CertificateDer<'static>,
        /// The server key, PKCS#8 DER.
        pub server_key: Vec<u8>,
    }

    impl Certificates {
        /// A new CA and server certificate.
        pub fn new() -> Self {
            let ca_key = KeyPair::generate().unwrap();
            let mut ca_params = CertificateParams::default();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // A name of its own: a CA of the same name would be taken for the issuer (and the
            // certificate refused as BadSignature rather than UnknownIssuer).
            static NEXT_CA: AtomicU64 = AtomicU64::new(0);
            let name = format!(
                "shardpay-bench test CA {}",
                NEXT_CA.fetch_add(1, Ordering::Relaxed)
            );
            ca_params.distinguished_name.push(DnType::CommonName, name);
            ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let server_key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
            Self {
                ca_pem: ca.pem(),
                server: server.der().clone(),
                server_key: server_key.serialize_der(),
            }
        }

        /// Writes the CA certificate to a new file in a fresh temporary directory.
        pub fn write_ca(&self, name: &str) -> TempFile {
            write_temp(name, self.ca_pem.as_bytes())
        }
    }

    /// A file in a temporary directory of its own, removed (with the directory) when dropped.
    pub struct TempFile {
        dir: PathBuf,
        path: PathBuf,
    }

    impl std::ops::Deref for TempFile {
        type Target = std::path::Path;

        fn deref(&self) -> &std::path::Path {
            &self.path
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Writes `contents` to `name` in a fresh temporary directory.
    pub fn write_temp(name: &str, contents: &[u8]) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardpay-bench-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile { dir, path }
    }

    /// Which TLS versions the test server speaks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Versions {
        /// TLS 1.2 and 1.3 (1.3 is chosen).
        Both,
        /// TLS 1.2 only (session-id resumption).
        Tls12,
    }

    /// A running test server; stops accepting when dropped.
    pub struct TestServer {
        /// Where it listens.
        pub address: SocketAddr,
        /// Connections accepted.
        pub accepted: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            // Wake the accept loop.
            let _ = TcpStream::connect(self.address);
        }
    }

    impl TestServer {
        /// A TLS server with `certificates`.
        pub fn tls(certificates: &Certificates, versions: Versions) -> Self {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = ServerConfig::builder_with_provider(provider);
            let builder = match versions {
                Versions::Both => builder.with_safe_default_protocol_versions().unwrap(),
                Versions::Tls12 => builder
                    .with_protocol_versions(&[&rustls::version::TLS12])
                    .unwrap(),
            };
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certificates.server_key.clone()));
            let mut config = builder
                .with_no_client_auth()
                .with_single_cert(vec![certificates.server.clone()], key)
                .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Self::start(Some(Arc::new(config)))
        }

        /// A plain-TCP server.
        pub fn plain() -> Self {
            Self::start(None)
        }

        fn start(config: Option<Arc<ServerConfig>>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let accepted = Arc::new(AtomicU64::new(0));
            let (stop_flag, counter) = (Arc::clone(&stop), Arc::clone(&accepted));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop_flag.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let config = config.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_nodelay(true);
                        let _ = match config {
                            Some(config) => {
                                let connection = rustls::ServerConnection::new(config).unwrap();
                                serve(rustls::StreamOwned::new(connection, stream))
                            }
                            None => serve(stream),
                        };
                    });
                }
            });
            Self {
                address,
                accepted,
                stop,
            }
        }
    }

    /// Answers requests (heads only; bodies are not expected) until the client closes.
    fn serve<S: Conn>(mut stream: S) -> std::io::Result<()> {
        let mut buffer: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if !buffer.is_empty() && !buffer[0].is_ascii_uppercase() {
                // Not HTTP (a TLS ClientHello on the plain server): what an HTTP server says.
                stream.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return stream.close_notify();
            }
            let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") else {
                match stream.read(&mut chunk) {
                    Ok(0) => return Ok(()),
                    Ok(read) => {
                        buffer.extend_from_slice(&chunk[..read]);
                        continue;
                    }
                    Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                    Err(error) => return Err(error),
                }
            };
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            if !head.starts_with("get ") {
                stream.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                return stream.close_notify();
            }
            buffer.drain(..end + 4);
            let close = head.contains("\r\nconnection: close");
            let (status, body): (&str, &[u8]) = if head.starts_with("get /json ") {
                ("200 OK", br#"{"message":"Hello, World!"}"#)
            } else {
                ("404 Not Found", b"not found")
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
                body.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            let mut bytes = response.into_bytes();
            bytes.extend_from_slice(body);
            stream.write_all(&bytes)?;
            stream.flush()?;
            if close {
                // close_notify (TLS), then FIN: the stream is dropped.
                return stream.close_notify();
            }
        }
    }

    /// A connection the test server answers on: plain TCP, or TLS which says close_notify first.
    trait Conn: Read + Write {
        fn close_notify(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Conn for TcpStream {}

    impl Conn for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
        fn close_notify(&mut self) -> std::io::Result<()> {
            self.conn.send_close_notify();
            self.flush()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{write_temp, Certificates, TestServer, Versions};
    use super::*;
    use crate::client::{BlockingClient, ClientError};

    fn settings(cacert: &Path, server_name: &str, resumption: bool) -> TlsSettings {
        TlsSettings {
            cacert: cacert.to_path_buf(),
            server_name: server_name.into(),
            resumption,
        }
    }

    #[test]
    fn unusable_ca_files_are_refused_with_the_reason() {
        let missing = settings(Path::new("/nonexistent/ca.pem"), "localhost", true);
        let error = TlsClient::new(&missing).unwrap_err().to_string();
        assert!(error.contains("--cacert /nonexistent/ca.pem"), "{error}");
        let file = write_temp("empty.pem", b"");
        let empty = settings(&file, "localhost", true);
        let error = TlsClient::new(&empty).unwrap_err().to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        let file = write_temp(
            "key.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let key_only = settings(&file, "localhost", true);
        let error = TlsClient::new(&key_only).unwrap_err().to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        let file = write_temp(
            "bad.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let garbage = settings(&file, "localhost", true);
        let error = TlsClient::new(&garbage).unwrap_err().to_string();
        assert!(error.contains("certificate 1"), "{error}");
        let certificates = Certificates::new();
        let ca = certificates.write_ca("ca.pem");
        let bad_name = settings(&ca, "not a name!", true);
        let error = TlsClient::new(&bad_name).unwrap_err().to_string();
        assert!(error.contains("neither a DNS name nor an IP address"), "{error}");
    }

    #[test]
    fn the_set_up_client_speaks_https_and_verifies_the_server() {
        let certificates = Certificates::new();
        let server = TestServer::tls(&certificates, Versions::Both);
        let ca = certificates.write_ca("ca.pem");
        for name in ["127.0.0.1", "localhost"] {
            let tls = TlsClient::new(&settings(&ca, name, true)).unwrap();
            let mut client = BlockingClient::new(server.address, "localhost", Some(tls));
            for _ in 0..3 {
                let reply = client.request("GET", "/json", &[], None).unwrap();
                assert_eq!(reply.status, 200);
                assert_eq!(reply.body, br#"{"message":"Hello, World!"}"#);
            }
        }

        // Another CA: the certificate is refused, with rustls's words.
        let other = Certificates::new().write_ca("other-ca.pem");
        let tls = TlsClient::new(&settings(&other, "localhost", true)).unwrap();
        let mut client = BlockingClient::new(server.address, "localhost", Some(tls));
        let error = client.request("GET", "/json", &[], None).unwrap_err();
        assert!(matches!(error, ClientError::Tls(_)), "{error:?}");
        let text = error.to_string();
        assert!(
            text.contains("invalid peer certificate") && text.contains("UnknownIssuer"),
            "{text}"
        );

        // A name the certificate is not valid for.
        let tls = TlsClient::new(&settings(&ca, "shardpay.example", true)).unwrap();
        let mut client = BlockingClient::new(server.address, "localhost", Some(tls));
        let text = client.request("GET", "/json", &[], None).unwrap_err().to_string();
        assert!(
            text.contains("certificate not valid for name \"shardpay.example\""),
            "{text}"
        );
    }

    #[test]
    fn a_plaintext_server_behind_https_is_a_tls_error() {
        let server = TestServer::plain();
        let ca = Certificates::new().write_ca("ca.pem");
        let tls = TlsClient::new(&settings(&ca, "localhost", true)).unwrap();
        let mut client = BlockingClient::new(server.address, "localhost", Some(tls));
        let text = client.request("GET", "/json", &[], None).unwrap_err().to_string();
        assert!(text.starts_with("TLS: "), "{text}");

        // And the other way round: plain HTTP to a TLS server.
        let certificates = Certificates::new();
        let server = TestServer::tls(&certificates, Versions::Both);
        let mut client = BlockingClient::new(server.address, "localhost", None);
        let error = client.request("GET", "/json", &[], None).unwrap_err();
        assert!(matches!(error, ClientError::TlsAnswer), "{error:?}");
        assert!(error.to_string().contains("use an https:// URL"), "{error}");
    }

    /// Runs `connections` fresh connections one after the other and counts the resumed ones.
    fn resumed_of(server: &TestServer, tls: &TlsClient, connections: usize) -> usize {
        let mut resumed_count = 0;
        for _ in 0..connections {
            let mut connection = tls.connect().unwrap();
            let mut socket = std::net::TcpStream::connect(server.address).unwrap();
            let mut stream = rustls::Stream::new(&mut connection, &mut socket);
            use std::io::{Read, Write};
            stream
                .write_all(b"GET /json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
            assert!(!connection.is_handshaking());
            assert_eq!(connection.alpn_protocol(), Some(&b"http/1.1"[..]));
            resumed_count += usize::from(resumed(&connection));
        }
        resumed_count
    }

    #[test]
    fn sessions_resume_only_with_resumption_on() {
        let certificates = Certificates::new();
        let ca = certificates.write_ca("ca.pem");
        for versions in [Versions::Both, Versions::Tls12] {
            let server = TestServer::tls(&certificates, versions);
            let on = TlsClient::new(&settings(&ca, "localhost", true)).unwrap();
            assert_eq!(resumed_of(&server, &on, 4), 3, "{versions:?}: all but the first");
            // A worker's own cache starts empty.
            assert_eq!(
                resumed_of(&server, &on.with_own_session_cache(), 2),
                1,
                "{versions:?}"
            );
            let off = TlsClient::new(&settings(&ca, "localhost", false)).unwrap();
            assert_eq!(resumed_of(&server, &off, 3), 0, "{versions:?}");
        }
    }

    fn https_config(server: &TestServer, cacert: &Path) -> crate::run::RunConfig {
        let url = format!("https://127.0.0.1:{}", server.address.port());
        let mut config = crate::run::RunConfig::new(&url, crate::scenario::Scenario::Json);
        config.cacert = Some(cacert.to_path_buf());
        config.connections = 4;
        config.threads = 1;
        config.warmup = std::time::Duration::from_millis(100);
        config.duration = std::time::Duration::from_millis(500);
        config
    }

    fn assert_clean(report: &crate::run::Report) {
        assert_eq!(report.errors, 0, "errors: {:#?}", report.errors_by_kind);
        assert_eq!(report.failed, 0);
        assert!(report.ok > 0, "no answers");
    }

    #[test]
    fn keep_alive_https_runs_check_every_answer() {
        let certificates = Certificates::new();
        let server = TestServer::tls(&certificates, Versions::Both);
        let ca = certificates.write_ca("ca.pem");
        let config = https_config(&server, &ca);
        let report = crate::run::run(&config).unwrap();
        assert_clean(&report);
        let tls = report.tls.as_ref().expect("an https run reports its TLS");
        assert_eq!(tls.server_name, "127.0.0.1");
        assert!(tls.resumption);
        let negotiated = tls.negotiated.as_ref().expect("handshakes were made");
        assert_eq!(negotiated.protocol, "TLSv1_3");
        assert_eq!(negotiated.alpn.as_deref(), Some("http/1.1"));
        // Keep-alive: the 4 connections were set up before the window (during the warm-up).
        assert_eq!(report.connects, 4);
        assert!(report.handshakes.resumed.is_some());
        assert!(!report.new_connection_per_request);
        // The set-up client's connection and the workers'.
        assert_eq!(server.accepted.load(std::sync::atomic::Ordering::Relaxed), 5);
        let text = crate::report::summary(&report);
        assert!(text.contains("TLS: server name 127.0.0.1"), "{text}");
        assert!(text.contains("negotiated TLSv1_3"), "{text}");
    }

    #[test]
    fn a_new_connection_per_request_counts_handshakes_and_resumptions() {
        let certificates = Certificates::new();
        let ca = certificates.write_ca("ca.pem");
        for versions in [Versions::Both, Versions::Tls12] {
            let server = TestServer::tls(&certificates, versions);
            for resumption in [true, false] {
                let mut config = https_config(&server, &ca);
                config.new_connection_per_request = true;
                config.tls_resumption = resumption;
                config.tls_server_name = Some("localhost".into());
                let report = crate::run::run(&config).unwrap();
                let case = format!("{versions:?}, resumption {resumption}");
                assert_clean(&report);
                assert!(report.new_connection_per_request);
                let handshakes = &report.handshakes;
                assert!(handshakes.completed > 0, "{case}: {handshakes:?}");
                // One request per connection: as many connections as answers, give or take the
                // connections cut by the window's edges.
                assert!(
                    report.connects >= report.ok,
                    "{case}: {} connects, {} answers",
                    report.connects,
                    report.ok
                );
                let resumed = handshakes.resumed.expect("https reports resumptions");
                if resumption {
                    assert!(resumed > 0, "{case}: {handshakes:?}");
                } else {
                    assert_eq!(resumed, 0, "{case}");
                }
                let protocol = &report.tls.as_ref().unwrap().negotiated.as_ref().unwrap().protocol;
                let expected = if versions == Versions::Tls12 {
                    "TLSv1_2"
                } else {
                    "TLSv1_3"
                };
                assert_eq!(protocol, expected, "{case}");
                let text = crate::report::summary(&report);
                assert!(
                    text.contains("a new connection per request") && text.contains("TLS handshakes: "),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn a_new_connection_per_request_follows_an_open_loop_schedule() {
        let certificates = Certificates::new();
        let server = TestServer::tls(&certificates, Versions::Both);
        let ca = certificates.write_ca("ca.pem");
        let mut config = https_config(&server, &ca);
        config.new_connection_per_request = true;
        config.rate = Some(200.0);
        let report = crate::run::run(&config).unwrap();
        assert_clean(&report);
        assert_eq!(report.mode, "open");
        assert!(report.handshakes.completed > 0);
        assert!(report.handshakes.resumed > Some(0), "{:?}", report.handshakes);
        assert!(
            report.connects >= report.ok,
            "{} connects, {} answers",
            report.connects,
            report.ok
        );
    }

    #[test]
    fn a_new_connection_per_request_works_over_plain_http() {
        let server = TestServer::plain();
        let url = format!("http://127.0.0.1:{}", server.address.port());
        let mut config = crate::run::RunConfig::new(&url, crate::scenario::Scenario::Json);
        config.connections = 4;
        config.threads = 1;
        config.warmup = std::time::Duration::from_millis(100);
        config.duration = std::time::Duration::from_millis(500);
        config.new_connection_per_request = true;
        let report = crate::run::run(&config).unwrap();
        assert_clean(&report);
        assert!(report.tls.is_none());
        assert!(report.handshakes.completed > 0);
        assert_eq!(report.handshakes.resumed, None);
        assert_eq!(report.handshakes.resumed_share, None);
        assert!(server.accepted.load(std::sync::atomic::Ordering::Relaxed) > report.ok);
        let text = crate::report::summary(&report);
        assert!(text.contains("connections set up: "), "{text}");
    }

    #[test]
    fn tls_failures_are_errors_of_the_run_not_panics() {
        let certificates = Certificates::new();
        let server = TestServer::tls(&certificates, Versions::Both);
        let other_ca = Certificates::new().write_ca("other.pem");
        // The set-up client meets the certificate first.
        match crate::run::run(&https_config(&server, &other_ca)) {
            Err(crate::run::RunError::Setup(error)) => {
                let text = error.to_string();
                assert!(text.contains("TLS: invalid peer certificate"), "{text}");
            }
            other => panic!("expected a set-up error, got {other:?}"),
        }
        // The workers report theirs by kind, with rustls's words.
        let workload = Arc::new(crate::scenario::Workload {
            mix: crate::scenario::Scenario::Json.mix(None),
            users: crate::scenario::UserSet::new(Vec::new(), 1),
            login_users: crate::scenario::UserSet::new(Vec::new(), 1),
            shards: 1,
            cross_shard_ratio: None,
            host_header: b"Host: localhost\r\n".to_vec(),
            run_prefix: "t".into(),
            password: "unused-password".into(),
            currency: "USD".into(),
            payment_amount: 1,
        });
        let tls = TlsClient::new(&settings(&other_ca, "localhost", true)).unwrap();
        let start_ns = crate::clock::now_ns();
        let plan = crate::worker::WorkerPlan {
            thread: 0,
            cpu: None,
            connections: vec![crate::worker::ConnectionPlan {
                address: server.address,
                shard: None,
            }],
            depth: 1,
            rate_per_connection: None,
            start_ns,
            measure_start_ns: start_ns,
            end_ns: start_ns + 300_000_000,
            tls: Some(tls),
            one_request_per_connection: false,
            timeline: false,
        };
        let generator = crate::scenario::Generator::new(workload, 0, 1);
        let result = crate::worker::run(plan, generator, Arc::default()).unwrap();
        let error = result.errors.get("tls").expect("TLS errors reported");
        assert!(error.count > 0);
        assert!(
            error.example.contains("invalid peer certificate: UnknownIssuer"),
            "{}",
            error.example
        );
        assert_eq!(result.handshakes, 0);
        assert!(result.kinds.iter().all(|kind| kind.ok == 0));
    }
}
