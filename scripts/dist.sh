#!/usr/bin/env bash
# Builds what a user installs, so that no user compiles Rust, into dist/ (or --out DIR):
#
#   laminardb-V-cp39-abi3-manylinux_*.whl    Python wheel (abi3: one wheel for CPython >= 3.9)
#   laminardb-V.tar.gz                       Python sdist (builds from source where no wheel fits)
#   laminardb-V.tgz                          npm package (JavaScript only; no install script)
#   laminardb-linux-x64-gnu-V.tgz            npm package of this platform's prebuilt addon, an
#                                            optional dependency of the one above
#   laminar-c-V-linux-x86_64.tar.gz          C SDK: include/, lib/ (liblaminar.so with its SONAME
#                                            and links, liblaminar.a, pkgconfig/laminar.pc, which
#                                            is relocatable), examples/c, README.md
#   go/laminardb/                            the Go module with lib/linux-amd64/liblaminar.a and
#                                            include/laminar.h inside it (no cargo, no CGO_LDFLAGS),
#   laminar-go-V-linux-amd64.tar.gz          and the same as a tarball
#
# V, one version for all of them, is the workspace's (Cargo.toml), which laminar_version() returns;
# the script fails when a package file says otherwise. Binaries are stripped. Each artifact's size
# and build time are printed.
#
#   scripts/dist.sh [--profile release|dev] [--out DIR]
#
# --profile: the cargo profile, release by default. The test command (scripts/test.sh) passes dev,
# the profile everything else in CI is built with, so that CI compiles the engine once; it then
# checks the artifacts with scripts/test-dist.sh. In release, the wheel and the unpacked libraries
# are measured against 60 MB (LAMINAR_DIST_LIMIT_MB): those over it are named at the end, and
# LAMINAR_DIST_STRICT_SIZE=1 makes that a failure.
# The features are those the README lists as in the packages: the RocksDB state backend and the
# Kafka, PostgreSQL CDC, Delta and MySQL/MariaDB CDC connectors.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
profile=release
out=$root/dist
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "dist.sh: unknown argument $1 (usage: scripts/dist.sh [--profile release|dev] [--out DIR])" >&2; exit 2 ;;
  esac
done
features="rocksdb kafka postgres delta mysql"
limit_mb="${LAMINAR_DIST_LIMIT_MB:-60}"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$profile" in dev | test) libdir="$target/debug" ;; *) libdir="$target/$profile" ;; esac
mkdir -p "$out"
out="$(cd "$out" && pwd)"

. scripts/dist-env.sh

# One version everywhere: the header's macros, the npm packages.
check_version() { # file, version found
  if [ "$2" != "$version" ]; then
    echo "dist.sh: $1 says version $2 but Cargo.toml says $version" >&2
    exit 1
  fi
}
check_version include/laminar.h "$(sed -n 's/^#define LAMINAR_VERSION_MAJOR \([0-9]*\).*/\1/p' include/laminar.h).$(sed -n 's/^#define LAMINAR_VERSION_MINOR \([0-9]*\).*/\1/p' include/laminar.h).$(sed -n 's/^#define LAMINAR_VERSION_PATCH \([0-9]*\).*/\1/p' include/laminar.h)"
check_version bindings/node/package.json "$(node -p 'require("./bindings/node/package.json").version')"
if [ ! -f "bindings/node/npm/$npm_triple/package.json" ]; then
  echo "dist.sh: bindings/node/npm/$npm_triple/package.json is missing: no npm package for this platform" >&2
  exit 1
fi
check_version "bindings/node/npm/$npm_triple/package.json" "$(node -p "require('./bindings/node/npm/$npm_triple/package.json').version")"

summary=()
t_all=$SECONDS
report() { # name, file, seconds, size-limited (yes/no)
  local bytes mb
  bytes=$(stat -c %s "$2")
  mb=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
  local over=""
  if [ "$4" = yes ] && [ "$profile" = release ] && [ "$bytes" -gt $((limit_mb * 1048576)) ]; then
    over="  over $limit_mb MB"
    oversize+=("$1")
  fi
  summary+=("$(printf '%-56s %8s MB %5ss%s' "$1" "$mb" "$3" "$over")")
}
oversize=()

