//! Payments and refunds through the real binary, on two shards with users on both: the payment
//! object and every error code of `POST /v1/payments`, `GET /v1/payments/{id}`, `GET /v1/payments`
//! and `POST /v1/payments/{id}/refunds`; idempotency keys exactly as for deposits (per user, replay
//! byte for byte, 4xx included); nobody but the payer and the payee sees or refunds a payment; and a
//! bank test: many concurrent clients paying at random, retrying with the same key, after which
//! money is conserved and every payment is listed once for each party.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};

use serde_json::{json, Value};

use common::{get_with, post, Response, Server};

const ADMIN: &str = "Authorization: Bearer dev-admin-key-not-for-production";
const SHARDS: usize = 2;

fn start(shards: usize) -> Server {
    Server::start(
        shards,
        &[
            ("SHARDPAY_AUTH_PASSWORD_MEMORY_KIB", "64"),
            ("SHARDPAY_AUTH_PASSWORD_ITERATIONS", "1"),
            ("SHARDPAY_AUTH_USER_REQUEST_BURST", "100000"),
        ],
    )
}

/// A signed-up, logged-in user.
#[derive(Clone)]
struct User {
    name: String,
    id: String,
    token: String,
    /// The home shard of `SHARDS`.
    shard: usize,
}

impl User {
    fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }
}

/// Signs up and logs in.
fn user(port: u16, name: &str) -> User {
    let credentials = format!(r#"{{"username":"{name}","password":"correct horse battery"}}"#);
    let signup = post(port, "/v1/users", &[], &credentials);
    assert_eq!(signup.status, 201, "{}", signup.text());
    let login = post(port, "/v1/sessions", &[], &credentials);
    assert_eq!(login.status, 201, "{}", login.text());
    let id = signup.json()["id"].as_str().unwrap().to_string();
    let shard = home_shard(name);
    assert_eq!(
        shardpay::slots::UserId::parse(&id).unwrap().slot().shard(SHARDS),
        shard
    );
    User {
        name: name.to_string(),
        id,
        token: login.json()["access_token"].as_str().unwrap().to_string(),
        shard,
    }
}

fn home_shard(name: &str) -> usize {
    shardpay::slots::Slot::of_username(name).shard(SHARDS)
}

/// `base`, or `base1`, `base2`… : the first of these names whose home shard is `shard`.
fn name_on(base: &str, shard: usize) -> String {
    std::iter::once(base.to_string())
        .chain((1..).map(|n| format!("{base}{n}")))
        .find(|name| home_shard(name) == shard)
        .unwrap()
}

fn deposit(port: u16, key: &str, user: &str, amount: u64, currency: &str) -> Response {
    let body = json!({"user_id": user, "amount": amount, "currency": currency}).to_string();
    let response = post(
        port,
        "/v1/deposits",
        &[ADMIN, &format!("Idempotency-Key: {key}")],
        &body,
    );
    assert_eq!(response.status, 201, "deposit: {}", response.text());
    response
}

fn balances(port: u16, user: &User) -> Value {
    let response = get_with(port, "/v1/balances", &[&user.auth()]);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// The user's available amount in `currency` (0 if never held); panics unless it is a u64.
fn available(port: u16, user: &User, currency: &str) -> u64 {
    let all = balances(port, user);
    all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["currency"] == currency)
        .map(|b| {
            b["available"]
                .as_u64()
                .unwrap_or_else(|| panic!("not a u64: {b}"))
        })
        .unwrap_or(0)
}

/// `POST /v1/payments` with the user's token and `key` (if any).
fn pay_raw(port: u16, user: &User, key: Option<&str>, body: &str) -> Response {
    let auth = user.auth();
    let key = key.map(|key| format!("Idempotency-Key: {key}"));
    let mut headers = vec![auth.as_str()];
    headers.extend(key.as_deref());
    post(port, "/v1/payments", &headers, body)
}

fn pay(port: u16, user: &User, key: &str, body: Value) -> Response {
    pay_raw(port, user, Some(key), &body.to_string())
}

/// A payment that must succeed; returns its body.
fn paid(port: u16, user: &User, key: &str, body: Value) -> Value {
    let response = pay(port, user, key, body.clone());
    assert_eq!(response.status, 201, "{body}: {}", response.text());
    response.json()
}

fn refund_raw(port: u16, user: &User, payment: &str, key: Option<&str>, body: &str) -> Response {
    let auth = user.auth();
    let key = key.map(|key| format!("Idempotency-Key: {key}"));
    let mut headers = vec![auth.as_str()];
    headers.extend(key.as_deref());
    post(port, &format!("/v1/payments/{payment}/refunds"), &headers, body)
}

fn refund(port: u16, user: &User, payment: &str, key: &str, body: Value) -> Response {
    refund_raw(port, user, payment, Some(key), &body.to_string())
}

fn get_payment(port: u16, user: &User, id: &str) -> Response {
    get_with(port, &format!("/v1/payments/{id}"), &[&user.auth()])
}

fn list(port: u16, user: &User, query: &str) -> Response {
    get_with(port, &format!("/v1/payments{query}"), &[&user.auth()])
}

/// Every payment in the user's listing, newest first, page by page.
fn list_all(port: u16, user: &User) -> Vec<Value> {
    let mut all = Vec::new();
    let mut query = "?limit=100".to_string();
    loop {
        let page = list(port, user, &query);
        assert_eq!(page.status, 200, "{query}: {}", page.text());
        let page = page.json();
        let data = page["data"].as_array().unwrap().clone();
        let more = page["has_more"].as_bool().expect("has_more is a boolean");
        if let Some(last) = data.last() {
            query = format!("?limit=100&starting_after={}", last["id"].as_str().unwrap());
        }
        let empty = data.is_empty();
        all.extend(data);
        if !more {
            return all;
        }
        assert!(!empty, "has_more with an empty page");
    }
}

/// Asserts status and error code (and that it is the JSON error shape).
#[track_caller]
fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(
        (response.status, response.json()["error"]["code"].as_str()),
        (status, Some(code)),
        "{}",
        response.text()
    );
    assert!(response.json()["request_id"].is_string(), "{}", response.text());
}

