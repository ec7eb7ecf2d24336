#!/usr/bin/env bash
# Creates the Python environment the tests use (a venv in the target dir, so it is cached with
# the build) and builds the package into it with `maturin develop` — dev profile, same target dir
# as every other build, so the engine compiles once; its cargo features are LAMINAR_FEATURES (e.g.
# "rocksdb"), not the package's defaults (the packaged set). Prints the venv's python path last.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
venv="$target/venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q "maturin>=1.7,<2" pytest pytest-asyncio pytest-timeout "ruff==0.17.6" pyarrow pandas polars duckdb confluent-kafka deltalake
features=(--no-default-features)
if [ -n "${LAMINAR_FEATURES:-}" ]; then features+=(--features "$LAMINAR_FEATURES"); fi
(cd bindings/python && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" "$venv/bin/maturin" develop -q "${features[@]}")
echo "$venv/bin/python"
