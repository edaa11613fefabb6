//! TLS on a connection: rustls driven sans-IO over the shard's own socket, so handshakes and
//! records are processed on the connection's shard, with the same coarse read deadlines as plain
//! connections plus a deadline on the whole handshake (rustls has none).
//!
//! [`Certificates`] is the one piece shared between shards: the current certificate pair, read
//! again on SIGHUP ([`Certificates::reload`]); a pair that does not load is refused and the old
//! one stays. Each shard builds its own [`Acceptor`] (its rustls configuration, with its own
//! session cache); ticket keys are shared so that a ticket resumes on any shard.
//!
//! Settings: TLS 1.2 and 1.3 only, ring's AEAD suites with ECDHE (the Mozilla "intermediate"
//! set), ALPN `http/1.1`, no 0-RTT, no client certificates.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::server::{ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert};
use rustls::server::{ServerConfig, ServerConnection, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::HandshakeKind;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;

use crate::config::TlsConfig;
use crate::http::connection::Transport;

/// Ciphertext read from the socket at a time (rustls reassembles records across reads).
const INCOMING_BYTES: usize = 4096;
/// Output buffer capacity kept between writes; a larger one is released after its write.
const OUTGOING_BYTES_KEPT: usize = 64 * 1024;
/// The only application protocol offered.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A certificate pair that cannot be used, naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file's contents are not what they should be.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What the log says about a loaded certificate.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    /// The leaf's subject.
    pub subject: String,
    /// Its DNS and IP subject alternative names.
    pub names: Vec<String>,
    /// Start of validity (RFC 2822).
    pub not_before: String,
    /// End of validity (RFC 2822).
    pub not_after: String,
    /// Whether it is valid now.
    pub valid_now: bool,
    /// SHA-256 of the leaf's DER, hex.
    pub sha256: String,
    /// Certificates in the chain.
    pub chain_length: usize,
}

/// The certificate pair every shard serves, replaced as a whole on reload.
pub struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Loads the pair named by `tls.cert_path` and `tls.key_path`.
    pub fn load(config: &TlsConfig) -> Result<(Arc<Certificates>, CertificateInfo), CertificateError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_path = PathBuf::from(&config.cert_path);
        let key_path = PathBuf::from(&config.key_path);
        let (pair, info) = load_pair(&cert_path, &key_path, &provider)?;
        let certificates = Certificates {
            cert_path,
            key_path,
            provider,
            current: RwLock::new(pair),
        };
        Ok((Arc::new(certificates), info))
    }

    /// Reads both files again and, if they make a valid pair whose certificate is valid now,
    /// serves it to every new handshake. Otherwise the current pair stays.
    pub fn reload(&self) -> Result<CertificateInfo, CertificateError> {
        let (pair, info) = load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        if !info.valid_now {
            return Err(CertificateError::Invalid {
                path: self.cert_path.clone(),
                message: format!(
                    "the certificate is not valid now (valid from {} to {})",
                    info.not_before, info.not_after
                ),
            });
        }
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = pair;
        Ok(info)
    }

    /// The pair new handshakes use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Reads a PEM chain and key, checks that the key is the leaf's, and describes the leaf.
fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, CertificateInfo), CertificateError> {
    let invalid = |path: &Path, message: String| CertificateError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let cert_pem = read_limited(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(cert_path, format!("not a PEM certificate chain: {error}")))?;
    if chain.is_empty() {
        return Err(invalid(cert_path, "no CERTIFICATE block".to_string()));
    }
    let key_pem = read_limited(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| invalid(key_path, format!("no usable PEM private key: {error}")))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| invalid(key_path, format!("unsupported private key: {error}")))?;
    let info = describe(&chain).map_err(|message| invalid(cert_path, message))?;
    let pair = CertifiedKey::new(chain, signing_key);
    pair.keys_match().map_err(|error| {
        invalid(
            key_path,
            format!(
                "the private key does not belong to the certificate in {}: {error}",
                cert_path.display()
            ),
        )
    })?;
    Ok((Arc::new(pair), info))
}

