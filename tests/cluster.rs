//! Two shardpay nodes on one ScyllaDB keyspace, each serving half of the slots
//! (`cluster.slots`, `cluster.peers`): through the real binary and a real Cassandra node.
//!
//! Needs a node: `scripts/cassandra.sh start`, then
//! `CASSANDRA_NODE=127.0.0.1:9042 cargo test --test cluster -- --ignored` (scripts/test.sh does
//! both).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{get, get_with, metric_sum, post, usd_balance, Server};
use serde_json::json;
use shardpay::slots::Slot;

const ADMIN: &str = "Authorization: Bearer dev-admin-key-not-for-production";
const PASSWORD: &str = "correct horse battery";
const SECRET: &str = "a-cluster-secret-of-forty-characters-xyz";

fn node() -> String {
    std::env::var("CASSANDRA_NODE")
        .unwrap_or_else(|_| panic!("CASSANDRA_NODE is not set (scripts/cassandra.sh start first)"))
}

/// A migrated keyspace no other test uses.
fn keyspace() -> String {
    // The tests of this file run at once: a counter keeps their keyspaces apart.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() % 1_000_000_000;
    let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let keyspace = format!("t_cluster_{}_{stamp}_{next}", std::process::id());
    common::migrate_keyspace(&node(), &keyspace);
    keyspace
}

/// A username (from `prefix`) whose slot is in `first..=last`.
fn username_in(prefix: &str, first: u32, last: u32) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|name| (first..=last).contains(&Slot::of_username(name).number()))
        .unwrap()
}

/// One node's settings.
struct NodeEnv(Vec<(String, String)>);

impl NodeEnv {
    fn new(keyspace: &str, id: &str, slots: &str, peers: &str, listen: u16) -> NodeEnv {
        NodeEnv(
            [
                ("SHARDPAY_STORAGE_BACKEND", "scylla"),
                ("SHARDPAY_SCYLLA_NODES", node().as_str()),
                ("SHARDPAY_SCYLLA_KEYSPACE", keyspace),
                ("SHARDPAY_SCYLLA_LEASE_SECONDS", "12"),
                ("SHARDPAY_SERVER_NODE_ID", id),
                ("SHARDPAY_CLUSTER_SLOTS", slots),
                ("SHARDPAY_CLUSTER_PEERS", peers),
                ("SHARDPAY_CLUSTER_LISTEN", &format!("127.0.0.1:{listen}")),
                ("SHARDPAY_CLUSTER_SECRET", SECRET),
            ]
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        )
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.0
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }
}

/// The settings of alpha (slots 0-8191) and beta (8192-16383) on one keyspace, each naming
/// the other's cluster port.
struct TwoNodes {
    alpha_env: NodeEnv,
    beta_env: NodeEnv,
    alpha_link: u16,
    beta_link: u16,
}

impl TwoNodes {
    fn new(keyspace: &str) -> TwoNodes {
        let (alpha_link, beta_link) = (common::free_port(), common::free_port());
        TwoNodes {
            alpha_env: NodeEnv::new(
                keyspace,
                "alpha",
                "0-8191",
                &format!("8192-16383=127.0.0.1:{beta_link}"),
                alpha_link,
            ),
            beta_env: NodeEnv::new(
                keyspace,
                "beta",
                "8192-16383",
                &format!("0-8191=127.0.0.1:{alpha_link}"),
                beta_link,
            ),
            alpha_link,
            beta_link,
        }
    }
}

fn credentials(name: &str) -> String {
    json!({"username": name, "password": PASSWORD}).to_string()
}

/// Logs `name` in through `port`; the access token.
fn login(port: u16, name: &str) -> String {
    let response = post(port, "/v1/sessions", &[], &credentials(name));
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()["access_token"].as_str().unwrap().to_string()
}

/// An admin deposit of `amount` USD to `user_id` through `port`.
fn fund(port: u16, user_id: &str, amount: u64) {
    let deposit = json!({"user_id": user_id, "amount": amount, "currency": "USD"}).to_string();
    let funded = post(port, "/v1/deposits", &[ADMIN, "Idempotency-Key: fund"], &deposit);
    assert_eq!(funded.status, 201, "{}", funded.text());
}

