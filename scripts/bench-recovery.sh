#!/usr/bin/env bash
# Time shardpay's recovery: how long a start takes, until /readyz answers
# 200, with a data directory of --users users and --payments payments.
#
# For each shard count (--shards) and mode (--modes), the example
# recovery-data (bench/recovery/main.rs) writes a data directory as the
# server would have (the real per-shard state machines, the real frame,
# segment and snapshot formats): every user signed up and funded with one
# admin deposit, then payments between random users; the last
# money.idempotency_keys_max (default) payments of each shard claim an
# idempotency key. Modes:
#   log        every frame in the log, no snapshot (the longest recovery)
#   snapshot   each shard's state as one snapshot file, no log
#   tail       a snapshot after all but the last --tail-payments payments,
#              and those in the log
#   server     snapshots where the server's writer takes them (every
#              storage.snapshot_bytes of log, default 256 MiB), the newest
#              kept with the log after it: what a server that ran the
#              workload leaves (recovery = one snapshot + < 256 MiB of log)
# Then, --rounds times: start target/release/shardpay serve --shards N
# under taskset -c --server-cpus, with the default configuration and
# SHARDPAY_STORAGE_DATA_DIR (and RUST_LOG=info); the ready time is the wall
# time from starting it to the first 200 of GET /readyz (polled every 10 ms
# with curl); read each shard's "recovered ... elapsed_ms=" log line and the
# server's VmRSS and VmHWM (/proc/PID/status) once ready; stop it (SIGTERM).
# A start does not change the directory (nothing is written before /readyz,
# and the writer opens a new segment only for a new write), so every round
# recovers the same data.
#
# The data directories are made in a mktemp -d directory in ${TMPDIR:-/tmp}
# and removed when the script exits; set TMPDIR to measure another disk.
# Unless --cold is given, the data was just written and is read from the page
# cache: the figures are recovery's CPU cost, not the disk's.
#
# Usage: scripts/bench-recovery.sh [options]
#   --users N            users (default 1000000)
#   --payments N         payments (default 5000000)
#   --shards LIST        shard counts, e.g. 1,2 (default 1)
#   --modes LIST         log,snapshot,tail,server (default log,snapshot)
#   --tail-payments N    payments in the log in mode tail (default 1000000)
#   --snapshot-bytes B   log bytes between snapshots in mode server (default:
#                        the server's storage.snapshot_bytes)
#   --rounds N           starts per data directory (default 3)
#   --server-cpus LIST   CPUs of the server, e.g. 1 or 0-1 (default 1)
#   --seed S             seed of the generated data (default 1)
#   --check              also check each start: GET /metrics shows
#                        shardpay_log_frames_total 0 on every shard, and each
#                        shard recovered the frames the generator wrote
#                        (a mismatch fails the script)
#   --cold               before each start, sync and drop the page cache
#                        (echo 3 > /proc/sys/vm/drop_caches: needs root, and
#                        slows everything else on the machine for a while)
#   --name NAME          results name (default recovery)
#   --no-build           do not run cargo build
#   -h, --help           this text
#
# Example: scripts/bench-recovery.sh --users 10000 --payments 50000 \
#              --shards 1,2 --rounds 1 --check          a quick check
#
# Results: bench/results/<YYYY-MM-DD>-<NAME>.md (also printed), and
# bench/results/<YYYY-MM-DD>-<NAME>/: the generator's output and the server
# logs. Needs: cargo, taskset, curl, python3, mktemp, du.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

USERS=1000000
PAYMENTS=5000000
SHARDS="1"
MODES="log,snapshot"
TAIL_PAYMENTS=1000000
SNAPSHOT_BYTES=""
ROUNDS=3
SERVER_CPUS="1"
SEED=1
CHECK=0
COLD=0
NAME="recovery"
BUILD=1