/// True for an RFC 3339 UTC timestamp: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`.
fn rfc3339_utc(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits =
        |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().unwrap();
    if !(digits(0..4) && digits(5..7) && digits(8..10) && digits(11..13) && digits(14..16) && digits(17..19))
    {
        return false;
    }
    if (bytes[4], bytes[7], bytes[10], bytes[13], bytes[16]) != (b'-', b'-', b'T', b':', b':') {
        return false;
    }
    if !((1..=12).contains(&number(5..7))
        && (1..=31).contains(&number(8..10))
        && number(11..13) < 24
        && number(14..16) < 60
        && number(17..19) < 61)
    {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if length == 0 {
            return false;
        }
        rest = &fraction[length..];
    }
    rest == "Z" || rest == "+00:00"
}

/// Asserts the exact payment object.
#[track_caller]
fn assert_payment(
    payment: &Value,
    from: &User,
    to: &User,
    amount: u64,
    currency: &str,
    description: Option<&str>,
    refunded: u64,
) {
    let keys: HashSet<&str> = payment
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {payment}"))
        .keys()
        .map(String::as_str)
        .collect();
    let expected: HashSet<&str> = [
        "id",
        "from",
        "to",
        "amount",
        "currency",
        "description",
        "status",
        "amount_refunded",
        "created_at",
    ]
    .into();
    assert_eq!(keys, expected, "{payment}");
    let id = payment["id"].as_str().unwrap();
    assert!(id.starts_with("pay_") && id.len() > 4, "{payment}");
    assert_eq!(payment["from"], from.id.as_str(), "{payment}");
    assert_eq!(payment["to"], to.id.as_str(), "{payment}");
    assert_eq!(payment["amount"].as_u64(), Some(amount), "{payment}");
    assert_eq!(payment["currency"], currency, "{payment}");
    match description {
        Some(text) => assert_eq!(payment["description"], text, "{payment}"),
        None => assert!(payment["description"].is_null(), "{payment}"),
    }
    assert_eq!(payment["status"], "succeeded", "{payment}");
    assert_eq!(payment["amount_refunded"].as_u64(), Some(refunded), "{payment}");
    assert!(
        rfc3339_utc(payment["created_at"].as_str().unwrap_or("")),
        "{payment}"
    );
}

/// Two users on shard 0 and two on shard 1: (a0, b1, c0, d1).
fn four_users(port: u16) -> (User, User, User, User) {
    let a = user(port, &name_on("alice", 0));
    let b = user(port, &name_on("bob", 1));
    let c = user(port, &name_on("carol", 0));
    let d = user(port, &name_on("dave", 1));
    (a, b, c, d)
}

#[test]
fn payments_move_money_within_and_across_shards_by_username_and_by_id() {
    let server = start(SHARDS);
    let port = server.port;
    let (alice, bob, carol, dave) = four_users(port);
    assert_ne!(alice.shard, bob.shard);
    deposit(port, "fund-alice", &alice.id, 1000, "USD");
    deposit(port, "fund-dave", &dave.id, 80, "EUR");

    // Cross-shard, by username, sent to the payer's home shard.
    let response = pay(
        port,
        &alice,
        "p1",
        json!({"to": bob.name, "amount": 300, "currency": "USD", "description": "lunch"}),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("idempotent-replayed"), None);
    assert_eq!(response.header("x-shard"), Some(alice.shard.to_string().as_str()));
    let cross = response.json();
    assert_payment(&cross, &alice, &bob, 300, "USD", Some("lunch"), 0);

    // Same shard, by user id, sent to the other shard's port: X-Shard is still the payer's home.
    let response = pay(
        server.shard_port(1 - alice.shard),
        &alice,
        "p2",
        json!({"to": carol.id, "amount": 200, "currency": "USD"}),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("x-shard"), Some(alice.shard.to_string().as_str()));
    let same = response.json();
    assert_payment(&same, &alice, &carol, 200, "USD", None, 0);
    assert_ne!(same["id"], cross["id"]);

    // Cross-shard the other way, by user id; a payee who held nothing now holds the currency.
    let back = paid(
        port,
        &bob,
        "p3",
        json!({"to": alice.id, "amount": 50, "currency": "USD", "description": ""}),
    );
    assert_payment(&back, &bob, &alice, 50, "USD", Some(""), 0);
    // Same shard on shard 1, by username (case-folded like signup and login), in another currency.
    let euros = paid(
        server.shard_port(0),
        &dave,
        "p4",
        json!({"to": bob.name.to_ascii_uppercase(), "amount": 80, "currency": "EUR"}),
    );
    assert_payment(&euros, &dave, &bob, 80, "EUR", None, 0);

    for shard in 0..SHARDS {
        let port = server.shard_port(shard);
        assert_eq!(available(port, &alice, "USD"), 550);
        assert_eq!(available(port, &bob, "USD"), 250);
        assert_eq!(available(port, &carol, "USD"), 200);
        assert_eq!(available(port, &bob, "EUR"), 80);
        assert_eq!(
            balances(port, &dave),
            json!({"data": [{"currency": "EUR", "available": 0}]}),
            "a currency once held stays listed, at 0"
        );
    }

    // Both parties read each payment, from any port; X-Shard is the reader's home shard.
    for (payment, readers) in [
        (&cross, [&alice, &bob]),
        (&same, [&alice, &carol]),
        (&back, [&bob, &alice]),
        (&euros, [&dave, &bob]),
    ] {
        for reader in readers {
            for shard in 0..SHARDS {
                let seen = get_payment(server.shard_port(shard), reader, payment["id"].as_str().unwrap());
                assert_eq!(seen.status, 200, "{}", seen.text());
                assert_eq!(&seen.json(), payment);
                assert_eq!(seen.header("x-shard"), Some(reader.shard.to_string().as_str()));
            }
        }
    }
}

