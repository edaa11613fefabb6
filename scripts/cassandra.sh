#!/usr/bin/env bash
# Runs a real single-node Apache Cassandra 5.0 on this machine for shardpay's tests, without a
# tarball download or Docker: the server jars come from Maven Central through `mvn` (once, then
# cached), and the JVM is launched directly with a minimal generated configuration.
#
#   scripts/cassandra.sh start    start Cassandra in the background and wait until CQL answers
#                                 (idempotent: exits 0 at once when ours is already serving)
#   scripts/cassandra.sh status   exit 0 and print "running (pid N, port P)" when it serves CQL;
#                                 exit 1 when the process is alive but CQL does not answer;
#                                 exit 3 when it is not running at all
#   scripts/cassandra.sh stop     SIGTERM, wait up to 30 s, then SIGKILL (idempotent, exit 0)
#   scripts/cassandra.sh reset    stop, then delete the database (data/) and logs; the jar cache
#                                 stays, so the next start begins from an empty database
#
# Knobs (environment; deliberately not SHARDPAY_*, the server rejects unknown SHARDPAY_ names):
#   CASSANDRA_DIR            state directory: lib/ (jar cache), conf/, data/, logs/, cassandra.pid
#                            (default $HOME/.cache/shardpay/cassandra-5.0.9)
#   CASSANDRA_PORT           CQL native-protocol port on 127.0.0.1 (default 9042)
#   CASSANDRA_STORAGE_PORT   inter-node storage port on 127.0.0.1 (default 7000)
#   CASSANDRA_HEAP           JVM heap, -Xms = -Xmx (default 2G: every test makes a keyspace of 14 tables)
#   CASSANDRA_START_TIMEOUT  seconds `start` waits for CQL before giving up (default 240)
#
# Needs: java 17 (JAVA_HOME/bin/java or `java` on PATH), mvn (first start only), coreutils.
# Readiness means a real CQL round trip: a protocol-v4 OPTIONS frame must get a SUPPORTED reply.
# The server log is $CASSANDRA_DIR/logs/system.log; JVM stdout/stderr go to logs/stdout.log.
# JMX is off (no nodetool); authentication is off (AllowAllAuthenticator); auto_snapshot is off so
# DROP/TRUNCATE in tests stay cheap.
set -euo pipefail

