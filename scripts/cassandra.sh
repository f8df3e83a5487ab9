#!/usr/bin/env bash
# One Apache Cassandra node on loopback, for the ScyllaDB backend's tests
# (the scylla driver speaks CQL to Cassandra; differences: schema/README.md).
#
#   scripts/cassandra.sh install   fetch Cassandra into .tools/cassandra (pinned, skipped when there)
#   scripts/cassandra.sh start     install, start one node, wait until CQL answers; prints
#                                  HERALD_SCYLLA_NODES=127.0.0.1:<port> on stdout
#   scripts/cassandra.sh stop      stop the node this worktree started, remove its data
#
# Cassandra comes from Maven Central (org.apache.cassandra:cassandra-all and its
# runtime dependencies, scripts/cassandra/pom.xml) with `mvn
# dependency:copy-dependencies`; Maven's cache stays in ~/.m2, so a second
# clone reuses it. The distribution tarball is not used: this script writes
# cassandra.yaml, logback.xml and the java command itself.
#
# The node: 127.0.0.1 only, free ports, data in a temp dir, heap
# $HERALD_CASSANDRA_HEAP (default 1G), one token, no JMX, no auto snapshots,
# periodic commit log (a test node: durability across a power cut does not matter).
# State (pid, port, data dir) lives in .tools/cassandra/run/.
set -euo pipefail

CASSANDRA_VERSION=5.0.5

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="$root/.tools/cassandra"
lib="$home/lib"
run="$home/run"
heap="${HERALD_CASSANDRA_HEAP:-1G}"
start_timeout="${HERALD_CASSANDRA_START_TIMEOUT:-180}"

die() {
  echo "cassandra: $*" >&2
  exit 1
}

install() {
  if [ -f "$lib/cassandra-all-$CASSANDRA_VERSION.jar" ] && [ -f "$home/.complete-$CASSANDRA_VERSION" ]; then
    return
  fi
  command -v java >/dev/null 2>&1 || die "java is missing; Cassandra $CASSANDRA_VERSION needs Java 17 (apt-get install openjdk-17-jre-headless)"
  command -v mvn >/dev/null 2>&1 || die "mvn is missing; apt-get install maven"
  echo "cassandra: mvn dependency:copy-dependencies cassandra-all $CASSANDRA_VERSION into .tools/cassandra/lib" >&2
  rm -rf "$lib" "$home"/.complete-*
  mkdir -p "$home"
  mvn -q -B -Dstyle.color=never -f "$root/scripts/cassandra/pom.xml" -Dcassandra.version="$CASSANDRA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib" >&2 \
    || die "mvn could not fetch cassandra-all $CASSANDRA_VERSION (is Maven Central reachable?)"
  [ -f "$lib/cassandra-all-$CASSANDRA_VERSION.jar" ] || die "mvn fetched no cassandra-all-$CASSANDRA_VERSION.jar"
  touch "$home/.complete-$CASSANDRA_VERSION"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# True once the port answers a CQL OPTIONS request with SUPPORTED.
cql_answers() {
  python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(bytes([0x04, 0, 0, 0, 0x05, 0, 0, 0, 0]))
head = s.recv(9)
sys.exit(0 if len(head) == 9 and head[4] == 0x06 else 1)
EOF
}

running_pid() {
  [ -f "$run/pid" ] || return 1
  local pid
  pid="$(cat "$run/pid")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

start() {
  install
  if running_pid >/dev/null && cql_answers "$(cat "$run/port")"; then
    echo "HERALD_SCYLLA_NODES=127.0.0.1:$(cat "$run/port")"
    return
  fi
  stop_node
  mkdir -p "$run"
  local data cql storage
  data="$(mktemp -d "${TMPDIR:-/tmp}/herald-cassandra.XXXXXX")"
  cql="$(free_port)"
  storage="$(free_port)"
  echo "$data" >"$run/data"
  echo "$cql" >"$run/port"
  cat >"$data/cassandra.yaml" <<EOF
cluster_name: herald-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $cql
start_native_transport: true
data_file_directories: [$data/data]
commitlog_directory: $data/commitlog
saved_caches_directory: $data/saved_caches
hints_directory: $data/hints
cdc_raw_directory: $data/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
auto_snapshot: false
snapshot_before_compaction: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_compactors: 1
key_cache_size: 8MiB
memtable_heap_space: 128MiB
batch_size_warn_threshold: 128KiB
batch_size_fail_threshold: 1024KiB
EOF
  cat >"$data/logback.xml" <<EOF
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$data/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
  local jamm
  jamm="$(ls "$lib"/jamm-*.jar | head -n1)"
  # The JPMS flags of Cassandra's own conf/jvm17-server.options.
  local jpms=(
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.base/jdk.internal.ref=ALL-UNNAMED
    --add-exports java.base/sun.nio.ch=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
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
    --add-opens java.base/java.nio=ALL-UNNAMED
    --add-opens java.base/java.util.concurrent=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.math=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens java.base/java.net=ALL-UNNAMED
  )
  local began=$SECONDS
  setsid java -Xms"$heap" -Xmx"$heap" -Xss512k \
    -XX:TieredStopAtLevel=1 -XX:CICompilerCount=2 -XX:+UseSerialGC \
    -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$data" \
    -Djdk.attach.allowAttachSelf=true -javaagent:"$jamm" "${jpms[@]}" \
    -Dcassandra.config="file://$data/cassandra.yaml" \
    -Dlogback.configurationFile="file://$data/logback.xml" \
    -Dcassandra.storagedir="$data" -Dcassandra.logdir="$data" \
    -Dcassandra-foreground=yes \
    -Dcassandra.skip_wait_for_gossip_to_settle=0 \
    -Dcassandra.ring_delay_ms=0 \
    -Dcassandra.superuser_setup_delay_ms=0 \
    -Dcassandra.initial_token=0 \
    -Dcassandra.disable_auth_caches_remote_configuration=true \
    -Dchronicle.analytics.disable=true \
    -cp "$lib/*" org.apache.cassandra.service.CassandraDaemon \
    >"$data/stdout.log" 2>&1 </dev/null &
  echo $! >"$run/pid"
  local pid=$!
  while ! cql_answers "$cql"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "cassandra: the node exited while starting; last lines of its logs:" >&2
      tail -n 15 "$data/system.log" "$data/stdout.log" >&2 2>/dev/null || true
      local why
      why="$(grep -m1 -E 'ERROR|Error|Exception|Invalid' "$data/stdout.log" "$data/system.log" 2>/dev/null | head -n1 | cut -c1-200 || true)"
      stop_node
      die "the node exited while starting: ${why:-no output}"
    fi
    if [ $((SECONDS - began)) -ge "$start_timeout" ]; then
      stop_node
      die "CQL did not answer on 127.0.0.1:$cql within ${start_timeout}s"
    fi
    sleep 1
  done
  echo "cassandra: node up on 127.0.0.1:$cql in $((SECONDS - began))s (pid $pid, data $data)" >&2
  echo "HERALD_SCYLLA_NODES=127.0.0.1:$cql"
}

# Stops the node this worktree's state names (by its pid, never by name).
stop_node() {
  local pid
  if pid="$(running_pid)"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  if [ -f "$run/data" ]; then
    local data
    data="$(cat "$run/data")"
    case "$data" in
      */herald-cassandra.*) rm -rf "$data" ;;
    esac
  fi
  rm -f "$run/pid" "$run/port" "$run/data"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop_node ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