# --- C SDK ------------------------------------------------------------------------------------
t0=$SECONDS
echo "==> C library (cargo build -p laminar-ffi, $profile)"
cargo build -q -p laminar-ffi --profile "$profile" --features "$features"
# The version the library reports must be the packages' version.
got="$(python3 -c 'import ctypes, sys; l = ctypes.CDLL(sys.argv[1]); l.laminar_version.restype = ctypes.c_char_p; print(l.laminar_version().decode())' "$libdir/liblaminar.so")"
check_version "laminar_version() of $libdir/liblaminar.so" "$got"
sdk_name="laminar-c-$version-$c_platform"
sdk="$out/$sdk_name"
rm -rf "$sdk"
mkdir -p "$sdk/include" "$sdk/lib/pkgconfig" "$sdk/examples/c"
cp include/laminar.h "$sdk/include/"
strip --strip-unneeded -o "$sdk/lib/liblaminar.so.$version" "$libdir/liblaminar.so"
ln -s "liblaminar.so.$version" "$sdk/lib/liblaminar.so.$abi"
ln -s "liblaminar.so.$abi" "$sdk/lib/liblaminar.so"
strip --strip-debug -o "$sdk/lib/liblaminar.a" "$libdir/liblaminar.a"
# Relocatable: pkg-config replaces ${pcfiledir} with the directory the .pc file is in.
sed -e 's|@PREFIX@|${pcfiledir}/../..|' -e "s|@VERSION@|$version|" laminar.pc.in > "$sdk/lib/pkgconfig/laminar.pc"
cp examples/c/quickstart.c "$sdk/examples/c/"
cat > "$sdk/README.md" <<EOF
# LaminarDB C SDK $version ($c_platform)

