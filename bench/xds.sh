#!/usr/bin/env bash
# make bench-xds: the operator's xDS server at scale (not part of CI, never run by `make test`).
#
#   1. profile (bench_xds profile): the xDS server's own steps in process, without gRPC or an API server,
#      at the same scale: the snapshot of a view, a session's responses, their encoding, reading and
#      applying the proxies' answers, per initial exchange and per edit; memory per session;
#   2. against a real API server (bench_xds run, bench/src/bin/bench_xds/run.rs): 5,000 contracts with
#      their Services, EndpointSlices (endpoints in gz, sz and hz) and Nodes; the release operator with
#      --publish xds (TLS by default) as the chart's operator ServiceAccount; the time until all are
#      Programmed; 10 real Envoys (bootstraps from `operator bootstrap`) and 1,000 simulated proxies
#      (bench/src/simulated_proxy.rs, delta ADS) connect at once: the time until every one has the whole
#      configuration; 30 edits of sla.maxLatency one at a time: edit -> all acknowledged, from the
#      simulated proxies' clocks and from the contract's status.proxies; the operator's memory with no
#      proxy and with all of them (per proxy), its CPU time per edit.
#
# It runs a control plane of its own (e2e/cluster.sh with CSP_RUN_DIR=target/bench-xds/cluster by
# default), never the shared one in e2e/.run, and throws it away at the end unless CSP_BENCH_KEEP=1; a
# kept one is reused by the next run (with its objects: nothing is created again). The results go to
# bench/results/xds.json (the latest run) and the summary to bench/results/xds-<date>.md.
#
# Knobs (environment): CSP_BENCH_CONTRACTS (5000), CSP_BENCH_NAMESPACES (10), CSP_BENCH_ENVOYS (10),
# CSP_BENCH_SIMULATED (1000), CSP_BENCH_ENVOY_NAMESPACES (1: each Envoy serves one namespace's contracts,
# 500 of them with the defaults; 0: all 5,000, 20,000 clusters, ~1.5 GiB and ~100 s of CPU per Envoy), CSP_BENCH_EDITS (30), CSP_BENCH_CONNECT_RATE (0: every proxy at once; else
# proxies per second), CSP_BENCH_XDS_TLS (1; 0 serves plaintext with --xds-insecure),
# CSP_BENCH_SERVICE_ACCOUNT (1; 0 runs the operator with the admin kubeconfig), CSP_BENCH_OPERATOR_ARGS
# (extra `operator run` flags), CSP_BENCH_MAX_OPERATOR_RSS_MIB (8192: the run stops beyond it),
# CSP_BENCH_SKIP_PROFILE (0), CSP_BENCH_REPORT_ONLY (a run's work folder, target/bench-xds/<stamp>: its
# summary written again from its run.json and profile.json, nothing run), CSP_BENCH_SKIP_API (0), CSP_BENCH_PROFILE_EDITS (10), CSP_BENCH_RUN_DIR (the
# control plane's folder), CSP_BENCH_KEEP (0).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
contracts="${CSP_BENCH_CONTRACTS:-5000}"
namespaces="${CSP_BENCH_NAMESPACES:-10}"
envoys="${CSP_BENCH_ENVOYS:-10}"
envoy_namespaces="${CSP_BENCH_ENVOY_NAMESPACES:-1}"
simulated="${CSP_BENCH_SIMULATED:-1000}"
edits="${CSP_BENCH_EDITS:-30}"
connect_rate="${CSP_BENCH_CONNECT_RATE:-0}"
max_rss="${CSP_BENCH_MAX_OPERATOR_RSS_MIB:-8192}"
tls="${CSP_BENCH_XDS_TLS:-1}"
service_account="${CSP_BENCH_SERVICE_ACCOUNT:-1}"
operator_args="${CSP_BENCH_OPERATOR_ARGS:-}"
skip_profile="${CSP_BENCH_SKIP_PROFILE:-0}"
skip_api="${CSP_BENCH_SKIP_API:-0}"
profile_edits="${CSP_BENCH_PROFILE_EDITS:-10}"
keep="${CSP_BENCH_KEEP:-0}"

