#!/usr/bin/env bash
# What taking a snapshot costs a serving shard: payments at a fixed rate on
# a server with a large state while it snapshots, with each
# storage.snapshot_writer side by side in the same run.
#
# The example recovery-data (bench/recovery/main.rs) writes, once, a
# one-shard data directory holding --users users and --payments payments as
# one snapshot (the real state machines and file formats). Then, --rounds
# times, for each writer in --writers (the order rotated each round):
#   1. copy that directory; start target/release/shardpay serve --shards 1
#      under taskset -c --server-cpu, with SHARDPAY_STORAGE_SNAPSHOT_WRITER
#      set to the writer, SHARDPAY_STORAGE_SNAPSHOT_BYTES to
#      --snapshot-bytes (so that a snapshot starts a few seconds into the
#      load), and config/bench.toml otherwise (durability fsync; limits
#      raised for a load generator);
#      wait for /readyz;
#   2. shardpay-bench --scenario payments, open loop at --rate payments/s
#      (latency measured from each request's due time, so a pause counts
#      for every request due during it), 64 connections, 100 users,
#      --warmup 2 s + --duration s, on --client-cpu, with --timeline and
#      --server-pid;
#   3. read the server's log ("taking a snapshot ... shard_paused_ms=",
#      "snapshot file written ... written_ms="), the CPU time of its reaped
#      children (the snapshot processes: cutime + cstime of
#      /proc/PID/stat) and its peak RSS (VmHWM); stop it (SIGTERM).
# The server and everything it starts (the snapshot process included) stay
# on --server-cpu: no spare core, as on a machine with a shard per core.
#
# Usage: scripts/bench-snapshot.sh [options]
#   --users N            users in the state (default 200000)
#   --payments N         payments in the state (default 1000000)
#   --writers LIST       shard,fork (default)
#   --rounds N           rounds (default 3)
#   --rate R             payments per second (default 5000)
#   --duration S         measured seconds (default 20)
#   --snapshot-bytes B   storage.snapshot_bytes (default 25165824: at the
#                        default rate, one snapshot about 12 s in)
#   --server-cpu N       (default 0)
#   --client-cpu N       (default 1)
#   --name NAME          results name (default snapshot)
#   --no-build           do not run cargo build
#   -h, --help           this text
#
# Results: bench/results/<YYYY-MM-DD>-<NAME>.md (also printed), and
# bench/results/<YYYY-MM-DD>-<NAME>/: each run's JSON report and server log.
# Needs: cargo, taskset, curl, python3, mktemp.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

USERS=200000
PAYMENTS=1000000
WRITERS="shard,fork"
ROUNDS=3
RATE=5000
DURATION=20
SNAPSHOT_BYTES=25165824
SERVER_CPU=0
CLIENT_CPU=1
NAME="snapshot"
BUILD=1

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}
die() {
    echo "bench-snapshot.sh: $*" >&2
    exit 1
}
bad_arg() {
    echo "bench-snapshot.sh: $*" >&2
    echo "bench-snapshot.sh: see scripts/bench-snapshot.sh --help" >&2
    exit 2
}
need_value() {
    [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || bad_arg "$1 needs a value"
}

COMMAND_LINE="scripts/bench-snapshot.sh $*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --users) need_value "$@"; USERS="$2"; shift 2 ;;
        --payments) need_value "$@"; PAYMENTS="$2"; shift 2 ;;
        --writers) need_value "$@"; WRITERS="$2"; shift 2 ;;
        --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
        --rate) need_value "$@"; RATE="$2"; shift 2 ;;
        --duration) need_value "$@"; DURATION="$2"; shift 2 ;;
        --snapshot-bytes) need_value "$@"; SNAPSHOT_BYTES="$2"; shift 2 ;;
        --server-cpu) need_value "$@"; SERVER_CPU="$2"; shift 2 ;;
        --client-cpu) need_value "$@"; CLIENT_CPU="$2"; shift 2 ;;
        --name) need_value "$@"; NAME="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage 0 ;;
        *) bad_arg "unknown argument: $1" ;;
    esac
done

# int_in_range VALUE MIN MAX
int_in_range() { [[ "$1" =~ ^(0|[1-9][0-9]{0,10})$ ]] && (($1 >= $2 && $1 <= $3)); }
int_in_range "$USERS" 2 99999999 || bad_arg "--users must be an integer from 2 to 99999999"
int_in_range "$PAYMENTS" 0 9999999999 || bad_arg "--payments must be a whole number"
int_in_range "$ROUNDS" 1 100 || bad_arg "--rounds must be an integer from 1 to 100"
int_in_range "$RATE" 1 10000000 || bad_arg "--rate must be an integer from 1 to 10000000"
int_in_range "$DURATION" 1 3600 || bad_arg "--duration must be an integer from 1 to 3600"
int_in_range "$SNAPSHOT_BYTES" 1048576 99999999999 || bad_arg "--snapshot-bytes must be at least 1048576"
int_in_range "$SERVER_CPU" 0 4095 || bad_arg "--server-cpu must be a CPU number"
int_in_range "$CLIENT_CPU" 0 4095 || bad_arg "--client-cpu must be a CPU number"
((SERVER_CPU != CLIENT_CPU)) || bad_arg "--server-cpu and --client-cpu must differ"
for cpu in "$SERVER_CPU" "$CLIENT_CPU"; do
    taskset -c "$cpu" true 2>/dev/null || bad_arg "CPU $cpu is not online here"
