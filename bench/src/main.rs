//! `shardpay-bench`: the command line of the load generator. Parses flags into a
//! [`RunConfig`], runs it, prints the summary, writes `--json`, and exits non-zero on errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shardpay_bench::report;
use shardpay_bench::run::{run, RunConfig};
use shardpay_bench::scenario::{Mix, Scenario};

/// HTTP/1.1 load generator for shardpay: logins, authenticated reads, payments and cross-shard
/// traffic, closed or open loop, with HdrHistogram latencies, over plain TCP or TLS (https).
#[derive(Debug, Parser)]
#[command(name = "shardpay-bench", version)]
struct Cli {
    /// The server's public URL: http://HOST:PORT, or https://HOST:PORT for TLS (then the shard
    /// ports of --shard-aware are contacted over TLS too; needs --cacert).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// https: PEM file of the CA certificates to trust. Required for https (the server's
    /// certificate is always verified; there is no insecure mode).
    #[arg(long, value_name = "PATH")]
    cacert: Option<PathBuf>,
    /// https: the name the server's certificate must be valid for, a DNS name or an IP address.
    /// Default: the URL's host.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// https: keep a client session cache (TLS 1.3 tickets, TLS 1.2 session ids and tickets) and
    /// resume sessions (on), or make every handshake a full one (off). Default: on.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    tls_resumption: Option<bool>,
    /// Each connection sends one request with `Connection: close`, reads the answer, closes and
    /// reconnects at once: measures handshakes (connection set-ups) per second. Needs --depth 1.
    #[arg(long)]
    new_connection_per_request: bool,
    /// plaintext, json, balance, payments, mixed or signup.
    #[arg(long, short = 's', value_parser = parse_scenario, default_value = "plaintext")]
    scenario: Scenario,
    /// The mix of `mixed`, as kind=weight,… (kinds: plaintext json balance me payment list login
    /// signup). Default: login=1,balance=30,me=30,payment=30,list=9.
    #[arg(long, value_parser = parse_mix)]
    mix: Option<Mix>,
    /// Connections in all.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Requests in flight per connection (HTTP/1.1 pipelining depth).
    #[arg(long, short = 'd', default_value_t = 1)]
    depth: usize,
    /// Worker threads (default: one per --cpus entry, else 1).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// CPUs to pin the workers to, e.g. "0" or "0-3,6".
    #[arg(long, value_parser = parse_cpus)]
    cpus: Option<CpuList>,
    /// Open loop: send this many requests per second in all, on a fixed schedule, and measure
    /// latency from each request's due time (corrected for coordinated omission). Default:
    /// closed loop.
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds.
    #[arg(long, short = 'D', default_value_t = 10.0)]
    duration: f64,
    /// Benchmark users to sign up, fund and log in first (spread evenly over the shards).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Connect each user's requests straight to the user's home shard port (from /v1/cluster).
    #[arg(long)]
    shard_aware: bool,
    /// Sign the users up on the slots of the shardpay node at this URL (from its /v1/cluster)
    /// while sending every request to --url: with several nodes, measures requests carried out on
    /// another node. Default: the users are on --url's own slots
    #[arg(long)]
    placement_url: Option<String>,
    /// Share of payments to a user on another shard (0 to 1). Default: payees at random.
    #[arg(long)]
    cross_shard_ratio: Option<f64>,
    /// Admin API key for the set-up deposits.
    #[arg(long, default_value = "dev-admin-key-not-for-production")]
    admin_key: String,
    /// Currency of deposits and payments.
    #[arg(long, default_value = "USD")]
    currency: String,
    /// Deposit per user at set-up, in minor units.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    deposit: u64,
    /// Amount of each payment, in minor units.
    #[arg(long, default_value_t = 1)]
    payment_amount: u64,
    /// Connections used to set the users up.
    #[arg(long, default_value_t = 8)]
    setup_connections: usize,
    /// The server's process id: report its CPU-µs per request from /proc/PID/stat. Several,
    /// comma-separated (the nodes of a cluster), are summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Add a per-second timeline to the report (ok, shed and errors per second, and the ok
    /// answers' p50/p99), from the start of the load, warm-up included (at most 3600 seconds).
    #[arg(long)]
    timeline: bool,
    /// Start the load at this wall-clock time (Unix ms) instead of right after the set-up (to
    /// line up several clients); a set-up that ends later starts at once. The report's
    /// load_started_unix_ms says when the load began.
    #[arg(long, value_name = "UNIX_MS")]
    start_at_unix_ms: Option<u64>,
    /// Write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn parse_scenario(text: &str) -> Result<Scenario, String> {
    Scenario::from_name(text).ok_or_else(|| format!("unknown scenario (known: {})", Scenario::NAMES))
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("must be on or off".into()),
    }
}

