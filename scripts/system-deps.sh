#!/usr/bin/env bash
# System packages the build needs beyond a Rust/C/Go/Node/Python toolchain: libclang, with which
# the RocksDB state backend (cargo feature `rocksdb`, on in the test build) generates its Rust
# bindings. Installed from the distribution (Debian/Ubuntu: libclang-dev) when missing.
#
# The check looks for the library that bindgen (clang-sys) loads: libclang.so, libclang.so.N or
# libclang-N.so[.M]. It does not count libclang-cpp.so.N (LLVM's C++ interface library, which
# some images ship without libclang): bindgen cannot use it.
#
#   scripts/system-deps.sh            check, install when missing
#   scripts/system-deps.sh --check    check only: exit 0 when present, 1 when missing
# LAMINAR_LIBCLANG_DIRS (colon-separated) replaces the directories searched (used by the test of
# this script, scripts/test-system-deps.sh).
set -euo pipefail
check_only=0
[ "${1:-}" = "--check" ] && check_only=1
if [ -n "${LAMINAR_LIBCLANG_DIRS:-}" ]; then
  IFS=: read -r -a dirs <<<"$LAMINAR_LIBCLANG_DIRS"
else
  dirs=(/usr/lib/llvm-*/lib /usr/lib/*-linux-gnu /usr/lib64 /usr/lib /usr/local/lib)
fi
# Prints the first usable libclang found, or nothing.
find_libclang() {
  local d f base
  if [ -n "${LIBCLANG_PATH:-}" ]; then dirs=("$LIBCLANG_PATH" "${dirs[@]}"); fi
  for d in "${dirs[@]}"; do
    [ -d "$d" ] || continue
    for f in "$d"/libclang.so "$d"/libclang.so.* "$d"/libclang-*.so "$d"/libclang-*.so.*; do
      [ -e "$f" ] || continue
      base="${f##*/}"
      case "$base" in
        libclang-cpp*) continue ;;                     # LLVM's C++ library: not what bindgen loads
        libclang.so|libclang.so.[0-9]*|libclang-[0-9]*.so|libclang-[0-9]*.so.*) echo "$f"; return 0 ;;
      esac
    done
  done
  return 0
}
found="$(find_libclang)"
if [ -n "$found" ]; then
  echo "libclang: present ($found)"
  exit 0
fi
if [ "$check_only" = 1 ]; then
  echo "libclang: missing"
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "libclang is missing and this user cannot install it: install libclang-dev (Debian/Ubuntu) or set LIBCLANG_PATH" >&2; exit 1; }
  sudo="sudo"
fi
if command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends libclang-dev >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends libclang-dev >/dev/null; }
else
  echo "libclang is missing: install your distribution's libclang development package or set LIBCLANG_PATH" >&2
  exit 1
fi
found="$(find_libclang)"
[ -n "$found" ] || { echo "libclang-dev was installed but no libclang library was found" >&2; exit 1; }
echo "libclang: installed (libclang-dev: $found)"
