#!/usr/bin/env bash
# Runs the e2e tests against a local control plane of their own: brings it up (unless one already
# runs, which it then leaves running), checks the chart's objects against it, builds the binaries, runs
# `cargo test -p channel-contracts-e2e`, and brings the control plane down.
set -euo pipefail
e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
started=0
if ! bash "$e2e/cluster.sh" status >/dev/null 2>&1; then
  bash "$e2e/cluster.sh" up
  started=1
fi
cleanup() { if [[ $started == 1 ]]; then bash "$e2e/cluster.sh" down; fi; }
trap cleanup EXIT
export KUBECONFIG="$e2e/.run/kubeconfig"
echo "[e2e] the chart's rendered objects against the real API server"
bash "$e2e/../charts/test.sh" --server --kubeconfig "$KUBECONFIG"
export CSP_E2E_BIN="$e2e/.bin"
echo "[e2e] building the product binaries"
cargo build --locked --bins
cargo test -p channel-contracts-e2e --locked -- --test-threads "${CSP_E2E_THREADS:-4}"