#[test]
fn payments_are_validated() {
    let server = start(SHARDS);
    let port = server.port;
    let (alice, bob, _carol, _dave) = four_users(port);
    deposit(port, "fund", &alice.id, 1000, "USD");
    let ok = |amount: Value| json!({"to": bob.name, "amount": amount, "currency": "USD"});

    let cases: Vec<(Value, u16, &str)> = vec![
        (ok(0.into()), 422, "invalid_amount"),
        (ok((-5).into()), 422, "invalid_amount"),
        (ok(json!(1.5)), 422, "invalid_amount"),
        (ok(1_000_000_000_000_001u64.into()), 422, "invalid_amount"),
        (
            json!({"to": bob.name, "amount": 5, "currency": "usd"}),
            422,
            "unsupported_currency",
        ),
        (
            json!({"to": bob.name, "amount": 5, "currency": "CHF"}),
            422,
            "unsupported_currency",
        ),
        (ok(1001.into()), 422, "insufficient_funds"),
        (
            json!({"to": bob.name, "amount": 1, "currency": "EUR"}),
            422,
            "insufficient_funds",
        ),
        (
            json!({"to": alice.name, "amount": 5, "currency": "USD"}),
            422,
            "self_payment",
        ),
        (
            json!({"to": alice.id, "amount": 5, "currency": "USD"}),
            422,
            "self_payment",
        ),
        (
            json!({"to": bob.name, "amount": 5, "currency": "USD", "description": "x".repeat(201)}),
            422,
            "invalid_description",
        ),
        (
            json!({"to": "nobody_here", "amount": 5, "currency": "USD"}),
            404,
            "payee_not_found",
        ),
        (
            json!({"to": "usr_0000aaaaaaaaaaaaaaaaaaaa", "amount": 5, "currency": "USD"}),
            404,
            "payee_not_found",
        ),
        (
            json!({"to": "usr_3fffaaaaaaaaaaaaaaaaaaaa", "amount": 5, "currency": "USD"}),
            404,
            "payee_not_found",
        ),
        (
            json!({"to": bob.name, "amount": 5, "currency": "USD", "memo": "x"}),
            422,
            "unknown_field",
        ),
    ];
    for (index, (body, status, code)) in cases.iter().enumerate() {
        let response = pay(port, &alice, &format!("bad-{index}"), body.clone());
        assert_eq!(
            (response.status, response.json()["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{body}: {}",
            response.text()
        );
        assert_eq!(
            response.header("x-shard"),
            Some(alice.shard.to_string().as_str()),
            "{body}"
        );
        if *code == "unknown_field" {
            assert_eq!(response.json()["error"]["param"], "memo");
        }
    }
    assert_eq!(available(port, &alice, "USD"), 1000, "nothing moved");
    assert_eq!(available(port, &bob, "USD"), 0);

    // The key is required; the token too.
    let body = ok(5.into()).to_string();
    let missing = pay_raw(port, &alice, None, &body);
    assert_error(&missing, 400, "idempotency_key_missing");
    let anonymous = post(port, "/v1/payments", &["Idempotency-Key: anon"], &body);
    assert_eq!(
        (anonymous.status, anonymous.header("www-authenticate")),
        (401, Some("Bearer"))
    );

    // The limits themselves are allowed: 200 characters (even of 2 bytes each), the whole balance.
    for (key, description) in [("d1", "x".repeat(200)), ("d2", "é".repeat(200))] {
        let response = pay(
            port,
            &alice,
            key,
            json!({"to": bob.name, "amount": 1, "currency": "USD", "description": description}),
        );
        assert_eq!(
            response.status,
            201,
            "{} characters: {}",
            description.chars().count(),
            response.text()
        );
        assert_eq!(response.json()["description"], description.as_str());
    }
    paid(port, &alice, "all", ok(998.into()));
    assert_eq!(available(port, &alice, "USD"), 0);
    assert_eq!(available(port, &bob, "USD"), 1000);

    // The largest amount there is.
    deposit(port, "big", &alice.id, 1_000_000_000_000_000, "GBP");
    let big = paid(
        port,
        &alice,
        "big",
        json!({"to": bob.id, "amount": 1_000_000_000_000_000u64, "currency": "GBP"}),
    );
    assert_payment(&big, &alice, &bob, 1_000_000_000_000_000, "GBP", None, 0);
    assert_eq!(available(port, &bob, "GBP"), 1_000_000_000_000_000);
}

#[test]
fn payment_idempotency_keys_replay_reject_reuse_store_client_errors_and_are_per_user() {
    let server = start(SHARDS);
    let port = server.port;
    let (alice, bob, carol, _dave) = four_users(port);
    // The admin used "k1" for a deposit: users' keys are their own.
    deposit(port, "k1", &alice.id, 1000, "USD");
    deposit(port, "fund-carol", &carol.id, 1000, "USD");

    let body = json!({"to": bob.name, "amount": 100, "currency": "USD", "description": "once"});
    let first = pay(port, &alice, "k1", body.clone());
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    for shard in 0..SHARDS {
        let again = pay(server.shard_port(shard), &alice, "k1", body.clone());
        assert_eq!(again.status, 201, "{}", again.text());
        assert_eq!(again.body, first.body, "byte for byte");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.header("x-shard"), Some(alice.shard.to_string().as_str()));
    }
    assert_eq!(available(port, &alice, "USD"), 900, "applied once");
    assert_eq!(available(port, &bob, "USD"), 100);

    // The same key with another request.
    for other in [
        json!({"to": bob.name, "amount": 101, "currency": "USD", "description": "once"}),
        json!({"to": bob.id, "amount": 100, "currency": "USD", "description": "once"}),
        json!({"to": bob.name, "amount": 100, "currency": "USD"}),
    ] {
        let reused = pay(port, &alice, "k1", other.clone());
        assert_error(&reused, 422, "idempotency_key_reused");
        assert_eq!(reused.json()["error"]["type"], "idempotency_error");
    }
    // Another user may use the same key, for the very same request.
    let carols = pay(port, &carol, "k1", body.clone());
    assert_eq!(carols.status, 201, "{}", carols.text());
    assert_eq!(carols.header("idempotent-replayed"), None);
    assert_payment(&carols.json(), &carol, &bob, 100, "USD", Some("once"), 0);
    assert_ne!(carols.json()["id"], first.json()["id"]);
    assert_eq!(available(port, &bob, "USD"), 200);
    assert_eq!(available(port, &carol, "USD"), 900);

    // A 4xx answer is stored: even once the money is there, the key answers as it did.
    let poor = json!({"to": bob.name, "amount": 5000, "currency": "USD"});
    let refused = pay(port, &alice, "k2", poor.clone());
    assert_error(&refused, 422, "insufficient_funds");
    deposit(port, "more", &alice.id, 10_000, "USD");
    let replayed = pay(port, &alice, "k2", poor.clone());
    assert_eq!(
        (replayed.status, &replayed.body),
        (422, &refused.body),
        "{}",
        replayed.text()
    );
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(available(port, &alice, "USD"), 10_900);
    let not_found = json!({"to": "no_such_payee", "amount": 5, "currency": "USD"});
    let refused = pay(port, &alice, "k3", not_found.clone());
    assert_error(&refused, 404, "payee_not_found");
    let replayed = pay(port, &alice, "k3", not_found);
    assert_eq!((replayed.status, &replayed.body), (404, &refused.body));
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    // A fresh key for the same request executes it.
    let fresh = pay(port, &alice, "k4", poor);
    assert_eq!(fresh.status, 201, "{}", fresh.text());
    assert_eq!(available(port, &alice, "USD"), 5_900);

    // A key used for a payment is not free for a refund (another request: another path).
    let to_bob = paid(
        port,
        &carol,
        "c2",
        json!({"to": bob.id, "amount": 10, "currency": "USD"}),
    );
    let bobs = paid(
        port,
        &bob,
        "kb",
        json!({"to": carol.id, "amount": 1, "currency": "USD"}),
    );
    assert_payment(&bobs, &bob, &carol, 1, "USD", None, 0);
    let crossed = refund(port, &bob, to_bob["id"].as_str().unwrap(), "kb", json!({}));
    assert_error(&crossed, 422, "idempotency_key_reused");
}

#[test]
fn concurrent_payments_with_one_key_apply_once() {
    let server = start(SHARDS);
    let port = server.port;
    let (alice, bob, _carol, _dave) = four_users(port);
    deposit(port, "fund", &alice.id, 1000, "USD");
    let body = json!({"to": bob.name, "amount": 10, "currency": "USD"});
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|index| {
            let (alice, body, barrier) = (alice.clone(), body.clone(), barrier.clone());
            let port = server.shard_port(index % SHARDS);
            std::thread::spawn(move || {
                barrier.wait();
                pay(port, &alice, "race", body)
            })
        })
        .collect();
    let mut bodies = HashSet::new();
    let mut originals = 0;
    for thread in threads {
        let response = thread.join().unwrap();
        match response.status {
            201 => {
                bodies.insert(response.body.clone());
                if response.header("idempotent-replayed").is_none() {
                    originals += 1;
                }
            }
            409 => {
                assert_error(&response, 409, "idempotency_key_in_use");
                assert_eq!(response.header("retry-after"), Some("1"));
            }
            other => panic!("unexpected {other}: {}", response.text()),
        }
    }
    assert_eq!(
        (originals, bodies.len()),
        (1, 1),
        "one execution, replayed byte for byte"
    );
    assert_eq!(available(port, &alice, "USD"), 990, "exactly one payment");
    assert_eq!(available(port, &bob, "USD"), 10);
}