readonly CASSANDRA_VERSION=5.0.9
CASSANDRA_DIR=${CASSANDRA_DIR:-$HOME/.cache/shardpay/cassandra-$CASSANDRA_VERSION}
[[ $CASSANDRA_DIR == /* ]] || CASSANDRA_DIR="$PWD/$CASSANDRA_DIR"
CASSANDRA_PORT=${CASSANDRA_PORT:-9042}
CASSANDRA_STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7000}
CASSANDRA_HEAP=${CASSANDRA_HEAP:-2G}
CASSANDRA_START_TIMEOUT=${CASSANDRA_START_TIMEOUT:-240}

LIB="$CASSANDRA_DIR/lib"
CONF="$CASSANDRA_DIR/conf"
DATA="$CASSANDRA_DIR/data"
LOGS="$CASSANDRA_DIR/logs"
PIDFILE="$CASSANDRA_DIR/cassandra.pid"
MARKER="$LIB/.fetched-cassandra-all-$CASSANDRA_VERSION"

log() { echo "cassandra.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

check_knobs() {
  [[ $CASSANDRA_PORT =~ ^[0-9]+$ ]] || die "CASSANDRA_PORT must be a port number, got '$CASSANDRA_PORT'"
  [[ $CASSANDRA_STORAGE_PORT =~ ^[0-9]+$ ]] ||
    die "CASSANDRA_STORAGE_PORT must be a port number, got '$CASSANDRA_STORAGE_PORT'"
  [ "$CASSANDRA_PORT" != "$CASSANDRA_STORAGE_PORT" ] ||
    die "CASSANDRA_PORT and CASSANDRA_STORAGE_PORT are both $CASSANDRA_PORT"
  [[ $CASSANDRA_HEAP =~ ^[0-9]+[kKmMgG]?$ ]] || die "CASSANDRA_HEAP must look like 1G or 768M, got '$CASSANDRA_HEAP'"
  [[ $CASSANDRA_START_TIMEOUT =~ ^[0-9]+$ ]] ||
    die "CASSANDRA_START_TIMEOUT must be whole seconds, got '$CASSANDRA_START_TIMEOUT'"
}

java_bin() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "java not found (install a JDK 17 or set JAVA_HOME)"
  fi
}

# Pid from the pid file when that process is alive and is our Cassandra (guards against pid reuse).
running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "-Dcassandra.config=file://$CONF/cassandra.yaml" ||
    return 1
  echo "$pid"
}

# A real CQL round trip: send a protocol-v4 OPTIONS request (stream 1) and expect the reply's
# opcode (5th header byte) to be 0x06 SUPPORTED.
cql_probe() {
  local port=$1 reply
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  reply=$(timeout 5 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "\x04\x00\x00\x01\x05\x00\x00\x00\x00" >&3
    head -c 5 <&3 | od -An -tx1
  ' probe "$port" 2>/dev/null) || return 1
  reply=${reply//[[:space:]]/}
  [ "${reply:8:2}" = "06" ]
}

# True when something accepts TCP connections on 127.0.0.1:port.
port_open() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' probe "$1" 2>/dev/null
}

fetch_jars() {
  if [ -f "$MARKER" ]; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found; it is needed once to fetch the Cassandra jars"
  log "fetching cassandra-all $CASSANDRA_VERSION and its dependencies from Maven Central into $LIB ..."
  mkdir -p "$CASSANDRA_DIR"
  cat >"$CASSANDRA_DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- Written by scripts/cassandra.sh: only used to download the Cassandra server jars. -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>shardpay</groupId>
  <artifactId>cassandra-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIB" "$LIB.partial"
  if ! mvn -B -Dstyle.color=never -f "$CASSANDRA_DIR/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIB.partial" >"$CASSANDRA_DIR/mvn.log" 2>&1; then
    rm -rf "$LIB.partial"
    tail -n 30 "$CASSANDRA_DIR/mvn.log" >&2
    die "mvn could not fetch org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION (is Maven Central reachable? full output: $CASSANDRA_DIR/mvn.log)"
  fi
  [ -f "$LIB.partial/cassandra-all-$CASSANDRA_VERSION.jar" ] ||
    die "mvn finished but $LIB.partial/cassandra-all-$CASSANDRA_VERSION.jar is missing"
  mv "$LIB.partial" "$LIB"
  date -u +%FT%TZ >"$MARKER"
  log "fetched $(find "$LIB" -name '*.jar' | wc -l) jars"
}

write_config() {
  mkdir -p "$CONF" "$DATA" "$LOGS"
  cat >"$CONF/cassandra.yaml" <<EOF
# Written by scripts/cassandra.sh on every start; edit the script, not this file.
cluster_name: shardpay-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
storage_compatibility_mode: NONE

listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $CASSANDRA_STORAGE_PORT
native_transport_port: $CASSANDRA_PORT
start_native_transport: true
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$CASSANDRA_STORAGE_PORT"
endpoint_snitch: SimpleSnitch

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

data_file_directories:
  - $DATA/data
commitlog_directory: $DATA/commitlog
saved_caches_directory: $DATA/saved_caches
hints_directory: $DATA/hints
cdc_raw_directory: $DATA/cdc_raw
cdc_enabled: false

commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
disk_failure_policy: stop
commit_failure_policy: stop

# One test node on a small machine: fewer threads, no snapshots on DROP/TRUNCATE.
auto_snapshot: false
# shardpay writes each shard's group-commit batch as one logged batch (see docs/STORAGE.md).
batch_size_warn_threshold: 1MiB
batch_size_fail_threshold: 4MiB
hinted_handoff_enabled: false
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 8
concurrent_compactors: 1
memtable_flush_writers: 1
key_cache_size: 16MiB
dynamic_snitch: false
EOF
  cat >"$CONF/logback.xml" <<EOF
<configuration scan="false">
  <!-- Written by scripts/cassandra.sh on every start. -->
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>$LOGS/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.SizeAndTimeBasedRollingPolicy">
      <fileNamePattern>$LOGS/system.log.%d{yyyy-MM-dd}.%i.zip</fileNamePattern>
      <maxFileSize>50MB</maxFileSize>
      <maxHistory>3</maxHistory>
      <totalSizeCap>200MB</totalSizeCap>
    </rollingPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG" />
  </root>
  <logger name="org.apache.cassandra" level="INFO" />
</configuration>
EOF
}

show_logs() {
  if [ -s "$LOGS/stdout.log" ]; then
    log "last lines of $LOGS/stdout.log:"
    tail -n 20 "$LOGS/stdout.log" >&2
  fi
  if [ -f "$LOGS/system.log" ]; then
    log "last 50 lines of $LOGS/system.log:"
    tail -n 50 "$LOGS/system.log" >&2
  else
    log "no $LOGS/system.log was written"
  fi
}

cmd_start() {
  local pid java jamm waited
  if pid=$(running_pid); then
    if cql_probe "$CASSANDRA_PORT"; then
      echo "already running (pid $pid, port $CASSANDRA_PORT)"
      return 0
    fi
    log "pid $pid is alive but CQL does not answer on port $CASSANDRA_PORT yet; waiting for it"
  else
    rm -f "$PIDFILE"
    if port_open "$CASSANDRA_PORT"; then
      die "port $CASSANDRA_PORT is already in use by a process this script did not start; stop it or set CASSANDRA_PORT"
    fi
    if port_open "$CASSANDRA_STORAGE_PORT"; then
      die "storage port $CASSANDRA_STORAGE_PORT is already in use; stop that process or set CASSANDRA_STORAGE_PORT"
    fi
    java=$(java_bin)
    fetch_jars
    write_config
    jamm=$(compgen -G "$LIB/jamm-*.jar" | head -n 1) || true
    [ -n "$jamm" ] || die "no jamm-*.jar in $LIB (delete $MARKER to refetch)"

    # JVM flags: heap + G1 and the JPMS exports/opens from Cassandra 5.0's conf/jvm17-server.options
    # (needed on Java 17 for Unsafe, direct-buffer cleanup, jamm object sizing and Chronicle);
    # jamm as a java agent like bin/cassandra does; fast single-node start (no gossip settling).
    local -a jvm=(
      -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" -Xss256k
      -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
      -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300
      -XX:InitiatingHeapOccupancyPercent=70
      -XX:+ExitOnOutOfMemoryError -XX:+PerfDisableSharedMem
      -XX:StringTableSize=1000003 -XX:+UseTLAB -XX:+ResizeTLAB
      -Djava.net.preferIPv4Stack=true
      -Djdk.attach.allowAttachSelf=true
      --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
      --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
      --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
      --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
      --add-exports java.sql/java.sql=ALL-UNNAMED
      --add-exports java.base/java.lang.ref=ALL-UNNAMED
      --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
      --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
      --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
      --add-opens java.base/java.lang.module=ALL-UNNAMED
      --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
      --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
      --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
      --add-opens java.base/jdk.internal.math=ALL-UNNAMED
      --add-opens java.base/jdk.internal.module=ALL-UNNAMED
      --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
      --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
      --add-opens java.base/sun.nio.ch=ALL-UNNAMED
      --add-opens java.base/java.io=ALL-UNNAMED
      --add-opens java.base/java.lang.reflect=ALL-UNNAMED
      --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
      --add-opens java.base/java.lang=ALL-UNNAMED
      --add-opens java.base/java.util=ALL-UNNAMED
      -Dio.netty.tryReflectionSetAccessible=true
      -Dio.netty.allocator.useCacheForAllThreads=true
      -Dio.netty.allocator.maxOrder=11
      -javaagent:"$jamm"
      -Dcassandra-foreground=yes
      -Dcassandra.config="file://$CONF/cassandra.yaml"
      -Dlogback.configurationFile="file://$CONF/logback.xml"
      -Dcassandra.logdir="$LOGS"
      -Dcassandra.storagedir="$DATA"
      -Dcassandra.triggers_dir="$CONF/triggers"
      -Dcassandra.skip_wait_for_gossip_to_settle=0
      -Dcassandra.ring_delay_ms=1000
      -Dcassandra.superuser_setup_delay_ms=0
      -Dcassandra.shutdown_announce_in_ms=0
    )
    # As root, Cassandra's mlockall() succeeds and faults in and pins the whole heap at once
    # (RSS ~1.5G from the first second with 1G heap). A test node does not need that: drop
    # CAP_IPC_LOCK so the call fails (RLIMIT_MEMLOCK) with a harmless warning, exactly as it does
    # for non-root users; RSS then grows only as the heap is actually used.
    local -a prefix=()
    if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
      prefix=(setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock)
    fi
    mkdir -p "$CONF/triggers"
    : >"$LOGS/stdout.log"
    log "starting Cassandra $CASSANDRA_VERSION (CQL 127.0.0.1:$CASSANDRA_PORT, heap $CASSANDRA_HEAP, dir $CASSANDRA_DIR)"
    (
      cd "$CASSANDRA_DIR"
      exec setsid nohup "${prefix[@]}" "$java" "${jvm[@]}" -cp "$CONF:$LIB/*" \
        org.apache.cassandra.service.CassandraDaemon </dev/null >>"$LOGS/stdout.log" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$PIDFILE"
  fi

  waited=0
  while :; do
    if cql_probe "$CASSANDRA_PORT"; then
      echo "running (pid $pid, port $CASSANDRA_PORT), ready after ${waited}s"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      log "Cassandra (pid $pid) exited during startup"
      show_logs
      exit 1
    fi
    if [ "$waited" -ge "$CASSANDRA_START_TIMEOUT" ]; then
      log "Cassandra (pid $pid) did not answer CQL on port $CASSANDRA_PORT within ${CASSANDRA_START_TIMEOUT}s; it is left running (use 'stop')"
      show_logs
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

cmd_status() {
  local pid
  if ! pid=$(running_pid); then
    if [ -f "$PIDFILE" ]; then
      echo "not running (stale pid file $PIDFILE)"
    else
      echo "not running"
    fi
    return 3
  fi
  if cql_probe "$CASSANDRA_PORT"; then
    echo "running (pid $pid, port $CASSANDRA_PORT)"
    return 0
  fi
  echo "pid $pid is alive but CQL does not answer on port $CASSANDRA_PORT (starting, or unhealthy: see $LOGS/system.log)"
  return 1
}

cmd_stop() {
  local pid i
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE"
    echo "not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after 30s of SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
  fi
  rm -f "$PIDFILE"
  echo "stopped (pid $pid)"
}

cmd_reset() {
  cmd_stop
  rm -rf "$DATA" "$LOGS"
  echo "database deleted ($DATA); jar cache kept in $LIB"
}

check_knobs
case "${1:-}" in
  start) cmd_start ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  reset) cmd_reset ;;
  *)
    echo "usage: $0 start|status|stop|reset   (see the header of this script for the knobs)" >&2
    exit 2
    ;;
esac
