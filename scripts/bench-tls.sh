#!/usr/bin/env bash
# What TLS costs: shardpay with TLS, shardpay without, and nginx (TLS and
# plain) side by side on 127.0.0.1, one short run each, the server pinned to
# one CPU and the client (shardpay-bench) to another, server CPU time read
# from /proc (shardpay-bench --server-pid).
#
# Targets (--targets), each a fresh server on --server-cpu, one at a time:
#   shardpay-tls    target/release/shardpay serve --config config/bench.toml
#                   --shards 1 --cpus SERVER_CPU, TLS on the public and the
#                   shard port (SHARDPAY_TLS_PUBLIC=true,
#                   SHARDPAY_TLS_SHARD_PORTS=true, the certificate below), a
#                   fresh empty data directory
#   shardpay-plain  the same without TLS
#   nginx-tls       nginx (Debian's package; `apt-get install -y nginx`), one
#                   worker process, the SAME certificate and key, TLSv1.2 and
#                   TLSv1.3, session cache shared:SSL:10m and tickets on,
#                   keepalive_requests 1000000, access_log off, GET /json
#                   answering exactly {"message":"Hello, World!"} (the body
#                   shardpay-bench's json kind checks); run in the foreground
#                   from a temporary prefix (bench/tls/nginx.conf.in)
#   nginx-plain     the same nginx, plain HTTP
#
# Modes (--modes); every run is GET /json, closed loop, --connections
# connections, each answer checked:
#   handshake-full     TLS targets: a new connection per request (TCP connect,
#                      full TLS handshake, one request with Connection: close),
#                      --tls-resumption off: full handshakes/s
#   handshake-resumed  TLS targets: the same with the client's session cache
#                      (--tls-resumption on): resumed handshakes/s, and the
#                      share that did resume
#   keepalive          every target: requests/s over keep-alive connections
#                      (TLS or plain)
#   connect            plain targets: a new connection per request: what a
#                      plain TCP connection set-up costs, to set the handshakes
#                      against
# Figures per run: operations/s (handshakes/s, or requests/s for keepalive),
# server and client CPU-µs per operation, the resumed share, p50/p99 latency
# (a new connection's runs from its connect to its answer), errors, and the
# other load on the server CPU (busy time not spent in the server; above 5%
# of a core the run was disturbed, and the report says so).
#
# Certificates (--certs): `shardpay gen-cert --dir DIR` (a development CA and
# an ECDSA P-256 server certificate for localhost and 127.0.0.1) in a
# temporary directory; "openssl" makes the same four files with openssl
# (ca.pem, ca-key.pem, server.pem, server-key.pem); "auto" (the default) uses
# shardpay gen-cert when the shardpay binary has it, else openssl. The client
# trusts DIR/ca.pem (--cacert) and verifies the name 127.0.0.1.
#
# Usage: scripts/bench-tls.sh [options]
#   --targets LIST      shardpay-tls,shardpay-plain,nginx-tls,nginx-plain
#                       (default: all four)
#   --modes LIST        handshake-full,handshake-resumed,keepalive,connect
#                       (default: all; each target runs those that apply)
#   --rounds N          rounds of the whole set of runs, the target order
#                       rotated each round; figures are medians over rounds
#                       (with the min-max of server CPU-µs); one run is
#                       noisy on a shared VM, 3 rounds settle it (default 1)
#   --duration S        measured seconds per run (default 3)
#   --warmup S          warm-up seconds per run (default 1)
#   --connections N     client connections (default 64)
#   --server-cpu N      the server's CPU (default 0)
#   --client-cpu N      the client's CPU, not the server's (default 1)
#   --port-base P       public ports: shardpay-tls P, shardpay-plain P+1,
#                       nginx-tls P+2, nginx-plain P+3 (default 18440)
#   --shard-port-base Q shardpay's shard-aware port (default 17140)
#   --certs KIND        auto, shardpay or openssl (default auto)
#   --name NAME         results name (default tls)
#   --no-build          do not run cargo build
#   -h, --help          this text
#
# Results: bench/results/<YYYY-MM-DD>-<NAME>.md    the table, the TLS-over-
#              plaintext comparison and the exact commands (also printed),
#          bench/results/<YYYY-MM-DD>-<NAME>.json  the same figures,
#          bench/results/<YYYY-MM-DD>-<NAME>/      runs.jsonl (shardpay-bench's
#              JSON report of every run and what the script knows), meta.txt,
#              commands.txt, and per round round-K/: server logs, client
#              outputs and reports.
# Every process started is stopped and every temporary file removed on exit;
# a busy port stops the script before anything starts. Exit status: 0, 1 if a
# run had errors or a server failed (the report is written first), 2 for a
# bad command line.
# Needs: cargo, taskset, curl, python3, timeout, mktemp, nginx (for the nginx
# targets), openssl (for --certs openssl).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMMAND_LINE="scripts/bench-tls.sh"
for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./,=:%+-]+$ ]]; then
        COMMAND_LINE+=" $arg"
    else
        COMMAND_LINE+=" '${arg//\'/\'\\\'\'}'"
    fi
done

ALL_TARGETS="shardpay-tls,shardpay-plain,nginx-tls,nginx-plain"
ALL_MODES="handshake-full,handshake-resumed,keepalive,connect"
TARGETS="$ALL_TARGETS"
MODES="$ALL_MODES"
ROUNDS=1
DURATION=3
WARMUP=1
CONNECTIONS=64
SERVER_CPU=0
CLIENT_CPU=1
PORT_BASE=18440
SHARD_PORT_BASE=17140
CERTS=auto
NAME=tls
BUILD=1

