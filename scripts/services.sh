#!/usr/bin/env bash
# Real servers for connector tests and for trying connectors by hand: Apache Kafka (KRaft, one
# combined broker+controller), PostgreSQL (wal_level=logical) and MariaDB (ROW binlog), each on
# 127.0.0.1 at a free port, its state under ${CARGO_TARGET_DIR:-target}/services/<name>. No docker.
#
#   scripts/services.sh start  kafka|postgres|mariadb|all   start (a no-op when already running)
#   scripts/services.sh stop   kafka|postgres|mariadb|all   stop (SIGTERM/SIGINT, SIGKILL after a timeout)
#   scripts/services.sh status kafka|postgres|mariadb|all   exit 0 when running, 3 when not
#   scripts/services.sh clean  kafka|postgres|mariadb|all   stop and delete its data (keeps Kafka's jars)
#   scripts/services.sh kafka-tool MAIN_CLASS [ARGS...]     run a Kafka tool from the cached jars, e.g.
#       scripts/services.sh kafka-tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$LAMINAR_KAFKA" --list
#
# Each start writes its line to ${CARGO_TARGET_DIR:-target}/services.env (stop removes it):
#   LAMINAR_KAFKA=127.0.0.1:PORT
#   LAMINAR_POSTGRES=postgres://laminar:PASSWORD@127.0.0.1:PORT/laminar
#   LAMINAR_MARIADB=mysql://laminar:PASSWORD@127.0.0.1:PORT/laminar
# Use them with `set -a; . target/services.env; set +a`. A restart keeps the data, the password
# and, when it is still free, the port.
#
# What each needs:
#   kafka     Java 17+ and Maven (mvn). The first start fetches org.apache.kafka:kafka_2.13 and
#             kafka-tools plus a log4j2 binding from Maven Central into services/kafka/lib.
#   postgres  initdb/pg_ctl/psql on PATH or under /usr/lib/postgresql/*/bin; else installs the
#             distribution's `postgresql` with apt-get. As root the server runs as the `postgres`
#             user (or `laminar-svc`, created when neither exists): postgres refuses to run as root.
#   mariadb   mariadbd or mysqld, mariadb-install-db and the mariadb client; else installs
#             `mariadb-server mariadb-client` with apt-get. As root it runs with --user=root.
# apt-get runs with sudo when not root, and with a temporary policy-rc.d so that the package's
# own system service is not started.
#
# Environment: CARGO_TARGET_DIR; LAMINAR_SERVICES_TIMEOUT (seconds a start may take, default 90);
# LAMINAR_KAFKA_LIB (the jar cache, default services/kafka/lib); LAMINAR_KAFKA_HEAP (default
# "-Xms128m -Xmx512m").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
SVC="$TARGET/services"
ENV_FILE="$TARGET/services.env"
HOST=127.0.0.1
TIMEOUT="${LAMINAR_SERVICES_TIMEOUT:-90}"

KAFKA_VERSION=4.4.0
LOG4J_VERSION=2.26.1
SLF4J_VERSION=2.0.17
KAFKA_DIR="$SVC/kafka"
KAFKA_LIB="${LAMINAR_KAFKA_LIB:-$KAFKA_DIR/lib}"
PG_DIR="$SVC/postgres"
MARIA_DIR="$SVC/mariadb"

# ---------------------------------------------------------------------------------------------
# helpers

