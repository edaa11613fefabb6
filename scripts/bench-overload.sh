#!/usr/bin/env bash
# The overload curve: one shardpay shard under open-loop load from half to three
# times its capacity, admission control on (target `shardpay`, defaults) and
# off (target `shardpay-noshed`, SHARDPAY_OVERLOAD_ENABLED=false), side by
# side, then a recovery run.
#
#   1. capacity C: a closed-loop run of shardpay-noshed (-c CONNECTIONS
#      -d DEPTH); its correct answers per second are C
#   2. for each factor F of --factors and each target: open loop at F*C
#      (--rate), same -c/-d, --users 64: goodput (ok/s), shed/s, ok p50/p99,
#      shed p99, server CPU-µs per answer (ok + shed), server cores busy, the
#      client's send lag p99 and the rate it actually wrote (sent/s)
#   3. recovery (shardpay only): one server, a probe client at 0.25*C (-c 16
#      -d 16, --timeline) for 25 s and, 5 s after the probe's load began, an
#      overload client at 2*C for 10 s; both sign up their own users first and
#      start their load at a common --start-at-unix-ms. Baseline: the median
#      per-second ok p99 of the probe between its warm-up and the overload;
#      recovery: seconds from the overload's end (placed on the probe's
#      timeline from both reports' load_started_monotonic_ns) to the first
#      second from which every later second has ok p99 <= 2x baseline, no shed
#      and no error
#   4. verdicts (shardpay at 2x): goodput >= 90% of C; ok p99 at 2x <= 2x ok
#      p99 at 0.5x; recovery <= 5 s. A PASS/FAIL table on stdout.
#
# Every server: `taskset -c SERVER_CPU target/release/shardpay serve --config
# config/bench.toml --shards 1 --cpus SERVER_CPU` with
# SHARDPAY_STORAGE_DURABILITY=none (this test is about CPU: fdatasync latency
# on a VM disk swings by two orders of magnitude and would drown it) and a
# fresh `mktemp -d` data directory, one fresh server per run. Client:
# `taskset -c CLIENT_CPU target/release/shardpay-bench --cpus CLIENT_CPU`.
#
# Usage: scripts/bench-overload.sh [options]
#   --scenario S        shardpay-bench scenario (default payments)
#   --factors LIST      space- or comma-separated factors of C (default
#                       "0.5 1 1.5 2 2.5 3"; the verdicts need 0.5 and 2)
#   --duration S        measured seconds per open-loop run (default 10)
#   --warmup S          warm-up seconds per run (default 2)
#   --connections N     -c of the capacity and factor runs (default 64)
#   --depth N           -d of the capacity and factor runs (default 16)
#   --users N           users per factor run (default 64)
#   --target-us N       SHARDPAY_OVERLOAD_QUEUE_DELAY_TARGET_US for the
#                       shardpay target (default: the server's)
#   --server-cpu N      (default 0)     --client-cpu N   (default 1)
#   --port P            the server's port (default 18610); shard port P+1000
#   --name NAME         results bench/results/<date>-overload-<NAME>.* (default:
#                       <date>-overload[-<scenario> unless payments])
#   --check             reliability form: capacity (1+5 s), shardpay only at
#                       0.5x and 2x (1+5 s each), a shortened recovery run; one
#                       line `overload PASS|FAIL ...`, exit 0 on PASS, 1 on
#                       FAIL; about 70 s; results under <date>-overload-check
#   --no-build          do not run cargo build
#   -h, --help          this text
#
# Results: bench/results/<date>-overload[-<name>].md (tables, verdicts, notes),
# .json (every run's report and the derived rows), .png (served vs offered and
# ok p99 vs offered, both targets), and a directory of raw outputs.
# Exit status: 0 all verdicts PASS, 1 a verdict FAILED or a run failed, 2 bad
# command line. Needs: cargo, taskset, curl, python3, timeout, mktemp.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMMAND_LINE="scripts/bench-overload.sh"
for arg in "$@"; do COMMAND_LINE+=" $(printf '%q' "$arg")"; done

