#!/usr/bin/env bash
# What it costs to carry a request out on another shardpay node (docs/DEPLOYMENT.md, "Several
# nodes"): two nodes on one ScyllaDB keyspace, alpha serving slots 0-8191 and beta 8192-16383,
# one shard each, both pinned to --server-cpu; shardpay-bench on --client-cpu. Per scenario, side
# by side in each round:
#
#   local      requests to alpha for users of alpha's slots: served where they arrive
#   forwarded  requests to beta for users of alpha's slots (--placement-url): every command the
#              request needs is carried to alpha over the cluster connection and answered back
#
# Server CPU is both nodes' (their /proc stat summed over the measured window) per request.
# Durability is the database's (the nodes answer after Cassandra acknowledged); closed loop,
# --connections connections, --users users.
#
# Needs a Cassandra node: CASSANDRA_NODE=host:port, else scripts/cassandra.sh starts one (and this
# script stops it at the end).
#
# Usage: scripts/bench-cluster.sh [--rounds N] [--duration S] [--scenarios balance,payments]
#                                 [--connections C] [--users U] [--server-cpu N] [--client-cpu N]
#                                 [--no-build]
# Results: bench/results/<date>-cluster.md and the raw reports in bench/results/<date>-cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
duration=10
scenarios=balance,payments
connections=32
users=64
server_cpu=1
client_cpu=0
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
[ "$server_cpu" != "$client_cpu" ] || { echo "--server-cpu and --client-cpu must differ" >&2; exit 2; }

if [ "$build" = 1 ]; then
  cargo build --release --bin shardpay
  cargo build --release -p shardpay-bench
fi
server=target/release/shardpay
client=target/release/shardpay-bench
date=$(date +%Y-%m-%d)
out=bench/results/$date-cluster
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/shardpay-bench-cluster.XXXXXX")
pids=()
started_cassandra=0
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$started_cassandra" = 1 ]; then scripts/cassandra.sh stop >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${CASSANDRA_NODE:-}" ]; then
  if ! scripts/cassandra.sh status >/dev/null 2>&1; then
    scripts/cassandra.sh start
    started_cassandra=1
  fi
  CASSANDRA_NODE="127.0.0.1:${CASSANDRA_PORT:-9042}"
fi
keyspace="bench_cluster_$(date +%s)"
SHARDPAY_SCYLLA_NODES=$CASSANDRA_NODE SHARDPAY_SCYLLA_KEYSPACE=$keyspace "$server" db migrate >/dev/null

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=(18300 18301 18310 18311 18320 18321)
for port in "${ports[@]}"; do
  port_free "$port" || { echo "port $port is in use" >&2; exit 1; }
done
secret="bench-cluster-secret-0123456789abcdef"

start_node() { # start_node NAME SLOTS PEERS PUBLIC SHARD_PORT LINK
  local name=$1
  SHARDPAY_STORAGE_BACKEND=scylla SHARDPAY_SCYLLA_NODES=$CASSANDRA_NODE SHARDPAY_SCYLLA_KEYSPACE=$keyspace \
  SHARDPAY_SERVER_NODE_ID=$name SHARDPAY_CLUSTER_SLOTS=$2 SHARDPAY_CLUSTER_PEERS=$3 \
  SHARDPAY_CLUSTER_LISTEN="127.0.0.1:$6" SHARDPAY_CLUSTER_SECRET=$secret \
    taskset -c "$server_cpu" "$server" serve --config config/bench.toml --shards 1 --cpus "$server_cpu" \
    --listen "127.0.0.1:$4" --shard-port-base "$5" >"$out/$name.server.log" 2>&1 &
  pids+=($!)
}
start_node alpha 0-8191 8192-16383=127.0.0.1:18321 18300 18310 18320
alpha_pid=${pids[-1]}
start_node beta 8192-16383 0-8191=127.0.0.1:18320 18301 18311 18321
beta_pid=${pids[-1]}
for port in 18300 18301; do
  for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { echo "node on $port not ready" >&2; exit 1; }
done

IFS=, read -r -a scenario_list <<<"$scenarios"
for round in $(seq "$rounds"); do
  for scenario in "${scenario_list[@]}"; do
    for mode in local forwarded; do
      echo ">> round $round: $scenario $mode" >&2
      url=http://127.0.0.1:18300
      extra=()
      if [ "$mode" = forwarded ]; then
        url=http://127.0.0.1:18301
        extra=(--placement-url http://127.0.0.1:18300)
      fi
      taskset -c "$client_cpu" "$client" --url "$url" "${extra[@]}" --cpus "$client_cpu" \
        --scenario "$scenario" -c "$connections" --users "$users" --warmup 2 -D "$duration" -q \
        --server-pid "$alpha_pid,$beta_pid" --json "$out/$round-$scenario-$mode.json" \
        >"$out/$round-$scenario-$mode.txt" 2>&1
    done
  done
done

python3 - "$out" "$rounds" "$scenarios" "$duration" "$connections" "$users" "$date" <<'PY'
import json, statistics, sys
out, rounds, scenarios, duration, connections, users, date = sys.argv[1:8]
rounds = int(rounds)
rows, summary = [], []
for scenario in scenarios.split(","):
    medians = {}
    for mode in ("local", "forwarded"):
        rates, p99s, cpus = [], [], []
        for r in range(1, rounds + 1):
            d = json.load(open(f"{out}/{r}-{scenario}-{mode}.json"))
            rate, p99 = d["requests_per_second"], d["latency_us"]["p99"]
            cpu = d["server_cpu"]["cpu_us_per_request"] if d.get("server_cpu") else None
            rates.append(rate); p99s.append(p99); cpus.append(cpu or 0.0)
            rows.append(f"| {r} | {scenario} | {mode} | {rate:,.0f} | {d['latency_us']['p50']:.0f} | {p99:.0f} | "
                        f"{(cpu or 0):.1f} | {d['errors'] + d['failed']} |")
        medians[mode] = (statistics.median(rates), statistics.median(p99s), statistics.median(cpus))
    (lr, lp, lc), (fr, fp, fc) = medians["local"], medians["forwarded"]
    summary.append(f"| {scenario} | {lr:,.0f} | {lp:.0f} | {lc:.1f} | {fr:,.0f} | {fp:.0f} | {fc:.1f} | "
                   f"{fc - lc:+.1f} | {fr / lr:.2f} |")
md = [f"# Requests carried out on another node, {date}", "",
      f"Command: `scripts/bench-cluster.sh --rounds {rounds} --duration {duration} --scenarios {scenarios} "
      f"--connections {connections} --users {users}`", "",
      "Two nodes (alpha: slots 0-8191, beta: 8192-16383), one shard each, both on the server CPU, one "
      "Cassandra node; `local` sends alpha's users' requests to alpha, `forwarded` sends them to beta, "
      "which carries every command to alpha. Server CPU-µs per request are both nodes' together.", "",
      "Medians over the rounds:", "",
      "| scenario | local req/s | local p99 µs | local CPU-µs/req | forwarded req/s | forwarded p99 µs | "
      "forwarded CPU-µs/req | CPU cost of the hop | forwarded ÷ local req/s |",
      "|---|--:|--:|--:|--:|--:|--:|--:|--:|", *summary, "",
      "Every run:", "",
      "| round | scenario | run | req/s | p50 µs | p99 µs | server CPU-µs/req | errors |",
      "|--:|---|---|--:|--:|--:|--:|--:|", *rows]
open(f"{out}.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