#[test]
fn only_the_payer_and_the_payee_see_a_payment() {
    let server = start(SHARDS);
    let port = server.port;
    let (alice, bob, carol, dave) = four_users(port);
    deposit(port, "fund", &alice.id, 1000, "USD");
    deposit(port, "fund-c", &carol.id, 1000, "USD");
    let payment = paid(
        port,
        &alice,
        "p",
        json!({"to": bob.name, "amount": 100, "currency": "USD"}),
    );
    let id = payment["id"].as_str().unwrap();
    let carols = paid(
        port,
        &carol,
        "p",
        json!({"to": dave.name, "amount": 7, "currency": "USD"}),
    );

    for stranger in [&carol, &dave] {
        for shard in 0..SHARDS {
            let seen = get_payment(server.shard_port(shard), stranger, id);
            assert_error(&seen, 404, "payment_not_found");
        }
        // Nor refund it (404, not 403: nothing is revealed), with or without an amount.
        for body in [json!({}), json!({"amount": 1})] {
            let refused = refund(port, stranger, id, &format!("steal-{body}"), body);
            assert_error(&refused, 404, "payment_not_found");
        }
        let listed = list_all(port, stranger);
        assert!(
            listed.iter().all(|p| p["id"] != id),
            "{} lists A→B's payment",
            stranger.name
        );
    }
    // The payer may read but not refund it.
    let refused = refund(port, &alice, id, "mine", json!({}));
    assert_error(&refused, 404, "payment_not_found");
    // The listings hold exactly one's own payments.
    assert_eq!(list_all(port, &alice), vec![payment.clone()]);
    assert_eq!(list_all(port, &bob), vec![payment.clone()]);
    assert_eq!(list_all(port, &carol), vec![carols.clone()]);
    assert_eq!(list_all(port, &dave), vec![carols.clone()]);
    // Unknown ids, well-formed or not.
    for unknown in [
        "pay_00000000000000000000000000",
        "pay_x",
        "nothing",
        "ref_00000000",
    ] {
        assert_error(&get_payment(port, &alice, unknown), 404, "payment_not_found");
        let refused = refund(port, &bob, unknown, &format!("u-{unknown}"), json!({}));
        assert_error(&refused, 404, "payment_not_found");
    }
    // Nothing moved.
    assert_eq!(available(port, &alice, "USD"), 900);
    assert_eq!(available(port, &bob, "USD"), 100);
    assert_eq!(available(port, &carol, "USD"), 993);
    assert_eq!(available(port, &dave, "USD"), 7);
    // Every route needs a token.
    for path in [format!("/v1/payments/{id}"), "/v1/payments".to_string()] {
        let anonymous = get_with(port, &path, &[]);
        assert_eq!(
            (anonymous.status, anonymous.header("www-authenticate")),
            (401, Some("Bearer")),
            "{path}"
        );
    }
    let anonymous = post(
        port,
        &format!("/v1/payments/{id}/refunds"),
        &["Idempotency-Key: anon"],
        "{}",
    );
    assert_eq!(
        (anonymous.status, anonymous.header("www-authenticate")),
        (401, Some("Bearer"))
    );
}