SCENARIO=payments
FACTORS="0.5 1 1.5 2 2.5 3"
DURATION=10
WARMUP=2
CONNECTIONS=64
DEPTH=16
USERS=64
TARGET_US=""
SERVER_CPU=0
CLIENT_CPU=1
PORT=18610
NAME=""
CHECK=0
BUILD=1

PROBE_CONNECTIONS=16
PROBE_DEPTH=16
PROBE_USERS=16
PROBE_FACTOR=0.25
OVERLOAD_FACTOR=2
READY_TIMEOUT_S=20
STOP_TIMEOUT_S=5
SETUP_LEAD_S=8        # recovery: both clients' set-ups happen before this; then the load starts
CLIENT_BUDGET_S=60    # client time beyond its load before it is killed
BUILD_TIMEOUT_S=3600

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "bench-overload.sh: $*" >&2; exit 1; }
bad_arg() { echo "bench-overload.sh: $*" >&2; echo "see scripts/bench-overload.sh --help" >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || bad_arg "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --scenario) need_value "$@"; SCENARIO="$2"; shift 2 ;;
        --factors) need_value "$@"; FACTORS="$2"; shift 2 ;;
        --duration) need_value "$@"; DURATION="$2"; shift 2 ;;
        --warmup) need_value "$@"; WARMUP="$2"; shift 2 ;;
        --connections) need_value "$@"; CONNECTIONS="$2"; shift 2 ;;
        --depth) need_value "$@"; DEPTH="$2"; shift 2 ;;
        --users) need_value "$@"; USERS="$2"; shift 2 ;;
        --target-us) need_value "$@"; TARGET_US="$2"; shift 2 ;;
        --server-cpu) need_value "$@"; SERVER_CPU="$2"; shift 2 ;;
        --client-cpu) need_value "$@"; CLIENT_CPU="$2"; shift 2 ;;
        --port) need_value "$@"; PORT="$2"; shift 2 ;;
        --name) need_value "$@"; NAME="$2"; shift 2 ;;
        --check) CHECK=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage 0 ;;
        *) bad_arg "unknown argument: $1" ;;
    esac
done

