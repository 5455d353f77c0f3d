#!/usr/bin/env bash
# make dashboard-screenshot: the chart's Grafana dashboard (charts/channel-contracts/files/dashboards/
# channel-contracts.json) drawn with real data into docs/dashboard.svg, for the README (not part of CI).
#
# Grafana is AGPL and is not built here, so bench/src/bin/dashboard_shot.rs draws the dashboard itself:
#   1. real data: with the e2e harness, an operator serving two ChannelContracts (payment-verify: channels
#      primary and cache, failover gz -> sz; orders: failover gz -> sz) over xDS to two real Envoys (gz,
#      sz), backends, continuous traffic, and a real Prometheus in the test's network namespace scraping
#      the operator's /metrics and the Envoys' /stats/prometheus with the chart's recording rules; over
#      five minutes: healthy traffic, a drill of payment-verify promising a 10ms switchover, a slow
#      backend that breaches sla.maxLatency, a failover to sz and then to the cache channel, a drill of
#      orders promising 5s;
#   2. every panel's targets (Grafana's variables as for "All", $__rate_interval 1m) run as range or
#      instant queries against that Prometheus over the data window; the raw answers go to
#      bench/results/dashboard.json, and the SVG is drawn from that file in the panels' gridPos layout
#      (timeseries, status-history, stat, table, bargauge; "No data" where a query returns nothing).
#
# `target/debug/dashboard_shot render` draws the SVG again from the JSON without running anything.
#
# It runs a control plane of its own (e2e/cluster.sh with CSP_RUN_DIR=target/bench-dashboard/cluster,
# no node), never the shared one in e2e/.run, and takes it down at the end. Knob: CSP_DASHBOARD_RUN_DIR
# (the control plane's folder).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CSP_RUN_DIR="${CSP_DASHBOARD_RUN_DIR:-$root/target/bench-dashboard/cluster}"
export KUBECONFIG="$CSP_RUN_DIR/kubeconfig"
export CSP_E2E_BIN="$root/e2e/.bin"

log() { printf '[dashboard %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$CSP_RUN_DIR" != "$root/e2e/.run" ]] || die "CSP_DASHBOARD_RUN_DIR must not be the shared control plane's e2e/.run"

started_cluster=0
cleanup() {
  local rc=$?
  set +e
  if [[ $started_cluster == 1 ]]; then
    CSP_NODE=0 bash "$root/e2e/cluster.sh" down >&2
    rm -rf "$CSP_RUN_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "ensuring the test tools (e2e/tools/build.sh: kubectl, helm, prometheus, envoy)"
bash "$root/e2e/tools/build.sh"
log "building the debug binaries the harness runs (operator, backend) and the driver"
cargo build --bins
cargo build -p channel-contracts-bench --bin dashboard_shot

if CSP_NODE=0 bash "$root/e2e/cluster.sh" status >/dev/null 2>&1; then
  die "a control plane already runs in ${CSP_RUN_DIR#"$root"/}: stop it (CSP_RUN_DIR=$CSP_RUN_DIR bash e2e/cluster.sh down)"
fi
log "starting a control plane of our own in ${CSP_RUN_DIR#"$root"/}"
started_cluster=1
CSP_NODE=0 bash "$root/e2e/cluster.sh" up >&2

log "producing the data (about 6 minutes) and drawing the dashboard"
"$root/target/debug/dashboard_shot" run \
  --dashboard "$root/charts/channel-contracts/files/dashboards/channel-contracts.json" \
  --json-out "$root/bench/results/dashboard.json" --svg-out "$root/docs/dashboard.svg"
log "saved docs/dashboard.svg (drawn from bench/results/dashboard.json)"
