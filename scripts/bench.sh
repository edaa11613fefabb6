#!/usr/bin/env bash
# Server-core benchmark: shardpay versus a bare glommio loop and actix-web,
# each on ONE core (CPU 1), driven by wrk pinned to the other core (CPU 0).
#
# Every run: start the server fresh, a short warm-up run (not counted), the
# measured wrk run, stop the server. The server's CPU time (utime + stime from
# /proc/PID/stat) is read right before and right after the measured run,
# giving server CPU-microseconds per request, the main figure of merit (on a
# 2-core machine wrk itself may be the bottleneck, so requests/s alone can
# hide differences).
#
# The machine is noisy (CPU-us/request varies by 5-8% from run to run), so the
# whole matrix is run --rounds times, interleaved so that a drift in machine
# speed hits every target alike: for each round, for each test, for each
# target, with the target order rotated every round (round 1: A B C, round 2:
# B C A, round 3: C A B). Reported per (target, test): medians over rounds,
# and the min-max of CPU-us/request; ratios are taken within a round and test
# and reported as median [min-max] over rounds.
#
# The test "balances" is an authenticated read, GET /v1/balances with
# "Authorization: Bearer <access token>", run against shardpay only (the peers
# have no such route; their rows are simply absent). Before its warm-up, each
# run signs up a user (POST /v1/users), logs in (POST /v1/sessions) and
# deposits to it with the admin key (POST /v1/deposits), so the read returns a
# non-empty list; config/bench.toml raises the per-user request limit so that
# one user is not throttled. Its ratio to shardpay's own json run of the same
# round ("shardpay balances / shardpay json") is in the ratio table.
#
# The test "payments" is a money write, POST /v1/payments (bench/wrk/
# payments.lua), against shardpay only: 1 USD per request from one payer,
# alternating between two payees, each request with a new Idempotency-Key (a
# repeated key would get the stored answer replayed, not a new payment).
# Before its warm-up, each run signs up the payer "benchpayer" and logs in,
# signs up two payees, one on the payer's home shard and, when the server has
# several shards (--shards), one on another shard (so half the payments are
# cross-shard; with one shard both are local), deposits 10^15 USD minor units
# to the payer with the admin key, and checks that one payment to each payee
# answers 201. After the measured run, the payer's balance must show at least
# as many payments as wrk counted responses (else keys were replayed). Home
# shards are computed as the server does (src/slots.rs: CRC16/XMODEM of the
# username mod 16384, slots to shards in contiguous ranges) and checked
# against the X-Shard header of each signup. Ratio: "shardpay payments /
# shardpay json" of the same round.
#
# Where wrk connects (--via), for shardpay's balances and payments only: by
# default (public) to the public port, where SO_REUSEPORT spreads the
# connections over the shards, so with N shards about (N-1)/N of these
# user-scoped requests arrive on a shard that is not the user's home and are
# forwarded over the mesh. "home" connects to the shard-aware port of the
# benchmark user's home shard (the payer's, for payments): no request is
# forwarded. "other" connects to the shard-aware port of the shard after the
# home shard (home + 1 mod N; needs --shards 2 or more): every request is
# forwarded. The home shard is computed from the user id of the signup answer
# (usr_ + the slot in 4 hex digits; shard = the last i with
# floor(i*16384/N) <= slot, as src/slots.rs) and checked against the X-Shard
# header of that answer. Every other test, and the peers, use the public port.
#
# Every response must be 2xx (or 3xx): wrk's "Non-2xx or 3xx responses" count
# of the measured run goes into the "wrk errors" column, and any such response
# (warm-up included) is flagged in the tables and makes the script exit 1 once
# the report is written.
#
# Usage: scripts/bench.sh [--rounds N] [--duration S] [--targets LIST]
#                         [--tests LIST] [--connections N] [--shards N]
#                         [--via public|home|other] [--name NAME] [--no-build]
#   --rounds N        rounds of the whole matrix (default 3)
#   --duration S      seconds per measured run (default 10)
#   --targets LIST    comma list of shardpay,bare-glommio,actix (default all)
#   --tests LIST      comma list of plaintext,json,pipelined,balances,payments
#                     (default plaintext,json,pipelined; balances and
#                     payments: shardpay only)
#   --connections N   wrk connections (default 64)
#   --shards N        shardpay's shards (default 1), all pinned to the server
#                     CPU (--shards N --cpus 1: the server stays on one core,
#                     and cross-shard work shows as CPU per request); its
#                     shard-aware ports are 7100..7100+N-1
#   --via WHERE       where wrk connects for shardpay's balances and payments:
#                     public (default: the public port), home (the shard-aware
#                     port of the user's home shard) or other (that of another
#                     shard; needs --shards >= 2); other tests: public port
#   --name NAME       results name (default server-core)
#   --no-build        do not run cargo build
#
# Time: every wrk run has a fixed duration, so a run takes rounds x targets x
# tests x (S + 2 s warm-up) plus about 1 s per run for server start and stop:
# the default (3 x 3 x 3 x 12 s = 324 s) takes about 6 minutes. balances adds
# one run per round (shardpay only) and about 1 s of set-up per run (one
# argon2 signup and one login); payments likewise, with about 2 s of set-up
# (three signups, one login).
#
# Results: bench/results/<YYYY-MM-DD>-<NAME>.json (summary array: one entry
#              per target and test, with medians, "rounds" and "runs"),
#          bench/results/<YYYY-MM-DD>-<NAME>.md   (tables, also printed),
#          bench/results/<YYYY-MM-DD>-<NAME>/     (runs.jsonl, and per round
#              round-K/: raw wrk outputs and server logs).
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

ROUNDS=3
DURATION=10
TARGETS="shardpay,bare-glommio,actix"
TESTS="plaintext,json,pipelined"
CONNECTIONS=64
SHARDS=1
VIA="public" # balances and payments: public, home or other (--via)
SHARD_PORT_BASE=7100 # shardpay's shard-aware ports: SHARD_PORT_BASE + 0..SHARDS-1
SHARD_COUNT_MAX=1024 # the server's limit (SHARD_COUNT_LIMIT in src/config.rs)
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
        --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
        --rounds=*) ROUNDS="${1#*=}"; shift ;;
        --duration) need_value "$@"; DURATION="$2"; shift 2 ;;
        --duration=*) DURATION="${1#*=}"; shift ;;
        --targets) need_value "$@"; TARGETS="$2"; shift 2 ;;
        --targets=*) TARGETS="${1#*=}"; shift ;;
        --tests) need_value "$@"; TESTS="$2"; shift 2 ;;
        --tests=*) TESTS="${1#*=}"; shift ;;
        --connections) need_value "$@"; CONNECTIONS="$2"; shift 2 ;;
        --connections=*) CONNECTIONS="${1#*=}"; shift ;;
        --shards) need_value "$@"; SHARDS="$2"; shift 2 ;;
        --shards=*) SHARDS="${1#*=}"; shift ;;
        --via) need_value "$@"; VIA="$2"; shift 2 ;;
        --via=*) VIA="${1#*=}"; shift ;;
        --name) need_value "$@"; NAME="$2"; shift 2 ;;
        --name=*) NAME="${1#*=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "bench.sh: unknown argument: $1" >&2; usage 2 ;;
    esac
