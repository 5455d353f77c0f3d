#!/usr/bin/env bash
# make bench-peers: the webhook side by side with OPA Gatekeeper, Kyverno and a hand-written
# ValidatingAdmissionPolicy (not part of CI, never run by `make test`).
#
# One rule everywhere: Services in the benchmark's namespaces must carry the annotation
# csp.contracts.dev/failover-regions naming gz, sz and hz, else they are denied. Each engine judges its own
# namespace only (its registration's namespaceSelector), and each is checked to deny a non-compliant
# Service before anything is measured (bench/src/bin/bench_peers.rs).
#
#   1. `create Service` through the API server, engine by engine, interleaved: none, ours (the webhook with
#      a ContractPolicy), the VAP, Gatekeeper (ConstraintTemplate in Rego + Constraint), Kyverno
#      (ClusterPolicy): one at a time and in bursts of 16 in flight; latency added over none, throughput,
#      every engine process's CPU time and peak RSS;
#   2. the audit of 50,000 existing Services (one in ten non-compliant): the time until the result is in
#      status, and memory, for ours (ContractPolicy status) and Gatekeeper's audit process (Constraint
#      status).
#
# Everything runs on one control plane of its own (target/bench-peers/cluster, CSP_NODE=0), started here
# and stopped at the end together with every process this script started. The peers come from
# `make peers` (e2e/tools/peers/build.sh), the control plane's binaries from `make tools`.
# The summary goes to bench/results/peers-<stamp>.md and bench/results/peers.json.
#
# Knobs (environment): CSP_PEERS_ROUNDS (2000: creates one at a time per engine), CSP_PEERS_BURSTS (60),
# CSP_PEERS_BURST_SIZE (160), CSP_PEERS_CONCURRENCY (16), CSP_PEERS_AUDIT_SERVICES (50000),
# CSP_PEERS_SKIP_KYVERNO (0), CSP_PEERS_SKIP_AUDIT (0).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${CSP_PEERS_ROUNDS:-2000}"
bursts="${CSP_PEERS_BURSTS:-60}"
burst_size="${CSP_PEERS_BURST_SIZE:-160}"
concurrency="${CSP_PEERS_CONCURRENCY:-16}"
audit_services="${CSP_PEERS_AUDIT_SERVICES:-50000}"
skip_kyverno="${CSP_PEERS_SKIP_KYVERNO:-0}"
skip_audit="${CSP_PEERS_SKIP_AUDIT:-0}"

stamp="$(date +%Y-%m-%d-%H%M%S)"
t_start=$SECONDS
load_at_start="$(cut -d' ' -f1-3 /proc/loadavg)"
run_id="csp-peers-$(date +%H%M%S)"
# Whether what is built below differs from the commit (judged now, before the build; results files aside).
dirty="$(git diff --quiet HEAD -- webhook crds bench ':(exclude)bench/results' 2>/dev/null || echo ' (with uncommitted changes)')"
work="$root/target/bench-peers/$stamp"
results="$root/bench/results"
summary="$results/peers-$stamp.md"
summary_json="$results/peers.json"
bin="$root/e2e/.bin"
peers="$bin/peers"
kubectl="$bin/kubectl"
cluster_run="$root/target/bench-peers/cluster"
export KUBECONFIG="$cluster_run/kubeconfig"
cluster() { CSP_RUN_DIR="$cluster_run" CSP_NODE=0 bash "$root/e2e/cluster.sh" "$@"; }
mkdir -p "$work" "$results"
# shellcheck source=../e2e/tools/versions.env
source "$root/e2e/tools/versions.env"

