//! Operations and benchmark routes: health, readiness, metrics, the cluster map, and the two
//! TechEmpower endpoints. `/metrics` and `/v1/cluster` gather every shard's answer over the mesh.

use serde::Serialize;

use super::error::ApiError;
use crate::metrics;
use crate::shard::{Command, Reply as ShardReply, Shard, SLOT_COUNT};

/// A successful response body.
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// 200 `text/plain`.
    pub fn text(body: &str) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain",
            body: body.as_bytes().to_vec(),
        }
    }

    fn json(value: &impl Serialize) -> Reply {
        Reply {
            status: 200,
            content_type: "application/json",
            body: serde_json::to_vec(value).expect("plain structs serialize"),
        }
    }
}

#[derive(Serialize)]
struct Message {
    message: &'static str,
}

/// `{"message":"Hello, World!"}`, serialized per request as TechEmpower's test type 1 requires.
pub fn write_json_hello(out: &mut Vec<u8>) {
    serde_json::to_writer(
        out,
        &Message {
            message: "Hello, World!",
        },
    )
    .expect("plain structs serialize");
}

/// `GET /readyz`: 200 once every shard is up, 503 while starting or draining.
pub fn readyz(shard: &Shard) -> Result<Reply, ApiError> {
    if shard.connections.draining() {
        return Err(ApiError::unavailable("draining", "The server is shutting down."));
    }
    if !shard.ready() {
        return Err(ApiError::unavailable("starting", "The server is starting."));
    }
    Ok(Reply::text("ok"))
}

/// `GET /metrics`: every shard's counters.
pub async fn metrics(shard: &Shard) -> Result<Reply, ApiError> {
    let replies = shard
        .invoke_on_all(|| Command::Snapshot)
        .await
        .map_err(|error| ApiError::unavailable("shard_unavailable", error.to_string()))?;
    let snapshots: Vec<metrics::Snapshot> = replies
        .into_iter()
        .filter_map(|reply| match reply {
            ShardReply::Snapshot(snapshot) => Some(*snapshot),
            _ => None,
        })
        .collect();
    Ok(Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: metrics::render(&snapshots).into_bytes(),
    })
}

#[derive(Serialize)]
struct ClusterMap<'a> {
    node: &'a str,
    shards: usize,
    slots: u32,
    ranges: Vec<Range>,
}

#[derive(Serialize)]
struct Range {
    shard: usize,
    first_slot: u32,
    last_slot: u32,
    port: u16,
}

/// `GET /v1/cluster`: which shard owns which slots, and its shard-aware port.
pub async fn cluster(shard: &Shard) -> Result<Reply, ApiError> {
    let replies = shard
        .invoke_on_all(|| Command::Describe)
        .await
        .map_err(|error| ApiError::unavailable("shard_unavailable", error.to_string()))?;
    let ranges = replies
        .into_iter()
        .filter_map(|reply| match reply {
            ShardReply::Describe(info) => Some(Range {
                shard: info.shard,
                first_slot: info.first_slot,
                last_slot: info.last_slot,
                port: info.port,
            }),
            _ => None,
        })
        .collect();
    Ok(Reply::json(&ClusterMap {
        node: &shard.cluster.node_id,
        shards: shard.cluster.shards,
        slots: SLOT_COUNT,
        ranges,
    }))
}