done
[[ "$NAME" =~ ^[A-Za-z0-9._-]{1,100}$ && "$NAME" != .* ]] ||
    bad_arg "--name may only contain letters, digits, '.', '_' and '-'"
IFS=',' read -r -a WRITER_LIST <<<"$WRITERS"
for w in "${WRITER_LIST[@]}"; do
    case "$w" in shard|fork) ;; *) bad_arg "--writers: unknown writer '$w' (shard, fork)" ;; esac
done
for tool in cargo taskset curl python3 mktemp; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done

if ((BUILD)); then
    echo ">> cargo build --release -p shardpay -p shardpay-bench --bin shardpay --bin shardpay-bench --example recovery-data" >&2
    cargo build --release -p shardpay -p shardpay-bench --bin shardpay --bin shardpay-bench --example recovery-data >&2 ||
        die "cargo build failed"
fi
SERVER_BIN=target/release/shardpay
BENCH_BIN=target/release/shardpay-bench
GENERATOR_BIN=target/release/examples/recovery-data
for bin in "$SERVER_BIN" "$BENCH_BIN" "$GENERATOR_BIN"; do
    [[ -x "$bin" ]] || die "$bin missing (build it, or drop --no-build)"
done

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
trap 'echo "bench-snapshot.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench-snapshot.sh: terminated" >&2; exit 143' TERM

free_ports() {
    python3 - <<'EOF'
import random, socket, sys
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
for _ in range(1000):
    base = random.randrange(20000, 32000)
    if free(base) and free(base + 1):
        print(base, base + 1)
        sys.exit(0)
sys.exit("no free ports")
EOF
}

DAY="$(date +%F)"
BASE="bench/results/$DAY-$NAME"
mkdir -p "$BASE"
RUNS="$BASE/runs.tsv"
printf 'writer\tround\tjson\tpaused_ms\twritten_ms\tsnapshots\tchild_cpu_ms\thwm_kib\tready_rss_kib\n' >"$RUNS"
DATA_PARENT="$(mktemp -d "${TMPDIR:-/tmp}/shardpay-snapshot.XXXXXX")" ||
    die "could not make a temporary directory in ${TMPDIR:-/tmp}"

PRISTINE="$DATA_PARENT/pristine"
echo ">> $GENERATOR_BIN --data-dir $PRISTINE --shards 1 --users $USERS --payments $PAYMENTS --snapshot" >&2
"$GENERATOR_BIN" --data-dir "$PRISTINE" --shards 1 --users "$USERS" --payments "$PAYMENTS" --seed 1 --snapshot \
    >"$BASE/generator.txt" || die "recovery-data failed (output: $BASE/generator.txt)"
STATE_BYTES="$(find "$PRISTINE" -name 'snapshot-*.snap' -printf '%s\n' | head -1)"
TICKS="$(getconf CLK_TCK)"

# one_run WRITER ROUND
one_run() {
    local writer="$1" round="$2"
    local dir="$DATA_PARENT/run" log="$BASE/$writer-$round.server.log" json="$BASE/$writer-$round.json"
    rm -rf -- "$dir"
    cp -a -- "$PRISTINE" "$dir"
    local public shard_base
    read -r public shard_base <<<"$(free_ports)"
    if pgrep -f "shardpay serve|shardpay-bench" >/dev/null; then
        echo "bench-snapshot.sh: another shardpay server or shardpay-bench is running; stop it first" >&2
        exit 1
    fi
    local cmd=(env SHARDPAY_STORAGE_DATA_DIR="$dir" SHARDPAY_STORAGE_SNAPSHOT_WRITER="$writer"
        SHARDPAY_STORAGE_SNAPSHOT_BYTES="$SNAPSHOT_BYTES" SHARDPAY_LOG_LEVEL=info RUST_LOG=info
        taskset -c "$SERVER_CPU" "$SERVER_BIN" serve --config config/bench.toml --shards 1 --cpus "$SERVER_CPU"
        --listen "127.0.0.1:$public" --shard-port-base "$shard_base")
    echo "\$ ${cmd[*]}" >"$log"
    "${cmd[@]}" >>"$log" 2>&1 &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 3000; i++)); do
        [[ "$(taskset -c "$CLIENT_CPU" curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$public/readyz" 2>/dev/null)" == 200 ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited (log: $log)"
        sleep 0.1
    done
    local ready_rss
    ready_rss="$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$SERVER_PID/status")"
    local bench=("$BENCH_BIN" --url "http://127.0.0.1:$public" --scenario payments --rate "$RATE"
        --connections 64 --users 100 --warmup 2 --duration "$DURATION" --cpus "$CLIENT_CPU"
        --server-pid "$SERVER_PID" --timeline --json "$json" --quiet)
    echo ">> $writer, round $round: ${bench[*]}" >&2
    "${bench[@]}" >"$BASE/$writer-$round.bench.txt" 2>&1 || die "shardpay-bench failed ($BASE/$writer-$round.bench.txt)"
    # Let a snapshot that is still being written finish, so that its child's CPU time counts.
    for ((i = 0; i < 600; i++)); do
        local taken written
        taken="$(grep -c 'taking a snapshot' "$log" || true)"
        written="$(grep -c 'snapshot file written' "$log" || true)"
        ((written >= taken)) && break
        sleep 0.1
    done
    local stat child_cpu_ms hwm
    stat="$(cat "/proc/$SERVER_PID/stat")"
    # Fields after the ")" of the command: cutime is field 16, cstime 17 (of the whole line).
    child_cpu_ms="$(python3 -c '