/// Reads a PEM file of at most 1 MiB.
fn read_limited(path: &Path) -> Result<Vec<u8>, CertificateError> {
    let read = |source| CertificateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take((1 << 20) + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() > 1 << 20 {
        return Err(CertificateError::Invalid {
            path: path.to_path_buf(),
            message: "larger than 1 MiB".to_string(),
        });
    }
    Ok(bytes)
}

fn describe(chain: &[CertificateDer<'_>]) -> Result<CertificateInfo, String> {
    let leaf = &chain[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|error| format!("the first certificate cannot be parsed: {error}"))?;
    let validity = parsed.validity();
    let mut names = Vec::new();
    if let Ok(Some(extension)) = parsed.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push((*dns).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64);
    let valid_now = validity.not_before.timestamp() <= now && now <= validity.not_after.timestamp();
    let format_time = |time: &x509_parser::time::ASN1Time| {
        time.to_rfc2822().unwrap_or_else(|_| time.timestamp().to_string())
    };
    let digest = sha2::Sha256::digest(leaf.as_ref());
    Ok(CertificateInfo {
        subject: parsed.subject().to_string(),
        names,
        not_before: format_time(&validity.not_before),
        not_after: format_time(&validity.not_after),
        valid_now,
        sha256: digest.iter().map(|byte| format!("{byte:02x}")).collect(),
        chain_length: chain.len(),
    })
}

/// Hands every handshake the current pair.
#[derive(Debug)]
struct CurrentCertificate(Arc<Certificates>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// Session-ticket keys shared by the shards of a process (so a ticket resumes on any shard),
/// rotated by rustls every 6 hours; `None` when tickets are off.
pub fn ticketer(config: &TlsConfig) -> Result<Option<Arc<dyn ProducesTickets>>, rustls::Error> {
    if config.tickets {
        rustls::crypto::ring::Ticketer::new().map(Some)
    } else {
        Ok(None)
    }
}

/// One shard's TLS settings: accepts connections and runs their handshakes.
pub struct Acceptor {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl Acceptor {
    /// The shard's rustls configuration: its own session cache, the shared ticket keys.
    pub fn new(
        certificates: &Arc<Certificates>,
        ticketer: Option<Arc<dyn ProducesTickets>>,
        config: &TlsConfig,
    ) -> Result<Acceptor, rustls::Error> {
        let mut server = ServerConfig::builder_with_provider(certificates.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCertificate(certificates.clone())));
        server.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        server.max_early_data_size = 0;
        server.session_storage = if config.session_cache_entries > 0 {
            ServerSessionMemoryCache::new(config.session_cache_entries)
        } else {
            Arc::new(NoServerSessionStorage {})
        };
        let stateless = ticketer.is_some();
        if let Some(ticketer) = ticketer {
            server.ticketer = ticketer;
        }
        server.send_tls13_tickets = if !stateless && config.session_cache_entries == 0 {
            // Nothing could resume: do not send TLS 1.3 tickets that would never work.
            0
        } else {
            // One, not rustls's default two: a client spends one ticket per resumption and every
            // handshake, resumed ones included, hands it a new one. Each ticket costs the server
            // a key derivation and an encryption (about 15 µs of a full handshake's 340 here).
            1
        };
        Ok(Acceptor {
            config: Arc::new(server),
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        })
    }

    /// Runs the handshake over `inner` within the handshake deadline.
    pub async fn accept<T: Transport>(&self, inner: T) -> Result<TlsStream<T>, HandshakeError> {
        let connection = ServerConnection::new(self.config.clone()).map_err(HandshakeError::Tls)?;
        let mut stream = TlsStream {
            inner,
            tls: connection,
            incoming: Vec::new(),
            outgoing: Vec::new(),
        };
        stream.handshake(Instant::now() + self.handshake_timeout).await?;
        Ok(stream)
    }

    /// The rustls configuration (for the start-up responder's blocking connections).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

/// Why a handshake ended without a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The deadline passed.
    #[error("the TLS handshake did not finish in time")]
    TimedOut,
    /// The peer closed the connection.
    #[error("the client closed the connection during the TLS handshake")]
    Closed,
    /// A protocol error (its alert was sent).
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    /// The socket failed.
    #[error("I/O error during the TLS handshake: {0}")]
    Io(io::Error),
}

impl From<io::Error> for HandshakeError {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::TimedOut => HandshakeError::TimedOut,
            io::ErrorKind::UnexpectedEof => HandshakeError::Closed,
            _ => match error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => HandshakeError::Tls(tls.clone()),
                None => HandshakeError::Io(error),
            },
        }
    }
}

