//! The server as a whole, through the real binary: operations endpoints, shards and their ports,
//! the mesh behind /metrics and /v1/cluster, keep-alive and pipelining, graceful shutdown,
//! configuration errors.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{binary, get, Client, Server};

#[test]
fn operations_endpoints() {
    let server = Server::start(2, &[]);
    let health = get(server.port, "/healthz");
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok");
    assert!(health.header("x-request-id").unwrap().starts_with("req_"));
    assert!(health.header("x-shard").is_some());

    let ready = get(server.port, "/readyz");
    assert_eq!(ready.status, 200);

    let plaintext = get(server.port, "/plaintext");
    assert_eq!(plaintext.status, 200);
    assert_eq!(plaintext.text(), "Hello, World!");
    assert_eq!(plaintext.header("content-type"), Some("text/plain"));
    // TechEmpower's rules: only these headers (plus Connection: close, asked for by the client).
    let names: Vec<String> = plaintext
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    assert_eq!(
        names,
        ["server", "date", "content-type", "content-length", "connection"]
    );

    let json = get(server.port, "/json");
    assert_eq!(json.json(), serde_json::json!({"message": "Hello, World!"}));
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert!(json.header("x-shard").is_none());
}

#[test]
fn unknown_routes_and_methods_get_json_errors() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    let missing = client.get("/nope");
    assert_eq!(missing.status, 404);
    let body = missing.json();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["request_id"], missing.header("x-request-id").unwrap());

    client.send(b"DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let not_allowed = client.read_response();
    assert_eq!(not_allowed.status, 405);
    assert_eq!(not_allowed.header("allow"), Some("GET, HEAD"));
    assert_eq!(not_allowed.json()["error"]["code"], "method_not_allowed");
    // Errors that are not framing errors keep the connection.
    assert_eq!(client.get("/healthz").status, 200);
}

#[test]
fn request_ids_are_echoed_when_valid() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    client.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123\r\n\r\n");
    assert_eq!(client.read_response().header("x-request-id"), Some("abc-123"));
    client.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: bad id with spaces\r\n\r\n");
    let replaced = client.read_response();
    assert!(replaced.header("x-request-id").unwrap().starts_with("req_"));
    let first = client.get("/healthz");
    let second = client.get("/healthz");
    assert_ne!(first.header("x-request-id"), second.header("x-request-id"));
}

#[test]
fn each_shard_port_answers_from_its_own_shard() {
    // Three shards on a two-CPU machine: placement goes round-robin.
    let server = Server::start(3, &[]);
    for shard in 0..3 {
        for _ in 0..3 {
            let response = get(server.shard_port(shard), "/healthz");
            assert_eq!(response.header("x-shard"), Some(shard.to_string().as_str()));
        }
    }
}

