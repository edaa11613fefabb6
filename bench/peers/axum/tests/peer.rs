//! Black-box tests: the real `peer-axum` binary on a free loopback port, driven over real sockets
//! by a tiny HTTP/1.1 client (one connection per request, `Content-Length` bodies).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ADMIN_KEY: &str = "dev-admin-key-not-for-production";
const STARTUP_MAX: Duration = Duration::from_secs(30);

/// The server process; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn start() -> Server {
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_peer-axum"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--threads", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start peer-axum");
    let server = Server { child, port };
    let started = Instant::now();
    loop {
        if let Ok(reply) = try_request(port, "GET", "/readyz", &[], None) {
            if reply.status == 200 {
                return server;
            }
        }
        assert!(started.elapsed() < STARTUP_MAX, "peer-axum did not get ready");
        sleep(Duration::from_millis(50));
    }
}

fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body.as_bytes())?;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some((_, length)) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
    {
        body.truncate(length.parse().expect("a numeric Content-Length"));
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

impl Server {
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
        try_request(self.port, method, path, headers, body).expect("request")
    }

    fn signup(&self, username: &str, password: &str) -> Reply {
        let body = json!({"username": username, "password": password}).to_string();
        self.request("POST", "/v1/users", &[], Some(&body))
    }

    fn login(&self, username: &str, password: &str) -> Reply {
        let body = json!({"username": username, "password": password}).to_string();
        self.request("POST", "/v1/sessions", &[], Some(&body))
    }

    /// Signs up and logs in; returns the user id and an access token.
    fn user(&self, username: &str) -> (String, String) {
        let signup = self.signup(username, "correct horse battery");
        assert_eq!(signup.status, 201);
        let login = self.login(username, "correct horse battery");
        assert_eq!(login.status, 201);
        (
            signup.json()["id"].as_str().unwrap().to_string(),
            login.json()["access_token"].as_str().unwrap().to_string(),
        )
    }

    fn deposit(&self, key: &str, admin_key: &str, body: &Value) -> Reply {
        let bearer = format!("Bearer {admin_key}");
        self.request(
            "POST",
            "/v1/deposits",
            &[("Authorization", &bearer), ("Idempotency-Key", key)],
            Some(&body.to_string()),
        )
    }

    fn pay(&self, token: &str, key: &str, body: &Value) -> Reply {
        let bearer = format!("Bearer {token}");
        self.request(
            "POST",
            "/v1/payments",
            &[("Authorization", &bearer), ("Idempotency-Key", key)],
            Some(&body.to_string()),
        )
    }

    fn get(&self, token: &str, path: &str) -> Reply {
        let bearer = format!("Bearer {token}");
        self.request("GET", path, &[("Authorization", &bearer)], None)
    }
}

#[test]
fn signup_login_and_me() {
    let server = start();
    let created = server.signup("Alice", "correct horse battery");
    assert_eq!(created.status, 201);
    let user = created.json();
    assert_eq!(user["username"], "alice");
    let id = user["id"].as_str().unwrap();
    assert!(id.starts_with("usr_") && id.len() == 28, "{id}");
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created.header("server"), Some("axum"));
    assert!(created.header("date").is_some());
    assert!(created.header("x-request-id").is_some());

    let taken = server.signup("alice", "another password");
    assert_eq!((taken.status, taken.code()), (409, "username_taken".to_string()));
    let invalid = server.signup("a b", "correct horse battery");
    assert_eq!(
        (invalid.status, invalid.code()),
        (422, "invalid_username".to_string())
    );
    let weak = server.signup("bob", "short");
    assert_eq!((weak.status, weak.code()), (422, "weak_password".to_string()));
    let unknown_field = server.request(
        "POST",
        "/v1/users",
        &[],
        Some(r#"{"username":"carol","password":"correct horse battery","admin":true}"#),
    );
    assert_eq!(
        (unknown_field.status, unknown_field.code()),
        (422, "unknown_field".to_string())
    );

    let login = server.login("ALICE", "correct horse battery");
    assert_eq!(login.status, 201);
    let session = login.json();
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);
    assert_eq!(session["refresh_expires_in"], 2_592_000);
    assert!(session["session_id"].as_str().unwrap().starts_with("ses_"));
    assert!(!session["refresh_token"].as_str().unwrap().is_empty());
    let token = session["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);

    let wrong = server.login("alice", "wrong password!");
    assert_eq!(
        (wrong.status, wrong.code()),
        (401, "invalid_credentials".to_string())
    );
    let unknown = server.login("nobody", "correct horse battery");
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.json()["error"],
        wrong.json()["error"],
        "same body for unknown user"
    );

    let me = server.get(token, "/v1/me");
    assert_eq!(me.status, 200);
    assert_eq!(me.json(), user);
    let anonymous = server.request("GET", "/v1/me", &[], None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert_eq!(anonymous.json()["error"]["type"], "authentication_error");
    let forged = server.get(&format!("{token}x"), "/v1/me");
    assert_eq!((forged.status, forged.code()), (401, "invalid_token".to_string()));
}

