//! Admission control through the real binary: a shard whose queueing delay is above
//! `overload.queue_delay_target_us` answers part of the `/v1` requests with 503 `overloaded` and
//! `Retry-After`, keeps the connection and its pipeline in order, never refuses the operations
//! endpoints, refuses payments before doing any of them (a refused key is still free), counts
//! every refusal in `/metrics`, and admits everything again once the load is gone.
//!
//! The load is real (pipelined requests from several threads) and the target is 1 ms (the
//! default is 5 ms), so the shard falls behind it; the tests wait (bounded) for refusals to
//! happen and never assert how fast anything was.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{get, get_with, post, Client, Response, Server};

const ADMIN: &str = "Authorization: Bearer dev-admin-key-not-for-production";
/// Longest a test loads the server waiting for refusals.
const PATIENCE: Duration = Duration::from_secs(20);
/// Loading threads.
const THREADS: usize = 4;
/// Requests per pipelined batch.
const BATCH: usize = 64;

fn start(enabled: bool) -> Server {
    Server::start(
        1,
        &[
            (
                "SHARDPAY_OVERLOAD_ENABLED",
                if enabled { "true" } else { "false" },
            ),
            ("SHARDPAY_OVERLOAD_QUEUE_DELAY_TARGET_US", "1000"),
            ("SHARDPAY_OVERLOAD_RETRY_AFTER_SECONDS", "2"),
            ("SHARDPAY_AUTH_PASSWORD_MEMORY_KIB", "64"),
            ("SHARDPAY_AUTH_PASSWORD_ITERATIONS", "1"),
            ("SHARDPAY_AUTH_USER_REQUEST_BURST", "100000000"),
        ],
    )
}

/// The value of a per-shard metric on shard 0.
fn metric(port: u16, name: &str) -> f64 {
    let text = get(port, "/metrics").text();
    let prefix = format!("{name}{{shard=\"0\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .parse()
        .unwrap()
}

/// Checks a refusal: 503, `Retry-After`, the contract's error body with the request's id.
fn assert_refusal(response: &Response, request_id: &str) {
    assert_eq!(response.status, 503, "{}", response.text());
    assert_eq!(response.header("retry-after"), Some("2"));
    assert_eq!(response.header("x-request-id"), Some(request_id));
    assert_eq!(response.header("x-shard"), Some("0"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(body["request_id"], request_id);
}

/// What the loading threads saw.
#[derive(Default)]
struct Seen {
    admitted: AtomicU64,
    refused: AtomicU64,
}

/// A running load: its threads, what they saw, and the flag that stops them.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Stops the loading threads and waits for them (any failure of theirs fails the test).
    fn finish(self) -> Arc<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a loading thread failed");
        }
        self.seen
    }
}

/// Loads the server from `THREADS` connections with pipelined unauthenticated balance reads
/// (401 when admitted, 503 when refused) until [`Load::finish`], checking every answer's id (so
/// the pipeline stays in order) and that the connection is never closed.
fn load(port: u16) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let threads = (0..THREADS)
        .map(|thread| {
            let stop = stop.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                let mut batch_number = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ids: Vec<String> = (0..BATCH)
                        .map(|i| format!("t{thread}-b{batch_number}-r{i}"))
                        .collect();
                    let requests: String = ids
                        .iter()
                        .map(|id| {
                            format!("GET /v1/balances HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\n\r\n")
                        })
                        .collect();
                    client.send(requests.as_bytes());
                    for id in &ids {
                        let response = client
                            .try_read_response(false)
                            .unwrap_or_else(|| panic!("connection closed before the answer to {id}"));
                        match response.status {
                            401 => {
                                assert_eq!(response.header("x-request-id"), Some(id.as_str()));
                                seen.admitted.fetch_add(1, Ordering::Relaxed);
                            }
                            503 => {
                                assert_refusal(&response, id);
                                seen.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("{id}: unexpected {other}: {}", response.text()),
                        }
                    }
                    batch_number += 1;
                }
            })
        })
        .collect();
    Load { stop, seen, threads }
}

