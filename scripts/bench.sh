#!/usr/bin/env bash
# Benchmark shardpay and its peers with shardpay-bench (bench/, our HTTP/1.1
# load generator): the server pinned to --server-cpus, the client to
# --client-cpus (disjoint), server CPU time read from /proc, scenarios run
# over a sweep of shard counts and request rates, results as JSON, a Markdown
# table and PNG charts.
#
# Targets (--targets):
#   shardpay         this server: --shards N --cpus SERVER_CPUS, --config FILE,
#                    storage as FILE says (config/bench.toml: write-ahead log,
#                    an fdatasync per group-commit batch)
#   shardpay-nosync  the same binary and --config FILE with
#                    SHARDPAY_STORAGE_DURABILITY=none: the log is written but
#                    never fdatasync'd (what durability costs)
#   shardpay-scylla  the same binary and --config FILE with
#                    SHARDPAY_STORAGE_BACKEND=scylla: the state in the
#                    ScyllaDB/Cassandra cluster at $CASSANDRA_NODE (default
#                    127.0.0.1:9042; scripts/cassandra.sh start runs one), a
#                    201 once the database acknowledged the batch
#   axum             bench/peers/axum: shardpay's API on tokio + axum, --threads N
#   bare-glommio     bench/peers/bare-glommio: the floor, one glommio loop (1 core)
#   actix            bench/peers/actix: actix-web, one worker (1 core)
# Every server runs under `taskset -c SERVER_CPUS`, which pins all its
# threads (shardpay's blocking password-hashing threads, tokio's blocking
# pool and shardpay-scylla's database driver thread included). The database
# of shardpay-scylla is not started, stopped or pinned by bench.sh: its CPU
# time is not in the server's CPU-µs per request, and where it runs on the
# server CPUs it shows as "other load".
#
# shardpay's storage: every start of shardpay or shardpay-nosync gets a
# fresh, empty data directory (SHARDPAY_STORAGE_DATA_DIR), below one made by
# `mktemp -d` in ${TMPDIR:-/tmp} for the whole script; it is deleted when the
# server stops, and the whole of it on exit. So no server recovers an earlier
# run's state, and disk use does not grow from run to run. The log is on
# TMPDIR's file system: set TMPDIR to measure another disk (on tmpfs an
# fdatasync costs nothing; the report says which file system it was).
# Every start of shardpay-scylla gets a fresh keyspace, bench_<PID>_<K> (PID:
# this script's, K: 1, 2, ... per start), created just before the start by
# `shardpay db migrate --config FILE` with the server's environment
# (SHARDPAY_SCYLLA_NODES=$CASSANDRA_NODE, SHARDPAY_SCYLLA_KEYSPACE); its
# output heads the server log. The keyspaces are left in the cluster
# (shardpay has no command to drop one; scripts/cassandra.sh reset empties a
# local node). Before anything is built, the script checks that a contact
# point of CASSANDRA_NODE accepts TCP connections, and stops with exit
# status 1 if none does (start one with scripts/cassandra.sh start).
# Before and after each run bench.sh reads GET /metrics of a shardpay target:
# shardpay_log_frames_total and shardpay_log_batches_total summed over the
# shards; their growth over the run (set-up, warm-up and measured window: the
# client does all three in one invocation) gives records per fsync = frames /
# batches (for shardpay-nosync: records per write; for shardpay-scylla:
# frames per database batch, one logged batch per shard's write).
#
# Scenarios (--scenarios), shardpay-bench's, each request checked (status and
# body):
#   plaintext  GET /plaintext                               every target
#   json       GET /json                                    every target
#   pipelined  plaintext, --pipeline-depth requests in flight per
#              connection (HTTP/1.1 pipelining)             every target
#   balance    GET /v1/balances with a user's access token  shardpay*, axum
#   payments   POST /v1/payments, 1 minor unit, a new
#              Idempotency-Key per request                  shardpay*, axum
#   mixed      login=1,balance=30,me=30,payment=30,list=9   shardpay*, axum
#   signup     POST /v1/users (argon2 password hashing)     shardpay*, axum
# (shardpay*: shardpay, shardpay-nosync and shardpay-scylla.)
# A scenario a target does not serve is skipped with a note. Before its
# warm-up, each run signs up --users users, logs them in and funds them with
# the admin key (not measured; new users every run, so runs never share
# idempotency keys).
#
# Shards (--shards, a sweep): shardpay, shardpay-nosync and shardpay-scylla
# get --shards N (all on SERVER_CPUS), axum --threads N (tokio workers). bare-glommio and actix
# are single-core peers: they run at the first shard count of the sweep only
# (recorded as 1), and ratio tables compare them with every shard count of
# the others.
#
# Rates (--rates): "peak" is a closed-loop run (each connection sends its next
# request when an answer arrives: maximum throughput). "P%" is an open-loop
# run at P% of the peak requests/s measured in the same round for the same
# target, scenario and shards (so the peak run is always made first when a %
# is given). A plain number is an open-loop run at that many requests/s in
# all. Open-loop latency is measured from each request's due time (no
# coordinated omission); closed-loop percentiles describe only the requests
# the client chose to send.
#
# One server per (round, scenario, shards, target): start it fresh, wait for
# readiness, make the peak run and then the rate runs against it, stop it.
# Each run is
#   taskset -c CLIENT_CPUS target/release/shardpay-bench --cpus CLIENT_CPUS
#       --url http://127.0.0.1:PORT --scenario S -c CONNECTIONS [-d DEPTH]
#       [--rate R] --warmup W -D DURATION --users U --server-pid PID
#       --json FILE -q
# shardpay-bench reads the server's utime + stime (/proc/PID/stat, all
# threads) at both ends of the measured window: server CPU-µs per request,
# the figure of merit (on a 2-core machine the client itself can be the
# limit, so requests/s alone can hide differences), split into user and
# system time. It reports its own CPU-µs per request too, so the Markdown
# gives the client's capacity (requests/s per client core).
#
# The machine is noisy, so the whole matrix is run --rounds times,
# interleaved so that a drift in machine speed hits every target alike: for
# each round, each scenario, each shard count, each target, with the target
# order rotated every round (round 1: A B C, round 2: B C A, ...). Reported
# per (target, scenario, shards, rate): medians over rounds with min-max;
# ratios between targets ("shardpay / shardpay-nosync", "shardpay / axum" and
# every other pair present, in the order of the targets list above) of server
# CPU-µs/req and of requests/s are taken within a round and reported as
# median [min-max] over rounds. (shardpay-scylla is not in the ratio table
# yet: scripts/bench_report.py's TARGET_ORDER does not list it; its
# per-round figures are in the JSON.)
#
# Other load: the busy time of the server CPUs (/proc/stat: user + nice +
# system + irq + softirq) not spent in the server, over each run; more than
# 5% of a core means another process disturbed the run (flagged in the
# report).
#
# Errors: every answer is checked by shardpay-bench; any error (bad status or
# body, connection failure, failed set-up, a server that died) is listed in
# the report's errors section, and the script exits 1 once the report is
# written. A server that does not start (or a port already in use) stops the
# script at once with exit status 1; a bad command line exits 2.
#
# Usage: scripts/bench.sh [options]
#   --targets LIST        shardpay,shardpay-nosync,shardpay-scylla,axum,
#                         bare-glommio,actix (default shardpay,axum)
#   --scenarios LIST      plaintext,json,pipelined,balance,payments,mixed,signup
#                         (default mixed,payments)
#   --shards LIST         shard counts to sweep, e.g. 1,2,4 (default 1)
#   --rates LIST          peak, P% (of the peak) or requests/s, e.g.
#                         peak,50%,80% or 20000 (default peak)
#   --rounds N            rounds of the whole matrix (default 3)
#   --duration S          measured seconds per run (default 10)
#   --warmup S            warm-up seconds per run, not measured (default 2)
#   --connections N       client connections (default 64)
#   --pipeline-depth N    requests in flight per connection for pipelined
#                         (default 16)
#   --users N             benchmark users set up per run (default 100)
#   --shard-aware         shardpay targets only: connect each user's requests
#                         to its home shard's port (no forwarding between
#                         shards)
#   --cross-shard-ratio R share of payments to a user on another shard, 0 to 1
#                         (default: payees at random)
#   --server-cpus LIST    CPUs of the server, e.g. 1 or 2-3 (default 1)
#   --client-cpus LIST    CPUs of the client, disjoint from the server's; one
#                         client thread per CPU (default 0)
#   --port-base P         public ports: shardpay P, bare-glommio P+1, actix P+2,
#                         axum P+3, shardpay-nosync P+4, shardpay-scylla P+5
#                         (default 8080)
#   --shard-port-base Q   shard-aware ports Q..Q+shards-1 of the shardpay
#                         targets (one server runs at a time, so they share
#                         them; default 7100)
#   --config FILE         the configuration of the shardpay targets (default
#                         config/bench.toml; the defaults' limits would
#                         throttle a benchmark)
#   --name NAME           results name (default bench)
#   --no-build            do not run cargo build
#   -h, --help            this text
#
# Examples:
#   scripts/bench.sh                                  shardpay vs axum, mixed + payments
#   scripts/bench.sh --targets shardpay,shardpay-nosync --scenarios payments \
#       --shards 1,2 --name durability                what fsync costs, same rounds
#   scripts/bench.sh --targets shardpay,axum,bare-glommio,actix \
#       --scenarios plaintext,json,pipelined --name http    the HTTP layer alone
#   TMPDIR=/mnt/nvme/tmp scripts/bench.sh --targets shardpay,shardpay-nosync \
#       --scenarios payments                          the log on another disk
#   scripts/cassandra.sh start && scripts/bench.sh --scenarios payments \
#       --targets shardpay,shardpay-nosync,shardpay-scylla --rates peak,50% \
#       --name scylla                                 the log against the database
#
# Environment: CASSANDRA_NODE  shardpay-scylla's contact points, host:port,
#                              comma-separated (default 127.0.0.1:9042)
#
# Time: every run takes warm-up + duration plus its set-up (about 0.3 s, and
# for balance, payments and mixed about --users x 60 ms of password hashing
# divided by the server CPUs), every server about 1 s to start and stop
# (shardpay-scylla about 10 s: the keyspace's migration, the slot leases and
# loading the empty slots, releasing the leases at the stop). The
# script prints its estimate before starting; the default (3 rounds x 2
# targets x 2 scenarios x 1 shard count x 1 rate = 12 runs of 12 s, 100
# users) takes about 4 min.
#
# Results: bench/results/<YYYY-MM-DD>-<NAME>.json  summary: one entry per
#              (target, scenario, shards, rate), medians over rounds and each
#              round's figures,
#          bench/results/<YYYY-MM-DD>-<NAME>.md    the tables (also printed),
#          bench/results/<YYYY-MM-DD>-<NAME>-throughput.png, -latency.png,
#          bench/results/<YYYY-MM-DD>-<NAME>/      runs.jsonl (one line per run:
#              shardpay-bench's JSON report and what bench.sh knows), meta.txt,
#              and per round round-K/: server logs, client outputs and reports,
#              shardpay's /metrics before and after each run.
# Needs: cargo, taskset, curl, python3 (standard library only), timeout, mktemp;
# for shardpay-scylla a Cassandra or ScyllaDB node (scripts/cassandra.sh start).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMMAND_LINE="scripts/bench.sh"
for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./,=:%+-]+$ ]]; then
        COMMAND_LINE+=" $arg"
    else
        COMMAND_LINE+=" '${arg//\'/\'\\\'\'}'"
    fi
