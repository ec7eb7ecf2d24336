#!/usr/bin/env bash
# Tests scripts/services.sh against the real servers: for each service, a cold start (fresh
# data), a check that it really works, a second start that must be a no-op, status, stop, status
# reporting stopped, then a warm start (data kept) that must still work, and a final stop.
#   Kafka     creates a topic, produces and consumes messages with the console tools
#   Postgres  SELECT 1, wal_level = logical, a pgoutput logical replication slot
#   MariaDB   SELECT 1, binlog_format = ROW, log_bin on, SHOW MASTER STATUS as user laminar
#
#   scripts/test-services.sh [kafka|postgres|mariadb|all]    (default: all)
#
# It runs in a state folder of its own, ${CARGO_TARGET_DIR:-target}/services-test, wiped first,
# so the services a developer runs are left alone; Kafka's jars come from the usual cache
# (target/services/kafka/lib). Every step has a time limit; whatever happens, the services it
# started are stopped on exit. Ends with "services: N passed, M failed".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
export LAMINAR_KAFKA_LIB="${LAMINAR_KAFKA_LIB:-$TARGET/services/kafka/lib}"
export CARGO_TARGET_DIR="$TARGET/services-test"
ENV_FILE="$CARGO_TARGET_DIR/services.env"
SVC="$ROOT/scripts/services.sh"

case "${1:-all}" in
  all) services=(kafka postgres mariadb) ;;
  kafka|postgres|mariadb) services=("$1") ;;
  *) echo "usage: $0 [kafka|postgres|mariadb|all]" >&2; exit 2 ;;
esac

passed=0 failed=0
declare -A cold warm
ok() { passed=$((passed + 1)); echo "  ok    $*"; }
bad() { failed=$((failed + 1)); echo "  FAIL  $*"; }
# check DESCRIPTION COMMAND...: counts COMMAND's success as a pass.
check() { local d="$1"; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
env_get() { sed -n "s/^$1=//p" "$ENV_FILE" 2>/dev/null; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

cleanup() {
  local rc=$?
  for s in "${services[@]}"; do timeout 60 "$SVC" stop "$s" >/dev/null 2>&1 || true; done
  exit "$rc"
}
trap cleanup EXIT

# svc LIMIT ARGS...: scripts/services.sh ARGS with a time limit, its output indented.
svc() {
  local limit="$1"; shift
  local rc=0
  timeout "$limit" "$SVC" "$@" 2>&1 | sed 's/^/    | /' || rc=$?
  [ "$rc" = 124 ] && echo "    !! scripts/services.sh $* still running after ${limit}s"
  return "$rc"
}

# ---------------------------------------------------------------------------------------------
# What "really works" means, per service.

kafka_works() {
  local addr tool out
  addr="$(env_get LAMINAR_KAFKA)"
  [[ "$addr" =~ ^127\.0\.0\.1:[0-9]+$ ]] || { echo "    LAMINAR_KAFKA='$addr'"; return 1; }
  tool=(timeout 90 "$SVC" kafka-tool)
  "${tool[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$addr" --create --if-not-exists \
    --topic laminar-test --partitions 1 --replication-factor 1 >/dev/null || { echo "    topic creation failed"; return 1; }
  printf 'one\ntwo\nthree\n' | "${tool[@]}" org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$addr" \
    --topic laminar-test 2>/dev/null || { echo "    producer failed"; return 1; }
  out="$("${tool[@]}" org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$addr" --topic laminar-test \
    --from-beginning --max-messages 3 --timeout-ms 30000 2>/dev/null | tr '\n' ' ')" || true
  # A warm start reads the topic again after a second produce: the first three must come back.
  [ "$out" = "one two three " ] || { echo "    consumed: '$out'"; return 1; }
}

psql_bin() {
  command -v psql 2>/dev/null || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n1
}

postgres_works() {
  local url psql
  url="$(env_get LAMINAR_POSTGRES)"
  [[ "$url" =~ ^postgres://laminar:[0-9a-f]+@127\.0\.0\.1:[0-9]+/laminar$ ]] || { echo "    LAMINAR_POSTGRES='$url'"; return 1; }
  psql="$(psql_bin)"; [ -n "$psql" ] || { echo "    no psql"; return 1; }
  local q=(timeout 30 "$psql" -X -At -v ON_ERROR_STOP=1 "$url")
  [ "$("${q[@]}" -c 'SELECT 1')" = 1 ] || { echo "    SELECT 1 failed"; return 1; }
  [ "$("${q[@]}" -c 'SHOW wal_level')" = logical ] || { echo "    wal_level is not logical"; return 1; }
  "${q[@]}" -c "SELECT pg_create_logical_replication_slot('laminar_test', 'pgoutput')" \
    -c "SELECT pg_drop_replication_slot('laminar_test')" >/dev/null || { echo "    no logical replication slot"; return 1; }
}

mariadb_works() {
  local url client pw port out
  url="$(env_get LAMINAR_MARIADB)"
  [[ "$url" =~ ^mysql://laminar:([0-9a-f]+)@127\.0\.0\.1:([0-9]+)/laminar$ ]] || { echo "    LAMINAR_MARIADB='$url'"; return 1; }
  pw="${BASH_REMATCH[1]}"; port="${BASH_REMATCH[2]}"
  client="$(command -v mariadb || command -v mysql)" || { echo "    no mariadb client"; return 1; }
  local q=(timeout 30 "$client" --protocol=TCP -h 127.0.0.1 -P "$port" -u laminar "-p$pw" -N -s laminar)
  [ "$("${q[@]}" -e 'SELECT 1')" = 1 ] || { echo "    SELECT 1 failed"; return 1; }
  out="$("${q[@]}" -e 'SELECT @@binlog_format, @@binlog_row_image, @@log_bin' | tr '\t' ' ')"
  [ "$out" = "ROW FULL 1" ] || { echo "    binlog settings: '$out'"; return 1; }
  out="$("${q[@]}" -e 'SHOW MASTER STATUS')"
  [ -n "$out" ] || { echo "    SHOW MASTER STATUS is empty"; return 1; }
  "${q[@]}" -e 'CREATE TABLE IF NOT EXISTS t (a INT); INSERT INTO t VALUES (1); DROP TABLE t' || { echo "    DML failed"; return 1; }
}

key_of() { case "$1" in kafka) echo LAMINAR_KAFKA ;; postgres) echo LAMINAR_POSTGRES ;; mariadb) echo LAMINAR_MARIADB ;; esac; }
pid_of() {
  case "$1" in
    kafka) head -n1 "$CARGO_TARGET_DIR/services/kafka/kafka.pid" 2>/dev/null ;;
    postgres) head -n1 "$CARGO_TARGET_DIR/services/postgres/data/postmaster.pid" 2>/dev/null ;;
    mariadb) head -n1 "$CARGO_TARGET_DIR/services/mariadb/mariadbd.pid" 2>/dev/null ;;
  esac
}

