#!/usr/bin/env bash
# make bench-operator: benchmarks of the operator (not part of CI, never run by `make test`).
#
#   1. render time: criterion (operator/benches/render.rs) for one contract and for 1,000 and 10,000
#      distinct contracts, and the same contracts timed one call at a time by the driver (total, median,
#      p99 of operator::desired());
#   2. against a real API server, with the release operator: the time until 1,000 and then 5,000
#      contracts are all Programmed (their Services, EndpointSlices and Nodes created first, 50
#      namespaces), the operator's peak RSS (VmHWM), and the latency from an edit of sla.maxLatency to the
#      updated ConfigMap, 200 edits one at a time with the 5,000 contracts present
#      (bench/src/bin/bench_operator.rs). CPU time of every process and the API server's requests per phase
#      say where the time goes.
#
# It runs a control plane of its own (e2e/cluster.sh with CSP_RUN_DIR=target/bench-operator/cluster by
# default), never the shared one in e2e/.run, and throws it away at the end. The summary is printed and
# saved to bench/results/operator-<date>.md.
#
# Knobs (environment): CSP_BENCH_STEPS (1000,5000), CSP_BENCH_EDITS (200), CSP_BENCH_NAMESPACES (50),
# CSP_BENCH_CONCURRENCY (32, creates in flight), CSP_BENCH_OPERATOR_ARGS (extra `operator run` flags),
# CSP_BENCH_SKIP_CRITERION (0), CSP_BENCH_SKIP_RENDER (0), CSP_BENCH_SKIP_API (0),
# CSP_BENCH_RUN_DIR (the control plane's folder), CSP_BENCH_KEEP (0; 1 leaves the control plane running),
# CSP_BENCH_OPERATOR_WRAPPER (a command that runs the operator, e.g. `heaptrack -o target/heap`: the figures
# then include the wrapper's own overhead), CSP_APISERVER_PROFILING (false; true serves /debug/pprof).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
steps="${CSP_BENCH_STEPS:-1000,5000}"
edits="${CSP_BENCH_EDITS:-200}"
namespaces="${CSP_BENCH_NAMESPACES:-50}"
concurrency="${CSP_BENCH_CONCURRENCY:-32}"
operator_args="${CSP_BENCH_OPERATOR_ARGS:-}"
operator_wrapper="${CSP_BENCH_OPERATOR_WRAPPER:-}"
skip_criterion="${CSP_BENCH_SKIP_CRITERION:-0}"
skip_render="${CSP_BENCH_SKIP_RENDER:-0}"
skip_api="${CSP_BENCH_SKIP_API:-0}"
keep="${CSP_BENCH_KEEP:-0}"

stamp="$(date +%Y-%m-%d-%H%M%S)"
run_id="csp-bench-$(date +%H%M%S)"
work="$root/target/bench-operator/$stamp"
results="$root/bench/results"
summary="$results/operator-$stamp.md"
export CSP_RUN_DIR="${CSP_BENCH_RUN_DIR:-$root/target/bench-operator/cluster}"
export KUBECONFIG="$CSP_RUN_DIR/kubeconfig"
kubectl="$root/e2e/.bin/kubectl"
mkdir -p "$work" "$results"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
k() { "$kubectl" --kubeconfig "$KUBECONFIG" "$@"; }

[[ "$CSP_RUN_DIR" != "$root/e2e/.run" ]] || die "CSP_BENCH_RUN_DIR must not be the shared control plane's e2e/.run"

