#!/usr/bin/env bash
# `make demo CSP_DEMO_MODE=process`: the main job with the operator and webhook as local processes (no
# images, no pods; the fast option, and the one that shows three regions). Prints each step and leaves
# everything running; `make demo-down` stops it. `make demo` (e2e/demo.sh) installs the chart for real.
#
#   tools -> control plane -> chart installed -> operator and webhook running -> a ContractPolicy and
#   contracts -> a non-compliant Service rejected -> the generated Envoy configuration -> a real Envoy
#   serving a request -> the fallback channel serving when the primary fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/e2e/.bin"
demo="$root/e2e/.run/demo"
export KUBECONFIG="$root/e2e/.run/kubeconfig"
t0=$SECONDS
step() { printf '\n\033[1m==> [%ss] %s\033[0m\n' "$((SECONDS - t0))" "$*"; }
k() { printf '$ kubectl %s\n' "$*"; "$bin/kubectl" "$@"; }
h() { printf '$ helm %s\n' "$*"; "$bin/helm" --kubeconfig "$KUBECONFIG" "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { # what url timeout [curl args]
  local what="$1" url="$2" timeout="$3"; shift 3
  for _ in $(seq 1 $((timeout * 5))); do curl -fsS "$@" "$url" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $what ($url)" >&2; return 1
}
# A kubeconfig that authenticates as ServiceAccount $1 of csp-system with a token from the TokenRequest API
# (valid 7 days), for the admin kubeconfig's API server and CA: the processes run with exactly the chart's RBAC.
sa_kubeconfig() { # service-account file
  local token server ca
  token="$("$bin/kubectl" create token "$1" -n csp-system --duration 168h)"
  server="$("$bin/kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
  ca="$("$bin/kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
  (umask 077; printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {server: "%s", certificate-authority-data: "%s"}\nusers:\n- name: %s\n  user: {token: "%s"}\ncontexts:\n- name: local\n  context: {cluster: local, user: %s, namespace: csp-system}\ncurrent-context: local\n' \
    "$server" "$ca" "$1" "$token" "$1" > "$2")
}
start_bg() { # name command...
  local name="$1"; shift
  setsid "$@" > "$demo/$name.log" 2>&1 < /dev/null &
  echo $! > "$demo/$name.pid"
}

if [[ -f "$demo/webhook.pid" ]] && kill -0 "$(cat "$demo/webhook.pid")" 2>/dev/null; then
  echo "The demo already runs ('make demo-down' stops it)."; exit 0
fi

step "1. Tools: etcd, kube-apiserver, kube-controller-manager, kubectl, helm, envoy (built once into e2e/.bin)"
bash "$root/e2e/tools/build.sh"

step "2. A local control plane: etcd, kube-apiserver, kube-controller-manager (RBAC on)"
bash "$root/e2e/cluster.sh" up
rm -rf "$demo"; mkdir -p "$demo"

step "3. The operator and webhook binaries"
# The progress lines are filtered out; a failed build stops the demo (pipefail: cargo's status, not grep's,
# and a stale binary from an earlier build is never used).
(cd "$root" && cargo build --locked --bins 2>&1 | { grep -vE '^\s+(Compiling|Checking)' || true; }) \
  || { echo "cargo build --bins failed (output above)" >&2; exit 1; }

webhook_port="$(free_port)"; operator_port="$(free_port)"; xds_port="$(free_port)"
step "4. helm install the chart (the operator and webhook run here as local processes: no kubelet)"
# The gateway's Pods live in payments: the chart lets the operator read Pods there (their Node's region).
"$bin/kubectl" apply -f "$root/examples/namespace-payments.yaml" >/dev/null
h upgrade --install csp "$root/charts/channel-contracts" -n csp-system --create-namespace \
  -f "$root/charts/channel-contracts/ci/local-values.yaml" \
  --set "webhook.external.url=https://127.0.0.1:$webhook_port/validate" \
  --set "operator.xds.proxyPodNamespaces={payments}"

step "5. The webhook (self-managed certificate: CA in a Secret, caBundle injected) and the operator, each as its ServiceAccount"
sa_kubeconfig csp-channel-contracts-webhook "$demo/webhook.kubeconfig"
sa_kubeconfig csp-channel-contracts-operator "$demo/operator.kubeconfig"
start_bg webhook env KUBECONFIG="$demo/webhook.kubeconfig" CSP_WEBHOOK_AUDIT_LEASE=csp-channel-contracts-webhook-audit \
  POD_NAME=demo-webhook "$root/target/debug/webhook" --listen "127.0.0.1:$webhook_port" --namespace csp-system \
  --cert-secret csp-channel-contracts-webhook-tls --webhook-config-name csp-channel-contracts \
  --cert-dns-names 127.0.0.1,localhost --audit-interval 10s --log-format text
"$root/target/debug/demo_traffic" certs --dir "$demo/xds" >/dev/null
start_bg operator env KUBECONFIG="$demo/operator.kubeconfig" "$root/target/debug/operator" run --admin-listen "127.0.0.1:$operator_port" \
  --proxy-config-dir "$demo/envoy-config" --leader-elect --leader-election-namespace csp-system \
  --leader-election-lease csp-channel-contracts-operator --log-format text \
  --publish xds,configmap --xds-listen "0.0.0.0:$xds_port" --xds-tls-cert "$demo/xds/tls.crt" --xds-tls-key "$demo/xds/tls.key"
wait_http "the webhook's /readyz" "https://127.0.0.1:$webhook_port/readyz" 60 -k
wait_http "the operator's /readyz" "http://127.0.0.1:$operator_port/readyz" 60
echo "webhook https://127.0.0.1:$webhook_port (log $demo/webhook.log), operator admin http://127.0.0.1:$operator_port and xDS (TLS) on port $xds_port (log $demo/operator.log)"
for _ in $(seq 1 100); do
  [[ -n "$("$bin/kubectl" get validatingwebhookconfiguration csp-channel-contracts -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]] && break
  sleep 0.2
done
k get validatingwebhookconfiguration csp-channel-contracts

step "6. The federation's baseline (ContractPolicy), a production namespace, and the payments contract"
k apply -f "$root/examples/namespace-payments.yaml"
k apply -f "$root/examples/contractpolicy-national-baseline.yaml"
k apply -f "$root/examples/channelcontract-payment-verify.yaml"
for svc in payment-verify verify-cache verify-static; do
  # payment-verify is governed by the contract; the fallback Services declare their regions themselves.
  annotation=""
  [[ $svc != payment-verify ]] && annotation="  annotations: {csp.contracts.dev/failover-regions: \"gz,sz,hz\"}"
  printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: payments\n%s\nspec:\n  ports: [{name: http, port: 8080, targetPort: 9080}]\n' "$svc" "$annotation" \
    | "$bin/kubectl" apply -f - >/dev/null
  echo "service/$svc created"
done

step "7. A Service that falls short of the baseline is rejected, with what to fix"
printf '$ kubectl create -n payments service clusterip ledger --tcp=8080 (annotation: gz,sz)\n'
rejected=0
for _ in $(seq 1 50); do
  out="$(printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: ledger\n  namespace: payments\n  annotations: {csp.contracts.dev/failover-regions: "gz,sz"}\nspec:\n  ports: [{port: 8080}]\n' \
    | "$bin/kubectl" create -f - 2>&1)" && { "$bin/kubectl" delete service ledger -n payments >/dev/null; sleep 0.2; continue; }
  echo "$out"; rejected=1; break
done
[[ $rejected == 1 ]] || { echo "expected a rejection" >&2; exit 1; }

step "8. Traffic: pods, three regional Envoys fed over xDS by the operator, each region first, and a failing primary"
start_bg traffic "$root/target/debug/demo_traffic" run --namespace payments --contract payment-verify \
  --xds-port "$xds_port" --xds-ca "$demo/xds/ca.crt"
tail -n +1 -f "$demo/traffic.log" --pid "$(cat "$demo/traffic.pid")" &
tail_pid=$!
for _ in $(seq 1 900); do
  grep -q "DONE" "$demo/traffic.log" 2>/dev/null && break
  kill -0 "$(cat "$demo/traffic.pid")" 2>/dev/null || { echo "the traffic demo stopped; see $demo/traffic.log" >&2; kill $tail_pid; exit 1; }
  sleep 0.2
done
sleep 0.5; kill $tail_pid 2>/dev/null || true

step "9. The same configuration as a ConfigMap (payment-verify-envoy, filesystem xDS) for proxies without xDS"
k get configmap payment-verify-envoy -n payments -o jsonpath='{.data.cds\.yaml}' | head -n 60
echo "... ($("$bin/kubectl" get configmap payment-verify-envoy -n payments -o jsonpath='{.data}' | wc -c) bytes in cds.yaml, lds.yaml, rds.yaml)"
k get csp -A

step "Done in $((SECONDS - t0))s. Everything keeps running:"
cat <<EOF
  export KUBECONFIG=$KUBECONFIG
  $bin/kubectl get csp -A                       # contracts and policies at a glance
  $bin/kubectl describe chc payment-verify -n payments
  $bin/kubectl get cpol national-baseline -o yaml   # the audit's findings
  target/debug/operator render -f examples/channelcontract-payment-verify.yaml   # the same, offline
  curl -s http://127.0.0.1:$operator_port/metrics | grep -E 'csp_(xds|operator)'
  target/debug/operator bootstrap --xds-address 127.0.0.1:$xds_port --ca $demo/xds/ca.crt --server-name csp-xds.e2e.test   # a proxy's bootstrap
  logs: $demo/{webhook,operator,traffic}.log
  make demo-down                                # stops it all
EOF
