//! Per-shard counters and the Prometheus text exposition.
//!
//! Each shard owns one [`ShardMetrics`] in plain `Cell`s: recording is a load and a store on the
//! shard's own core, never an atomic or a lock. `/metrics` asks every shard for a [`Snapshot`]
//! over the mesh and [`render`]s them, each series labelled by `shard`. This module only counts:
//! it never does I/O.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in seconds (`+Inf` is implicit).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Response statuses counted individually; anything else is counted as `other`.
const STATUSES: [u16; 24] = [
    100, 200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 413, 414, 415, 417, 422, 429, 431, 500, 501, 502,
    503, 504, 505,
];
const STATUS_SLOTS: usize = STATUSES.len() + 1;

/// Most distinct parse-error codes tracked per shard; the codec has fewer than this.
const PARSE_ERROR_KINDS_MAX: usize = 64;

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&known| known == status)
        .unwrap_or(STATUSES.len())
}

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [Cell<u64>; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_nanos: Cell<u64>,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Cell::new(0)),
            sum_nanos: Cell::new(0),
        }
    }

    /// Records `count` observations of `elapsed`.
    pub fn observe(&self, elapsed: Duration, count: u64) {
        let seconds = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        let bucket = &self.buckets[slot];
        bucket.set(bucket.get() + count);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos
            .set(self.sum_nanos.get().saturating_add(nanos.saturating_mul(count)));
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.buckets.iter().map(Cell::get).collect(),
            sum_seconds: self.sum_nanos.get() as f64 / 1e9,
        }
    }
}

/// One shard's counters of the ScyllaDB store (zero and not rendered with the embedded log).
#[derive(Debug)]
pub struct DbMetrics {
    /// Logged batches the database acknowledged.
    pub batches: Cell<u64>,
    /// Row writes (upserts and deletes) in acknowledged batches.
    pub rows: Cell<u64>,
    /// Batch attempts that failed (each is retried until it succeeds).
    pub write_failures: Cell<u64>,
    /// Time of each acknowledged batch attempt, from handing it to the driver's thread to the
    /// acknowledgement.
    pub write_duration: Histogram,
    /// Commands refused unexecuted because `scylla.pending_frames_max` frames waited.
    pub backlog_refusals: Cell<u64>,
    /// Answers that gave up waiting for the database after `scylla.request_timeout_ms` (503).
    pub answer_timeouts: Cell<u64>,
}

impl DbMetrics {
    fn new() -> Self {
        DbMetrics {
            batches: Cell::new(0),
            rows: Cell::new(0),
            write_failures: Cell::new(0),
            write_duration: Histogram::new(),
            backlog_refusals: Cell::new(0),
            answer_timeouts: Cell::new(0),
        }
    }

    /// Adds one to `cell`.
    pub fn bump(cell: &Cell<u64>) {
        cell.set(cell.get() + 1);
    }

    /// An owned copy, with the frames now waiting for the database.
    pub fn snapshot(&self, pending_frames: u64) -> DbSnapshot {
        DbSnapshot {
            batches: self.batches.get(),
            rows: self.rows.get(),
            write_failures: self.write_failures.get(),
            write_duration: self.write_duration.snapshot(),
            backlog_refusals: self.backlog_refusals.get(),
            answer_timeouts: self.answer_timeouts.get(),
            pending_frames,
        }
    }
}

/// [`DbMetrics`] at one moment.
#[derive(Debug, Clone)]
pub struct DbSnapshot {
    /// Acknowledged batches.
    pub batches: u64,
    /// Rows in acknowledged batches.
    pub rows: u64,
    /// Failed batch attempts.
    pub write_failures: u64,
    /// Acknowledged batch attempts' durations.
    pub write_duration: HistogramSnapshot,
    /// Commands refused for the backlog.
    pub backlog_refusals: u64,
    /// Answers that timed out waiting for the database.
    pub answer_timeouts: u64,
    /// Frames applied and not yet acknowledged by the database.
    pub pending_frames: u64,
}

