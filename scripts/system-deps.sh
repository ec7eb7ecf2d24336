#!/usr/bin/env bash
# System packages the build needs beyond a Rust/C/Go/Node/Python toolchain: libclang, with which
# the RocksDB state backend (cargo feature `rocksdb`, on in the test build) generates its Rust
# bindings. Installed from the distribution (Debian/Ubuntu: libclang-dev) when missing.
set -euo pipefail
have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && return 0
  compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null || compgen -G '/usr/lib/*-linux-gnu/libclang-*.so*' >/dev/null \
    || compgen -G '/usr/lib64/libclang*.so*' >/dev/null
}
if have_libclang; then
  echo "libclang: present"
  exit 0
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
have_libclang || { echo "libclang-dev was installed but no libclang library was found" >&2; exit 1; }
echo "libclang: installed (libclang-dev)"
