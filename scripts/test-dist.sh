#!/usr/bin/env bash
# Checks what scripts/dist.sh built as a user gets it, each in a clean place under a scratch
# directory, with no cargo or rustc on PATH (except where building the sdist is the point):
#   Python  a fresh venv: pip install the wheel (binary packages only), the README's "Install"
#           quickstart and tests/dist/smoke.py; another fresh venv: pip install the sdist (this one
#           builds with cargo), smoke.py again
#   npm     an empty project: npm install the two packed tarballs, no install script anywhere,
#           the addon installed is the one packed, examples/node/quickstart.mjs, and the error
#           when the platform package is missing
#   C       the extracted SDK alone: examples/c built with pkg-config and run under valgrind,
#           linked statically too; SONAME and exports checked
#   Go      a throwaway module requiring the Go package (go.mod replaces it with dist/go/laminardb)
#           builds and runs tests/dist/go/main.go, with no CGO_LDFLAGS
#
#   scripts/test-dist.sh [--profile release|dev] [DIST]
#
# --profile is the one the sdist is built with (the test command passes dev, so it reuses the
# dependencies every other CI build compiled); DIST defaults to dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
profile=release
dist=$root/dist
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    *) dist="$1"; shift ;;
  esac
done
dist="$(cd "$dist" && pwd)"
. scripts/dist-env.sh
work="$(mktemp -d "${TMPDIR:-/tmp}/laminar-dist.XXXXXX")"
trap 'rm -rf "$work"' EXIT
step() {
  local name="$1"; shift
  local t0=$SECONDS
  echo "  -> $name"
  "$@"
  echo "  <- $name: $((SECONDS - t0))s"
}
fail() { echo "test-dist.sh: $*" >&2; exit 1; }

# PATH without cargo and rustc: every directory of PATH that holds neither.
nocargo=""
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  if [ -e "$d/cargo" ] || [ -e "$d/rustc" ]; then continue; fi
  nocargo="${nocargo:+$nocargo:}$d"
done
if PATH="$nocargo" command -v cargo >/dev/null 2>&1 || PATH="$nocargo" command -v rustc >/dev/null 2>&1; then
  fail "could not take cargo and rustc off PATH"
fi
# Each command a user would type, with cargo off PATH, under a time limit that fails with the
# stacks of its threads (scripts/with-timeout.sh): a hang must not eat CI's time.
user() { "$root/scripts/with-timeout.sh" 600 env -u CARGO_TARGET_DIR -u CGO_LDFLAGS -u CGO_CFLAGS PATH="$nocargo" "$@"; }

# --- Python ------------------------------------------------------------------------------------
python_wheel() {
  local wheel
  wheel="$(ls "$dist"/laminardb-"$version"-*.whl)"
  case "$wheel" in *-cp39-abi3-manylinux_*) ;; *) fail "$wheel is not a cp39-abi3 manylinux wheel" ;; esac
  python3 -m venv "$work/venv-wheel"
  # Binary packages only: nothing is compiled on the way.
  user "$work/venv-wheel/bin/pip" install -q --only-binary=:all: "$wheel[pandas,polars]"
  # The README's quickstart, as printed in its "Install" section.
  python3 - "$root/README.md" > "$work/readme_quickstart.py" <<'EOF'
import sys
text = open(sys.argv[1], encoding="utf-8").read()
section = text[text.index("\n## Install"):]
start = section.index("```python\n") + len("```python\n")
print(section[start:section.index("```", start)])
EOF
  (cd "$work" && user "$work/venv-wheel/bin/python" readme_quickstart.py)
  (cd "$work" && user "$work/venv-wheel/bin/python" "$root/tests/dist/smoke.py" "$version")
}
python_sdist() {
  python3 -m venv "$work/venv-sdist"
  # This one builds from source: cargo stays on PATH, and the build shares the target dir and the
  # profile of the other builds.
  (cd "$work" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" MATURIN_PEP517_ARGS="--profile $profile" "$root/scripts/with-timeout.sh" 1800 "$work/venv-sdist/bin/pip" install -q "$dist/laminardb-$version.tar.gz[pandas,polars]")
  (cd "$work" && user "$work/venv-sdist/bin/python" "$root/tests/dist/smoke.py" "$version")
}

# --- npm ---------------------------------------------------------------------------------------
npm_packages() {
  local p="$work/npm"
  mkdir -p "$p"
  printf '{ "name": "try-laminardb", "version": "1.0.0", "private": true, "type": "module" }\n' > "$p/package.json"
  (cd "$p" && user npm install --no-audit --no-fund --loglevel=error "$dist/laminardb-$version.tgz" "$dist/laminardb-$npm_triple-$version.tgz")
  # No package installed has an install script (npm >= 11 would hold it for approval) or a
  # binding.gyp (npm would run node-gyp).
  node -e '
    const fs = require("fs"), path = require("path");
    const nm = path.join(process.argv[1], "node_modules");
    for (const d of fs.readdirSync(nm)) {
      const dirs = d.startsWith("@") ? fs.readdirSync(path.join(nm, d)).map((e) => path.join(d, e)) : [d];
      for (const e of dirs) {
        const f = path.join(nm, e, "package.json");
        if (!fs.existsSync(f)) continue;
        const s = JSON.parse(fs.readFileSync(f, "utf8")).scripts || {};
        for (const k of ["preinstall", "install", "postinstall"]) if (s[k]) throw new Error(`${e} has an ${k} script`);
        if (fs.existsSync(path.join(nm, e, "binding.gyp"))) throw new Error(`${e} has a binding.gyp`);
      }
    }' "$p"
  cmp "$p/node_modules/laminardb-$npm_triple/laminardb.$npm_triple.node" "$dist/npm/$npm_triple/laminardb.$npm_triple.node" \
    || fail "the installed addon is not the one dist.sh packed"
  [ ! -e "$p/node_modules/laminardb/laminardb.node" ] || fail "the laminardb package carries a laminardb.node"
  sed "s|'../../bindings/node/index.mjs'|'laminardb'|" examples/node/quickstart.mjs > "$p/quickstart.mjs"
  grep -q "from 'laminardb'" "$p/quickstart.mjs" || fail "examples/node/quickstart.mjs no longer imports ../../bindings/node/index.mjs"
  (cd "$p" && user node quickstart.mjs)
  (cd "$p" && user node -e 'const l = require("laminardb"); if (l.version !== process.argv[1]) throw new Error(`version ${l.version}`)' "$version")
  # Without the platform package: an error that says what is missing.
  mv "$p/node_modules/laminardb-$npm_triple" "$work/moved"
  local msg
  msg="$(cd "$p" && user node -e 'try { require("laminardb"); console.log("loaded") } catch (e) { console.log(e.message) }')"
  mv "$work/moved" "$p/node_modules/laminardb-$npm_triple"
  case "$msg" in *"no native addon for this platform"*"laminardb-$npm_triple"*) ;; *) fail "missing platform package: $msg" ;; esac
}

