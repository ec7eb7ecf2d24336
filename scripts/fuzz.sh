#!/usr/bin/env bash
# Runs one cargo fuzz target (fuzz/fuzz_targets/<target>.rs) for SECONDS (default 1800) with its
# corpus in fuzz/corpus/<target> (new inputs the fuzzer keeps are added there), crashes in
# fuzz/artifacts/<target>. Needs the nightly toolchain; installs cargo-fuzz into the target dir.
# Not part of CI: CI replays the corpora (laminar-core/tests/fuzz_corpus.rs). A crash, once
# fixed, is copied to fuzz/regressions/<target>/ so that the replay keeps checking it.
#   scripts/fuzz.sh sql 1800            SANITIZER=address scripts/fuzz.sh durable 600
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: scripts/fuzz.sh <target> [seconds]}"
secs="${2:-1800}"
tools="${CARGO_TARGET_DIR:-$PWD/target}/tools"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install -q cargo-fuzz --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
# The fuzz build has a target dir of its own (nightly, instrumented): it never shares artifacts
# with the engine's build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
cd fuzz
# SANITIZER: none by default (faster to build and run; Rust's own checks, debug assertions and
# overflow checks stay on), address for ASan.
exec cargo +nightly fuzz run --sanitizer "${SANITIZER:-none}" "$target" "corpus/$target" -- \
  -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -artifact_prefix="artifacts/$target/" -print_final_stats=1