done

TARGETS="shardpay,axum"
SCENARIOS="mixed,payments"
SHARDS="1"
RATES="peak"
ROUNDS=3
DURATION=10
WARMUP=2
CONNECTIONS=64
PIPELINE_DEPTH=16
USERS=100
SHARD_AWARE=0
CROSS_SHARD_RATIO=""
SERVER_CPUS="1"
CLIENT_CPUS="0"
NAME="bench"
SHARDPAY_CONFIG="config/bench.toml"
BUILD=1

PORT_BASE=8080       # public ports: PORT_BASE + 0 (shardpay), 1, 2, 3 (peers), 4 (shardpay-nosync), 5 (shardpay-scylla)
SHARD_PORT_BASE=7100 # shard-aware ports of shardpay targets: SHARD_PORT_BASE + 0..shards-1
SHARD_COUNT_MAX=1024 # shardpay's limit (SHARD_COUNT_LIMIT in src/config.rs)
THREADS_MAX=1024     # axum's worker threads, same bound
CONNECTIONS_MAX=100000 # shardpay-bench's CONNECTIONS_MAX
DEPTH_MAX=1024         # shardpay-bench's DEPTH_MAX
USERS_MAX=1000000      # shardpay-bench's USERS_MAX
ROUNDS_MAX=100
SECONDS_MAX=3600     # per warm-up or measured run
RATE_PERCENT_MAX=1000
READY_TIMEOUT_S=15
STOP_TIMEOUT_S=5
# shardpay-scylla: taking 256 slot leases by lightweight transaction and loading every slot from
# the database at start (about 6 s for 1 shard on an idle local node), releasing the leases at stop.
SCYLLA_READY_TIMEOUT_S=120
SCYLLA_STOP_TIMEOUT_S=30
MIGRATE_TIMEOUT_S=120 # one `shardpay db migrate` of a new keyspace (about 4 s on a local node)
SCYLLA_START_S=10     # estimate: migration, start and stop of one shardpay-scylla server
CASSANDRA_NODE="${CASSANDRA_NODE:-127.0.0.1:9042}" # shardpay-scylla's contact points
METRICS_TIMEOUT_S=10 # one GET /metrics (every shard answers over the mesh)
BUILD_TIMEOUT_S=3600
SETUP_BUDGET_S=120   # client time beyond warm-up + duration before it is killed
RUN_SETUP_MS=300     # estimate: a client run's start, discovery and exit
USER_SETUP_MS=60     # estimate: signup, login and deposit of one user, per server CPU
OTHER_LOAD_MAX=0.05  # fraction of a core: above it a run was disturbed

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

die() {
    echo "bench.sh: $*" >&2
    exit 1
}

# A bad command line: the message, a hint, exit status 2.
bad_arg() {
    echo "bench.sh: $*" >&2
    echo "bench.sh: see scripts/bench.sh --help" >&2
    exit 2
}

