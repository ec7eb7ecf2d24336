#!/usr/bin/env bash
# Runs a command with a time limit; past it, prints every thread's stack of the command's
# processes (gdb when installed, else each thread's name and kernel wait channel), kills it and
# fails. A hang must fail its step with a stack dump, never eat CI's whole time.
#   scripts/with-timeout.sh SECONDS COMMAND [ARGS...]
set -uo pipefail
limit="$1"; shift
"$@" &
pid=$!
waited=0
while kill -0 "$pid" 2>/dev/null; do
  if [ "$waited" -ge "$limit" ]; then
    echo "!! TIMEOUT: '$*' still running after ${limit}s; stacks of its threads follow" >&2
    pids="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
    for p in $pids; do
      echo "--- process $p: $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | cut -c1-200)" >&2
      if command -v gdb >/dev/null; then
        timeout 60 gdb -p "$p" -batch -nx -ex "set pagination off" -ex "thread apply all bt 30" 2>/dev/null | grep -E '^(Thread|#)' >&2
      else
        for t in /proc/"$p"/task/*; do
          echo "thread $(basename "$t") $(cat "$t/comm" 2>/dev/null) waiting in $(cat "$t/wchan" 2>/dev/null)" >&2
        done
      fi
    done
    kill -KILL $pids 2>/dev/null
    wait "$pid" 2>/dev/null
    exit 124
  fi
  sleep 1
  waited=$((waited + 1))
done
wait "$pid"