started_cluster=0
operator_pid=""
wrapper_pid=""
cleanup() {
  local rc=$?
  set +e
  if [[ -n "$operator_pid" ]] && kill -0 "$operator_pid" 2>/dev/null; then
    log "stopping the operator (pid $operator_pid)"
    kill -TERM "$operator_pid"
    for _ in $(seq 1 50); do kill -0 "$operator_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$operator_pid" 2>/dev/null
  fi
  if [[ -n "$wrapper_pid" ]]; then
    log "waiting for $operator_wrapper to finish"
    for _ in $(seq 1 600); do kill -0 "$wrapper_pid" 2>/dev/null || break; sleep 0.2; done
  fi
  if [[ $started_cluster == 1 && $keep != 1 ]]; then
    bash "$root/e2e/cluster.sh" down
    # Its etcd holds the benchmark's objects: nothing to keep.
    rm -rf "$CSP_RUN_DIR"
  elif [[ $started_cluster == 1 ]]; then
    log "left the control plane running (CSP_RUN_DIR=$CSP_RUN_DIR bash e2e/cluster.sh down stops it)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build and tools ---------------------------------------------------------------------------------
log "building the release binaries (operator, bench_operator)"
cargo build --release -p channel-contracts-operator -p channel-contracts-bench --bin operator --bin bench_operator
operator_bin="$root/target/release/operator"
driver="$root/target/release/bench_operator"

log "ensuring the test tools (e2e/tools/build.sh)"
bash "$root/e2e/tools/build.sh"
command -v jq >/dev/null || { log "installing jq (Debian)"; apt-get install -y -qq jq >/dev/null; }

# --- 1. render ---------------------------------------------------------------------------------------
if [[ $skip_criterion != 1 ]]; then
  log "criterion: cargo bench -p channel-contracts-operator --bench render"
  cargo bench -p channel-contracts-operator --bench render 2>&1 | tee "$work/criterion.txt" >&2
fi
if [[ $skip_render != 1 ]]; then
  log "render: operator::desired() for 1,000 and 10,000 contracts, one call at a time"
  "$driver" render --counts 1000,10000 --json-out "$work/render.json" --md-out "$work/render.md" >/dev/null
fi

# --- 2. against a real API server --------------------------------------------------------------------
if [[ $skip_api != 1 ]]; then
  if bash "$root/e2e/cluster.sh" status >/dev/null 2>&1; then
    die "a control plane already runs in $CSP_RUN_DIR (a previous run with CSP_BENCH_KEEP=1?): stop it with CSP_RUN_DIR=$CSP_RUN_DIR bash e2e/cluster.sh down"
  fi
  log "starting a control plane of our own in ${CSP_RUN_DIR#"$root"/}"
  started_cluster=1
  bash "$root/e2e/cluster.sh" up
  k apply --server-side -f "$root/crds/manifests/" >/dev/null
  k wait --for=condition=Established --timeout=60s \
    crd/channelcontracts.csp.contracts.dev crd/contractpolicies.csp.contracts.dev >/dev/null

  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  admin="http://127.0.0.1:$port"
  log "starting $operator_bin run --admin-listen 127.0.0.1:$port --log-format json $operator_args (log: $work/operator.log)"
  # shellcheck disable=SC2086 # the extra flags and the wrapper are words
  RUST_LOG="${RUST_LOG:-info,kube=warn}" $operator_wrapper "$operator_bin" run --admin-listen "127.0.0.1:$port" \
    --log-format json $operator_args >"$work/operator.log" 2>&1 </dev/null &
  operator_pid=$!
  if [[ -n "$operator_wrapper" ]]; then
    # Measure (and stop) the operator itself, not its wrapper.
    wrapper_pid=$operator_pid
    for _ in $(seq 1 100); do
      child="$(pgrep -n -f "^$operator_bin run" || true)"
      [[ -n "$child" ]] && break
      sleep 0.1
    done
    [[ -n "$child" ]] || die "the operator did not start under $operator_wrapper"
    operator_pid=$child
    log "the operator runs under $operator_wrapper (wrapper pid $wrapper_pid, operator pid $operator_pid)"
  fi
  for i in $(seq 1 300); do
    kill -0 "$operator_pid" 2>/dev/null || { tail -n 30 "$work/operator.log" >&2; die "the operator exited"; }
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/readyz")" == 200 ]] && break
    (( i == 300 )) && die "the operator was not ready within 60 s"
    sleep 0.2
  done
  log "the operator is ready (pid $operator_pid, VmHWM $(awk '/VmHWM/ {print $2, $3}' "/proc/$operator_pid/status"))"

  log "driver: steps $steps, $edits edits, $namespaces namespaces, $concurrency creates in flight"
  "$driver" api --run-id "$run_id" --namespaces "$namespaces" --steps "$steps" --edits "$edits" \
    --concurrency "$concurrency" --operator-pid "$operator_pid" --operator-admin "$admin" \
    --control-plane-dir "$CSP_RUN_DIR" --clk-tck "$(getconf CLK_TCK)" \
    --json-out "$work/api.json" --md-out "$work/api.md" >/dev/null
  curl -s "$admin/metrics" >"$work/operator-metrics.txt"
  kill -0 "$operator_pid" 2>/dev/null || die "the operator exited during the benchmark (log: $work/operator.log)"
