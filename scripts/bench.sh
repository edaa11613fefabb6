#!/usr/bin/env bash
# Server-core benchmark: shardpay versus a bare glommio loop and actix-web,
# each on ONE core (CPU 1), driven by wrk pinned to the other core (CPU 0).
#
# For every target and test: a short warm-up run (not counted), then the
# measured wrk run. The server's CPU time (utime + stime from /proc/PID/stat)
# is read right before and right after the measured run, giving server
# CPU-microseconds per request, the main figure of merit (on a 2-core machine
# wrk itself may be the bottleneck, so requests/s alone can hide differences).
#
# Usage: scripts/bench.sh [--duration S] [--targets LIST] [--tests LIST]
#                         [--connections N] [--name NAME] [--no-build]
#   --duration S      seconds per measured run (default 10)
#   --targets LIST    comma list of shardpay,bare-glommio,actix (default all)
#   --tests LIST      comma list of plaintext,json,pipelined (default all)
#   --connections N   wrk connections (default 64)
#   --name NAME       results name (default server-core)
#   --no-build        do not run cargo build
#
# Results: bench/results/<YYYY-MM-DD>-<NAME>.json (summary array),
#          bench/results/<YYYY-MM-DD>-<NAME>.md   (table, also printed),
#          bench/results/<YYYY-MM-DD>-<NAME>/     (raw wrk outputs, server logs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMMAND_LINE="scripts/bench.sh"
for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then
        COMMAND_LINE+=" $arg"
    else
        COMMAND_LINE+=" '${arg//\'/\'\\\'\'}'"
    fi
done

DURATION=10
TARGETS="shardpay,bare-glommio,actix"
TESTS="plaintext,json,pipelined"
CONNECTIONS=64
NAME="server-core"
BUILD=1
WARMUP_S=2
PIPELINE_DEPTH=16
SERVER_CPU=1
WRK_CPU=0
READY_TIMEOUT_S=10
BUILD_TIMEOUT_S=3600

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

die() {
    echo "bench.sh: $*" >&2
    exit 1
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) need_value "$@"; DURATION="$2"; shift 2 ;;
        --duration=*) DURATION="${1#*=}"; shift ;;
        --targets) need_value "$@"; TARGETS="$2"; shift 2 ;;
        --targets=*) TARGETS="${1#*=}"; shift ;;
        --tests) need_value "$@"; TESTS="$2"; shift 2 ;;
        --tests=*) TESTS="${1#*=}"; shift ;;
        --connections) need_value "$@"; CONNECTIONS="$2"; shift 2 ;;
        --connections=*) CONNECTIONS="${1#*=}"; shift ;;
        --name) need_value "$@"; NAME="$2"; shift 2 ;;
        --name=*) NAME="${1#*=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "bench.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done

