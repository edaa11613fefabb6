#!/usr/bin/env bash
# Reliability checks against the release binary, each bounded in time, with a pass/fail table at
# the end (exit status 1 if any check failed):
#
#   kill9          the kill -9 loop of tests/durability.rs (debug build; payments under load, the server
#                  killed at random moments and restarted; every acknowledged payment must
#                  survive and no money may appear or vanish), RELIABILITY_KILL_CYCLES cycles
#   slowloris      slowhttptest -H: 1000 connections sending their heads a little at a time
#   slow-body      slowhttptest -B: 1000 connections sending their bodies a little at a time
#   slow-read      slowhttptest -X: 1000 connections reading their answers slowly
#
# For each slow-client attack, a fresh server (one shard, on --server-cpu) is attacked from
# 127.0.0.1 while an honest client (curl from 127.0.0.2, so that the attacker's per-address
# connection cap does not apply to it) asks GET /healthz four times a second. A check passes if
# every honest request was answered 200 within 1 s, the server's resident memory grew by less
# than 64 MiB over its idle size, and it still answers afterwards.
#
#   overload       scripts/bench-overload.sh --check: one shard's capacity C, then open-loop load at
#                  0.5 C and 2 C and a recovery run; passes if goodput at 2 C is at least 90% of C,
#                  the p99 of admitted requests at 2 C at most twice that at 0.5 C, and the server is
#                  back to normal within 5 s. These criteria are not met yet (issue 7 is open; see
#                  docs/PERFORMANCE.md, "Overload"): with --short (CI) a failure is reported as
#                  "FAIL (not gating)" and does not fail the run; without --short it does.
#
# Usage: scripts/reliability.sh [--short] [--only LIST] [--server-cpu N] [--client-cpu N] [--no-build]
#   --short     CI's form: 50 kill cycles and 10 s attacks (default: 300 cycles, 30 s attacks)
#   --only      comma-separated checks to run (default: all)
# Needs slowhttptest (Debian package slowhttptest) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

short=0
only="kill9,slowloris,slow-body,slow-read,overload"
server_cpu=0
client_cpu=1
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --short) short=1 ;;
    --only) only="$2"; shift ;;
    --server-cpu) server_cpu="$2"; shift ;;
    --client-cpu) client_cpu="$2"; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$short" = 1 ]; then
  cycles=50; attack_seconds=10
else
  cycles=300; attack_seconds=30
fi
connections=1000

wanted() { [[ ",$only," == *",$1,"* ]]; }

results=()
record() { results+=("$1|$2|$3"); }

work=$(mktemp -d "${TMPDIR:-/tmp}/shardpay-reliability.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -9 "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$build" = 1 ]; then
  # One build of both packages: built apart, every dependency would be compiled twice.
  packages=(-p shardpay)
  if wanted overload; then packages+=(-p shardpay-bench); fi
  cargo build --release "${packages[@]}"
fi
binary=target/release/shardpay

# --- kill -9 loop -------------------------------------------------------------------------------
if wanted kill9; then
  echo "== kill9: $cycles kill -9 cycles (tests/durability.rs kill_9_loop_loses_no_acknowledged_payment)"
  seed=$(( (RANDOM << 15) | RANDOM ))
  started=$(date +%s)
  if RELIABILITY_KILL_CYCLES=$cycles RELIABILITY_SEED=$seed timeout 900 \
      cargo test --workspace --test durability kill_9_loop_loses_no_acknowledged_payment -- --exact \
      >"$work/kill9.log" 2>&1; then
    record kill9 PASS "$cycles cycles, seed $seed, $(( $(date +%s) - started )) s"
  else
    tail -40 "$work/kill9.log"
    record kill9 FAIL "seed $seed (rerun with RELIABILITY_SEED=$seed); see the output above"
  fi
fi

# --- slow clients -------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() {
  local port=$1 base=$2
  if ! port_free "$port" || ! port_free "$base"; then
    echo "port $port or $base is in use" >&2
    exit 1
  fi
  rm -rf "$work/data"
  taskset -c "$server_cpu" env SHARDPAY_STORAGE_DATA_DIR="$work/data" \
    "$binary" serve --config config/default.toml --shards 1 --cpus "$server_cpu" \
    --listen "127.0.0.1:$port" --shard-port-base "$base" >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 200); do
    if curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.05
  done
  cat "$work/server.log" >&2
  echo "the server did not become ready" >&2
  exit 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null || echo 0; }

