#!/usr/bin/env bash
# `make demo-down`: stops what `make demo` started: the local cluster with its node and pods (and, in process
# mode, the traffic demo, webhook and operator processes).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
demo="$root/e2e/.run/demo"
for name in traffic operator webhook; do
  pid_file="$demo/$name.pid"
  [[ -f "$pid_file" ]] || continue
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "[demo-down] stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
done
# The fleet's members (make demo's step 11): their webhooks, then their control planes.
for member in "$demo"/member-*/; do
  [[ -d "$member" ]] || continue
  if [[ -f "$member/webhook.pid" ]] && kill -0 "$(cat "$member/webhook.pid")" 2>/dev/null; then
    kill -TERM "$(cat "$member/webhook.pid")" 2>/dev/null || true
  fi
  CSP_RUN_DIR="${member%/}" bash "$root/e2e/cluster.sh" down
done
bash "$root/e2e/cluster.sh" down