/// A TLS connection over a byte transport; a [`Transport`] itself, of plaintext.
pub struct TlsStream<T> {
    inner: T,
    tls: ServerConnection,
    /// Ciphertext read from `inner` (allocated on first use).
    incoming: Vec<u8>,
    /// Ciphertext to write to `inner`.
    outgoing: Vec<u8>,
}

impl<T: Transport> TlsStream<T> {
    /// Whether the handshake resumed a session.
    pub fn resumed(&self) -> bool {
        self.tls.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The negotiated protocol version, e.g. `TLSv1_3`.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.protocol_version()
    }

    async fn handshake(&mut self, deadline: Instant) -> Result<(), HandshakeError> {
        while self.tls.is_handshaking() {
            self.flush().await?;
            if !self.tls.is_handshaking() {
                break;
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|left| !left.is_zero())
                .ok_or(HandshakeError::TimedOut)?;
            if self.fill(left).await? == 0 {
                return Err(HandshakeError::Closed);
            }
        }
        // The server's last flight (TLS 1.3 session tickets).
        self.flush().await?;
        Ok(())
    }

    /// Reads ciphertext once and processes it; the count read (0 at end of stream).
    async fn fill(&mut self, timeout: Duration) -> io::Result<usize> {
        if self.incoming.is_empty() {
            self.incoming = vec![0; INCOMING_BYTES];
        }
        let count = self.inner.read(&mut self.incoming, timeout).await?;
        let mut data = &self.incoming[..count];
        while !data.is_empty() {
            self.tls.read_tls(&mut data)?;
            if let Err(error) = self.tls.process_new_packets() {
                // rustls queued an alert saying why; send it before giving up.
                let _ = self.flush().await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
        }
        if self.tls.wants_write() {
            // Handshake messages, key updates, or answers to the peer's close_notify.
            self.flush().await?;
        }
        Ok(count)
    }

    /// Writes every pending TLS record.
    async fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.outgoing.clear();
            self.tls.write_tls(&mut self.outgoing)?;
            self.inner.write_all(&self.outgoing).await?;
        }
        if self.outgoing.capacity() > OUTGOING_BYTES_KEPT {
            self.outgoing = Vec::new();
        }
        Ok(())
    }

    /// Sends close_notify (best effort) and closes the write side.
    pub async fn close(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush().await;
        self.inner.shutdown_write().await;
    }
}

impl<T: Transport> Transport for TlsStream<T> {
    async fn read(&mut self, buffer: &mut [u8], timeout: Duration) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buffer) {
                // Ok(0): the peer sent close_notify.
                Ok(count) => return Ok(count),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
            if self.fill(timeout).await? == 0 {
                // The peer closed without close_notify: the end of its requests all the same.
                return Ok(0);
            }
        }
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let written = self.tls.writer().write(bytes)?;
            bytes = &bytes[written..];
            self.flush().await?;
        }
        Ok(())
    }

    async fn shutdown_write(&mut self) {
        self.close().await;
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.inner.peer_ip()
    }
}
