#!/usr/bin/env bash
# Builds shardpay in release mode and serves on the embedded default configuration
# (config/default.toml: http://127.0.0.1:8080, one shard per CPU, shard ports from 7100).
#
#   scripts/run.sh [--tls] [serve arguments...]
#
# --tls: serve HTTPS on the public address and the shard ports with a development certificate
# from `shardpay gen-cert --dir certs` (made on first use; certs/ca.pem is the CA to trust:
# curl --cacert certs/ca.pem https://127.0.0.1:8080/healthz). Reload a new certificate with
# `kill -HUP <pid>`.
# Other arguments go to `shardpay serve`, e.g.  scripts/run.sh --shards 1 --cpus 1
set -euo pipefail
cd "$(dirname "$0")/.."
tls=0
if [ "${1:-}" = "--tls" ]; then
  tls=1
  shift
fi
cargo build --release --bin shardpay
if [ "$tls" = 1 ]; then
  if [ ! -f certs/server.pem ] || [ ! -f certs/server-key.pem ]; then
    target/release/shardpay gen-cert --dir certs
  fi
  export SHARDPAY_TLS_PUBLIC=true SHARDPAY_TLS_SHARD_PORTS=true
  export SHARDPAY_TLS_CERT_PATH="$PWD/certs/server.pem" SHARDPAY_TLS_KEY_PATH="$PWD/certs/server-key.pem"
  echo "TLS on: trust certs/ca.pem, e.g.  curl --cacert certs/ca.pem https://127.0.0.1:8080/healthz" >&2
fi
exec target/release/shardpay serve --config config/default.toml "$@"
