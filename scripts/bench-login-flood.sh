#!/usr/bin/env bash
# Payments' latency under a login flood (issue 7, item 3): one shardpay shard pinned to
# --server-cpu, payments open loop at --rate, alone and then with a concurrent closed-loop flood
# of logins (argon2id, default parameters), alternated for --rounds rounds. Each round uses a
# fresh server.
#
# Where the password-hashing threads run (--hashing):
#   same-core  the whole server process is confined to --server-cpu, so hashing shares the
#              shard's core: the worst case, and the default
#   unpinned   the process may use --server-cpu and --client-cpu, the shard stays pinned to
#              --server-cpu and the hashing threads float as they do in production (shardpay
#              does not pin them); on this 2-CPU machine they then share the client's CPU
#
#   payments  shardpay-bench --scenario payments -c 16 -d 4 --rate RATE, 32 users, 2 s warm-up,
#             --duration measured seconds, latency from each request's due time
#   flood     shardpay-bench --scenario mixed --mix login=1 -c 32 (every connection logs in as
#             soon as its last login was answered), 32 users, started at the same moment
#
# Durability is off (SHARDPAY_STORAGE_DURABILITY=none): the question is how the CPU is shared;
# this VM's fdatasync latency swings by two orders of magnitude and would drown it.
# The criterion of the issue: payment p99 with the flood at most 2x without (medians of rounds).
#
# Usage: scripts/bench-login-flood.sh [--rounds N] [--rate R] [--duration S] [--hashing same-core|unpinned]
#                                     [--server-cpu N] [--client-cpu N] [--no-build]
# Results: bench/results/<date>-login-flood[-unpinned].md and the raw reports in the directory of
# the same name.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=4
rate=10000
duration=10
server_cpu=0
client_cpu=1
build=1
hashing=same-core
port=18090
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --server-cpu) server_cpu=$2; shift 2 ;;
    --client-cpu) client_cpu=$2; shift 2 ;;
    --hashing) hashing=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
[ "$server_cpu" != "$client_cpu" ] || { echo "--server-cpu and --client-cpu must differ" >&2; exit 2; }
case "$hashing" in
  same-core) process_cpus=$server_cpu; suffix="" ;;
  unpinned) process_cpus="$server_cpu,$client_cpu"; suffix="-unpinned" ;;
  *) echo "--hashing must be same-core or unpinned, not '$hashing'" >&2; exit 2 ;;
esac

if [ "$build" = 1 ]; then
  cargo build --release --bin shardpay
  cargo build --release -p shardpay-bench
fi
server=target/release/shardpay
client=target/release/shardpay-bench
date=$(date +%Y-%m-%d)
out=bench/results/$date-login-flood$suffix
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/shardpay-login-flood.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

run() { # run ROUND flood|alone
  local round=$1 mode=$2 base=$((port + 1000))
  port_free "$port" && port_free "$base" || { echo "port $port or $base is in use" >&2; exit 1; }
  rm -rf "$work/data"
  SHARDPAY_STORAGE_DURABILITY=none SHARDPAY_STORAGE_DATA_DIR="$work/data" taskset -c "$process_cpus" \
    "$server" serve --config config/bench.toml --shards 1 --cpus "$server_cpu" \
    --listen "127.0.0.1:$port" --shard-port-base "$base" >"$out/$round-$mode.server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 200); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  # Both clients sign their users up first, then start together.
  local start=$(( $(date +%s%3N) + 8000 )) flood_pid=""
  if [ "$mode" = flood ]; then
    taskset -c "$client_cpu" "$client" --url "http://127.0.0.1:$port" --cpus "$client_cpu" \
      --scenario mixed --mix login=1 -c 32 --users 32 --warmup 1 -D $((duration + 1)) \
      --start-at-unix-ms "$start" -q --json "$out/$round-$mode.logins.json" \
      >"$out/$round-$mode.logins.txt" 2>&1 &
    flood_pid=$!
  fi
  taskset -c "$client_cpu" "$client" --url "http://127.0.0.1:$port" --cpus "$client_cpu" \
    --scenario payments -c 16 -d 4 --rate "$rate" --users 32 --warmup 2 -D "$duration" \
    --start-at-unix-ms "$start" -q --server-pid "$server_pid" \
    --json "$out/$round-$mode.payments.json" >"$out/$round-$mode.payments.txt" 2>&1
  if [ -n "$flood_pid" ]; then wait "$flood_pid"; fi
  curl -fs "http://127.0.0.1:$port/metrics" | grep '^shardpay_password_checks_total' \
    >"$out/$round-$mode.metrics.txt" || true
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

for round in $(seq "$rounds"); do
  echo ">> round $round: payments alone" >&2
  run "$round" alone
  echo ">> round $round: payments with a login flood" >&2
  run "$round" flood
done

python3 - "$out" "$rounds" "$rate" "$duration" "$date" "$hashing" <<'PY'
import json, statistics, sys
out, rounds, rate, duration, date, hashing = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
rows, p99 = [], {"alone": [], "flood": []}
for r in range(1, rounds + 1):
    for mode in ("alone", "flood"):
        pay = json.load(open(f"{out}/{r}-{mode}.payments.json"))
        lat = pay["latency_us"]
        logins = "—"
        if mode == "flood":
            lg = json.load(open(f"{out}/{r}-{mode}.logins.json"))
            logins = f"{lg['requests_per_second']:.1f}"
        p99[mode].append(lat["p99"])
        rows.append(f"| {r} | {mode} | {pay['requests_per_second']:.0f} | {lat['p50']:.0f} | {lat['p99']:.0f} | "
                    f"{lat['p999']:.0f} | {pay['errors']} | {logins} |")
alone, flood = statistics.median(p99["alone"]), statistics.median(p99["flood"])
ratio = flood / alone
verdict = "PASS" if ratio <= 2 else "FAIL"
md = [f"# Payments under a login flood, {date}", "",
      f"Command: `scripts/bench-login-flood.sh --rounds {rounds} --rate {rate} --duration {duration} --hashing {hashing}`", "",
      ("One shard and its hashing threads on one CPU" if hashing == "same-core" else
       "One shard pinned to one CPU, its hashing threads unpinned (free to run on either CPU)") +
      ", the clients on the other CPU; payments open loop at "
      f"{rate}/s (-c 16 -d 4), the flood 32 connections logging in back to back; durability off.", "",
      "| round | run | payments/s | p50 µs | p99 µs | p99.9 µs | errors | logins/s |",
      "|--:|---|--:|--:|--:|--:|--:|--:|", *rows, "",
      f"Median payment p99: alone {alone:.0f} µs, with the flood {flood:.0f} µs: **{ratio:.2f}x** "
      f"(criterion: at most 2x) — **{verdict}**."]
open(f"{out}.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
