#!/usr/bin/env bash
# `cargo test` with a time limit per test binary: builds the tests (arguments as for cargo test),
# then runs each test binary under scripts/with-timeout.sh from its
# package's directory, as cargo would, then the doc tests. LAMINAR_TEST_TIMEOUT: seconds per binary (default 900).
set -euo pipefail
cd "$(dirname "$0")/.."
limit="${LAMINAR_TEST_TIMEOUT:-900}"
list="$(mktemp)"; trap 'rm -f "$list"' EXIT
cargo test --no-run --message-format=json "$@" \
  | python3 -c '
import json, os, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(os.path.dirname(m["manifest_path"]) + "\t" + m["executable"])
' > "$list"
fails=0
while IFS=$'\t' read -r dir exe; do
  echo "     Running $(basename "$exe") (limit ${limit}s)"
  if ! (cd "$dir" && "$OLDPWD/scripts/with-timeout.sh" "$limit" "$exe"); then
    echo "!! FAILED: $exe"
    fails=$((fails + 1))
  fi
done < "$list"
echo "     Doc-tests"
scripts/with-timeout.sh "$limit" cargo test --doc "$@" || fails=$((fails + 1))
[ "$fails" = 0 ]
