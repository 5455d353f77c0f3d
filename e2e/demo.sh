#!/usr/bin/env bash
# `make demo`: the main job locally, on nothing but this machine. Prints each step and leaves
# everything running; `make demo-down` stops it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/e2e/.bin"
export KUBECONFIG="$root/e2e/.run/kubeconfig"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
k() { printf '$ kubectl %s\n' "$*"; "$bin/kubectl" "$@"; }

step "1. Tools (built once into e2e/.bin)"
bash "$root/e2e/tools/build.sh"

step "2. A local control plane: etcd, kube-apiserver, kube-controller-manager"
bash "$root/e2e/cluster.sh" up

step "3. The CRDs"
k apply --server-side --force-conflicts -f "$root/crds/manifests/"
k wait --for=condition=Established --timeout=60s crd/channelcontracts.csp.contracts.dev crd/contractpolicies.csp.contracts.dev

step "4. The examples: a production namespace, a ContractPolicy and a ChannelContract"
k apply -f "$root/examples/namespace-payments.yaml"
k apply -f "$root/examples/contractpolicy-national-baseline.yaml"
k apply -f "$root/examples/channelcontract-payment-verify.yaml"

step "5. Both kinds at a glance"
k get csp -A

step "6. The API server refuses nonsense by itself (perTryTimeout above maxLatency)"
printf '$ kubectl create -f - <<< "...perTryTimeout: 500ms, maxLatency: 120ms..."\n'
if "$bin/kubectl" create -n payments -f - <<'YAML'
apiVersion: csp.contracts.dev/v1alpha1
kind: ChannelContract
metadata: {name: too-patient}
spec: {service: payment-verify, port: 8080, sla: {maxLatency: 120ms}, retry: {perTryTimeout: 500ms}}
YAML
then echo "unexpected: accepted"; exit 1; else echo "(refused, as it should be)"; fi

step "Done. Everything keeps running:"
cat <<EOF2
  export KUBECONFIG=$KUBECONFIG
  $bin/kubectl get csp -A
  $bin/kubectl explain channelcontract.spec
  make demo-down      # stops it all
EOF2
