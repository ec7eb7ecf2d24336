# Sourced by scripts/dist.sh and scripts/test-dist.sh (from the repository root): the version all
# packages carry (the workspace's, which laminar_version() returns), the C library's ABI version
# (its SONAME: major.minor while the major is 0, else major; laminar-ffi/build.rs), and this
# platform's names for npm, Go and the C SDK.
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
abi="$(echo "$version" | awk -F. '{ print ($1 == 0) ? $1 "." $2 : $1 }')"
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) npm_triple=linux-x64-gnu; go_platform=linux-amd64; c_platform=linux-x86_64 ;;
  Linux-aarch64) npm_triple=linux-arm64-gnu; go_platform=linux-arm64; c_platform=linux-aarch64 ;;
  *) echo "no packaging for $(uname -s)-$(uname -m) yet (Linux x86_64 and aarch64 only)" >&2; exit 1 ;;
esac
# shellcheck disable=SC2034 # used by the scripts that source this one
export version abi npm_triple go_platform c_platform
