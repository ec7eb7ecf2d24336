#!/usr/bin/env bash
# Creates the Python environment of the peer benchmarks (issue 22): a venv in the target dir with
# PyFlink (its local mini-cluster runs on the machine's JDK 17), DuckDB and pyarrow, and prints its
# python path last. The Nexmark runner takes it: `--flink "$(scripts/peers-env.sh | tail -1)"`.
# Not part of the test command: PyFlink and its JVM are far heavier than CI needs.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
venv="$target/peers-venv"
if ! command -v java >/dev/null 2>&1; then
  echo "peers-env.sh: no java on PATH; PyFlink's mini-cluster needs a JDK 17 (apt-get install openjdk-17-jdk-headless)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q "apache-flink==2.3.0" duckdb pyarrow
echo "$venv/bin/python"
