#!/usr/bin/env bash
# make chaos: the chaos suite (e2e/tests/chaos.rs) at its long scale (CSP_CHAOS=long: 1,000 contracts,
# longer loads, three kills of each kind), one scenario at a time, each on a control plane of its own
# (nothing shared is brought up). Each scenario asserts what must hold and appends its counts as a JSON
# line; this script turns them into bench/results/chaos-<stamp>.md (raw: bench/results/chaos.json).
# The short scale of the same tests runs in CI (make test).
#
#   CSP_CHAOS_THREADS  scenarios at once (default 1: figures not skewed by each other)
#   CSP_CHAOS_FILTER   run only the tests whose name contains this
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
results="$root/bench/results"
stamp="$(date -u +%Y-%m-%d-%H%M%S)"
report="$results/chaos-$stamp.md"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$results"

# What the binaries are built from (the tree may move on while the scenarios run).
commit="$(git rev-parse --short HEAD)"
dirty="$(git diff --quiet HEAD -- e2e operator webhook crds lifecycle || echo ' (with uncommitted changes)')"

# The control plane's binaries, kubectl, helm and Envoy (e2e/tools/build.sh: quick when up to date); the
# node's images (make tools) are not needed.
bash e2e/tools/build.sh

echo "[chaos] building the product binaries"
cargo build --locked --bins
cargo build --locked -p channel-contracts-e2e --tests

load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
t0=$SECONDS
echo "[chaos] running e2e/tests/chaos.rs with CSP_CHAOS=long"
set +e
CSP_CHAOS=long CSP_CHAOS_RESULTS="$work/results.jsonl" CSP_E2E_BIN="$root/e2e/.bin" \
  cargo test --locked -p channel-contracts-e2e --test chaos -- --nocapture \
  --test-threads "${CSP_CHAOS_THREADS:-1}" ${CSP_CHAOS_FILTER:+"$CSP_CHAOS_FILTER"} 2>&1 | tee "$work/test.log"
status=${PIPESTATUS[0]}
set -e
wall=$((SECONDS - t0))
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"
touch "$work/results.jsonl"

python3 - "$work/results.jsonl" "$work/test.log" "$report" "$results/chaos.json" <<EOF
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
log = open(sys.argv[2]).read().splitlines()
outcomes = [l for l in log if l.startswith("test ") and (" ... " in l)] + [l for l in log if l.startswith("test result:")]
json.dump(lines, open(sys.argv[4], "w"), indent=2)
titles = {
    "apiserver-etcd-kill": "kill -9 of kube-apiserver, then of etcd, while contracts reconcile",
    "webhook-kill": "kill -9 of the webhook during a create load (chart registration: failurePolicy Fail, kube-system excluded)",
    "operator-leader-kill": "kill -9 of the operator leader during churn (two replicas, leader election)",
    "operator-restart-proxies": "an Envoy on xDS through operator restarts (SIGTERM, then SIGKILL)",
}
out = []
out.append("# Chaos: \`make chaos\` ($stamp UTC)\n")
out.append("Built from commit \`$commit\`$dirty; "
           "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); "
           "load average before $load_before, after $load_after; ${wall} s wall; "
           "\`cargo test -p channel-contracts-e2e --test chaos\` with CSP_CHAOS=long exited $status.\n")
out.append("Each scenario runs on a control plane of its own (etcd, kube-apiserver, kube-controller-manager from "
           "\`e2e/cluster.sh\`); the operator and the webhook are the debug builds, run as the chart's ServiceAccounts; "
           "proxies are real Envoys fed over xDS (TLS). The test asserts what must hold; the counts below are what it printed.\n")
out.append("## Test outcomes\n")
out.append("\`\`\`")
out.extend(outcomes)
out.append("\`\`\`\n")
for line in lines:
    name = line.get("scenario", "?")
    out.append(f"## {name}: {titles.get(name, '')}\n")
    out.append("| count | value |")
    out.append("|---|---|")
    for k, v in line.items():
        if k in ("scenario",):
            continue
        out.append(f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |")
    out.append("")
out.append("## Raw\n")
out.append("\`\`\`json")
out.extend(json.dumps(l) for l in lines)
out.append("\`\`\`")
open(sys.argv[3], "w").write("\n".join(out) + "\n")
EOF
echo "[chaos] report: $report (raw: $results/chaos.json)"
exit "$status"
