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
step "build (tests and examples)" cargo build --workspace --tests --examples
step "cargo test" cargo test --workspace
if [ -f laminar-core/examples/w1_bench.rs ]; then
  step "benchmark smoke run (tiny sizes; figures meaningless in the debug profile)" \
    cargo run -q -p laminar-core --example w1_bench -- --events 100000 --latency-events 20000 --workers-list 1,2
fi
echo "all steps: $((SECONDS - total0))s"