/// One shard's counters.
#[derive(Debug)]
pub struct ShardMetrics {
    shard: usize,
    routes: &'static [&'static str],
    /// `requests[route * STATUS_SLOTS + status slot]`.
    requests: Box<[Cell<u64>]>,
    /// Request latency from the read that completed a request to the write of its response.
    pub latency: Histogram,
    /// Connections accepted and served.
    pub connections_accepted: Cell<u64>,
    /// Connections closed at once because the shard was at its limit or draining.
    pub connections_rejected: Cell<u64>,
    /// Connections closed at once because their client address had its share of the shard.
    pub connections_rejected_ip: Cell<u64>,
    /// Failed accept calls (EMFILE and the like).
    pub accept_errors: Cell<u64>,
    /// argon2id computations started (hashes at signup, verifications at login).
    pub password_checks: Cell<u64>,
    /// TLS handshakes completed without resumption.
    pub tls_handshakes_full: Cell<u64>,
    /// TLS handshakes completed by resuming a session (ticket or session id).
    pub tls_handshakes_resumed: Cell<u64>,
    /// TLS handshakes that failed (protocol errors, the peer closing).
    pub tls_handshake_failures: Cell<u64>,
    /// TLS handshakes closed at `tls.handshake_timeout_ms`.
    pub tls_handshake_timeouts: Cell<u64>,
    parse_errors: RefCell<Vec<(&'static str, u64)>>,
    /// Messages this shard sent to each peer.
    pub mesh_sent: Box<[Cell<u64>]>,
    /// Messages this shard received from each peer.
    pub mesh_received: Box<[Cell<u64>]>,
    /// Sends that found a peer's queue full and had to wait.
    pub mesh_backpressure: Box<[Cell<u64>]>,
    /// The ScyllaDB store's counters.
    pub db: DbMetrics,
    /// Commands other nodes sent this shard (several nodes).
    pub node_commands_served: Cell<u64>,
}

impl ShardMetrics {
    /// Counters for `shard` of `shards`, with requests counted per route of `routes`.
    pub fn new(shard: usize, shards: usize, routes: &'static [&'static str]) -> Self {
        let cells = |n: usize| (0..n).map(|_| Cell::new(0)).collect::<Box<[Cell<u64>]>>();
        ShardMetrics {
            shard,
            routes,
            requests: cells(routes.len() * STATUS_SLOTS),
            latency: Histogram::new(),
            connections_accepted: Cell::new(0),
            connections_rejected: Cell::new(0),
            connections_rejected_ip: Cell::new(0),
            accept_errors: Cell::new(0),
            password_checks: Cell::new(0),
            tls_handshakes_full: Cell::new(0),
            tls_handshakes_resumed: Cell::new(0),
            tls_handshake_failures: Cell::new(0),
            tls_handshake_timeouts: Cell::new(0),
            parse_errors: RefCell::new(Vec::new()),
            mesh_sent: cells(shards),
            mesh_received: cells(shards),
            mesh_backpressure: cells(shards),
            db: DbMetrics::new(),
            node_commands_served: Cell::new(0),
        }
    }

    /// Counts one request to `route` (an index into the route names) answered with `status`.
    pub fn count_request(&self, route: usize, status: u16) {
        if let Some(cell) = self.requests.get(route * STATUS_SLOTS + status_slot(status)) {
            cell.set(cell.get() + 1);
        }
    }

    /// Counts a request the codec refused, by its error code.
    pub fn count_parse_error(&self, code: &'static str) {
        let mut errors = self.parse_errors.borrow_mut();
        if let Some(entry) = errors.iter_mut().find(|(known, _)| *known == code) {
            entry.1 += 1;
        } else if errors.len() < PARSE_ERROR_KINDS_MAX {
            errors.push((code, 1));
        }
    }

    /// Adds one to a per-peer counter.
    pub fn bump(cells: &[Cell<u64>], peer: usize) {
        if let Some(cell) = cells.get(peer) {
            cell.set(cell.get() + 1);
        }
    }

    /// An owned copy of every counter, to send to the shard rendering `/metrics`.
    pub fn snapshot(&self, connections_open: usize) -> Snapshot {
        let mut requests = Vec::new();
        for (route_index, route) in self.routes.iter().enumerate() {
            for (slot, status) in STATUSES.iter().map(|s| Some(*s)).chain([None]).enumerate() {
                let count = self.requests[route_index * STATUS_SLOTS + slot].get();
                if count > 0 {
                    requests.push(RequestCount { route, status, count });
                }
            }
        }
        let values = |cells: &[Cell<u64>]| cells.iter().map(Cell::get).collect::<Vec<_>>();
        Snapshot {
            shard: self.shard,
            requests,
            latency: self.latency.snapshot(),
            connections_open: connections_open as u64,
            connections_accepted: self.connections_accepted.get(),
            connections_rejected: self.connections_rejected.get(),
            connections_rejected_ip: self.connections_rejected_ip.get(),
            accept_errors: self.accept_errors.get(),
            password_checks: self.password_checks.get(),
            tls_handshakes_full: self.tls_handshakes_full.get(),
            tls_handshakes_resumed: self.tls_handshakes_resumed.get(),
            tls_handshake_failures: self.tls_handshake_failures.get(),
            tls_handshake_timeouts: self.tls_handshake_timeouts.get(),
            parse_errors: self.parse_errors.borrow().clone(),
            mesh_sent: values(&self.mesh_sent),
            mesh_received: values(&self.mesh_received),
            mesh_backpressure: values(&self.mesh_backpressure),
            log_frames: 0,
            log_batches: 0,
            log_bytes: 0,
            requests_shed: 0,
            queue_delay_seconds: 0.0,
            shed_share: 0.0,
            db: None,
            nodes: Vec::new(),
            node_commands_served: self.node_commands_served.get(),
        }
    }
}