#[test]
fn listings_are_newest_first_with_sent_and_received_and_paginate() {
    let server = start(SHARDS);
    let port = server.port;
    let (alice, bob, carol, dave) = four_users(port);
    for user in [&alice, &bob, &carol, &dave] {
        deposit(port, &format!("fund-{}", user.name), &user.id, 1000, "USD");
    }
    // Alice sends and receives, within her shard and across.
    let mut made = Vec::new();
    for n in 0..12u64 {
        let (from, to) = match n % 4 {
            0 => (&alice, &bob),
            1 => (&carol, &alice),
            2 => (&alice, &carol),
            _ => (&dave, &alice),
        };
        made.push(paid(
            port,
            from,
            &format!("n{n}"),
            json!({"to": to.id, "amount": n + 1, "currency": "USD"}),
        ));
    }
    // Noise alice is no party to.
    paid(
        port,
        &bob,
        "noise",
        json!({"to": dave.name, "amount": 1, "currency": "USD"}),
    );
    let newest_first: Vec<Value> = made.iter().rev().cloned().collect();

    let page = list(port, &alice, "");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(page.header("x-shard"), Some(alice.shard.to_string().as_str()));
    assert_eq!(
        page.json(),
        json!({"data": newest_first[..10], "has_more": true}),
        "default limit 10"
    );
    let rest = list(
        server.shard_port(1 - alice.shard),
        &alice,
        &format!("?starting_after={}", newest_first[9]["id"].as_str().unwrap()),
    );
    assert_eq!(rest.status, 200, "{}", rest.text());
    assert_eq!(
        rest.json(),
        json!({"data": newest_first[10..], "has_more": false})
    );
    assert_eq!(
        list(port, &alice, "?limit=100").json(),
        json!({"data": newest_first, "has_more": false})
    );
    assert_eq!(
        list(port, &alice, "?limit=12").json(),
        json!({"data": newest_first, "has_more": false})
    );
    // Page by 5: 5, 5, 2.
    let mut seen = Vec::new();
    let mut query = "?limit=5".to_string();
    for (size, more) in [(5, true), (5, true), (2, false)] {
        let page = list(port, &alice, &query);
        assert_eq!(page.status, 200, "{query}: {}", page.text());
        let page = page.json();
        assert_eq!(page["data"].as_array().unwrap().len(), size, "{query}");
        assert_eq!(page["has_more"], more, "{query}");
        let last = page["data"].as_array().unwrap().last().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        seen.extend(page["data"].as_array().unwrap().iter().cloned());
        query = format!("?limit=5&starting_after={last}");
    }
    assert_eq!(seen, newest_first);
    let one = list(port, &alice, "?limit=1").json();
    assert_eq!(one, json!({"data": [newest_first[0]], "has_more": true}));
    // After the oldest, nothing.
    let after_oldest = list(
        port,
        &alice,
        &format!("?starting_after={}", newest_first[11]["id"].as_str().unwrap()),
    );
    assert_eq!(after_oldest.json(), json!({"data": [], "has_more": false}));
    // Carol sees what she sent and received with alice, and nothing else.
    let carols: Vec<Value> = newest_first
        .iter()
        .filter(|p| p["from"] == carol.id.as_str() || p["to"] == carol.id.as_str())
        .cloned()
        .collect();
    assert_eq!(list_all(port, &carol), carols);

    for limit in ["0", "101", "-1", "abc", "", "1.5", "99999999999999999999"] {
        let refused = list(port, &alice, &format!("?limit={limit}"));
        assert_error(&refused, 422, "invalid_limit");
    }
    let bobs_own = list_all(port, &bob)
        .into_iter()
        .find(|p| p["to"] == dave.id.as_str())
        .unwrap();
    for unknown in [
        "pay_00000000000000000000000000",
        "nothing",
        // A payment that exists but is not hers reveals nothing either.
        bobs_own["id"].as_str().unwrap(),
    ] {
        let refused = list(port, &alice, &format!("?starting_after={unknown}"));
        assert_error(&refused, 422, "invalid_starting_after");
    }
    // A new user has an empty listing.
    let erin = user(port, "erin");
    assert_eq!(
        list(port, &erin, "").json(),
        json!({"data": [], "has_more": false})
    );
}