[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive integer (seconds)"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "--connections must be a positive integer"
[[ "$NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "--name may only contain letters, digits, '.', '_' and '-'"

IFS=',' read -r -a TARGET_LIST <<<"$TARGETS"
IFS=',' read -r -a TEST_LIST <<<"$TESTS"
[[ ${#TARGET_LIST[@]} -gt 0 ]] || die "--targets is empty"
[[ ${#TEST_LIST[@]} -gt 0 ]] || die "--tests is empty"
for t in "${TARGET_LIST[@]}"; do
    case "$t" in shardpay|bare-glommio|actix) ;; *) die "unknown target '$t' (shardpay, bare-glommio, actix)" ;; esac
done
for t in "${TEST_LIST[@]}"; do
    case "$t" in plaintext|json|pipelined) ;; *) die "unknown test '$t' (plaintext, json, pipelined)" ;; esac
done
[[ $(printf '%s\n' "${TARGET_LIST[@]}" | sort | uniq -d) == "" ]] || die "--targets has duplicates"
[[ $(printf '%s\n' "${TEST_LIST[@]}" | sort | uniq -d) == "" ]] || die "--tests has duplicates"

for tool in wrk taskset curl python3 getconf timeout; do
    command -v "$tool" >/dev/null || die "'$tool' not found (wrk: apt-get install -y wrk)"
done
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------- targets --

declare -A PORT=([shardpay]=8080 [bare-glommio]=8081 [actix]=8082)
declare -A READY_PATH=([shardpay]=/readyz [bare-glommio]=/plaintext [actix]=/plaintext)
declare -A PACKAGE=([shardpay]=shardpay [bare-glommio]=peer-bare-glommio [actix]=peer-actix)

# Sets CMD to the command line of a target.
target_command() {
    case "$1" in
        shardpay)
            CMD=(taskset -c "$SERVER_CPU" target/release/shardpay serve
                --config config/bench.toml --shards 1 --cpus "$SERVER_CPU"
                --listen "127.0.0.1:${PORT[shardpay]}") ;;
        bare-glommio)
            CMD=(target/release/peer-bare-glommio --cpu "$SERVER_CPU"
                --listen "127.0.0.1:${PORT[bare-glommio]}") ;;
        actix)
            CMD=(taskset -c "$SERVER_CPU" target/release/peer-actix
                --listen "127.0.0.1:${PORT[actix]}") ;;
    esac
}

# ------------------------------------------------------------ processes --

STARTED_PIDS=()
SERVER_PID=""

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() {
    # A successful TCP connect means something listens there.
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

start_server() {
    local target="$1" log="$2" port="${PORT[$1]}"
    # glommio binds with SO_REUSEPORT: a stale server on the port would share
    # the connections with the new one, so refuse to start instead.
    if port_in_use "$port"; then
        die "port $port is already in use (a stale server?); stop it first"
    fi
    target_command "$target"
    echo ">> starting $target: ${CMD[*]}" >&2
    "${CMD[@]}" >"$log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
    local url="http://127.0.0.1:${port}${READY_PATH[$target]}"
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            die "$target exited during start-up (log: $log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$log" >&2 || true
            die "$target not ready after ${READY_TIMEOUT_S}s at $url (log: $log)"
        fi
        sleep 0.1
    done
}

stop_server() {
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local remaining=() p
    for p in "${STARTED_PIDS[@]}"; do
        [[ "$p" == "$pid" ]] || remaining+=("$p")
    done
    STARTED_PIDS=("${remaining[@]+"${remaining[@]}"}")
}

# "utime stime" of a process (all its threads), in clock ticks.
cpu_ticks() {
    local stat rest
    stat="$(<"/proc/$1/stat")" || die "process $1 is gone"
    rest="${stat##*) }" # comm may contain spaces: cut after the last ')'
    local -a f
    read -r -a f <<<"$rest"
    # f[0] is field 3 (state), so field 14 (utime) is f[11], 15 (stime) f[12].
    echo "${f[11]} ${f[12]}"
}

# Busy time of a whole CPU (every process, kernel threads, irq), clock ticks:
# user + nice + system + irq + softirq from the "cpuN" line of /proc/stat.
# Used to detect other load (e.g. a cargo build) on the server's core.
cpu_core_busy_ticks() {
    awk -v cpu="cpu$1" '$1 == cpu { print $2 + $3 + $4 + $7 + $8; found = 1 }
        END { if (!found) exit 1 }' /proc/stat || die "cpu$1 not in /proc/stat"
}

# bare-glommio prints "responses=N" on stderr on SIGUSR1: returns N.
server_response_count() {
    local pid="$1" log="$2" before after
    before="$(grep -c '^responses=' "$log" || true)"
    kill -USR1 "$pid"
    for _ in $(seq 50); do
        after="$(grep -c '^responses=' "$log" || true)"
        if ((after > before)); then
            grep '^responses=' "$log" | tail -n 1 | cut -d= -f2
            return 0
        fi
        sleep 0.05
    done
    echo ""
}

# run_wrk TARGET TEST SECONDS OUTFILE
run_wrk() {
    local target="$1" test="$2" seconds="$3" out="$4" path
    local url="http://127.0.0.1:${PORT[$target]}"
    local -a script=()
    case "$test" in
        plaintext) path=/plaintext ;;
        json) path=/json ;;
        pipelined) path=/plaintext; script=(-s bench/wrk/pipeline.lua) ;;
    esac
    local -a cmd=(taskset -c "$WRK_CPU" wrk -t1 "-c$CONNECTIONS" "-d${seconds}s" --latency
        "${script[@]+"${script[@]}"}" "$url$path")
    if [[ "$test" == pipelined ]]; then
        cmd+=(-- "$PIPELINE_DEPTH")
    fi
    echo "\$ ${cmd[*]}" >"$out"
    timeout --kill-after=5 $((seconds + 30)) "${cmd[@]}" >>"$out" 2>&1 ||
        die "wrk failed for $target/$test (see $out)"
}