need_value() {
    [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || bad_arg "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --targets) need_value "$@"; TARGETS="$2"; shift 2 ;;
        --targets=*) TARGETS="${1#*=}"; shift ;;
        --scenarios) need_value "$@"; SCENARIOS="$2"; shift 2 ;;
        --scenarios=*) SCENARIOS="${1#*=}"; shift ;;
        --shards) need_value "$@"; SHARDS="$2"; shift 2 ;;
        --shards=*) SHARDS="${1#*=}"; shift ;;
        --rates) need_value "$@"; RATES="$2"; shift 2 ;;
        --rates=*) RATES="${1#*=}"; shift ;;
        --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
        --rounds=*) ROUNDS="${1#*=}"; shift ;;
        --duration) need_value "$@"; DURATION="$2"; shift 2 ;;
        --duration=*) DURATION="${1#*=}"; shift ;;
        --warmup) need_value "$@"; WARMUP="$2"; shift 2 ;;
        --warmup=*) WARMUP="${1#*=}"; shift ;;
        --connections) need_value "$@"; CONNECTIONS="$2"; shift 2 ;;
        --connections=*) CONNECTIONS="${1#*=}"; shift ;;
        --pipeline-depth) need_value "$@"; PIPELINE_DEPTH="$2"; shift 2 ;;
        --pipeline-depth=*) PIPELINE_DEPTH="${1#*=}"; shift ;;
        --users) need_value "$@"; USERS="$2"; shift 2 ;;
        --users=*) USERS="${1#*=}"; shift ;;
        --shard-aware) SHARD_AWARE=1; shift ;;
        --cross-shard-ratio) need_value "$@"; CROSS_SHARD_RATIO="$2"; shift 2 ;;
        --cross-shard-ratio=*) CROSS_SHARD_RATIO="${1#*=}"; shift ;;
        --server-cpus) need_value "$@"; SERVER_CPUS="$2"; shift 2 ;;
        --server-cpus=*) SERVER_CPUS="${1#*=}"; shift ;;
        --client-cpus) need_value "$@"; CLIENT_CPUS="$2"; shift 2 ;;
        --client-cpus=*) CLIENT_CPUS="${1#*=}"; shift ;;
        --name) need_value "$@"; NAME="$2"; shift 2 ;;
        --name=*) NAME="${1#*=}"; shift ;;
        --port-base) need_value "$@"; PORT_BASE="$2"; shift 2 ;;
        --port-base=*) PORT_BASE="${1#*=}"; shift ;;
        --shard-port-base) need_value "$@"; SHARD_PORT_BASE="$2"; shift 2 ;;
        --shard-port-base=*) SHARD_PORT_BASE="${1#*=}"; shift ;;
        --config) need_value "$@"; SHARDPAY_CONFIG="$2"; shift 2 ;;
        --config=*) SHARDPAY_CONFIG="${1#*=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage 0 ;;
        *) bad_arg "unknown argument: $1" ;;
    esac
done

# ------------------------------------------------------------ validation --

# int_in_range VALUE MIN MAX: VALUE is a whole number (no leading zero) from MIN to MAX.
int_in_range() { [[ "$1" =~ ^(0|[1-9][0-9]{0,8})$ ]] && (($1 >= $2 && $1 <= $3)); }
# A number of seconds: 0 or more (warm-up) / more than 0 (duration), at most SECONDS_MAX.
seconds_ok() {
    [[ "$1" =~ ^[0-9]{1,6}(\.[0-9]{1,3})?$ ]] &&
        python3 -c 'import sys; v = float(sys.argv[1]); sys.exit(0 if float(sys.argv[2]) <= v <= float(sys.argv[3]) and (v > 0 or sys.argv[2] == "0") else 1)' \
            "$1" "$2" "$SECONDS_MAX"
}

int_in_range "$ROUNDS" 1 "$ROUNDS_MAX" || bad_arg "--rounds must be an integer from 1 to $ROUNDS_MAX"
seconds_ok "$DURATION" 0.001 || bad_arg "--duration must be a number of seconds above 0, at most $SECONDS_MAX (e.g. 10 or 2.5)"
seconds_ok "$WARMUP" 0 || bad_arg "--warmup must be a number of seconds from 0 to $SECONDS_MAX"
int_in_range "$CONNECTIONS" 1 "$CONNECTIONS_MAX" ||
    bad_arg "--connections must be an integer from 1 to $CONNECTIONS_MAX"
int_in_range "$PIPELINE_DEPTH" 2 "$DEPTH_MAX" ||
    bad_arg "--pipeline-depth must be an integer from 2 to $DEPTH_MAX"
int_in_range "$USERS" 1 "$USERS_MAX" || bad_arg "--users must be an integer from 1 to $USERS_MAX"
if [[ -n "$CROSS_SHARD_RATIO" ]]; then
    [[ "$CROSS_SHARD_RATIO" =~ ^(0(\.[0-9]+)?|1(\.0+)?|\.[0-9]+)$ ]] ||
        bad_arg "--cross-shard-ratio must be a number from 0 to 1 (e.g. 0.5)"
fi
int_in_range "$PORT_BASE" 1024 65530 ||
    bad_arg "--port-base must be a port from 1024 to 65530 (it and the next five are used)"
int_in_range "$SHARD_PORT_BASE" 1024 65535 ||
    bad_arg "--shard-port-base must be a port from 1024 to 65535"
[[ "$NAME" =~ ^[A-Za-z0-9._-]{1,100}$ && "$NAME" != .* ]] ||
    bad_arg "--name may only contain letters, digits, '.', '_' and '-' (at most 100, not starting with '.')"
[[ -f "$SHARDPAY_CONFIG" && -r "$SHARDPAY_CONFIG" ]] ||
    bad_arg "--config: '$SHARDPAY_CONFIG' is not a readable file"

# split_list NAME VALUE: the comma list VALUE into the array NAME, refusing
# empty items and duplicates.
split_list() {
    local -n out="$1"
    local option="$2" value="$3" item
    [[ -n "$value" && "$value" != *,, && "$value" != ,* && "$value" != *, && "$value" != *,,* ]] ||
        bad_arg "$option: empty item in '$value'"
    IFS=',' read -r -a out <<<"$value"
    [[ -z "$(printf '%s\n' "${out[@]}" | sort | uniq -d)" ]] || bad_arg "$option has duplicates: $value"
    for item in "${out[@]}"; do
        [[ -n "$item" ]] || bad_arg "$option: empty item in '$value'"
    done
}

split_list TARGET_LIST --targets "$TARGETS"
split_list SCENARIO_LIST --scenarios "$SCENARIOS"
split_list SHARD_LIST --shards "$SHARDS"
split_list RATE_LIST --rates "$RATES"

for t in "${TARGET_LIST[@]}"; do
    case "$t" in shardpay|shardpay-nosync|shardpay-scylla|axum|bare-glommio|actix) ;;
        *) bad_arg "unknown target '$t' (shardpay, shardpay-nosync, shardpay-scylla, axum, bare-glommio, actix)" ;; esac
done
for s in "${SCENARIO_LIST[@]}"; do
    case "$s" in plaintext|json|pipelined|balance|payments|mixed|signup) ;;
        *) bad_arg "unknown scenario '$s' (plaintext, json, pipelined, balance, payments, mixed, signup)" ;; esac
