//! Deposits and balances through the real binary: the admin API key, idempotency keys exactly as
//! the contract says (replay byte for byte with `Idempotent-Replayed: true`, 4xx included; reuse
//! with another request is 422; concurrent requests with one key apply once), validation, and
//! balances on the user's home shard from every shard's port.

mod common;

use serde_json::Value;

use common::{get_with, post, Client, Response, Server};

const ADMIN: &str = "Authorization: Bearer dev-admin-key-not-for-production";

fn start(shards: usize) -> Server {
    Server::start(
        shards,
        &[
            ("SHARDPAY_AUTH_PASSWORD_MEMORY_KIB", "64"),
            ("SHARDPAY_AUTH_PASSWORD_ITERATIONS", "1"),
        ],
    )
}

/// Signs up and logs in; returns (user id, access token).
fn user(port: u16, name: &str) -> (String, String) {
    let credentials = format!(r#"{{"username":"{name}","password":"correct horse battery"}}"#);
    let signup = post(port, "/v1/users", &[], &credentials);
    assert_eq!(signup.status, 201, "{}", signup.text());
    let login = post(port, "/v1/sessions", &[], &credentials);
    assert_eq!(login.status, 201, "{}", login.text());
    let id = signup.json()["id"].as_str().unwrap().to_string();
    (id, login.json()["access_token"].as_str().unwrap().to_string())
}

fn deposit(port: u16, key: &str, user: &str, amount: Value, currency: &str) -> Response {
    let body = serde_json::json!({"user_id": user, "amount": amount, "currency": currency}).to_string();
    post(
        port,
        "/v1/deposits",
        &[ADMIN, &format!("Idempotency-Key: {key}")],
        &body,
    )
}

fn balances(port: u16, token: &str) -> Value {
    let response = get_with(port, "/v1/balances", &[&format!("Authorization: Bearer {token}")]);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[test]
fn deposits_credit_the_user_and_balances_show_it_from_every_shard() {
    let server = start(2);
    let (alice, token) = user(server.port, "alice");
    let first = deposit(server.port, "k1", &alice, 500.into(), "USD");
    assert_eq!(first.status, 201, "{}", first.text());
    let body = first.json();
    assert!(body["id"].as_str().unwrap().starts_with("dep_"));
    assert_eq!(
        (body["user_id"].as_str(), body["amount"].as_u64()),
        (Some(alice.as_str()), Some(500))
    );
    assert_eq!(body["currency"], "USD");
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(deposit(server.port, "k2", &alice, 7.into(), "EUR").status, 201);
    assert_eq!(deposit(server.port, "k3", &alice, 1.into(), "USD").status, 201);
    for shard in 0..2 {
        let seen = get_with(
            server.shard_port(shard),
            "/v1/balances",
            &[&format!("Authorization: Bearer {token}")],
        );
        assert_eq!(seen.status, 200);
        assert_eq!(
            seen.json(),
            serde_json::json!({"data": [{"currency": "EUR", "available": 7}, {"currency": "USD", "available": 501}]})
        );
        // The user's home shard answers, whichever port was used.
        let home = shardpay::slots::UserId::parse(&alice).unwrap().slot().shard(2);
        assert_eq!(seen.header("x-shard"), Some(home.to_string().as_str()));
    }
    // A new user holds nothing yet.
    let (_, bob_token) = user(server.port, "bob");
    assert_eq!(balances(server.port, &bob_token), serde_json::json!({"data": []}));
}

#[test]
fn idempotency_keys_replay_reject_reuse_and_store_client_errors() {
    let server = start(2);
    let (alice, token) = user(server.port, "alice");
    let first = deposit(server.port, "same", &alice, 100.into(), "USD");
    assert_eq!(first.status, 201);
    assert!(first.header("idempotent-replayed").is_none());
    // The same key and request, through either shard: the stored answer, byte for byte.
    for shard in 0..2 {
        let again = deposit(server.shard_port(shard), "same", &alice, 100.into(), "USD");
        assert_eq!(again.status, 201);
        assert_eq!(again.body, first.body);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(
        balances(server.port, &token)["data"][0]["available"],
        100,
        "applied once"
    );
    // The same key with another request.
    let reused = deposit(server.port, "same", &alice, 101.into(), "USD");
    assert_eq!(reused.status, 422);
    assert_eq!(reused.json()["error"]["code"], "idempotency_key_reused");
    assert_eq!(reused.json()["error"]["type"], "idempotency_error");
    // A 4xx answer is stored too, request id and all.
    let refused = deposit(server.port, "bad", &alice, 5.into(), "XXX");
    assert_eq!(refused.status, 422);
    assert_eq!(refused.json()["error"]["code"], "unsupported_currency");
    let replayed = deposit(server.port, "bad", &alice, 5.into(), "XXX");
    assert_eq!((replayed.status, &replayed.body), (422, &refused.body));
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
}

#[test]
fn concurrent_requests_with_one_key_apply_once() {
    let server = start(2);
    let (alice, token) = user(server.port, "alice");
    let port = server.port;
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let alice = alice.clone();
            std::thread::spawn(move || deposit(port, "race", &alice, 10.into(), "USD"))
        })
        .collect();
    let mut created = 0;
    for thread in threads {
        let response = thread.join().unwrap();
        match response.status {
            201 => created += 1,
            409 => {
                assert_eq!(response.json()["error"]["code"], "idempotency_key_in_use");
                assert_eq!(response.header("retry-after"), Some("1"));
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    assert!(created >= 1);
    assert_eq!(
        balances(server.port, &token)["data"][0]["available"],
        10,
        "exactly one deposit"
    );
}

#[test]
fn deposits_are_validated() {
    let server = start(1);
    let (alice, _) = user(server.port, "alice");
    let cases: [(Value, &str, &str, u16, &str); 6] = [
        (0.into(), "USD", "a", 422, "invalid_amount"),
        ((-5).into(), "USD", "b", 422, "invalid_amount"),
        (1_000_000_000_000_001u64.into(), "USD", "c", 422, "invalid_amount"),
        (serde_json::json!(1.5), "USD", "d", 422, "invalid_amount"),
        (5.into(), "usd", "e", 422, "unsupported_currency"),
        (5.into(), "CHF", "f", 422, "unsupported_currency"),
    ];
    for (amount, currency, key, status, code) in cases {
        let response = deposit(server.port, key, &alice, amount.clone(), currency);
        assert_eq!(
            response.status,
            status,
            "{amount} {currency}: {}",
            response.text()
        );
        assert_eq!(response.json()["error"]["code"], code);
    }
    let unknown = deposit(server.port, "g", "usr_0000aaaaaaaaaaaaaaaaaaaa", 5.into(), "USD");
    assert_eq!(
        (unknown.status, unknown.json()["error"]["code"].clone()),
        (404, "user_not_found".into())
    );
    let malformed = deposit(server.port, "h", "nobody", 5.into(), "USD");
    assert_eq!(malformed.status, 404);
    let extra = post(
        server.port,
        "/v1/deposits",
        &[ADMIN, "Idempotency-Key: i"],
        &format!(r#"{{"user_id":"{alice}","amount":5,"currency":"USD","memo":"x"}}"#),
    );
    assert_eq!(
        (extra.status, extra.json()["error"]["param"].clone()),
        (422, "memo".into())
    );
    // The key is required and checked, and only the admin key may deposit.
    let body = format!(r#"{{"user_id":"{alice}","amount":5,"currency":"USD"}}"#);
    let missing = post(server.port, "/v1/deposits", &[ADMIN], &body);
    assert_eq!(
        (missing.status, missing.json()["error"]["code"].clone()),
        (400, "idempotency_key_missing".into())
    );
    let invalid = post(
        server.port,
        "/v1/deposits",
        &[ADMIN, "Idempotency-Key: has space"],
        &body,
    );
    assert_eq!(invalid.json()["error"]["code"], "idempotency_key_invalid");
    for auth in [
        "",
        "Authorization: Bearer wrong-key-wrong-key",
        "Authorization: Basic abc",
    ] {
        let headers: Vec<&str> = [auth, "Idempotency-Key: j"]
            .into_iter()
            .filter(|h| !h.is_empty())
            .collect();
        let refused = post(server.port, "/v1/deposits", &headers, &body);
        assert_eq!(refused.status, 401, "{auth}");
        assert_eq!(refused.json()["error"]["code"], "invalid_api_key");
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    }
}

#[test]
fn balances_need_a_valid_session() {
    let server = start(1);
    let (_, token) = user(server.port, "alice");
    let none = get_with(server.port, "/v1/balances", &[]);
    assert_eq!(
        (none.status, none.header("www-authenticate")),
        (401, Some("Bearer"))
    );
    let mut client = Client::connect(server.port);
    client.send(
        format!("DELETE /v1/sessions/current HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(client.read_response().status, 204);
    let after = get_with(
        server.port,
        "/v1/balances",
        &[&format!("Authorization: Bearer {token}")],
    );
    assert_eq!(after.status, 401, "revoked at once");
}