log() { printf '[bench-peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
k() { "$kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

declare -A pids=()
started_cluster=0
stop_pid() {
  local name="$1" pid="${pids[$1]:-}"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  set +e
  # Registrations first (they point at processes about to stop), then the processes, then the cluster.
  if [[ -f "$KUBECONFIG" ]] && cluster status >/dev/null 2>&1; then
    k delete validatingwebhookconfigurations -l "csp-bench-run=$run_id" --ignore-not-found >/dev/null 2>&1
    k delete validatingwebhookconfigurations,mutatingwebhookconfigurations -l webhook.kyverno.io/managed-by=kyverno \
      --ignore-not-found >/dev/null 2>&1
  fi
  for name in "${!pids[@]}"; do stop_pid "$name"; done
  if [[ $started_cluster == 1 ]]; then cluster down >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND...: a background process with its log in $work/NAME.log.
start() {
  local name="$1"; shift
  "$@" >"$work/$name.log" 2>&1 </dev/null &
  pids[$name]=$!
  log "started $name (pid ${pids[$name]}; log ${work#"$root"/}/$name.log)"
}
# wait_ready NAME SECONDS COMMAND...: until COMMAND succeeds; fails with NAME's log tail if it exits.
wait_ready() {
  local name="$1" timeout="$2"; shift 2
  local t0=$SECONDS
  until "$@" >/dev/null 2>&1; do
    kill -0 "${pids[$name]}" 2>/dev/null || { tail -n 40 "$work/$name.log" >&2; die "$name exited"; }
    (( SECONDS - t0 > timeout )) && { tail -n 40 "$work/$name.log" >&2; die "$name was not ready within ${timeout}s"; }
    sleep 0.5
  done
  log "$name is ready ($((SECONDS - t0))s)"
}
https_ok() { curl -sf -o /dev/null --cacert "$ca" "$1"; }
# An HTTPS server answers at all, with our CA (any status: a webhook path answers a GET with 4xx).
https_up() { [[ "$(curl -s -o /dev/null -w '%{http_code}' --cacert "$ca" "$1")" != 000 ]]; }

# --- build and tools ---------------------------------------------------------------------------------
log "building the release binaries (webhook, bench_admission, bench_peers)"
CARGO_INCREMENTAL=0 cargo build --release -p channel-contracts-webhook -p channel-contracts-bench \
  --bin webhook --bin bench_admission --bin bench_peers
webhook_bin="$root/target/release/webhook"
certs_helper="$root/target/release/bench_admission"
driver="$root/target/release/bench_peers"
for tool in etcd kube-apiserver kube-controller-manager kubectl; do
  [[ -x "$bin/$tool" ]] || die "e2e/.bin/$tool is missing: run 'make tools' first"
done
log "ensuring the peers (make peers: e2e/tools/peers/build.sh)"
bash "$root/e2e/tools/peers/build.sh" >&2
command -v jq >/dev/null || { log "installing jq (Debian)"; apt-get install -y -qq jq >/dev/null; }

# --- control plane -----------------------------------------------------------------------------------
if cluster status >/dev/null 2>&1; then
  log "a control plane from an earlier run still runs in ${cluster_run#"$root"/}: stopping it first"
  cluster down >&2
fi
log "starting a control plane of this run's own in ${cluster_run#"$root"/} (stopped at the end)"
started_cluster=1
cluster up >&2
apiserver_pid="$(cat "$cluster_run/pids/kube-apiserver")"

log "installing the CRDs: ours, Gatekeeper's ($(ls "$peers/crds/gatekeeper" | wc -l) files), Kyverno's ($(ls "$peers/crds/kyverno" | wc -l) files)"
k apply --server-side -f "$root/crds/manifests/" >/dev/null
# `create`, not apply: some of Kyverno's CRDs are too big for apply's last-applied annotation.
k create -f "$peers/crds/gatekeeper/" >/dev/null
k create -f "$peers/crds/kyverno/" >/dev/null
k wait --for=condition=Established --timeout=120s crd --all >/dev/null

# --- certificates: one CA, one serving certificate for 127.0.0.1, used by every webhook -------------------
"$certs_helper" certs --dir "$work/certs"
ca="$work/certs/ca.crt"

# --- ours --------------------------------------------------------------------------------------------
ours_port="$(free_port)"
k create namespace "$run_id-system" >/dev/null
start ours "$webhook_bin" --listen "127.0.0.1:$ours_port" \
  --tls-cert-file "$work/certs/tls.crt" --tls-key-file "$work/certs/tls.key" \
  --namespace "$run_id-system" --log-format json
wait_ready ours 120 https_ok "https://127.0.0.1:$ours_port/readyz"

# --- Gatekeeper: the webhook process (its chart's gatekeeper-controller-manager) ------------------------
# Its namespace and a placeholder Pod: Gatekeeper names its status objects after POD_NAME and reads its Pod
# (never scheduled here: the control plane has no node) for their owner references.
k create namespace gatekeeper-system >/dev/null
for pod in gatekeeper-webhook gatekeeper-audit; do
  k -n gatekeeper-system create -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $pod, labels: {app: gatekeeper-placeholder}}
spec: {containers: [{name: placeholder, image: placeholder.invalid/none}]}
EOF
done
gk_port="$(free_port)"
gk_flags=(--kubeconfig "$KUBECONFIG" --disable-cert-rotation --cert-dir "$work/certs" --log-level INFO
  --operation=generate)
start gatekeeper env POD_NAME=gatekeeper-webhook POD_NAMESPACE=gatekeeper-system \
  "$peers/gatekeeper" "${gk_flags[@]}" --operation=webhook --host 127.0.0.1 --port "$gk_port" \
  --health-addr "127.0.0.1:$(free_port)" --prometheus-port "$(free_port)" --metrics-addr 0
wait_ready gatekeeper 180 https_up "https://127.0.0.1:$gk_port/v1/admit"

# --- Kyverno: the admission controller ---------------------------------------------------------------
kyverno_args=()
if [[ $skip_kyverno != 1 ]]; then
  k create namespace kyverno >/dev/null
  # Its TLS from Secrets made here (--disableCertManagerController): the CA under tls.crt, the pair as a
  # kubernetes.io/tls Secret. Its ConfigMap scopes every webhook it registers to its benchmark namespace.
  k -n kyverno create secret generic kyverno-bench-ca --from-file=tls.crt="$ca" >/dev/null
  k -n kyverno create secret tls kyverno-bench-tls --cert "$work/certs/tls.crt" --key "$work/certs/tls.key" >/dev/null
  k -n kyverno create configmap kyverno \
    --from-literal=webhooks="{\"namespaceSelector\":{\"matchLabels\":{\"csp-bench-engine\":\"kyverno\",\"csp-bench-run\":\"$run_id\"}}}" \
    --from-literal=resourceFilters='[Event,*,*][*/*,kube-system,*][*/*,kube-public,*][*/*,kube-node-lease,*][*/*,kyverno,*]' >/dev/null
  k -n kyverno create configmap kyverno-metrics >/dev/null
  ky_port="$(free_port)"
  # The environment its chart sets (the names of its namespace, ServiceAccount, Deployment, Pod, ConfigMaps).
  start kyverno env KYVERNO_NAMESPACE=kyverno KYVERNO_SERVICEACCOUNT_NAME=kyverno-admission-controller \
    KYVERNO_DEPLOYMENT=kyverno-admission-controller KYVERNO_POD_NAME=kyverno-bench INIT_CONFIG=kyverno \
    METRICS_CONFIG=kyverno-metrics \
    "$peers/kyverno" --kubeconfig "$KUBECONFIG" --serverIP "127.0.0.1:$ky_port" \
    --webhookServerHost 127.0.0.1 --webhookServerPort "$ky_port" \
    --caSecretName kyverno-bench-ca --tlsSecretName kyverno-bench-tls --disableCertManagerController \
    --admissionReports=false --omitEvents=PolicyApplied,PolicySkipped --metricsHost 127.0.0.1 --metricsPort "$(free_port)" \
    --controllerRuntimeMetricsAddress 0
  wait_ready kyverno 180 https_ok "https://127.0.0.1:$ky_port/health/liveness"
  kyverno_args=(--kyverno --pid "kyverno=${pids[kyverno]}")
fi

# --- 1. create Service through the API server --------------------------------------------------------
log "create Service: $rounds rounds one at a time, $bursts bursts of $burst_size with $concurrency in flight, per engine"
"$driver" latency --run-id "$run_id" --ours-url "https://127.0.0.1:$ours_port/validate" \
  --gatekeeper-url "https://127.0.0.1:$gk_port/v1/admit" --ca-file "$ca" \
  --pid "ours=${pids[ours]}" --pid "gatekeeper=${pids[gatekeeper]}" --pid "kube-apiserver=$apiserver_pid" \
  "${kyverno_args[@]}" --rounds "$rounds" --bursts "$bursts" --burst-size "$burst_size" --concurrency "$concurrency" \
  --json-out "$work/latency.json" --md-out "$work/latency.md" >/dev/null
if [[ $skip_kyverno != 1 ]]; then
  k get validatingwebhookconfiguration kyverno-resource-validating-webhook-cfg -o json >"$work/kyverno-vwc.json" 2>/dev/null || true
fi

# --- 2. the audit of many Services ---------------------------------------------------------------------
if [[ $skip_audit != 1 ]]; then
  # Kyverno is not audited (its background scan is a separate controller): stop it to free the cores.
  stop_pid kyverno
  "$driver" populate --run-id "$run_id" --services "$audit_services" --json-out "$work/populate.json"
  # Ours watches every Service in the cluster (metadata only), not just the audited ones: say how many.
  k get services -A --no-headers --chunk-size=5000 -o name | wc -l >"$work/services-in-cluster.txt"
  "$driver" audit --engine ours --run-id "$run_id" --services "$audit_services" --pid "${pids[ours]}" \
    --json-out "$work/audit-ours.json"
  # Gatekeeper's audit as its chart runs it: a process of its own (gatekeeper-audit), with audit, status and
  # generate; its list cache folder exists beforehand (the chart mounts an emptyDir there).
  mkdir -p "$work/gatekeeper-audit-cache"
  start gatekeeper-audit env POD_NAME=gatekeeper-audit POD_NAMESPACE=gatekeeper-system \
    "$peers/gatekeeper" "${gk_flags[@]}" --operation=audit --operation=status \
    --audit-interval 60 --constraint-violations-limit 20 --audit-chunk-size 500 --audit-match-kind-only \
    --api-cache-dir "$work/gatekeeper-audit-cache" --port "$(free_port)" --host 127.0.0.1 \
    --health-addr "127.0.0.1:$(free_port)" --prometheus-port "$(free_port)" --metrics-addr 0
  "$driver" audit --engine gatekeeper --run-id "$run_id" --services "$audit_services" \
    --pid "${pids[gatekeeper-audit]}" --json-out "$work/audit-gatekeeper.json"
  # Gatekeeper's own account of the audit that produced the status (its log's audit_finished line).
  audit_id="$(jq -r .audit_timestamp "$work/audit-gatekeeper.json")"
  grep -F '"audit_finished"' "$work/gatekeeper-audit.log" | grep -F "\"$audit_id\"" | tail -n 1 \
    | jq -r '.duration // empty' >"$work/gatekeeper-audit-duration.txt" || true
fi

# --- summary -----------------------------------------------------------------------------------------
go_version="$(go version | awk '{print $3}')"
{
  echo "# Side by side with Gatekeeper and Kyverno — $stamp"
  echo
  echo "Commit $(git rev-parse --short HEAD)$dirty; $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB;" \
    "load average at the start $load_at_start, at the end $(cut -d' ' -f1-3 /proc/loadavg); kube-apiserver $KUBERNETES_VERSION" \
    "(local, etcd on loopback, no node); $((SECONDS - t_start)) s in all. The machine is shared: other builds may run at the same time."
  echo
  echo "## How each engine ran"
  echo
  echo "Every engine runs as one local process (replicas = 1) on 127.0.0.1 against the same API server, serving TLS"
  echo "with one serving certificate for 127.0.0.1 signed by one CA made for this run (no cert rotation anywhere), each"
  echo "registered for \`services\` CREATE/UPDATE in its own namespace only (namespaceSelector \`csp-bench-engine=<engine>\`)."
  echo
  echo "| engine | version, build | how it ran | differs from its shipped defaults |"
  echo "|---|---|---|---|"
  echo "| ours: webhook + ContractPolicy | this commit, \`cargo build --release\` | \`webhook --listen 127.0.0.1:<port> --tls-cert-file … --tls-key-file … --log-format json\` (audit every 60 s and on every policy change, in-process) | registration: failurePolicy Fail, timeoutSeconds 5 (the chart's); certificates from files instead of the chart's Secret |"
  echo "| ours: generated ValidatingAdmissionPolicy | this commit: a ContractPolicy with \`spec.enforcement: ValidatingAdmissionPolicy\`; the same webhook process generates the VAPs and binding | in kube-apiserver $KUBERNETES_VERSION (CEL), the webhook's registration does not select its namespace (what the webhook's narrowing does when every Service policy is in CEL) | — |"
  echo "| ValidatingAdmissionPolicy (hand-written CEL) | in kube-apiserver $KUBERNETES_VERSION | VAP + binding (validationActions Deny, failurePolicy Fail), the annotation split on ',' and trimmed | — |"
  echo "| Gatekeeper | $GATEKEEPER_VERSION, \`go build\` of its module's root package ($go_version, CGO off) | webhook process: \`--operation=webhook --operation=generate --disable-cert-rotation --cert-dir … --host 127.0.0.1 --port <port> --log-level INFO\`; audit process (only for part 2): \`--operation=audit --operation=status --operation=generate --audit-interval 60 --constraint-violations-limit 20 --audit-chunk-size 500 --audit-match-kind-only\`; POD_NAME set, a placeholder Pod each | registration scoped to services in one namespace (the chart registers \`*\`/\`*\` for all namespaces but the exempt ones); failurePolicy Ignore and timeoutSeconds 3 as in the chart; cert rotation off (certificates given); no mutation webhook (\`--operation=mutation-webhook\` is not given); \`--audit-match-kind-only\` on (off in the chart: it audits every kind); one replica instead of the chart's 3 |"
  if [[ $skip_kyverno != 1 ]]; then
    echo "| Kyverno | $KYVERNO_VERSION, \`go build ./cmd/kyverno\` inside its module ($go_version, CGO off) | admission controller only: \`--serverIP 127.0.0.1:<port> --webhookServerHost 127.0.0.1 --webhookServerPort <port> --caSecretName … --tlsSecretName … --disableCertManagerController --admissionReports=false --omitEvents=PolicyApplied,PolicySkipped\` (the chart's omitEvents; logging as the chart: text, verbosity 2); it writes its own registration (kyverno-resource-validating-webhook-cfg: $(jq -r '[.webhooks[] | "\(.name) failurePolicy \(.failurePolicy) timeoutSeconds \(.timeoutSeconds)"] | join("; ")' "$work/kyverno-vwc.json" 2>/dev/null || echo '?')) | ConfigMap \`kyverno\`: \`webhooks.namespaceSelector\` scoped to its benchmark namespace (the chart excludes kyverno's namespace only) and a shorter resourceFilters; admission reports off (no reports controller runs here); certificates given (cert manager controller off); no background, cleanup or reports controllers; a ClusterPolicy (kyverno.io/v1, which 1.19 marks deprecated in favour of the CEL ValidatingPolicy) with a JMESPath deny rule; one replica instead of the chart's 3 |"
  fi
  echo
  echo "## 1. create Service through the API server"
  echo
  cat "$work/latency.md"
  if [[ $skip_audit != 1 ]]; then
    echo "## 2. Audit of $audit_services existing Services"
    echo
    jq -r '"\(.services) headless Services in \(.namespaces) namespaces (\(.violations) of them without hz), created at \(.concurrency) in flight in \(.seconds | floor) s before the audit policies existed; namespaces that no webhook registration selects."' "$work/populate.json"
    echo
    echo "| engine | time until the complete result is in status (s) | how it is measured | process RSS before → after (MiB) | process peak RSS (MiB, VmHWM) | CPU (s) |"
    echo "|---|---:|---|---:|---:|---:|"
    jq -r '"| ours: webhook audit (ContractPolicy status matched / violations) | \(.seconds_to_status * 10 | round / 10) | \(.how) | \(.rss_before_mib | floor) → \(.rss_after_mib | floor) | \(.vm_hwm_mib | floor) (the whole run; its caches hold the metadata of all '"$(cat "$work/services-in-cluster.txt")"' Services in the cluster) | \(.cpu_s * 100 | round / 100) |"' "$work/audit-ours.json"
    gk_dur="$(cat "$work/gatekeeper-audit-duration.txt" 2>/dev/null || true)"
    jq -r --arg d "${gk_dur:-?}" '"| Gatekeeper audit process (Constraint status totalViolations) | \(.seconds_to_status * 10 | round / 10) (its log: audit \($d)) | \(.how) | \(.rss_before_mib | floor) → \(.rss_after_mib | floor) | \(.vm_hwm_mib | floor) | \(.cpu_s_while_waiting * 100 | round / 100) (from the Constraint'"'"'s creation to the status) |"' "$work/audit-gatekeeper.json"
    echo
    echo "Gatekeeper lists the Services from the API server in chunks of 500 (\`--audit-chunk-size\`) on every audit and"
    echo "keeps at most 20 violations in the Constraint's status (\`--constraint-violations-limit\`; totalViolations counts"
    echo "them all); ours judges the objects in its watch caches (no list per audit) and keeps 20 samples in status."
    echo
  fi
  echo "Raw data: target/bench-peers/$stamp/ (driver JSON, every process's log)."
} >"$summary"
jq -n --arg stamp "$stamp" --arg commit "$(git rev-parse --short HEAD)" \
  --slurpfile latency "$work/latency.json" \
  --argjson populate "$(cat "$work/populate.json" 2>/dev/null || echo null)" \
  --argjson audit_ours "$(cat "$work/audit-ours.json" 2>/dev/null || echo null)" \
  --argjson audit_gatekeeper "$(cat "$work/audit-gatekeeper.json" 2>/dev/null || echo null)" \
  --arg gatekeeper "$GATEKEEPER_VERSION" --arg kyverno "$KYVERNO_VERSION" --arg kubernetes "$KUBERNETES_VERSION" \
  '{stamp: $stamp, commit: $commit, versions: {gatekeeper: $gatekeeper, kyverno: $kyverno, kubernetes: $kubernetes},
    latency: ($latency[0] | del(.engines[].burst_cpu_ticks)), audit: {populate: $populate, ours: $audit_ours, gatekeeper: $audit_gatekeeper}}' \
  >"$summary_json"
echo
cat "$summary"
log "saved to ${summary#"$root"/} and ${summary_json#"$root"/}"