/// Requests to one route with one status.
#[derive(Debug, Clone)]
pub struct RequestCount {
    /// Route name (its path pattern), or `unmatched`.
    pub route: &'static str,
    /// Status, `None` for statuses not counted individually.
    pub status: Option<u16>,
    /// Requests.
    pub count: u64,
}

/// Histogram counts per bucket (not cumulative) and the sum.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    /// Per-bucket counts, the last one `+Inf`.
    pub buckets: Vec<u64>,
    /// Sum of all observations.
    pub sum_seconds: f64,
}

/// One shard's counters at one moment; owned so it can cross shards.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Shard id.
    pub shard: usize,
    /// Non-zero request counts.
    pub requests: Vec<RequestCount>,
    /// Latency histogram.
    pub latency: HistogramSnapshot,
    /// Open connections.
    pub connections_open: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections refused at the limit.
    pub connections_rejected: u64,
    /// Connections refused at the per-address limit.
    pub connections_rejected_ip: u64,
    /// Failed accepts.
    pub accept_errors: u64,
    /// argon2id computations started.
    pub password_checks: u64,
    /// Full TLS handshakes.
    pub tls_handshakes_full: u64,
    /// Resumed TLS handshakes.
    pub tls_handshakes_resumed: u64,
    /// Failed TLS handshakes.
    pub tls_handshake_failures: u64,
    /// TLS handshakes past their deadline.
    pub tls_handshake_timeouts: u64,
    /// Refused requests by error code.
    pub parse_errors: Vec<(&'static str, u64)>,
    /// Mesh messages sent, by peer.
    pub mesh_sent: Vec<u64>,
    /// Mesh messages received, by peer.
    pub mesh_received: Vec<u64>,
    /// Mesh sends that waited for queue space, by peer.
    pub mesh_backpressure: Vec<u64>,
    /// Frames appended to the shard's log (one per state change).
    pub log_frames: u64,
    /// Batches written to the log (one write and, with fsync durability, one fdatasync each).
    pub log_batches: u64,
    /// Bytes appended to the log.
    pub log_bytes: u64,
    /// API requests refused with 503 because the shard was behind.
    pub requests_shed: u64,
    /// The last measured queueing delay.
    pub queue_delay_seconds: f64,
    /// The share of new API requests being refused.
    pub shed_share: f64,
    /// The ScyllaDB store's counters, with that store.
    pub db: Option<DbSnapshot>,
    /// Per other node (several nodes): its slots, commands this shard sent it, and those that
    /// got no reply.
    pub nodes: Vec<(String, u64, u64)>,
    /// Commands other nodes sent this shard.
    pub node_commands_served: u64,
}

/// Reads one per-shard value from a snapshot.
type Gauge = fn(&Snapshot) -> u64;
/// Reads one per-shard fractional value from a snapshot.
type Fraction = fn(&Snapshot) -> f64;
/// Reads one count of another node's entry (slots, sent, failed).
type NodeValue = fn(&(String, u64, u64)) -> u64;
/// Reads one per-shard value of the database's counters.
type DbValue = fn(&DbSnapshot) -> u64;
/// Reads per-peer values from a snapshot.
type PerPeer = fn(&Snapshot) -> &Vec<u64>;

