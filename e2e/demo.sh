#!/usr/bin/env bash
# `make demo`: the main job in one command, on nothing but this machine, installed the way users install it.
# Prints each step and leaves everything running; `make demo-down` stops it.
#
#   tools -> a local cluster with a real node -> the product's image (the repository's Dockerfile) -> helm
#   install with the chart's defaults and the gateway fleet -> helm test -> a ContractPolicy, a contract and
#   its backend pods -> a non-compliant Service rejected -> a client pod's requests through the gateway's
#   Envoys (fed over xDS) -> a ContractDrill: a fault pushed to the Envoys fails the primary channel, the
#   switchover is measured from their own logs against the contract's promise -> the primary channel fails
#   for real, the fallback channel serves -> a small fleet (e2e/demo-fleet.sh): this cluster as the hub, two
#   member control planes get its baseline, FLEET 2/2, then 1/2 after a violation on one -> `kubectl contracts
#   status` (the kubectl plugin) over all of it.
#
# CSP_DEMO_MODE=process: the operator and webhook as local processes instead (e2e/demo-process.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${CSP_DEMO_MODE:-cluster}" == process ]]; then exec bash "$root/e2e/demo-process.sh"; fi
bin="$root/e2e/.bin"
demo="$root/e2e/.run/demo"
export KUBECONFIG="$root/e2e/.run/kubeconfig"
ns=csp-system
gateway="http://csp-channel-contracts-gateway.$ns.svc.cluster.local:8080/"
t0=$SECONDS
step() { printf '\n\033[1m==> [%ss] %s\033[0m\n' "$((SECONDS - t0))" "$*"; }
k() { printf '$ kubectl %s\n' "$*"; "$bin/kubectl" "$@"; }
h() { printf '$ helm %s\n' "$*"; "$bin/helm" --kubeconfig "$KUBECONFIG" "$@"; }

if [[ -f "$demo/installed" ]] && "$bin/helm" --kubeconfig "$KUBECONFIG" status csp -n "$ns" >/dev/null 2>&1; then
  echo "The demo already runs ('make demo-down' stops it)."; exit 0
fi

step "1. Tools: the control plane, the node (containerd, kubelet, kube-proxy, scheduler, CoreDNS), helm, envoy"
bash "$root/e2e/tools/build.sh"
bash "$root/e2e/images.sh" pause
bash "$root/e2e/images.sh" envoy

step "2. A local cluster: etcd, kube-apiserver, kube-controller-manager and a node that runs pods"
CSP_NODE=1 bash "$root/e2e/cluster.sh" up
rm -rf "$demo"; mkdir -p "$demo"
k get nodes -o wide

step "3. The product's image from the repository's Dockerfile (buildah, no daemon), imported into the node"
bash "$root/e2e/images.sh" project
bash "$root/e2e/images.sh" testbins
bash "$root/e2e/node.sh" import project testbins

step "4. helm install with the chart's defaults (the image built here) and the gateway fleet"
envoy_tag="v$(sed -n 's/^ENVOY_SERVER_VERSION=//p' "$root/e2e/tools/versions.env")"
"$bin/kubectl" apply -f "$root/examples/namespace-payments.yaml" >/dev/null
h upgrade --install csp "$root/charts/channel-contracts" -n "$ns" --create-namespace --wait --timeout 300s \
  --set image.repository=localhost/channel-contracts --set image.tag=dev --set image.pullPolicy=Never \
  --set proxy.enabled=true --set proxy.image.repository=localhost/envoy --set "proxy.image.tag=$envoy_tag" \
  --set proxy.image.pullPolicy=Never | sed -n '1,/^NOTES/p'
touch "$demo/installed"
k get pods -n "$ns" -o wide
k get lease csp-channel-contracts-operator -n "$ns"
k get validatingwebhookconfiguration csp-channel-contracts

step "5. helm test: the chart's own check (a throwaway namespace: a denial, a programmed contract)"
h test csp -n "$ns" --timeout 180s | grep -E '^(TEST SUITE|Phase)' | awk '!seen[$0]++'   # (once per hook: see the README)
k logs -n "$ns" csp-channel-contracts-check

step "6. The federation's baseline (ContractPolicy), the payments contract, its Services and backend pods"
k apply -f "$root/examples/contractpolicy-national-baseline.yaml"
k apply -f "$root/examples/channelcontract-payment-verify.yaml"
for svc in payment-verify verify-cache verify-static; do
  # payment-verify is governed by the contract; the fallback Services declare their regions themselves.
  cat <<YAML | "$bin/kubectl" apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: $svc, namespace: payments}
spec:
  replicas: 2
  selector: {matchLabels: {app: $svc}}
  template:
    metadata: {labels: {app: $svc}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: backend
        image: localhost/csp-e2e:dev
        imagePullPolicy: Never
        command: [/usr/local/bin/backend, --listen, "0.0.0.0:9080", --name, "\$(POD_NAME)", --mode-file, /tmp/mode, --count-file, /tmp/count]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{containerPort: 9080}]
        readinessProbe: {tcpSocket: {port: 9080}, periodSeconds: 1}
        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata:
  name: $svc
  namespace: payments
$([[ $svc != payment-verify ]] && echo '  annotations: {csp.contracts.dev/failover-regions: "gz,sz,hz"}')
spec:
  selector: {app: $svc}
  ports: [{name: http, port: 8080, targetPort: 9080}]
YAML
  echo "deployment/$svc and service/$svc created"
