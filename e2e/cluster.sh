#!/usr/bin/env bash
# The local cluster: a real etcd, kube-apiserver and kube-controller-manager on free loopback ports, with
# generated certificates, service-account keys and RBAC on, and a real node (e2e/node.sh: containerd,
# kubelet, kube-proxy, kube-scheduler, CoreDNS) that runs pods.
#
#   e2e/cluster.sh up      start it (or say that it already runs), wait for /readyz and the node Ready,
#                          write the admin kubeconfig to e2e/.run/kubeconfig
#   e2e/cluster.sh down    stop everything it started
#   e2e/cluster.sh status  say whether it runs
#   e2e/cluster.sh kill NAME     kill -9 one of its processes (etcd, kube-apiserver, ...), nothing else:
#                                its data, pid file and recorded command stay (chaos tests)
#   e2e/cluster.sh restart NAME  start it again with the command it first started with (same flags and
#                                ports), and wait until it is healthy (etcd /health, kube-apiserver /readyz)
#
# CSP_NODE=0: the control plane only (no kubelet; the product then runs as local processes). A control
# plane of its own (CSP_RUN_DIR set, e.g. a benchmark's) has no node unless CSP_NODE=1: there is one node
# per machine.
#
# State lives in e2e/.run/ (pids, logs, certificates, etcd data); the binaries in e2e/.bin/ come
# from `make tools`, the node's images from e2e/images.sh.
set -euo pipefail

e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$e2e/.bin"
run="${CSP_RUN_DIR:-$e2e/.run}"
pki="$run/pki"
logs="$run/logs"
pids="$run/pids"

if [[ -n "${CSP_RUN_DIR:-}" ]]; then node="${CSP_NODE:-0}"; else node="${CSP_NODE:-1}"; fi
# The node's address on its bridge (e2e/node.sh): where pods reach the API server.
NODE_IP=10.244.0.1

LOG_TAG=cluster
# shellcheck source=lib.sh
source "$e2e/lib.sh"

running() {
  local any=0
  for c in etcd kube-apiserver kube-controller-manager; do alive "$c" && any=1; done
  [[ $any == 1 ]]
}

gen_certs() {
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 365 -keyout ca.key -out ca.crt \
      -subj "/CN=channel-contracts-local-ca" >/dev/null 2>&1
    # name CN O [SANs]
    issue() {
      local name="$1" subj="$2" san="${3:-}"
      openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" >/dev/null 2>&1
      local ext="$name.ext"
      if [[ -n "$san" ]]; then
        printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$ext"
      else
        printf 'extendedKeyUsage=clientAuth\n' > "$ext"
      fi
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
        -extfile "$ext" -out "$name.crt" >/dev/null 2>&1
      rm -f "$name.csr" "$ext"
    }
    issue apiserver "/CN=kube-apiserver" \
      "IP:127.0.0.1,IP:10.96.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    issue admin "/O=system:masters/CN=kubernetes-admin"
    issue controller-manager "/CN=system:kube-controller-manager"
    # The API server's client certificate towards kubelets (logs, exec, port-forward).
    issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    openssl genrsa -out sa.key 2048 >/dev/null 2>&1
    openssl rsa -in sa.key -pubout -out sa.pub >/dev/null 2>&1
  )
}

# kubeconfig FILE USER-CERT-NAME
write_kubeconfig() {
  local file="$1" who="$2" server="$3"
  local b64="base64 -w0"
  cat > "$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority-data: $($b64 < "$pki/ca.crt")
users:
- name: $who
  user:
    client-certificate-data: $($b64 < "$pki/$who.crt")
    client-key-data: $($b64 < "$pki/$who.key")
contexts:
- name: local
  context:
    cluster: local
    user: $who
current-context: local
EOF
  mv "$file.tmp" "$file"
}

