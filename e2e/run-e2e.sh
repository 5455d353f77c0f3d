#!/usr/bin/env bash
# Runs the e2e tests against a local control plane of their own: brings it up (unless one already
# runs, which it then leaves running), checks the chart's objects against it, builds the binaries, runs
# `cargo test -p channel-contracts-e2e`, and brings the control plane down.
set -euo pipefail
e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
started=0
cleanup() { if [[ $started == 1 ]]; then bash "$e2e/cluster.sh" down; fi; }
trap cleanup EXIT
if ! bash "$e2e/cluster.sh" status >/dev/null 2>&1; then
  # A half-started cluster is stopped too.
  started=1
  bash "$e2e/cluster.sh" up
fi
export KUBECONFIG="$e2e/.run/kubeconfig"
echo "[e2e] the chart's rendered objects against the real API server"
bash "$e2e/../charts/test.sh" --server --kubeconfig "$KUBECONFIG"
export CSP_E2E_BIN="$e2e/.bin"
echo "[e2e] building the product binaries"
cargo build --locked --bins
if [[ -f "$e2e/.run/node-enabled" ]]; then
  # The in-cluster suite's images: the repository's Dockerfile with these binaries, and the tests' own pods.
  echo "[e2e] building the images and importing them into the node"
  bash "$e2e/images.sh" project
  bash "$e2e/images.sh" testbins
  bash "$e2e/node.sh" import project testbins
fi
cargo test -p channel-contracts-e2e --locked -- --test-threads "${CSP_E2E_THREADS:-4}" --skip in_cluster_
# The chart installed for real acts on the whole cluster (its webhook, its operator): alone, after the rest.
if [[ -f "$e2e/.run/node-enabled" ]]; then
  cargo test -p channel-contracts-e2e --locked --test in_cluster
else
  echo "[e2e] skipping the in-cluster suite: the cluster has no node (CSP_NODE=0)"
fi