done

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "--duration must be a positive integer (seconds)"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "--connections must be a positive integer"
[[ "$SHARDS" =~ ^[1-9][0-9]*$ ]] && ((SHARDS <= SHARD_COUNT_MAX)) ||
    die "--shards must be an integer from 1 to $SHARD_COUNT_MAX"
[[ "$NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "--name may only contain letters, digits, '.', '_' and '-'"
case "$VIA" in public|home|other) ;; *) die "--via must be public, home or other" ;; esac
[[ "$VIA" != other ]] || ((SHARDS >= 2)) ||
    die "--via other needs --shards 2 or more (with one shard every shard is the home shard)"

IFS=',' read -r -a TARGET_LIST <<<"$TARGETS"
IFS=',' read -r -a TEST_LIST <<<"$TESTS"
[[ ${#TARGET_LIST[@]} -gt 0 ]] || die "--targets is empty"
[[ ${#TEST_LIST[@]} -gt 0 ]] || die "--tests is empty"
for t in "${TARGET_LIST[@]}"; do
    case "$t" in shardpay|bare-glommio|actix) ;; *) die "unknown target '$t' (shardpay, bare-glommio, actix)" ;; esac
done
for t in "${TEST_LIST[@]}"; do
    case "$t" in plaintext|json|pipelined|balances|payments) ;; *) die "unknown test '$t' (plaintext, json, pipelined, balances, payments)" ;; esac
done
[[ $(printf '%s\n' "${TARGET_LIST[@]}" | sort | uniq -d) == "" ]] || die "--targets has duplicates"
[[ $(printf '%s\n' "${TEST_LIST[@]}" | sort | uniq -d) == "" ]] || die "--tests has duplicates"

# Whether TARGET serves TEST: balances and payments (authenticated shardpay
# routes) run against shardpay only; every other test runs against every
# target.
test_applies() {
    [[ ("$2" != balances && "$2" != payments) || "$1" == shardpay ]]
}

# Runs per round (checked here, before any results file is touched).
RUNS_PER_ROUND=0
for test in "${TEST_LIST[@]}"; do
    for target in "${TARGET_LIST[@]}"; do
        if test_applies "$target" "$test"; then RUNS_PER_ROUND=$((RUNS_PER_ROUND + 1)); fi
    done
done
((RUNS_PER_ROUND > 0)) || die "no test applies to the targets (balances and payments run against shardpay only)"
for test in "${TEST_LIST[@]}"; do
    applies=0
    for target in "${TARGET_LIST[@]}"; do
        if test_applies "$target" "$test"; then applies=1; fi
    done
    ((applies)) || echo ">> note: $test runs against shardpay only, which is not among the targets: skipped" >&2
done
# Whether --via changes where wrk connects for TARGET / TEST.
via_applies() {
    [[ "$1" == shardpay && ("$2" == balances || "$2" == payments) ]]
}
if [[ "$VIA" != public ]]; then
    applies=0
    for test in "${TEST_LIST[@]}"; do
        for target in "${TARGET_LIST[@]}"; do
            if via_applies "$target" "$test"; then applies=1; fi
        done
    done
    ((applies)) || echo ">> note: --via $VIA applies to shardpay's balances and payments only: ignored" >&2
fi

for tool in wrk taskset curl python3 getconf timeout; do
    command -v "$tool" >/dev/null || die "'$tool' not found (wrk: apt-get install -y wrk)"
done
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------- targets --

declare -A PORT=([shardpay]=8080 [bare-glommio]=8081 [actix]=8082)
declare -A READY_PATH=([shardpay]=/readyz [bare-glommio]=/plaintext [actix]=/plaintext)
declare -A PACKAGE=([shardpay]=shardpay [bare-glommio]=peer-bare-glommio [actix]=peer-actix)

# shardpay's shard-aware ports must not reach past the port range, nor into a
# target's public port.
SHARD_PORT_LAST=$((SHARD_PORT_BASE + SHARDS - 1))
((SHARD_PORT_LAST <= 65535)) || die "--shards $SHARDS: shard-aware ports from $SHARD_PORT_BASE pass 65535"
for p in "${PORT[@]}"; do
    ((p < SHARD_PORT_BASE || p > SHARD_PORT_LAST)) ||
        die "--shards $SHARDS: shard-aware ports $SHARD_PORT_BASE..$SHARD_PORT_LAST would include port $p"
done

# The balances test's set-up on a fresh shardpay server.
BENCH_USERNAME="bench"
BENCH_PASSWORD="benchmark-password-1"
BENCH_ADMIN_KEY="dev-admin-key-not-for-production" # config/bench.toml keeps the dev key
BENCH_DEPOSIT_MINOR=100000
BENCH_CURRENCY="USD"
ACCESS_TOKEN="" # set by balances_setup and payments_setup, used by run_wrk
# Set by via_select (balances and payments set-ups): the benchmark user's home
# shard, and the port wrk connects to (per --via).
HOME_SHARD=""
WRK_PORT=""

# The payments test's set-up: the payer, candidate payee names (a local and a
# remote one are picked from them per --shards), the payer's deposit (10^15,
# the server's AMOUNT_MAX: no run can spend it at 1 per payment).
PAY_PAYER="benchpayer"
PAY_PAYEE_CANDIDATES="benchpayee1 benchpayee2 benchpayee3 benchpayee4 benchpayee5 benchpayee6
    benchpayee7 benchpayee8 benchpayee9 benchpayee10 benchpayee11 benchpayee12 benchpayee13
    benchpayee14 benchpayee15 benchpayee16 benchpayee17 benchpayee18 benchpayee19 benchpayee20"
PAY_DEPOSIT_MINOR=1000000000000000
PAYEES=() # set by payments_setup: the local payee, then the other one
PAY_RUN_TAG="" # a tag per wrk run, so that no two runs share an idempotency key

# Sets CMD to the command line of a target.
target_command() {
    case "$1" in
        shardpay)
            CMD=(taskset -c "$SERVER_CPU" target/release/shardpay serve
                --config config/bench.toml --shards "$SHARDS" --cpus "$SERVER_CPU"
                --shard-port-base "$SHARD_PORT_BASE"
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
    if [[ "$target" == shardpay ]]; then
        # Its shard-aware ports (bound without SO_REUSEPORT) must be free too.
        local p
        for ((p = SHARD_PORT_BASE; p <= SHARD_PORT_LAST; p++)); do
            ! port_in_use "$p" || die "port $p (shardpay's shard-aware port) is already in use; stop its user first"
        done
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

# http_call LOG EXPECTED_STATUS METHOD URL BODY [HEADER...]: one curl request;
# prints the response body, dies unless the status is EXPECTED_STATUS. The
# exchange (status and body) is appended to LOG. With HTTP_CALL_HEADERS set to
# a file name, the response headers are written there.
http_call() {
    local log="$1" expected="$2" method="$3" url="$4" body="$5"
    shift 5
    local -a headers=(-H "Content-Type: application/json") dump=()
    local h
    for h in "$@"; do headers+=(-H "$h"); done
    if [[ -n "${HTTP_CALL_HEADERS:-}" ]]; then dump=(-D "$HTTP_CALL_HEADERS"); fi
    local tmp status
    tmp="$(mktemp)"
    status="$(curl -sS --max-time 30 -o "$tmp" -w '%{http_code}' -X "$method" \
        "${dump[@]+"${dump[@]}"}" "${headers[@]}" --data-binary "$body" "$url")" || {
        rm -f "$tmp"
        die "set-up: $method $url failed (curl)"
    }
    local response
    response="$(<"$tmp")"
    rm -f "$tmp"
    printf '%s %s -> %s %s\n' "$method" "$url" "$status" "$response" >>"$log"
    [[ "$status" == "$expected" ]] ||
        die "set-up: $method $url answered $status, expected $expected: $response"
    printf '%s' "$response"
}

# json_field FIELD: the string field FIELD of the JSON object on stdin.
json_field() {
    python3 -c 'import json, sys
v = json.load(sys.stdin).get(sys.argv[1])
if not isinstance(v, str) or not v:
    sys.exit("no string field " + sys.argv[1])
print(v)' "$1"
}

# balances_setup LOG: on the fresh shardpay server, sign up the benchmark
# user (sets HOME_SHARD and WRK_PORT, see via_select), log in (sets
# ACCESS_TOKEN) and deposit to it, then check that the balance read answers
# 200 with a non-empty list. LOG gets the exchanges
# (tokens redacted).
balances_setup() {
    local log="$1" url="http://127.0.0.1:${PORT[shardpay]}" response user_id
    local creds
    creds="$(printf '{"username":"%s","password":"%s"}' "$BENCH_USERNAME" "$BENCH_PASSWORD")"
    : >"$log.tmp"
    response="$(HTTP_CALL_HEADERS="$log.headers" http_call "$log.tmp" 201 POST "$url/v1/users" "$creds")"
    user_id="$(json_field id <<<"$response")" || die "set-up: no user id in the signup answer: $response"
    via_select "$log.tmp" "$BENCH_USERNAME" "$user_id" "$(x_shard_header "$log.headers")"
    rm -f "$log.headers"
    response="$(http_call "$log.tmp" 201 POST "$url/v1/sessions" "$creds")"
    ACCESS_TOKEN="$(json_field access_token <<<"$response")" ||
        die "set-up: no access_token in the login answer"
    response="$(http_call "$log.tmp" 201 POST "$url/v1/deposits" \
        "$(printf '{"user_id":"%s","amount":%d,"currency":"%s"}' "$user_id" "$BENCH_DEPOSIT_MINOR" "$BENCH_CURRENCY")" \
        "Authorization: Bearer $BENCH_ADMIN_KEY" "Idempotency-Key: bench-1")"
    local status
    status="$(curl -sS --max-time 5 -o "$log.body" -w '%{http_code}' \
        -H "Authorization: Bearer $ACCESS_TOKEN" "$url/v1/balances")" ||
        die "set-up: GET /v1/balances failed (curl)"
    printf 'GET %s/v1/balances -> %s %s\n' "$url" "$status" "$(<"$log.body")" >>"$log.tmp"
    [[ "$status" == 200 ]] || die "set-up: GET /v1/balances answered $status: $(<"$log.body")"
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1])).get("data")
sys.exit(0 if isinstance(d, list) and d else "empty balance list")' "$log.body" ||
        die "set-up: GET /v1/balances returned no balance: $(<"$log.body")"
    rm -f "$log.body"
    redact_setup_log "$log.tmp" "$log"
}