/// Renders snapshots as Prometheus text exposition format 0.0.4.
pub fn render(snapshots: &[Snapshot]) -> String {
    let mut out = String::with_capacity(4096 + snapshots.len() * 2048);
    header(
        &mut out,
        "shardpay_http_requests_total",
        "counter",
        "HTTP requests answered, by shard, route and status.",
    );
    for snapshot in snapshots {
        for request in &snapshot.requests {
            let status = match request.status {
                Some(status) => status.to_string(),
                None => "other".to_string(),
            };
            let _ = writeln!(
                out,
                "shardpay_http_requests_total{{shard=\"{}\",route=\"{}\",status=\"{}\"}} {}",
                snapshot.shard, request.route, status, request.count
            );
        }
    }
    histogram(
        &mut out,
        "shardpay_http_request_duration_seconds",
        "Time from reading a request to writing its response.",
        snapshots
            .iter()
            .map(|snapshot| (snapshot.shard, &snapshot.latency)),
    );
    let simple: [(&str, &str, &str, Gauge); 14] = [
        (
            "shardpay_requests_shed_total",
            "counter",
            "API requests answered 503 overloaded at once because the shard's queueing delay was above overload.queue_delay_target_us.",
            |s| s.requests_shed,
        ),
        (
            "shardpay_connections_open",
            "gauge",
            "Open client connections.",
            |s| s.connections_open,
        ),
        (
            "shardpay_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            |s| s.connections_accepted,
        ),
        (
            "shardpay_connections_rejected_total",
            "counter",
            "Connections closed at once because the shard was at its connection limit or draining.",
            |s| s.connections_rejected,
        ),
        (
            "shardpay_connections_rejected_ip_total",
            "counter",
            "Connections closed at once because their client address had limits.connections_per_ip_max on the shard.",
            |s| s.connections_rejected_ip,
        ),
        (
            "shardpay_accept_errors_total",
            "counter",
            "Failed accept calls (e.g. out of file descriptors).",
            |s| s.accept_errors,
        ),
        (
            "shardpay_password_checks_total",
            "counter",
            "argon2id computations started: hashes at signup, verifications at login (unknown users included).",
            |s| s.password_checks,
        ),
        (
            "shardpay_tls_handshakes_full_total",
            "counter",
            "TLS handshakes completed without resuming a session.",
            |s| s.tls_handshakes_full,
        ),
        (
            "shardpay_tls_handshakes_resumed_total",
            "counter",
            "TLS handshakes completed by resuming a session (ticket or session id).",
            |s| s.tls_handshakes_resumed,
        ),
        (
            "shardpay_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed: protocol errors, refused certificates, the client closing.",
            |s| s.tls_handshake_failures,
        ),
        (
            "shardpay_tls_handshake_timeouts_total",
            "counter",
            "TLS handshakes closed at tls.handshake_timeout_ms.",
            |s| s.tls_handshake_timeouts,
        ),
        (
            "shardpay_log_frames_total",
            "counter",
            "Frames appended to the shard's write-ahead log (one per state change).",
            |s| s.log_frames,
        ),
        (
            "shardpay_log_batches_total",
            "counter",
            "Group-commit batches written to the log, each made durable at once (frames / batches = records per sync).",
            |s| s.log_batches,
        ),
        (
            "shardpay_log_bytes_total",
            "counter",
            "Bytes appended to the shard's write-ahead log.",
            |s| s.log_bytes,
        ),
    ];
    for (name, kind, help, value) in simple {
        header(&mut out, name, kind, help);
        for snapshot in snapshots {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", snapshot.shard, value(snapshot));
        }
    }
    let fractional: [(&str, &str, Fraction); 2] = [
        (
            "shardpay_queue_delay_seconds",
            "How late the shard's 1 ms (10 ms when idle) pulse timer ran last: the queueing delay a request arriving then saw.",
            |s| s.queue_delay_seconds,
        ),
        (
            "shardpay_shed_share",
            "The share (0 to 1) of new API requests the shard refuses with 503 now.",
            |s| s.shed_share,
        ),
    ];
    for (name, help, value) in fractional {
        header(&mut out, name, "gauge", help);
        for snapshot in snapshots {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", snapshot.shard, value(snapshot));
        }
    }
    header(
        &mut out,
        "shardpay_http_parse_errors_total",
        "counter",
        "Requests refused by the HTTP codec, by reason.",
    );
    for snapshot in snapshots {
        for (code, count) in &snapshot.parse_errors {
            let _ = writeln!(
                out,
                "shardpay_http_parse_errors_total{{shard=\"{}\",reason=\"{}\"}} {}",
                snapshot.shard, code, count
            );
        }
    }
    let mesh: [(&str, &str, PerPeer); 3] = [
        (
            "shardpay_mesh_messages_sent_total",
            "Messages sent to another shard.",
            |s| &s.mesh_sent,
        ),
        (
            "shardpay_mesh_messages_received_total",
            "Messages received from another shard.",
            |s| &s.mesh_received,
        ),
        (
            "shardpay_mesh_backpressure_total",
            "Sends that found the peer's queue full and waited.",
            |s| &s.mesh_backpressure,
        ),
    ];
    for (name, help, values) in mesh {
        header(&mut out, name, "counter", help);
        for snapshot in snapshots {
            for (peer, value) in values(snapshot).iter().enumerate() {
                if peer != snapshot.shard {
                    let _ = writeln!(
                        out,
                        "{name}{{shard=\"{}\",peer=\"{peer}\"}} {value}",
                        snapshot.shard
                    );
                }
            }
        }
    }
    render_db(&mut out, snapshots);
    render_nodes(&mut out, snapshots);
    out
}