fn parse_mix(text: &str) -> Result<Mix, String> {
    Mix::parse(text).map_err(|error| error.to_string())
}

/// A list of CPU numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuList(Vec<usize>);

/// "0-3,6" → [0, 1, 2, 3, 6].
fn parse_cpus(text: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let number = |n: &str| {
            n.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{n}' is not a CPU number"))
        };
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if first > last || last - first >= 4096 {
                    return Err(format!("bad CPU range '{part}'"));
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(number(part)?),
        }
    }
    Ok(CpuList(cpus))
}

fn seconds(value: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("--{name} must be a non-negative number of seconds"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (warmup, duration) = match (seconds(cli.warmup, "warmup"), seconds(cli.duration, "duration")) {
        (Ok(warmup), Ok(duration)) => (warmup, duration),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("shardpay-bench: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.mix.is_some() && cli.scenario != Scenario::Mixed {
        eprintln!("shardpay-bench: --mix applies to --scenario mixed only");
        return ExitCode::from(2);
    }
    if cli.tls_resumption.is_some() && !cli.url.starts_with("https://") {
        eprintln!("shardpay-bench: --tls-resumption applies to https URLs only");
        return ExitCode::from(2);
    }
    let cpus = cli.cpus.map(|list| list.0).unwrap_or_default();
    let mut config = RunConfig::new(&cli.url, cli.scenario);
    config.mix = cli.mix;
    config.connections = cli.connections;
    config.depth = cli.depth;
    config.threads = cli.threads.unwrap_or(cpus.len().max(1));
    config.cpus = cpus;
    config.rate = cli.rate;
    config.warmup = warmup;
    config.duration = duration;
    config.users = cli.users;
    config.shard_aware = cli.shard_aware;
    config.placement_url = cli.placement_url;
    config.cross_shard_ratio = cli.cross_shard_ratio;
    config.admin_key = cli.admin_key;
    config.currency = cli.currency;
    config.deposit = cli.deposit;
    config.payment_amount = cli.payment_amount;
    config.setup_connections = cli.setup_connections;
    config.server_pids = cli.server_pid;
    config.progress = !cli.quiet;
    config.cacert = cli.cacert;
    config.tls_server_name = cli.tls_server_name;
    config.tls_resumption = cli.tls_resumption.unwrap_or(true);
    config.new_connection_per_request = cli.new_connection_per_request;
    config.timeline = cli.timeline;
    config.start_at_unix_ms = cli.start_at_unix_ms;

    let report = match run(&config) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("shardpay-bench: {error}");
            return ExitCode::from(match error {
                shardpay_bench::run::RunError::Config(_) => 2,
                _ => 1,
            });
        }
    };
    print!("{}", report::summary(&report));
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report).expect("a report always serializes");
        if let Err(error) = std::fs::write(path, text + "\n") {
            eprintln!("shardpay-bench: writing {}: {error}", path.display());
            return ExitCode::from(1);
        }
    }
    let errors = report::errors(&report);
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprint!("{errors}");
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["shardpay-bench", "--cpus", "0-1", "--scenario", "mixed"]).unwrap();
        assert_eq!(cli.cpus, Some(CpuList(vec![0, 1])));
        assert_eq!(cli.tls_resumption, None);
        assert!(!cli.new_connection_per_request);
        let cli = Cli::try_parse_from([
            "shardpay-bench",
            "--url",
            "https://127.0.0.1:8443",
            "--cacert",
            "ca.pem",
            "--tls-server-name",
            "localhost",
            "--tls-resumption",
            "off",
            "--new-connection-per-request",
        ])
        .unwrap();
        assert_eq!(cli.cacert, Some(PathBuf::from("ca.pem")));
        assert_eq!(cli.tls_server_name.as_deref(), Some("localhost"));
        assert_eq!(cli.tls_resumption, Some(false));
        assert!(cli.new_connection_per_request);
        assert!(Cli::try_parse_from(["shardpay-bench", "--tls-resumption", "maybe"]).is_err());
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpus("0"), Ok(CpuList(vec![0])));
        assert_eq!(parse_cpus("0-3,6"), Ok(CpuList(vec![0, 1, 2, 3, 6])));
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("a").is_err());
        assert!(parse_cpus("").is_err());
    }
}