#[test]
fn cluster_map_comes_from_every_shard() {
    let server = Server::start(3, &[("SHARDPAY_SERVER_NODE_ID", "node-a")]);
    let map = get(server.port, "/v1/cluster").json();
    assert_eq!(map["node"], "node-a");
    assert_eq!(map["shards"], 3);
    assert_eq!(map["slots"], 16384);
    let ranges = map["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 3);
    let mut next = 0;
    for (index, range) in ranges.iter().enumerate() {
        assert_eq!(range["shard"], index);
        assert_eq!(range["first_slot"], next);
        assert_eq!(range["port"], server.shard_port(index));
        next = range["last_slot"].as_u64().unwrap() + 1;
    }
    assert_eq!(next, 16384);
}

/// Sums `shardpay_http_requests_total` for a route, per shard.
fn requests_by_shard(metrics: &str, route: &str, shards: usize) -> Vec<u64> {
    let mut counts = vec![0; shards];
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("shardpay_http_requests_total{"))
    {
        if !line.contains(&format!("route=\"{route}\"")) {
            continue;
        }
        let shard: usize = line
            .split("shard=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        counts[shard] += value;
    }
    counts
}

#[test]
fn metrics_sum_requests_made_through_every_shard() {
    let server = Server::start(2, &[]);
    let made = [5u64, 8];
    for (shard, count) in made.iter().enumerate() {
        let mut client = Client::connect(server.shard_port(shard));
        for _ in 0..*count {
            assert_eq!(client.get("/plaintext").status, 200);
        }
    }
    // Ask each shard in turn: both must report every shard's counters.
    for shard in 0..2 {
        let metrics = get(server.shard_port(shard), "/metrics");
        assert_eq!(metrics.status, 200);
        assert_eq!(metrics.header("x-shard"), Some(shard.to_string().as_str()));
        let text = metrics.text();
        assert_eq!(requests_by_shard(&text, "/plaintext", 2), made, "{text}");
        assert!(text.contains("shardpay_connections_open{shard=\"1\"}"), "{text}");
        assert!(text.contains("shardpay_http_request_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"}"));
        // The other shard's counters came over the mesh: it counted the message it received
        // (this shard's own snapshot is taken before it sends, so its `sent` may lag by one).
        let other = 1 - shard;
        let sent = format!("shardpay_mesh_messages_received_total{{shard=\"{other}\",peer=\"{shard}\"}}");
        let value: u64 = text
            .lines()
            .find(|l| l.starts_with(&sent))
            .unwrap_or_else(|| panic!("{sent} missing: {text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(value >= 1, "{text}");
    }
}

#[test]
fn metrics_count_parse_errors() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    client.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(client.read_response().status, 400);
    let text = get(server.port, "/metrics").text();
    assert!(
        text.contains("shardpay_http_parse_errors_total{shard=\"0\",reason=\"invalid_host\"} 1"),
        "{text}"
    );
    assert!(text.contains("route=\"rejected\",status=\"400\"} 1"), "{text}");
}

#[test]
fn keep_alive_reuses_one_connection_and_close_ends_it() {
    let server = Server::start(1, &[]);
    let accepted_before = accepted(&get(server.port, "/metrics").text());
    let mut client = server.connect();
    for _ in 0..5 {
        let response = client.get("/healthz");
        assert_eq!(response.status, 200);
        assert!(response.header("connection").is_none());
    }
    client.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let last = client.read_response();
    assert_eq!(last.header("connection"), Some("close"));
    assert!(client.closed());
    // One connection for the six requests, one for this /metrics.
    assert_eq!(
        accepted(&get(server.port, "/metrics").text()),
        accepted_before + 2
    );
}

fn accepted(metrics: &str) -> u64 {
    let line = metrics
        .lines()
        .find(|l| l.starts_with("shardpay_connections_accepted_total{shard=\"0\"}"))
        .unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn http_1_0_closes_unless_keep_alive() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    client.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
    assert!(client.closed());
    let mut client = server.connect();
    client.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.header("connection"), Some("keep-alive"));
    client.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(client.read_response().status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(2, &[]);
    let mut client = server.connect();
    let requests = [
        ("GET", "/healthz"),
        ("GET", "/json"),
        ("GET", "/metrics"),
        ("GET", "/plaintext"),
        ("HEAD", "/plaintext"),
        ("GET", "/nope"),
        ("GET", "/v1/cluster"),
        ("DELETE", "/json"),
        ("GET", "/plaintext"),
    ];
    let mut batch = Vec::new();
    for (index, (method, path)) in requests.iter().enumerate() {
        batch.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nX-Request-Id: r{index}\r\n\r\n").as_bytes(),
        );
    }
    // One write: the server sees all of them in one or a few reads.
    client.send(&batch);
    let expected = [200, 200, 200, 200, 200, 404, 200, 405, 200];
    for (index, (method, path)) in requests.iter().enumerate() {
        let response = client.read_response_for(*method == "HEAD");
        assert_eq!(response.status, expected[index], "{method} {path}");
        match *path {
            "/plaintext" if *method == "GET" => assert_eq!(response.text(), "Hello, World!"),
            "/plaintext" => {
                assert_eq!(response.header("content-length"), Some("13"));
                assert!(response.body.is_empty());
            }
            "/json" if *method == "GET" => assert_eq!(response.json()["message"], "Hello, World!"),
            "/metrics" => assert!(response.text().contains("shardpay_http_requests_total")),
            "/v1/cluster" => assert_eq!(response.json()["shards"], 2),
            _ => assert_eq!(
                response.header("x-request-id"),
                Some(format!("r{index}").as_str())
            ),
        }
    }
    // A deep pipeline of small requests.
    let one = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n";
    client.send(&one.repeat(200));
    for _ in 0..200 {
        assert_eq!(client.read_response().text(), "Hello, World!");
    }
}

#[test]
fn expect_100_continue() {
    let server = Server::start(1, &[]);
    let mut client = server.connect();
    client.send(b"POST /healthz HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    client.read_continue();
    client.send(b"hello");
    assert_eq!(client.read_response().status, 405);
    assert_eq!(client.get("/healthz").status, 200);
}

#[test]
fn graceful_shutdown_answers_in_flight_requests() {
    let mut server = Server::start(2, &[("SHARDPAY_SERVER_DRAIN_TIMEOUT_MS", "5000")]);
    // A request whose head has not fully arrived when the signal comes: in flight.
    let mut in_flight = server.connect();
    in_flight.send(b"GET /readyz HTTP/1.1\r\nHost: t\r\n");
    // An idle keep-alive connection: closed at once by the drain.
    let mut idle = server.connect();
    assert_eq!(idle.get("/healthz").status, 200);
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    assert!(idle.closed(), "idle connections close when the drain starts");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.wait_exit(Duration::from_millis(10)).is_none(),
        "must wait for the request in flight"
    );
    in_flight.send(b"\r\n");
    let response = in_flight.read_response();
    assert_eq!(response.status, 503, "readyz is 503 while draining");
    assert_eq!(response.json()["error"]["code"], "draining");
    assert_eq!(response.header("connection"), Some("close"));
    assert!(in_flight.closed());
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the drain");
    assert!(status.success(), "{status}");
    // New connections are refused once the listeners are gone.
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err());
}

#[test]
fn drain_deadline_bounds_shutdown() {
    let mut server = Server::start(1, &[("SHARDPAY_SERVER_DRAIN_TIMEOUT_MS", "300")]);
    let mut stuck = server.connect();
    stuck.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n");
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGINT);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits at the drain deadline");
    assert!(status.success(), "{status}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(1, &[("SHARDPAY_SERVER_DRAIN_TIMEOUT_MS", "60000")]);
    let mut stuck = server.connect();
    stuck.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n");
    std::thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.wait_exit(Duration::from_millis(10)).is_none(),
        "still draining"
    );
    server.signal(libc::SIGINT);
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("the second signal ends it");
    assert_eq!(status.code(), Some(1));
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(binary())
        .arg("check-config")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn config_precedence_cli_over_environment_over_file() {
    let dir = std::env::temp_dir().join(format!("shardpay-precedence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1111\"\nbacklog = 7\nnode_id = \"from-file\"\n",
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let output = check_config(
        &["--config", file_arg, "--listen", "127.0.0.1:3333"],
        &[
            ("SHARDPAY_SERVER_LISTEN", "127.0.0.1:2222"),
            ("SHARDPAY_SERVER_NODE_ID", "from-env"),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: toml::Table = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let server = printed["server"].as_table().unwrap();
    assert_eq!(server["listen"].as_str(), Some("127.0.0.1:3333")); // command line
    assert_eq!(server["node_id"].as_str(), Some("from-env")); // environment over file
    assert_eq!(server["backlog"].as_integer(), Some(7)); // file over default
    assert_eq!(printed["limits"]["body_bytes_max"].as_integer(), Some(1048576)); // default
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_configuration_is_one_line_naming_the_key_and_exit_2() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            &[],
            &[("SHARDPAY_LIMITS_BODY_BYTES_MAX", "lots")],
            "limits.body_bytes_max",
        ),
        (&[], &[("SHARDPAY_SERVER_LISTEN", "nowhere")], "server.listen"),
        (
            &[],
            &[("SHARDPAY_LIMITS_BODY_BYTE_MAX", "1")],
            "SHARDPAY_LIMITS_BODY_BYTE_MAX",
        ),
        (&["--cpus", "0-"], &[], "server.cpus"),
        (&[], &[("SHARDPAY_LOG_FORMAT", "xml")], "log.format"),
    ];
    for (args, env, key) in cases {
        let output = check_config(args, env);
        assert_eq!(output.status.code(), Some(2), "{key}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
    // `serve` refuses the same way, before binding anything.
    let output = Command::new(binary())
        .args(["serve", "--cpus", "4095"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.cpus"));
    // A missing file too.
    let output = check_config(&["--config", "/nonexistent/shardpay.toml"], &[]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_port_in_use_fails_start_up_clearly() {
    let first = Server::start(1, &[]);
    let data = common::temp_dir("port-in-use");
    let output = Command::new(binary())
        .args(["serve", "--shards", "1", "--listen"])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--shard-port-base")
        .arg(first.shard_port(0).to_string())
        .env("SHARDPAY_SERVER_IO_MEMORY_BYTES", "262144")
        .env("SHARDPAY_STORAGE_DATA_DIR", &data)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{}", first.shard_port(0))),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_full_mesh_queue_applies_backpressure_without_losing_requests() {
    // Queues of one message: concurrent /v1/cluster requests on shard 0 must wait for room in
    // shard 1's queue, and every one must still be answered.
    let server = Server::start(2, &[("SHARDPAY_MESH_QUEUE_DEPTH", "1")]);
    let port = server.shard_port(0);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = Client::connect(port);
                let request = b"GET /v1/cluster HTTP/1.1\r\nHost: t\r\n\r\n".repeat(20);
                client.send(&request);
                for _ in 0..20 {
                    let response = client.read_response();
                    assert_eq!(response.status, 200);
                    assert_eq!(response.json()["ranges"].as_array().unwrap().len(), 2);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let text = get(server.shard_port(1), "/metrics").text();
    let received = text
        .lines()
        .find(|l| l.starts_with("shardpay_mesh_messages_received_total{shard=\"1\",peer=\"0\"}"))
        .unwrap();
    let received: u64 = received.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(received >= 320, "{text}");
    let waited = text
        .lines()
        .find(|l| l.starts_with("shardpay_mesh_backpressure_total{shard=\"0\",peer=\"1\"}"))
        .unwrap();
    let waited: u64 = waited.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        waited > 0,
        "sixteen connections on one queue of one must have waited: {text}"
    );
}

#[test]
fn json_logs() {
    let server = Server::start(1, &[("SHARDPAY_LOG_FORMAT", "json"), ("RUST_LOG", "info")]);
    let stderr = server.stderr();
    let first = stderr.lines().next().expect("a log line");
    let line: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["message"], "starting");
}
