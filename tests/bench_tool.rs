//! The load generator (`bench/`, shardpay-bench) against the real server: every scenario runs for
//! a second and must complete with zero errors; a server that answers wrongly must make the run
//! report errors; bad set-ups fail with the server's words.

mod common;

use std::time::Duration;

use common::Server;
use shardpay_bench::run::{run, Report, RunConfig, RunError};
use shardpay_bench::scenario::{Mix, Scenario};

/// What config/bench.toml raises for benchmarks: the per-user burst and the per-IP login limit,
/// so that the load generator, not a limit, decides the load.
const BENCH_ENV: &[(&str, &str)] = &[
    ("SHARDPAY_AUTH_USER_REQUEST_BURST", "4000000000"),
    ("SHARDPAY_AUTH_LOGIN_ATTEMPTS_PER_IP_MAX", "300000"),
];

fn bench_config(server: &Server, scenario: Scenario) -> RunConfig {
    let mut config = RunConfig::new(&format!("http://127.0.0.1:{}", server.port), scenario);
    config.connections = 8;
    config.threads = 2;
    config.warmup = Duration::from_millis(200);
    config.duration = Duration::from_secs(1);
    config.users = 6;
    config.setup_connections = 4;
    config
}

fn assert_clean(report: &Report) {
    assert_eq!(report.errors, 0, "errors: {:#?}", report.errors_by_kind);
    assert_eq!(report.failed, 0);
    assert!(report.ok > 0, "no answers");
    assert!(report.latency_us.p50 > 0.0 && report.latency_us.max >= report.latency_us.p99);
    for (kind, stats) in &report.kinds {
        assert!(stats.ok > 0, "no {kind} answered");
    }
}

#[test]
fn every_scenario_completes_without_errors() {
    let server = Server::start(2, BENCH_ENV);
    for scenario in ["plaintext", "json", "balance", "payments", "mixed", "signup"] {
        let mut config = bench_config(&server, Scenario::from_name(scenario).unwrap());
        if scenario == "signup" || scenario == "mixed" {
            // Each signup and login is an argon2id hash (tens of ms): few at a time.
            config.connections = 2;
        }
        if scenario == "mixed" {
            // Logins are rare in the default mix; make them frequent enough to show in a second.
            config.mix = Some(Mix::parse("login=5,balance=30,me=30,payment=30,list=9").unwrap());
        }
        let report = run(&config).unwrap_or_else(|error| panic!("{scenario}: {error}"));
        assert_eq!(report.scenario, scenario);
        assert_eq!(report.shards, 2, "from /v1/cluster");
        assert_eq!(report.client_send_lag_us, None, "closed loop has no schedule");
        assert_clean(&report);
        if scenario == "mixed" {
            assert_eq!(report.kinds.len(), 5, "{:?}", report.kinds.keys());
        }
    }
}

#[test]
fn shard_aware_payments_follow_the_cross_shard_ratio() {
    let server = Server::start(2, BENCH_ENV);
    for (ratio, pipelined) in [(0.0, false), (1.0, true)] {
        let mut config = bench_config(&server, Scenario::Payments);
        config.shard_aware = true;
        config.cross_shard_ratio = Some(ratio);
        if pipelined {
            config.depth = 4;
        }
        let report = run(&config).unwrap();
        assert_clean(&report);
        assert_eq!(report.payments_cross_shard_share, Some(ratio));
    }
}

#[test]
fn open_loop_sends_at_the_requested_rate() {
    let server = Server::start(1, BENCH_ENV);
    let mut config = bench_config(&server, Scenario::Balance);
    config.rate = Some(2_000.0);
    config.duration = Duration::from_secs(2);
    let report = run(&config).unwrap();
    assert_clean(&report);
    assert_eq!(report.mode, "open");
    let lag = report.client_send_lag_us.expect("open loop reports its send lag");
    assert!(lag.max >= lag.p50 && lag.p50 >= 1.0, "{lag:?}");
    // A schedule, not a race: the answers match the rate (the server is far from saturated).
    assert!(
        (3_600..=4_400).contains(&report.ok),
        "{} answers in 2 s at 2000/s",
        report.ok
    );
}

#[test]
fn wrong_answers_are_counted_as_errors() {
    // A burst of 5 requests per user: the balance reads soon get 429.
    let server = Server::start(
        1,
        &[
            ("SHARDPAY_AUTH_USER_REQUEST_BURST", "5"),
            ("SHARDPAY_AUTH_USER_REQUESTS_PER_SECOND", "1"),
            ("SHARDPAY_AUTH_LOGIN_ATTEMPTS_PER_IP_MAX", "300000"),
        ],
    );
    let report = run(&bench_config(&server, Scenario::Balance)).unwrap();
    let throttled = report.errors_by_kind.get("status_429").expect("429s reported");
    assert!(throttled.count > 0);
    assert!(throttled.example.contains("rate_limit"), "{}", throttled.example);
    assert!(report.failed > 0);
    let printed = shardpay_bench::report::errors(&report);
    assert!(
        printed.contains("status_429") && printed.contains("config/bench.toml"),
        "{printed}"
    );
}

#[test]
fn set_up_failures_carry_the_servers_answer() {
    let server = Server::start(1, BENCH_ENV);
    let mut config = bench_config(&server, Scenario::Balance);
    config.admin_key = "not-the-admin-key-at-all".into();
    match run(&config) {
        Err(RunError::Setup(error)) => {
            let text = error.to_string();
            assert!(text.contains("deposit") && text.contains("401"), "{text}");
        }
        other => panic!("expected a set-up error, got {other:?}"),
    }
    let mut plaintext = bench_config(&server, Scenario::Plaintext);
    plaintext.shard_aware = true;
    plaintext.connections = 1;
    plaintext.threads = 1;
    // One shard and one connection is enough for shard-aware mode.
    assert_clean(&run(&plaintext).unwrap());
}

