//! "Bare loop" benchmark baseline.
//!
//! One glommio `LocalExecutor` pinned to one CPU, one task per connection,
//! httparse on a reusable per-connection read buffer, every response of one
//! read encoded into one reusable write buffer and sent with one write
//! (pipelining). No routing beyond `/json` versus everything else, no
//! middleware, no allocation per request except what serde_json needs.
//!
//! It is the "ideal" that the real server is compared to, so it tries to be a
//! fair, minimal, correct-enough HTTP/1.1 server for GET benchmarks:
//!
//! * `/json` answers `{"message":"Hello, World!"}` (serialized per request),
//!   anything else answers `Hello, World!` as text/plain;
//! * responses carry exactly `Server`, `Date`, `Content-Type` and
//!   `Content-Length`; `Date` is cached and refreshed by a timer task at every
//!   second boundary;
//! * keep-alive per HTTP/1.1 (HTTP/1.0 and `Connection: close` close after
//!   the response);
//! * a request carrying a body (`Content-Length` other than 0, or
//!   `Transfer-Encoding`) or an unparsable request gets a 400 and the
//!   connection is closed; a request head over 64 KiB gets a 431.
//!
//! Signals: SIGUSR1 prints `responses=N` (responses written so far) to stderr;
//! SIGTERM/SIGINT print the same line and exit. The benchmark script uses this
//! to cross-check wrk's request count.

use std::cell::Cell;
use std::error::Error;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use serde::Serialize;

const READ_BUF: usize = 8 * 1024;
const WRITE_BUF: usize = 8 * 1024;
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

const SERVER_HEADER: &[u8] = b"Server: bare-glommio\r\n";
const PLAINTEXT_BODY: &[u8] = b"Hello, World!";
const TEXT_PLAIN: &[u8] = b"text/plain";
const APPLICATION_JSON: &[u8] = b"application/json";

/// `Thu, 01 Jan 1970 00:00:00 GMT` is always 29 bytes.
type HttpDate = [u8; 29];

/// Responses written so far. Only the executor thread writes it (plain
/// load + store, no locked read-modify-write); signal handlers read it.
static RESPONSES: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

struct Args {
    cpu: usize,
    listen: SocketAddr,
}

fn usage() -> ! {
    eprintln!("usage: peer-bare-glommio [--cpu N (default 1)] [--listen ADDR (default 127.0.0.1:8081)]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        cpu: 1,
        listen: "127.0.0.1:8081".parse().expect("valid default address"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        if name == "-h" || name == "--help" {
            usage();
        }
        let value = inline.or_else(|| it.next()).unwrap_or_else(|| {
            eprintln!("missing value for {name}");
            usage()
        });
        match name.as_str() {
            "--cpu" => {
                args.cpu = value.parse().unwrap_or_else(|_| {
                    eprintln!("invalid --cpu {value}");
                    usage()
                })
            }
            "--listen" => {
                args.listen = value.parse().unwrap_or_else(|_| {
                    eprintln!("invalid --listen {value}");
                    usage()
                })
            }
            _ => {
                eprintln!("unknown flag {name}");
                usage()
            }
        }
    }
    args
}

fn http_date_now() -> HttpDate {
    let mut out = [0u8; 29];
    out.copy_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    out
}

/// Writes `responses=N\n` to stderr with async-signal-safe calls only.
fn write_count_to_stderr() {
    let mut line = [0u8; 40];
    let prefix = b"responses=";
    let mut num = itoa::Buffer::new();
    let digits = num.format(RESPONSES.load(Ordering::Relaxed)).as_bytes();
    let len = prefix.len() + digits.len() + 1;
    line[..prefix.len()].copy_from_slice(prefix);
    line[prefix.len()..len - 1].copy_from_slice(digits);
    line[len - 1] = b'\n';
    // SAFETY: write(2) is async-signal-safe; the buffer is valid for `len`.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), len);
    }
}

fn install_signal_handlers() -> io::Result<()> {
    // SAFETY: the handlers only load an atomic, format on the stack, call
    // write(2) and _exit(2), all of which are async-signal-safe.
    unsafe {
        signal_hook::low_level::register(signal_hook::consts::SIGUSR1, write_count_to_stderr)?;
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::low_level::register(sig, || {
                write_count_to_stderr();
                signal_hook::low_level::exit(0);
            })?;
        }
    }
    Ok(())
}