READY_TIMEOUT_S=1800 # a start that takes longer is reported as failed
STOP_TIMEOUT_S=30
POLL_S=0.01

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}
die() {
    echo "bench-recovery.sh: $*" >&2
    exit 1
}
bad_arg() {
    echo "bench-recovery.sh: $*" >&2
    echo "bench-recovery.sh: see scripts/bench-recovery.sh --help" >&2
    exit 2
}
need_value() {
    [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || bad_arg "$1 needs a value"
}

COMMAND_LINE="scripts/bench-recovery.sh $*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --users) need_value "$@"; USERS="$2"; shift 2 ;;
        --payments) need_value "$@"; PAYMENTS="$2"; shift 2 ;;
        --shards) need_value "$@"; SHARDS="$2"; shift 2 ;;
        --modes) need_value "$@"; MODES="$2"; shift 2 ;;
        --tail-payments) need_value "$@"; TAIL_PAYMENTS="$2"; shift 2 ;;
        --snapshot-bytes) need_value "$@"; SNAPSHOT_BYTES="$2"; shift 2 ;;
        --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
        --server-cpus) need_value "$@"; SERVER_CPUS="$2"; shift 2 ;;
        --seed) need_value "$@"; SEED="$2"; shift 2 ;;
        --check) CHECK=1; shift ;;
        --cold) COLD=1; shift ;;
        --name) need_value "$@"; NAME="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage 0 ;;
        *) bad_arg "unknown argument: $1" ;;
    esac
done

# int_in_range VALUE MIN MAX
int_in_range() { [[ "$1" =~ ^(0|[1-9][0-9]{0,9})$ ]] && (($1 >= $2 && $1 <= $3)); }
int_in_range "$USERS" 2 99999999 || bad_arg "--users must be an integer from 2 to 99999999"
int_in_range "$PAYMENTS" 0 9999999999 || bad_arg "--payments must be a whole number"
int_in_range "$TAIL_PAYMENTS" 0 "$PAYMENTS" || bad_arg "--tail-payments must be from 0 to --payments ($PAYMENTS)"
int_in_range "$ROUNDS" 1 100 || bad_arg "--rounds must be an integer from 1 to 100"
[[ -z "$SNAPSHOT_BYTES" ]] || int_in_range "$SNAPSHOT_BYTES" 1 9999999999 ||
    bad_arg "--snapshot-bytes must be a number of bytes above 0"
[[ "$SEED" =~ ^[0-9]{1,19}$ ]] || bad_arg "--seed must be a whole number"
[[ "$NAME" =~ ^[A-Za-z0-9._-]{1,100}$ && "$NAME" != .* ]] ||
    bad_arg "--name may only contain letters, digits, '.', '_' and '-'"
IFS=',' read -r -a SHARD_LIST <<<"$SHARDS"
for n in "${SHARD_LIST[@]}"; do
    int_in_range "$n" 1 1024 || bad_arg "--shards: '$n' is not an integer from 1 to 1024"
done
IFS=',' read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
    case "$m" in log|snapshot|tail|server) ;; *) bad_arg "--modes: unknown mode '$m' (log, snapshot, tail, server)" ;; esac
done
[[ "$SERVER_CPUS" =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
    bad_arg "--server-cpus: '$SERVER_CPUS' is not a CPU list (e.g. 1, 0-3 or 0,2)"
taskset -c "$SERVER_CPUS" true 2>/dev/null || bad_arg "--server-cpus $SERVER_CPUS: not CPUs this machine has online"
if ((COLD)); then
    [[ -w /proc/sys/vm/drop_caches ]] || bad_arg "--cold needs to write /proc/sys/vm/drop_caches (root)"
fi
for tool in cargo taskset curl python3 mktemp du; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done
# The polling curl runs on CPUs other than the server's, when there are any.
POLL_CPUS="$(python3 -c '
import os, sys
def expand(text):
    out = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out
rest = sorted(os.sched_getaffinity(0) - expand(sys.argv[1]))
print(",".join(map(str, rest)))' "$SERVER_CPUS")"

NOTES=()
note() {
    echo ">> note: $*" >&2
    NOTES+=("$*")
}

# ---------------------------------------------------------------- build --

if ((BUILD)); then
    echo ">> cargo build --release --bin shardpay --example recovery-data" >&2
    cargo build --release --bin shardpay --example recovery-data >&2 || die "cargo build failed"
fi
SERVER_BIN=target/release/shardpay
GENERATOR_BIN=target/release/examples/recovery-data
for bin in "$SERVER_BIN" "$GENERATOR_BIN"; do
    [[ -x "$bin" ]] || die "$bin missing (build it, or drop --no-build)"
done

# ------------------------------------------------------------ processes --

DATA_PARENT=""
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "$DATA_PARENT" ]]; then rm -rf -- "$DATA_PARENT"; fi
}
trap cleanup EXIT
trap 'echo "bench-recovery.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench-recovery.sh: terminated" >&2; exit 143' TERM