# redact_setup_log TMP LOG: TMP without its tokens goes to LOG; TMP is removed.
# Tokens are short-lived and the server is thrown away, but keep them out of
# the results anyway.
redact_setup_log() {
    python3 -c 'import re, sys
t = open(sys.argv[1]).read()
t = re.sub(r"(\"(?:access_token|refresh_token)\":\")[^\"]*", r"\1<redacted>", t)
open(sys.argv[2], "w").write(t)' "$1" "$2"
    rm -f "$1"
}

# home_shards SHARDS NAME...: the home shard of each username, one a line, as
# src/slots.rs computes it: slot = CRC16/XMODEM(case-folded name) mod 16384,
# and slots go to shards in contiguous ranges (shard i of N owns slots
# floor(i*16384/N) to floor((i+1)*16384/N)-1; Slot::shard's formula).
home_shards() {
    python3 - "$@" <<'PY'
import sys

def crc16_xmodem(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc

shards = int(sys.argv[1])
for name in sys.argv[2:]:
    slot = crc16_xmodem(name.lower().encode()) % 16384
    print(((slot + 1) * shards - 1) // 16384)
PY
}

# x_shard_header FILE: the X-Shard header in a file of response headers
# (empty if there is none).
x_shard_header() {
    tr -d '\r' <"$1" | awk -F': *' 'tolower($1) == "x-shard" { print $2 }'
}

# home_shard_of_id SHARDS USER_ID: the home shard of a user id, from the slot
# it carries (usr_ + 4 hex digits of slot + random, src/slots.rs): the last
# shard i whose first slot, floor(i*16384/SHARDS), is at most the slot.
home_shard_of_id() {
    local shards="$1" id="$2" slot i
    [[ "$id" =~ ^usr_([0-9a-f]{4})[0-9a-f]+$ ]] || return 1
    slot=$((16#${BASH_REMATCH[1]}))
    ((slot < 16384)) || return 1
    for ((i = shards - 1; i >= 0; i--)); do
        if ((i * 16384 / shards <= slot)); then
            echo "$i"
            return 0
        fi
    done
    return 1
}

# via_select LOG USERNAME USER_ID X_SHARD: sets HOME_SHARD, the home shard of
# the benchmark user USER_ID (computed from its id, checked against X_SHARD,
# the X-Shard header of its signup answer), and WRK_PORT, where wrk connects
# per --via: the public port, the home shard's shard-aware port, or that of
# the next shard (home + 1 mod SHARDS). Appends the choice to LOG.
via_select() {
    local log="$1" name="$2" id="$3" x_shard="$4" other
    HOME_SHARD="$(home_shard_of_id "$SHARDS" "$id")" ||
        die "set-up: cannot read a slot from $name's user id '$id'"
    [[ "$x_shard" == "$HOME_SHARD" ]] ||
        die "set-up: $name's home shard is ${x_shard:-not in X-Shard}, computed $HOME_SHARD from its id $id (src/slots.rs changed?)"
    case "$VIA" in
        public) WRK_PORT="${PORT[shardpay]}" ;;
        home) WRK_PORT=$((SHARD_PORT_BASE + HOME_SHARD)) ;;
        other)
            other=$(((HOME_SHARD + 1) % SHARDS))
            ((other != HOME_SHARD)) || die "--via other: no shard other than the home shard"
            WRK_PORT=$((SHARD_PORT_BASE + other)) ;;
    esac
    printf 'via %s: wrk connects to port %s (%s: user id %s, home shard %s, X-Shard %s)\n' \
        "$VIA" "$WRK_PORT" "$name" "$id" "$HOME_SHARD" "$x_shard" >>"$log"
}

# signup_on LOG URL USERNAME EXPECTED_SHARD: signs USERNAME up (201), checks
# that the X-Shard of the answer (the user's home shard) is EXPECTED_SHARD,
# prints the signup answer.
signup_on() {
    local log="$1" url="$2" name="$3" expected="$4" response shard
    local creds
    creds="$(printf '{"username":"%s","password":"%s"}' "$name" "$BENCH_PASSWORD")"
    response="$(HTTP_CALL_HEADERS="$log.headers" http_call "$log" 201 POST "$url/v1/users" "$creds")"
    shard="$(x_shard_header "$log.headers")"
    rm -f "$log.headers"
    printf '  (X-Shard: %s, computed home shard: %s)\n' "${shard:-none}" "$expected" >>"$log"
    [[ "$shard" == "$expected" ]] ||
        die "set-up: $name's home shard is ${shard:-not in X-Shard}, computed $expected (src/slots.rs changed?)"
    printf '%s' "$response"
}

# payments_setup LOG: on the fresh shardpay server, sign up the payer (sets
# HOME_SHARD and WRK_PORT, see via_select) and log in (sets ACCESS_TOKEN),
# sign up two payees (sets PAYEES: one on the payer's
# home shard, one on another shard if there are several), deposit to the
# payer, and check that one payment to each payee answers 201. LOG gets the
# exchanges (tokens redacted).
payments_setup() {
    local log="$1" url="http://127.0.0.1:${PORT[shardpay]}" response payer_id
    local -a candidates homes
    read -r -a candidates <<<"$(echo $PAY_PAYEE_CANDIDATES)"
    mapfile -t homes < <(home_shards "$SHARDS" "$PAY_PAYER" "${candidates[@]}")
    ((${#homes[@]} == ${#candidates[@]} + 1)) || die "set-up: cannot compute home shards"
    local payer_home="${homes[0]}" local_payee="" local_home="" remote_payee="" remote_home="" i
    for ((i = 0; i < ${#candidates[@]}; i++)); do
        local name="${candidates[i]}" home="${homes[i + 1]}"
        if [[ -z "$local_payee" && "$home" == "$payer_home" ]]; then
            local_payee="$name" local_home="$home"
        elif [[ -z "$remote_payee" ]] && { ((SHARDS == 1)) || [[ "$home" != "$payer_home" ]]; }; then
            # With one shard every user is local: the second payee is too.
            remote_payee="$name" remote_home="$home"
        fi
    done
    [[ -n "$local_payee" && -n "$remote_payee" ]] ||
        die "set-up: no payee candidates on the payer's shard $payer_home and another one (of $SHARDS)"
    PAYEES=("$local_payee" "$remote_payee")

    : >"$log.tmp"
    printf 'payer %s (home shard %s), payees %s (home shard %s) and %s (home shard %s), %s shard(s)\n' \
        "$PAY_PAYER" "$payer_home" "$local_payee" "$local_home" "$remote_payee" "$remote_home" \
        "$SHARDS" >>"$log.tmp"
    response="$(signup_on "$log.tmp" "$url" "$PAY_PAYER" "$payer_home")"
    payer_id="$(json_field id <<<"$response")" || die "set-up: no user id in the signup answer: $response"
    # signup_on checked that the answer's X-Shard is payer_home.
    via_select "$log.tmp" "$PAY_PAYER" "$payer_id" "$payer_home"
    signup_on "$log.tmp" "$url" "$local_payee" "$local_home" >/dev/null
    signup_on "$log.tmp" "$url" "$remote_payee" "$remote_home" >/dev/null
    response="$(http_call "$log.tmp" 201 POST "$url/v1/sessions" \
        "$(printf '{"username":"%s","password":"%s"}' "$PAY_PAYER" "$BENCH_PASSWORD")")"
    ACCESS_TOKEN="$(json_field access_token <<<"$response")" ||
        die "set-up: no access_token in the login answer"
    http_call "$log.tmp" 201 POST "$url/v1/deposits" \
        "$(printf '{"user_id":"%s","amount":%s,"currency":"%s"}' "$payer_id" "$PAY_DEPOSIT_MINOR" "$BENCH_CURRENCY")" \
        "Authorization: Bearer $BENCH_ADMIN_KEY" "Idempotency-Key: bench-pay" >/dev/null
    local payee n=0
    for payee in "${PAYEES[@]}"; do
        n=$((n + 1))
        http_call "$log.tmp" 201 POST "$url/v1/payments" \
            "$(printf '{"to":"%s","amount":1,"currency":"%s"}' "$payee" "$BENCH_CURRENCY")" \
            "Authorization: Bearer $ACCESS_TOKEN" "Idempotency-Key: bench-pay-check-$n" >/dev/null
    done
    redact_setup_log "$log.tmp" "$log"
}

# payments_check LOG WARMUP_OUT MEASURED_OUT: after the measured run, the
# payer's balance must show at least as many payments as wrk counted (two
# set-up checks, the warm-up, the measured run): fewer means that answers
# were replayed for repeated idempotency keys, not new payments. Skipped when
# a run got non-2xx answers (those fail the benchmark anyway). Appends the
# figures to LOG.
payments_check() {
    local log="$1" warmup_out="$2" out="$3" url="http://127.0.0.1:${PORT[shardpay]}" status
    status="$(curl -sS --max-time 5 -o "$log.body" -w '%{http_code}' \
        -H "Authorization: Bearer $ACCESS_TOKEN" "$url/v1/balances")" ||
        die "payments check: GET /v1/balances failed (curl)"
    [[ "$status" == 200 ]] || die "payments check: GET /v1/balances answered $status: $(<"$log.body")"
    python3 - "$log.body" "$warmup_out" "$out" "$PAY_DEPOSIT_MINOR" "$BENCH_CURRENCY" "$log" <<'PY' ||
import json, re, sys

body, warmup_out, out, deposit, currency, log = sys.argv[1:]
available = next((b["available"] for b in json.load(open(body))["data"]
                  if b["currency"] == currency), 0)
debited = int(deposit) - available
counted, non_2xx = 2, 0  # the two set-up payments
for path in (warmup_out, out):
    text = open(path).read()
    counted += int(re.search(r"^\s*(\d+) requests in ", text, re.M)[1])
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non_2xx += int(m[1]) if m else 0
line = (f"after the measured run: {debited} payments debited from the payer, "
        f"{counted} answers counted (set-up, warm-up, measured)")
with open(log, "a") as f:
    f.write(line + "\n")
if not non_2xx and debited < counted:
    sys.exit(f"{line}: answers were replayed (repeated idempotency keys)")
PY
        die "payments check failed (see $log)"
    rm -f "$log.body"
}

# run_wrk TARGET TEST SECONDS OUTFILE: wrk against the target's public port,
# or for shardpay's balances and payments against WRK_PORT (per --via).
run_wrk() {
    local target="$1" test="$2" seconds="$3" out="$4" path port="${PORT[$1]}"
    if via_applies "$target" "$test"; then
        [[ -n "$WRK_PORT" ]] || die "$test: no port to connect to (set-up not run)"
        port="$WRK_PORT"
    fi
    local url="http://127.0.0.1:${port}"
    local -a script=() header=() shown_header=() args=() shown_args=()
    case "$test" in
        plaintext) path=/plaintext ;;
        json) path=/json ;;
        pipelined) path=/plaintext; script=(-s bench/wrk/pipeline.lua) ;;
        balances)
            [[ -n "$ACCESS_TOKEN" ]] || die "balances: no access token (set-up not run)"
            path=/v1/balances
            header=(-H "Authorization: Bearer $ACCESS_TOKEN")
            shown_header=(-H "'Authorization: Bearer <access token>'") ;;
        payments)
            [[ -n "$ACCESS_TOKEN" && ${#PAYEES[@]} -eq 2 ]] || die "payments: set-up not run"
            # The path is the script's; the run tag keeps the warm-up's and
            # the measured run's idempotency keys apart.
            path=/v1/payments
            script=(-s bench/wrk/payments.lua)
            args=(-- "$ACCESS_TOKEN" "${PAYEES[@]}" "$PAY_RUN_TAG")
            shown_args=(-- "'<access token>'" "${PAYEES[@]}" "$PAY_RUN_TAG") ;;
    esac
    if [[ "$test" == pipelined ]]; then
        args=(-- "$PIPELINE_DEPTH")
        shown_args=("${args[@]}")
    fi
    local -a cmd=(taskset -c "$WRK_CPU" wrk -t1 "-c$CONNECTIONS" "-d${seconds}s" --latency
        "${header[@]+"${header[@]}"}" "${script[@]+"${script[@]}"}" "$url$path"
        "${args[@]+"${args[@]}"}")
    local -a shown=(taskset -c "$WRK_CPU" wrk -t1 "-c$CONNECTIONS" "-d${seconds}s" --latency
        "${shown_header[@]+"${shown_header[@]}"}" "${script[@]+"${script[@]}"}" "$url$path"
        "${shown_args[@]+"${shown_args[@]}"}")
    echo "\$ ${shown[*]}" >"$out"
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

N_TARGETS=${#TARGET_LIST[@]}
TOTAL_RUNS=$((ROUNDS * RUNS_PER_ROUND))
ESTIMATE_S=$((TOTAL_RUNS * (DURATION + WARMUP_S + 1)))
echo ">> $ROUNDS round(s), $TOTAL_RUNS runs of ${WARMUP_S}s warm-up + ${DURATION}s:" \
    "about $(((ESTIMATE_S + 59) / 60)) min" >&2

# measure_run ROUND SEQ TARGET TEST: one run (fresh server, warm-up,
# measured run, server stopped), one JSON line appended to runs.jsonl.
measure_run() {
    local round="$1" seq="$2" target="$3" test="$4"
    local dir="$RAW_DIR/round-$round"
    local log="$dir/$target-$test.server.log" out="$dir/$target-$test.wrk.txt"
    local tag="[$seq/$TOTAL_RUNS] round $round: $target / $test"
    mkdir -p "$dir"
    start_server "$target" "$log"

    ACCESS_TOKEN=""
    PAYEES=()
    HOME_SHARD=""
    WRK_PORT=""
    if [[ "$test" == balances ]]; then
        echo ">> $tag: set-up (signup, login, deposit)" >&2
        balances_setup "$dir/$target-$test.setup.txt"
    elif [[ "$test" == payments ]]; then
        echo ">> $tag: set-up (payer and payees, login, deposit, two payments)" >&2
        payments_setup "$dir/$target-$test.setup.txt"
    fi

    echo ">> $tag: warm-up ${WARMUP_S}s" >&2
    PAY_RUN_TAG="r${round}s${seq}w"
    run_wrk "$target" "$test" "$WARMUP_S" "$dir/$target-$test.warmup.txt"
    PAY_RUN_TAG="r${round}s${seq}m"

    local count_before="" count_after=""
    if [[ "$target" == bare-glommio ]]; then
        count_before="$(server_response_count "$SERVER_PID" "$log")"
    fi

    echo ">> $tag: measuring ${DURATION}s" >&2
    local core_before core_after ticks_before ticks_after
    core_before="$(cpu_core_busy_ticks "$SERVER_CPU")"
    ticks_before="$(cpu_ticks "$SERVER_PID")"
    run_wrk "$target" "$test" "$DURATION" "$out"
    ticks_after="$(cpu_ticks "$SERVER_PID")"
    core_after="$(cpu_core_busy_ticks "$SERVER_CPU")"

    if [[ "$target" == bare-glommio ]]; then
        count_after="$(server_response_count "$SERVER_PID" "$log")"
    fi
    if [[ "$test" == payments ]]; then
        payments_check "$dir/$target-$test.setup.txt" "$dir/$target-$test.warmup.txt" "$out"
    fi

    python3 - "$out" "$target" "$test" "$CONNECTIONS" "$DURATION" \
        "$ticks_before" "$ticks_after" "$CLK_TCK" "$count_before" "$count_after" \
        "$core_before" "$core_after" "$round" "$seq" "$dir/$target-$test.warmup.txt" \
        "$( [[ "$target" == shardpay ]] && echo "$SHARDS" || true)" \
        "$(if via_applies "$target" "$test"; then echo "$VIA"; elif [[ "$target" == shardpay ]]; then echo public; fi)" \
        "$(via_applies "$target" "$test" && echo "$WRK_PORT" || echo "${PORT[$target]}")" \
        "$HOME_SHARD" \
        >>"$RUNS_JSONL" <<'PY'
import json, re, sys

(out, target, test, conns, duration, t0, t1, clk, c0, c1, k0, k1, rnd, seq,
 warmup_out, shards, via, wrk_port, home_shard) = sys.argv[1:]
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
NON_2XX = r"Non-2xx or 3xx responses: (\d+)"  # wrk prints it only when non-zero
errors = 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
if m:
    errors += sum(int(x) for x in m.groups())
m = re.search(NON_2XX, text)
non_2xx = int(m.group(1)) if m else 0
errors += non_2xx
m = re.search(NON_2XX, open(warmup_out).read())
warmup_non_2xx = int(m.group(1)) if m else 0
print(json.dumps({
    "round": int(rnd),
    "seq": int(seq),  # position in the whole run, 1-based
    "target": target,
    "test": test,
    # shardpay's --shards (all on the server's CPU); None for the peers.
    "shards": int(shards) if shards else None,
    # Where wrk connected (--via): "public" (the public port), "home" (the
    # shard-aware port of the benchmark user's home shard) or "other" (that of
    # another shard); only shardpay's balances and payments follow --via, its
    # other tests are "public"; None for the peers.
    "via": via or None,
    "wrk_port": int(wrk_port),
    # balances and payments: the benchmark user's (payer's) home shard.
    "home_shard": int(home_shard) if home_shard else None,
    "connections": int(conns),
    "duration_s": int(duration),
    "requests": requests,
    "requests_per_sec": rps,
    "latency_p50_ms": p50,
    "latency_p99_ms": p99,
    "server_cpu_us_per_request": round(cpu_s * 1e6 / requests, 3) if requests else None,
    "server_user_us_per_request": round(user_s * 1e6 / requests, 3) if requests else None,
    "server_sys_us_per_request": round(sys_s * 1e6 / requests, 3) if requests else None,
    "server_cpu_s": round(cpu_s, 3),
    "errors": errors,  # socket errors + non-2xx/3xx responses, measured run
    "non_2xx": non_2xx,  # responses neither 2xx nor 3xx, measured run
    "warmup_non_2xx": warmup_non_2xx,  # the same, warm-up run
    # Busy time of the server's core not spent in the server (other load).
    "other_cpu_s": round(max(0.0, (int(k1) - int(k0)) / clk - cpu_s), 3),
    # bare-glommio only: responses the server wrote during the measured run.
    "server_responses": (int(c1) - int(c0)) if c0 and c1 else None,
}))
PY
    echo ">> $tag: stopping $target" >&2
    stop_server "$SERVER_PID"
}

# Round K (1-based) takes the targets rotated left by K-1; within a round,
# every test runs every target before the next test starts. Every run gets
# a fresh server, the same for every target.
seq_no=0
for ((round = 1; round <= ROUNDS; round++)); do
    order=()
    for ((i = 0; i < N_TARGETS; i++)); do
        order+=("${TARGET_LIST[(i + round - 1) % N_TARGETS]}")
    done
    echo ">> round $round/$ROUNDS: target order ${order[*]}" >&2
    for test in "${TEST_LIST[@]}"; do
        for target in "${order[@]}"; do
            test_applies "$target" "$test" || continue # no such route: no row
            seq_no=$((seq_no + 1))
            measure_run "$round" "$seq_no" "$target" "$test"
        done
    done
done

# -------------------------------------------------------------- report --

CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || true)"
WRK_VERSION="$({ wrk -v 2>&1 || true; } | head -n1 | cut -d' ' -f1-2)" # wrk -v exits 1
ENV_LINE="$(uname -sr), $(nproc) CPUs (${CPU_MODEL:-unknown CPU}), ${WRK_VERSION:-wrk}"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")"
if [[ -n "$(git status --porcelain 2>/dev/null | head -n1)" ]]; then GIT_REV+=" (dirty)"; fi

python3 - "$RUNS_JSONL" "$BASE.json" "$BASE.md" "$COMMAND_LINE" "$DAY" "$ENV_LINE" "$GIT_REV" \
    "$SERVER_CPU" "$WRK_CPU" "$PIPELINE_DEPTH" "$WARMUP_S" "$RAW_DIR" "$ROUNDS" \
    "$TARGETS" "$TESTS" "$SHARDS" "$VIA" "${PORT[shardpay]}" "$SHARD_PORT_BASE" <<'PY'
import json, statistics, sys

(runs_path, json_path, md_path, cmdline, day, env, rev, scpu, wcpu, depth, warm, raw,
 rounds, targets_arg, tests_arg, shards_arg, via_arg, public_port, shard_port_base) = sys.argv[1:]
rounds = int(rounds)
targets = targets_arg.split(",")
tests = tests_arg.split(",")
runs = [json.loads(l) for l in open(runs_path) if l.strip()]
runs.sort(key=lambda r: r["seq"])
OTHER_LIMIT = 0.05  # fraction of the run: above it, the run was disturbed

def median(values, ndigits=3):
    """Median of the values that are not None (None if there are none)."""
    v = [x for x in values if x is not None]
    return None if not v else round(statistics.median(v), ndigits)

def other_frac(r):
    return r["other_cpu_s"] / r["duration_s"]

def busy_frac(r):
    return r["server_cpu_s"] / r["duration_s"]

by_pair = {}
for r in runs:
    by_pair.setdefault((r["target"], r["test"]), []).append(r)
pairs = [(a, t) for a in targets for t in tests if (a, t) in by_pair]

summary = []
for target, test in pairs:
    rs = by_pair[(target, test)]
    col = lambda k: [r[k] for r in rs]
    req = median(col("requests"), 0)
    summary.append({
        "target": target,
        "test": test,
        "shards": rs[0].get("shards"),
        "via": rs[0].get("via"),
        "connections": rs[0]["connections"],
        "duration_s": rs[0]["duration_s"],
        "requests": None if req is None else int(req),
        "requests_per_sec": median(col("requests_per_sec"), 2),
        "latency_p50_ms": median(col("latency_p50_ms")),
        "latency_p99_ms": median(col("latency_p99_ms")),
        "server_cpu_us_per_request": median(col("server_cpu_us_per_request")),
        "rounds": len(rs),
        "runs": rs,
    })
with open(json_path, "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")

def fmt(v, spec, none="n/a"):
    return none if v is None else format(v, spec)

def rotation(k):
    n = len(targets)
    return " ".join(targets[(i + k - 1) % n] for i in range(n))

L = []
L.append(f"# Server-core benchmark, {day}")
L.append("")
L.append(f"Command: `{cmdline}`")
L.append("")
L.append(f"Rounds: {rounds}. Each round runs every (test, target) pair once: for each test "
         f"({', '.join(tests)}), each target, with the target order rotated every round ("
         + "; ".join(f"round {k}: {rotation(k)}" for k in range(1, min(rounds, len(targets)) + 1))
         + (", and so on" if rounds > len(targets) else "")
         + "), so that a drift in machine speed hits every target alike. Every run starts a "
         "fresh server and stops it after the measured run. Figures below are medians over "
         "rounds (user and sys each on its own), with the min–max of server CPU µs/req.")
if "balances" in tests:
    L.append("")
    L.append("balances = `GET /v1/balances` with `Authorization: Bearer <access token>` (an "
             "authenticated read of a user with one USD balance), against shardpay only (the "
             "peers have no such route). Before its warm-up each run signs the user up, logs "
             "in and deposits with the admin key (not measured); config/bench.toml raises "
             "the per-user request limit so that the one user is not throttled.")
if "payments" in tests:
    L.append("")
    L.append("payments = `POST /v1/payments` (`bench/wrk/payments.lua`), 1 USD per request from "
             "one payer, each request with a new `Idempotency-Key`, alternating between a payee "
             "on the payer's home shard and, with more than one shard, a payee on another "
             "shard (half the payments cross-shard; with one shard, both local); against "
             "shardpay only. Before its warm-up each run signs up the payer and the payees, "
             "logs in, deposits with the admin key and checks one payment to each payee (not "
             "measured); after it, the payer's balance must show at least as many payments as "
             "wrk counted answers (no replayed key).")
L.append("")
L.append(f"Machine: {env}. Git: {rev}.")
if "shardpay" in targets:
    L.append(f"shardpay: {shards_arg} shard{'s' if shards_arg != '1' else ''} "
             f"(`--shards {shards_arg} --cpus {scpu}`: all on CPU {scpu}).")
via_runs = [r for r in runs if r["target"] == "shardpay" and r["test"] in ("balances", "payments")]
if via_runs:
    ports = sorted({r.get("wrk_port") for r in via_runs if r.get("wrk_port") is not None})
    homes = sorted({r.get("home_shard") for r in via_runs if r.get("home_shard") is not None})
    where = {
        "public": f"the public port {public_port}, where SO_REUSEPORT spreads the connections "
                  "over the shards (with several shards, requests that land off the user's home "
                  "shard are forwarded over the mesh)",
        "home": "the shard-aware port of the benchmark user's home shard (the payer's for "
                "payments): no request is forwarded",
        "other": "the shard-aware port of a shard that is not the benchmark user's home shard "
                 "(the payer's for payments; the next shard, home + 1 mod shards): every request "
                 "is forwarded over the mesh",
    }[via_arg]
    L.append(f"Via: **{via_arg}** (`--via {via_arg}`): for shardpay's balances and payments, wrk "
             f"connects to {where}; port{'s' if len(ports) != 1 else ''} "
             f"{', '.join(map(str, ports)) or 'n/a'}, home shard{'s' if len(homes) != 1 else ''} "
             f"{', '.join(map(str, homes)) or 'n/a'} (from the user id's slot, checked against "
             "X-Shard). Other tests connect to the public port.")
L.append(f"Server on CPU {scpu}, `taskset -c {wcpu} wrk -t1` on CPU {wcpu}; "
         f"{warm} s warm-up before each measured run; pipelined = depth {depth}. "
         f"Raw outputs: `{raw}/round-K/`.")
L.append("")
L.append("| target | shards | test | via | conns | duration (s) | rounds | requests/s | p50 (ms) "
         "| p99 (ms) | server CPU (µs/req) | min–max | user | sys | server CPU busy "
         f"| other load on CPU {scpu} (max) | wrk errors (all runs) |")
L.append("|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")

def shards_cell(r):
    # Older runs.jsonl lack the key; the peers have no shards.
    return "—" if r.get("shards") is None else str(r["shards"])

def via_cell(r, port=False):
    # Older runs.jsonl lack the key; the peers have only their public port.
    if r.get("via") is None:
        return "—"
    if port and r.get("wrk_port") is not None:
        return f"{r['via']} (:{r['wrk_port']})"
    return r["via"]

any_disturbed = False

def bad_responses(r):
    # Responses neither 2xx nor 3xx, measured and warm-up (older runs.jsonl lack the keys).
    return r.get("non_2xx", 0) + r.get("warmup_non_2xx", 0)

def errors_cell(rs):
    cell = str(sum(r["errors"] for r in rs))
    return cell + " ⚠³" if any(bad_responses(r) for r in rs) else cell

broken = [r for r in runs if bad_responses(r)]
for s in summary:
    rs = s["runs"]
    cpu = [r["server_cpu_us_per_request"] for r in rs if r["server_cpu_us_per_request"] is not None]
    rng = f"{min(cpu):.3f}–{max(cpu):.3f}" if cpu else "n/a"
    other_max = max(other_frac(r) for r in rs)
    flag = ""
    if other_max > OTHER_LIMIT:
        any_disturbed = True
        flag = " ⚠²"
    L.append(f"| {s['target']} | {shards_cell(s)} | {s['test']} | {via_cell(s)} | {s['connections']} "
             f"| {s['duration_s']} "
             f"| {s['rounds']} | {fmt(s['requests_per_sec'], '.0f')} "
             f"| {fmt(s['latency_p50_ms'], '.3f', 'n/a¹')} | {fmt(s['latency_p99_ms'], '.3f', 'n/a¹')} "
             f"| {fmt(s['server_cpu_us_per_request'], '.3f')} | {rng} "
             f"| {fmt(median(r['server_user_us_per_request'] for r in rs), '.3f')} "
             f"| {fmt(median(r['server_sys_us_per_request'] for r in rs), '.3f')} "
             f"| {median(busy_frac(r) * 100 for r in rs):.0f}% "
             f"| {other_max * 100:.0f}%{flag} | {errors_cell(rs)} |")
L.append("")
L.append("Server CPU = utime + stime of the server process (all threads) over the measured "
         "run, from /proc/PID/stat, split into user and sys (kernel: syscalls and, on "
         "loopback, much of the TCP work of both ends); \"server CPU busy\" below ~100% "
         "means the server was not "
         "saturated (wrk, on one core, was the limit). \"Other load\" is busy time of the "
         "server's core not spent in the server (other processes, kernel threads, irqs), "
         "the largest over the pair's runs; "
         "if it is more than a few %, the run was disturbed.")
if any(r["latency_p50_ms"] is None for r in runs):
    L.append("")
    L.append("¹ Not reported: for pipelined runs wrk records one latency per batch of "
             f"{depth} and its coordinated-omission correction, computed from the response "
             "count, corrupts the distribution (percentiles of 0 µs; wg/wrk#236). Where "
             "only some runs of a pair lack a latency, the median is over the others.")
if any_disturbed:
    L.append("")
    L.append(f"² At least one run of this pair had other load above {OTHER_LIMIT:.0%} on the "
             "server's core (see the warning below).")
if broken:
    L.append("")
    L.append("³ **Errors**: at least one run of this pair got responses that were neither 2xx "
             "nor 3xx (wrk's \"Non-2xx or 3xx responses\"), so it measured something other "
             "than the intended request; its figures are not valid. See the error list below.")

run_at = {(r["target"], r["test"], r["round"]): r for r in runs}
ratio_lines = []
for num, den in [("shardpay", "bare-glommio"), ("shardpay", "actix"), ("actix", "bare-glommio")]:
    for t in tests:
        per_round = []
        for k in range(1, rounds + 1):
            a, b = run_at.get((num, t, k)), run_at.get((den, t, k))
            if not a or not b:
                continue
            x, y = a["server_cpu_us_per_request"], b["server_cpu_us_per_request"]
            per_round.append((k, x / y if x and y else None))
        if not per_round:
            continue
        vals = [v for _, v in per_round if v is not None]
        if vals:
            cell = f"{statistics.median(vals):.2f} [{min(vals):.2f}–{max(vals):.2f}]"
        else:
            cell = "n/a"
        each = ", ".join(f"{fmt(v, '.2f')}" for _, v in per_round)
        ratio_lines.append(f"| {num} / {den} | {t} | {cell} | {each} |")

def ratio_line(label, test_label, num, den):
    """A ratio of two (target, test) pairs, each round's runs against each other."""
    per_round = []
    for k in range(1, rounds + 1):
        a, b = run_at.get(num + (k,)), run_at.get(den + (k,))
        if not a or not b:
            continue
        x, y = a["server_cpu_us_per_request"], b["server_cpu_us_per_request"]
        per_round.append(x / y if x and y else None)
    if not per_round:
        return None
    vals = [v for v in per_round if v is not None]
    cell = f"{statistics.median(vals):.2f} [{min(vals):.2f}–{max(vals):.2f}]" if vals else "n/a"
    each = ", ".join(fmt(v, ".2f") for v in per_round)
    return f"| {label} | {test_label} | {cell} | {each} |"

# The auth/payments figure: an authenticated balance read against a /json request, both on
# shardpay in the same round (the issue's bound: at most 2x).
line = ratio_line("shardpay balances / shardpay json", "balances ÷ json",
                  ("shardpay", "balances"), ("shardpay", "json"))
if line:
    ratio_lines.append(line)
line = ratio_line("shardpay payments / shardpay json", "payments ÷ json",
                  ("shardpay", "payments"), ("shardpay", "json"))
if line:
    ratio_lines.append(line)
L.append("")
L.append("Server CPU-µs per request, ratios, each taken within one round and test "
         "(both runs in the same round), median [min–max] over rounds:")
L.append("")
if ratio_lines:
    L.append("| ratio | test | CPU-µs/req ratio, median [min–max] | per round (1, 2, …) |")
    L.append("|---|---|--:|--:|")
    L.extend(ratio_lines)
else:
    L.append("(none: needs two of shardpay, bare-glommio and actix together, or shardpay's "
             "balances or payments test together with its json test)")

checks = [r for r in runs if r["server_responses"] is not None]
if checks:
    L.append("")
    L.append("Request-count check: responses the server wrote during the measured run "
             "(its SIGUSR1 counter) versus wrk's count. wrk counts responses (not pipelined "
             "batches) and misses those still in flight when it stops, so the server's count "
             "may exceed wrk's by up to connections x depth.")
    L.append("")
    for r in checks:
        d = r["server_responses"] - r["requests"]
        L.append(f"- round {r['round']}, {r['target']} / {r['test']}: server "
                 f"{r['server_responses']}, wrk {r['requests']}, difference {d:+d}")

if broken:
    L.append("")
    L.append("**Errors**: responses neither 2xx nor 3xx during: "
             + ", ".join(f"round {r['round']} {r['target']}/{r['test']} "
                         f"(measured {r.get('non_2xx', 0)}, warm-up {r.get('warmup_non_2xx', 0)})"
                         for r in broken)
             + ". The benchmark is broken: see the raw wrk outputs and server logs.")

disturbed = [r for r in runs if other_frac(r) > OTHER_LIMIT]
if disturbed:
    L.append("")
    L.append(f"**Warning**: other load above {OTHER_LIMIT:.0%} on the server's core during: "
             + ", ".join(f"round {r['round']} {r['target']}/{r['test']} "
                         f"({other_frac(r):.0%})" for r in disturbed)
             + ". Re-run on a quiet machine.")

L.append("")
L.append("All runs, in the order they ran:")
L.append("")
L.append("| # | round | target | shards | test | via (port) | requests/s | server CPU (µs/req) "
         "| user | sys | server CPU busy | other load | wrk errors |")
L.append("|--:|--:|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|")
for r in runs:
    L.append(f"| {r['seq']} | {r['round']} | {r['target']} | {shards_cell(r)} | {r['test']} "
             f"| {via_cell(r, port=True)} "
             f"| {r['requests_per_sec']:.0f} | {fmt(r['server_cpu_us_per_request'], '.3f')} "
             f"| {fmt(r['server_user_us_per_request'], '.3f')} "
             f"| {fmt(r['server_sys_us_per_request'], '.3f')} "
             f"| {busy_frac(r):.0%} | {other_frac(r):.0%} "
             f"| {r['errors']}{' ⚠³' if bad_responses(r) else ''} |")

text = "\n".join(L) + "\n"
with open(md_path, "w") as f:
    f.write(text)
print(text)
print(f"Results: {json_path}, {md_path}, raw outputs in {raw}/")
PY

# A broken benchmark is loud: any response that was neither 2xx nor 3xx, in a
# measured or a warm-up run, fails the script (the report is written first).
BAD_RUNS="$(python3 -c 'import json, sys
print(sum(1 for l in open(sys.argv[1]) if l.strip()
          and json.loads(l).get("non_2xx", 0) + json.loads(l).get("warmup_non_2xx", 0) > 0))' \
    "$RUNS_JSONL")"
if ((BAD_RUNS > 0)); then
    echo "bench.sh: $BAD_RUNS run(s) got non-2xx/3xx responses: the benchmark is broken" \
        "(see $BASE.md)" >&2
    exit 1
fi