# ---------------------------------------------------------------------------------------------

rm -rf "$CARGO_TARGET_DIR"
for s in "${services[@]}"; do
  key="$(key_of "$s")"
  echo "== $s"
  t0="$(now)"
  if ! svc 600 start "$s"; then
    bad "$s: cold start"
    continue
  fi
  cold[$s]="$(secs "$t0")"
  ok "$s: cold start (${cold[$s]}s)"
  check "$s: works" "${s}_works"
  pid="$(pid_of "$s")"; line="$(env_get "$key")"
  t0="$(now)"
  out="$(timeout 60 "$SVC" start "$s" 2>&1)" || true
  check "$s: second start is a no-op ($(secs "$t0")s)" \
    bash -c '[[ "$1" == *"already running"* ]] && [ "$2" = "$3" ] && [ "$4" = "$5" ]' _ "$out" "$pid" "$(pid_of "$s")" "$line" "$(env_get "$key")"
  out="$(timeout 30 "$SVC" status "$s")" && rc=0 || rc=$?
  check "$s: status says running ($out)" bash -c '[ "$1" = 0 ] && [[ "$2" == *"running at 127.0.0.1:"* ]]' _ "$rc" "$out"
  check "$s: stop" svc 120 stop "$s"
  out="$(timeout 30 "$SVC" status "$s")" && rc=0 || rc=$?
  check "$s: status says stopped, exit 3 ($out, $rc)" bash -c '[ "$1" = 3 ] && [ "$2" = "$3: stopped" ]' _ "$rc" "$out" "$s"
  check "$s: stop removed its line" bash -c '[ -z "$1" ]' _ "$(env_get "$key")"
  check "$s: process gone" bash -c '! kill -0 "$1" 2>/dev/null' _ "$pid"
  t0="$(now)"
  if svc 300 start "$s"; then
    warm[$s]="$(secs "$t0")"
    ok "$s: warm start (${warm[$s]}s)"
    check "$s: works after a restart" "${s}_works"
  else
    bad "$s: warm start"
  fi
  check "$s: final stop" svc 120 stop "$s"
  out="$(timeout 30 "$SVC" status "$s")" && rc=0 || rc=$?
  check "$s: stopped at the end" bash -c '[ "$1" = 3 ]' _ "$rc"
done

echo "== start times (cold: fresh data; warm: restart with data kept)"
for s in "${services[@]}"; do printf '  %-9s cold %6ss   warm %6ss\n' "$s" "${cold[$s]:-?}" "${warm[$s]:-?}"; done
echo "services: $passed passed, $failed failed"
[ "$failed" = 0 ]