#[test]
fn the_payee_refunds_within_and_across_shards() {
    let server = start(SHARDS);
    let port = server.port;
    let (alice, bob, carol, dave) = four_users(port);
    deposit(port, "fund", &alice.id, 1000, "USD");
    deposit(port, "fund-eur", &alice.id, 100, "EUR");

    // Across shards: a partial refund, then the rest.
    let payment = paid(
        port,
        &alice,
        "p1",
        json!({"to": bob.name, "amount": 500, "currency": "USD"}),
    );
    let id = payment["id"].as_str().unwrap();
    let response = refund(
        server.shard_port(alice.shard),
        &bob,
        id,
        "r1",
        json!({"amount": 200}),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("x-shard"), Some(bob.shard.to_string().as_str()));
    assert_eq!(response.header("idempotent-replayed"), None);
    let partial = response.json();
    let keys: HashSet<&str> = partial.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        HashSet::from(["id", "payment_id", "amount", "currency", "created_at"]),
        "{partial}"
    );
    assert!(partial["id"].as_str().unwrap().starts_with("ref_"), "{partial}");
    assert_eq!(partial["payment_id"], id);
    assert_eq!(partial["amount"], 200);
    assert_eq!(partial["currency"], "USD");
    assert!(rfc3339_utc(partial["created_at"].as_str().unwrap()), "{partial}");
    assert_eq!(available(port, &alice, "USD"), 700);
    assert_eq!(available(port, &bob, "USD"), 300);
    for reader in [&alice, &bob] {
        for shard in 0..SHARDS {
            let seen = get_payment(server.shard_port(shard), reader, id);
            assert_eq!(seen.status, 200, "{}", seen.text());
            assert_payment(&seen.json(), &alice, &bob, 500, "USD", None, 200);
            assert_eq!(seen.json()["id"], id);
            assert_eq!(seen.json()["created_at"], payment["created_at"]);
        }
    }
    // The same key and request replays; another request with it is refused.
    let replay = refund(port, &bob, id, "r1", json!({"amount": 200}));
    assert_eq!((replay.status, &replay.body), (201, &response.body));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    let reused = refund(port, &bob, id, "r1", json!({"amount": 201}));
    assert_error(&reused, 422, "idempotency_key_reused");
    assert_eq!(available(port, &bob, "USD"), 300, "refunded once");
    // More than is left.
    let too_much = refund(port, &bob, id, "r2", json!({"amount": 301}));
    assert_error(&too_much, 422, "refund_exceeds_payment");
    let too_much_again = refund(port, &bob, id, "r2", json!({"amount": 301}));
    assert_eq!(
        (too_much_again.status, &too_much_again.body),
        (422, &too_much.body)
    );
    assert_eq!(too_much_again.header("idempotent-replayed"), Some("true"));
    // Validation, and the key.
    for (key, body, code) in [
        ("v1", json!({"amount": 0}), "invalid_amount"),
        ("v2", json!({"amount": -1}), "invalid_amount"),
        ("v3", json!({"amount": 1.5}), "invalid_amount"),
        ("v4", json!({"amount": 10, "currency": "USD"}), "unknown_field"),
    ] {
        let refused = refund(port, &bob, id, key, body.clone());
        assert_error(&refused, 422, code);
    }
    let missing = refund_raw(port, &bob, id, None, "{}");
    assert_error(&missing, 400, "idempotency_key_missing");
    // No amount: the rest.
    let rest = refund(port, &bob, id, "r3", json!({}));
    assert_eq!(rest.status, 201, "{}", rest.text());
    assert_eq!(
        (rest.json()["amount"].as_u64(), rest.json()["payment_id"].as_str()),
        (Some(300), Some(id))
    );
    assert_ne!(rest.json()["id"], partial["id"]);
    assert_eq!(available(port, &alice, "USD"), 1000);
    assert_eq!(available(port, &bob, "USD"), 0);
    assert_payment(
        &get_payment(port, &alice, id).json(),
        &alice,
        &bob,
        500,
        "USD",
        None,
        500,
    );
    let nothing_left = refund(port, &bob, id, "r4", json!({"amount": 1}));
    assert_error(&nothing_left, 422, "refund_exceeds_payment");

    // Within a shard, in another currency, all at once.
    let payment = paid(
        port,
        &alice,
        "p2",
        json!({"to": carol.id, "amount": 60, "currency": "EUR"}),
    );
    let id = payment["id"].as_str().unwrap();
    let response = refund(port, &carol, id, "r1", json!({"amount": 60}));
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json()["currency"], "EUR");
    assert_eq!(response.header("x-shard"), Some(carol.shard.to_string().as_str()));
    assert_eq!(available(port, &alice, "EUR"), 100);
    assert_eq!(available(port, &carol, "EUR"), 0);
    assert_eq!(get_payment(port, &carol, id).json()["amount_refunded"], 60);

    // The payee already spent it: the refund cannot take the balance below zero.
    let payment = paid(
        port,
        &alice,
        "p3",
        json!({"to": dave.name, "amount": 100, "currency": "USD"}),
    );
    let id = payment["id"].as_str().unwrap();
    paid(
        port,
        &dave,
        "spend",
        json!({"to": carol.name, "amount": 95, "currency": "USD"}),
    );
    let broke = refund(port, &dave, id, "r1", json!({}));
    assert_error(&broke, 422, "insufficient_funds");
    let broke = refund(port, &dave, id, "r2", json!({"amount": 6}));
    assert_error(&broke, 422, "insufficient_funds");
    let partial = refund(port, &dave, id, "r3", json!({"amount": 5}));
    assert_eq!(partial.status, 201, "{}", partial.text());
    assert_eq!(available(port, &dave, "USD"), 0);
    assert_eq!(available(port, &alice, "USD"), 905);
    assert_eq!(get_payment(port, &dave, id).json()["amount_refunded"], 5);
    // A refund by the payer or a stranger changes nothing.
    for who in [&alice, &bob, &carol] {
        let refused = refund(port, who, id, "other", json!({"amount": 1}));
        assert_error(&refused, 404, "payment_not_found");
    }
    assert_eq!(get_payment(port, &alice, id).json()["amount_refunded"], 5);
    // Money is conserved: 1000 + 100 deposited.
    let usd: u64 = [&alice, &bob, &carol, &dave]
        .iter()
        .map(|u| available(port, u, "USD"))
        .sum();
    let eur: u64 = [&alice, &bob, &carol, &dave]
        .iter()
        .map(|u| available(port, u, "EUR"))
        .sum();
    assert_eq!((usd, eur), (1000, 100));
}

