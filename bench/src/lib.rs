//! shardpay-bench: an HTTP/1.1 load generator for shardpay's real workload.
//!
//! [`run::run`] does a whole run; the binary (`src/main.rs`) adds the command line, the summary
//! table and `--json`. See docs/PERFORMANCE.md for how to run and read it.

pub mod chart;
pub mod client;
pub mod clock;
pub mod http;
pub mod latency;
pub mod overload_chart;
pub mod procstat;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod setup;
pub mod timeline;
pub mod tls;
pub mod worker;
