//! shardpay: a thread-per-core HTTP API server for user authentication and payments.
//!
//! The request path, top to bottom: [`net`] (accept, read, write) → [`http`] (parse, encode) →
//! [`api`] (routes, JSON) → [`shard`] (the owning shard, the mesh). [`server`] wires them at
//! start-up; [`config`] and [`metrics`] are leaves every layer may use.

pub mod api;
pub mod auth;
pub mod certgen;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod home;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod payments;
pub mod placement;
pub mod ratelimit;
pub mod segmap;
pub mod server;
pub mod shard;
pub mod slots;
pub mod storage;