/// Renders the commands exchanged with other nodes, when there are any.
fn render_nodes(out: &mut String, snapshots: &[Snapshot]) {
    if snapshots.iter().all(|snapshot| snapshot.nodes.is_empty()) {
        return;
    }
    let per_node: [(&str, &str, NodeValue); 2] = [
        (
            "shardpay_node_commands_sent_total",
            "Commands sent to the node serving `slots`, for requests of its users.",
            |node| node.1,
        ),
        (
            "shardpay_node_command_failures_total",
            "Commands sent to the node serving `slots` that got no reply (unreachable, refused, timed out, or not stored there): each answered 503.",
            |node| node.2,
        ),
    ];
    for (name, help, value) in per_node {
        header(out, name, "counter", help);
        for snapshot in snapshots {
            for node in &snapshot.nodes {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{}\",slots=\"{}\"}} {}",
                    snapshot.shard,
                    node.0,
                    value(node)
                );
            }
        }
    }
    header(
        out,
        "shardpay_node_commands_served_total",
        "counter",
        "Commands other nodes sent this shard for requests of its users.",
    );
    for snapshot in snapshots {
        let _ = writeln!(
            out,
            "shardpay_node_commands_served_total{{shard=\"{}\"}} {}",
            snapshot.shard, snapshot.node_commands_served
        );
    }
}