# attack NAME PORT SLOWHTTPTEST-ARGS...: runs one attack on a server listening on PORT (and
# PORT+10 for its shard port), with the honest probe beside it.
attack() {
  local name=$1 port=$2; shift 2
  local base=$((port + 10))
  echo "== $name: slowhttptest $* -c $connections -l $attack_seconds"
  start_server "$port" "$base"
  local idle_rss; idle_rss=$(rss_kib)
  taskset -c "$client_cpu" timeout $((attack_seconds + 30)) slowhttptest "$@" \
    -c "$connections" -r 500 -l "$attack_seconds" -p 3 >"$work/$name.slowhttptest.log" 2>&1 &
  local attacker=$!
  local probes=0 failures=0 slowest=0 peak_rss=$idle_rss
  local until=$(( $(date +%s) + attack_seconds ))
  while [ "$(date +%s)" -lt "$until" ]; do
    local answer code seconds
    answer=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --interface 127.0.0.2 \
      --max-time 2 "http://127.0.0.1:$port/healthz" || true)
    code=${answer%% *}; seconds=${answer##* }
    probes=$((probes + 1))
    if [ "$code" != 200 ] || awk -v s="$seconds" 'BEGIN { exit !(s > 1.0) }'; then
      failures=$((failures + 1))
    fi
    slowest=$(awk -v a="$slowest" -v b="${seconds:-0}" 'BEGIN { print (b > a) ? b : a }')
    local rss; rss=$(rss_kib)
    [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
    sleep 0.25
  done
  wait "$attacker" 2>/dev/null || true
  local after; after=$(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.2 --max-time 2 \
    "http://127.0.0.1:$port/healthz" || true)
  local growth=$(( (peak_rss - idle_rss) / 1024 ))
  local detail="probes $probes, failed $failures, slowest ${slowest} s, RSS ${idle_rss} KiB idle, +${growth} MiB at peak, after: $after"
  if [ "$failures" = 0 ] && [ "$growth" -lt 64 ] && [ "$after" = 200 ]; then
    record "$name" PASS "$detail"
  else
    grep -E "connected|closed|error|service available" "$work/$name.slowhttptest.log" | tail -6 || true
    record "$name" FAIL "$detail"
  fi
  stop_server
}

if wanted slowloris || wanted slow-body || wanted slow-read; then
  if ! command -v slowhttptest >/dev/null; then
    echo "slowhttptest is not installed (apt-get install -y slowhttptest)" >&2
    for check in slowloris slow-body slow-read; do
      wanted "$check" && record "$check" FAIL "slowhttptest is not installed"
    done
  else
    if wanted slowloris; then
      attack slowloris 18480 -H -i 5 -u "http://127.0.0.1:18480/healthz"
    fi
    if wanted slow-body; then
      attack slow-body 18481 -B -i 5 -s 100000 -t POST -u "http://127.0.0.1:18481/v1/users"
    fi
    if wanted slow-read; then
      attack slow-read 18482 -X -w 10 -y 20 -n 5 -z 32 -k 3 -u "http://127.0.0.1:18482/metrics"
    fi
  fi
fi

# --- overload -----------------------------------------------------------------------------------
if wanted overload; then
  echo "== overload: scripts/bench-overload.sh --check (about 70 s)"
  if timeout 600 scripts/bench-overload.sh --check --no-build \
      --server-cpu "$server_cpu" --client-cpu "$client_cpu" >"$work/overload.log" 2>&1; then
    record overload PASS "$(sed -n 's/^overload PASS //p' "$work/overload.log")"
  else
    tail -20 "$work/overload.log"
    verdict=$(sed -n 's/^overload FAIL //p' "$work/overload.log")
    [ -n "$verdict" ] || verdict="the script failed; see the output above"
    if [ "$short" = 1 ] && [ -n "$(sed -n 's/^overload FAIL //p' "$work/overload.log")" ]; then
      record overload "FAIL (not gating)" "$verdict; issue 7 is open, --short reports it without failing"
    else
      record overload FAIL "$verdict"
    fi
  fi
fi

echo
echo "| check | result | details |"
echo "|---|---|---|"
status=0
for row in "${results[@]}"; do
  IFS='|' read -r check result detail <<<"$row"
  echo "| $check | $result | $detail |"
  [ "$result" = FAIL ] && status=1
done
exit "$status"