#[test]
fn concurrent_refunds_never_exceed_the_payment() {
    let server = start(SHARDS);
    let port = server.port;
    let (alice, bob, carol, _dave) = four_users(port);
    deposit(port, "fund", &alice.id, 1000, "USD");
    // Across shards (alice → bob) and within one (alice → carol).
    for (payee, key) in [(&bob, "p1"), (&carol, "p2")] {
        let payment = paid(
            port,
            &alice,
            key,
            json!({"to": payee.id, "amount": 100, "currency": "USD"}),
        );
        let id = payment["id"].as_str().unwrap().to_string();
        let barrier = Arc::new(Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|index| {
                let (payee, id, barrier) = ((*payee).clone(), id.clone(), barrier.clone());
                let port = server.shard_port(index % SHARDS);
                std::thread::spawn(move || {
                    // Half ask for 30, half for the rest.
                    let body = if index % 2 == 0 {
                        json!({"amount": 30})
                    } else {
                        json!({})
                    };
                    barrier.wait();
                    refund(port, &payee, &id, &format!("r{index}"), body)
                })
            })
            .collect();
        let mut refunded = 0;
        for thread in threads {
            let response = thread.join().unwrap();
            match response.status {
                201 => refunded += response.json()["amount"].as_u64().unwrap(),
                _ => assert_error(&response, 422, "refund_exceeds_payment"),
            }
        }
        assert!(0 < refunded && refunded <= 100, "refunded {refunded} of 100");
        for reader in [&alice, payee] {
            let seen = get_payment(port, reader, &id);
            assert_eq!(
                seen.json()["amount_refunded"].as_u64(),
                Some(refunded),
                "{}",
                seen.text()
            );
        }
        assert_eq!(available(port, payee, "USD"), 100 - refunded);
    }
    let total: u64 = [&alice, &bob, &carol]
        .iter()
        .map(|u| available(port, u, "USD"))
        .sum();
    assert_eq!(total, 1000);
}

/// xorshift64*: a small deterministic generator (no `rand` among the dev-dependencies).
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// One request of the bank test and what came back.
struct Attempt {
    thread: usize,
    payer: usize,
    key: String,
    body: String,
    retry: bool,
    response: Response,
}

