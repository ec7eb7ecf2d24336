#!/usr/bin/env bash
# Regenerates include/laminar.h from laminar-ffi with cbindgen; `--check` fails instead when the
# committed header differs from what the code generates. cbindgen is installed (pinned) into the
# target dir on first use, outside the workspace build so it does not change the engine's features.
set -euo pipefail
cd "$(dirname "$0")/.."
CBINDGEN_VERSION=0.29.4
tools="${CARGO_TARGET_DIR:-$PWD/target}/tools"
if [ ! -x "$tools/bin/cbindgen" ] || ! "$tools/bin/cbindgen" --version | grep -q "$CBINDGEN_VERSION"; then
  cargo install -q cbindgen --version "$CBINDGEN_VERSION" --locked --root "$tools"
fi
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
"$tools/bin/cbindgen" -q --config laminar-ffi/cbindgen.toml --crate laminar-ffi --output "$tmp" laminar-ffi
if [ "${1:-}" = "--check" ]; then
  if ! diff -u include/laminar.h "$tmp"; then
    echo "include/laminar.h is stale: run scripts/gen-header.sh and commit the result" >&2
    exit 1
  fi
  echo "include/laminar.h is up to date"
else
  cp "$tmp" include/laminar.h
  echo "wrote include/laminar.h"
fi
