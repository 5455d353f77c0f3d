#!/usr/bin/env bash
# The fleet part of `make demo` (its step 11), on the demo's cluster, which becomes the hub:
#   two member clusters (member-1, member-2: each its own etcd, kube-apiserver and kube-controller-manager, no
#   node), each with the chart installed (its CRDs, RBAC, the fleet-member ServiceAccount and its token Secret)
#   and its webhook as a local process -> each registered at the hub by a kubeconfig Secret holding that
#   token -> the hub (`operator fleet`, a pod of the chart with fleet.hub.enabled) -> a propagated policy:
#   FLEET 2/2 -> a Service that falls short admitted under Audit on member-2: FLEET 1/2, and why.
# `make demo-down` stops the members too.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/e2e/.bin"
demo="$root/e2e/.run/demo"
hub_kubeconfig="$root/e2e/.run/kubeconfig"
ns=csp-system
# Where the hub's pod reaches the members' API servers: the node's address (e2e/cluster.sh, NODE_IP).
node_ip=10.244.0.1
k() { printf '$ kubectl %s\n' "$*"; "$bin/kubectl" "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

members=(member-1 member-2)
for m in "${members[@]}"; do
  CSP_RUN_DIR="$demo/$m" CSP_NODE=0 CSP_APISERVER_BIND=0.0.0.0 bash "$root/e2e/cluster.sh" up > "$demo/$m.cluster.log" 2>&1 &
done
wait
for m in "${members[@]}"; do
  kc="$demo/$m/kubeconfig"
  [[ -f "$kc" ]] || { cat "$demo/$m.cluster.log" >&2; echo "$m did not start" >&2; exit 1; }
  port="$(free_port)"
  echo "$m: https://127.0.0.1:$(cat "$demo/$m/apiserver-port") (kubeconfig $kc); its webhook on 127.0.0.1:$port"
  "$bin/helm" --kubeconfig "$kc" upgrade --install csp "$root/charts/channel-contracts" -n "$ns" --create-namespace \
    -f "$root/charts/channel-contracts/ci/local-values.yaml" --set fleet.member.enabled=true \
    --set "webhook.external.url=https://127.0.0.1:$port/validate" > "$demo/$m.helm.log"
  token="$("$bin/kubectl" --kubeconfig "$kc" create token csp-channel-contracts-webhook -n "$ns" --duration 168h)"
  server="https://127.0.0.1:$(cat "$demo/$m/apiserver-port")"
  ca="$(base64 -w0 < "$demo/$m/pki/ca.crt")"
  (umask 077; printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: m\n  cluster: {server: "%s", certificate-authority-data: "%s"}\nusers:\n- name: webhook\n  user: {token: "%s"}\ncontexts:\n- name: m\n  context: {cluster: m, user: webhook}\ncurrent-context: m\n' \
    "$server" "$ca" "$token" > "$demo/$m/webhook.kubeconfig")
  setsid env KUBECONFIG="$demo/$m/webhook.kubeconfig" CSP_WEBHOOK_AUDIT_LEASE=csp-channel-contracts-webhook-audit \
    POD_NAME="$m-webhook" "$root/target/debug/webhook" --listen "127.0.0.1:$port" --namespace "$ns" \
    --cert-secret csp-channel-contracts-webhook-tls --webhook-config-name csp-channel-contracts \
    --cert-dns-names 127.0.0.1,localhost --audit-interval 5s --log-format text > "$demo/$m/webhook.log" 2>&1 < /dev/null &
  echo $! > "$demo/$m/webhook.pid"
  echo "$port" > "$demo/$m/webhook.port"
  # The hub's credentials: the chart's long-lived token for the fleet-member ServiceAccount (the token
  # controller fills the Secret in), with the member's CA, at an address the hub's pod reaches.
  for _ in $(seq 1 100); do
    member_token="$("$bin/kubectl" --kubeconfig "$kc" get secret csp-channel-contracts-fleet-member-token -n "$ns" -o jsonpath='{.data.token}' 2>/dev/null | base64 -d)"
    [[ -n "$member_token" ]] && break; sleep 0.2
  done
  [[ -n "$member_token" ]] || { echo "$m: the fleet-member token Secret was never filled" >&2; exit 1; }
  printf 'apiVersion: v1\nkind: Config\nclusters:\n- name: %s\n  cluster: {server: "https://%s:%s", certificate-authority-data: "%s"}\nusers:\n- name: hub\n  user: {token: "%s"}\ncontexts:\n- name: %s\n  context: {cluster: %s, user: hub}\ncurrent-context: %s\n' \
    "$m" "$node_ip" "$(cat "$demo/$m/apiserver-port")" "$ca" "$member_token" "$m" "$m" "$m" > "$demo/$m/hub.kubeconfig"
  "$bin/kubectl" --kubeconfig "$hub_kubeconfig" create secret generic "member-$m" -n "$ns" \
    --from-file=kubeconfig="$demo/$m/hub.kubeconfig" --dry-run=client -o yaml \
    | "$bin/kubectl" --kubeconfig "$hub_kubeconfig" label --local -f - "csp.contracts.dev/member-cluster=$m" -o yaml \
    | "$bin/kubectl" --kubeconfig "$hub_kubeconfig" apply -f - >/dev/null
  rm -f "$demo/$m/hub.kubeconfig"
done
for m in "${members[@]}"; do
  for _ in $(seq 1 150); do
    curl -fsSk "https://127.0.0.1:$(cat "$demo/$m/webhook.port")/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
done
k get secrets -n "$ns" -l csp.contracts.dev/member-cluster

echo '$ helm upgrade csp ... --reuse-values --set fleet.hub.enabled=true --set fleet.hub.resyncInterval=5s'
"$bin/helm" --kubeconfig "$hub_kubeconfig" upgrade csp "$root/charts/channel-contracts" -n "$ns" --reuse-values \
  --set fleet.hub.enabled=true --set fleet.hub.resyncInterval=5s --wait --timeout 180s > "$demo/hub.helm.log"
k get pods -n "$ns" -l app.kubernetes.io/component=fleet

k apply -f "$root/examples/contractpolicy-fleet-baseline.yaml"
wait_fleet() { # summary timeout-seconds
  for _ in $(seq 1 $(($2 * 5))); do
    [[ "$("$bin/kubectl" --kubeconfig "$hub_kubeconfig" get cpol fleet-baseline -o jsonpath='{.status.fleet.summary}')" == "$1" ]] && return 0
    sleep 0.2
  done
  echo "the hub never showed FLEET $1:" >&2
  "$bin/kubectl" --kubeconfig "$hub_kubeconfig" get cpol fleet-baseline -o jsonpath='{.status.fleet}' >&2; echo >&2
  "$bin/kubectl" --kubeconfig "$hub_kubeconfig" logs -n "$ns" deploy/csp-channel-contracts-fleet --tail 30 >&2 || true
  return 1
}
wait_fleet 2/2 90
for m in "${members[@]}"; do
  printf '$ kubectl --kubeconfig %s get cpol fleet-baseline   # on %s\n' "$demo/$m/kubeconfig" "$m"
  "$bin/kubectl" --kubeconfig "$demo/$m/kubeconfig" get cpol fleet-baseline
done
k get cpol fleet-baseline

echo "A Service that falls short, admitted on member-2 (the policy audits there):"
m2="$demo/member-2/kubeconfig"
"$bin/kubectl" --kubeconfig "$m2" apply -f "$root/examples/namespace-payments.yaml" >/dev/null
printf '$ kubectl --kubeconfig %s apply -n payments (Service legacy-ledger, no failover regions)\n' "$m2"
printf 'apiVersion: v1\nkind: Service\nmetadata: {name: legacy-ledger, namespace: payments}\nspec:\n  ports: [{port: 80}]\n' \
  | "$bin/kubectl" --kubeconfig "$m2" apply -f -
wait_fleet 1/2 60
k get cpol fleet-baseline
"$bin/kubectl" --kubeconfig "$hub_kubeconfig" get cpol fleet-baseline \
  -o jsonpath='{range .status.fleet.members[*]}{.cluster}: compliant={.compliant} {.message}{"\n"}{end}'
