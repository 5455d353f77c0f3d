#!/usr/bin/env bash
# make soak: the operator and the webhook under steady churn for CSP_SOAK_MINUTES (30) minutes (not part of
# CI, never run by `make test`); their resident memory (VmRSS) and open file descriptors must stay flat and
# their errors must not grow.
#
# bench/src/bin/bench_soak.rs starts a control plane of its own (CSP_RUN_DIR=target/soak/cluster
# CSP_NODE=0 e2e/cluster.sh up) with the CRDs and the chart's RBAC; the release operator (--publish
# configmap,xds, xDS over TLS) as the chart's operator ServiceAccount with two real Envoys fed over delta
# ADS; the release webhook as the chart's webhook ServiceAccount, registered with failurePolicy Fail for the
# soak's two namespaces (label csp-soak=true), and a Deny ContractPolicy on them. Then, one tick a second:
# Services, EndpointSlices and ChannelContracts created, their endpoints changed, contracts and Services
# edited, all deleted, in 30 slots; a non-compliant Service every 4 s (must be denied); a policy edit every
# 30 s (the webhook's audit runs on it). Every CSP_SOAK_SAMPLE_SECONDS (10): both processes' VmRSS and
# number of open fds, the error counters of their /metrics and the WARN/ERROR lines of their logs.
#
# The report (bench/results/soak-<stamp>.md, raw samples in bench/results/soak.json) has the operations
# by kind, RSS and fds at the start, the end and their maximum, the least-squares slope per hour after the
# warm-up (CSP_SOAK_WARMUP_MINUTES: 3, or a fifth of runs shorter than 15 minutes), the error counters at
# the start, after the warm-up and at the end, and the verdict: "flat" when |RSS slope| < 5 MiB/h and
# |fd slope| < 10/h for both processes.
#
# Knobs (environment): CSP_SOAK_MINUTES (30), CSP_SOAK_WARMUP_MINUTES, CSP_SOAK_SAMPLE_SECONDS (10),
# CSP_SOAK_SLOTS (15 per namespace), CSP_SOAK_RUN_DIR (the control plane's folder).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
minutes="${CSP_SOAK_MINUTES:-30}"
sample_secs="${CSP_SOAK_SAMPLE_SECONDS:-10}"
slots="${CSP_SOAK_SLOTS:-15}"
warmup="${CSP_SOAK_WARMUP_MINUTES:-}"

stamp="$(date +%Y-%m-%d-%H%M%S)"
work="$root/target/soak/$stamp"
results="$root/bench/results"
summary="$results/soak-$stamp.md"
export CSP_RUN_DIR="${CSP_SOAK_RUN_DIR:-$root/target/soak/cluster}"
export CSP_E2E_BIN="$root/e2e/.bin"
mkdir -p "$work" "$results"

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$CSP_RUN_DIR" != "$root/e2e/.run" ]] || die "CSP_SOAK_RUN_DIR must not be the shared control plane's e2e/.run"

cleanup() {
  local rc=$?
  set +e
  # The driver stops the operator, the webhook, the Envoys and the control plane it started; this is for
  # a driver that died on the way.
  if CSP_NODE=0 bash "$root/e2e/cluster.sh" status >/dev/null 2>&1; then
    CSP_NODE=0 bash "$root/e2e/cluster.sh" down >&2
  fi
  rm -rf "$CSP_RUN_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if CSP_NODE=0 bash "$root/e2e/cluster.sh" status >/dev/null 2>&1; then
  die "a control plane already runs in ${CSP_RUN_DIR#"$root"/}: stop it (CSP_RUN_DIR=$CSP_RUN_DIR bash e2e/cluster.sh down)"
fi

log "building the release operator and webhook, and the driver"
cargo build --release --locked -p channel-contracts-operator -p channel-contracts-webhook --bin operator --bin webhook
cargo build --locked -p channel-contracts-bench --bin bench_soak
for tool in kube-apiserver etcd kubectl helm envoy; do
  [[ -x "$CSP_E2E_BIN/$tool" ]] || die "$CSP_E2E_BIN/$tool is missing: run make tools"
done
commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo '+uncommitted')"

log "soak: $minutes minutes of churn, a sample every $sample_secs s (work folder ${work#"$root"/})"
warmup_args=()
[[ -z $warmup ]] || warmup_args=(--warmup-minutes "$warmup")
"$root/target/debug/bench_soak" --minutes "$minutes" "${warmup_args[@]}" --sample-secs "$sample_secs" --slots "$slots" \
  --control-plane-dir "$CSP_RUN_DIR" --work-dir "$work" \
  --operator-bin "$root/target/release/operator" --webhook-bin "$root/target/release/webhook" \
  --commit "$commit" --json-out "$results/soak.json" --md-out "$work/soak.md"

{
  echo "# Soak — $stamp"
  echo
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;" \
    "kube-apiserver $(grep KUBERNETES_VERSION "$root/e2e/tools/versions.env" | cut -d= -f2) with etcd on loopback (a control plane of its own);" \
    "Envoy $("$root/e2e/.bin/envoy" --version | sed -n 's/.*version: \([^ ]*\).*/\1/p'). The machine is shared: other builds and tests may run at the same time."
  echo
  cat "$work/soak.md"
  echo
  echo "Raw data: bench/results/soak.json (this run: every sample), target/soak/$stamp/ (operator, webhook and Envoy logs)."
} >"$summary"

echo
cat "$summary"
log "saved to ${summary#"$root"/} and bench/results/soak.json"
