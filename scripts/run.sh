#!/usr/bin/env bash
# Builds shardpay in release mode and serves on the embedded default configuration
# (config/default.toml: http://127.0.0.1:8080, one shard per CPU, shard ports from 7100).
# Extra arguments go to `shardpay serve`, e.g.  scripts/run.sh --shards 1 --cpus 1
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin shardpay
exec target/release/shardpay serve --config config/default.toml "$@"
