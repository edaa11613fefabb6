//! The human-readable summary of a [`Report`]: a header, a table per request kind, CPU cost,
//! and errors (loudly).

use std::fmt::Write;

use crate::run::Report;

/// The summary printed at the end of a run.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let mut mode = match report.rate_per_second {
        Some(rate) => format!("open loop at {rate:.0} req/s"),
        None => "closed loop".to_string(),
    };
    if report.new_connection_per_request {
        mode.push_str(", a new connection per request");
    }
    let cpus = if report.cpus.is_empty() {
        "not pinned".to_string()
    } else {
        format!(
            "CPU {}",
            report
                .cpus
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    let _ = writeln!(
        out,
        "shardpay-bench {}: {} ({}), {} connections x depth {}, {} thread(s) ({cpus}), {:.1} s after {:.1} s warm-up",
        report.version, report.scenario, mode, report.connections, report.depth, report.threads,
        report.duration_s, report.warmup_s,
    );
    let _ = write!(
        out,
        "target {}: {} shard(s), {}",
        report.url,
        report.shards,
        if report.shard_aware {
            "shard-aware (each user's home shard port)"
        } else {
            "public port"
        },
    );
    if report.users > 0 {
        let _ = write!(out, ", {} users", report.users);
    }
    if let Some(share) = report.payments_cross_shard_share {
        let _ = write!(out, ", {:.0}% of payments cross-shard", share * 100.0);
    }
    let _ = writeln!(out, "\nmix: {}", report.mix);
    if let Some(tls) = &report.tls {
        let _ = write!(
            out,
            "TLS: server name {}, CA {}, session resumption {}",
            tls.server_name,
            tls.cacert,
            if tls.resumption { "on" } else { "off" }
        );
        if let Some(negotiated) = &tls.negotiated {
            let _ = write!(
                out,
                "; negotiated {} {}, ALPN {}",
                negotiated.protocol,
                negotiated.cipher_suite,
                negotiated.alpn.as_deref().unwrap_or("none")
            );
        }
        out.push('\n');
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>10} {:>8} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "kind", "ok", "shed", "failed", "ok/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    let mut row = |name: &str,
                   (ok, shed, failed): (u64, u64, u64),
                   per_second: f64,
                   latency: &crate::latency::LatencySummary| {
        let _ = writeln!(
            out,
            "{name:<10} {ok:>10} {shed:>10} {failed:>8} {per_second:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1}",
            latency.p50, latency.p90, latency.p99, latency.p999, latency.max
        );
    };
    if report.kinds.len() > 1 {
        for (name, kind) in &report.kinds {
            row(
                name,
                (kind.ok, kind.shed, kind.failed),
                kind.ok_per_second,
                &kind.latency_us,
            );
        }
    }
    row(
        "all",
        (report.ok, report.shed, report.failed),
        report.requests_per_second,
        &report.latency_us,
    );
    if report.shed > 0 {
        let shed = &report.shed_latency_us;
        let _ = writeln!(
            out,
            "shed (503 overloaded, not errors): {:.0}/s, answered (ok + shed) {:.0}/s; shed latency p50 {:.1} µs, p99 {:.1} µs",
            report.shed_per_second, report.answered_per_second, shed.p50, shed.p99
        );
    }
    let _ = writeln!(out);
    let cpu_line = |label: &str, cpu: &crate::run::CpuReport| match (
        cpu.cpu_us_per_request,
        cpu.user_us_per_request,
        cpu.system_us_per_request,
    ) {
        (Some(total), Some(user), Some(system)) => {
            let per_answer = match cpu.cpu_us_per_answer {
                Some(per_answer) if report.shed > 0 => format!(", {per_answer:.2} per answer (ok + shed)"),
                _ => String::new(),
            };
            format!(
                "{label}: {total:.2} CPU-µs/request (user {user:.2}, system {system:.2}){per_answer}, {:.2} cores busy\n",
                cpu.cores_busy
            )
        }
        _ => format!("{label}: no correct answers to divide by\n"),
    };
    out.push_str(&cpu_line("client", &report.client_cpu));
    if let Some(server) = &report.server_cpu {
        let mut label = format!("server (pid {}", server.pid.unwrap_or_default());
        for pid in &server.more_pids {
            label.push_str(&format!("+{pid}"));
        }
        label.push(')');
        out.push_str(&cpu_line(&label, server));
    }
    let handshakes = &report.handshakes;
    if report.new_connection_per_request || report.tls.is_some() {
        let what = if report.tls.is_some() {
            "TLS handshakes"
        } else {
            "connections set up"
        };
        let _ = write!(
            out,
            "{what}: {} in the window, {:.0}/s",
            handshakes.completed, handshakes.per_second
        );
        if let (Some(resumed), Some(share)) = (handshakes.resumed, handshakes.resumed_share) {
            let _ = write!(out, ", {resumed} resumed ({:.1}%)", share * 100.0);
        }
        if report.new_connection_per_request {
            if let Some(server) = handshakes.server_cpu_us_per_handshake {
                let _ = write!(out, "; server {server:.2} CPU-µs per connection");
            }
            if let Some(client) = handshakes.client_cpu_us_per_handshake {
                let _ = write!(out, ", client {client:.2}");
            }
        }
        out.push('\n');
    }
    if let Some(lag) = &report.client_send_lag_us {
        let _ = writeln!(
            out,
            "client send lag (open loop, included in the latencies): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            lag.p50, lag.p99, lag.max
        );
    }
    if report.errors == 0 && report.ok > 0 {
        out.push_str("errors: none\n");
    }
    out
}

/// The error section, for standard error; empty when the run had no errors and answers.
pub fn errors(report: &Report) -> String {
    let mut out = String::new();
    if report.ok == 0 {
        out.push_str("ERROR: no correct answer in the measured window\n");
    }
    if report.errors > 0 {
        let _ = writeln!(
            out,
            "ERROR: {} error(s) during the run (warm-up included); the figures above are not valid:",
            report.errors
        );
        for (kind, error) in &report.errors_by_kind {
            let _ = writeln!(out, "  {kind:<22} {:>10}   first: {}", error.count, error.example);
        }
        if report.errors_by_kind.contains_key("status_429") {
            out.push_str(
                "  hint: 429 is the server's rate limiting; a benchmark drives a few users far \
                 beyond a real user's rate: run shardpay with config/bench.toml (or raise \
                 auth.user_request_burst and auth.login_attempts_per_ip_max)\n",
            );
        }
    }
    out
}