# free_ports N: a public port and N consecutive shard-aware ports, all free
# now ("PUBLIC FIRST_SHARD_PORT").
free_ports() {
    python3 - "$1" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
for _ in range(1000):
    base = random.randrange(20000, 60000 - n)
    if all(free(p) for p in range(base, base + n + 1)):
        print(base, base + 1)
        sys.exit(0)
sys.exit("no free ports")
EOF
}

now_ns() { date +%s%N; }
# fields_of PATTERN NAME...: for each line of stdin matching PATTERN (an awk
# regular expression), the values of its NAME=value fields, in that order.
fields_of() {
    local pattern="$1"
    shift
    awk -v pattern="$pattern" -v names="$*" '
        $0 ~ pattern {
            delete value
            for (i = 1; i <= NF; i++) {
                eq = index($i, "=")
                if (eq) value[substr($i, 1, eq - 1)] = substr($i, eq + 1)
            }
            n = split(names, wanted, " ")
            line = ""
            for (i = 1; i <= n; i++) line = line (i > 1 ? " " : "") value[wanted[i]]
            print line
        }'
}
status_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status" 2>/dev/null; }

# ---------------------------------------------------------------- runs --

DAY="$(date +%F)"
BASE="bench/results/$DAY-$NAME"
mkdir -p "$BASE"
RUNS="$BASE/runs.tsv"
printf 'mode\tshards\tround\tready_ms\trecovery_ms\trss_kib\thwm_kib\n' >"$RUNS"
DATA_PARENT="$(mktemp -d "${TMPDIR:-/tmp}/shardpay-recovery.XXXXXX")" ||
    die "could not make a temporary directory in ${TMPDIR:-/tmp}"
DATA_FS="$(stat -f -c %T -- "$DATA_PARENT" 2>/dev/null || echo unknown)"
GENERATED="$BASE/generated.tsv"
printf 'mode\tshards\tdisk_bytes\tgenerate_s\ttotal_line\n' >"$GENERATED"
FAILED=0

