//! `shardpay-bench-chart`: draws the PNG charts of a `scripts/bench.sh` summary. Reads
//! `bench/results/<date>-<name>.json` and writes `<base>-throughput.png` and `<base>-latency.png`
//! (base: the summary's path without `.json`, unless `--output-base` says otherwise).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shardpay_bench::chart;

/// Draws requests/s vs shards (peak) and p99 latency vs offered rate (open loop) from a bench.sh
/// summary, as PNG files next to it.
#[derive(Debug, Parser)]
#[command(name = "shardpay-bench-chart", version)]
struct Cli {
    /// The summary JSON written by scripts/bench.sh (bench/results/<date>-<name>.json).
    summary: PathBuf,
    /// Write <BASE>-throughput.png and <BASE>-latency.png (default: the summary's path without .json).
    #[arg(long)]
    output_base: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let base = cli.output_base.unwrap_or_else(|| cli.summary.with_extension(""));
    let written = chart::read_summary(&cli.summary).and_then(|summary| chart::render(&summary, &base));
    match written {
        Ok(paths) => {
            for path in paths {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("shardpay-bench-chart: {error}");
            ExitCode::FAILURE
        }
    }
}