int_in_range() { [[ "$1" =~ ^(0|[1-9][0-9]{0,8})$ ]] && (($1 >= $2 && $1 <= $3)); }
number_in_range() {
    [[ "$1" =~ ^[0-9]{1,6}(\.[0-9]{1,3})?$ ]] &&
        python3 -c 'import sys; v = float(sys.argv[1]); sys.exit(0 if float(sys.argv[2]) <= v <= float(sys.argv[3]) else 1)' "$1" "$2" "$3"
}
FACTORS="${FACTORS//,/ }"
read -r -a FACTOR_LIST <<<"$FACTORS"
((${#FACTOR_LIST[@]} > 0 && ${#FACTOR_LIST[@]} <= 20)) || bad_arg "--factors needs 1 to 20 factors"
for f in "${FACTOR_LIST[@]}"; do number_in_range "$f" 0.01 20 || bad_arg "--factors: '$f' is not a factor from 0.01 to 20"; done
number_in_range "$DURATION" 1 600 || bad_arg "--duration must be 1 to 600 seconds"
number_in_range "$WARMUP" 0 600 || bad_arg "--warmup must be 0 to 600 seconds"
int_in_range "$CONNECTIONS" 1 10000 || bad_arg "--connections must be 1 to 10000"
int_in_range "$DEPTH" 1 1024 || bad_arg "--depth must be 1 to 1024"
int_in_range "$USERS" 2 100000 || bad_arg "--users must be 2 to 100000"
[[ -z "$TARGET_US" ]] || int_in_range "$TARGET_US" 100 10000000 || bad_arg "--target-us must be 100 to 10000000"
int_in_range "$PORT" 1024 64535 || bad_arg "--port must be 1024 to 64535"
[[ "$SCENARIO" =~ ^[a-z]{1,20}$ ]] || bad_arg "--scenario: bad name"
[[ -z "$NAME" || "$NAME" =~ ^[A-Za-z0-9._-]{1,100}$ ]] || bad_arg "--name: letters, digits, . _ - only"
for cpu in "$SERVER_CPU" "$CLIENT_CPU"; do
    int_in_range "$cpu" 0 4095 && grep -q "^cpu$cpu " /proc/stat || bad_arg "CPU '$cpu' is not online"
done
((SERVER_CPU != CLIENT_CPU)) || bad_arg "--server-cpu and --client-cpu must differ"
SHARD_PORT=$((PORT + 1000))

PROBE_TOTAL_S=25 PROBE_WARMUP_S=2 OVERLOAD_AT_S=5 OVERLOAD_S=10
CAPACITY_DURATION="$DURATION"
if ((CHECK)); then
    FACTOR_LIST=(0.5 2)
    DURATION=5 WARMUP=1 CAPACITY_DURATION=5
    PROBE_TOTAL_S=15 PROBE_WARMUP_S=1 OVERLOAD_AT_S=3 OVERLOAD_S=5
    SETUP_LEAD_S=6
    [[ -n "$NAME" ]] || NAME=check
fi
TARGETS=(shardpay shardpay-noshed)
((CHECK)) && TARGETS=(shardpay)

for tool in cargo taskset curl python3 timeout mktemp; do command -v "$tool" >/dev/null || die "'$tool' not found"; done

# ------------------------------------------------------------ processes --

STARTED_PIDS=()
SERVER_PID=""
DATA_PARENT=""
stop_pid() {
    local pid="$1" i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT_S * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}
forget_pid() {
    local remaining=() p
    for p in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do [[ "$p" == "$1" ]] || remaining+=("$p"); done
    STARTED_PIDS=("${remaining[@]+"${remaining[@]}"}")
}
cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do stop_pid "$pid"; done
    if [[ -n "$DATA_PARENT" ]]; then rm -rf -- "$DATA_PARENT"; fi
}
trap cleanup EXIT
trap 'echo "bench-overload.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench-overload.sh: terminated" >&2; exit 143' TERM

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
for p in "$PORT" "$SHARD_PORT"; do
    port_in_use "$p" && die "port $p is already in use (a stale server?): stop it, or choose another with --port"
done

if ((BUILD)); then
    echo ">> cargo build --release -p shardpay-bench -p shardpay" >&2
    timeout "$BUILD_TIMEOUT_S" cargo build --release -p shardpay-bench -p shardpay >&2 || die "cargo build failed"
fi
for bin in shardpay shardpay-bench shardpay-bench-overload-chart; do
    [[ -x "target/release/$bin" ]] || die "target/release/$bin missing (build it or drop --no-build)"
done

DAY="$(date +%F)"
STEM="overload"
if [[ -n "$NAME" ]]; then STEM+="-$NAME"; elif [[ "$SCENARIO" != payments ]]; then STEM+="-$SCENARIO"; fi
BASE="bench/results/$DAY-$STEM"
RUN_DIR="$BASE"
mkdir -p "$RUN_DIR"
rm -f -- "$BASE.json" "$BASE.md" "$BASE.png" "$RUN_DIR"/*
RUNS_JSONL="$RUN_DIR/runs.jsonl"
: >"$RUNS_JSONL"
REPORTER=(python3 scripts/bench_overload_report.py)
DATA_PARENT="$(mktemp -d "${TMPDIR:-/tmp}/shardpay-overload.XXXXXX")" || die "mktemp -d failed"
START_TIME="$(date -Is)"

# start_server TARGET LOG: a fresh server (fresh data directory), waits until ready.
SERVER_COMMAND=""
start_server() {
    local target="$1" log="$2" data deadline
    port_in_use "$PORT" && die "port $PORT is in use before starting $target"
    data="$(mktemp -d "$DATA_PARENT/data.XXXXXX")"
    local -a cmd=(env SHARDPAY_STORAGE_DURABILITY=none SHARDPAY_STORAGE_DATA_DIR="$data")
    if [[ "$target" == shardpay-noshed ]]; then
        cmd+=(SHARDPAY_OVERLOAD_ENABLED=false)
    else
        cmd+=(SHARDPAY_OVERLOAD_ENABLED=true)
        [[ -z "$TARGET_US" ]] || cmd+=(SHARDPAY_OVERLOAD_QUEUE_DELAY_TARGET_US="$TARGET_US")
    fi
    cmd+=(taskset -c "$SERVER_CPU" target/release/shardpay serve --config config/bench.toml --shards 1
        --cpus "$SERVER_CPU" --listen "127.0.0.1:$PORT" --shard-port-base "$SHARD_PORT")
    SERVER_COMMAND="${cmd[*]}"
    echo "\$ $SERVER_COMMAND" >"$log"
    "${cmd[@]}" >>"$log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
    deadline=$((SECONDS + READY_TIMEOUT_S))
    until curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/readyz" 2>/dev/null; do
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$log" >&2; die "$target exited during start-up (log: $log)"; }
        ((SECONDS < deadline)) || { tail -n 20 "$log" >&2; die "$target not ready after ${READY_TIMEOUT_S}s (log: $log)"; }
        sleep 0.1
    done
}

# stop_server: stops the server; SERVER_DIED=1 if it had exited by itself.
SERVER_DIED=0
stop_server() {
    SERVER_DIED=0
    kill -0 "$SERVER_PID" 2>/dev/null || SERVER_DIED=1
    stop_pid "$SERVER_PID"
    curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && die "port $PORT still answers after stopping the server"
    return 0
}

# client_args OUT_ARRAY RATE CONNECTIONS DEPTH USERS WARMUP DURATION REPORT [extra...]
client_cmd() {
    local -n out="$1"; shift
    local rate="$1" c="$2" d="$3" users="$4" warmup="$5" duration="$6" report="$7"; shift 7
    out=(taskset -c "$CLIENT_CPU" target/release/shardpay-bench --cpus "$CLIENT_CPU"
        --url "http://127.0.0.1:$PORT" --scenario "$SCENARIO" -c "$c" -d "$d" --users "$users"
        --warmup "$warmup" -D "$duration" --server-pid "$SERVER_PID" --json "$report" -q "$@")
    [[ -z "$rate" ]] || out+=(--rate "$rate")
}

limit_for() { python3 -c 'import sys, math; print(math.ceil(sum(map(float, sys.argv[1:]))))' "$@" "$CLIENT_BUDGET_S"; }

# one_run KIND TARGET FACTOR RATE: a fresh server, one client run, recorded.
SEQ=0
one_run() {
    local kind="$1" target="$2" factor="$3" rate="$4" duration="$DURATION"
    SEQ=$((SEQ + 1))
    [[ "$kind" == capacity ]] && duration="$CAPACITY_DURATION"
    local stem="$SEQ-$kind-$target${factor:+-x$factor}"
    local log="$RUN_DIR/$stem.server.log" out="$RUN_DIR/$stem.client.txt" report="$RUN_DIR/$stem.json"
    start_server "$target" "$log"
    local -a client
    client_cmd client "$rate" "$CONNECTIONS" "$DEPTH" "$USERS" "$WARMUP" "$duration" "$report"
    echo ">> [$SEQ] $kind $target${factor:+ x$factor}${rate:+ at $rate req/s}" >&2
    echo "\$ ${client[*]}" >"$out"
    local status=0 note=""
    timeout --kill-after=5 "$(limit_for "$WARMUP" "$duration")" "${client[@]}" >>"$out" 2>&1 || status=$?
    ((status != 2)) || { tail -n 5 "$out" >&2; die "shardpay-bench refused its arguments: $out"; }
    ((status == 0)) || { note="shardpay-bench exited with status $status"; tail -n 6 "$out" | sed 's/^/   | /' >&2; }
    stop_server
    ((SERVER_DIED == 0)) || note="${note:+$note; }the server died during the run (log: $log)"
    "${REPORTER[@]}" record --kind "$kind" --target "$target" --factor "$factor" --rate "$rate" \
        --report "$([[ -f "$report" ]] && echo "$report")" --exit-status "$status" --note "$note" \
        --client-command "${client[*]}" --server-command "$SERVER_COMMAND" --server-died "$SERVER_DIED" \
        >>"$RUNS_JSONL"
    if [[ -f "$report" ]]; then
        python3 - "$report" >&2 <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("server_cpu") or {}
print(f"   ok/s {r['requests_per_second']:.0f}  shed/s {r['shed_per_second']:.0f}  sent/s {r['sent_per_second']:.0f}  "
      f"ok p99 {r['latency_us']['p99']:.0f} µs  server busy {s.get('cores_busy', 0):.2f}  errors {r['errors']}")
EOF
    fi
    LAST_REPORT="$report"
}

# ---------------------------------------------------------------- runs --

echo ">> capacity: closed loop, shardpay-noshed, -c $CONNECTIONS -d $DEPTH, $SCENARIO" >&2
one_run capacity shardpay-noshed "" ""
CAPACITY="$("${REPORTER[@]}" field "$LAST_REPORT" requests_per_second)"
python3 -c 'import sys; sys.exit(0 if float(sys.argv[1] or 0) > 0 else 1)' "$CAPACITY" ||
    die "the capacity run produced no correct answers (see $RUN_DIR)"
echo ">> C = $CAPACITY ok/s" >&2

rate_of() { python3 -c 'import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))' "$1" "$2"; }
for factor in "${FACTOR_LIST[@]}"; do
    for target in "${TARGETS[@]}"; do
        one_run factor "$target" "$factor" "$(rate_of "$CAPACITY" "$factor")"
    done
done

# Recovery: one shardpay server, the probe and the overload client together.
SEQ=$((SEQ + 1))
log="$RUN_DIR/$SEQ-recovery.server.log"
start_server shardpay "$log"
PROBE_RATE="$(rate_of "$CAPACITY" "$PROBE_FACTOR")"
OVERLOAD_RATE="$(rate_of "$CAPACITY" "$OVERLOAD_FACTOR")"
T0_MS=$(($(date +%s%3N) + SETUP_LEAD_S * 1000))
probe_report="$RUN_DIR/$SEQ-recovery-probe.json" probe_out="$RUN_DIR/$SEQ-recovery-probe.client.txt"
over_report="$RUN_DIR/$SEQ-recovery-overload.json" over_out="$RUN_DIR/$SEQ-recovery-overload.client.txt"
client_cmd probe_client "$PROBE_RATE" "$PROBE_CONNECTIONS" "$PROBE_DEPTH" "$PROBE_USERS" "$PROBE_WARMUP_S" \
    "$((PROBE_TOTAL_S - PROBE_WARMUP_S))" "$probe_report" --timeline --start-at-unix-ms "$T0_MS"
client_cmd over_client "$OVERLOAD_RATE" "$CONNECTIONS" "$DEPTH" "$USERS" 0 "$OVERLOAD_S" "$over_report" \
    --start-at-unix-ms "$((T0_MS + OVERLOAD_AT_S * 1000))"
echo ">> [$SEQ] recovery: probe at $PROBE_RATE req/s for ${PROBE_TOTAL_S}s, overload at $OVERLOAD_RATE req/s" \
    "for ${OVERLOAD_S}s from ${OVERLOAD_AT_S}s (both start at a common time after their set-ups)" >&2
echo "\$ ${probe_client[*]}" >"$probe_out"
echo "\$ ${over_client[*]}" >"$over_out"
timeout --kill-after=5 "$(limit_for "$SETUP_LEAD_S" "$PROBE_TOTAL_S")" "${probe_client[@]}" >>"$probe_out" 2>&1 &
probe_pid=$!
STARTED_PIDS+=("$probe_pid")
timeout --kill-after=5 "$(limit_for "$SETUP_LEAD_S" "$OVERLOAD_AT_S" "$OVERLOAD_S")" "${over_client[@]}" >>"$over_out" 2>&1 &
over_pid=$!
STARTED_PIDS+=("$over_pid")
probe_status=0 over_status=0
wait "$probe_pid" || probe_status=$?
forget_pid "$probe_pid"
wait "$over_pid" || over_status=$?
forget_pid "$over_pid"
stop_server
note=""
((SERVER_DIED == 0)) || note="the server died during the recovery run (log: $log)"
for which in probe overload; do
    if [[ "$which" == probe ]]; then r="$probe_report" s="$probe_status" c="${probe_client[*]}" rate="$PROBE_RATE"
    else r="$over_report" s="$over_status" c="${over_client[*]}" rate="$OVERLOAD_RATE"; fi
    n="$note"
    ((s == 0)) || n="${n:+$n; }shardpay-bench exited with status $s"
    "${REPORTER[@]}" record --kind "$which" --target shardpay --rate "$rate" \
        --report "$([[ -f "$r" ]] && echo "$r")" --exit-status "$s" --note "$n" \
        --client-command "$c" --server-command "$SERVER_COMMAND" --server-died "$SERVER_DIED" >>"$RUNS_JSONL"
done

# -------------------------------------------------------------- report --

CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || true)"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")"
[[ -z "$(git status --porcelain 2>/dev/null | head -n1)" ]] || GIT_REV+=" (dirty)"
META="$RUN_DIR/meta.json"
COMMAND_LINE="$COMMAND_LINE" python3 - "$META" <<EOF
import json, os, sys
json.dump({
    "name": "$STEM", "date": "$DAY", "started": "$START_TIME", "finished": "$(date -Is)",
    "command": os.environ["COMMAND_LINE"],
    "machine": "$(uname -sr), $(nproc) CPUs (${CPU_MODEL:-unknown CPU})", "git": "$GIT_REV",
    "scenario": "$SCENARIO", "factors": "${FACTOR_LIST[*]}", "duration": "$DURATION", "warmup": "$WARMUP",
    "connections": "$CONNECTIONS", "depth": "$DEPTH", "users": "$USERS", "target_us": "$TARGET_US",
    "server_cpu": "$SERVER_CPU", "client_cpu": "$CLIENT_CPU", "check": $CHECK,
    "probe": {"rate_factor": $PROBE_FACTOR, "connections": $PROBE_CONNECTIONS, "depth": $PROBE_DEPTH,
              "users": $PROBE_USERS, "total_s": $PROBE_TOTAL_S, "warmup_s": $PROBE_WARMUP_S},
    "overload": {"rate_factor": $OVERLOAD_FACTOR, "at_s": $OVERLOAD_AT_S, "seconds": $OVERLOAD_S},
    "raw": "$RUN_DIR/", "png": "$BASE.png", "notes": [],
}, open(sys.argv[1], "w"), indent=1)
EOF
VERDICT_STATUS=0
"${REPORTER[@]}" report --runs "$RUNS_JSONL" --meta "$META" --json "$BASE.json" --md "$BASE.md" \
    $( ((CHECK)) && echo --check) || VERDICT_STATUS=$?
((VERDICT_STATUS <= 1)) || die "the report generator failed (runs: $RUNS_JSONL)"
target/release/shardpay-bench-overload-chart "$BASE.json" >/dev/null || die "the chart failed on $BASE.json"
echo "Results: $BASE.md, $BASE.json, $BASE.png; raw outputs in $RUN_DIR/" >&2
FAILED_RUNS="$("${REPORTER[@]}" field "$BASE.json" failed_runs)"
if ((FAILED_RUNS > 0)); then
    echo "bench-overload.sh: $FAILED_RUNS run(s) failed or had errors (see $BASE.md)" >&2
    exit 1
fi
exit "$VERDICT_STATUS"