#[test]
fn deposits_payments_idempotency_and_listing() {
    let server = start();
    let (alice, alice_token) = server.user("alice");
    let (bob, bob_token) = server.user("bob");

    let deposit = json!({"user_id": alice, "amount": 10_000, "currency": "USD"});
    let refused = server.deposit("d-1", "not-the-admin-key", &deposit);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let missing_key = server.request(
        "POST",
        "/v1/deposits",
        &[("Authorization", &format!("Bearer {ADMIN_KEY}"))],
        Some(&deposit.to_string()),
    );
    assert_eq!(
        (missing_key.status, missing_key.code()),
        (400, "idempotency_key_missing".to_string())
    );
    let deposited = server.deposit("d-1", ADMIN_KEY, &deposit);
    assert_eq!(deposited.status, 201);
    let body = deposited.json();
    assert!(body["id"].as_str().unwrap().starts_with("dep_"));
    assert_eq!(
        (&body["user_id"], &body["amount"], &body["currency"]),
        (&json!(alice), &json!(10_000), &json!("USD"))
    );
    let again = server.deposit("d-1", ADMIN_KEY, &deposit);
    assert_eq!((again.status, &again.body), (201, &deposited.body));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let nobody = json!({"user_id": "usr_000000000000000000000000", "amount": 1, "currency": "USD"});
    let not_found = server.deposit("d-2", ADMIN_KEY, &nobody);
    assert_eq!(
        (not_found.status, not_found.code()),
        (404, "user_not_found".to_string())
    );
    let bad_currency = json!({"user_id": alice, "amount": 1, "currency": "XXX"});
    let refused = server.deposit("d-3", ADMIN_KEY, &bad_currency);
    assert_eq!(
        (refused.status, refused.code()),
        (422, "unsupported_currency".to_string())
    );

    let balances = server.get(&alice_token, "/v1/balances");
    assert_eq!(balances.status, 200);
    assert_eq!(
        balances.json(),
        json!({"data": [{"currency": "USD", "available": 10_000}]})
    );

    let payment = json!({"to": "bob", "amount": 2_500, "currency": "USD", "description": "lunch"});
    let paid = server.pay(&alice_token, "p-1", &payment);
    assert_eq!(paid.status, 201);
    let object = paid.json();
    assert!(object["id"].as_str().unwrap().starts_with("pay_"));
    assert_eq!(object["from"], json!(alice));
    assert_eq!(object["to"], json!(bob));
    assert_eq!(object["amount"], 2_500);
    assert_eq!(object["currency"], "USD");
    assert_eq!(object["description"], "lunch");
    assert_eq!(object["status"], "succeeded");
    assert_eq!(object["amount_refunded"], 0);
    assert!(object["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(paid.header("idempotent-replayed"), None);
    assert_eq!(
        server.get(&alice_token, "/v1/balances").json(),
        json!({"data": [{"currency": "USD", "available": 7_500}]})
    );
    assert_eq!(
        server.get(&bob_token, "/v1/balances").json(),
        json!({"data": [{"currency": "USD", "available": 2_500}]})
    );

    let replay = server.pay(&alice_token, "p-1", &payment);
    assert_eq!((replay.status, &replay.body), (201, &paid.body));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let reused = server.pay(
        &alice_token,
        "p-1",
        &json!({"to": "bob", "amount": 1, "currency": "USD"}),
    );
    assert_eq!(
        (reused.status, reused.code()),
        (422, "idempotency_key_reused".to_string())
    );
    assert_eq!(
        server.get(&alice_token, "/v1/balances").json()["data"][0]["available"],
        7_500,
        "a replay moves no money"
    );

    let too_much = json!({"to": bob, "amount": 1_000_000, "currency": "USD"});
    let poor = server.pay(&alice_token, "p-2", &too_much);
    assert_eq!(
        (poor.status, poor.code()),
        (422, "insufficient_funds".to_string())
    );
    let stored = server.pay(&alice_token, "p-2", &too_much);
    assert_eq!(
        (stored.status, &stored.body),
        (422, &poor.body),
        "4xx answers are stored"
    );
    assert_eq!(stored.header("idempotent-replayed"), Some("true"));
    let to_self = server.pay(
        &alice_token,
        "p-3",
        &json!({"to": "alice", "amount": 1, "currency": "USD"}),
    );
    assert_eq!(
        (to_self.status, to_self.code()),
        (422, "self_payment".to_string())
    );
    let nowhere = server.pay(
        &alice_token,
        "p-4",
        &json!({"to": "nobody", "amount": 1, "currency": "USD"}),
    );
    assert_eq!(
        (nowhere.status, nowhere.code()),
        (404, "payee_not_found".to_string())
    );

    let second = server.pay(
        &alice_token,
        "p-5",
        &json!({"to": bob, "amount": 500, "currency": "USD"}),
    );
    assert_eq!(second.status, 201);
    let second_id = second.json()["id"].clone();
    let first_id = object["id"].clone();
    for token in [&alice_token, &bob_token] {
        let all = server.get(token, "/v1/payments").json();
        assert_eq!(all["has_more"], false);
        let ids: Vec<&Value> = all["data"].as_array().unwrap().iter().map(|p| &p["id"]).collect();
        assert_eq!(ids, vec![&second_id, &first_id], "newest first, both sides");
        let page = server.get(token, "/v1/payments?limit=1").json();
        assert_eq!(page["data"].as_array().unwrap().len(), 1);
        assert_eq!(
            (&page["data"][0]["id"], &page["has_more"]),
            (&second_id, &json!(true))
        );
        let cursor = second_id.as_str().unwrap();
        let next = server
            .get(token, &format!("/v1/payments?limit=1&starting_after={cursor}"))
            .json();
        assert_eq!(
            (&next["data"][0]["id"], &next["has_more"]),
            (&first_id, &json!(false))
        );
    }
    let bad_limit = server.get(&alice_token, "/v1/payments?limit=0");
    assert_eq!(
        (bad_limit.status, bad_limit.code()),
        (422, "invalid_limit".to_string())
    );
}

#[test]
fn benchmark_endpoints_and_unknown_routes() {
    let server = start();
    let plaintext = server.request("GET", "/plaintext", &[], None);
    assert_eq!(
        (plaintext.status, plaintext.body.as_slice()),
        (200, &b"Hello, World!"[..])
    );
    assert_eq!(plaintext.header("content-type"), Some("text/plain"));
    assert_eq!(plaintext.header("server"), Some("axum"));
    let json = server.request("GET", "/json", &[], None);
    assert_eq!(json.json(), json!({"message": "Hello, World!"}));
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(server.request("GET", "/healthz", &[], None).body, b"ok");
    assert_eq!(server.request("GET", "/nope", &[], None).status, 404);
    assert_eq!(server.request("DELETE", "/v1/payments", &[], None).status, 405);
    let not_json = server.request("POST", "/v1/users", &[], Some("{"));
    assert_eq!(
        (not_json.status, not_json.code()),
        (400, "invalid_json".to_string())
    );
}
