#!/usr/bin/env bash
# make bench-fleet: the fleet hub against as many real member control planes as this machine's memory holds
# (not part of CI, never run by `make test`). See bench/src/bin/bench_fleet.rs for what is measured.
#
# Every control plane (the hub's and each member's: etcd + kube-apiserver, no controller manager) lives in
# target/bench-fleet/<name> and is stopped at the end (the driver's Drop), with the webhooks and the hub.
# Results: bench/results/fleet-<date>.md and bench/results/fleet.json.
#
# Knobs (environment): CSP_BENCH_MEMBERS (0: as many as memory allows), CSP_BENCH_MAX_MEMBERS (100),
# CSP_BENCH_PARALLEL (4 started at once), CSP_BENCH_AUDIT_INTERVAL (5 s, the members' webhooks),
# CSP_BENCH_VIOLATIONS (10 members get a violation, one after the other).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
stamp="$(date +%Y-%m-%d-%H%M%S)"
results="$root/bench/results"
dir="$root/target/bench-fleet"
export CSP_E2E_BIN="$root/e2e/.bin"
mkdir -p "$results"
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for t in kube-apiserver etcd kubectl helm; do
  [[ -x "$CSP_E2E_BIN/$t" ]] || { log "$CSP_E2E_BIN/$t is missing: run 'make tools' first"; exit 1; }
done
cleanup() {
  # A crashed driver leaves control planes behind: stop whatever is left in the folder.
  for d in "$dir"/*/; do
    [[ -d "$d/pids" ]] && CSP_RUN_DIR="${d%/}" bash "$root/e2e/cluster.sh" down >/dev/null 2>&1
  done
  rm -rf "$dir"
}
trap cleanup EXIT
log "building the debug binaries (cargo build --bins)"
cargo build --locked --bins
commit="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo '+uncommitted')"
rm -rf "$dir"; mkdir -p "$dir"
"$root/target/debug/bench_fleet" --results "$results" --stamp "$stamp" --commit "$commit" --dir "$dir"
log "saved to bench/results/fleet-$stamp.md and bench/results/fleet.json"
