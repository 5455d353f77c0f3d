# Shared by e2e/cluster.sh and e2e/node.sh (sourced): processes started in the background, each with a pid
# file in $pids and a log in $logs. The caller sets LOG_TAG, logs and pids.

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# alive NAME: its process runs (a killed process that nobody has reaped yet, a zombie, does not).
alive() {
  [[ -f "$pids/$1" ]] || return 1
  local pid; pid="$(cat "$pids/$1")"
  kill -0 "$pid" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start NAME COMMAND...: in a session of its own (so that stop_proc stops its children too). The exact
# command line goes to $run/cmd/NAME, for `e2e/cluster.sh restart NAME` (same flags, same ports). A
# restart appends to the log.
start() {
  local name="$1"; shift
  mkdir -p "$run/cmd"
  printf '%q ' "$@" > "$run/cmd/$name"
  setsid "$@" >> "$logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$pids/$name"
}

# kill_proc NAME: SIGKILL to its process alone (no clean-up: the pid file, data and recorded command
# stay), then waits until it is gone.
kill_proc() {
  local name="$1"
  alive "$name" || die "$name does not run"
  local pid; pid="$(cat "$pids/$name")"
  log "kill -9 $name (pid $pid)"
  kill -KILL "$pid"
  for _ in $(seq 1 100); do
    alive "$name" || return 0
    sleep 0.05
  done
  die "$name (pid $pid) still runs after SIGKILL"
}

# restart_proc NAME: starts it again with the command recorded when it first started.
restart_proc() {
  local name="$1"
  [[ -f "$run/cmd/$name" ]] || die "no recorded command for $name in $run/cmd"
  alive "$name" && die "$name still runs (pid $(cat "$pids/$name")): kill it first"
  local cmd; cmd="$(cat "$run/cmd/$name")"
  log "restarting $name"
  eval "start $(printf '%q' "$name") $cmd"
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