report_only="${CSP_BENCH_REPORT_ONLY:-}"
if [[ -n $report_only ]]; then
  work="$(cd "$report_only" && pwd)"
  stamp="$(basename "$work")"
else
  stamp="$(date +%Y-%m-%d-%H%M%S)"
  work="$root/target/bench-xds/$stamp"
fi
results="$root/bench/results"
summary="$results/xds-$stamp.md"
json_out="$results/xds.json"
export CSP_RUN_DIR="${CSP_BENCH_RUN_DIR:-$root/target/bench-xds/cluster}"
export KUBECONFIG="$CSP_RUN_DIR/kubeconfig"
kubectl="$root/e2e/.bin/kubectl"
mkdir -p "$work" "$results"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
k() { "$kubectl" --kubeconfig "$KUBECONFIG" "$@"; }

[[ "$CSP_RUN_DIR" != "$root/e2e/.run" ]] || die "CSP_BENCH_RUN_DIR must not be the shared control plane's e2e/.run"

started_cluster=0
cleanup() {
  local rc=$?
  set +e
  # The driver stops the operator and the Envoys it started (they die with it in any case).
  if [[ $started_cluster == 1 && $keep != 1 ]]; then
    bash "$root/e2e/cluster.sh" down >&2
    # Its etcd holds the benchmark's objects: nothing to keep.
    rm -rf "$CSP_RUN_DIR"
  elif [[ $keep == 1 ]]; then
    log "left the control plane running (the next run reuses it; CSP_RUN_DIR=$CSP_RUN_DIR bash e2e/cluster.sh down stops it)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n $report_only ]]; then
  # Only the summary of a finished run, written again from its JSON.
  [[ -f "$work/run.json" || -f "$work/profile.json" ]] || die "$work has neither run.json nor profile.json"
  command -v jq >/dev/null || { log "installing jq (Debian)"; apt-get install -y -qq jq >/dev/null; }
  cargo build --release -p channel-contracts-bench --bin bench_xds
  driver="$root/target/release/bench_xds"
  [[ ! -f "$work/run.json" ]] || "$driver" report --json "$work/run.json" --md-out "$work/run.md"
  skip_profile=1 skip_api=1
  commit="$(jq -r '.machine.commit // "?"' "$work/run.json" 2>/dev/null || echo '?')"
else
# --- build and tools ---------------------------------------------------------------------------------
log "building the release binaries (operator, bench_xds)"
cargo build --release -p channel-contracts-operator -p channel-contracts-bench --bin operator --bin bench_xds
operator_bin="$root/target/release/operator"
driver="$root/target/release/bench_xds"
log "ensuring the test tools (e2e/tools/build.sh)"
bash "$root/e2e/tools/build.sh"
command -v jq >/dev/null || { log "installing jq (Debian)"; apt-get install -y -qq jq >/dev/null; }
# A thousand simulated proxies hold a connection each, and the operator one per proxy.
ulimit -n "$(ulimit -Hn)"
(( $(ulimit -n) >= 4 * (envoys + simulated) )) || die "open files are limited to $(ulimit -n): $((4 * (envoys + simulated))) are needed"
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo '+uncommitted')"
fi

# --- 1. in process -----------------------------------------------------------------------------------
if [[ $skip_profile != 1 ]]; then
  log "profile: the xDS server's steps in process, $contracts contracts, $((envoys + simulated)) sessions, $profile_edits edits"
  "$driver" profile --contracts "$contracts" --namespaces "$namespaces" --sessions "$((envoys + simulated))" \
    --own-views "$envoys" --edits "$profile_edits" --json-out "$work/profile.json"
fi