done
for svc in payment-verify verify-cache verify-static; do
  "$bin/kubectl" rollout status "deployment/$svc" -n payments --timeout=120s
done
for _ in $(seq 1 300); do
  [[ "$("$bin/kubectl" get chc payment-verify -n payments -o jsonpath='{.status.proxies.summary}')" == "3/3 acked" ]] && break
  sleep 0.2
done
k get chc payment-verify -n payments

step "7. A Service that falls short of the baseline is rejected, with what to fix"
printf '$ kubectl create -n payments -f - (Service ledger, annotation csp.contracts.dev/failover-regions: gz,sz)\n'
rejected=0
for _ in $(seq 1 50); do
  out="$(printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: ledger\n  namespace: payments\n  annotations: {csp.contracts.dev/failover-regions: "gz,sz"}\nspec:\n  ports: [{port: 8080}]\n' \
    | "$bin/kubectl" create -f - 2>&1)" && { "$bin/kubectl" delete service ledger -n payments >/dev/null; sleep 0.2; continue; }
  echo "$out"; rejected=1; break
done
[[ $rejected == 1 ]] || { echo "expected a rejection" >&2; exit 1; }

# probe NAME: a client pod's 20 requests through the gateway; prints which backend pods answered.
probe() {
  local name="$1"
  cat <<YAML | "$bin/kubectl" apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: payments}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: probe
    image: localhost/csp-e2e:dev
    imagePullPolicy: Never
    command: [/usr/local/bin/http-probe, --url, "$gateway", --host, "payment-verify.payments:8080", --count, "20"]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
YAML
  for _ in $(seq 1 300); do
    phase="$("$bin/kubectl" get pod "$name" -n payments -o jsonpath='{.status.phase}')"
    [[ $phase == Succeeded || $phase == Failed ]] && break
    sleep 0.2
  done
  printf '$ kubectl logs -n payments %s | tail -n 1\n' "$name"
  "$bin/kubectl" logs "$name" -n payments | tail -n 1
}

step "8. Traffic: a client pod -> the gateway Service -> Envoy (configured over xDS) -> the primary's pods"
probe client-1

step "9. A ContractDrill: the Envoys are told the primary channel fails (a fault over xDS); does traffic move within the promise?"
cat <<YAML | "$bin/kubectl" apply -f - >/dev/null
apiVersion: csp.contracts.dev/v1alpha1
kind: ContractDrill
metadata: {name: primary-outage, namespace: payments}
spec:
  contract: payment-verify
  fault: {channel: primary, abort: {httpStatus: 503, percent: 100}}
  duration: 15s
  expect: {failoverWithin: 1800ms}
YAML
echo "contractdrill.csp.contracts.dev/primary-outage created (fault: channel primary, 503; promise: 1800ms)"
for _ in $(seq 1 150); do
  [[ "$("$bin/kubectl" get drill primary-outage -n payments -o jsonpath='{.status.phase}')" == Running ]] && break
  sleep 0.2
done
probe client-drill
for _ in $(seq 1 300); do
  phase="$("$bin/kubectl" get drill primary-outage -n payments -o jsonpath='{.status.phase}')"
  [[ $phase == Passed || $phase == Failed || $phase == Aborted ]] && break
  sleep 0.2
done
k get drill primary-outage -n payments
switchover="$("$bin/kubectl" get drill primary-outage -n payments -o jsonpath='{.status.switchover}')"
verdict="$("$bin/kubectl" get drill primary-outage -n payments -o jsonpath='{.status.conditions[?(@.type=="Succeeded")].message}')"
printf 'switchover %s against the promise of 1800ms: %s (%s)\n' "${switchover:-none}" "${phase:-unknown}" "$verdict"
[[ $phase == Passed ]] || { echo "expected the drill to pass" >&2; exit 1; }

step "10. The primary channel fails for real (its pods gone): the fallback channel's pods serve, nothing fails"
k scale deployment payment-verify -n payments --replicas=0
"$bin/kubectl" wait --for=delete pod -l app=payment-verify -n payments --timeout=60s >/dev/null 2>&1 || true
probe client-2
k get chc payment-verify -n payments

step "11. A small fleet: this cluster is the hub, two member clusters get its baseline; FLEET 2/2, then 1/2 after a violation"
bash "$root/e2e/demo-fleet.sh"

step "12. kubectl contracts status: the contracts with their proxies, the policies with their compliance, the fleet"
(cd "$root" && cargo build -q --locked --bin kubectl-contracts)
plugins="${CARGO_TARGET_DIR:-$root/target}/debug"
printf '$ kubectl contracts status\n'
PATH="$plugins:$bin:$PATH" "$bin/kubectl" contracts status

step "Done in $((SECONDS - t0))s. Everything keeps running:"
cat <<TXT
  export KUBECONFIG=$KUBECONFIG
  $bin/kubectl get pods -A -o wide                # the product's pods, the gateway, the backends
  $bin/kubectl get csp -A                         # contracts and policies at a glance
  PATH=$plugins:\$PATH kubectl contracts status     # the same with proxies, drills and the fleet (the kubectl plugin)
  $bin/kubectl get cpol fleet-baseline            # the fleet's roll-up (FLEET); members: $demo/member-*/kubeconfig
  $bin/kubectl describe chc payment-verify -n payments
  $bin/kubectl logs -n $ns deploy/csp-channel-contracts-operator
  $bin/helm --kubeconfig \$KUBECONFIG test csp -n $ns; $bin/kubectl logs -n $ns csp-channel-contracts-check
  make demo-down                                  # stops it all
TXT