done
SHARDS_MAX=0
for n in "${SHARD_LIST[@]}"; do
    int_in_range "$n" 1 "$SHARD_COUNT_MAX" || bad_arg "--shards: '$n' is not an integer from 1 to $SHARD_COUNT_MAX"
    if ((n > SHARDS_MAX)); then SHARDS_MAX=$n; fi
done
# The rates in the order they run: peak first whenever it is asked for or a % needs it.
RUN_RATES=()
HAS_PERCENT=0
for r in "${RATE_LIST[@]}"; do
    if [[ "$r" == peak ]]; then
        continue
    elif [[ "$r" =~ ^([0-9]{1,4}(\.[0-9]{1,2})?)%$ ]]; then
        python3 -c 'import sys; v = float(sys.argv[1]); sys.exit(0 if 0 < v <= float(sys.argv[2]) else 1)' \
            "${BASH_REMATCH[1]}" "$RATE_PERCENT_MAX" ||
            bad_arg "--rates: '$r' must be above 0% and at most $RATE_PERCENT_MAX%"
        HAS_PERCENT=1
    elif [[ "$r" =~ ^[0-9]{1,9}(\.[0-9]{1,3})?$ ]]; then
        python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$r" ||
            bad_arg "--rates: '$r' must be more than 0 requests/s"
    else
        bad_arg "--rates: '$r' is neither peak, a percentage of the peak (e.g. 50%) nor requests/s (e.g. 20000)"
    fi
    RUN_RATES+=("$r")
done
if [[ " ${RATE_LIST[*]} " == *" peak "* ]] || ((HAS_PERCENT)); then
    RUN_RATES=(peak "${RUN_RATES[@]+"${RUN_RATES[@]}"}")
fi