#[test]
fn a_dead_server_is_a_connection_error_not_a_hang() {
    let port = common::free_port();
    let mut config = RunConfig::new(&format!("http://127.0.0.1:{port}"), Scenario::Plaintext);
    config.duration = Duration::from_millis(300);
    match run(&config) {
        Err(error @ RunError::Setup(_)) => {
            assert!(error.to_string().contains("GET /v1/cluster"), "{error}")
        }
        other => panic!("expected a set-up error, got {other:?}"),
    }
}

#[test]
fn logins_never_revoke_the_sessions_the_other_requests_use() {
    // A user holds at most 64 sessions and a new login revokes the oldest. A login-heavy mix with
    // one token user per shard would soon revoke its tokens (401s) if logins used those users.
    // Cheap password hashes (1 MiB, one pass), so that a few seconds hold hundreds of logins.
    let mut env = BENCH_ENV.to_vec();
    env.extend([
        ("SHARDPAY_AUTH_PASSWORD_MEMORY_KIB", "1024"),
        ("SHARDPAY_AUTH_PASSWORD_ITERATIONS", "1"),
    ]);
    let server = Server::start(2, &env);
    let mut config = bench_config(&server, Scenario::Mixed);
    config.mix = Some(Mix::parse("login=3,balance=1").unwrap());
    config.users = 1;
    config.connections = 4;
    config.duration = Duration::from_secs(3);
    let report = run(&config).unwrap();
    assert_clean(&report);
    let logins = report.kinds["login"].ok;
    assert!(
        logins > 2 * 64,
        "only {logins} logins: not enough to fill two users' sessions"
    );
}

#[test]
fn a_new_connection_per_request_measures_connection_set_up() {
    // Plain HTTP: each request on a connection of its own (`Connection: close`), closed by the
    // server, then a new connect: the figures are connections set up per second.
    let server = Server::start(1, BENCH_ENV);
    let mut config = bench_config(&server, Scenario::Json);
    config.new_connection_per_request = true;
    config.connections = 4;
    let report = run(&config).unwrap();
    assert_clean(&report);
    assert!(report.new_connection_per_request);
    assert!(report.tls.is_none());
    let handshakes = &report.handshakes;
    assert!(handshakes.completed > 0, "{handshakes:?}");
    assert_eq!(handshakes.resumed, None, "plain HTTP resumes nothing");
    // One request per connection (give or take the connections cut by the window's edges).
    assert!(
        report.connects >= report.ok,
        "{} connects for {} answers",
        report.connects,
        report.ok
    );
    let text = shardpay_bench::report::summary(&report);
    assert!(
        text.contains("a new connection per request") && text.contains("connections set up: "),
        "{text}"
    );

    // Pipelining makes no sense there.
    config.depth = 2;
    match run(&config) {
        Err(RunError::Config(message)) => assert!(message.contains("--depth must be 1"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// A self-signed CA certificate whose key was thrown away: a CA file no server can satisfy.
const ORPHAN_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBtDCCAVugAwIBAgIUHhsynHEyCtn8/r96VAgTme0H/6AwCgYIKoZIzj0EAwIw
LzEtMCsGA1UEAwwkc2hhcmRwYXktYmVuY2ggdGVzdCBDQSAobm8ga2V5IGtlcHQp
MCAXDTI2MTEyODE4NDIwMFoYDzIxMjYxMTA0MTg0MjAwWjAvMS0wKwYDVQQDDCRz
aGFyZHBheS1iZW5jaCB0ZXN0IENBIChubyBrZXkga2VwdCkwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAASBBul2lvjpFC0DrqBcwlySNhTWQ6WwsTj9ndHzc28IDJob
jYq+mFq29isaDFUCcUP0EiiNjEAStYU1hRuFeIJKo1MwUTAdBgNVHQ4EFgQUyf2j
SWLLG35VqieBcKtwzZpOak4wHwYDVR0jBBgwFoAUyf2jSWLLG35VqieBcKtwzZpO
ak4wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBkerekSU1qpmVr
vg8UY27pMbYRsWpOPCfhALLp0xwjPgIgGHjL52OHfATtQF1MgKMs0puKzrMOmESZ
BHafT67BjHA=
-----END CERTIFICATE-----
";

#[test]
fn https_needs_a_ca_file_and_a_server_that_speaks_tls() {
    let server = Server::start(1, BENCH_ENV);
    let https = format!("https://127.0.0.1:{}", server.port);
    let mut config = RunConfig::new(&https, Scenario::Json);
    config.duration = Duration::from_millis(300);
    // No --cacert: refused before anything is sent (there is no insecure mode).
    match run(&config) {
        Err(RunError::Config(message)) => assert!(message.contains("--cacert"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // A CA file that is not one.
    let dir = std::env::temp_dir().join(format!("shardpay-bench-tool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    config.cacert = Some(not_pem);
    match run(&config) {
        Err(RunError::Config(message)) => assert!(message.contains("no PEM certificate"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // A plain-HTTP server behind an https URL: a TLS error of the set-up, not a hang.
    let ca = dir.join("orphan-ca.pem");
    std::fs::write(&ca, ORPHAN_CA_PEM).unwrap();
    config.cacert = Some(ca);
    match run(&config) {
        Err(error @ RunError::Setup(_)) => {
            let text = error.to_string();
            assert!(text.contains("GET /v1/cluster") && text.contains("TLS"), "{text}");
        }
        other => panic!("expected a set-up error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
