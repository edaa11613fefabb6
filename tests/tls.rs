//! TLS through the real binary: curl and a raw rustls client against TLS listeners, clients
//! refusing bad certificates, certificate reload on SIGHUP, the handshake deadline and the
//! connection limit, and start-up errors for unusable certificate files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::tls::{client_config, client_config_with, write_pair, Certs, TlsClient};
use common::Server;

const DAY: Duration = Duration::from_secs(86_400);

/// The sum over shards of a counter in `/metrics` (read over TLS on the public port).
fn metric(server: &Server, name: &str) -> u64 {
    let response = server.try_get_on(server.port, "/metrics").expect("metrics");
    response
        .text()
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs curl; (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn curl_with_the_ca_gets_answers_over_tls_on_every_listener() {
    let certs = Certs::generate();
    let server = Server::start_tls(2, &[], &certs, true, true);
    let ca = certs.ca().display().to_string();
    for port in [server.port, server.shard_port(0), server.shard_port(1)] {
        let url = format!("https://127.0.0.1:{port}/json");
        let (code, body, stderr) = curl(&["--cacert", &ca, &url]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(body, r#"{"message":"Hello, World!"}"#);
    }
    // By name too (the certificate has localhost and 127.0.0.1), on TLS 1.2 and TLS 1.3, and
    // ALPN settles on http/1.1 even when the client offers h2 first.
    let url = format!("https://localhost:{}/healthz", server.port);
    let resolve = format!("localhost:{}:127.0.0.1", server.port);
    for versions in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"]] {
        let mut args = vec!["-v", "--http2", "--resolve", &resolve, "--cacert", &ca, &url];
        args.extend_from_slice(versions);
        let (code, body, stderr) = curl(&args);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(body, "ok");
        assert!(stderr.contains("ALPN: server accepted http/1.1"), "{stderr}");
    }
    // TLS 1.1 and older are refused.
    let (code, _, _) = curl(&[
        "--tlsv1.1",
        "--tls-max",
        "1.1",
        "--cacert",
        &ca,
        &url,
        "--resolve",
        &resolve,
    ]);
    assert_ne!(code, 0);
    // Without the CA, curl refuses the certificate (exit 60).
    let (code, _, stderr) = curl(&[&url, "--resolve", &resolve]);
    assert_eq!(code, 60, "{stderr}");
    // Plain HTTP to a TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(metric(&server, "shardpay_tls_handshake_failures_total") >= 2);
}

#[test]
fn listeners_are_tls_or_plain_as_configured() {
    let certs = Certs::generate();
    // TLS on the shard ports only: the public address stays plain.
    let server = Server::start_tls(1, &[], &certs, false, true);
    let mut plain = common::Client::connect(server.port);
    assert_eq!(plain.get("/json").status, 200);
    let config = client_config(&certs.ca());
    let mut tls = TlsClient::connect(server.shard_port(0), &config, "localhost").unwrap();
    assert_eq!(tls.get("/json").status, 200);
    assert!(TlsClient::connect(server.port, &config, "localhost").is_err());
}

#[test]
fn a_rustls_client_pipelines_sends_bodies_and_resumes_sessions() {
    let certs = Certs::generate();
    let server = Server::start_tls(2, &[], &certs, true, true);
    let config = client_config(&certs.ca());
    let mut client = TlsClient::connect(server.port, &config, "localhost").unwrap();
    assert_eq!(client.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        client.stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client.peer_der(), certs.server_der());
    // Three pipelined requests in one write, answered in order.
    client.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.read_response().text(), r#"{"message":"Hello, World!"}"#);
    assert_eq!(client.read_response().text(), "ok");
    assert_eq!(client.read_response().text(), "Hello, World!");
    // A body larger than one TLS record (16 KiB) and than the read buffer: a signup with a
    // 40 000-character username is refused as invalid_username, which needs the whole body
    // decrypted and parsed as JSON.
    let username = "x".repeat(40_000);
    let body = format!(r#"{{"username":"{username}","password":"correct horse battery"}}"#);
    let request = format!(
        "POST /v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes());
    let response = client.read_response();
    assert!(
        response.text().contains("invalid_username"),
        "{}",
        response.text()
    );
    // A new connection with the same client configuration resumes its session (TLS 1.3
    // ticket), whichever shard the kernel hands it to.
    drop(client);
    for _ in 0..4 {
        let mut again = TlsClient::connect(server.port, &config, "localhost").unwrap();
        assert_eq!(again.get("/healthz").text(), "ok");
        assert_eq!(
            again.stream.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
    }
    // TLS 1.2 resumes too.
    let tls12 = client_config_with(&certs.ca(), &[&rustls::version::TLS12]);
    let first = TlsClient::connect(server.shard_port(1), &tls12, "localhost").unwrap();
    assert_eq!(
        first.stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    drop(first);
    let mut second = TlsClient::connect(server.shard_port(1), &tls12, "localhost").unwrap();
    assert_eq!(second.get("/healthz").text(), "ok");
    assert_eq!(
        second.stream.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert!(metric(&server, "shardpay_tls_handshakes_resumed_total") >= 5);
    assert!(metric(&server, "shardpay_tls_handshakes_full_total") >= 2);
}

#[test]
fn without_tickets_or_a_session_cache_nothing_resumes() {
    let certs = Certs::generate();
    let env = [
        ("SHARDPAY_TLS_TICKETS", "false"),
        ("SHARDPAY_TLS_SESSION_CACHE_ENTRIES", "0"),
    ];
    let server = Server::start_tls(1, &env, &certs, true, false);
    let config = client_config(&certs.ca());
    for _ in 0..2 {
        let mut client = TlsClient::connect(server.port, &config, "localhost").unwrap();
        assert_eq!(client.get("/healthz").text(), "ok");
        assert_ne!(
            client.stream.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
    }
}

/// Starts a server with the pair in `dir` and returns the client's handshake error text.
fn handshake_error(dir: &std::path::Path, trust: &std::path::Path, name: &str) -> String {
    let certs = Certs {
        dir: dir.to_path_buf(),
    };
    let server = Server::start_tls_unverified(1, &[], &certs, false, true);
    std::mem::forget(certs); // the caller owns the directory
    let config = client_config(trust);
    match TlsClient::connect(server.shard_port(0), &config, name) {
        Ok(_) => panic!("the client accepted the certificate"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn clients_refuse_expired_wrong_host_and_untrusted_certificates() {
    let dir = common::temp_dir("badcerts");
    std::fs::create_dir_all(&dir).unwrap();
    let authority = shardpay::certgen::Authority::new("test CA").unwrap();
    std::fs::write(dir.join("ca.pem"), authority.certificate_pem()).unwrap();
    let now = SystemTime::now();
    // Expired yesterday: the server starts (with a warning) and the client refuses it.
    write_pair(&authority, &dir, &["localhost"], now - 30 * DAY, now - DAY);
    let error = handshake_error(&dir, &dir.join("ca.pem"), "localhost");
    assert!(error.contains("expired"), "{error}");
    // For another host.
    write_pair(&authority, &dir, &["other.example"], now - DAY, now + 30 * DAY);
    let error = handshake_error(&dir, &dir.join("ca.pem"), "localhost");
    assert!(error.contains("not valid for name"), "{error}");
    // Signed by a CA the client does not trust (a self-signed CA without its certificate).
    let stranger = shardpay::certgen::Authority::new("unknown CA").unwrap();
    write_pair(&stranger, &dir, &["localhost"], now - DAY, now + 30 * DAY);
    let error = handshake_error(&dir, &dir.join("ca.pem"), "localhost");
    assert!(error.contains("UnknownIssuer"), "{error}");
    // curl agrees about the untrusted one.
    let certs = Certs { dir: dir.clone() };
    let server = Server::start_tls_unverified(1, &[], &certs, true, false);
    let url = format!("https://127.0.0.1:{}/healthz", server.port);
    let ca = certs.ca().display().to_string();
    let (code, _, stderr) = curl(&["--cacert", &ca, &url]);
    assert_eq!(code, 60, "{stderr}");
}

#[test]
fn sighup_reloads_the_certificate_and_open_connections_keep_theirs() {
    let certs = Certs::generate();
    let first = certs.server_der();
    let server = Server::start_tls(2, &[("RUST_LOG", "info")], &certs, true, true);
    let config = client_config(&certs.ca());
    let mut old = TlsClient::connect(server.port, &config, "localhost").unwrap();
    assert_eq!(old.peer_der(), first);
    assert_eq!(old.get("/healthz").text(), "ok");

    // B: a new pair from the same CA (gen-cert reuses the directory's CA).
    Certs::generate_in(&certs.dir);
    let second = certs.server_der();
    assert_ne!(second, first);
    server.signal(libc::SIGHUP);
    let reloaded = wait_for(|| server.stderr().contains("TLS certificate reloaded"));
    assert!(reloaded, "no reload logged: {}", server.stderr());
    // Every shard serves B to new connections, on every listener (a fresh client each time:
    // a resumed session keeps the certificate of the handshake that made it).
    for port in [
        server.port,
        server.port,
        server.shard_port(0),
        server.shard_port(1),
    ] {
        let config = client_config(&certs.ca());
        let mut client = TlsClient::connect(port, &config, "localhost").unwrap();
        assert_eq!(client.peer_der(), second, "port {port}");
        assert_eq!(client.get("/healthz").text(), "ok");
    }
    // The connection opened on A goes on.
    assert_eq!(old.get("/json").status, 200);
    assert_eq!(old.peer_der(), first);

    // An invalid pair (B's certificate with another key) is refused; B stays.
    let other = shardpay::certgen::Authority::new("other").unwrap();
    let stray_key = other.key_pem();
    shardpay::certgen::write_atomic(&certs.key(), stray_key.as_bytes(), 0o600).unwrap();
    server.signal(libc::SIGHUP);
    let refused = wait_for(|| {
        server
            .stderr()
            .contains("the new TLS certificate pair is refused")
    });
    assert!(refused, "{}", server.stderr());
    assert!(
        server.stderr().contains("does not belong to the certificate"),
        "{}",
        server.stderr()
    );
    // A certificate file that is not PEM is refused too.
    std::fs::write(certs.cert(), "not a certificate").unwrap();
    server.signal(libc::SIGHUP);
    assert!(wait_for(
        || server.stderr().matches("pair is refused").count() >= 2
    ));
    let config = client_config(&certs.ca());
    let mut client = TlsClient::connect(server.port, &config, "localhost").unwrap();
    assert_eq!(client.peer_der(), second);
    assert_eq!(client.get("/healthz").text(), "ok");
    assert_eq!(old.get("/healthz").text(), "ok");
}

#[test]
fn sighup_without_tls_is_logged_and_the_server_keeps_serving() {
    let server = Server::start(1, &[("RUST_LOG", "info")]);
    server.signal(libc::SIGHUP);
    assert!(
        wait_for(|| server.stderr().contains("nothing to reload")),
        "{}",
        server.stderr()
    );
    assert_eq!(common::Client::connect(server.port).get("/healthz").status, 200);
}

/// Polls `condition` for up to 20 s.
fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Reads until the server closes the connection; false if it is still open after 20 s.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_stalled_handshake_is_closed_at_the_deadline_while_others_are_served() {
    let certs = Certs::generate();
    let env = [("SHARDPAY_TLS_HANDSHAKE_TIMEOUT_MS", "300")];
    let server = Server::start_tls(1, &env, &certs, true, false);
    // One client connects and says nothing; another sends half a ClientHello.
    let mut silent = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut partial = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    // Meanwhile a real client is served on the same shard.
    let config = client_config(&certs.ca());
    let mut client = TlsClient::connect(server.port, &config, "localhost").unwrap();
    assert_eq!(client.get("/json").status, 200);
    assert!(closed_by_server(&mut silent), "the silent connection stayed open");
    assert!(
        closed_by_server(&mut partial),
        "the partial handshake stayed open"
    );
    assert_eq!(client.get("/healthz").text(), "ok");
    assert_eq!(metric(&server, "shardpay_tls_handshake_timeouts_total"), 2);
}

#[test]
fn handshakes_count_against_the_connection_limit() {
    let certs = Certs::generate();
    let env = [
        ("SHARDPAY_LIMITS_CONNECTIONS_PER_SHARD_MAX", "3"),
        ("SHARDPAY_TLS_HANDSHAKE_TIMEOUT_MS", "60000"),
    ];
    let server = Server::start_tls(1, &env, &certs, true, false);
    // Readiness checks used connections; wait until the shard has none open.
    assert!(wait_for(|| {
        let text = server.try_get_on(server.port, "/metrics").unwrap().text();
        text.lines()
            .any(|line| line.starts_with("shardpay_connections_open{") && line.ends_with(" 1"))
    }));
    // Three connections that never finish their handshake fill the shard...
    let stalled: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...so the next one is closed at once, before any handshake.
    let config = client_config(&certs.ca());
    assert!(TlsClient::connect(server.port, &config, "localhost").is_err());
    drop(stalled);
    // Once they are gone, clients are served again.
    assert!(wait_for(|| TlsClient::connect(server.port, &config, "localhost")
        .map(|mut client| client.get("/healthz").status == 200)
        .unwrap_or(false)));
    assert!(metric(&server, "shardpay_connections_rejected_total") >= 1);
}

/// Runs `shardpay serve` expecting it to refuse to start; (exit code, stderr).
fn refused_start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let data = common::temp_dir("refused");
    let output = Command::new(common::binary())
        .args(["serve", "--shards", "1", "--listen"])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .arg("--shard-port-base")
        .arg(common::free_port().to_string())
        .env("SHARDPAY_STORAGE_DATA_DIR", &data)
        .env("SHARDPAY_SERVER_IO_MEMORY_BYTES", "262144")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&data);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn unusable_certificate_files_stop_the_start_with_the_key_named() {
    let certs = Certs::generate();
    let cert = certs.cert().display().to_string();
    let key = certs.key().display().to_string();
    let (code, stderr) = refused_start(&[("SHARDPAY_TLS_PUBLIC", "true")]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("tls.cert_path"), "{stderr}");
    let missing = format!("{}/missing.pem", certs.dir.display());
    let (code, stderr) = refused_start(&[
        ("SHARDPAY_TLS_PUBLIC", "true"),
        ("SHARDPAY_TLS_CERT_PATH", &missing),
        ("SHARDPAY_TLS_KEY_PATH", &key),
    ]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("tls.cert_path") && stderr.contains("missing.pem"),
        "{stderr}"
    );
    // The CA's key is not the server certificate's.
    let ca_key = certs.dir.join("ca-key.pem").display().to_string();
    let (code, stderr) = refused_start(&[
        ("SHARDPAY_TLS_SHARD_PORTS", "true"),
        ("SHARDPAY_TLS_CERT_PATH", &cert),
        ("SHARDPAY_TLS_KEY_PATH", &ca_key),
    ]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("tls.key_path") && stderr.contains("does not belong"),
        "{stderr}"
    );
    // A key file with no key in it.
    let (code, stderr) = refused_start(&[
        ("SHARDPAY_TLS_PUBLIC", "true"),
        ("SHARDPAY_TLS_CERT_PATH", &cert),
        ("SHARDPAY_TLS_KEY_PATH", &cert),
    ]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("tls.key_path"), "{stderr}");
}
