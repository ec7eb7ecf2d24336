#!/usr/bin/env bash
# Runs every test of the project. One target dir, one profile, one feature set, so the engine
# compiles once. Prints each step's time.
set -euo pipefail
cd "$(dirname "$0")/.."
step() {
  local name="$1"; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  echo "<== $name: $((SECONDS - t0))s"
}
total0=$SECONDS
# One feature set for every build below: the RocksDB state backend (it needs libclang, which
# system-deps.sh installs when missing) and the KAFKA connector (librdkafka built from source).
# LAMINAR_FEATURES= (empty) tests a build without them.
export LAMINAR_FEATURES="${LAMINAR_FEATURES-rocksdb kafka postgres delta mysql}"
features=()
core_features="$(for f in ${LAMINAR_FEATURES//,/ }; do printf 'laminar-core/%s ' "$f"; done)"
if [ -n "$core_features" ]; then features=(--features "$core_features"); fi
# Real servers for the connector tests (scripts/services.sh), stopped at the end if this run
# started them.
started=()
stop_services() { for s in "${started[@]}"; do scripts/services.sh stop "$s" || true; done; }
trap stop_services EXIT
step "system packages check (test of system-deps.sh)" scripts/test-system-deps.sh
step "system packages (libclang)" scripts/system-deps.sh
step "test tools (prometheus, promtool)" scripts/test-deps.sh
# The Python and Node addons are built below by maturin and by the Node package's build script.
# Formatting and lints fail the run (rustfmt.toml, the workspace's clippy lints, gofmt; ruff after
# the Python environment exists).
step "Rust format (cargo fmt --check)" cargo fmt --all --check
step "Go format (gofmt -l)" bash -c 'out=$(gofmt -l bindings/go); [ -z "$out" ] || { echo "not gofmt-formatted: $out"; exit 1; }'
step "build (tests and examples)" cargo build --workspace --exclude laminardb-python --exclude laminardb-node --tests --examples "${features[@]}"
# Every test runner has a per-test (or per-binary) time limit that fails with a stack dump.
step "Rust lints (cargo clippy --all-targets -D warnings)" cargo clippy -q --workspace --all-targets "${features[@]}" -- -D warnings
if [[ " ${LAMINAR_FEATURES//,/ } " == *" kafka "* ]]; then
  if ! scripts/services.sh status kafka >/dev/null 2>&1; then started+=(kafka); fi
  step "Kafka broker for the connector tests (scripts/services.sh start kafka)" scripts/services.sh start kafka
fi
if [[ " ${LAMINAR_FEATURES//,/ } " == *" postgres "* ]]; then
  if ! scripts/services.sh status postgres >/dev/null 2>&1; then started+=(postgres); fi
  step "PostgreSQL for the CDC tests (scripts/services.sh start postgres)" scripts/services.sh start postgres
fi
if [[ " ${LAMINAR_FEATURES//,/ } " == *" mysql "* ]]; then
  if ! scripts/services.sh status mariadb >/dev/null 2>&1; then started+=(mariadb); fi
  step "MariaDB for the CDC tests (scripts/services.sh start mariadb)" scripts/services.sh start mariadb
fi
step "cargo test (each test binary limited, stacks dumped on a hang)" scripts/cargo-test.sh --workspace --exclude laminardb-python --exclude laminardb-node "${features[@]}"
step "benchmark smoke run (tiny sizes; figures meaningless in the debug profile)" \
  cargo run -q -p laminar-core "${features[@]}" --example w1_bench -- --events 100000 --latency-events 20000 --workers-list 1,2 --metrics-runs 1