/// `/v1/me` requests a node answered with 200 (over its shards), from its /metrics.
fn served_me(port: u16) -> u64 {
    get(port, "/metrics")
        .text()
        .lines()
        .filter(|line| {
            line.starts_with("shardpay_http_requests_total{")
                && line.contains("route=\"GET /v1/me\"")
                && line.contains("status=\"200\"")
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// HAProxy (Debian package `haproxy`) running config/haproxy-two-nodes.cfg; killed on drop.
struct Haproxy(std::process::Child);

impl Haproxy {
    fn start(port: u16, alpha: u16, beta: u16) -> Haproxy {
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/haproxy-two-nodes.cfg");
        let child = Command::new("haproxy")
            .args(["-db", "-f", config])
            .env("SHARDPAY_LB_LISTEN", format!("127.0.0.1:{port}"))
            .env("SHARDPAY_LB_ALPHA", format!("127.0.0.1:{alpha}"))
            .env("SHARDPAY_LB_BETA", format!("127.0.0.1:{beta}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(Self::log(port)).unwrap())
            .spawn()
            .expect("run haproxy (the Debian package haproxy; .ci/run installs it)");
        Haproxy(child)
    }

    fn log(port: u16) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("shardpay-test-haproxy-{port}.log"))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes one frame of the nodes' protocol and reads the answer's body.
fn exchange(port: u16, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut answer).unwrap();
    String::from_utf8(answer).unwrap()
}

#[test]
#[ignore = "needs Cassandra: scripts/cassandra.sh start, then CASSANDRA_NODE=127.0.0.1:9042"]
fn two_nodes_serve_half_the_slots_each_and_carry_each_others_users() {
    let keyspace = keyspace();
    let TwoNodes {
        alpha_env,
        beta_env,
        alpha_link,
        beta_link,
    } = TwoNodes::new(&keyspace);
    let alpha = Server::start(2, &alpha_env.pairs());
    let mut beta = Server::start(1, &beta_env.pairs());

    // Each node reports its own shards' parts of its half.
    let ranges = |port| {
        get(port, "/v1/cluster").json()["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|range| {
                (
                    range["first_slot"].as_u64().unwrap(),
                    range["last_slot"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(ranges(alpha.port), [(0, 4095), (4096, 8191)]);
    assert_eq!(ranges(beta.port), [(8192, 16383)]);

    // Each user signs up and logs in through the node that does NOT serve the user's slot.
    let payer = username_in("payer", 0, 8191);
    let payee = username_in("payee", 8192, 16383);
    let signed_up = post(beta.port, "/v1/users", &[], &credentials(&payer));
    assert_eq!(signed_up.status, 201, "{}", signed_up.text());
    let payer_id = signed_up.json()["id"].as_str().unwrap().to_string();
    // The home shard of a user of the other node is that node's shard.
    let payer_slot = Slot::of_username(&payer).number();
    let expected_shard = if payer_slot < 4096 { "0" } else { "1" };
    assert_eq!(signed_up.header("x-shard"), Some(expected_shard));
    let signed_up = post(alpha.port, "/v1/users", &[], &credentials(&payee));
    assert_eq!(signed_up.status, 201, "{}", signed_up.text());
    let payee_id = signed_up.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        post(alpha.port, "/v1/users", &[], &credentials(&payee)).status,
        409,
        "the username is taken on the node that serves it"
    );
    let payer_token = login(beta.port, &payer);
    let payee_token = login(alpha.port, &payee);

    // Money crosses nodes: a deposit through the other node, then a payment asked of the
    // payee's node, executed on the payer's, credited on the payee's.
    fund(beta.port, &payer_id, 10_000);
    let payment = json!({"to": payee, "amount": 700, "currency": "USD"}).to_string();
    let auth = format!("Authorization: Bearer {payer_token}");
    let paid = post(
        beta.port,
        "/v1/payments",
        &[&auth, "Idempotency-Key: p1"],
        &payment,
    );
    assert_eq!(paid.status, 201, "{}", paid.text());
    let payment_id = paid.json()["id"].as_str().unwrap().to_string();
    assert_eq!(paid.json()["to"], payee_id.as_str());
    let replayed = post(
        alpha.port,
        "/v1/payments",
        &[&auth, "Idempotency-Key: p1"],
        &payment,
    );
    assert_eq!(replayed.status, 201);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.text(), paid.text());
    for port in [alpha.port, beta.port] {
        assert_eq!(usd_balance(port, &payer_token), 10_000 - 700);
        assert_eq!(usd_balance(port, &payee_token), 700);
    }
    // The payee sees it, and refunds part of it, through the payer's node.
    let payee_auth = format!("Authorization: Bearer {payee_token}");
    let seen = get_with(alpha.port, &format!("/v1/payments/{payment_id}"), &[&payee_auth]);
    assert_eq!(seen.status, 200, "{}", seen.text());
    let refunded = post(
        alpha.port,
        &format!("/v1/payments/{payment_id}/refunds"),
        &[&payee_auth, "Idempotency-Key: r1"],
        r#"{"amount":200}"#,
    );
    assert_eq!(refunded.status, 201, "{}", refunded.text());
    assert_eq!(usd_balance(beta.port, &payer_token), 10_000 - 500);
    assert_eq!(usd_balance(alpha.port, &payee_token), 500);

    // /metrics shows the commands each node carried to the other and served for it.
    let metric = |port, name: &str| metric_sum(&get(port, "/metrics").text(), name) as u64;
    assert!(metric(beta.port, "shardpay_node_commands_sent_total") >= 3);
    assert!(metric(alpha.port, "shardpay_node_commands_served_total") >= 3);
    assert!(metric(alpha.port, "shardpay_node_commands_sent_total") >= 3);
    assert!(metric(beta.port, "shardpay_node_commands_served_total") >= 3);
    assert_eq!(metric(alpha.port, "shardpay_node_command_failures_total"), 0);

    // Each node leased its own half.
    let leases = Command::new(common::binary())
        .args(["db", "leases"])
        .env("SHARDPAY_SCYLLA_NODES", node())
        .env("SHARDPAY_SCYLLA_KEYSPACE", &keyspace)
        .output()
        .unwrap();
    let leases = String::from_utf8_lossy(&leases.stdout).into_owned();
    let holder = |slots: &str| {
        leases
            .lines()
            .find(|line| line.trim_start().starts_with(slots))
            .unwrap_or_else(|| panic!("no lease of {slots}: {leases}"))
            .to_string()
    };
    assert!(holder("0-63 ").contains("alpha/"), "{leases}");
    assert!(holder("8128-8191 ").contains("alpha/"), "{leases}");
    assert!(holder("8192-8255 ").contains("beta/"), "{leases}");
    assert!(holder("16320-16383 ").contains("beta/"), "{leases}");

    // A connection with the wrong secret, or another idea of the slots, is refused.
    let hello = |secret: &str, slots: (u32, u32)| {
        serde_json::to_vec(&json!({"secret": secret, "node": "intruder", "slots": [slots.0, slots.1]}))
            .unwrap()
    };
    let answer = exchange(
        alpha_link,
        &hello("not-the-secret-not-the-secret-not-the", (0, 8191)),
    );
    assert!(
        answer.contains("Refused") && answer.contains("wrong cluster.secret"),
        "{answer}"
    );
    let answer = exchange(alpha_link, &hello(SECRET, (0, 16383)));
    assert!(
        answer.contains("Refused") && answer.contains("disagree"),
        "{answer}"
    );

    // Behind HAProxy with config/haproxy-two-nodes.cfg, every request is served, and a user's
    // authenticated requests go straight to the node of the user's slot.
    let lb_port = common::free_port();
    let _haproxy = Haproxy::start(lb_port, alpha.port, beta.port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", lb_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "HAProxy did not listen: {}",
            std::fs::read_to_string(Haproxy::log(lb_port)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while get_with(lb_port, "/v1/me", &[&auth]).status != 200 {
        assert!(Instant::now() < deadline, "HAProxy did not serve /v1/me");
        std::thread::sleep(Duration::from_millis(200));
    }
    let lb_token = login(lb_port, &payee);
    let lb_auth = format!("Authorization: Bearer {lb_token}");
    let before = (served_me(alpha.port), served_me(beta.port));
    for _ in 0..5 {
        let me = get_with(lb_port, "/v1/me", &[&lb_auth]);
        assert_eq!(me.status, 200, "{}", me.text());
        assert_eq!(me.json()["id"], payee_id.as_str());
    }
    assert_eq!(
        (served_me(alpha.port), served_me(beta.port)),
        (before.0, before.1 + 5)
    );
    for _ in 0..3 {
        assert_eq!(get_with(lb_port, "/v1/me", &[&auth]).status, 200);
    }
    assert_eq!(
        (served_me(alpha.port), served_me(beta.port)),
        (before.0 + 3, before.1 + 5)
    );
    drop(_haproxy);

    // While the payee's node is down, a payment to its user gets 503 and nothing moves; once it
    // is back, the retry with the same key is made once.
    beta.signal(libc::SIGTERM);
    assert!(beta
        .wait_exit(Duration::from_secs(20))
        .is_some_and(|status| status.success()));
    let again = json!({"to": payee_id, "amount": 300, "currency": "USD"}).to_string();
    let refused = post(
        alpha.port,
        "/v1/payments",
        &[&auth, "Idempotency-Key: p2"],
        &again,
    );
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("node"), "{}", refused.text());
    assert!(metric(alpha.port, "shardpay_node_command_failures_total") >= 1);
    assert_eq!(usd_balance(alpha.port, &payer_token), 10_000 - 500);
    let beta = Server::start(1, &beta_env.pairs());
    let deadline = Instant::now() + Duration::from_secs(30);
    let retried = loop {
        let response = post(
            alpha.port,
            "/v1/payments",
            &[&auth, "Idempotency-Key: p2"],
            &again,
        );
        if response.status != 503 && response.status != 409 || Instant::now() > deadline {
            break response;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(retried.status, 201, "{}", retried.text());
    assert_eq!(usd_balance(alpha.port, &payer_token), 10_000 - 800);
    assert_eq!(usd_balance(beta.port, &payee_token), 800);

    // A third node cannot take a half another node holds: it gives up naming the holder.
    let third = Command::new(common::binary())
        .args(["serve", "--shards", "1", "--listen"])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--shard-port-base")
        .arg(common::free_port_range(1).to_string())
        .envs(
            NodeEnv::new(
                &keyspace,
                "gamma",
                "0-8191",
                &format!("8192-16383=127.0.0.1:{beta_link}"),
                common::free_port(),
            )
            .0,
        )
        .env("SHARDPAY_SERVER_IO_MEMORY_BYTES", "262144")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut third = third;
    while third.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = third.kill();
            panic!("the third node did not give up");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let third = third.wait_with_output().unwrap();
    assert_eq!(third.status.code(), Some(1));
    let text = String::from_utf8_lossy(&third.stderr);
    assert!(text.contains("are leased to alpha/"), "{text}");
    drop(beta);
    drop(alpha);
}

#[test]
fn a_node_refuses_a_cluster_it_cannot_serve() {
    // Checked before anything starts: the configuration is refused with the key at fault.
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("SHARDPAY_CLUSTER_SLOTS", "0-8191")], "cluster.slots"),
        (
            &[
                ("SHARDPAY_CLUSTER_SLOTS", "0-8191"),
                ("SHARDPAY_CLUSTER_PEERS", "8192-16383=127.0.0.1:7400"),
            ],
            "storage.backend",
        ),
        (
            &[
                ("SHARDPAY_STORAGE_BACKEND", "scylla"),
                ("SHARDPAY_CLUSTER_SLOTS", "0-8191"),
                ("SHARDPAY_CLUSTER_PEERS", "8192-16383=127.0.0.1:7400"),
                ("SHARDPAY_CLUSTER_LISTEN", "127.0.0.1:7401"),
                ("SHARDPAY_CLUSTER_SECRET", "short"),
            ],
            "cluster.secret",
        ),
        (
            &[
                ("SHARDPAY_STORAGE_BACKEND", "scylla"),
                ("SHARDPAY_CLUSTER_SLOTS", "0-8191"),
                ("SHARDPAY_CLUSTER_PEERS", "8192-16383=127.0.0.1:7400"),
                ("SHARDPAY_CLUSTER_SECRET", SECRET),
            ],
            "cluster.listen",
        ),
    ];
    for (env, key) in cases {
        let output = Command::new(common::binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {text}");
        assert!(text.contains(key), "{env:?}: {text}");
    }
}

#[test]
#[ignore = "needs Cassandra: scripts/cassandra.sh start, then CASSANDRA_NODE=127.0.0.1:9042"]
fn a_node_killed_during_cross_node_payments_loses_no_acknowledged_payment() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let keyspace = keyspace();
    let TwoNodes {
        alpha_env, beta_env, ..
    } = TwoNodes::new(&keyspace);
    let mut alpha = Server::start(1, &alpha_env.pairs());
    let beta = Server::start(1, &beta_env.pairs());
    let payer = username_in("killpayer", 0, 8191);
    let payee = username_in("killpayee", 8192, 16383);
    let mut ids = Vec::new();
    for name in [&payer, &payee] {
        let response = post(beta.port, "/v1/users", &[], &credentials(name));
        assert_eq!(response.status, 201, "{}", response.text());
        ids.push(response.json()["id"].as_str().unwrap().to_string());
    }
    let (payer_token, payee_token) = (login(beta.port, &payer), login(beta.port, &payee));
    const DEPOSIT: u64 = 1_000_000;
    fund(beta.port, &ids[0], DEPOSIT);

    // A client pays the payee through the payee's node (beta) without pause: each payment is
    // carried to the payer's node (alpha), debited there, and credited back on beta. Alpha is
    // killed in the middle of it.
    let amount = |i: u64| 1 + i % 7;
    let pay = |port: u16, i: u64| {
        let body = json!({"to": ids[1], "amount": amount(i), "currency": "USD"}).to_string();
        let auth = format!("Authorization: Bearer {payer_token}");
        post(
            port,
            "/v1/payments",
            &[&auth, &format!("Idempotency-Key: kill-{i}")],
            &body,
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, acknowledged) = std::thread::scope(|scope| {
        let paying = scope.spawn(|| {
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = pay(beta.port, i);
                if response.status == 201 {
                    acknowledged.push((i, response.json()["id"].as_str().unwrap().to_string()));
                }
                i += 1;
            }
            (i, acknowledged)
        });
        std::thread::sleep(Duration::from_millis(1500));
        alpha.signal(libc::SIGKILL);
        assert!(alpha.wait_exit(Duration::from_secs(10)).is_some());
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        paying.join().unwrap()
    });
    assert!(
        acknowledged.len() >= 5,
        "too few payments before the kill: {acknowledged:?}"
    );
    assert!(sent > acknowledged.len() as u64, "the kill interrupted nothing");

    // Alpha comes back (after the lease its killed process held runs out), loads its users from
    // the database, and every payment retried with its key is made once: the acknowledged ones
    // replay their id, the others are made now.
    let alpha = Server::start(1, &alpha_env.pairs());
    let mut ids_by_key = std::collections::HashMap::new();
    for i in 0..sent {
        let deadline = Instant::now() + Duration::from_secs(60);
        let response = loop {
            let response = pay(beta.port, i);
            if response.status == 201 {
                break response;
            }
            assert!(
                Instant::now() < deadline,
                "payment {i} not made: {}",
                response.text()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        ids_by_key.insert(i, response.json()["id"].as_str().unwrap().to_string());
    }
    for (i, id) in &acknowledged {
        assert_eq!(&ids_by_key[i], id, "acknowledged payment {i} changed on retry");
    }
    let paid: u64 = (0..sent).map(amount).sum();
    for port in [alpha.port, beta.port] {
        assert_eq!(usd_balance(port, &payer_token), DEPOSIT - paid);
        assert_eq!(usd_balance(port, &payee_token), paid);
    }
}