- \`include/laminar.h\`: the API; every function documents its arguments, ownership, errors and
  thread-safety.
- \`lib/liblaminar.so.$version\` (SONAME \`liblaminar.so.$abi\`), \`lib/liblaminar.a\`.
- \`lib/pkgconfig/laminar.pc\`: relocatable; point \`PKG_CONFIG_PATH\` at \`lib/pkgconfig\`.
- \`examples/c/quickstart.c\`.

Built with the RocksDB state backend and the KAFKA, POSTGRES_CDC, DELTA and MYSQL_CDC connectors,
for glibc on $c_platform.

\`\`\`sh
export PKG_CONFIG_PATH=\$PWD/lib/pkgconfig
cc -o quickstart examples/c/quickstart.c \$(pkg-config --cflags --libs laminar)
./quickstart
# static: cc -o quickstart examples/c/quickstart.c -Iinclude lib/liblaminar.a \$(pkg-config --libs-only-other --static laminar) -lstdc++ -lm -ldl -lpthread
\`\`\`
EOF
tar -C "$out" -czf "$out/$sdk_name.tar.gz" "$sdk_name"
report "$sdk_name.tar.gz" "$out/$sdk_name.tar.gz" $((SECONDS - t0)) no
report "  lib/liblaminar.so.$version" "$sdk/lib/liblaminar.so.$version" 0 yes
report "  lib/liblaminar.a" "$sdk/lib/liblaminar.a" 0 no

# --- Go module --------------------------------------------------------------------------------
t0=$SECONDS
echo "==> Go module (bindings/go with lib/$go_platform/liblaminar.a and include/)"
gomod="$out/go/laminardb"
rm -rf "$out/go"
mkdir -p "$gomod/lib/$go_platform" "$gomod/include"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files bindings/go | grep -v '^bindings/go/lib/' | while read -r f; do
    mkdir -p "$gomod/$(dirname "${f#bindings/go/}")"
    cp "$f" "$gomod/${f#bindings/go/}"
  done
else
  (cd bindings/go && find . -type f ! -path './lib/*' -exec cp --parents {} "$gomod/" \;)
fi
cp "$sdk/lib/liblaminar.a" "$gomod/lib/$go_platform/liblaminar.a"
cp include/laminar.h "$gomod/include/"
tar -C "$out/go" -czf "$out/laminar-go-$version-$go_platform.tar.gz" laminardb
report "laminar-go-$version-$go_platform.tar.gz" "$out/laminar-go-$version-$go_platform.tar.gz" $((SECONDS - t0)) no

# --- Python -----------------------------------------------------------------------------------
t0=$SECONDS
echo "==> Python wheel (maturin build, $profile)"
rm -f "$out"/laminardb-*.whl "$out"/laminardb-*.tar.gz
if command -v maturin >/dev/null 2>&1; then
  maturin=maturin
elif [ -x "$target/venv/bin/maturin" ]; then
  maturin="$target/venv/bin/maturin" # the test environment's (scripts/python-env.sh)
else
  venv="$target/dist-venv"
  [ -x "$venv/bin/maturin" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q "maturin>=1.7,<2"; }
  maturin="$venv/bin/maturin"
fi
# The package's default cargo features are the packaged ones (bindings/python/Cargo.toml).
(cd bindings/python && "$maturin" build -q --profile "$profile" --strip --out "$out")
wheel="$(ls "$out"/laminardb-"$version"-*.whl)"
report "$(basename "$wheel")" "$wheel" $((SECONDS - t0)) yes
t0=$SECONDS
echo "==> Python sdist (maturin sdist)"
(cd bindings/python && "$maturin" sdist --out "$out")
# The sdist's workspace holds only the crates the package needs, so the lock file copied into it
# names packages that workspace no longer uses, and `locked = true` (pyproject.toml) would refuse
# it. Cargo prunes them (offline: nothing is resolved anew, every version stays), then checks.
sd="$(mktemp -d)"
tar -C "$sd" -xzf "$out/laminardb-$version.tar.gz"
(cd "$sd/laminardb-$version" && cargo metadata -q --offline --format-version 1 >/dev/null && cargo metadata -q --locked --offline --format-version 1 >/dev/null)
tar -C "$sd" --sort=name --owner=0 --group=0 --numeric-owner -czf "$out/laminardb-$version.tar.gz" "laminardb-$version"
rm -rf "$sd"
report "laminardb-$version.tar.gz" "$out/laminardb-$version.tar.gz" $((SECONDS - t0)) no

# --- npm --------------------------------------------------------------------------------------
t0=$SECONDS
echo "==> npm packages (the addon, $profile)"
cargo build -q -p laminardb-node --profile "$profile" --features "$features"
stage="$out/npm"
rm -rf "$stage"
mkdir -p "$stage/$npm_triple" "$stage/laminardb"
cp "bindings/node/npm/$npm_triple/package.json" "bindings/node/npm/$npm_triple/README.md" "$stage/$npm_triple/"
strip --strip-unneeded -o "$stage/$npm_triple/laminardb.$npm_triple.node" "$libdir/liblaminardb_node.so"
cp bindings/node/index.js bindings/node/index.mjs bindings/node/index.d.ts bindings/node/README.md "$stage/laminardb/"
# The published package.json: the repository's, with each platform package as an optional
# dependency (what `napi prepublish` does), so npm installs only the one of the user's platform.
node -e '
  const fs = require("fs");
  const [src, dst, triples, version] = process.argv.slice(1);
  const p = JSON.parse(fs.readFileSync(src, "utf8"));
  delete p.devDependencies;
  delete p.scripts;
  p.optionalDependencies = Object.fromEntries(triples.split(",").map((t) => [`laminardb-${t}`, version]));
  fs.writeFileSync(dst, JSON.stringify(p, null, 2) + "\n");
' bindings/node/package.json "$stage/laminardb/package.json" "$npm_triple" "$version"
rm -f "$out"/laminardb-*.tgz
(cd "$stage/$npm_triple" && npm pack -q --pack-destination "$out" >/dev/null)
(cd "$stage/laminardb" && npm pack -q --pack-destination "$out" >/dev/null)
report "laminardb-$npm_triple-$version.tgz" "$out/laminardb-$npm_triple-$version.tgz" $((SECONDS - t0)) no
report "  laminardb.$npm_triple.node" "$stage/$npm_triple/laminardb.$npm_triple.node" 0 yes
report "laminardb-$version.tgz" "$out/laminardb-$version.tgz" 0 no

echo "dist ($profile, version $version) in $out, $((SECONDS - t_all))s:"
printf '  %s\n' "${summary[@]}"
if [ ${#oversize[@]} -gt 0 ]; then
  # Not a failure yet: the release libraries are about 80 MB stripped today (README, Install).
  echo "dist.sh: over $limit_mb MB: ${oversize[*]} (LAMINAR_DIST_STRICT_SIZE=1 makes this fail)" >&2
  if [ "${LAMINAR_DIST_STRICT_SIZE:-0}" = 1 ]; then exit 1; fi
fi