die() { echo "services.sh: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# free_port [WANTED]: WANTED when it can be bound on 127.0.0.1, else a free port.
free_port() {
  local want="${1:-}"
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$want" <<'EOF'
import socket, sys
def bind(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
        return s.getsockname()[1]
    finally:
        s.close()
want = int(sys.argv[1]) if sys.argv[1] else 0
if want:
    try:
        print(bind(want)); sys.exit(0)
    except OSError:
        pass
print(bind(0))
EOF
  else
    local p
    if [ -n "$want" ] && ! port_open "$want"; then echo "$want"; return; fi
    for _ in $(seq 1 100); do
      p=$((20000 + RANDOM % 30000))
      port_open "$p" || { echo "$p"; return; }
    done
    die "no free port found on $HOST"
  fi
}

# pid_alive PID PATTERN: the process PID exists and its command line matches PATTERN (ERE), so
# that a stale pid file whose number was reused by another program is not taken for ours.
pid_alive() {
  local pid="$1" pat="$2" cmd
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/cmdline" ]; then cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline")"; else cmd="$(ps -o args= -p "$pid" 2>/dev/null || true)"; fi
  grep -Eq -- "$pat" <<<"$cmd"
}

# stop_pid NAME PID SIGNAL: sends SIGNAL, waits up to 30 s for the exit, then SIGKILL.
stop_pid() {
  local name="$1" pid="$2" sig="$3" t0 _
  t0="$(now)"
  kill -s "$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { echo "$name: stopped in $(since "$t0")"; return 0; }
    sleep 0.1
  done
  echo "$name: still running 30s after SIG$sig; sending SIGKILL" >&2
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { echo "$name: killed"; return 0; }
    sleep 0.1
  done
  die "$name: pid $pid survives SIGKILL"
}

# env_set KEY [VALUE]: replaces KEY's line in services.env (removes it when VALUE is empty).
env_set() {
  local key="$1" val="${2:-}" tmp
  mkdir -p "$SVC"
  tmp="$ENV_FILE.tmp.$$"
  (
    command -v flock >/dev/null 2>&1 && flock 9
    { grep -v "^$key=" "$ENV_FILE" 2>/dev/null || true; if [ -n "$val" ]; then echo "$key=$val"; fi; } >"$tmp"
    if [ -s "$tmp" ]; then mv -f "$tmp" "$ENV_FILE"; else rm -f "$tmp" "$ENV_FILE"; fi
  ) 9>>"$SVC/.env.lock"
}

new_password() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# password_of DIR: the service's password, made on first use and kept in DIR/password.
password_of() {
  local f="$1/password"
  if [ ! -s "$f" ]; then (umask 077; new_password >"$f"); fi
  cat "$f"
}

read_file() { if [ -r "$1" ]; then head -n1 "$1"; fi; }

# show_log FILE [LINES]: the file's last lines, on stderr.
show_log() {
  if [ -s "$1" ]; then
    echo "--- last lines of $1:" >&2
    tail -n "${2:-40}" "$1" >&2
  fi
}

# wait_for DESCRIPTION PID PATTERN LOGFILE COMMAND...: runs COMMAND every half second until it
# succeeds; fails (printing the log's tail) when the process dies or TIMEOUT passes.
wait_for() {
  local what="$1" pid="$2" pat="$3" log="$4"; shift 4
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$pid" "$pat"; then
      echo "services.sh: $what: the server exited while starting" >&2
      show_log "$log"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "services.sh: $what: not ready after ${TIMEOUT}s (LAMINAR_SERVICES_TIMEOUT)" >&2
      show_log "$log"
      return 1
    fi
    sleep 0.5
  done
}

# apt_install PACKAGE...: installs with apt-get (sudo when not root), without starting the
# packages' system services.
apt_install() {
  local sudo="" policy=/usr/sbin/policy-rc.d added=0 rc=0
  command -v apt-get >/dev/null 2>&1 || die "$* missing and there is no apt-get: install $* with your package manager"
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "$* missing and this user cannot install packages: install $* (Debian/Ubuntu) as root"
    sudo="sudo"
  fi
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" && added=1
  fi
  echo "installing $* with apt-get ..."
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends "$@" >"$SVC/apt.log" 2>&1 \
    || { $sudo apt-get update -q >>"$SVC/apt.log" 2>&1 && $sudo apt-get install -y -q --no-install-recommends "$@" >>"$SVC/apt.log" 2>&1; } \
    || rc=$?
  [ "$added" = 1 ] && $sudo rm -f "$policy"
  if [ "$rc" != 0 ]; then
    tail -n 20 "$SVC/apt.log" >&2
    die "apt-get install $* failed (log: $SVC/apt.log)"
  fi
}

# as_user USER COMMAND...: runs COMMAND as USER (directly when that is who we are).
as_user() {
  local u="$1"; shift
  if [ "$u" = "$(id -un)" ]; then "$@"
  elif command -v runuser >/dev/null 2>&1; then runuser -u "$u" -- "$@"
  else su -s /bin/sh "$u" -c "$(printf '%q ' "$@")"
  fi
}

# ---------------------------------------------------------------------------------------------
# Kafka

KAFKA_PAT='kafka\.Kafka '

java_check() {
  command -v java >/dev/null 2>&1 || die "kafka: java is missing: install a Java 17+ runtime (Debian/Ubuntu: openjdk-17-jre-headless)"
  local v
  v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  [ "${v:-0}" -ge 17 ] || die "kafka: Java 17 or newer is needed, found: $(java -version 2>&1 | head -n1)"
}

kafka_fetch() {
  local stamp="$KAFKA_LIB/.laminar-jars" want="kafka_2.13-$KAFKA_VERSION log4j-slf4j2-impl-$LOG4J_VERSION slf4j-api-$SLF4J_VERSION"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  command -v mvn >/dev/null 2>&1 || die "kafka: Maven (mvn) is missing: it fetches the Kafka jars from Maven Central (Debian/Ubuntu: apt-get install maven)"
  local t0 work
  t0="$(now)"
  work="$KAFKA_DIR/fetch"
  rm -rf "$work"; mkdir -p "$work"
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.laminardb.services</groupId>
  <artifactId>kafka-server-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- kafka_2.13's pom brings slf4j-api 1.7, which cannot see the slf4j2 binding below -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  echo "kafka: fetching Kafka $KAFKA_VERSION jars with Maven ..."
  if ! (cd "$work" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$work/lib") >"$work/mvn.log" 2>&1; then
    tail -n 30 "$work/mvn.log" >&2
    die "kafka: mvn could not fetch the Kafka jars (log: $work/mvn.log)"
  fi
  ls "$work/lib"/kafka_2.13-*.jar "$work/lib"/kafka-tools-*.jar >/dev/null 2>&1 || die "kafka: mvn ran but the Kafka jars are not in $work/lib"
  echo "$want" >"$work/lib/.laminar-jars"
  rm -rf "$KAFKA_LIB"; mkdir -p "$(dirname "$KAFKA_LIB")"
  mv "$work/lib" "$KAFKA_LIB"
  rm -rf "$work"
  echo "kafka: jars fetched in $(since "$t0") ($(du -sh "$KAFKA_LIB" | cut -f1) in $KAFKA_LIB)"
}

kafka_tool_config() {
  mkdir -p "$KAFKA_DIR"
  [ -f "$KAFKA_DIR/tools-log4j2.properties" ] || cat >"$KAFKA_DIR/tools-log4j2.properties" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
EOF
}

# The java command line of a short-lived tool (small heap, quick start) on the cached jars.
KAFKA_TOOL=(java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" -cp "$KAFKA_LIB/*")

# kafka_tool MAIN_CLASS ARGS...
kafka_tool() {
  java_check
  kafka_fetch
  kafka_tool_config
  "${KAFKA_TOOL[@]}" "$@"
}

kafka_pid() { read_file "$KAFKA_DIR/kafka.pid"; }
kafka_port() { read_file "$KAFKA_DIR/port"; }
kafka_running() { local p; p="$(kafka_port)"; pid_alive "$(kafka_pid)" "$KAFKA_PAT" && [ -n "$p" ] && port_open "$p"; }

# kafka_ready PORT: the broker accepts connections and creates a topic.
kafka_ready() {
  port_open "$1" && timeout 30 "${KAFKA_TOOL[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$1" \
    --create --if-not-exists --topic laminar-services-ready --partitions 1 --replication-factor 1 >"$KAFKA_DIR/logs/ready.log" 2>&1
}

kafka_start() {
  if kafka_running; then
    echo "kafka: already running at $HOST:$(kafka_port) (pid $(kafka_pid))"
    env_set LAMINAR_KAFKA "$HOST:$(kafka_port)"
    return 0
  fi
  pid_alive "$(kafka_pid)" "$KAFKA_PAT" && { echo "kafka: pid $(kafka_pid) does not answer; restarting it"; kafka_stop; }
  java_check
  mkdir -p "$KAFKA_DIR/logs"
  kafka_fetch
  kafka_tool_config
  local port cport t0 data="$KAFKA_DIR/data"
  port="$(free_port "$(kafka_port)")"
  cport="$(free_port "$(read_file "$KAFKA_DIR/controller_port")")"
  while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/services.sh on each start: a single KRaft node on $HOST.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$cport
listeners=PLAINTEXT://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=PLAINTEXT://$HOST:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data
num.partitions=1
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
log.segment.bytes=67108864
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<EOF
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = $KAFKA_DIR/logs/server.log
appender.file.filePattern = $KAFKA_DIR/logs/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.statechange.name = state.change.logger
logger.statechange.level = warn
EOF
  if [ ! -f "$data/meta.properties" ]; then
    t0="$(now)"
    rm -rf "$data"
    local cid
    # A cluster id is a base64url UUID (22 characters); made here to spare a JVM start. One
    # that starts with '-' would read as an option (1 in 64 runs failed so), so it is redrawn.
    cid=-
    while [ "${cid#-}" != "$cid" ]; do
      cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    done
    if ! kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/logs/format.log" 2>&1; then
      cat "$KAFKA_DIR/logs/format.log" >&2
      die "kafka: formatting the storage in $data failed"
    fi
    echo "kafka: storage formatted in $(since "$t0") (cluster id $cid)"
  fi
  t0="$(now)"
  echo "$port" >"$KAFKA_DIR/port"
  echo "$cport" >"$KAFKA_DIR/controller_port"
  # shellcheck disable=SC2086
  setsid java ${LAMINAR_KAFKA_HEAP:--Xms128m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
    -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    >"$KAFKA_DIR/logs/kafka.out" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$KAFKA_DIR/kafka.pid"
  if ! wait_for "kafka" "$pid" "$KAFKA_PAT" "$KAFKA_DIR/logs/server.log" kafka_ready "$port"; then
    show_log "$KAFKA_DIR/logs/kafka.out" 20
    show_log "$KAFKA_DIR/logs/ready.log" 20
    kafka_stop >&2 || true
    die "kafka: did not start (logs: $KAFKA_DIR/logs)"
  fi
  env_set LAMINAR_KAFKA "$HOST:$port"
  echo "kafka: started in $(since "$t0") at $HOST:$port (pid $pid)"
}

kafka_stop() {
  local pid; pid="$(kafka_pid)"
  if pid_alive "$pid" "$KAFKA_PAT"; then stop_pid kafka "$pid" TERM; else echo "kafka: not running"; fi
  rm -f "$KAFKA_DIR/kafka.pid"
  env_set LAMINAR_KAFKA
}

kafka_status() {
  if kafka_running; then echo "kafka: running at $HOST:$(kafka_port) (pid $(kafka_pid))"; return 0; fi
  echo "kafka: stopped"; return 3
}

kafka_clean() { kafka_stop; rm -rf "$KAFKA_DIR/data" "$KAFKA_DIR/logs" "$KAFKA_DIR"/*.properties "$KAFKA_DIR/port" "$KAFKA_DIR/controller_port"; }

# ---------------------------------------------------------------------------------------------
# PostgreSQL

PG_PAT='postgres|postmaster'
PG_BIN=""

pg_find() {
  local d
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    d="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
    [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && { PG_BIN="$d"; return 0; }
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin /usr/pgsql-*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ] && { PG_BIN="$d"; return 0; }
  done
  return 1
}

pg_install() {
  pg_find && return 0
  local t0; t0="$(now)"
  mkdir -p "$SVC"
  apt_install postgresql
  pg_find || die "postgres: installed postgresql but found no initdb/pg_ctl/postgres (PATH or /usr/lib/postgresql/*/bin)"
  echo "postgres: installed in $(since "$t0")"
}

pg_psql() {
  local psql="$PG_BIN/psql"
  [ -x "$psql" ] || psql="$(command -v psql)" || die "postgres: psql is missing"
  PGPASSWORD="$(password_of "$PG_DIR")" PGCONNECT_TIMEOUT=5 "$psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$(pg_port)" -U laminar "$@"
}

# The user the server runs as: ourselves, or when root an unprivileged one.
pg_user() {
  if [ "$(id -u)" != 0 ]; then id -un; return; fi
  if id postgres >/dev/null 2>&1; then echo postgres; return; fi
  id laminar-svc >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin laminar-svc \
    || die "postgres: cannot create the unprivileged user laminar-svc for the server (postgres refuses to run as root)"
  echo laminar-svc
}

# Where the data lives when the server's user cannot reach the services folder: one per folder.
pg_alt_dir() { echo "/var/tmp/laminar-services-$(echo "$SVC" | cksum | cut -d' ' -f1)"; }
pg_pid() { read_file "$PG_DIR/data/postmaster.pid"; }
pg_port() { read_file "$PG_DIR/port"; }
pg_running() { local p; p="$(pg_port)"; pid_alive "$(pg_pid)" "$PG_PAT" && [ -n "$p" ] && port_open "$p"; }
pg_url() { echo "postgres://laminar:$(password_of "$PG_DIR")@$HOST:$(pg_port)/laminar"; }

pg_start() {
  if pg_running; then
    echo "postgres: already running at $HOST:$(pg_port) (pid $(pg_pid))"
    env_set LAMINAR_POSTGRES "$(pg_url)"
    return 0
  fi
  pid_alive "$(pg_pid)" "$PG_PAT" && { echo "postgres: pid $(pg_pid) does not answer; restarting it"; pg_stop; }
  pg_install
  local user t0 run="$PG_DIR" data port
  user="$(pg_user)"
  mkdir -p "$PG_DIR"
  if [ "$user" != "$(id -un)" ] && ! as_user "$user" test -x "$PG_DIR"; then
    # The server's user cannot reach the services folder (say, a checkout under /root): its data
    # and log live where it can, linked from here.
    run="$(pg_alt_dir)/postgres"
    mkdir -p "$run"; chmod 755 "$(dirname "$run")" "$run"
    [ -L "$PG_DIR/data" ] || { rm -rf "$PG_DIR/data"; ln -s "$run/data" "$PG_DIR/data"; }
    [ -L "$PG_DIR/log" ] || { rm -rf "$PG_DIR/log"; ln -s "$run/log" "$PG_DIR/log"; }
  fi
  data="$run/data"
  if [ ! -f "$data/PG_VERSION" ]; then
    t0="$(now)"
    rm -rf "$data"; mkdir -p "$data"
    chown "$user" "$data"; chmod 700 "$data"
    local pw pwfile="$run/pwfile.tmp"
    pw="$(password_of "$PG_DIR")"
    (umask 077; printf '%s\n' "$pw" >"$pwfile"); chown "$user" "$pwfile"
    if ! (cd / && as_user "$user" "$PG_BIN/initdb" -D "$data" -U laminar --pwfile="$pwfile" \
        --auth=scram-sha-256 -E UTF8 --no-locale) >"$PG_DIR/initdb.log" 2>&1; then
      cat "$PG_DIR/initdb.log" >&2
      rm -f "$pwfile"
      die "postgres: initdb failed (log: $PG_DIR/initdb.log)"
    fi
    rm -f "$pwfile"
    local sock="''"
    [ "${#data}" -lt 90 ] && sock="'$data'"
    cat >>"$data/postgresql.conf" <<EOF

# scripts/services.sh: loopback only, logical decoding for CDC.
listen_addresses = '$HOST'
unix_socket_directories = $sock
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
max_connections = 50
shared_buffers = 64MB
EOF
    echo "postgres: initdb in $(since "$t0") ($("$PG_BIN/postgres" --version))"
  fi
  port="$(free_port "$(pg_port)")"
  echo "$port" >"$PG_DIR/port"
  mkdir -p "$run/log"; chown "$user" "$run/log"
  t0="$(now)"
  if ! (cd / && as_user "$user" "$PG_BIN/pg_ctl" -D "$data" -l "$run/log/postgres.log" -w -t "$TIMEOUT" \
      -o "-p $port" start) >"$PG_DIR/pg_ctl.log" 2>&1; then
    show_log "$PG_DIR/pg_ctl.log"; show_log "$PG_DIR/log/postgres.log"
    pg_stop >&2 || true
    die "postgres: did not start (log: $PG_DIR/log/postgres.log)"
  fi
  if ! wait_for postgres "$(pg_pid)" "$PG_PAT" "$PG_DIR/log/postgres.log" pg_psql -d postgres -Atc 'SELECT 1'; then
    pg_stop >&2 || true
    die "postgres: started but does not answer queries (log: $PG_DIR/log/postgres.log)"
  fi
  if [ -z "$(pg_psql -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'laminar'")" ]; then
    pg_psql -d postgres -c 'CREATE DATABASE laminar'
  fi
  env_set LAMINAR_POSTGRES "$(pg_url)"
  echo "postgres: started in $(since "$t0") at $HOST:$port (pid $(pg_pid))"
}

pg_stop() {
  local pid; pid="$(pg_pid)"
  # SIGINT is PostgreSQL's fast shutdown: clients are disconnected, then a checkpoint.
  if pid_alive "$pid" "$PG_PAT"; then stop_pid postgres "$pid" INT; else echo "postgres: not running"; fi
  env_set LAMINAR_POSTGRES
}

pg_status() {
  if pg_running; then echo "postgres: running at $HOST:$(pg_port) (pid $(pg_pid))"; return 0; fi
  echo "postgres: stopped"; return 3
}

pg_clean() {
  pg_stop
  rm -rf "$(pg_alt_dir)"
  rm -rf "$PG_DIR"
}

# ---------------------------------------------------------------------------------------------
# MariaDB

MARIA_PAT='mariadbd|mysqld'
MARIA_D="" MARIA_INSTALL_DB="" MARIA_CLIENT=""

maria_find() {
  local p
  MARIA_D="" MARIA_INSTALL_DB="" MARIA_CLIENT=""
  for p in mariadbd mysqld /usr/sbin/mariadbd /usr/sbin/mysqld /usr/libexec/mariadbd /usr/libexec/mysqld; do
    if command -v "$p" >/dev/null 2>&1; then MARIA_D="$(command -v "$p")"; break; fi
  done
  for p in mariadb-install-db mysql_install_db /usr/bin/mariadb-install-db /usr/bin/mysql_install_db /usr/scripts/mariadb-install-db; do
    if command -v "$p" >/dev/null 2>&1; then MARIA_INSTALL_DB="$(command -v "$p")"; break; fi
  done
  for p in mariadb mysql; do
    if command -v "$p" >/dev/null 2>&1; then MARIA_CLIENT="$(command -v "$p")"; break; fi
  done
  [ -n "$MARIA_D" ] && [ -n "$MARIA_INSTALL_DB" ] && [ -n "$MARIA_CLIENT" ]
}

maria_install() {
  maria_find && return 0
  local t0; t0="$(now)"
  mkdir -p "$SVC"
  apt_install mariadb-server mariadb-client
  maria_find || die "mariadb: installed mariadb-server but found no mariadbd/mysqld, mariadb-install-db or mariadb client (missing: $([ -n "$MARIA_D" ] || echo "mariadbd ")$([ -n "$MARIA_INSTALL_DB" ] || echo "mariadb-install-db ")$([ -n "$MARIA_CLIENT" ] || echo "mariadb"))"
  echo "mariadb: installed in $(since "$t0")"
}

maria_pid() { read_file "$MARIA_DIR/mariadbd.pid"; }
maria_port() { read_file "$MARIA_DIR/port"; }
maria_running() { local p; p="$(maria_port)"; pid_alive "$(maria_pid)" "$MARIA_PAT" && [ -n "$p" ] && port_open "$p"; }
maria_url() { echo "mysql://laminar:$(password_of "$MARIA_DIR")@$HOST:$(maria_port)/laminar"; }
# The administrator's client: over the socket, authenticated as this OS user (unix_socket).
maria_admin() { "$MARIA_CLIENT" --defaults-file="$MARIA_DIR/my.cnf" -u "$(id -un)" "$@"; }

maria_start() {
  if maria_running; then
    echo "mariadb: already running at $HOST:$(maria_port) (pid $(maria_pid))"
    env_set LAMINAR_MARIADB "$(maria_url)"
    return 0
  fi
  pid_alive "$(maria_pid)" "$MARIA_PAT" && { echo "mariadb: pid $(maria_pid) does not answer; restarting it"; maria_stop; }
  maria_install
  mkdir -p "$MARIA_DIR"
  local data="$MARIA_DIR/data" sock="$MARIA_DIR/mysqld.sock" port t0 user_line=""
  # A unix socket path has at most 107 bytes.
  if [ "${#sock}" -gt 100 ]; then sock="/tmp/laminar-mariadb-$(echo "$SVC" | cksum | cut -d' ' -f1).sock"; fi
  [ "$(id -u)" = 0 ] && user_line="user=root"
  port="$(free_port "$(maria_port)")"
  cat >"$MARIA_DIR/my.cnf" <<EOF
# Written by scripts/services.sh on each start: loopback only, ROW binlog for CDC.
[mysqld]
$user_line
datadir=$data
socket=$sock
port=$port
bind-address=$HOST
skip-name-resolve
pid-file=$MARIA_DIR/mariadbd.pid
log-error=$MARIA_DIR/mariadbd.err
log-bin=binlog
binlog_format=ROW
binlog_row_image=FULL
server_id=1
expire_logs_days=1
max_connections=50
innodb_buffer_pool_size=64M
# A test server: commits flushed once a second, not fsynced each (the tests crash LaminarDB, not it).
innodb_flush_log_at_trx_commit=2
innodb_log_file_size=48M
performance_schema=OFF

[client]
socket=$sock
EOF
  if [ ! -d "$data/mysql" ]; then
    t0="$(now)"
    rm -rf "$data"
    if ! "$MARIA_INSTALL_DB" --defaults-file="$MARIA_DIR/my.cnf" --auth-root-authentication-method=socket \
        --auth-root-socket-user="$(id -un)" --skip-test-db >"$MARIA_DIR/install-db.log" 2>&1; then
      tail -n 30 "$MARIA_DIR/install-db.log" >&2
      rm -rf "$data"
      die "mariadb: mariadb-install-db failed (log: $MARIA_DIR/install-db.log)"
    fi
    echo "mariadb: install-db in $(since "$t0") ($("$MARIA_D" --version | head -n1))"
  fi
  echo "$port" >"$MARIA_DIR/port"
  t0="$(now)"
  rm -f "$MARIA_DIR/mariadbd.pid"
  setsid "$MARIA_D" --defaults-file="$MARIA_DIR/my.cnf" >"$MARIA_DIR/mariadbd.out" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$MARIA_DIR/mariadbd.pid"
  if ! wait_for mariadb "$pid" "$MARIA_PAT" "$MARIA_DIR/mariadbd.err" \
      bash -c "timeout 2 bash -c 'exec 3<>/dev/tcp/$HOST/$port' && [ -S '$sock' ]"; then
    show_log "$MARIA_DIR/mariadbd.out" 10
    maria_stop >&2 || true
    die "mariadb: did not start (log: $MARIA_DIR/mariadbd.err)"
  fi
  local pw; pw="$(password_of "$MARIA_DIR")"
  if ! maria_admin --connect-timeout=10 <<EOF
CREATE DATABASE IF NOT EXISTS laminar;
CREATE USER IF NOT EXISTS 'laminar'@'%' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'laminar'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'laminar'@'%' IDENTIFIED BY '$pw';
ALTER USER 'laminar'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON laminar.* TO 'laminar'@'%', 'laminar'@'localhost';
GRANT SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'laminar'@'%', 'laminar'@'localhost';
GRANT BINLOG ADMIN ON *.* TO 'laminar'@'%', 'laminar'@'localhost';
FLUSH PRIVILEGES;
EOF
  then
    maria_stop >&2 || true
    die "mariadb: started but creating the laminar user and database failed"
  fi
  env_set LAMINAR_MARIADB "$(maria_url)"
  echo "mariadb: started in $(since "$t0") at $HOST:$port (pid $pid)"
}

maria_stop() {
  local pid; pid="$(maria_pid)"
  if pid_alive "$pid" "$MARIA_PAT"; then stop_pid mariadb "$pid" TERM; else echo "mariadb: not running"; fi
  rm -f "$MARIA_DIR/mariadbd.pid"
  env_set LAMINAR_MARIADB
}

maria_status() {
  if maria_running; then echo "mariadb: running at $HOST:$(maria_port) (pid $(maria_pid))"; return 0; fi
  echo "mariadb: stopped"; return 3
}

maria_clean() { maria_stop; rm -rf "$MARIA_DIR"; }

# ---------------------------------------------------------------------------------------------

# usage [full]: the commands (all of the header comment with "full").
usage() {
  if [ "${1:-}" = full ]; then sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0; fi
  sed -n 's/^#   \(scripts\/services.sh [a-z-]* .*\)/  \1/p' "$0" >&2
  echo "  (scripts/services.sh help: the whole description)" >&2
  exit 2
}

cmd="${1:-}"
[ -n "$cmd" ] || usage
case "$cmd" in help|-h|--help) usage full ;; esac
if [ "$cmd" = kafka-tool ]; then
  shift
  [ $# -ge 1 ] || die "kafka-tool: give a main class, e.g. org.apache.kafka.tools.TopicCommand"
  kafka_tool "$@"
  exit $?
fi
[ $# -eq 2 ] || usage
case "$2" in
  kafka) services=(kafka) ;;
  postgres) services=(pg) ;;
  mariadb) services=(maria) ;;
  all) services=(kafka pg maria) ;;
  *) echo "services.sh: unknown service '$2' (kafka, postgres, mariadb or all)" >&2; usage ;;
esac
mkdir -p "$SVC"
rc=0
for s in "${services[@]}"; do
  case "$cmd" in
    start) "${s}_start" ;;
    stop) "${s}_stop" ;;
    clean) "${s}_clean" ;;
    status) "${s}_status" || rc=$? ;;
    *) usage ;;
  esac
done
exit "$rc"