fn encode_response(out: &mut Vec<u8>, status: &[u8], date: &HttpDate, content_type: &[u8], body: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(SERVER_HEADER);
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type);
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// Returns `(keep_alive, has_body)` for a parsed request.
fn inspect(req: &httparse::Request<'_, '_>) -> (bool, bool) {
    let mut keep_alive = req.version == Some(1);
    let mut has_body = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            has_body |= h.value.iter().any(|&b| b != b'0');
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_body = true;
        }
    }
    (keep_alive, has_body)
}

async fn serve(mut stream: TcpStream, date: Rc<Cell<HttpDate>>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut rbuf = vec![0u8; READ_BUF];
    let mut filled = 0usize;
    let mut wbuf: Vec<u8> = Vec::with_capacity(WRITE_BUF);
    let mut json: Vec<u8> = Vec::with_capacity(64);

    loop {
        if filled == rbuf.len() {
            if rbuf.len() >= MAX_HEAD {
                let now = date.get();
                encode_response(
                    &mut wbuf,
                    b"431 Request Header Fields Too Large",
                    &now,
                    TEXT_PLAIN,
                    b"Request Header Fields Too Large",
                );
                stream.write_all(&wbuf).await?;
                return Ok(());
            }
            rbuf.resize(rbuf.len() * 2, 0);
        }

        let n = stream.read(&mut rbuf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;

        let now = date.get();
        let mut start = 0usize;
        let mut served = 0u64;
        let mut close = false;
        while start < filled {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&rbuf[start..filled]) {
                Ok(httparse::Status::Complete(len)) => {
                    start += len;
                    let (keep_alive, has_body) = inspect(&req);
                    if has_body {
                        encode_response(&mut wbuf, b"400 Bad Request", &now, TEXT_PLAIN, b"Bad Request");
                        close = true;
                        break;
                    }
                    if req.path == Some("/json") {
                        json.clear();
                        serde_json::to_writer(
                            &mut json,
                            &Message {
                                message: "Hello, World!",
                            },
                        )
                        .expect("serializing into a Vec cannot fail");
                        encode_response(&mut wbuf, b"200 OK", &now, APPLICATION_JSON, &json);
                    } else {
                        encode_response(&mut wbuf, b"200 OK", &now, TEXT_PLAIN, PLAINTEXT_BODY);
                    }
                    served += 1;
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Ok(httparse::Status::Partial) => break,
                Err(_) => {
                    encode_response(&mut wbuf, b"400 Bad Request", &now, TEXT_PLAIN, b"Bad Request");
                    close = true;
                    break;
                }
            }
        }

        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
        if served > 0 {
            // Single writer (this executor thread): no atomic RMW needed.
            RESPONSES.store(RESPONSES.load(Ordering::Relaxed) + served, Ordering::Relaxed);
        }
        if close {
            return Ok(());
        }
        if start > 0 {
            rbuf.copy_within(start..filled, 0);
            filled -= start;
        }
    }
}

/// Refreshes the cached `Date` right after every second boundary.
async fn date_refresher(date: Rc<Cell<HttpDate>>) {
    loop {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let to_next_second = Duration::from_nanos(1_000_000_000 - since_epoch.subsec_nanos() as u64);
        glommio::timer::sleep(to_next_second + Duration::from_millis(1)).await;
        date.set(http_date_now());
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args();
    install_signal_handlers()?;

    let executor = LocalExecutorBuilder::new(Placement::Fixed(args.cpu))
        .name("bare-glommio")
        .io_memory(1 << 20)
        .make()
        .map_err(|e| format!("cannot create glommio executor on cpu {}: {e}", args.cpu))?;

    executor.run(accept_loop(args))?;
    Ok(())
}

async fn accept_loop(args: Args) -> io::Result<()> {
    let date = Rc::new(Cell::new(http_date_now()));
    glommio::spawn_local(date_refresher(date.clone())).detach();

    let listener = TcpListener::bind(args.listen)?;
    eprintln!(
        "peer-bare-glommio listening on {} (cpu {})",
        listener.local_addr()?,
        args.cpu
    );
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let date = date.clone();
                glommio::spawn_local(async move {
                    // Errors (reset by peer, ...) just close the connection.
                    let _ = serve(stream, date).await;
                })
                .detach();
            }
            Err(e) => {
                eprintln!("accept: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
