//! `shardpay-bench-overload-chart`: draws the PNG chart of a `scripts/bench-overload.sh` summary.
//! Reads `bench/results/<date>-overload[-<name>].json` and writes the same path ending `.png`
//! (or `--output`): served vs offered, and the admitted answers' p99 latency vs offered.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use shardpay_bench::overload_chart;

/// Draws served (correct answers/s) and p99 latency against the offered rate, admission control
/// on and off, from a bench-overload.sh summary.
#[derive(Debug, Parser)]
#[command(name = "shardpay-bench-overload-chart", version)]
struct Cli {
    /// The summary JSON written by scripts/bench-overload.sh.
    summary: PathBuf,
    /// The PNG to write (default: the summary's path ending .png).
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = cli
        .output
        .unwrap_or_else(|| overload_chart::output_path(&cli.summary));
    let written = overload_chart::read_summary(&cli.summary)
        .and_then(|summary| overload_chart::render(&summary, &output));
    match written {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("shardpay-bench-overload-chart: {error}");
            ExitCode::FAILURE
        }
    }
}
