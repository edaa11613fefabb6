//! A small blocking HTTP/1.1 client for the set-up phase (cluster map, signups, logins,
//! deposits): one request at a time on a keep-alive connection, with timeouts, over plain TCP or
//! TLS (https).
//!
//! Never used during the measured run; the workers have their own non-blocking loop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};

use crate::http::{parse_response, Body};
use crate::tls::{rustls_error, TlsClient};

/// Longest wait for connecting, writing or each read of a set-up request.
pub const SETUP_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed set-up request.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    Io(std::io::Error),
    /// The TLS handshake or a TLS record failed (a certificate refused, a handshake failure).
    Tls(rustls::Error),
    /// The connection failed or closed during the TLS handshake.
    TlsHandshake(String),
    /// A plain-HTTP request was answered with TLS.
    TlsAnswer,
    /// The answer could not be framed.
    Framing(crate::http::FramingError),
    /// The server closed the connection before answering.
    Closed,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(error) => write!(f, "{error}"),
            ClientError::Tls(error) => write!(f, "TLS: {error}"),
            ClientError::TlsHandshake(error) => write!(
                f,
                "TLS: the handshake did not finish ({error}): does the server speak TLS on this port?"
            ),
            ClientError::Framing(error) => write!(f, "{error}"),
            ClientError::Closed => write!(f, "the server closed the connection without answering"),
            ClientError::TlsAnswer => write!(
                f,
                "the server answered with TLS: use an https:// URL (and --cacert)"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(error: std::io::Error) -> Self {
        match rustls_error(&error) {
            Some(tls) => ClientError::Tls(tls.clone()),
            None => ClientError::Io(error),
        }
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// The body, decoded.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text, for error messages (cut to 300 bytes).
    pub fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut text = text.trim().to_string();
        if text.len() > 300 {
            let mut cut = 300;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        text
    }
}

/// A connection: plain TCP or TLS over TCP.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buf),
            Stream::Tls(stream) => stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.write(buf),
            Stream::Tls(stream) => stream.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.flush(),
            Stream::Tls(stream) => stream.flush(),
        }
    }
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct BlockingClient {
    address: SocketAddr,
    host: String,
    tls: Option<TlsClient>,
    stream: Option<Stream>,
    buffer: Vec<u8>,
    scratch: Vec<u8>,
}

impl BlockingClient {
    /// A client for `address`, sending `Host: host`, over TLS with `tls`. Connects on first use.
    pub fn new(address: SocketAddr, host: &str, tls: Option<TlsClient>) -> Self {
        Self {
            address,
            host: host.to_string(),
            tls,
            stream: None,
            buffer: Vec::with_capacity(16 * 1024),
            scratch: Vec::new(),
        }
    }

    /// Sends one request and reads its answer. `headers` are extra `(name, value)` pairs.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        // A kept-alive connection may have been closed by the server meanwhile: one retry on a
        // fresh connection (set-up requests are idempotent or carry an Idempotency-Key).
        let reused = self.stream.is_some();
        match self.exchange(&bytes) {
            Ok(reply) => Ok(reply),
            Err(_) if reused => self.exchange(&bytes),
            Err(error) => Err(error),
        }
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Reply, ClientError> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let socket = TcpStream::connect_timeout(&self.address, SETUP_IO_TIMEOUT)?;
                socket.set_nodelay(true)?;
                socket.set_read_timeout(Some(SETUP_IO_TIMEOUT))?;
                socket.set_write_timeout(Some(SETUP_IO_TIMEOUT))?;
                let stream = match &self.tls {
                    None => Stream::Plain(socket),
                    Some(tls) => {
                        let connection = tls.connect().map_err(ClientError::Tls)?;
                        Stream::Tls(Box::new(StreamOwned::new(connection, socket)))
                    }
                };
                self.stream.insert(stream)
            }
        };
        self.buffer.clear();
        let result = (|| {
            stream.write_all(request)?;
            stream.flush()?;
            let mut chunk = [0u8; 16 * 1024];
            loop {
                let parsed = parse_response(&self.buffer, &mut self.scratch).map_err(|error| {
                    // A TLS record (handshake or alert) where an HTTP answer should be.
                    if matches!(self.buffer[..], [0x15 | 0x16, 0x03, ..]) {
                        ClientError::TlsAnswer
                    } else {
                        ClientError::Framing(error)
                    }
                })?;
                if let Some(response) = parsed {
                    let body = match response.body {
                        Body::InBuffer(range) => self.buffer[range].to_vec(),
                        Body::Decoded => std::mem::take(&mut self.scratch),
                    };
                    return Ok((
                        Reply {
                            status: response.status,
                            body,
                        },
                        response.close,
                    ));
                }
                let read = match stream.read(&mut chunk) {
                    // TLS: the server closed without close_notify.
                    Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                    result => result?,
                };
                if read == 0 {
                    return Err(ClientError::Closed);
                }
                self.buffer.extend_from_slice(&chunk[..read]);
            }
        })();
        match result {
            Ok((reply, close)) => {
                if close {
                    self.stream = None;
                }
                Ok(reply)
            }
            Err(error) => {
                let handshaking = matches!(&self.stream, Some(Stream::Tls(tls)) if tls.conn.is_handshaking());
                self.stream = None;
                match error {
                    ClientError::Io(_) | ClientError::Closed if handshaking => {
                        Err(ClientError::TlsHandshake(error.to_string()))
                    }
                    error => Err(error),
                }
            }
        }
    }
}
