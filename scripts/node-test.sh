#!/usr/bin/env bash
# The Node package: its npm dependencies (apache-arrow), the addon built with cargo in the dev
# profile (same target dir as every other build), node --test, the example, and the W1 benchmark
# at a tiny size.
set -euo pipefail
cd "$(dirname "$0")/../bindings/node"
npm install --ignore-scripts --no-audit --no-fund --loglevel=error
LAMINAR_PROFILE=dev node scripts/build.js
node --test --test-timeout=120000 __test__/
node ../../examples/node/quickstart.mjs
node bench/w1.js "${W1_EVENTS:-100000}"