#[test]
fn a_shard_behind_its_target_refuses_api_requests_but_not_operations_and_recovers() {
    let server = start(true);
    let load = load(server.port);
    let started = Instant::now();
    // While refusing, the operations endpoints and the benchmark endpoints are answered.
    let mut operations_checked_while_refusing = 0;
    while started.elapsed() < PATIENCE && operations_checked_while_refusing < 5 {
        for path in ["/healthz", "/readyz", "/plaintext", "/json"] {
            assert_eq!(get(server.port, path).status, 200, "{path}");
        }
        assert!(get(server.port, "/metrics")
            .text()
            .contains("shardpay_shed_share"));
        if load.seen.refused.load(Ordering::Relaxed) > 0 {
            operations_checked_while_refusing += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = load.finish();
    let refused = seen.refused.load(Ordering::Relaxed);
    let admitted = seen.admitted.load(Ordering::Relaxed);
    assert!(
        refused > 0,
        "no request was refused in {PATIENCE:?} ({admitted} admitted)"
    );
    assert!(admitted > 0, "nothing was admitted ({refused} refused)");
    // Every refusal is counted, and only those (all /v1 requests came from the load).
    assert_eq!(
        metric(server.port, "shardpay_requests_shed_total"),
        refused as f64
    );
    let refusals_counted = get(server.port, "/metrics")
        .text()
        .lines()
        .find(|line| {
            line.starts_with(
                "shardpay_http_requests_total{shard=\"0\",route=\"GET /v1/balances\",status=\"503\"}",
            )
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap());
    assert_eq!(refusals_counted, Some(refused));
    // The load is gone: the shard admits everything again.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut client = Client::connect(server.port);
        let statuses: Vec<u16> = (0..20).map(|_| client.get("/v1/balances").status).collect();
        if statuses.iter().all(|&status| status == 401) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refusing after the load: {statuses:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn disabled_admission_never_refuses_under_the_same_load() {
    let server = start(false);
    let load = load(server.port);
    // Load until the shard has measured a delay above the target (which would refuse if enabled).
    let started = Instant::now();
    let mut delay_seen = 0.0f64;
    while started.elapsed() < PATIENCE && delay_seen <= 1e-3 {
        delay_seen = delay_seen.max(metric(server.port, "shardpay_queue_delay_seconds"));
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = load.finish();
    assert!(delay_seen > 1e-3, "the load never delayed the shard beyond 1 ms");
    assert_eq!(seen.refused.load(Ordering::Relaxed), 0);
    assert!(seen.admitted.load(Ordering::Relaxed) > 0);
    assert_eq!(metric(server.port, "shardpay_requests_shed_total"), 0.0);
}

/// `POST`, retried while the answer is 503 `overloaded` (other tests load the same cores, and
/// waiting for a core is queueing delay), as a client honouring `Retry-After` would.
fn post_admitted(port: u16, path: &str, headers: &[&str], body: &str) -> Response {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = post(port, path, headers, body);
        if response.status != 503 || Instant::now() > deadline {
            return response;
        }
        assert_eq!(
            response.json()["error"]["code"],
            "overloaded",
            "{}",
            response.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Signs up and logs in; returns the user id and the access token.
fn user(port: u16, name: &str) -> (String, String) {
    let credentials = format!(r#"{{"username":"{name}","password":"correct horse battery"}}"#);
    let signup = post_admitted(port, "/v1/users", &[], &credentials);
    assert_eq!(signup.status, 201, "{}", signup.text());
    let login = post_admitted(port, "/v1/sessions", &[], &credentials);
    assert_eq!(login.status, 201, "{}", login.text());
    let id = signup.json()["id"].as_str().unwrap().to_string();
    (id, login.json()["access_token"].as_str().unwrap().to_string())
}

/// An admin deposit of `amount` USD to `user_id`.
fn fund(port: u16, user_id: &str, amount: u64) {
    let deposit = json!({"user_id": user_id, "amount": amount, "currency": "USD"}).to_string();
    let key = format!("Idempotency-Key: deposit-{user_id}");
    let response = post_admitted(port, "/v1/deposits", &[ADMIN, &key], &deposit);
    assert_eq!(response.status, 201, "{}", response.text());
}

fn available(port: u16, token: &str) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    let response = loop {
        let response = get_with(port, "/v1/balances", &[&format!("Authorization: Bearer {token}")]);
        if response.status != 503 || Instant::now() > deadline {
            break response;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(response.status, 200, "{}", response.text());
    let body: Value = response.json();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|balance| balance["currency"] == "USD")
        .map_or(0, |balance| balance["available"].as_u64().unwrap())
}

#[test]
fn a_refused_payment_did_nothing_and_its_key_is_still_free() {
    const DEPOSIT: u64 = 1_000_000;
    let server = start(true);
    let port = server.port;
    let (payer_id, payer) = user(port, "overload-payer");
    let (_, payee) = user(port, "overload-payee");
    fund(port, &payer_id, DEPOSIT);
    // Pipelined payments of 1 each (with the load beside them) until some are refused.
    let load = load(port);
    let body = json!({"to": "overload-payee", "amount": 1, "currency": "USD"}).to_string();
    let mut client = Client::connect(port);
    let mut paid = 0u64;
    let mut refused_keys = Vec::new();
    let started = Instant::now();
    let mut batch_number = 0;
    while refused_keys.is_empty() && started.elapsed() < PATIENCE {
        let keys: Vec<String> = (0..BATCH).map(|i| format!("pay-{batch_number}-{i}")).collect();
        let requests: String = keys
            .iter()
            .map(|key| {
                format!(
                    "POST /v1/payments HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {payer}\r\n\
                     Idempotency-Key: {key}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            })
            .collect();
        client.send(requests.as_bytes());
        for key in keys {
            let response = client.read_response();
            match response.status {
                201 => paid += 1,
                503 => {
                    assert_eq!(response.json()["error"]["code"], "overloaded");
                    refused_keys.push(key);
                }
                other => panic!("{key}: unexpected {other}: {}", response.text()),
            }
        }
        batch_number += 1;
    }
    load.finish();
    assert!(!refused_keys.is_empty(), "no payment was refused in {PATIENCE:?}");
    // Only the admitted payments moved money.
    assert_eq!(available(port, &payer), DEPOSIT - paid);
    assert_eq!(available(port, &payee), paid);
    // A refused key was never used: retried once the load is gone, it pays (not a replay).
    let auth = format!("Authorization: Bearer {payer}");
    for key in refused_keys.iter().take(5) {
        let retried = post_admitted(
            port,
            "/v1/payments",
            &[&auth, &format!("Idempotency-Key: {key}")],
            &body,
        );
        assert_eq!(retried.status, 201, "{key}: {}", retried.text());
        assert_eq!(retried.header("idempotent-replayed"), None);
        paid += 1;
    }
    assert_eq!(available(port, &payer), DEPOSIT - paid);
    assert_eq!(available(port, &payee), paid);
}

#[test]
fn shards_that_poll_before_sleeping_serve_logins_and_payments() {
    // `server.spin_before_park_us`: an idle shard polls for work instead of sleeping at once.
    // Password hashing (blocking threads), payments and the mesh between two shards still work.
    let server = Server::start(
        2,
        &[
            ("SHARDPAY_SERVER_SPIN_BEFORE_PARK_US", "200"),
            ("SHARDPAY_AUTH_PASSWORD_MEMORY_KIB", "64"),
            ("SHARDPAY_AUTH_PASSWORD_ITERATIONS", "1"),
        ],
    );
    let port = server.port;
    let (payer_id, payer) = user(port, "spinning-payer");
    let (_, payee) = user(port, "spinning-payee");
    fund(port, &payer_id, 100);
    let body = json!({"to": "spinning-payee", "amount": 40, "currency": "USD"}).to_string();
    let auth = format!("Authorization: Bearer {payer}");
    let response = post(port, "/v1/payments", &[&auth, "Idempotency-Key: spin-pay"], &body);
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(available(port, &payer), 60);
    assert_eq!(available(port, &payee), 40);
    // Every shard answers on its own port too.
    for shard in 0..2 {
        assert_eq!(get(server.shard_port(shard), "/readyz").status, 200);
    }
}
