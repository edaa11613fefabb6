//! A serving process from start to stop: plan the shards, and on each one bind its listeners
//! (the public address with SO_REUSEPORT and its shard-aware port), build its API, accept until a
//! shutdown signal, then drain within the deadline. Wiring only: no request handling here.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{Api, ROUTE_NAMES};
use crate::config::Config;
use crate::http::connection::Settings;
use crate::net::{self, Listener};
use crate::shard::{self, Launch, Shard, ShardError};

/// How to start, beyond the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Truncate a log damaged in the middle instead of refusing to start (`--repair`).
    pub repair: bool,
}

/// Recovers the stored state, serves until SIGINT or SIGTERM, then drains and returns.
pub fn serve(config: Config, options: ServeOptions) -> Result<(), ShardError> {
    let config = Arc::new(config);
    let mut launch = Launch::new(config.clone())?;
    match (config.storage.backend, config.storage.durability) {
        (crate::config::StorageBackend::Memory, _) => {
            tracing::warn!("storage.backend is \"memory\": nothing survives a restart")
        }
        (_, crate::config::Durability::None) => tracing::warn!(
            "storage.durability is \"none\": changes are answered before they are on disk, and a \
             crash loses the last ones (for benchmarks only)"
        ),
        _ => {}
    }
    launch.open_storage(options.repair)?;
    // The first SIGINT or SIGTERM starts the drain; a second one while draining exits at once
    // with status 1 (handlers run in registration order, so the check sees the earlier signal).
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let flag = launch.cluster.shutdown_flag();
        signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())
            .and_then(|_| signal_hook::flag::register(signal, flag))
            .map_err(|error| ShardError::Spawn {
                shard: 0,
                message: format!("cannot install the signal handler: {error}"),
            })?;
    }
    let cluster = launch.cluster.clone();
    tracing::info!(
        node = %cluster.node_id,
        shards = cluster.shards,
        cpus = ?cluster.cpus,
        listen = %config.server.listen,
        shard_port_base = config.server.shard_port_base,
        storage = ?config.storage.backend,
        data_dir = %config.storage.data_dir,
        "starting"
    );
    launch.run(ROUTE_NAMES, move |shard| run_shard(shard, config.clone()))?;
    tracing::info!("stopped");
    Ok(())
}

/// One shard's life: listen, serve, drain.
async fn run_shard(shard: Rc<Shard>, config: Arc<Config>) -> Result<(), String> {
    let public = config.listen_addr();
    let own = SocketAddr::new(public.ip(), shard.info.port);
    let backlog = config.server.backlog;
    let public_listener = Listener::bind(public, backlog, true)
        .map_err(|error| format!("cannot listen on {public}: {error}"))?;
    // The shard-aware port is this shard's alone: no SO_REUSEPORT, so a second process fails here.
    let own_listener =
        Listener::bind(own, backlog, false).map_err(|error| format!("cannot listen on {own}: {error}"))?;
    let api = Rc::new(Api::new(shard.clone(), &config));
    let settings = Rc::new(Settings::from_config(&config));
    let write_timeout = Duration::from_millis(config.timeouts.write_timeout_ms);
    for listener in [public_listener, own_listener] {
        shard::spawn(net::accept_loop(
            listener,
            api.clone(),
            shard.connections.clone(),
            settings.clone(),
            shard.metrics.clone(),
            write_timeout,
        ));
    }
    shard.mark_ready();
    tracing::info!(shard = shard.id(), cpu = shard.info.cpu, %public, port = shard.info.port, "shard serving");
    shard.connections.wait_draining().await;
    let open = shard.connections.open();
    tracing::info!(shard = shard.id(), open_connections = open, "draining");
    let deadline = Duration::from_millis(config.server.drain_timeout_ms);
    let drained = futures_lite::future::or(
        async {
            shard.connections.wait_closed().await;
            true
        },
        async {
            shard::sleep(deadline).await;
            false
        },
    )
    .await;
    if !drained {
        tracing::warn!(
            shard = shard.id(),
            open_connections = shard.connections.open(),
            "drain deadline passed; closing the remaining connections"
        );
    }
    Ok(())
}