# start_once MODE N DIR ROUND: one start, measured and checked, then stopped.
start_once() {
    local mode="$1" n="$2" dir="$3" round="$4" expected="$5"
    local log="$BASE/$mode-$n-round-$round.server.log" ports public shard_base
    ports="$(free_ports "$n")" || die "no free ports"
    read -r public shard_base <<<"$ports"
    if pgrep -f "shardpay serve|shardpay-bench" >/dev/null; then
        note "another shardpay server or shardpay-bench was running at the start of $mode, $n shard(s), round $round: that start's figures are disturbed"
    fi
    if ((COLD)); then
        sync
        echo 3 >/proc/sys/vm/drop_caches
    fi
    local cmd=(env SHARDPAY_STORAGE_DATA_DIR="$dir" RUST_LOG=info
        taskset -c "$SERVER_CPUS" "$SERVER_BIN" serve --shards "$n" --cpus "$SERVER_CPUS"
        --listen "127.0.0.1:$public" --shard-port-base "$shard_base")
    echo "\$ ${cmd[*]}" >"$log"
    local started ready_ns=""
    started="$(now_ns)"
    "${cmd[@]}" >>"$log" 2>&1 &
    SERVER_PID=$!
    local poll=(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$public/readyz")
    if [[ -n "$POLL_CPUS" ]]; then poll=(taskset -c "$POLL_CPUS" "${poll[@]}"); fi
    while true; do
        if [[ "$("${poll[@]}" 2>/dev/null)" == 200 ]]; then
            ready_ns="$(now_ns)"
            break
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        if (($(now_ns) - started > READY_TIMEOUT_S * 1000000000)); then break; fi
        sleep "$POLL_S"
    done
    if [[ -z "$ready_ns" ]]; then
        tail -n 20 "$log" >&2 || true
        echo "bench-recovery.sh: $mode, $n shard(s): the server was not ready (log: $log)" >&2
        FAILED=1
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
        return
    fi
    local rss hwm ready_ms recovery
    rss="$(status_kib "$SERVER_PID" VmRSS)"
    hwm="$(status_kib "$SERVER_PID" VmHWM)"
    ready_ms=$(((ready_ns - started) / 1000000))
    # "recovered shard=0 ... elapsed_ms=123", in shard order.
    recovery="$(fields_of ' recovered ' shard elapsed_ms <"$log" | sort -n | awk '{ printf "%s%s", sep, $2; sep = "," }')"
    if ((CHECK)); then
        local metrics frames_total
        metrics="$(curl -fsS --max-time 60 "http://127.0.0.1:$public/metrics")" || {
            echo "bench-recovery.sh: GET /metrics failed" >&2
            FAILED=1
        }
        frames_total="$(awk '/^shardpay_log_frames_total/ { s += $NF; n++ } END { if (n) print s; else print "missing" }' <<<"$metrics")"
        if [[ "$frames_total" != 0 ]]; then
            echo "bench-recovery.sh: check: shardpay_log_frames_total after start is $frames_total, not 0" >&2
            FAILED=1
        fi
        # Each shard's "recovered" line against the generator's figures.
        local got
        got="$(fields_of ' recovered ' shard snapshot_seq frames last_seq <"$log" | sort -n)"
        if [[ "$got" != "$expected" ]]; then
            echo "bench-recovery.sh: check: recovered (shard snapshot_seq frames last_seq):" >&2
            echo "$got" >&2
            echo "bench-recovery.sh: check: but the generator wrote:" >&2
            echo "$expected" >&2
            FAILED=1
        else
            echo ">> check: $mode, $n shard(s), round $round: frames_total 0, recovered frames as written" >&2
        fi
    fi
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < STOP_TIMEOUT_S * 10; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    echo ">> $mode, $n shard(s), round $round: ready after $ready_ms ms, recovery ms per shard $recovery, RSS $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB)" >&2
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$n" "$round" "$ready_ms" "$recovery" "$rss" "$hwm" >>"$RUNS"
}

for n in "${SHARD_LIST[@]}"; do
    for mode in "${MODE_LIST[@]}"; do
        dir="$DATA_PARENT/$mode-$n"
        out="$BASE/$mode-$n.generator.txt"
        gen=("$GENERATOR_BIN" --data-dir "$dir" --shards "$n" --users "$USERS" --payments "$PAYMENTS" --seed "$SEED")
        case "$mode" in
            snapshot) gen+=(--snapshot) ;;
            tail) gen+=(--snapshot-then-log $((PAYMENTS - TAIL_PAYMENTS))) ;;
            server) gen+=(--writer-snapshots ${SNAPSHOT_BYTES:+--snapshot-bytes "$SNAPSHOT_BYTES"}) ;;
        esac
        echo ">> ${gen[*]}" >&2
        started="$(now_ns)"
        "${gen[@]}" >"$out" || die "recovery-data failed (output: $out)"
        generate_s="$(python3 -c 'import sys; print(f"{(int(sys.argv[2]) - int(sys.argv[1])) / 1e9:.1f}")' "$started" "$(now_ns)")"
        cat "$out" >&2
        disk_bytes="$(du -s --block-size=1 -- "$dir" | cut -f1)"
        total_line="$(grep '^total ' "$out")"
        printf '%s\t%s\t%s\t%s\t%s\n' "$mode" "$n" "$disk_bytes" "$generate_s" "$total_line" >>"$GENERATED"
        # What each shard must recover: shard, snapshot_seq, frames replayed, last_seq.
        expected="$(fields_of '^shard=' shard snapshot_seq log_frames frames <"$out")"
        keyed_max="$(fields_of '^shard=' keyed_payments <"$out" | sort -n | tail -1)"
        for ((round = 1; round <= ROUNDS; round++)); do
            start_once "$mode" "$n" "$dir" "$round" "$expected"
        done
        rm -rf -- "$dir"
    done