step "Nexmark runner smoke run (tiny size)" cargo run -q -p laminar-core "${features[@]}" --example nexmark -- --events 100000
step "join benchmark smoke run (tiny size)" cargo run -q -p laminar-core "${features[@]}" --example join_bench -- --rows 20000
step "durability benchmark smoke run (tiny size)" cargo run -q -p laminar-core "${features[@]}" --example durability_bench -- --batches 20 --batch-rows 1024 --keys 20000 --state-cache 256KB
# The C ABI: header up to date and strict C99/C++17 clean, tests under ASan+UBSan, the example
# built with pkg-config from an installed prefix and run under valgrind, the benchmark smoke run.
if [[ " ${LAMINAR_FEATURES//,/ } " == *" kafka "* ]]; then
  step "Kafka benchmark smoke run (tiny size)" cargo run -q -p laminar-core "${features[@]}" --example kafka_bench -- --records 20000
  step "group mode benchmark smoke run (1-3 member processes, a SIGKILL; tiny size)" \
    scripts/with-timeout.sh 600 cargo run -q -p laminar-core "${features[@]}" --example kafka_group_bench -- --records 20000
  # The soak benchmark (benches/soak) for 2 minutes: Kafka in and out, an interval join, a
  # reconnecting subscriber, random DDL, two SIGKILLs; the outputs checked against the oracle.
  step "soak smoke run (2 minutes, two SIGKILLs, outputs against the oracle)" cargo run -q -p laminar-core "${features[@]}" --example soak -- --seconds 120 --kill-every 40 --rate 3000 --report-every 20
fi
if [[ " ${LAMINAR_FEATURES//,/ } " == *" delta "* ]]; then
  step "Delta sink benchmark smoke run (tiny size)" cargo run -q -p laminar-core "${features[@]}" --example delta_bench -- --rows 100000
fi
if [[ " ${LAMINAR_FEATURES//,/ } " == *" postgres "* ]]; then
  step "PostgreSQL CDC and sink benchmark smoke run (tiny size)" cargo run -q -p laminar-core "${features[@]}" --example pg_cdc_bench -- --updates 20000 --rows 5000 --sink-rows 50000
fi
step "services script test (Kafka, PostgreSQL, MariaDB started, used, stopped)" scripts/test-services.sh
step "C header is current (cbindgen)" scripts/gen-header.sh --check
step "C tests (ASan + UBSan)" make --no-print-directory test-c PROFILE=dev
step "C example (make install + pkg-config + valgrind)" make --no-print-directory example-c PROFILE=dev
step "C ABI benchmark smoke run" make --no-print-directory bench-c PROFILE=dev ROWS=200000
# Go: liblaminar.a (dev profile) copied into bindings/go/lib, go vet, go test -race, the
# -tags debug run (a GC inside every handle access), the examples, the W1 benchmark at a tiny size.
step "Go (vet, -race, -tags debug, examples, benchmark smoke)" make --no-print-directory test-go PROFILE=dev
# Python: a venv in the target dir, the package built into it by maturin (dev profile, same
# target dir), the pytest suite, and the W1 benchmark at a tiny size.
py="${CARGO_TARGET_DIR:-$PWD/target}/venv/bin/python"
step "Python package (venv + maturin develop)" scripts/python-env.sh
step "Python lint (ruff check)" "$(dirname "$py")/ruff" check bindings/python
step "Python tests (pytest; 300 s per test, stacks dumped on a hang)" "$py" -m pytest -q --timeout=300 --timeout-method=thread bindings/python/tests
step "Python W1 benchmark smoke run" "$py" bindings/python/benches/w1_bench.py --events 100000
step "Node (npm install, node --test, example, benchmark smoke)" scripts/node-test.sh
# The packages users install (issue 21), built in this run's profile from what is compiled above,
# then installed and used each in a clean place with no cargo on PATH (scripts/test-dist.sh).
if [ "$LAMINAR_FEATURES" = "rocksdb kafka postgres delta mysql" ]; then
  dist="${CARGO_TARGET_DIR:-$PWD/target}/dist"
  step "packages (scripts/dist.sh --profile dev: wheel, sdist, npm, C SDK, Go module)" scripts/dist.sh --profile dev --out "$dist"
  step "packages as users install them (scripts/test-dist.sh)" scripts/test-dist.sh --profile dev "$dist"
fi
echo "all steps: $((SECONDS - total0))s"