fi

# --- summary -----------------------------------------------------------------------------------------
criterion_row() {
  local id="$1" title="$2" n="$3" f="$root/target/criterion/$1/new/estimates.json"
  [[ -f "$f" ]] || return 0
  jq -r --arg t "$title" --argjson n "$n" '
    def ms: . / 1e6 * 100 | round / 100;
    def us: . / 1e3 * 10 | round / 10;
    "| \($t) | \(.median.point_estimate | ms) | \(.mean.confidence_interval.lower_bound | ms)–\(.mean.confidence_interval.upper_bound | ms) | \(.median.point_estimate / $n | us) | \(1e9 / (.median.point_estimate / $n) | floor) |"' "$f"
}
{
  echo "# Operator benchmarks — $stamp"
  echo
  echo "Commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'); $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB;" \
    "load average at the end $(cut -d' ' -f1-3 /proc/loadavg); kube-apiserver $(grep KUBERNETES_VERSION "$root/e2e/tools/versions.env" | cut -d= -f2) with etcd on loopback (a control plane of its own);" \
    "release operator binary. The machine is shared: other builds and tests may run at the same time (the CPU table counts them as other processes)."
  echo
  echo "Contracts: operator/benches/fixtures — 3 channels (primary, cache, static; two with selectors), failover over 3 regions,"
  echo "6 ready endpoints per channel (18 per contract), full retry and circuit-breaker settings; ~10 KiB of Envoy files each."
  echo
  echo "## 1. Render time: \`operator::desired()\`"
  echo
  if [[ $skip_criterion != 1 ]]; then
    echo "criterion (operator/benches/render.rs), one thread; a batch translates every contract once."
    echo
    echo "| bench | median (ms) | mean 95% CI (ms) | per contract (µs) | contracts/s |"
    echo "|---|---:|---:|---:|---:|"
    criterion_row desired/one "1 contract" 1
    criterion_row desired_all/1000 "1,000 contracts" 1000
    criterion_row desired_all/10000 "10,000 contracts" 10000
    echo
  fi
  if [[ $skip_render != 1 ]]; then
    echo "Each call timed alone (bench_operator render, after one untimed pass):"
    echo
    cat "$work/render.md"
    echo
  fi
  if [[ $skip_api != 1 ]]; then
    echo "## 2. Against a real API server (release operator, \`operator run\` defaults$([[ -n $operator_args ]] && echo ", plus \`$operator_args\`"))"
    echo
    cat "$work/api.md"
    echo
    echo "### Targets"
    echo
    jq -r '
      def yes(c): if c then "**met**" else "**not met**" end;
      ([.steps[] | .time_to_all_programmed_s] | if any(. == null) then null else add end) as $sum
      | (.steps | last) as $last
      | .final_memory.operator_vmhwm_mib as $rss
      | .edits.edit_to_config_map_ms.p99 as $p99
      | "| target | measured | |\n|---|---:|---|",
        "| \($last.contracts_after) contracts Programmed within 60 s | \(if $sum == null then "not all programmed" else "\($sum * 10 | round / 10) s (sum of the steps; last step alone \($last.time_to_all_programmed_s * 10 | round / 10) s)" end) | \(yes($sum != null and $sum <= 60)) |",
        "| operator peak RSS under 150 MiB | \($rss * 10 | round / 10) MiB | \(yes($rss < 150)) |",
        "| edit → ConfigMap p99 under 500 ms | \($p99 | round) ms | \(yes($p99 < 500 and (.edits.failures | length) == 0)) |"' "$work/api.json"
    echo
  fi
  echo "Raw data: target/bench-operator/$stamp/ (driver JSON, operator log and /metrics, criterion output)."
} >"$summary"

echo
cat "$summary"
log "saved to ${summary#"$root"/}"