done
if [[ -n "${keyed_max:-}" ]]; then
    note "idempotency keys held per shard after recovery: at most $keyed_max (the default money.idempotency_keys_max is 1000000; only the last 1000000 payments of each shard claimed a key)"
fi
note "deposits keep no admin idempotency key, and no user has a session (nobody logged in): both would add to the state"
if ((COLD)); then
    note "--cold: the page cache was dropped before each start"
else
    note "warm page cache: each directory was just written, so recovery read it from memory (see --cold)"
fi

# ---------------------------------------------------------------- report --

{
    echo "# Recovery time: $USERS users, $PAYMENTS payments"
    echo
    echo "\`$COMMAND_LINE\`, finished $(date -Is)"
    echo
    echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs online, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory, kernel $(uname -r)"
    echo "- data on ${TMPDIR:-/tmp} ($DATA_FS); server on CPUs $SERVER_CPUS, default configuration; $ROUNDS start(s) per data directory; seed $SEED"
    echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo
} >"$BASE.md"
python3 - "$RUNS" "$GENERATED" "$USERS" "$PAYMENTS" >>"$BASE.md" <<'EOF'
import csv, statistics, sys
runs_file, generated_file, users, payments = sys.argv[1:5]

def size(b):
    b = float(b)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{b:.0f} B"
        b /= 1024

def spread(values, fmt="{:.0f}"):
    if not values:
        return "—"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} [{fmt.format(min(values))}–{fmt.format(max(values))}]"

runs = list(csv.DictReader(open(runs_file), delimiter="\t"))
generated = list(csv.DictReader(open(generated_file), delimiter="\t"))
print("| mode | shards | users | payments | on disk (log + snapshot) | frames recovered / written | generated in | ready ms median [min–max] | recovery ms per shard (median) | RSS when ready, MiB | peak RSS, MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for g in generated:
    fields = dict(kv.split("=", 1) for kv in g["total_line"].split()[1:])
    mine = [r for r in runs if r["mode"] == g["mode"] and r["shards"] == g["shards"]]
    ready = [int(r["ready_ms"]) for r in mine]
    per_shard = [list(map(int, r["recovery_ms"].split(","))) for r in mine if r["recovery_ms"]]
    shards = int(g["shards"])
    recovery = ", ".join(
        str(round(statistics.median(p[s] for p in per_shard))) for s in range(shards)
    ) if per_shard and all(len(p) == shards for p in per_shard) else "—"
    rss = spread([int(r["rss_kib"]) / 1024 for r in mine if r["rss_kib"]])
    hwm = spread([int(r["hwm_kib"]) / 1024 for r in mine if r["hwm_kib"]])
    disk = f"{size(g['disk_bytes'])} ({size(fields['log_bytes'])} + {size(fields['snapshot_bytes'])})"
    print(f"| {g['mode']} | {shards} | {users} | {payments} | {disk} | "
          f"{fields['log_frames']} / {fields['frames']} | {g['generate_s']} s | {spread(ready)} | {recovery} | {rss} | {hwm} |")
EOF
{
    echo
    echo "Ready: wall time from starting the process to the first 200 of /readyz (10 ms polling)."
    echo "Recovery: each shard's \"recovered\" log line (elapsed_ms: reading the snapshot and the"
    echo "log and rebuilding the state). Frames recovered: replayed from the log after the snapshot."
    echo "On disk: du (segments are preallocated to storage.segment_bytes, as the server does);"
    echo "in brackets the bytes of frames in the log and the size of the snapshot files."
    if ((${#NOTES[@]})); then
        echo
        echo "Notes:"
        for n in "${NOTES[@]}"; do echo "- $n"; done
    fi
} >>"$BASE.md"
echo >&2
cat "$BASE.md"
echo ">> wrote $BASE.md and $BASE/" >&2
((FAILED == 0)) || die "some starts failed or a check did not pass (see above)"