# --- 2. against a real API server --------------------------------------------------------------------
if [[ $skip_api != 1 ]]; then
  if bash "$root/e2e/cluster.sh" status >/dev/null 2>&1; then
    log "reusing the control plane running in ${CSP_RUN_DIR#"$root"/} (kept by an earlier run)"
  else
    log "starting a control plane of our own in ${CSP_RUN_DIR#"$root"/}"
    started_cluster=1
    bash "$root/e2e/cluster.sh" up >&2
  fi
  k apply --server-side --force-conflicts -f "$root/crds/manifests/" >/dev/null
  k wait --for=condition=Established --timeout=60s \
    crd/channelcontracts.csp.contracts.dev crd/contractpolicies.csp.contracts.dev >/dev/null

  flags=()
  [[ $tls == 1 ]] || flags+=(--plaintext)
  [[ $service_account == 1 ]] || flags+=(--admin-kubeconfig)
  [[ -z $operator_args ]] || flags+=(--operator-args "$operator_args")
  log "driver: $contracts contracts, $envoys Envoys, $simulated simulated proxies, $edits edits (work folder ${work#"$root"/})"
  "$driver" run --contracts "$contracts" --namespaces "$namespaces" --envoys "$envoys" --envoy-namespaces "$envoy_namespaces" --simulated "$simulated" \
    --edits "$edits" --connect-rate "$connect_rate" --max-operator-rss-mib "$max_rss" "${flags[@]}" --operator-bin "$operator_bin" --envoy-bin "$root/e2e/.bin/envoy" \
    --control-plane-dir "$CSP_RUN_DIR" --work-dir "$work" --clk-tck "$(getconf CLK_TCK)" --commit "$commit" \
    --json-out "$work/run.json" --md-out "$work/run.md" >/dev/null
fi

# --- results -----------------------------------------------------------------------------------------
profile_json="$work/profile.json"; [[ -f $profile_json ]] || echo null >"$profile_json"
run_json="$work/run.json"; [[ -f $run_json ]] || echo null >"$run_json"
jq -n --slurpfile run "$run_json" --slurpfile profile "$profile_json" --arg commit "$commit" \
  '($run[0] // {}) + {commit: $commit, profile: $profile[0]}' >"$json_out"
{
  echo "# xDS benchmark — $stamp"
  echo
  load_end="$(jq -r '.machine.load_average // empty' "$run_json" 2>/dev/null)"
  echo "Commit $commit; $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;" \
    "load average at the end ${load_end:-$(cut -d' ' -f1-3 /proc/loadavg)}; kube-apiserver $(grep KUBERNETES_VERSION "$root/e2e/tools/versions.env" | cut -d= -f2) with etcd on loopback (a control plane of its own);" \
    "Envoy $("$root/e2e/.bin/envoy" --version | sed -n 's/.*version: \([^ ]*\).*/\1/p'). The machine is shared: other builds and tests may run at the same time (the CPU table counts them as other processes)."
  echo
  if [[ -f "$work/run.md" ]]; then
    echo "## Against a real API server"
    echo
    cat "$work/run.md"
    echo
  fi
  if [[ $(cat "$profile_json") != null ]]; then
    echo "## In process (\`bench_xds profile\`): the xDS server's own steps, one thread"
    echo
    jq -r '
      def ms: . * 10 | round / 10;
      "\(.contracts) contracts, \(.sessions) delta sessions (\(.own_views) with a view of their own, the others one view per region).",
      "",
      "| | snapshot (ms) | respond (ms) | encode (ms) | request (ms) | apply (ms) | total (ms) | resources sent |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
      "| initial, all sessions | \(.initial.snapshot_ms | ms) | \(.initial.respond_ms | ms) | \(.initial.encode_ms | ms) | \(.initial.request_ms | ms) | \(.initial.apply_ms | ms) | \(.initial.total_ms | ms) | \(.initial.resources) |",
      (.edits[] | "| one edit, all sessions | \(.snapshot_ms | ms) | \(.respond_ms | ms) | \(.encode_ms | ms) | \(.request_ms | ms) | \(.apply_ms | ms) | \(.total_ms | ms) | \(.resources) |"),
      "",
      "Per edit, total: p50 \(.edit_total_ms.p50 | ms) ms, max \(.edit_total_ms.max | ms) ms. Memory: \(.rss_mib.catalog | ms) MiB with the catalog, \(.rss_mib.sessions | ms) MiB with the sessions: **\(.memory_per_session_mib * 1024 | ms) KiB per session**."' \
      "$profile_json"
    echo
  fi
  echo "Raw data: bench/results/xds.json (this run), target/bench-xds/$stamp/ (operator and Envoy logs, bootstraps)."
} >"$summary"

echo
cat "$summary"
log "saved to ${summary#"$root"/} and ${json_out#"$root"/}"