import sys
rest = sys.argv[1].rsplit(")", 1)[1].split()
print(round((int(rest[13]) + int(rest[14])) * 1000 / int(sys.argv[2])))' "$stat" "$TICKS")"
    hwm="$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$SERVER_PID/status")"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    local paused written_ms snapshots
    paused="$(grep 'taking a snapshot' "$log" | sed -n 's/.*shard_paused_ms=\([0-9.]*\).*/\1/p' | paste -sd, -)"
    written_ms="$(grep 'snapshot file written' "$log" | sed -n 's/.*written_ms=\([0-9]*\).*/\1/p' | paste -sd, -)"
    snapshots="$(grep -c 'snapshot in place' "$log" || true)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$writer" "$round" "$json" "${paused:-}" "${written_ms:-}" \
        "$snapshots" "$child_cpu_ms" "$hwm" "$ready_rss" >>"$RUNS"
    echo ">> $writer, round $round: paused ms $paused, written ms $written_ms, child CPU $child_cpu_ms ms" >&2
}

for ((round = 1; round <= ROUNDS; round++)); do
    n=${#WRITER_LIST[@]}
    for ((k = 0; k < n; k++)); do
        one_run "${WRITER_LIST[$(((k + round - 1) % n))]}" "$round"
    done
done

{
    echo "# Snapshots under load: $USERS users, $PAYMENTS payments in the state"
    echo
    echo "\`$COMMAND_LINE\`, finished $(date -Is)"
    echo
    echo "- machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs online, kernel $(uname -r)"
    echo "- state: one shard, snapshot body $STATE_BYTES bytes; server (and its snapshot processes) on CPU $SERVER_CPU, client on CPU $CLIENT_CPU"
    echo "- load: open loop, $RATE payments/s, 64 connections, 100 users, 2 s warm-up + $DURATION s; storage.snapshot_bytes $SNAPSHOT_BYTES; durability fsync"
    echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo
} >"$BASE.md"
python3 - "$RUNS" >>"$BASE.md" <<'EOF'
import csv, json, statistics, sys
runs = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))

def ms(us):
    return f"{us / 1000:.1f}"

print("| writer | round | ok/s | p50 ms | p99 ms | p99.9 ms | max ms | worst second: ok | server CPU-µs/payment | shard paused, ms | file written after, ms | snapshots | snapshot process CPU, ms | peak RSS, MiB (at ready) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
by_writer = {}
for r in runs:
    report = json.load(open(r["json"]))
    lat = report["latency_us"]
    timeline = report.get("timeline") or []
    # Seconds of the measured window only (the warm-up comes first).
    warm = int(report.get("warmup_s") or 0)
    measured = [s for s in timeline if s["second"] >= warm][:-1] or timeline
    worst = min((s["ok"] for s in measured), default=0)
    cpu = (report.get("server_cpu") or {}).get("cpu_us_per_request")
    by_writer.setdefault(r["writer"], []).append((lat["p99"], lat["max"], worst, cpu))
    print(
        f"| {r['writer']} | {r['round']} | {report['requests_per_second']:.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} "
        f"| {ms(lat['p999'])} | {ms(lat['max'])} | {worst} | {cpu:.1f} | {r['paused_ms'] or '—'} "
        f"| {r['written_ms'] or '—'} | {r['snapshots']} | {r['child_cpu_ms']} "
        f"| {int(r['hwm_kib']) // 1024} ({int(r['ready_rss_kib']) // 1024}) |"
    )
print()
print("Medians per writer:")
print()
print("| writer | p99 ms | max ms | worst second: ok | server CPU-µs/payment |")
print("|---|---:|---:|---:|---:|")
for writer, rows in by_writer.items():
    med = lambda i: statistics.median(row[i] for row in rows)
    print(f"| {writer} | {ms(med(0))} | {ms(med(1))} | {med(2):.0f} | {med(3):.1f} |")
EOF
cat "$BASE.md"
echo ">> results: $BASE.md" >&2