SECONDS_MAX=600      # per warm-up or measured run: this benchmark is short by design
ROUNDS_MAX=20
CONNECTIONS_MAX=100000
READY_TIMEOUT_S=20
STOP_TIMEOUT_S=5
CLIENT_BUDGET_S=60   # client time beyond warm-up + duration before it is killed
BUILD_TIMEOUT_S=3600
OTHER_LOAD_MAX=0.05  # fraction of a core: above it a run was disturbed
TLS_SERVER_NAME=127.0.0.1

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

die() {
    echo "bench-tls.sh: $*" >&2
    exit 1
}

bad_arg() {
    echo "bench-tls.sh: $*" >&2
    echo "bench-tls.sh: see scripts/bench-tls.sh --help" >&2
    exit 2
}

need_value() {
    [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || bad_arg "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --targets) need_value "$@"; TARGETS="$2"; shift 2 ;;
        --targets=*) TARGETS="${1#*=}"; shift ;;
        --modes) need_value "$@"; MODES="$2"; shift 2 ;;
        --modes=*) MODES="${1#*=}"; shift ;;
        --rounds) need_value "$@"; ROUNDS="$2"; shift 2 ;;
        --rounds=*) ROUNDS="${1#*=}"; shift ;;
        --duration) need_value "$@"; DURATION="$2"; shift 2 ;;
        --duration=*) DURATION="${1#*=}"; shift ;;
        --warmup) need_value "$@"; WARMUP="$2"; shift 2 ;;
        --warmup=*) WARMUP="${1#*=}"; shift ;;
        --connections) need_value "$@"; CONNECTIONS="$2"; shift 2 ;;
        --connections=*) CONNECTIONS="${1#*=}"; shift ;;
        --server-cpu) need_value "$@"; SERVER_CPU="$2"; shift 2 ;;
        --server-cpu=*) SERVER_CPU="${1#*=}"; shift ;;
        --client-cpu) need_value "$@"; CLIENT_CPU="$2"; shift 2 ;;
        --client-cpu=*) CLIENT_CPU="${1#*=}"; shift ;;
        --port-base) need_value "$@"; PORT_BASE="$2"; shift 2 ;;
        --port-base=*) PORT_BASE="${1#*=}"; shift ;;
        --shard-port-base) need_value "$@"; SHARD_PORT_BASE="$2"; shift 2 ;;
        --shard-port-base=*) SHARD_PORT_BASE="${1#*=}"; shift ;;
        --certs) need_value "$@"; CERTS="$2"; shift 2 ;;
        --certs=*) CERTS="${1#*=}"; shift ;;
        --name) need_value "$@"; NAME="$2"; shift 2 ;;
        --name=*) NAME="${1#*=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage 0 ;;
        *) bad_arg "unknown argument: $1" ;;
    esac
done

# ------------------------------------------------------------ validation --

int_in_range() { [[ "$1" =~ ^(0|[1-9][0-9]{0,8})$ ]] && (($1 >= $2 && $1 <= $3)); }
seconds_ok() {
    [[ "$1" =~ ^[0-9]{1,6}(\.[0-9]{1,3})?$ ]] &&
        python3 -c 'import sys; v = float(sys.argv[1]); sys.exit(0 if float(sys.argv[2]) <= v <= float(sys.argv[3]) and (v > 0 or sys.argv[2] == "0") else 1)' \
            "$1" "$2" "$SECONDS_MAX"
}

int_in_range "$ROUNDS" 1 "$ROUNDS_MAX" || bad_arg "--rounds must be an integer from 1 to $ROUNDS_MAX"
seconds_ok "$DURATION" 0.001 || bad_arg "--duration must be a number of seconds above 0, at most $SECONDS_MAX (e.g. 3 or 2.5)"
seconds_ok "$WARMUP" 0 || bad_arg "--warmup must be a number of seconds from 0 to $SECONDS_MAX"
int_in_range "$CONNECTIONS" 1 "$CONNECTIONS_MAX" || bad_arg "--connections must be an integer from 1 to $CONNECTIONS_MAX"
int_in_range "$PORT_BASE" 1024 65532 || bad_arg "--port-base must be a port from 1024 to 65532 (it and the next three are used)"
int_in_range "$SHARD_PORT_BASE" 1024 65535 || bad_arg "--shard-port-base must be a port from 1024 to 65535"
((SHARD_PORT_BASE < PORT_BASE || SHARD_PORT_BASE > PORT_BASE + 3)) ||
    bad_arg "--shard-port-base $SHARD_PORT_BASE is one of the public ports $PORT_BASE..$((PORT_BASE + 3))"
[[ "$NAME" =~ ^[A-Za-z0-9._-]{1,100}$ && "$NAME" != .* ]] ||
    bad_arg "--name may only contain letters, digits, '.', '_' and '-' (at most 100, not starting with '.')"
case "$CERTS" in auto|shardpay|openssl) ;; *) bad_arg "--certs must be auto, shardpay or openssl" ;; esac
for option in server-cpu client-cpu; do
    value="$SERVER_CPU"
    [[ "$option" == server-cpu ]] || value="$CLIENT_CPU"
    int_in_range "$value" 0 4095 || bad_arg "--$option must be a CPU number"
    grep -q "^cpu$value " /proc/stat || bad_arg "--$option: CPU $value is not online"
done
((SERVER_CPU != CLIENT_CPU)) ||
    bad_arg "--server-cpu and --client-cpu are both $SERVER_CPU: they must differ, or the client's load would count as the server's"

