# Shared by e2e/cluster.sh and e2e/node.sh (sourced): processes started in the background, each with a pid
# file in $pids and a log in $logs. The caller sets LOG_TAG, logs and pids.

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# alive NAME: its process runs.
alive() { [[ -f "$pids/$1" ]] && kill -0 "$(cat "$pids/$1")" 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start NAME COMMAND...: in a session of its own (so that stop_proc stops its children too).
start() {
  local name="$1"; shift
  setsid "$@" > "$logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$pids/$name"
}

# wait_for WHAT TIMEOUT NAME COMMAND...: until COMMAND succeeds; fails with NAME's log tail when NAME (may
# be empty) exits or TIMEOUT seconds pass.
wait_for() {
  local what="$1" timeout="$2" name="$3"; shift 3
  local t0=$SECONDS next=$((SECONDS + 5))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$name" ]] && ! alive "$name"; then
      tail -n 30 "$logs/$name.log" >&2 || true
      die "$name exited while waiting for $what (log: $logs/$name.log)"
    fi
    if (( SECONDS - t0 > timeout )); then
      [[ -z "$name" ]] || tail -n 30 "$logs/$name.log" >&2 || true
      die "timed out after ${timeout}s waiting for $what${name:+ (log: $logs/$name.log)}"
    fi
    if (( SECONDS >= next )); then log "still waiting for $what ($((SECONDS - t0))s)"; next=$((SECONDS + 5)); fi
    sleep 0.2
  done
  log "$what ($((SECONDS - t0))s)"
}

# stop_proc NAME: TERM to its session, KILL after 5 s.
stop_proc() {
  local name="$1"
  alive "$name" || { rm -f "$pids/$name"; return 0; }
  local pid; pid="$(cat "$pids/$name")"
  log "stopping $name (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pids/$name"
}
