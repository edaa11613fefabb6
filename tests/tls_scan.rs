//! TLS scanners against the real binary: sslyze checks the Mozilla "intermediate" configuration
//! (it must say compliant), and every finding of testssl at MEDIUM severity or worse must be
//! explained in docs/SECURITY.md (its id in the "testssl findings" table).
//!
//! The scanners are external programs (`pip install sslyze`, Debian's `testssl.sh`). Without them
//! these tests say so and pass, unless TLS_SCANNERS_REQUIRED=1 (CI sets it, after installing
//! both), which makes a missing scanner a failure.

mod common;

use std::path::Path;
use std::process::Command;

use common::tls::Certs;
use common::Server;

/// Whether `program` runs; panics if it is missing while the scanners are required.
fn available(program: &str, version_args: &[&str]) -> bool {
    let found = Command::new(program)
        .args(version_args)
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    if !found {
        let required = std::env::var("TLS_SCANNERS_REQUIRED").is_ok_and(|value| value == "1");
        assert!(
            !required,
            "{program} is required (TLS_SCANNERS_REQUIRED=1) but does not run"
        );
        eprintln!("skipped: {program} is not installed (TLS_SCANNERS_REQUIRED=1 makes this a failure)");
    }
    found
}

#[test]
fn sslyze_finds_the_mozilla_intermediate_configuration() {
    if !available("sslyze", &["--help"]) {
        return;
    }
    let certs = Certs::generate();
    let server = Server::start_tls(1, &[], &certs, true, true);
    for port in [server.port, server.shard_port(0)] {
        let output = Command::new("sslyze")
            .arg("--mozilla_config=intermediate")
            .arg("--certinfo_ca_file")
            .arg(certs.ca())
            .arg(format!("127.0.0.1:{port}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "sslyze failed on port {port}:\n{text}");
        assert!(text.contains("OK - Compliant"), "{text}");
    }
}

/// The ids listed in docs/SECURITY.md's table of explained testssl findings.
fn explained_ids() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/SECURITY.md");
    let text = std::fs::read_to_string(&path).expect("docs/SECURITY.md");
    let section = text
        .split("<!-- testssl-findings -->")
        .nth(1)
        .expect("docs/SECURITY.md has a <!-- testssl-findings --> table");
    section
        .lines()
        .take_while(|line| !line.starts_with("<!-- end -->"))
        .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_testssl_finding_of_medium_or_worse_is_explained() {
    if !available("testssl", &["--version"]) {
        return;
    }
    let explained = explained_ids();
    assert!(!explained.is_empty());
    let certs = Certs::generate();
    let server = Server::start_tls(1, &[], &certs, true, false);
    let report = common::temp_dir("testssl").with_extension("json");
    let output = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "off"])
        .arg("--add-ca")
        .arg(certs.ca())
        .arg("--jsonfile")
        .arg(&report)
        .arg(format!("https://127.0.0.1:{}/json", server.port))
        .output()
        .unwrap();
    let json = std::fs::read_to_string(&report).unwrap_or_else(|_| {
        panic!(
            "testssl wrote no report:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = std::fs::remove_file(&report);
    let findings: Vec<serde_json::Value> = serde_json::from_str(&json).expect("testssl JSON");
    // testssl's own problems (a scan that could not run) are findings too: they must not hide.
    let unexplained: Vec<String> = findings
        .iter()
        .filter(|finding| {
            matches!(
                finding["severity"].as_str(),
                Some("MEDIUM" | "HIGH" | "CRITICAL" | "FATAL")
            )
        })
        .filter(|finding| {
            let id = finding["id"].as_str().unwrap_or_default();
            !explained.iter().any(|known| known == id)
        })
        .map(|finding| {
            format!(
                "{} {}: {}",
                finding["severity"], finding["id"], finding["finding"]
            )
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "testssl findings not explained in docs/SECURITY.md:\n{}",
        unexplained.join("\n")
    );
    // The scan did run: it reports the protocols it saw.
    assert!(
        findings.iter().any(|finding| finding["id"] == "TLS1_3"),
        "no protocol findings: {json}"
    );
}
