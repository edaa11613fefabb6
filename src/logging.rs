//! Logging setup: `tracing` to stderr, as text or JSON lines, filtered by `RUST_LOG` when set,
//! else by `log.level` from the configuration.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// glommio's reactor logs one ERROR per shard when it probes a write-only DMA file for io_uring
/// polling (the probe reads). Log segments are opened write-only on purpose: that probe fails and
/// glommio keeps their I/O on its interrupt-driven ring, where a busy-polled ring would burn the
/// shard's core while every write and fdatasync is in flight (measured: 179 vs 27 CPU-µs per
/// payment). That is the reactor module's only log line, so the module is silenced.
const QUIET_GLOMMIO_REACTOR: &str = "glommio::reactor=off";

/// Installs the global subscriber. Call once, before the shards start.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(QUIET_GLOMMIO_REACTOR.parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true);
    let _ = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