up() {
  for b in etcd kube-apiserver kube-controller-manager kubectl; do
    [[ -x "$bin/$b" ]] || die "$bin/$b is missing: run 'make tools' first"
  done
  if [[ $node == 1 ]]; then
    for b in kubelet kube-proxy kube-scheduler containerd coredns; do
      [[ -x "$bin/$b" ]] || die "$bin/$b is missing: run 'make tools' first (or CSP_NODE=0 for no node)"
    done
  fi
  if running; then
    log "the local control plane already runs (kubeconfig: $run/kubeconfig); 'make cluster-down' stops it"
    return 0
  fi
  # A crashed node leaves mounts, rules and a bridge behind: remove them before its directory.
  if [[ -d "$run/node" ]]; then CSP_RUN_DIR="$run" bash "$e2e/node.sh" cleanup; fi
  rm -rf "$run"
  mkdir -p "$run" "$logs" "$pids"
  log "generating certificates and service-account keys in $pki"
  gen_certs

  local etcd_port etcd_peer api_port kcm_port
  etcd_port="$(free_port)"; etcd_peer="$(free_port)"; api_port="$(free_port)"; kcm_port="$(free_port)"
  echo "$api_port" > "$run/apiserver-port"

  log "starting etcd on 127.0.0.1:$etcd_port"
  start etcd "$bin/etcd" --name local --data-dir "$run/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer" --log-level warn \
    --quota-backend-bytes 4294967296
  wait_for "etcd healthy" 60 etcd curl -fsS "http://127.0.0.1:$etcd_port/health"

  # With a node: pods reach the API server through the Service kubernetes (10.96.0.1:443), whose endpoint
  # is the node's address (the lease reconciler publishes it); the Node authorizer and NodeRestriction
  # hold the kubelet to its own node.
  # CSP_APISERVER_BIND=0.0.0.0 (no node): reachable from the pods of another local cluster's node too, at the
  # node's address (its certificate names it), e.g. a fleet hub's pod reaching a member (make demo).
  local node_flags=(--bind-address "${CSP_APISERVER_BIND:-127.0.0.1}" --advertise-address 127.0.0.1
    --endpoint-reconciler-type none --authorization-mode RBAC)
  if [[ $node == 1 ]]; then
    node_flags=(--bind-address 0.0.0.0 --advertise-address "$NODE_IP" --endpoint-reconciler-type lease
      --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
      --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt"
      --kubelet-client-key "$pki/apiserver-kubelet-client.key" --kubelet-preferred-address-types InternalIP)
  fi
  log "starting kube-apiserver on https://127.0.0.1:$api_port"
  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --secure-port "$api_port" "${node_flags[@]}" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true --profiling="${CSP_APISERVER_PROFILING:-false}" \
    --cert-dir "$run/apiserver-certs" --v=1
  write_kubeconfig "$run/kubeconfig" admin "https://127.0.0.1:$api_port"
  wait_for "kube-apiserver /readyz" 180 kube-apiserver \
    curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$api_port/readyz"

  # CSP_CONTROLLER_MANAGER=0 (no node): without kube-controller-manager (no garbage collection, namespace
  # deletion or token Secrets), for many small control planes (make bench-fleet).
  if [[ $node == 1 || "${CSP_CONTROLLER_MANAGER:-1}" == 1 ]]; then
    write_kubeconfig "$run/controller-manager.kubeconfig" controller-manager "https://127.0.0.1:$api_port"
    log "starting kube-controller-manager (garbage collection, namespace deletion, service accounts)"
    start kube-controller-manager "$bin/kube-controller-manager" \
      --kubeconfig "$run/controller-manager.kubeconfig" \
      --authentication-kubeconfig "$run/controller-manager.kubeconfig" \
      --authorization-kubeconfig "$run/controller-manager.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port "$kcm_port" --cert-dir "$run/kcm-certs" \
      --use-service-account-credentials=true \
      --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
      --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
      --leader-elect=false --controllers '*' --v=1
    wait_for "kube-controller-manager /healthz" 120 kube-controller-manager \
      curl -fsSk "https://127.0.0.1:$kcm_port/healthz"
    # The default ServiceAccount appearing proves the controllers act on the cluster.
    wait_for "controllers acting (default ServiceAccount created)" 120 kube-controller-manager \
      "$bin/kubectl" --kubeconfig "$run/kubeconfig" get serviceaccount default -n default
  fi

  if [[ $node == 1 ]]; then
    echo 1 > "$run/node-enabled"
    CSP_RUN_DIR="$run" bash "$e2e/node.sh" up
  fi
  log "the local cluster is up: export KUBECONFIG=$run/kubeconfig"
}

down() {
  if [[ ! -d "$pids" ]]; then log "nothing runs"; return 0; fi
  if [[ -d "$run/node" ]]; then CSP_RUN_DIR="$run" bash "$e2e/node.sh" down; fi
  for c in kube-controller-manager kube-apiserver etcd; do stop_proc "$c"; done
  log "the local control plane is down"
}

status() {
  if running; then
    log "running: https://127.0.0.1:$(cat "$run/apiserver-port") (kubeconfig: $run/kubeconfig)"
    if [[ -f "$run/node-enabled" ]]; then
      for c in containerd kubelet kube-proxy kube-scheduler coredns; do
        alive "$c" || { log "the node's $c is not running (log: $logs/$c.log)"; return 1; }
      done
      log "node: running (containerd, kubelet, kube-proxy, kube-scheduler, CoreDNS)"
    fi
  else
    log "not running"; return 1
  fi
}

# flag_of NAME FLAG: the value of FLAG in NAME's recorded command.
flag_of() {
  sed -n "s/.*$2 \([^ ]*\).*/\1/p" "$run/cmd/$1"
}

restart() {
  local name="$1"
  restart_proc "$name"
  case "$name" in
    etcd)
      wait_for "etcd healthy" 60 etcd curl -fsS "$(flag_of etcd --listen-client-urls)/health" ;;
    kube-apiserver)
      wait_for "kube-apiserver /readyz" 180 kube-apiserver \
        curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "https://127.0.0.1:$(cat "$run/apiserver-port")/readyz" ;;
    kube-controller-manager)
      wait_for "kube-controller-manager /healthz" 120 kube-controller-manager \
        curl -fsSk "https://127.0.0.1:$(flag_of kube-controller-manager --secure-port)/healthz" ;;
    *)
      wait_for "$name to run" 10 "$name" true ;;
  esac
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  kill) [[ -n "${2:-}" ]] || die "usage: $0 kill NAME"; kill_proc "$2" ;;
  restart) [[ -n "${2:-}" ]] || die "usage: $0 restart NAME"; restart "$2" ;;
  *) echo "usage: $0 up|down|status|kill NAME|restart NAME" >&2; exit 2 ;;
esac
