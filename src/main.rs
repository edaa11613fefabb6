//! The `shardpay` binary: command line parsing and exit codes. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardpay::config::{Config, Overrides};

/// Thread-per-core HTTP API server for user authentication and payments.
#[derive(Debug, Parser)]
#[command(name = "shardpay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Load and validate the configuration, print it as TOML, and exit.
    CheckConfig(ServeArgs),
    /// Make a development certificate authority (once) and a server certificate signed by it,
    /// for tls.cert_path and tls.key_path. Not for production.
    GenCert(GenCertArgs),
    /// Work on the ScyllaDB or Cassandra cluster of [scylla] (see docs/STORAGE.md).
    Db(DbArgs),
}

#[derive(Debug, clap::Args)]
struct DbArgs {
    #[command(subcommand)]
    command: DbSubcommand,
    /// TOML configuration file (see config/default.toml); without it, built-in defaults.
    #[arg(long, value_name = "PATH", global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum DbSubcommand {
    /// Create the keyspace and every missing table; safe to repeat.
    Migrate,
    /// Print the schema version the keyspace records (fails when not migrated).
    Status,
    /// List the slot leases: which node holds which slots, and until when.
    Leases,
}

#[derive(Debug, clap::Args)]
struct GenCertArgs {
    /// Directory for ca.pem, ca-key.pem (reused if present), server.pem and server-key.pem.
    #[arg(long, value_name = "DIR", default_value = "certs")]
    dir: PathBuf,
    /// A DNS name or IP address of the server (repeat for several); the first is the subject.
    #[arg(long = "name", value_name = "NAME", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
    names: Vec<String>,
    /// Days the server certificate is valid (1 to 366).
    #[arg(long, value_name = "N", default_value_t = 90)]
    days: u32,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see config/default.toml); without it, built-in defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Number of shards (0: one per CPU). Overrides server.shards.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// CPUs to pin shards to, e.g. 0-3,6. Overrides server.cpus.
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Public address, IP:PORT. Overrides server.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// First shard-aware port. Overrides server.shard_port_base.
    #[arg(long, value_name = "PORT")]
    shard_port_base: Option<u16>,
    /// When a shard's log is damaged before its last batch, truncate it there (losing every
    /// later change) instead of refusing to start. Use only after saving a copy of data_dir.
    #[arg(long)]
    repair: bool,
}

/// Exit status for an unusable configuration (as for command-line usage errors).
const EXIT_CONFIG: u8 = 2;

fn load(args: &ServeArgs) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        listen: args.listen.clone(),
        shards: args.shards,
        cpus: args.cpus.clone(),
        shard_port_base: args.shard_port_base,
    };
    Config::load(args.config.as_deref(), std::env::vars(), &overrides).map_err(|error| {
        eprintln!("shardpay: {error}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(args) => match load(&args) {
            Ok(config) => {
                match toml::to_string(&config) {
                    Ok(text) => print!("{text}"),
                    Err(error) => eprintln!("shardpay: cannot print the configuration: {error}"),
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::GenCert(args) => match shardpay::certgen::generate(&args.dir, &args.names, args.days) {
            Ok(generated) => {
                let ca = if generated.ca_created { "made" } else { "reused" };
                println!("CA ({ca}):          {}", generated.ca_cert.display());
                println!("server certificate: {}", generated.server_cert.display());
                println!("server key:         {}", generated.server_key.display());
                println!("names:              {}", args.names.join(", "));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("shardpay: gen-cert: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Db(args) => {
            let serve_args = ServeArgs {
                config: args.config.clone(),
                shards: None,
                cpus: None,
                listen: None,
                shard_port_base: None,
                repair: false,
            };
            let config = match load(&serve_args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            use shardpay::storage::scylla::cli::{self, DbCommand};
            let command = match args.command {
                DbSubcommand::Migrate => DbCommand::Migrate,
                DbSubcommand::Status => DbCommand::Status,
                DbSubcommand::Leases => DbCommand::Leases,
            };
            match cli::run(&config.scylla, command, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("shardpay: db: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => {
            let config = match load(&args) {
                Ok(config) => config,
                Err(code) => return code,
            };
            shardpay::logging::init(&config.log);
            let options = shardpay::server::ServeOptions { repair: args.repair };
            match shardpay::server::serve(config, options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(shardpay::shard::ShardError::Config(error)) => {
                    eprintln!("shardpay: {error}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(error) => {
                    tracing::error!(%error, "shardpay failed");
                    eprintln!("shardpay: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