# split_list NAME OPTION VALUE ALLOWED: the comma list VALUE into the array NAME.
split_list() {
    local -n list_out="$1"
    local option="$2" value="$3" allowed="$4" item
    [[ -n "$value" && "$value" != ,* && "$value" != *, && "$value" != *,,* ]] || bad_arg "$option: empty item in '$value'"
    IFS=',' read -r -a list_out <<<"$value"
    [[ -z "$(printf '%s\n' "${list_out[@]}" | sort | uniq -d)" ]] || bad_arg "$option has duplicates: $value"
    for item in "${list_out[@]}"; do
        [[ ",$allowed," == *",$item,"* ]] || bad_arg "$option: unknown '$item' (known: $allowed)"
    done
}
split_list TARGET_LIST --targets "$TARGETS" "$ALL_TARGETS"
split_list MODE_LIST --modes "$MODES" "$ALL_MODES"

is_tls() { [[ "$1" == *-tls ]]; }
is_shardpay() { [[ "$1" == shardpay-* ]]; }
is_nginx() { [[ "$1" == nginx-* ]]; }
# Whether MODE applies to TARGET.
applies() {
    case "$2" in
        handshake-full|handshake-resumed) is_tls "$1" ;;
        keepalive) return 0 ;;
        connect) ! is_tls "$1" ;;
    esac
}
declare -A PORT=([shardpay-tls]=$PORT_BASE [shardpay-plain]=$((PORT_BASE + 1))
    [nginx-tls]=$((PORT_BASE + 2)) [nginx-plain]=$((PORT_BASE + 3)))

RUNS=()
ANY_SHARDPAY=0 ANY_NGINX=0
for t in "${TARGET_LIST[@]}"; do
    for m in "${MODE_LIST[@]}"; do
        if applies "$t" "$m"; then RUNS+=("$t $m"); fi
    done
    if is_shardpay "$t"; then ANY_SHARDPAY=1; fi
    if is_nginx "$t"; then ANY_NGINX=1; fi
