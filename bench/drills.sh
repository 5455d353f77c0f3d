#!/usr/bin/env bash
# make bench-drills: ContractDrill switchovers, many drills in a row (not part of CI, never run by `make test`).
#
# Against a real API server, the operator (debug build, `--publish xds` over TLS, as the chart's operator
# ServiceAccount) feeds one real Envoy in gz (or more) over delta ADS, as e2e/tests/drills.rs sets it up:
# Service `pay` with gz-1 in gz and sz-1 in sz, contract `pay` with `failover: {regions: [gz, sz]}`, retries
# and a circuit breaker (3 errors in a row, 2 s ejection); continuous background traffic through the proxy.
# Then N ContractDrills in a row (bench/src/bin/bench_drills.rs), each a new one: fault
# `{region: gz, abort: {httpStatus: 503, percent: 100}}` for its duration, promising
# `expect.failoverWithin`; the driver waits for each verdict (Passed/Failed/Aborted) and records
# status.switchover (the operator's own measure, from the proxies' access logs: first try that met the
# fault -> first try answered by sz), then waits until the traffic is back on gz-1 before the next drill.
# Measured: switchover p50/p99/max, the share of drills within the promise (the seed's report: 92 % within
# 1.8 s), when the proxies acked the fault, what the clients saw.
#
# It runs a control plane of its own (e2e/cluster.sh with CSP_RUN_DIR=target/bench-drills/cluster, no node),
# never the shared one in e2e/.run, and throws it away at the end unless CSP_BENCH_KEEP=1 (a kept one is
# reused by the next run). The results go to bench/results/drills.json (the latest run, every drill's raw
# status) and the summary to bench/results/drills-<date>.md; the operator's and the proxies' logs stay in
# e2e/.run/tests/bench-drills-*.
#
# Knobs (environment): CSP_BENCH_DRILLS (20), CSP_BENCH_PROMISE (1800ms: expect.failoverWithin),
# CSP_BENCH_DRILL_DURATION (10s: each drill's spec.duration), CSP_BENCH_PROXIES (1: Envoys in gz, each with
# its own traffic), CSP_BENCH_TRAFFIC_MS (100: one background request per proxy every so many ms),
# CSP_BENCH_RUN_DIR (the control plane's folder), CSP_BENCH_KEEP (0).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
keep="${CSP_BENCH_KEEP:-0}"
export CSP_BENCH_DRILLS="${CSP_BENCH_DRILLS:-20}"
export CSP_BENCH_PROMISE="${CSP_BENCH_PROMISE:-1800ms}"
export CSP_BENCH_DRILL_DURATION="${CSP_BENCH_DRILL_DURATION:-10s}"
export CSP_BENCH_PROXIES="${CSP_BENCH_PROXIES:-1}"
export CSP_BENCH_TRAFFIC_MS="${CSP_BENCH_TRAFFIC_MS:-100}"

stamp="$(date +%Y-%m-%d-%H%M%S)"
results="$root/bench/results"
export CSP_RUN_DIR="${CSP_BENCH_RUN_DIR:-$root/target/bench-drills/cluster}"
export KUBECONFIG="$CSP_RUN_DIR/kubeconfig"
# The e2e harness's tools (envoy, kubectl, helm) and its debug product binaries (operator, backend).
export CSP_E2E_BIN="$root/e2e/.bin"
mkdir -p "$results"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$CSP_RUN_DIR" != "$root/e2e/.run" ]] || die "CSP_BENCH_RUN_DIR must not be the shared control plane's e2e/.run"
[[ $(id -u) == 0 ]] || die "the drills' proxies run in network namespaces: run as root"

started_cluster=0
cleanup() {
  local rc=$?
  set +e
  # The driver stops the operator, the backends and the Envoys it started (they die with it in any case).
  if [[ $started_cluster == 1 && $keep != 1 ]]; then
    CSP_NODE=0 bash "$root/e2e/cluster.sh" down >&2
    # Its etcd holds the benchmark's objects: nothing to keep.
    rm -rf "$CSP_RUN_DIR"
  elif [[ $keep == 1 ]]; then
    log "left the control plane running (the next run reuses it; CSP_RUN_DIR=$CSP_RUN_DIR bash e2e/cluster.sh down stops it)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build and tools ---------------------------------------------------------------------------------
for t in kube-apiserver etcd kube-controller-manager kubectl helm envoy; do
  [[ -x "$CSP_E2E_BIN/$t" ]] || die "$CSP_E2E_BIN/$t is missing: run 'make tools' first"
done
log "building the debug binaries the e2e harness runs (cargo build --bins)"
cargo build --locked --bins
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo '+uncommitted')"

# --- the control plane -------------------------------------------------------------------------------
if CSP_NODE=0 bash "$root/e2e/cluster.sh" status >/dev/null 2>&1; then
  log "reusing the control plane running in ${CSP_RUN_DIR#"$root"/} (kept by an earlier run)"
else
  log "starting a control plane of our own in ${CSP_RUN_DIR#"$root"/}"
  started_cluster=1
  CSP_NODE=0 bash "$root/e2e/cluster.sh" up >&2
fi

# --- the drills --------------------------------------------------------------------------------------
log "driver: $CSP_BENCH_DRILLS drills (duration $CSP_BENCH_DRILL_DURATION, promise $CSP_BENCH_PROMISE), $CSP_BENCH_PROXIES proxy(ies), a request every ${CSP_BENCH_TRAFFIC_MS}ms"
"$root/target/debug/bench_drills" --results "$results" --stamp "$stamp" --commit "$commit"
log "saved to bench/results/drills-$stamp.md and bench/results/drills.json"
