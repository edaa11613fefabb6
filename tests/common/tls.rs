//! TLS for the harness: development certificates (made by the real `shardpay gen-cert`, or by the
//! library's CA for odd certificates), and a blocking rustls client that checks the server's
//! certificate the way a real client does.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::{parse_response, Response};

/// A directory with `ca.pem`, `server.pem` and `server-key.pem`, made by `shardpay gen-cert`;
/// removed on drop.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// Runs the real `shardpay gen-cert` into a new temporary directory.
    pub fn generate() -> Certs {
        let dir = super::temp_dir("certs");
        Certs::generate_in(&dir);
        Certs { dir }
    }

    /// Runs `shardpay gen-cert --dir DIR` (reusing DIR's CA if it has one).
    pub fn generate_in(dir: &Path) {
        let output = std::process::Command::new(super::binary())
            .arg("gen-cert")
            .arg("--dir")
            .arg(dir)
            .output()
            .expect("run shardpay gen-cert");
        assert!(
            output.status.success(),
            "gen-cert failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }

    /// The environment that turns TLS on for the listeners asked for, with this pair.
    pub fn env(&self, public: bool, shard_ports: bool) -> Vec<(String, String)> {
        vec![
            ("SHARDPAY_TLS_PUBLIC".into(), public.to_string()),
            ("SHARDPAY_TLS_SHARD_PORTS".into(), shard_ports.to_string()),
            ("SHARDPAY_TLS_CERT_PATH".into(), self.cert().display().to_string()),
            ("SHARDPAY_TLS_KEY_PATH".into(), self.key().display().to_string()),
        ]
    }

    /// The server certificate's DER.
    pub fn server_der(&self) -> Vec<u8> {
        first_der(&self.cert())
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The DER of the first certificate in a PEM file.
pub fn first_der(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("a PEM file")
        .next()
        .expect("a certificate")
        .expect("a valid certificate")
        .to_vec()
}

/// Writes a server pair issued by `authority` for `names`, valid in `[not_before, not_after]`,
/// into `dir` as server.pem and server-key.pem.
pub fn write_pair(
    authority: &shardpay::certgen::Authority,
    dir: &Path,
    names: &[&str],
    not_before: SystemTime,
    not_after: SystemTime,
) {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let (cert, key) = authority.issue(&names, not_before, not_after).unwrap();
    shardpay::certgen::write_atomic(&dir.join("server-key.pem"), key.as_bytes(), 0o600).unwrap();
    shardpay::certgen::write_atomic(&dir.join("server.pem"), cert.as_bytes(), 0o644).unwrap();
}

/// A client configuration trusting only the CA certificates in `ca` (TLS 1.2 and 1.3, ALPN
/// http/1.1, the default session cache).
pub fn client_config(ca: &Path) -> Arc<ClientConfig> {
    client_config_with(ca, &[&rustls::version::TLS13, &rustls::version::TLS12])
}

/// As [`client_config`], with the given protocol versions.
pub fn client_config_with(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca).expect("a CA file") {
        roots.add(certificate.expect("a CA certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to a test server.
pub struct TlsClient {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    buffer: Vec<u8>,
}

impl TlsClient {
    /// Connects to 127.0.0.1:`port` and completes the handshake, checking the certificate for
    /// `name`; the handshake's error otherwise.
    pub fn connect(port: u16, config: &Arc<ClientConfig>, name: &str) -> std::io::Result<TlsClient> {
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(name.to_string()).expect("a server name");
        let connection = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient {
            stream,
            buffer: Vec::new(),
        })
    }

    /// The server's certificate as presented in this connection.
    pub fn peer_der(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().expect("a peer certificate")[0].to_vec()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
        self.stream.flush().expect("flush");
    }

    /// Reads one response, or `None` if the connection ends first.
    pub fn try_read_response(&mut self) -> Option<Response> {
        loop {
            if let Some((response, used)) = parse_response(&self.buffer, false) {
                self.buffer.drain(..used);
                return Some(response);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                    ) =>
                {
                    return None
                }
                Err(error) => panic!("read failed: {error}"),
            }
        }
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response().expect("a response")
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_response()
    }
}

/// One GET over a new TLS connection, for readiness checks.
pub fn try_get(port: u16, config: &Arc<ClientConfig>, path: &str) -> std::io::Result<Response> {
    let mut client = TlsClient::connect(port, config, "localhost")?;
    client
        .stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())?;
    client
        .try_read_response()
        .ok_or_else(|| std::io::Error::from(ErrorKind::UnexpectedEof))
}

/// A client configuration that accepts any server certificate: only for readiness checks of
/// servers deliberately given certificates that real clients refuse.
pub fn accept_any_certificate() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