# expand_cpus NAME LIST: "0-2,5" into the array NAME (0 1 2 5); every CPU must be online.
expand_cpus() {
    local -n cpus_out="$1"
    local option="$2" list="$3" part first last c
    local -a parts
    cpus_out=()
    [[ "$list" =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
        bad_arg "$option: '$list' is not a CPU list (e.g. 1, 0-3 or 0,2)"
    IFS=',' read -r -a parts <<<"$list"
    for part in "${parts[@]}"; do
        first="${part%-*}" last="${part#*-}"
        ((10#$first <= 10#$last && 10#$last < 4096)) || bad_arg "$option: bad CPU range '$part'"
        for ((c = 10#$first; c <= 10#$last; c++)); do
            grep -q "^cpu$c " /proc/stat || bad_arg "$option: CPU $c is not online (online: $(online_cpus))"
            [[ " ${cpus_out[*]} " != *" $c "* ]] || bad_arg "$option: CPU $c is listed twice"
            cpus_out+=("$c")
        done
    done
}
online_cpus() { awk '$1 ~ /^cpu[0-9]+$/ { sub("cpu", "", $1); printf "%s%s", sep, $1; sep = "," }' /proc/stat; }

expand_cpus SERVER_CPU_LIST --server-cpus "$SERVER_CPUS"
expand_cpus CLIENT_CPU_LIST --client-cpus "$CLIENT_CPUS"
for c in "${SERVER_CPU_LIST[@]}"; do
    [[ " ${CLIENT_CPU_LIST[*]} " != *" $c "* ]] ||
        bad_arg "--server-cpus $SERVER_CPUS and --client-cpus $CLIENT_CPUS share CPU $c: they must be disjoint, or the client's load would count as the server's"
done
# The canonical form taskset and both programs get.
SERVER_CPUS="$(IFS=,; echo "${SERVER_CPU_LIST[*]}")"
CLIENT_CPUS="$(IFS=,; echo "${CLIENT_CPU_LIST[*]}")"
CLIENT_THREADS=${#CLIENT_CPU_LIST[@]}
((CONNECTIONS >= CLIENT_THREADS)) ||
    bad_arg "--connections $CONNECTIONS is fewer than the client's $CLIENT_THREADS threads (one per --client-cpus CPU)"

# Whether TARGET is the shardpay binary (any storage): shards, shard-aware
# ports, the API scenarios and log metrics.
is_shardpay() { [[ "$1" == shardpay || "$1" == shardpay-nosync || "$1" == shardpay-scylla ]]; }
# Whether TARGET keeps the embedded write-ahead log: a fresh data directory per start.
uses_log() { [[ "$1" == shardpay || "$1" == shardpay-nosync ]]; }
# Whether TARGET serves SCENARIO: the API scenarios need shardpay's routes.
serves() {
    case "$2" in
        plaintext|json|pipelined) return 0 ;;
        *) is_shardpay "$1" || [[ "$1" == axum ]] ;;
    esac
}
# Whether any of --targets is a shardpay target.
any_shardpay() {
    local t
    for t in "${TARGET_LIST[@]}"; do
        if is_shardpay "$t"; then return 0; fi
    done
    return 1
}
# Whether any of --targets keeps the write-ahead log (needs data directories).
any_log() {
    local t
    for t in "${TARGET_LIST[@]}"; do
        if uses_log "$t"; then return 0; fi
    done
    return 1
}
# Whether --targets has shardpay-scylla (needs the database).
any_scylla() { [[ " ${TARGET_LIST[*]} " == *" shardpay-scylla "* ]]; }
single_core() { [[ "$1" == bare-glommio || "$1" == actix ]]; }
# Scenarios whose runs sign users up, log them in and fund them first.
needs_users() { [[ "$1" == balance || "$1" == payments || "$1" == mixed ]]; }

NOTES=() # for the report
note() {
    echo ">> note: $*" >&2
    NOTES+=("$*")
}

if ((HAS_PERCENT)) && [[ " ${RATE_LIST[*]} " != *" peak "* ]]; then
    note "--rates has a percentage of the peak: every server's peak run is made first (and reported)"
fi

RUNS_PER_SERVER=${#RUN_RATES[@]}
SERVERS_PER_ROUND=0
RUNS_PER_ROUND=0
ESTIMATE_PER_ROUND_S=0
for s in "${SCENARIO_LIST[@]}"; do
    served=0
    for t in "${TARGET_LIST[@]}"; do
        if ! serves "$t" "$s"; then
            note "$t does not serve $s (the API scenarios need shardpay, shardpay-nosync, shardpay-scylla or axum): skipped"
            continue
        fi
        served=1
        for n in "${SHARD_LIST[@]}"; do
            if single_core "$t" && [[ "$n" != "${SHARD_LIST[0]}" ]]; then continue; fi
            SERVERS_PER_ROUND=$((SERVERS_PER_ROUND + 1))
            RUNS_PER_ROUND=$((RUNS_PER_ROUND + RUNS_PER_SERVER))
            setup_ms=$RUN_SETUP_MS
            if needs_users "$s"; then
                setup_ms=$((setup_ms + USERS * USER_SETUP_MS / ${#SERVER_CPU_LIST[@]}))
            fi
            start_s=1
            [[ "$t" != shardpay-scylla ]] || start_s=$SCYLLA_START_S
            ESTIMATE_PER_ROUND_S=$(python3 -c 'import sys; a, b, r, w, d, s = map(float, sys.argv[1:]); print(a + b + r * (w + d + s / 1000))' \
                "$ESTIMATE_PER_ROUND_S" "$start_s" "$RUNS_PER_SERVER" "$WARMUP" "$DURATION" "$setup_ms")
        done
    done
    ((served)) || note "no target among --targets serves $s"
done
((RUNS_PER_ROUND > 0)) || bad_arg "nothing to run: no target serves the scenarios (balance, payments, mixed and signup need shardpay, shardpay-nosync, shardpay-scylla or axum)"
for t in "${TARGET_LIST[@]}"; do
    if single_core "$t" && ((${#SHARD_LIST[@]} > 1)); then
        note "$t is a single-core peer: it runs at the first shard count (${SHARD_LIST[0]}) only, recorded as 1 core"
    fi
done
if ((SHARD_AWARE)) && ! any_shardpay; then
    note "--shard-aware applies to the shardpay targets only, none of which is among the targets: ignored"
fi
if ((SHARD_AWARE)) && ((CONNECTIONS < SHARDS_MAX)); then
    bad_arg "--shard-aware needs at least one connection per shard: --connections $CONNECTIONS < $SHARDS_MAX shards"
fi
[[ " ${SCENARIO_LIST[*]} " != *" pipelined "* ]] || [[ "$PIPELINE_DEPTH" == 16 ]] ||
    note "pipelined runs $PIPELINE_DEPTH requests deep per connection"

for tool in cargo taskset curl python3 timeout getconf mktemp; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done
CLK_TCK="$(getconf CLK_TCK)"

# ---------------------------------------------------------------- targets --

declare -A PORT=([shardpay]=$PORT_BASE [bare-glommio]=$((PORT_BASE + 1)) [actix]=$((PORT_BASE + 2))
    [axum]=$((PORT_BASE + 3)) [shardpay-nosync]=$((PORT_BASE + 4)) [shardpay-scylla]=$((PORT_BASE + 5)))
declare -A READY_PATH=([shardpay]=/readyz [shardpay-nosync]=/readyz [shardpay-scylla]=/readyz
    [axum]=/readyz [bare-glommio]=/plaintext [actix]=/plaintext)
declare -A PACKAGE=([shardpay]=shardpay [shardpay-nosync]=shardpay [shardpay-scylla]=shardpay
    [axum]=peer-axum [bare-glommio]=peer-bare-glommio [actix]=peer-actix)

# The shard-aware ports of the shardpay targets (the same ports: one server
# runs at a time, and each is stopped, and reaped, before the next starts)
# must not reach past the port range, nor into a target's public port.
SHARD_PORT_LAST=$((SHARD_PORT_BASE + SHARDS_MAX - 1))
if any_shardpay; then
    ((SHARD_PORT_LAST <= 65535)) || bad_arg "--shards $SHARDS_MAX: shard-aware ports from $SHARD_PORT_BASE pass 65535"
    for p in "${PORT[@]}"; do
        ((p < SHARD_PORT_BASE || p > SHARD_PORT_LAST)) ||
            bad_arg "--shards $SHARDS_MAX: shard-aware ports $SHARD_PORT_BASE..$SHARD_PORT_LAST would include the public port $p (see --port-base, --shard-port-base)"
    done
fi
for t in "${TARGET_LIST[@]}"; do
    if [[ "$t" == axum ]]; then
        for n in "${SHARD_LIST[@]}"; do
            ((n <= THREADS_MAX)) || bad_arg "--shards $n: axum takes at most $THREADS_MAX threads"
        done
    fi
done

# shards_label TARGET N: what N means for TARGET, for the report.
shards_label() {
    local s=""
    case "$1" in
        shardpay|shardpay-nosync|shardpay-scylla) ((${2} == 1)) || s=s; echo "$2 shard$s" ;;
        axum) ((${2} == 1)) || s=s; echo "$2 thread$s" ;;
        *) echo "1 core" ;;
    esac
}

# scylla_env KEYSPACE: sets SCYLLA_ENV to the environment (an `env` command
# prefix) of shardpay-scylla and of its `shardpay db migrate`.
scylla_env() {
    SCYLLA_ENV=(env -u SHARDPAY_STORAGE_DURABILITY -u SHARDPAY_STORAGE_DATA_DIR
        SHARDPAY_STORAGE_BACKEND=scylla SHARDPAY_SCYLLA_NODES="$CASSANDRA_NODE"
        SHARDPAY_SCYLLA_KEYSPACE="$1")
}

# Sets CMD to the command line of TARGET with N shards (threads); a shardpay
# target keeps its log in DATA_DIR (shardpay, shardpay-nosync) or its state in
# the keyspace KEYSPACE (shardpay-scylla). The storage backend of shardpay and
# shardpay-nosync, and shardpay's durability, are --config's, even if the
# environment says otherwise.
target_command() {
    local target="$1" n="$2" data_dir="${3:-}" keyspace="${4:-}"
    case "$target" in
        shardpay|shardpay-nosync|shardpay-scylla)
            if [[ "$target" == shardpay-scylla ]]; then
                scylla_env "$keyspace"
                CMD=("${SCYLLA_ENV[@]}")
            elif [[ "$target" == shardpay-nosync ]]; then
                CMD=(env -u SHARDPAY_STORAGE_BACKEND SHARDPAY_STORAGE_DATA_DIR="$data_dir"
                    SHARDPAY_STORAGE_DURABILITY=none)
            else
                CMD=(env -u SHARDPAY_STORAGE_BACKEND -u SHARDPAY_STORAGE_DURABILITY
                    SHARDPAY_STORAGE_DATA_DIR="$data_dir")
            fi
            CMD+=(taskset -c "$SERVER_CPUS" target/release/shardpay serve
                --config "$SHARDPAY_CONFIG" --shards "$n" --cpus "$SERVER_CPUS"
                --shard-port-base "$SHARD_PORT_BASE"
                --listen "127.0.0.1:${PORT[$target]}") ;;
        axum)
            CMD=(taskset -c "$SERVER_CPUS" target/release/peer-axum --threads "$n"
                --listen "127.0.0.1:${PORT[axum]}") ;;
        bare-glommio)
            CMD=(taskset -c "$SERVER_CPUS" target/release/peer-bare-glommio --cpu "${SERVER_CPU_LIST[0]}"
                --listen "127.0.0.1:${PORT[bare-glommio]}") ;;
        actix)
            CMD=(taskset -c "$SERVER_CPUS" target/release/peer-actix
                --listen "127.0.0.1:${PORT[actix]}") ;;
    esac
}

# ------------------------------------------------------------ processes --

STARTED_PIDS=() # servers and clients still to be stopped on exit
SERVER_PID=""
DATA_PARENT=""     # mktemp -d: every shardpay server's data directory is made below it
SERVER_DATA_DIR="" # the running shardpay server's data directory
DATA_DIRS_MADE=0
KEYSPACES_MADE=0   # shardpay-scylla's keyspaces: bench_<$$>_<K>, K = 1, 2, ...
KEYSPACES=()       # for meta.txt
SCYLLA_PIDS=()     # shardpay-scylla servers: a longer stop (they release their leases)

# stop_pid PID: SIGTERM, up to STOP_TIMEOUT_S (shardpay-scylla:
# SCYLLA_STOP_TIMEOUT_S) to exit, then SIGKILL; reaps it.
stop_pid() {
    local pid="$1" i limit_s="$STOP_TIMEOUT_S"
    [[ " ${SCYLLA_PIDS[*]-} " != *" $pid "* ]] || limit_s="$SCYLLA_STOP_TIMEOUT_S"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < limit_s * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo ">> process $pid did not exit within ${limit_s}s of SIGTERM: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# forget_pid PID: PID is gone (reaped); cleanup no longer needs to stop it.
forget_pid() {
    local remaining=() p
    for p in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
        [[ "$p" == "$1" ]] || remaining+=("$p")
    done
    STARTED_PIDS=("${remaining[@]+"${remaining[@]}"}")
}

# remove_data_dir: deletes the data directory of the shardpay server just
# stopped (or dead), if it had one.
remove_data_dir() {
    if [[ -n "$SERVER_DATA_DIR" ]]; then
        rm -rf -- "$SERVER_DATA_DIR"
        SERVER_DATA_DIR=""
    fi
}

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
        stop_pid "$pid"
    done
    # The servers are gone: no log is still being written.
    if [[ -n "$DATA_PARENT" ]]; then rm -rf -- "$DATA_PARENT"; fi
}
trap cleanup EXIT
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench.sh: terminated" >&2; exit 143' TERM

port_in_use() {
    # A successful TCP connect means something listens there.
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# cassandra_reachable: some contact point of CASSANDRA_NODE accepts a TCP
# connection (the migration then shows whether it speaks CQL).
cassandra_reachable() {
    local -a nodes
    local node host port
    IFS=',' read -r -a nodes <<<"$CASSANDRA_NODE"
    for node in "${nodes[@]}"; do
        node="${node// /}"
        host="${node%:*}" port="${node##*:}"
        host="${host#[}" host="${host%]}"
        # shellcheck disable=SC2016 # $0 and $1 are the inner shell's: host and port
        if timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; then
            return 0
        fi
    done
    return 1
}

# start_server TARGET N LOG: starts the server, sets SERVER_PID, waits until
# it answers its readiness path.
start_server() {
    local target="$1" n="$2" log="$3" port="${PORT[$1]}" p
    # glommio binds with SO_REUSEPORT: a stale server on the port would share
    # the connections with the new one, so refuse to start instead.
    port_in_use "$port" && die "port $port ($target) is already in use (a stale server, or another benchmark?): stop it first, or choose other ports with --port-base"
    if is_shardpay "$target"; then
        # Its shard-aware ports (bound without SO_REUSEPORT) must be free too.
        for ((p = SHARD_PORT_BASE; p < SHARD_PORT_BASE + n; p++)); do
            port_in_use "$p" && die "port $p ($target's shard-aware port) is already in use: stop its user first, or choose other ports with --shard-port-base"
        done
    fi
    local keyspace="" ready_timeout_s="$READY_TIMEOUT_S"
    : >"$log"
    if uses_log "$target"; then
        # A fresh, empty log: nothing of an earlier server to recover.
        DATA_DIRS_MADE=$((DATA_DIRS_MADE + 1))
        SERVER_DATA_DIR="$DATA_PARENT/$DATA_DIRS_MADE-$target-$n"
        mkdir -- "$SERVER_DATA_DIR" || die "could not make the data directory $SERVER_DATA_DIR"
    elif [[ "$target" == shardpay-scylla ]]; then
        # A fresh, empty keyspace: nothing of an earlier server to load, no lease held.
        KEYSPACES_MADE=$((KEYSPACES_MADE + 1))
        keyspace="bench_$$_$KEYSPACES_MADE"
        KEYSPACES+=("$keyspace")
        ready_timeout_s="$SCYLLA_READY_TIMEOUT_S"
        scylla_env "$keyspace"
        local -a migrate=("${SCYLLA_ENV[@]}" target/release/shardpay db migrate --config "$SHARDPAY_CONFIG")
        echo ">> creating keyspace $keyspace: ${migrate[*]}" >&2
        echo "\$ ${migrate[*]}" >>"$log"
        if ! timeout --kill-after=5 "$MIGRATE_TIMEOUT_S" "${migrate[@]}" >>"$log" 2>&1; then
            tail -n 5 "$log" >&2 || true
            if ! cassandra_reachable; then
                die "Cassandra is not reachable at $CASSANDRA_NODE (CASSANDRA_NODE): start it with scripts/cassandra.sh start (log: $log)"
            fi
            die "shardpay db migrate failed for keyspace $keyspace at $CASSANDRA_NODE (log: $log); is the node healthy? (scripts/cassandra.sh status)"
        fi
    fi
    target_command "$target" "$n" "$SERVER_DATA_DIR" "$keyspace"
    echo ">> starting $target: ${CMD[*]}" >&2
    echo "\$ ${CMD[*]}" >>"$log"
    "${CMD[@]}" >>"$log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
    [[ "$target" != shardpay-scylla ]] || SCYLLA_PIDS+=("$SERVER_PID")
    local url="http://127.0.0.1:${port}${READY_PATH[$target]}"
    local deadline=$((SECONDS + ready_timeout_s))
    until curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            die "$target exited during start-up (log: $log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$log" >&2 || true
            die "$target not ready after ${ready_timeout_s}s at $url (log: $log)"
        fi
        sleep 0.1
    done
}

# utime + stime of a process (all its threads), in clock ticks; empty if it is gone.
process_ticks() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    rest="${stat##*) }" # comm may contain spaces: cut after the last ')'
    local -a f
    read -r -a f <<<"$rest"
    # f[0] is field 3 (state), so field 14 (utime) is f[11], 15 (stime) f[12].
    echo $((f[11] + f[12]))
}

# Busy time of the server CPUs (every process, kernel threads, irq), clock
# ticks: user + nice + system + irq + softirq of their "cpuN" lines of /proc/stat.
server_cpus_busy_ticks() {
    awk -v cpus=" ${SERVER_CPU_LIST[*]} " '
        $1 ~ /^cpu[0-9]+$/ { n = substr($1, 4); if (index(cpus, " " n " ")) { busy += $2 + $3 + $4 + $7 + $8; found++ } }
        END { if (!found) exit 1; print busy }' /proc/stat
}

now_ns() { date +%s%N; }

# scrape_metrics PORT FILE: GET /metrics into FILE; no FILE if that fails.
scrape_metrics() {
    curl -fsS --max-time "$METRICS_TIMEOUT_S" -o "$2" "http://127.0.0.1:$1/metrics" 2>/dev/null ||
        rm -f -- "$2"
}

# ------------------------------------------------------------- database --

# shardpay-scylla needs its database before anything is built or run.
if any_scylla; then
    [[ "$CASSANDRA_NODE" =~ ^[[:space:]]*([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}([[:space:]]*,[[:space:]]*([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5})*[[:space:]]*$ ]] ||
        die "CASSANDRA_NODE='$CASSANDRA_NODE' is not a list of host:port contact points (e.g. 127.0.0.1:9042)"
    cassandra_reachable ||
        die "shardpay-scylla: Cassandra is not reachable at $CASSANDRA_NODE (CASSANDRA_NODE): start it with scripts/cassandra.sh start (or set CASSANDRA_NODE to a running node), or leave shardpay-scylla out of --targets"
    note "shardpay-scylla: the same binary and --config with SHARDPAY_STORAGE_BACKEND=scylla, contact points $CASSANDRA_NODE, a fresh keyspace bench_$$_K per server start (shardpay db migrate); the database is not pinned by bench.sh, so its CPU is not in the server CPU-µs/req and shows as other load where it runs on the server CPUs; records/fsync = frames per database batch; ratios with it are not in the Ratios table (scripts/bench_report.py's TARGET_ORDER does not list it)"
fi

# ---------------------------------------------------------------- build --

if ((BUILD)); then
    build_args=(-p shardpay-bench)
    for t in "${TARGET_LIST[@]}"; do
        [[ " ${build_args[*]} " == *" ${PACKAGE[$t]} "* ]] || build_args+=(-p "${PACKAGE[$t]}")
    done
    echo ">> cargo build --release ${build_args[*]}" >&2
    timeout "$BUILD_TIMEOUT_S" cargo build --release "${build_args[@]}" >&2 || die "cargo build failed"
fi
for bin in shardpay-bench shardpay-bench-chart; do
    [[ -x "target/release/$bin" ]] || die "target/release/$bin missing (build it or drop --no-build)"
done
for t in "${TARGET_LIST[@]}"; do
    [[ -x "target/release/${PACKAGE[$t]}" ]] ||
        die "target/release/${PACKAGE[$t]} missing (cargo build --release -p ${PACKAGE[$t]}, or drop --no-build)"
done

# ---------------------------------------------------------------- runs --

DAY="$(date +%F)"
BASE="bench/results/$DAY-$NAME"
RUN_DIR="$BASE"
mkdir -p "$RUN_DIR"
RUNS_JSONL="$RUN_DIR/runs.jsonl"
: >"$RUNS_JSONL"
rm -f "$BASE.json" "$BASE.md" "$BASE-throughput.png" "$BASE-latency.png"
REPORTER=(python3 scripts/bench_report.py)

if any_log; then
    DATA_PARENT="$(mktemp -d "${TMPDIR:-/tmp}/shardpay-bench.XXXXXX")" ||
        die "could not make a temporary directory in ${TMPDIR:-/tmp} for shardpay's data"
    DATA_FS="$(stat -f -c %T -- "$DATA_PARENT" 2>/dev/null || echo unknown)"
    if [[ "$DATA_FS" == tmpfs || "$DATA_FS" == ramfs ]]; then
        note "shardpay's logs are on $DATA_FS (${TMPDIR:-/tmp}): an fdatasync costs nothing there, so shardpay's durability is not measured; set TMPDIR to a directory on a disk"
    fi
fi

TOTAL_RUNS=$((ROUNDS * RUNS_PER_ROUND))
ESTIMATE_S=$(python3 -c 'import sys; print(round(float(sys.argv[1]) * int(sys.argv[2])))' "$ESTIMATE_PER_ROUND_S" "$ROUNDS")
if ((ESTIMATE_S < 120)); then ESTIMATE="$ESTIMATE_S s"; else ESTIMATE="$(((ESTIMATE_S + 59) / 60)) min"; fi
echo ">> $ROUNDS round(s) x $SERVERS_PER_ROUND server(s) x $RUNS_PER_SERVER run(s) (${RUN_RATES[*]}) = $TOTAL_RUNS runs" \
    "of ${WARMUP}s warm-up + ${DURATION}s measured, plus set-up: about $ESTIMATE" >&2

# run_label RATE: a file-name-safe form of a rate label.
run_label() {
    case "$1" in
        peak) echo peak ;;
        *%) echo "${1%\%}pct" ;;
        *) echo "${1}rps" ;;
    esac
}

# measure_server ROUND TARGET SCENARIO N: one fresh server, its runs (peak
# first, then the rates), one runs.jsonl line per run, the server stopped.
SEQ=0
measure_server() {
    local round="$1" target="$2" scenario="$3" n="$4"
    local dir="$RUN_DIR/round-$round" stem="$target-$scenario-$n"
    local log="$dir/$stem.server.log" port="${PORT[$2]}" peak_rps="" server_died=0
    local recorded_shards="$n"
    if single_core "$target"; then recorded_shards=1; fi
    mkdir -p "$dir"
    start_server "$target" "$n" "$log"

    local rate
    for rate in "${RUN_RATES[@]}"; do
        SEQ=$((SEQ + 1))
        local label tag out report offered="" mode=closed note="" metrics_before="" metrics_after=""
        label="$(run_label "$rate")"
        out="$dir/$stem-$label.client.txt" report="$dir/$stem-$label.json"
        if is_shardpay "$target"; then
            metrics_before="$dir/$stem-$label.metrics-before.txt"
            metrics_after="$dir/$stem-$label.metrics-after.txt"
        fi
        tag="[$SEQ/$TOTAL_RUNS] round $round: $target / $scenario / $(shards_label "$target" "$recorded_shards") / $rate"
        rm -f -- "$report" ${metrics_before:+"$metrics_before"} ${metrics_after:+"$metrics_after"}
        case "$rate" in
            peak) ;;
            *%)
                mode=open
                if [[ -n "$peak_rps" ]]; then
                    offered="$(python3 -c 'import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]) / 100)))' \
                        "$peak_rps" "${rate%\%}")"
                else
                    note="no peak figure in this round to take $rate of (the peak run failed): not run"
                fi ;;
            *) mode=open offered="$rate" ;;
        esac
        if ((server_died)); then
            note="the server had died in an earlier run: not run"
        fi

        # pipelined is shardpay-bench's plaintext, several requests in flight per connection.
        local client_scenario="$scenario"
        [[ "$scenario" != pipelined ]] || client_scenario=plaintext
        local -a client=(taskset -c "$CLIENT_CPUS" target/release/shardpay-bench --cpus "$CLIENT_CPUS"
            --url "http://127.0.0.1:$port" --scenario "$client_scenario" -c "$CONNECTIONS")
        [[ "$scenario" != pipelined ]] || client+=(-d "$PIPELINE_DEPTH")
        client+=(--warmup "$WARMUP" -D "$DURATION" --users "$USERS")
        [[ -z "$offered" ]] || client+=(--rate "$offered")
        if ((SHARD_AWARE)) && is_shardpay "$target"; then client+=(--shard-aware); fi
        [[ -z "$CROSS_SHARD_RATIO" ]] || client+=(--cross-shard-ratio "$CROSS_SHARD_RATIO")
        client+=(--server-pid "$SERVER_PID" --json "$report" -q)

        local status=0 wall_ns=0 server_ticks="" busy_ticks=""
        if [[ -n "$note" ]]; then
            echo ">> $tag: $note" >&2
            status=""
            echo "$note" >"$out"
        else
            echo ">> $tag: ${mode} loop${offered:+ at $offered req/s}, ${WARMUP}s warm-up + ${DURATION}s" >&2
            echo "\$ ${client[*]}" >"$out"
            local busy_before server_before t0 t1 busy_after server_after
            # The log's counters, read outside the window of the other-load figures.
            [[ -z "$metrics_before" ]] || scrape_metrics "$port" "$metrics_before"
            busy_before="$(server_cpus_busy_ticks)" server_before="$(process_ticks "$SERVER_PID")" t0="$(now_ns)"
            local limit_s
            limit_s=$(python3 -c 'import sys, math; print(math.ceil(sum(map(float, sys.argv[1:]))))' \
                "$WARMUP" "$DURATION" "$SETUP_BUDGET_S" "$(((USERS * USER_SETUP_MS + 999) / 1000))")
            timeout --kill-after=5 "$limit_s" "${client[@]}" >>"$out" 2>&1 &
            local client_pid=$!
            STARTED_PIDS+=("$client_pid")
            wait "$client_pid" || status=$?
            forget_pid "$client_pid"
            t1="$(now_ns)" busy_after="$(server_cpus_busy_ticks)" server_after="$(process_ticks "$SERVER_PID")"
            [[ -z "$metrics_after" ]] || scrape_metrics "$port" "$metrics_after"
            wall_ns=$((t1 - t0))
            busy_ticks=$((busy_after - busy_before))
            if [[ -n "$server_before" && -n "$server_after" ]]; then
                server_ticks=$((server_after - server_before))
            fi
            if ((status == 2)); then
                tail -n 5 "$out" >&2
                die "shardpay-bench refused its arguments (bench.sh bug?): see $out"
            fi
            if ((status == 124 || status == 137)); then
                note="shardpay-bench did not finish within ${limit_s}s: killed"
            fi
            if ! kill -0 "$SERVER_PID" 2>/dev/null; then
                server_died=1
                local server_status=0 how
                wait "$SERVER_PID" 2>/dev/null || server_status=$?
                # Reaped: its pid may be reused, so nothing may signal it any more.
                forget_pid "$SERVER_PID"
                how="with status $server_status"
                if ((server_status > 128)); then how="killed by signal $((server_status - 128))"; fi
                note="${note:+$note; }the server exited during the run, $how (log: $log)"
                echo ">> $tag: ERROR: $target exited during the run; its last log lines:" >&2
                tail -n 10 "$log" >&2 || true
            fi
            if ((status != 0)); then
                echo ">> $tag: ERROR: shardpay-bench exited with status $status; its last lines:" >&2
                tail -n 8 "$out" | sed 's/^/   | /' >&2
            fi
        fi
        if [[ "$rate" == peak && -f "$report" ]]; then
            peak_rps="$("${REPORTER[@]}" field "$report" requests_per_second)"
            python3 -c 'import sys; sys.exit(0 if float(sys.argv[1] or 0) > 0 else 1)' "$peak_rps" || peak_rps=""
        fi
        "${REPORTER[@]}" record --report="$report" --seq="$SEQ" --round="$round" --target="$target" \
            --scenario="$scenario" --shards="$recorded_shards" \
            --shards-label="$(shards_label "$target" "$recorded_shards")" --rate="$rate" --mode="$mode" \
            --offered="$offered" --exit-status="$status" --note="$note" --server-log="$log" \
            --client-output="$out" --client-command="${client[*]}" --wall-ns="$wall_ns" \
            --server-ticks="$server_ticks" --busy-ticks="$busy_ticks" --clk-tck="$CLK_TCK" \
            --metrics-before="$metrics_before" --metrics-after="$metrics_after" \
            >>"$RUNS_JSONL" || die "could not record run $SEQ (see $out)"
    done
    if ((server_died)); then
        SERVER_PID=""
    else
        echo ">> stopping $target" >&2
        stop_pid "$SERVER_PID"
    fi
    remove_data_dir
}

# Round K (1-based) takes the targets rotated left by K-1; within a round,
# every scenario runs every shard count on every target before the next
# starts.
N_TARGETS=${#TARGET_LIST[@]}
START_TIME="$(date -Is)"
for ((round = 1; round <= ROUNDS; round++)); do
    order=()
    for ((i = 0; i < N_TARGETS; i++)); do
        order+=("${TARGET_LIST[(i + round - 1) % N_TARGETS]}")
    done
    echo ">> round $round/$ROUNDS: target order ${order[*]}" >&2
    for scenario in "${SCENARIO_LIST[@]}"; do
        for n in "${SHARD_LIST[@]}"; do
            for target in "${order[@]}"; do
                serves "$target" "$scenario" || continue
                if single_core "$target" && [[ "$n" != "${SHARD_LIST[0]}" ]]; then continue; fi
                measure_server "$round" "$target" "$scenario" "$n"
            done
        done
    done
done

# -------------------------------------------------------------- report --

CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || true)"
GIT_REV="$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")"
if [[ -n "$(git status --porcelain 2>/dev/null | head -n1)" ]]; then GIT_REV+=" (dirty)"; fi
META="$RUN_DIR/meta.txt"
{
    echo "name=$NAME"
    echo "date=$DAY"
    echo "started=$START_TIME"
    echo "finished=$(date -Is)"
    echo "command=$COMMAND_LINE"
    echo "machine=$(uname -sr), $(nproc) CPUs (${CPU_MODEL:-unknown CPU})"
    echo "git=$GIT_REV"
    echo "client=$(target/release/shardpay-bench --version 2>/dev/null || echo shardpay-bench)"
    echo "targets=$TARGETS"
    echo "scenarios=$SCENARIOS"
    echo "shards=$SHARDS"
    echo "rates=$(IFS=,; echo "${RUN_RATES[*]}")"
    echo "rounds=$ROUNDS"
    echo "duration_s=$DURATION"
    echo "warmup_s=$WARMUP"
    echo "connections=$CONNECTIONS"
    echo "pipeline_depth=$PIPELINE_DEPTH"
    echo "users=$USERS"
    echo "shard_aware=$SHARD_AWARE"
    echo "cross_shard_ratio=$CROSS_SHARD_RATIO"
    echo "server_cpus=$SERVER_CPUS"
    echo "shardpay_config=$SHARDPAY_CONFIG"
    echo "port_base=$PORT_BASE"
    echo "shard_port_base=$SHARD_PORT_BASE"
    if [[ -n "$DATA_PARENT" ]]; then
        echo "data_parent=$DATA_PARENT"
        echo "data_fs=$DATA_FS"
    fi
    if any_scylla; then
        echo "scylla_nodes=$CASSANDRA_NODE"
        echo "scylla_keyspaces=$(IFS=,; echo "${KEYSPACES[*]-}")"
    fi
    echo "client_cpus=$CLIENT_CPUS"
    echo "other_load_max=$OTHER_LOAD_MAX"
    echo "raw=$RUN_DIR"
    for n in "${NOTES[@]+"${NOTES[@]}"}"; do echo "note=$n"; done
} >"$META"

"${REPORTER[@]}" report --runs "$RUNS_JSONL" --meta "$META" --json "$BASE.json" --md "$BASE.md" ||
    die "the report generator failed (runs: $RUNS_JSONL)"
target/release/shardpay-bench-chart "$BASE.json" >&2 || die "shardpay-bench-chart failed on $BASE.json"
echo "Results: $BASE.json, $BASE.md, $BASE-throughput.png, $BASE-latency.png; raw outputs in $RUN_DIR/" >&2

# A broken benchmark is loud: any run with an error, a failed set-up or a
# dead server fails the script (the report is written first).
BAD_RUNS="$("${REPORTER[@]}" failures --runs "$RUNS_JSONL")"
if ((BAD_RUNS > 0)); then
    echo "bench.sh: ERROR: $BAD_RUNS of $TOTAL_RUNS run(s) had errors or failed; their figures are not valid" \
        "(see the Errors section of $BASE.md)" >&2
    exit 1
fi