done
((${#RUNS[@]} > 0)) || bad_arg "nothing to run: no mode of --modes applies to the targets (handshake-* need a -tls target, connect a -plain one)"

for tool in cargo taskset curl python3 timeout mktemp getconf; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done
NGINX="$(command -v nginx || true)"
[[ -n "$NGINX" || ! -x /usr/sbin/nginx ]] || NGINX=/usr/sbin/nginx
if ((ANY_NGINX)) && [[ -z "$NGINX" ]]; then
    die "nginx not found: install it (Debian: apt-get install -y nginx), or leave nginx-tls and nginx-plain out of --targets"
fi
CLK_TCK="$(getconf CLK_TCK)"

# ------------------------------------------------------- processes, clean-up --

STARTED_PIDS=()
NGINX_WORKER_PIDS=()
TMP_DIR=""

stop_pid() {
    local pid="$1" i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT_S * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

forget_pid() {
    local remaining=() p
    for p in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
        [[ "$p" == "$1" ]] || remaining+=("$p")
    done
    STARTED_PIDS=("${remaining[@]+"${remaining[@]}"}")
}

# An nginx worker outlives a master killed with SIGKILL: stop any left (only
# the ones this script saw, and only while they are still nginx).
stop_nginx_workers() {
    local pid
    for pid in "${NGINX_WORKER_PIDS[@]+"${NGINX_WORKER_PIDS[@]}"}"; do
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == nginx ]]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    NGINX_WORKER_PIDS=()
}

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
        stop_pid "$pid"
    done
    stop_nginx_workers
    if [[ -n "$TMP_DIR" ]]; then rm -rf -- "$TMP_DIR"; fi
}
trap cleanup EXIT
trap 'echo "bench-tls.sh: interrupted" >&2; exit 130' INT
trap 'echo "bench-tls.sh: terminated" >&2; exit 143' TERM

port_in_use() {
    # A successful TCP connect means something listens there.
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Every port of the selected targets must be free before anything starts.
for t in "${TARGET_LIST[@]}"; do
    port_in_use "${PORT[$t]}" &&
        die "port ${PORT[$t]} ($t) is already in use (a stale server, or another benchmark?): stop it first, or choose other ports with --port-base"
done
if ((ANY_SHARDPAY)) && port_in_use "$SHARD_PORT_BASE"; then
    die "port $SHARD_PORT_BASE (shardpay's shard port) is already in use: stop its user first, or choose another with --shard-port-base"
fi

# ---------------------------------------------------------------- build --

if ((BUILD)); then
    build_args=(-p shardpay-bench)
    if ((ANY_SHARDPAY)) || [[ "$CERTS" == shardpay ]]; then build_args+=(-p shardpay); fi
    echo ">> cargo build --release ${build_args[*]}" >&2
    timeout "$BUILD_TIMEOUT_S" cargo build --release "${build_args[@]}" >&2 || die "cargo build failed"
fi
[[ -x target/release/shardpay-bench ]] || die "target/release/shardpay-bench missing (build it or drop --no-build)"
if ((ANY_SHARDPAY)); then
    [[ -x target/release/shardpay ]] || die "target/release/shardpay missing (cargo build --release -p shardpay, or drop --no-build)"
fi
HAS_GEN_CERT=0
if [[ -x target/release/shardpay ]] && target/release/shardpay gen-cert --help >/dev/null 2>&1; then
    HAS_GEN_CERT=1
fi

# ------------------------------------------------------------ certificates --

NOTES=()
note() {
    echo ">> note: $*" >&2
    NOTES+=("$*")
}

TMP_DIR="$(mktemp -d "${TMPDIR:-/tmp}/shardpay-bench-tls.XXXXXX")" || die "could not make a temporary directory"
CERT_DIR="$TMP_DIR/certs"
mkdir -- "$CERT_DIR"
if [[ "$CERTS" == auto ]]; then
    if ((HAS_GEN_CERT)); then CERTS=shardpay; else
        CERTS=openssl
        note "target/release/shardpay has no gen-cert: certificates made with openssl"
    fi
fi
CERT_COMMANDS=()
if [[ "$CERTS" == shardpay ]]; then
    ((HAS_GEN_CERT)) || die "--certs shardpay: target/release/shardpay has no gen-cert subcommand"
    CERT_COMMANDS+=("target/release/shardpay gen-cert --dir $CERT_DIR")
    target/release/shardpay gen-cert --dir "$CERT_DIR" >"$TMP_DIR/gen-cert.log" 2>&1 ||
        { cat "$TMP_DIR/gen-cert.log" >&2; die "shardpay gen-cert failed"; }
else
    command -v openssl >/dev/null || die "openssl not found (needed by --certs openssl)"
    # A CA and an ECDSA P-256 server certificate for localhost and 127.0.0.1,
    # the files gen-cert writes.
    CERT_COMMANDS+=(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem -out ca.pem -days 30 -subj '/CN=bench-tls CA' -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server-key.pem -out server.csr -subj /CN=localhost"
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 -sha256 -extfile ext.cnf -out server.pem  # ext.cnf: subjectAltName=DNS:localhost,IP:127.0.0.1, serverAuth"
    )
    (
        cd "$CERT_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca-key.pem -out ca.pem \
            -days 30 -subj "/CN=bench-tls CA" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server-key.pem -out server.csr \
            -subj "/CN=localhost"
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
            "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >ext.cnf
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 -sha256 \
            -extfile ext.cnf -out server.pem
    ) >"$TMP_DIR/openssl.log" 2>&1 || { cat "$TMP_DIR/openssl.log" >&2; die "making the certificates with openssl failed"; }
fi
for f in ca.pem server.pem server-key.pem; do
    [[ -s "$CERT_DIR/$f" ]] || die "$CERT_DIR/$f was not made"
done
CA="$CERT_DIR/ca.pem"

# ------------------------------------------------------------------ servers --

DAY="$(date +%F)"
BASE="bench/results/$DAY-$NAME"
RUN_DIR="$BASE"
mkdir -p "$RUN_DIR"
RUNS_JSONL="$RUN_DIR/runs.jsonl"
COMMANDS="$RUN_DIR/commands.txt"
: >"$RUNS_JSONL"
rm -f -- "$BASE.json" "$BASE.md" "$RUN_DIR"/*.txt
rm -rf -- "$RUN_DIR"/round-*
{
    echo "# certificates (in a temporary directory, $CERT_DIR)"
    printf '%s\n' "${CERT_COMMANDS[@]}"
} >"$COMMANDS"

SERVER_PID=""    # the process started (nginx: the master)
MEASURED_PID=""  # the process whose CPU time is the server's (nginx: its one worker)
DATA_DIRS_MADE=0

# Sets CMD to TARGET's command line.
target_command() {
    local target="$1" port="${PORT[$1]}"
    case "$target" in
        shardpay-tls|shardpay-plain)
            DATA_DIRS_MADE=$((DATA_DIRS_MADE + 1))
            local data_dir="$TMP_DIR/data-$DATA_DIRS_MADE-$target"
            mkdir -- "$data_dir"
            if [[ "$target" == shardpay-tls ]]; then
                CMD=(env SHARDPAY_TLS_PUBLIC=true SHARDPAY_TLS_SHARD_PORTS=true
                    SHARDPAY_TLS_CERT_PATH="$CERT_DIR/server.pem" SHARDPAY_TLS_KEY_PATH="$CERT_DIR/server-key.pem")
            else
                CMD=(env -u SHARDPAY_TLS_CERT_PATH -u SHARDPAY_TLS_KEY_PATH
                    SHARDPAY_TLS_PUBLIC=false SHARDPAY_TLS_SHARD_PORTS=false)
            fi
            CMD+=(SHARDPAY_STORAGE_DATA_DIR="$data_dir"
                target/release/shardpay serve --config config/bench.toml --shards 1 --cpus "$SERVER_CPU"
                --listen "127.0.0.1:$port" --shard-port-base "$SHARD_PORT_BASE")
            ;;
        nginx-tls|nginx-plain)
            local prefix="$TMP_DIR/nginx-$target" listen="127.0.0.1:$port"
            [[ "$target" == nginx-plain ]] || listen+=" ssl"
            mkdir -p -- "$prefix"
            sed -e "s|@PREFIX@|$prefix|g" -e "s|@CERT@|$CERT_DIR/server.pem|g" \
                -e "s|@KEY@|$CERT_DIR/server-key.pem|g" -e "s|@LISTEN@|$listen|g" \
                bench/tls/nginx.conf.in >"$prefix/nginx.conf"
            "$NGINX" -t -q -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" 2>"$prefix/check.log" ||
                { cat "$prefix/check.log" >&2; die "nginx refused its configuration ($prefix/nginx.conf)"; }
            CMD=("$NGINX" -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/error.log" -g "daemon off;")
            ;;
    esac
    CMD=(taskset -c "$SERVER_CPU" "${CMD[@]}")
}

# ready_url TARGET
ready_url() {
    local scheme=http path=/readyz
    if is_tls "$1"; then scheme=https; fi
    if is_nginx "$1"; then path=/json; fi
    echo "$scheme://127.0.0.1:${PORT[$1]}$path"
}

# start_server TARGET LOG: starts it, waits for readiness, sets SERVER_PID and MEASURED_PID.
start_server() {
    local target="$1" log="$2" port="${PORT[$1]}"
    port_in_use "$port" && die "port $port ($target) is already in use: stop its user first, or choose other ports with --port-base"
    if is_shardpay "$target" && port_in_use "$SHARD_PORT_BASE"; then
        die "port $SHARD_PORT_BASE ($target's shard port) is already in use"
    fi
    target_command "$target"
    echo ">> starting $target: ${CMD[*]}" >&2
    {
        echo
        echo "# $target"
        printf '%q ' "${CMD[@]}"
        echo
    } >>"$COMMANDS"
    echo "\$ ${CMD[*]}" >"$log"
    "${CMD[@]}" >>"$log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
    local url curl_tls=() deadline=$((SECONDS + READY_TIMEOUT_S))
    url="$(ready_url "$target")"
    if is_tls "$target"; then curl_tls=(--cacert "$CA"); fi
    until curl -fsS -o /dev/null --max-time 1 "${curl_tls[@]}" "$url" 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            die "$target exited during start-up (log: $log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$log" >&2 || true
            curl -sS -o /dev/null --max-time 1 "${curl_tls[@]}" "$url" >&2 || true
            die "$target not ready after ${READY_TIMEOUT_S}s at $url (log: $log)"
        fi
        sleep 0.1
    done
    echo "# ready: curl -fsS ${curl_tls[*]} $url" >>"$COMMANDS"
    MEASURED_PID="$SERVER_PID"
    if is_nginx "$target"; then
        # All the work is the one worker's; the master only waits.
        local workers
        workers="$(ps --ppid "$SERVER_PID" -o pid= | tr -d ' ' || true)"
        [[ -n "$workers" && "$workers" != *$'\n'* ]] ||
            die "nginx (pid $SERVER_PID) should have exactly one worker process, found: ${workers:-none}"
        MEASURED_PID="$workers"
        NGINX_WORKER_PIDS+=("$workers")
    fi
}

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        stop_pid "$SERVER_PID"
        SERVER_PID=""
    fi
    stop_nginx_workers
}

process_ticks() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    rest="${stat##*) }"
    local -a f
    read -r -a f <<<"$rest"
    echo $((f[11] + f[12]))
}

server_cpu_busy_ticks() {
    awk -v cpu="cpu$SERVER_CPU" '$1 == cpu { print $2 + $3 + $4 + $7 + $8; found = 1 } END { if (!found) exit 1 }' /proc/stat
}

now_ns() { date +%s%N; }

# --------------------------------------------------------------------- runs --

TOTAL_RUNS=$((ROUNDS * ${#RUNS[@]}))
echo ">> $ROUNDS round(s) x ${#RUNS[@]} runs of ${WARMUP}s warm-up + ${DURATION}s measured, server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU" >&2
SEQ=0
FAILED=0
START_TIME="$(date -Is)"
N_TARGETS=${#TARGET_LIST[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    # Round K takes the targets rotated left by K-1, so that a drift in machine speed hits all alike.
    order=()
    for ((i = 0; i < N_TARGETS; i++)); do order+=("${TARGET_LIST[(i + round - 1) % N_TARGETS]}"); done
    dir="$RUN_DIR/round-$round"
    mkdir -p "$dir"
    echo "# round $round" >>"$COMMANDS"
    for target in "${order[@]}"; do
        target_modes=()
        for m in "${MODE_LIST[@]}"; do
            if applies "$target" "$m"; then target_modes+=("$m"); fi
        done
        ((${#target_modes[@]} > 0)) || continue
        log="$dir/$target.server.log"
        start_server "$target" "$log"
        server_died=0
        scheme=http
        if is_tls "$target"; then scheme=https; fi
        for mode in "${target_modes[@]}"; do
            SEQ=$((SEQ + 1))
            stem="$target-$mode"
            out="$dir/$stem.client.txt" report="$dir/$stem.json"
            client=(taskset -c "$CLIENT_CPU" target/release/shardpay-bench --cpus "$CLIENT_CPU"
                --url "$scheme://127.0.0.1:${PORT[$target]}" --scenario json -c "$CONNECTIONS")
            if is_tls "$target"; then client+=(--cacert "$CA" --tls-server-name "$TLS_SERVER_NAME"); fi
            case "$mode" in
                handshake-full) client+=(--new-connection-per-request --tls-resumption off) ;;
                handshake-resumed) client+=(--new-connection-per-request --tls-resumption on) ;;
                connect) client+=(--new-connection-per-request) ;;
                keepalive) ;;
            esac
            client+=(--warmup "$WARMUP" -D "$DURATION" --server-pid "$MEASURED_PID" --json "$report" -q)
            {
                echo "# run $SEQ: round $round, $target / $mode"
                printf '%q ' "${client[@]}"
                echo
            } >>"$COMMANDS"
            status=0 note_text="" other_load=""
            if ((server_died)); then
                note_text="the server had died in an earlier run: not run"
                status=""
                echo ">> [$SEQ/$TOTAL_RUNS] round $round: $target / $mode: $note_text" >&2
            else
                echo ">> [$SEQ/$TOTAL_RUNS] round $round: $target / $mode" >&2
                echo "\$ ${client[*]}" >"$out"
                limit_s=$(python3 -c 'import sys, math; print(math.ceil(sum(map(float, sys.argv[1:]))))' \
                    "$WARMUP" "$DURATION" "$CLIENT_BUDGET_S")
                busy_before="$(server_cpu_busy_ticks)" server_before="$(process_ticks "$MEASURED_PID")" t0="$(now_ns)"
                timeout --kill-after=5 "$limit_s" "${client[@]}" >>"$out" 2>&1 &
                client_pid=$!
                STARTED_PIDS+=("$client_pid")
                wait "$client_pid" || status=$?
                forget_pid "$client_pid"
                t1="$(now_ns)" busy_after="$(server_cpu_busy_ticks)" server_after="$(process_ticks "$MEASURED_PID")"
                if [[ -n "$server_before" && -n "$server_after" ]]; then
                    other_load="$(python3 -c 'import sys; b, s, w, hz = map(float, sys.argv[1:]); print(round(max(0.0, (b - s) / hz / (w / 1e9)), 4))' \
                        "$((busy_after - busy_before))" "$((server_after - server_before))" "$((t1 - t0))" "$CLK_TCK")"
                fi
                if ((status == 2)); then
                    tail -n 5 "$out" >&2
                    die "shardpay-bench refused its arguments (bench-tls.sh bug?): see $out"
                fi
                if ((status == 124 || status == 137)); then note_text="shardpay-bench did not finish within ${limit_s}s: killed"; fi
                if ! kill -0 "$SERVER_PID" 2>/dev/null; then
                    server_died=1
                    note_text="${note_text:+$note_text; }the server exited during the run (log: $log)"
                    echo ">> ERROR: $target exited during the run; its last log lines:" >&2
                    tail -n 10 "$log" >&2 || true
                fi
                if ((status != 0)); then
                    FAILED=$((FAILED + 1))
                    echo ">> ERROR: shardpay-bench exited with status $status; its last lines:" >&2
                    tail -n 8 "$out" | sed 's/^/   | /' >&2
                fi
            fi
            python3 - "$report" "$target" "$mode" "${status}" "$note_text" "${other_load:-}" "${client[*]}" "$out" "$round" >>"$RUNS_JSONL" <<'PY'
import json, os, sys
report_path, target, mode, status, note, other_load, command, out, round_ = sys.argv[1:10]
report = None
if os.path.exists(report_path):
    with open(report_path) as f:
        report = json.load(f)
print(json.dumps({
    "round": int(round_), "target": target, "mode": mode,
    "exit_status": int(status) if status else None,
    "note": note or None,
    "other_load_cores": float(other_load) if other_load else None,
    "client_command": command, "client_output": out, "report": report,
}))
PY
        done
        if ((server_died)); then
            FAILED=$((FAILED + 1))
            forget_pid "$SERVER_PID"
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=""
            stop_nginx_workers
        else
            echo ">> stopping $target" >&2
            stop_server
        fi
        # shardpay's data directory of this start: nothing is kept.
        rm -rf -- "$TMP_DIR"/data-*
    done
done

# ------------------------------------------------------------------- report --

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
    if ((ANY_NGINX)); then echo "nginx=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"; fi
    if command -v openssl >/dev/null; then echo "openssl=$(openssl version)"; fi
    echo "certs=$CERTS"
    echo "rounds=$ROUNDS"
    echo "targets=$TARGETS"
    echo "modes=$MODES"
    echo "duration_s=$DURATION"
    echo "warmup_s=$WARMUP"
    echo "connections=$CONNECTIONS"
    echo "server_cpu=$SERVER_CPU"
    echo "client_cpu=$CLIENT_CPU"
    echo "other_load_max=$OTHER_LOAD_MAX"
    echo "raw=$RUN_DIR"
    for n in "${NOTES[@]+"${NOTES[@]}"}"; do echo "note=$n"; done
} >"$META"

python3 - "$RUNS_JSONL" "$META" "$COMMANDS" "$BASE.json" "$BASE.md" <<'PY' || die "the report failed (runs: $RUNS_JSONL)"
import json, sys

runs_path, meta_path, commands_path, json_path, md_path = sys.argv[1:6]
runs = [json.loads(line) for line in open(runs_path) if line.strip()]
meta = {}
notes = []
for line in open(meta_path):
    key, _, value = line.rstrip("\n").partition("=")
    if key == "note":
        notes.append(value)
    else:
        meta[key] = value
commands = open(commands_path).read().rstrip("\n")
other_max = float(meta.get("other_load_max", "0.05"))

UNIT = {"handshake-full": "handshakes/s", "handshake-resumed": "handshakes/s",
        "connect": "connections/s", "keepalive": "requests/s"}
PER_CONNECTION = {"handshake-full", "handshake-resumed", "connect"}

rows = []
for run in runs:
    report = run["report"]
    row = {"round": run["round"], "target": run["target"], "mode": run["mode"], "unit": UNIT[run["mode"]],
           "exit_status": run["exit_status"], "note": run["note"],
           "other_load_cores": run["other_load_cores"], "client_command": run["client_command"]}
    if report:
        hs = report["handshakes"]
        server = report.get("server_cpu") or {}
        per_connection = run["mode"] in PER_CONNECTION
        negotiated = (report.get("tls") or {}).get("negotiated") or {}
        row.update({
            "rate": hs["per_second"] if per_connection else report["requests_per_second"],
            "requests_per_second": report["requests_per_second"],
            "handshakes_per_second": hs["per_second"],
            "server_cpu_us": hs["server_cpu_us_per_handshake"] if per_connection else server.get("cpu_us_per_request"),
            "client_cpu_us": hs["client_cpu_us_per_handshake"] if per_connection else report["client_cpu"]["cpu_us_per_request"],
            "server_cores_busy": server.get("cores_busy"),
            "client_cores_busy": report["client_cpu"]["cores_busy"],
            "resumed_share": hs["resumed_share"],
            "p50_us": report["latency_us"]["p50"],
            "p99_us": report["latency_us"]["p99"],
            "ok": report["ok"],
            "errors": report["errors"],
            "errors_by_kind": report["errors_by_kind"],
            "protocol": negotiated.get("protocol"),
            "cipher_suite": negotiated.get("cipher_suite"),
            "alpn": negotiated.get("alpn"),
        })
    rows.append(row)

def bad(row):
    return row.get("errors", 1) != 0 or row["exit_status"] not in (0,) or row["note"] is not None

def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2

# One line per (target, mode), in the order of the first round: medians over the rounds whose run
# was valid (over all measured ones when none was).
MEDIAN_FIELDS = ("rate", "server_cpu_us", "client_cpu_us", "server_cores_busy", "client_cores_busy",
                 "resumed_share", "p50_us", "p99_us")
keys = []
for row in rows:
    if (row["target"], row["mode"]) not in keys:
        keys.append((row["target"], row["mode"]))
summary = []
for target, mode in keys:
    group = [row for row in rows if row["target"] == target and row["mode"] == mode]
    measured = [row for row in group if "rate" in row]
    valid = [row for row in measured if not bad(row)] or measured
    line = {"target": target, "mode": mode, "unit": UNIT[mode], "runs": len(group), "valid_runs":
            sum(1 for row in measured if not bad(row)), "errors": sum(row.get("errors", 0) for row in group),
            "failed_runs": sum(1 for row in group if bad(row)),
            "notes": [row["note"] for row in group if row["note"]]}
    loads = [row["other_load_cores"] for row in group if row["other_load_cores"] is not None]
    line["other_load_cores"] = max(loads) if loads else None
    if valid:
        for field in MEDIAN_FIELDS:
            line[field] = median(row.get(field) for row in valid)
        cpus = [row["server_cpu_us"] for row in valid if row.get("server_cpu_us") is not None]
        line["server_cpu_us_min"] = min(cpus) if cpus else None
        line["server_cpu_us_max"] = max(cpus) if cpus else None
        line["protocol"] = valid[0].get("protocol")
        line["cipher_suite"] = valid[0].get("cipher_suite")
        line["alpn"] = valid[0].get("alpn")
    summary.append(line)
rounds = max((row["round"] for row in rows), default=1)

def fmt(value, digits=0):
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"

def disturbed(row):
    load = row["other_load_cores"]
    return load is not None and load > other_max

md = []
md.append(f"# TLS: shardpay and nginx on 127.0.0.1 ({meta.get('date', '')}, {meta.get('name', '')})")
md.append("")
md.append(f"Server on CPU {meta.get('server_cpu')}, client (shardpay-bench, one thread) on CPU "
          f"{meta.get('client_cpu')}; GET /json, closed loop, {meta.get('connections')} connections, "
          f"{meta.get('warmup_s')} s warm-up + {meta.get('duration_s')} s measured per run, "
          f"{'one run each' if rounds == 1 else f'{rounds} rounds (target order rotated each round); figures are medians over the rounds, server CPU with its min–max'}. "
          f"Machine: {meta.get('machine', '?')}; git {meta.get('git', '?')}; "
          f"{meta.get('nginx', '') and 'nginx ' + meta['nginx'] + '; '}{meta.get('openssl', '')}.")
md.append("")
md.append("Rate: handshakes/s for the handshake modes (a new connection per request: TCP connect, "
          "TLS handshake, one request with `Connection: close`), connections/s for `connect` (the same "
          "without TLS), requests/s for `keepalive`. CPU-µs are per handshake (connection) or per "
          "request, from /proc/PID/stat (nginx: its one worker). Latency: a new connection's runs from "
          "its connect to its answer. Busy: cores of CPU time the server and the client used over the "
          "window; the side near 1.00 is the limit of the rate (on a 2-core machine the client can be: "
          "a TLS client's handshake costs about what the server's does), so compare the servers by "
          "their CPU-µs per operation. Other load: busy time of the server CPU not spent in the server "
          f"(cores); above {other_max} the run was disturbed (⚠).")
md.append("")
md.append("| target | mode | rate | server CPU-µs/op | client CPU-µs/op | resumed | p50 µs | p99 µs | busy server / client | TLS | errors | other load |")
md.append("|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|")
def table_line(row, server_cpu):
    if "rate" not in row:
        note = row.get("note") or "; ".join(row.get("notes") or []) or "no report"
        return f"| {row['target']} | {row['mode']} | not measured: {note} | | | | | | | | | |"
    resumed = "–" if row["resumed_share"] is None else f"{row['resumed_share'] * 100:.1f}%"
    tls = f"{row['protocol']} {row['cipher_suite']}" if row["protocol"] else "plain"
    load = "–" if row["other_load_cores"] is None else f"{row['other_load_cores']:.2f}" + (" ⚠" if disturbed(row) else "")
    failed = bad(row) if "round" in row else row["failed_runs"] > 0
    errors = str(row["errors"]) + (" ✗" if failed else "")
    busy = f"{fmt(row['server_cores_busy'], 2)} / {fmt(row['client_cores_busy'], 2)}"
    return (f"| {row['target']} | {row['mode']} | {fmt(row['rate'])} {row['unit']} | {server_cpu} "
            f"| {fmt(row['client_cpu_us'], 1)} | {resumed} | {fmt(row['p50_us'], 0)} | {fmt(row['p99_us'], 0)} "
            f"| {busy} | {tls} | {errors} | {load} |")

for line in summary:
    server_cpu = fmt(line.get("server_cpu_us"), 1)
    if rounds > 1 and line.get("server_cpu_us_min") is not None:
        server_cpu += f" ({line['server_cpu_us_min']:.1f}–{line['server_cpu_us_max']:.1f})"
    md.append(table_line(line, server_cpu))

# TLS over plaintext, per server: server CPU-µs (medians).
def find(target, mode):
    for line in summary:
        if line["target"] == target and line["mode"] == mode and line.get("rate") is not None:
            return line
    return None

comparison = []
for server in ("shardpay", "nginx"):
    plain_ka, tls_ka = find(f"{server}-plain", "keepalive"), find(f"{server}-tls", "keepalive")
    plain_connect = find(f"{server}-plain", "connect")
    for label, tls_row, plain_row in (
        ("request over keep-alive", tls_ka, plain_ka),
        ("new connection, full handshake", find(f"{server}-tls", "handshake-full"), plain_connect),
        ("new connection, resumed handshake", find(f"{server}-tls", "handshake-resumed"), plain_connect),
    ):
        if not tls_row or not plain_row or tls_row.get("server_cpu_us") is None or plain_row.get("server_cpu_us") is None:
            continue
        t, p = tls_row["server_cpu_us"], plain_row["server_cpu_us"]
        comparison.append((server, label, t, p))
if comparison:
    md.append("")
    md.append("## Server CPU-µs: TLS over plaintext")
    md.append("")
    md.append("| server | per | TLS | plaintext | TLS − plaintext | TLS / plaintext |")
    md.append("|---|---|--:|--:|--:|--:|")
    for server, label, t, p in comparison:
        md.append(f"| {server} | {label} | {t:.1f} | {p:.1f} | {t - p:+.1f} | {t / p:.2f}× |")

pairs = []
for mode in ("handshake-full", "handshake-resumed", "keepalive"):
    a, b = find("shardpay-tls", mode), find("nginx-tls", mode)
    if a and b and a.get("server_cpu_us") and b.get("server_cpu_us") and b.get("rate"):
        pairs.append((f"TLS {mode}", a, b))
for mode in ("keepalive", "connect"):
    a, b = find("shardpay-plain", mode), find("nginx-plain", mode)
    if a and b and a.get("server_cpu_us") and b.get("server_cpu_us") and b.get("rate"):
        pairs.append((f"plain {mode}", a, b))
if pairs:
    md.append("")
    md.append("## shardpay / nginx")
    md.append("")
    md.append("| run | rate | server CPU-µs/op |")
    md.append("|---|--:|--:|")
    for label, a, b in pairs:
        md.append(f"| {label} | {a['rate'] / b['rate']:.2f}× | {a['server_cpu_us'] / b['server_cpu_us']:.2f}× |")

if rounds > 1:
    md.append("")
    md.append("## Every run")
    md.append("")
    md.append("| round | target | mode | rate | server CPU-µs/op | client CPU-µs/op | resumed | p50 µs | p99 µs | busy server / client | TLS | errors | other load |")
    md.append("|--:|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|")
    for row in sorted(rows, key=lambda row: (keys.index((row["target"], row["mode"])), row["round"])):
        md.append(f"| {row['round']} " + table_line(row, fmt(row.get("server_cpu_us"), 1)))

failed = [row for row in rows if bad(row)]
if failed:
    md.append("")
    md.append("## Errors")
    md.append("")
    for row in failed:
        md.append(f"- round {row['round']}, {row['target']} / {row['mode']}: exit status {row['exit_status']}"
                  f"{'; ' + row['note'] if row['note'] else ''}")
        for kind, error in (row.get("errors_by_kind") or {}).items():
            md.append(f"  - {kind}: {error['count']} (first: {error['example']})")
if any(disturbed(row) for row in rows):
    md.append("")
    md.append(f"⚠ Another process used the server CPU during some runs (more than {other_max} of a core): "
              "their rates are low and less comparable; the CPU-µs per operation, which count the server's "
              "own time, hold better.")
if notes:
    md.append("")
    md.append("Notes: " + "; ".join(notes))
md.append("")
md.append("## Commands")
md.append("")
md.append(f"`{meta.get('command', '')}`, in full (temporary paths as they were):")
md.append("")
md.append("```")
md.append(commands)
md.append("```")
md.append("")
text = "\n".join(md)
with open(md_path, "w") as f:
    f.write(text)
with open(json_path, "w") as f:
    json.dump({"meta": meta, "notes": notes, "summary": summary, "runs": rows, "comparison": [
        {"server": s, "per": l, "tls_server_cpu_us": t, "plaintext_server_cpu_us": p} for s, l, t, p in comparison
    ]}, f, indent=2)
    f.write("\n")
print(text)
PY
echo "Results: $BASE.md, $BASE.json; raw outputs in $RUN_DIR/" >&2

BAD_RUNS="$(python3 -c '
import json, sys
bad = 0
for line in open(sys.argv[1]):
    run = json.loads(line)
    report = run["report"]
    if run["exit_status"] != 0 or run["note"] or not report or report["errors"] != 0:
        bad += 1
print(bad)' "$RUNS_JSONL")"
if ((BAD_RUNS > 0 || FAILED > 0)); then
    echo "bench-tls.sh: ERROR: $BAD_RUNS run(s) had errors or failed; their figures are not valid (see $BASE.md)" >&2
    exit 1
fi