/// Renders one histogram series per shard.
fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    shards: impl Iterator<Item = (usize, &'a HistogramSnapshot)>,
) {
    header(out, name, "histogram", help);
    for (shard, snapshot) in shards {
        let mut cumulative = 0u64;
        for (index, count) in snapshot.buckets.iter().enumerate() {
            cumulative += count;
            let bound = match LATENCY_BUCKETS_SECONDS.get(index) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {}", snapshot.sum_seconds);
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {cumulative}");
    }
}

/// Renders the ScyllaDB store's series, for the shards that have them.
fn render_db(out: &mut String, snapshots: &[Snapshot]) {
    let db: Vec<(usize, &DbSnapshot)> = snapshots
        .iter()
        .filter_map(|snapshot| snapshot.db.as_ref().map(|db| (snapshot.shard, db)))
        .collect();
    if db.is_empty() {
        return;
    }
    let series: [(&str, &str, &str, DbValue); 6] = [
        (
            "shardpay_db_batches_total",
            "counter",
            "Logged batches of the shard's changes the database acknowledged.",
            |d| d.batches,
        ),
        (
            "shardpay_db_rows_written_total",
            "counter",
            "Row writes (upserts and deletes) in acknowledged batches.",
            |d| d.rows,
        ),
        (
            "shardpay_db_write_failures_total",
            "counter",
            "Batch attempts that failed; each is retried with backoff until it succeeds.",
            |d| d.write_failures,
        ),
        (
            "shardpay_db_backlog_refusals_total",
            "counter",
            "Commands refused unexecuted (503) because scylla.pending_frames_max changes waited for the database.",
            |d| d.backlog_refusals,
        ),
        (
            "shardpay_db_answer_timeouts_total",
            "counter",
            "Answers that stopped waiting for the database after scylla.request_timeout_ms (503).",
            |d| d.answer_timeouts,
        ),
        (
            "shardpay_db_pending_frames",
            "gauge",
            "Changes applied by the shard and not yet acknowledged by the database.",
            |d| d.pending_frames,
        ),
    ];
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        for (shard, snapshot) in &db {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(snapshot));
        }
    }
    histogram(
        out,
        "shardpay_db_write_duration_seconds",
        "Time of each acknowledged batch, from handing it to the driver's thread to the acknowledgement.",
        db.iter()
            .map(|(shard, snapshot)| (*shard, &snapshot.write_duration)),
    );
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let metrics = ShardMetrics::new(1, 2, &["/a", "/b"]);
        metrics.count_request(0, 200);
        metrics.count_request(0, 200);
        metrics.count_request(1, 299);
        metrics.latency.observe(Duration::from_micros(70), 2);
        metrics.count_parse_error("invalid_host");
        ShardMetrics::bump(&metrics.mesh_sent, 0);
        let text = render(&[metrics.snapshot(3)]);
        assert!(
            text.contains("shardpay_http_requests_total{shard=\"1\",route=\"/a\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("route=\"/b\",status=\"other\"} 1\n"), "{text}");
        assert!(
            text.contains("shardpay_http_request_duration_seconds_bucket{shard=\"1\",le=\"0.00005\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("shardpay_http_request_duration_seconds_bucket{shard=\"1\",le=\"0.0001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("shardpay_http_request_duration_seconds_count{shard=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("shardpay_connections_open{shard=\"1\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("reason=\"invalid_host\"} 1\n"), "{text}");
        assert!(
            text.contains("shardpay_mesh_messages_sent_total{shard=\"1\",peer=\"0\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn every_series_is_documented_in_the_api_reference() {
        let metrics = ShardMetrics::new(0, 2, &["/a"]);
        let mut snapshot = metrics.snapshot(0);
        snapshot.db = Some(metrics.db.snapshot(0));
        snapshot.nodes = vec![("8192-16383".to_string(), 3, 1)];
        let text = render(&[snapshot]);
        assert!(
            text.contains("shardpay_node_command_failures_total{shard=\"0\",slots=\"8192-16383\"} 1\n"),
            "{text}"
        );
        let reference = include_str!("../docs/API.md");
        let names: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        assert!(names.len() > 20, "{text}");
        for name in names {
            assert!(
                reference.contains(&format!("`{name}`")),
                "{name} is rendered but not in docs/API.md"
            );
        }
    }

    #[test]
    fn renders_the_database_series_only_with_the_database() {
        let metrics = ShardMetrics::new(0, 1, &["/a"]);
        let text = render(&[metrics.snapshot(0)]);
        assert!(!text.contains("shardpay_db_"), "{text}");

        DbMetrics::bump(&metrics.db.batches);
        metrics.db.rows.set(7);
        DbMetrics::bump(&metrics.db.write_failures);
        metrics.db.write_duration.observe(Duration::from_millis(3), 1);
        let mut snapshot = metrics.snapshot(0);
        snapshot.db = Some(metrics.db.snapshot(5));
        let text = render(&[snapshot]);
        for line in [
            "shardpay_db_batches_total{shard=\"0\"} 1\n",
            "shardpay_db_rows_written_total{shard=\"0\"} 7\n",
            "shardpay_db_write_failures_total{shard=\"0\"} 1\n",
            "shardpay_db_backlog_refusals_total{shard=\"0\"} 0\n",
            "shardpay_db_pending_frames{shard=\"0\"} 5\n",
            "# TYPE shardpay_db_pending_frames gauge\n",
            "shardpay_db_write_duration_seconds_bucket{shard=\"0\",le=\"0.0025\"} 0\n",
            "shardpay_db_write_duration_seconds_bucket{shard=\"0\",le=\"0.005\"} 1\n",
            "shardpay_db_write_duration_seconds_count{shard=\"0\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }
}
