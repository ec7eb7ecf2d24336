#!/usr/bin/env bash
# Tests scripts/system-deps.sh's check against directories laid out like real images: a fresh
# image that has only LLVM's C++ library (libclang-cpp.so.14) must count as missing; the names
# bindgen loads must count as present.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0
expect() { # expect present|missing file...
  local want="$1"; shift
  local d="$tmp/case$((passes + fails))"; mkdir -p "$d"
  local f; for f in "$@"; do touch "$d/$f"; done
  local got
  if LIBCLANG_PATH= LAMINAR_LIBCLANG_DIRS="$d" scripts/system-deps.sh --check >/dev/null; then got=present; else got=missing; fi
  if [ "$got" = "$want" ]; then passes=$((passes + 1)); else fails=$((fails + 1)); echo "FAIL: [$*] -> $got, expected $want"; fi
}
expect missing
expect missing libclang-cpp.so.14
expect missing libclang-cpp.so.14 libclang-cpp.so libLLVM-14.so.1
expect missing libclangBasic.a libclang.a
expect present libclang-cpp.so.14 libclang-14.so.1
expect present libclang.so
expect present libclang.so.1
expect present libclang-14.so
expect present libclang-14.0.6.so.1
echo "system-deps: $passes passed, $fails failed"
[ "$fails" = 0 ]
