#!/usr/bin/env bash
# Tools the tests (not the build) need from the distribution, installed when missing:
# Prometheus (`prometheus` and `promtool`, Debian package `prometheus`) for the metrics tests,
# which start a Prometheus server on loopback and run `promtool check metrics`.
# The check is by the commands the tests run, not by the package name.
#
#   scripts/test-deps.sh            check, install when missing
#   scripts/test-deps.sh --check    check only: exit 0 when present, 1 when missing
set -euo pipefail
missing=()
for c in prometheus promtool; do command -v "$c" >/dev/null || missing+=("$c"); done
if [ ${#missing[@]} = 0 ]; then
  echo "prometheus, promtool: present ($(command -v prometheus), $(command -v promtool))"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "missing: ${missing[*]}"
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "${missing[*]} missing and this user cannot install them: install the prometheus package" >&2; exit 1; }
  sudo="sudo"
fi
command -v apt-get >/dev/null || { echo "${missing[*]} missing: install Prometheus (prometheus and promtool on PATH)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# The package's service is not wanted (the tests start their own server on loopback): where
# invoke-rc.d honours policy-rc.d, keep it from starting one.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && made_policy=1
fi
cleanup() { if [ "$made_policy" = 1 ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
$sudo apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
  || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
for c in prometheus promtool; do command -v "$c" >/dev/null || { echo "prometheus was installed but $c is not on PATH" >&2; exit 1; }; done
echo "prometheus, promtool: installed ($(prometheus --version 2>&1 | head -1))"
