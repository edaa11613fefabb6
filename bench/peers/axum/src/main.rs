//! Benchmark peer: the endpoints shardpay's load generator uses, written the way a user would
//! otherwise write them — tokio's multi-threaded runtime, axum's router, and the whole state in
//! ONE `Mutex` over plain `HashMap`s (`App::state`, shared as `Arc<App>`). The same benchmark
//! scenario runs against shardpay and this peer side by side.
//!
//! Per request it does the same essential work as shardpay:
//! * signup and login hash or verify the password with argon2id (m=19456 KiB, t=2, p=1) on a
//!   blocking thread, at most 2 at once (a semaphore); a login for an unknown user verifies
//!   against a dummy hash so it costs what a wrong password costs;
//! * every authenticated request verifies the HS256 JWT (signature, `exp`, `iss`) and then, under
//!   the lock, checks that its session still exists, so a revocation would take effect at once;
//! * deposits check the admin API key in constant time; deposits and payments need an
//!   `Idempotency-Key`: a retry of the same request (method, path, SHA-256 of the body) gets the
//!   stored status and body byte for byte with `Idempotent-Replayed: true`, another request under
//!   the same key gets 422 `idempotency_key_reused`;
//! * a payment checks the payee and the balance, debits, credits, records the payment and stores
//!   the answer under the key in one lock acquisition;
//! * JSON bodies are parsed strictly (unknown fields are 422), answers carry the contract's
//!   shapes and error codes, `Server: axum`, hyper's `Date`, and on API routes `X-Request-Id`.
//!
//! What it deliberately does NOT do: no durability (nothing is written to disk, a restart forgets
//! everything), one global lock for all users (every request that touches state contends on it),
//! no expiry or cap on idempotency keys and sessions, no rate limiting or login throttling, no
//! refresh/logout/refund routes, no `X-Shard`, no logging, no metrics.
//!
//! CLI: `peer-axum --listen 127.0.0.1:8083 --threads N [--admin-api-key K] [--jwt-secret S]`.
//! CPU pinning is the caller's (`taskset`). SIGTERM or SIGINT: stop accepting, let open
//! connections finish for up to 5 s, exit 0.

mod auth;
mod error;
mod limits;
mod money;
mod reply;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::DefaultBodyLimit;
use axum::http::header::{CONTENT_TYPE, SERVER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use clap::Parser;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::State;

/// shardpay's development admin API key, so one benchmark script drives both servers.
const DEV_ADMIN_API_KEY: &str = "dev-admin-key-not-for-production";
/// Development JWT secret (at least 32 bytes, RFC 7518 §3.2).
const DEV_JWT_SECRET: &str = "peer-axum-dev-jwt-secret-not-for-production";

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "peer-axum",
    about = "Benchmark peer: shardpay's API on tokio + axum with one Mutex<State>"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8083")]
    listen: SocketAddr,
    /// tokio worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// The admin API key deposits must present as `Authorization: Bearer <key>`.
    #[arg(long, default_value = DEV_ADMIN_API_KEY)]
    admin_api_key: String,
    /// HS256 secret for access tokens, at least 32 bytes.
    #[arg(long, default_value = DEV_JWT_SECRET)]
    jwt_secret: String,
}

/// Everything the routes share.
pub struct App {
    /// ALL the state, behind one lock.
    state: Mutex<State>,
    /// Token keys and password hashing.
    auth: auth::Auth,
    /// Compared in constant time against a deposit's bearer token.
    admin_api_key: String,
}

impl App {
    /// Takes the one lock. Code under it never awaits, hashes or does I/O.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("a panic while holding the state lock is a bug")
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let app = Arc::new(App {
        state: Mutex::new(State::default()),
        auth: auth::Auth::new(&cli.jwt_secret)?,
        admin_api_key: cli.admin_api_key.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.threads))
        .enable_all()
        .build()?;
    runtime.block_on(serve(cli, app))
}

async fn serve(cli: Cli, app: Arc<App>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    eprintln!(
        "peer-axum listening on {} ({} worker threads)",
        listener.local_addr()?,
        cli.threads
    );
    // Nagle off, as shardpay and the bare-glommio baseline have it: small responses go out at once.
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router(app)).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        finished = &mut server => return Ok(finished??),
        () = shutdown_signal() => {}
    }
    eprintln!("peer-axum: shutting down");
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_millis(limits::SHUTDOWN_GRACE_MS), server).await {
        Ok(finished) => finished??,
        Err(_) => eprintln!("peer-axum: connections still open after the grace period"),
    }
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/plaintext", get(plaintext))
        .route("/json", get(json_hello))
        .route("/healthz", get(ok_text))
        .route("/readyz", get(ok_text))
        .route("/v1/users", post(auth::signup))
        .route("/v1/sessions", post(auth::login))
        .route("/v1/me", get(auth::me))
        .route("/v1/deposits", post(money::deposit))
        .route("/v1/balances", get(money::balances))
        .route("/v1/payments", post(money::pay).get(money::list_payments))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits::BODY_BYTES_MAX))
        .layer(axum::middleware::map_response(server_header))
        .with_state(app)
}

/// `Server: axum` on every response, as TechEmpower's rules want.
async fn server_header(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(SERVER, HeaderValue::from_static("axum"));
    response
}

/// `GET /plaintext` (TechEmpower test type 6).
async fn plaintext() -> Response {
    ([(CONTENT_TYPE, "text/plain")], "Hello, World!").into_response()
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

/// `GET /json` (TechEmpower test type 1): serialized on every request.
async fn json_hello() -> Response {
    let body = serde_json::to_vec(&Message {
        message: "Hello, World!",
    })
    .expect("plain structs serialize");
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /healthz` and `GET /readyz`: the state is ready as soon as the process listens.
async fn ok_text() -> Response {
    ([(CONTENT_TYPE, "text/plain")], "ok").into_response()
}

/// Any path no route serves.
async fn not_found(headers: HeaderMap) -> Response {
    let error = ApiError::invalid(StatusCode::NOT_FOUND, "not_found", "No such route.");
    reply::error(&error, &reply::request_id(&headers))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
