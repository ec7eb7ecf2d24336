#!/usr/bin/env bash
# Builds everything and runs the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace
cargo run -q -p laminar-core --example demo