# --- C -----------------------------------------------------------------------------------------
c_sdk() {
  local c="$work/c" sdk
  mkdir -p "$c"
  tar -C "$c" -xzf "$dist/laminar-c-$version-$c_platform.tar.gz"
  sdk="$c/laminar-c-$version-$c_platform"
  readelf -d "$sdk/lib/liblaminar.so.$version" | grep -q "(SONAME).*\[liblaminar.so.$abi\]" \
    || fail "liblaminar.so.$version has no SONAME liblaminar.so.$abi"
  local others
  others="$(nm -D --defined-only "$sdk/lib/liblaminar.so.$version" | awk '{ print $NF }' | grep -v '^laminar_' || true)"
  [ -z "$others" ] || fail "liblaminar.so exports more than laminar_*: $others"
  echo "     $(nm -D --defined-only "$sdk/lib/liblaminar.so.$version" | wc -l) exports, all laminar_*; SONAME liblaminar.so.$abi"
  (cd "$c" && PKG_CONFIG_PATH="$sdk/lib/pkgconfig" user sh -c \
    'cc -std=c99 -Wall -Wextra -Werror -pedantic -o quickstart "$1/examples/c/quickstart.c" $(pkg-config --cflags --libs laminar)' _ "$sdk")
  readelf -d "$c/quickstart" | grep -q "(NEEDED).*\[liblaminar.so.$abi\]" || fail "the example does not need liblaminar.so.$abi"
  user valgrind --quiet --error-exitcode=3 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect "$c/quickstart" > "$c/out.txt"
  # Statically linked against liblaminar.a.
  (cd "$c" && PKG_CONFIG_PATH="$sdk/lib/pkgconfig" user sh -c \
    'cc -std=c99 -o quickstart-static "$1/examples/c/quickstart.c" $(pkg-config --cflags laminar) "$1/lib/liblaminar.a" $(pkg-config --static --libs-only-l laminar | sed "s/-llaminar//")' _ "$sdk")
  ! readelf -d "$c/quickstart-static" | grep -q "liblaminar" || fail "the static example needs liblaminar.so"
  user "$c/quickstart-static" > "$c/out-static.txt"
  cmp "$c/out.txt" "$c/out-static.txt" || fail "the example's output differs when linked statically"
}

# --- Go ----------------------------------------------------------------------------------------
go_module() {
  local g="$work/go"
  mkdir -p "$g"
  cp tests/dist/go/main.go "$g/"
  cat > "$g/go.mod" <<EOF
module example.com/trylaminardb

go 1.25.0

require example.invalid/laminardb/bindings/go v0.0.0

replace example.invalid/laminardb/bindings/go => $dist/go/laminardb
EOF
  (cd "$g" && user go mod tidy && user go build -o try . && user ./try > out.txt)
  cat "$g/out.txt"
  grep -qx "A 12" "$g/out.txt" && grep -qx "B 2" "$g/out.txt" && grep -qx "names 2" "$g/out.txt" \
    && grep -qx "laminar $version" "$g/out.txt" \
    || fail "the Go program printed something else"
}

t_all=$SECONDS
step "Python wheel in a fresh venv (no cargo)" python_wheel
step "npm tarballs in an empty project (no cargo)" npm_packages
step "C SDK alone (pkg-config, valgrind, static)" c_sdk
step "Go module by replace (no cargo, no CGO_LDFLAGS)" go_module
step "Python sdist in a fresh venv (builds with cargo, $profile)" python_sdist
echo "dist checks passed in $((SECONDS - t_all))s"