#[test]
fn bank_test_money_is_conserved_under_concurrent_cross_shard_payments_and_retries() {
    const USERS: usize = 8;
    const THREADS: usize = 64;
    const PAYMENTS_PER_THREAD: usize = 30;
    /// Threads `2k` and `2k + 1` for `k < PAIRS` run the same script: the same keys, concurrently.
    const PAIRS: usize = 8;
    let server = start(SHARDS);
    let port = server.port;
    let users: Vec<User> = (0..USERS)
        .map(|n| user(port, &name_on(&format!("bank{n}x"), n % SHARDS)))
        .collect();
    assert_eq!(
        users.iter().filter(|u| u.shard == 0).count(),
        USERS / 2,
        "users on both shards"
    );
    let deposits: Vec<u64> = (0..USERS as u64).map(|n| 2_000 + 500 * n).collect();
    for (user, amount) in users.iter().zip(&deposits) {
        deposit(port, &format!("fund-{}", user.name), &user.id, *amount, "USD");
    }

    let users = Arc::new(users);
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (users, barrier) = (users.clone(), barrier.clone());
            let script = if thread < 2 * PAIRS { thread / 2 } else { thread };
            // Spread the clients over the public port and both shard ports.
            let port = match thread % 3 {
                0 => server.port,
                n => server.shard_port(n - 1),
            };
            std::thread::spawn(move || {
                let mut random =
                    Random(0x9E37_79B9_7F4A_7C15 ^ (script as u64 + 1).wrapping_mul(0x1000_0001));
                let mut attempts = Vec::new();
                barrier.wait();
                for n in 0..PAYMENTS_PER_THREAD {
                    let payer = random.below(USERS as u64) as usize;
                    // Mostly across shards.
                    let payee = loop {
                        let candidate = random.below(USERS as u64) as usize;
                        let cross = users[candidate].shard != users[payer].shard;
                        if candidate != payer && (cross || random.below(5) == 0) {
                            break candidate;
                        }
                    };
                    let amount = if random.below(8) == 0 {
                        2_000 + random.below(8_000)
                    } else {
                        1 + random.below(700)
                    };
                    let to = if random.below(2) == 0 {
                        json!(users[payee].id)
                    } else {
                        json!(users[payee].name)
                    };
                    let body = json!({"to": to, "amount": amount, "currency": "USD"}).to_string();
                    let key = format!("s{script}-{n}");
                    for retry in [false, true] {
                        let response = pay_raw(port, &users[payer], Some(&key), &body);
                        attempts.push(Attempt {
                            thread,
                            payer,
                            key: key.clone(),
                            body: body.clone(),
                            retry,
                            response,
                        });
                    }
                }
                attempts
            })
        })
        .collect();
    let mut failures: Vec<String> = Vec::new();
    let mut attempts = Vec::new();
    for (thread, handle) in threads.into_iter().enumerate() {
        match handle.join() {
            Ok(list) => attempts.extend(list),
            Err(_) => failures.push(format!("client thread {thread} panicked (see its output)")),
        }
    }
    let users = Arc::try_unwrap(users).ok().unwrap();

    // Every answer is a 201, a 422 for want of funds, or a 409 while the paired thread's request runs;
    // every answer for one (payer, key) that is not a 409 is the same bytes, exactly one not a replay.
    let describe = |a: &Attempt| {
        format!(
            "thread {} {} POST /v1/payments as {} Idempotency-Key: {} {} → {} {:?} {}",
            a.thread,
            if a.retry { "retry" } else { "first" },
            users[a.payer].name,
            a.key,
            a.body,
            a.response.status,
            a.response.header("idempotent-replayed"),
            a.response.text()
        )
    };
    let mut groups: HashMap<(usize, String), Vec<&Attempt>> = HashMap::new();
    for attempt in &attempts {
        let response = &attempt.response;
        let code = serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
        let paired = attempt.thread < 2 * PAIRS;
        let allowed = match (response.status, code.as_deref()) {
            (201, _) | (422, Some("insufficient_funds")) => true,
            (409, Some("idempotency_key_in_use")) => {
                (paired || attempt.retry) && response.header("retry-after") == Some("1")
            }
            _ => false,
        };
        if !allowed {
            failures.push(format!("unexpected answer: {}", describe(attempt)));
        }
        if attempt.retry
            && !paired
            && response.status != 409
            && response.header("idempotent-replayed") != Some("true")
        {
            failures.push(format!("retry not marked as a replay: {}", describe(attempt)));
        }
        groups
            .entry((attempt.payer, attempt.key.clone()))
            .or_default()
            .push(attempt);
    }
    let mut created: HashMap<String, Value> = HashMap::new();
    for ((payer, key), group) in &groups {
        let answered: Vec<&&Attempt> = group.iter().filter(|a| a.response.status != 409).collect();
        let Some(first) = answered.first() else {
            failures.push(format!("{} key {key}: only 409s", users[*payer].name));
            continue;
        };
        for other in &answered {
            if (other.response.status, &other.response.body) != (first.response.status, &first.response.body)
            {
                failures.push(format!(
                    "answers differ for one key:\n  {}\n  {}",
                    describe(first),
                    describe(other)
                ));
            }
        }
        let originals: Vec<&&&Attempt> = answered
            .iter()
            .filter(|a| a.response.header("idempotent-replayed") != Some("true"))
            .collect();
        if originals.len() != 1 {
            failures.push(format!(
                "{} key {key}: {} answers without Idempotent-Replayed: true (want exactly 1): {}",
                users[*payer].name,
                originals.len(),
                originals
                    .iter()
                    .map(|a| describe(a))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        for original in originals {
            if original.response.header("x-shard") != Some(users[*payer].shard.to_string().as_str()) {
                failures.push(format!(
                    "X-Shard {:?}, want the payer's home shard {}: {}",
                    original.response.header("x-shard"),
                    users[*payer].shard,
                    describe(original)
                ));
            }
        }
        if first.response.status == 201 {
            let payment: Value = serde_json::from_slice(&first.response.body).unwrap();
            let body: Value = serde_json::from_str(&first.body).unwrap();
            let payee = users
                .iter()
                .find(|u| body["to"] == u.id.as_str() || body["to"] == u.name.as_str())
                .unwrap();
            let shape_ok = payment["from"] == users[*payer].id.as_str()
                && payment["to"] == payee.id.as_str()
                && payment["amount"] == body["amount"]
                && payment["currency"] == "USD"
                && payment["amount_refunded"] == 0
                && payment["status"] == "succeeded"
                && payment["id"].as_str().is_some_and(|id| id.starts_with("pay_"));
            if !shape_ok {
                failures.push(format!("wrong payment object: {}", describe(first)));
            }
            let id = payment["id"].as_str().unwrap_or("").to_string();
            if created.insert(id.clone(), payment).is_some() {
                failures.push(format!("payment id {id} returned for two keys"));
            }
        }
    }
    let refused = groups
        .values()
        .filter(|g| g.iter().any(|a| a.response.status == 422))
        .count();
    let in_use = attempts.iter().filter(|a| a.response.status == 409).count();
    let replays = attempts
        .iter()
        .filter(|a| a.response.header("idempotent-replayed") == Some("true"))
        .count();
    eprintln!(
        "bank test: {} requests, {} payments made, {} refused for want of funds, {} replays, {} 409s",
        attempts.len(),
        created.len(),
        refused,
        replays,
        in_use
    );
    assert!(
        created.len() > 100 && refused > 0,
        "the test exercised both outcomes"
    );

    // Balances: unsigned, summing to the deposits, and equal to what the listings say.
    let mut total = 0u64;
    let mut listed_count: HashMap<String, usize> = HashMap::new();
    for (index, user) in users.iter().enumerate() {
        let all = balances(server.shard_port(index % SHARDS), user);
        let data = all["data"].as_array().unwrap();
        if data.len() != 1 || data[0]["currency"] != "USD" {
            failures.push(format!("{}: balances {all}", user.name));
        }
        let Some(balance) = data.first().and_then(|b| b["available"].as_u64()) else {
            failures.push(format!("{}: balance not an unsigned integer: {all}", user.name));
            continue;
        };
        total += balance;
        let listing = list_all(port, user);
        let (mut received, mut sent) = (0u64, 0u64);
        let mut ids = HashSet::new();
        for payment in &listing {
            let id = payment["id"].as_str().unwrap_or("").to_string();
            if !ids.insert(id.clone()) {
                failures.push(format!("{}: {id} listed twice", user.name));
            }
            match created.get(&id) {
                None => failures.push(format!(
                    "{}: lists a payment no client was told of: {payment}",
                    user.name
                )),
                Some(known) if known != payment => failures.push(format!(
                    "{}: listing shows {payment}, the 201 said {known}",
                    user.name
                )),
                Some(_) => {}
            }
            let amount = payment["amount"].as_u64().unwrap_or(0);
            if payment["from"] == user.id.as_str() {
                sent += amount;
            } else if payment["to"] == user.id.as_str() {
                received += amount;
            } else {
                failures.push(format!(
                    "{}: lists a payment it is no party to: {payment}",
                    user.name
                ));
            }
            *listed_count.entry(id).or_default() += 1;
        }
        let expected = (deposits[index] + received).checked_sub(sent);
        if expected != Some(balance) {
            failures.push(format!(
                "{}: balance {balance}, but deposits {} + received {received} − sent {sent} = {expected:?}",
                user.name, deposits[index]
            ));
        }
        for payment in created.values() {
            let party = payment["from"] == user.id.as_str() || payment["to"] == user.id.as_str();
            let id = payment["id"].as_str().unwrap();
            if party && !ids.contains(id) {
                failures.push(format!(
                    "{}: a 201 payment is missing from the listing: {payment}",
                    user.name
                ));
            }
        }
    }
    for (id, count) in &listed_count {
        if *count != 2 {
            failures.push(format!(
                "{id} is listed {count} times in all (want 2: payer and payee)"
            ));
        }
    }
    let deposited: u64 = deposits.iter().sum();
    if total != deposited {
        failures.push(format!(
            "the balances sum to {total}, the deposits to {deposited}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} failures; the first 20:\n{}",
        failures.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}