# ---------------------------------------------------------------- build --

if ((BUILD)); then
    build_args=(--workspace)
    if ((${#TARGET_LIST[@]} < 3)); then
        # Only what the selected targets need (all three == the workspace).
        build_args=()
        for t in "${TARGET_LIST[@]}"; do build_args+=(-p "${PACKAGE[$t]}"); done
    fi
    echo ">> cargo build --release ${build_args[*]}" >&2
    timeout "$BUILD_TIMEOUT_S" cargo build --release "${build_args[@]}" >&2
fi
for t in "${TARGET_LIST[@]}"; do
    [[ -x "target/release/${PACKAGE[$t]}" ]] || die "target/release/${PACKAGE[$t]} missing (build it or drop --no-build)"
done

# ---------------------------------------------------------------- runs --

DAY="$(date +%F)"
RESULTS_DIR="bench/results"
BASE="$RESULTS_DIR/$DAY-$NAME"
RAW_DIR="$BASE"
mkdir -p "$RAW_DIR"
RUNS_JSONL="$RAW_DIR/runs.jsonl"
: >"$RUNS_JSONL"

for target in "${TARGET_LIST[@]}"; do
    log="$RAW_DIR/$target.server.log"
    start_server "$target" "$log"
    for test in "${TEST_LIST[@]}"; do
        echo ">> $target / $test: warm-up ${WARMUP_S}s" >&2
        run_wrk "$target" "$test" "$WARMUP_S" "$RAW_DIR/$target-$test.warmup.txt"

        count_before=""
        if [[ "$target" == bare-glommio ]]; then
            count_before="$(server_response_count "$SERVER_PID" "$log")"
        fi

        echo ">> $target / $test: measuring ${DURATION}s" >&2
        out="$RAW_DIR/$target-$test.wrk.txt"
        core_before="$(cpu_core_busy_ticks "$SERVER_CPU")"
        ticks_before="$(cpu_ticks "$SERVER_PID")"
        run_wrk "$target" "$test" "$DURATION" "$out"
        ticks_after="$(cpu_ticks "$SERVER_PID")"
        core_after="$(cpu_core_busy_ticks "$SERVER_CPU")"

        count_after=""
        if [[ "$target" == bare-glommio ]]; then
            count_after="$(server_response_count "$SERVER_PID" "$log")"
        fi

        python3 - "$out" "$target" "$test" "$CONNECTIONS" "$DURATION" \
            "$ticks_before" "$ticks_after" "$CLK_TCK" "$count_before" "$count_after" \
            "$core_before" "$core_after" \
            >>"$RUNS_JSONL" <<'PY'
import json, re, sys

out, target, test, conns, duration, t0, t1, clk, c0, c1, k0, k1 = sys.argv[1:]
(u0, s0), (u1, s1) = ([int(x) for x in t.split()] for t in (t0, t1))
clk = int(clk)
text = open(out).read()

def need(pattern):
    m = re.search(pattern, text, re.M)
    if not m:
        sys.exit(f"bench.sh: cannot find /{pattern}/ in {out}")
    return m

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}

def percentile(p):
    m = need(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    return float(m.group(1)) * UNIT_MS[m.group(2)]

dist = [percentile(p) for p in (50, 75, 90, 99)]
if test == "pipelined" or 0.0 in dist or dist != sorted(dist):
    # wrk records one latency per pipelined batch, and its coordinated-omission
    # correction (stats_correct) uses an interval computed from responses, not
    # batches: it adds samples below the recorded minimum that the percentile
    # walk never reaches, so the distribution is wrong or all zeros
    # (wg/wrk#236). No latency is reported rather than a wrong one.
    p50 = p99 = None
else:
    p50, p99 = round(dist[0], 3), round(dist[3], 3)

requests = int(need(r"^\s*(\d+) requests in ")[1])
rps = float(need(r"^Requests/sec:\s+([\d.]+)")[1])
user_s, sys_s = (u1 - u0) / clk, (s1 - s0) / clk
cpu_s = user_s + sys_s
errors = 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if m:
    errors += sum(int(x) for x in m.groups())
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if m:
    errors += int(m.group(1))
print(json.dumps({
    "target": target,
    "test": test,
    "connections": int(conns),
    "duration_s": int(duration),
    "requests": requests,
    "requests_per_sec": rps,
    "latency_p50_ms": p50,
    "latency_p99_ms": p99,
    "server_cpu_us_per_request": round(cpu_s * 1e6 / requests, 3) if requests else None,
    # Extra fields, only in runs.jsonl (not in the summary):
    "_server_cpu_s": cpu_s,
    "_server_user_us_per_request": round(user_s * 1e6 / requests, 3) if requests else None,
    "_server_sys_us_per_request": round(sys_s * 1e6 / requests, 3) if requests else None,
    "_errors": errors,
    # Busy time of the server's core not spent in the server (other load).
    "_other_cpu_s": max(0.0, (int(k1) - int(k0)) / clk - cpu_s),
    "_server_responses": (int(c1) - int(c0)) if c0 and c1 else None,
}))
PY
    done
    echo ">> stopping $target" >&2
    stop_server "$SERVER_PID"
done

# -------------------------------------------------------------- report --

CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || true)"
WRK_VERSION="$({ wrk -v 2>&1 || true; } | head -n1 | cut -d' ' -f1-2)" # wrk -v exits 1
ENV_LINE="$(uname -sr), $(nproc) CPUs (${CPU_MODEL:-unknown CPU}), ${WRK_VERSION:-wrk}"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")"
if [[ -n "$(git status --porcelain 2>/dev/null | head -n1)" ]]; then GIT_REV+=" (dirty)"; fi

python3 - "$RUNS_JSONL" "$BASE.json" "$BASE.md" "$COMMAND_LINE" "$DAY" "$ENV_LINE" "$GIT_REV" \
    "$SERVER_CPU" "$WRK_CPU" "$PIPELINE_DEPTH" "$WARMUP_S" "$RAW_DIR" <<'PY'
import json, sys

runs_path, json_path, md_path, cmdline, day, env, rev, scpu, wcpu, depth, warm, raw = sys.argv[1:]
runs = [json.loads(l) for l in open(runs_path) if l.strip()]
summary = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
with open(json_path, "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")

def fmt(v, spec, none="n/a"):
    return none if v is None else format(v, spec)

L = []
L.append(f"# Server-core benchmark, {day}")
L.append("")
L.append(f"Command: `{cmdline}`")
L.append("")
L.append(f"Machine: {env}. Git: {rev}.")
L.append(f"Server on CPU {scpu}, `taskset -c {wcpu} wrk -t1` on CPU {wcpu}; "
         f"{warm} s warm-up before each measured run; pipelined = depth {depth}. "
         f"Raw outputs: `{raw}/`.")
L.append("")
L.append("| target | test | conns | duration (s) | requests | requests/s | p50 (ms) | p99 (ms) "
         "| server CPU (µs/req) | user | sys | server CPU busy | other load on CPU " + scpu
         + " | wrk errors |")
L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in runs:
    busy = r["_server_cpu_s"] / r["duration_s"] * 100
    other = r["_other_cpu_s"] / r["duration_s"] * 100
    L.append(f"| {r['target']} | {r['test']} | {r['connections']} | {r['duration_s']} "
             f"| {r['requests']} | {r['requests_per_sec']:.0f} "
             f"| {fmt(r['latency_p50_ms'], '.3f', 'n/a¹')} | {fmt(r['latency_p99_ms'], '.3f', 'n/a¹')} "
             f"| {fmt(r['server_cpu_us_per_request'], '.3f')} "
             f"| {fmt(r['_server_user_us_per_request'], '.3f')} "
             f"| {fmt(r['_server_sys_us_per_request'], '.3f')} "
             f"| {busy:.0f}% | {other:.0f}% | {r['_errors']} |")
L.append("")
L.append("Server CPU = utime + stime of the server process (all threads) over the measured "
         "run, from /proc/PID/stat, split into user and sys (kernel: syscalls and, on "
         "loopback, much of the TCP work of both ends); \"server CPU busy\" below ~100% "
         "means the server was not "
         "saturated (wrk, on one core, was the limit). \"Other load\" is busy time of the "
         "server's core not spent in the server (other processes, kernel threads, irqs); "
         "if it is more than a few %, the run was disturbed.")
if any(r["latency_p50_ms"] is None for r in runs):
    L.append("")
    L.append("¹ Not reported: for pipelined runs wrk records one latency per batch of "
             f"{depth} and its coordinated-omission correction, computed from the response "
             "count, corrupts the distribution (percentiles of 0 µs; wg/wrk#236).")

by = {(r["target"], r["test"]): r for r in runs}
tests = list(dict.fromkeys(r["test"] for r in runs))
ratio_lines = []
for num, den in [("shardpay", "bare-glommio"), ("shardpay", "actix"), ("actix", "bare-glommio")]:
    for t in tests:
        a, b = by.get((num, t)), by.get((den, t))
        if not a or not b:
            continue
        x, y = a["server_cpu_us_per_request"], b["server_cpu_us_per_request"]
        ratio = "n/a" if not x or not y else f"{x / y:.2f}"
        ratio_lines.append(f"| {num} / {den} | {t} | {ratio} |")
L.append("")
L.append("Server CPU-µs per request, ratios:")
L.append("")
if ratio_lines:
    L.append("| ratio | test | CPU-µs/req ratio |")
    L.append("|---|---|--:|")
    L.extend(ratio_lines)
else:
    L.append("(none: needs shardpay, bare-glommio or actix together)")

checks = [r for r in runs if r["_server_responses"] is not None]
if checks:
    L.append("")
    L.append("Request-count check: responses the server wrote during the measured run "
             "(its SIGUSR1 counter) versus wrk's count. wrk counts responses (not pipelined "
             "batches) and misses those still in flight when it stops, so the server's count "
             "may exceed wrk's by up to connections x depth.")
    L.append("")
    for r in checks:
        d = r["_server_responses"] - r["requests"]
        L.append(f"- {r['target']} / {r['test']}: server {r['_server_responses']}, "
                 f"wrk {r['requests']}, difference {d:+d}")

disturbed = [r for r in runs if r["_other_cpu_s"] / r["duration_s"] > 0.05]
if disturbed:
    L.append("")
    L.append("**Warning**: other load above 5% on the server's core during: "
             + ", ".join(f"{r['target']}/{r['test']}" for r in disturbed)
             + ". Re-run those on a quiet machine.")

text = "\n".join(L) + "\n"
with open(md_path, "w") as f:
    f.write(text)
print(text)
print(f"Results: {json_path}, {md_path}, raw outputs in {raw}/")
PY
