#!/usr/bin/env bash
# The local cluster's node: containerd 2, the kubelet, kube-proxy, kube-scheduler and CoreDNS, all
# host processes on this machine, with pod traffic on a bridge of its own.
#
#   e2e/node.sh up       start the node against the running control plane (e2e/cluster.sh calls it) and
#                        wait for it to be Ready and for DNS to answer
#   e2e/node.sh down     stop it: pods, runtime, rules, mounts, bridge, and the kernel settings the kubelet
#                        changed, put back
#   e2e/node.sh cleanup  what `down` does, for a node whose processes are gone (a crashed run)
#   e2e/node.sh import NAME...  import e2e/.cache/images/NAME.tar into the node's containerd
#
# The network: bridge ccbr0 with 10.244.0.1/24 is the node's address (the kubelet, the API server's
# advertised address, CoreDNS on port 53); pods get 10.244.0.2-254 from the CNI bridge plugin (Debian's
# containernetworking-plugins, /usr/lib/cni); Services are 10.96.0.0/16, programmed by kube-proxy in
# iptables mode. One node per machine: the bridge and the iptables rules are the machine's.
#
# Needs root, runc, /usr/lib/cni, iptables (Debian packages; .ci/run installs them), and from
# `make tools`: kubelet, kube-proxy, kube-scheduler, containerd, containerd-shim-runc-v2, ctr, coredns,
# and the pause image (e2e/images.sh).
set -euo pipefail

e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$e2e/.bin"
run="${CSP_RUN_DIR:-$e2e/.run}"
node_dir="$run/node"
pki="$run/pki"
logs="$run/logs"
pids="$run/pids"

NODE_NAME="${CSP_NODE_NAME:-csp-node}"
NODE_REGION="${CSP_NODE_REGION:-gz}"
BRIDGE=ccbr0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
# The pause image's name: containerd's pinned sandbox image (e2e/images.sh builds it from the Kubernetes
# module's source and tags it so; nothing is pulled).
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2

LOG_TAG=node
# shellcheck source=lib.sh
source "$e2e/lib.sh"
kubectl() { "$bin/kubectl" --kubeconfig "$run/kubeconfig" "$@"; }

# What the node needs from the machine, checked before anything starts.
preflight() {
  [[ "$(id -u)" == 0 ]] || die "the node needs root (network namespaces, cgroups, mounts)"
  for b in kubelet kube-proxy kube-scheduler containerd containerd-shim-runc-v2 ctr coredns; do
    [[ -x "$bin/$b" ]] || die "$bin/$b is missing: run 'make tools' first"
  done
  command -v runc >/dev/null || die "runc is missing: apt-get install runc"
  command -v iptables >/dev/null || die "iptables is missing: apt-get install iptables"
  for p in bridge host-local loopback; do
    [[ -x /usr/lib/cni/$p ]] || die "/usr/lib/cni/$p is missing: apt-get install containernetworking-plugins"
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    die "bridge $BRIDGE exists: another node runs on this machine (or a crashed one: 'bash e2e/node.sh cleanup')"
  fi
}

# issue NAME SUBJECT: a client certificate signed by the cluster's CA.
issue_client() {
  (
    cd "$pki"
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" >/dev/null 2>&1
    printf 'extendedKeyUsage=clientAuth\n' > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile "$1.ext" \
      -out "$1.crt" >/dev/null 2>&1
    rm -f "$1.csr" "$1.ext"
  )
}

kubeconfig_for() { # file user
  local server; server="https://127.0.0.1:$(cat "$run/apiserver-port")"
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$pki/$2.crt", client-key: "$pki/$2.key"}
contexts:
- name: local
  context: {cluster: local, user: $2}
current-context: local
EOF
}

# The kernel settings the kubelet sets (kernel.panic, panic_on_oops, vm.overcommit_memory) and those
# kube-proxy needs, saved once so that `down` puts the machine back as it was.
SYSCTLS=(kernel/panic kernel/panic_on_oops vm/overcommit_memory net/ipv4/ip_forward
  net/bridge/bridge-nf-call-iptables)
save_sysctls() {
  [[ -f "$node_dir/sysctl.saved" ]] && return
  for s in "${SYSCTLS[@]}"; do
    [[ -f /proc/sys/$s ]] && printf '%s %s\n' "$s" "$(cat /proc/sys/"$s")"
  done > "$node_dir/sysctl.saved"
}
restore_sysctls() {
  [[ -f "$node_dir/sysctl.saved" ]] || return 0
  while read -r s v; do echo "$v" > "/proc/sys/$s" 2>/dev/null || true; done < "$node_dir/sysctl.saved"
  rm -f "$node_dir/sysctl.saved"
}

up() {
  preflight
  # The sandbox image and the gateway's Envoy (built once; imported below).
  bash "$e2e/images.sh" pause
  bash "$e2e/images.sh" envoy
  mkdir -p "$node_dir" "$logs" "$pids"
  save_sysctls
  echo 1 > /proc/sys/net/ipv4/ip_forward
  # Pod-to-Service traffic between pods on one bridge must pass iptables (kube-proxy's NAT).
  if [[ -f /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
    echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
  else
    modprobe br_netfilter 2>/dev/null || die "br_netfilter is not loaded and cannot be (pod-to-Service traffic needs it)"
  fi

  log "bridge $BRIDGE $NODE_IP/24 (the node's address; pods on $POD_CIDR)"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up

  issue_client kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  issue_client kube-proxy "/CN=system:kube-proxy"
  issue_client kube-scheduler "/CN=system:kube-scheduler"
  issue_client coredns "/CN=system:coredns"
  for c in kubelet kube-proxy kube-scheduler coredns; do kubeconfig_for "$node_dir/$c.kubeconfig" "$c"; done

  # containerd: its own root, state and socket; CRI with runc (cgroupfs), CNI from Debian's plugins.
  local ctrd="$node_dir/containerd"
  mkdir -p "$ctrd" "$node_dir/cni/net.d" "$node_dir/cni/ipam"
  cat > "$node_dir/containerd.toml" <<EOF
version = 3
root = "$ctrd/root"
state = "$ctrd/state"
[grpc]
  address = "$ctrd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins.'io.containerd.cri.v1.runtime']
  # Containers here may not lower their oom_score_adj below containerd's own (no CAP_SYS_RESOURCE in
  # sandboxed machines: runc fails "failed to update /proc/self/oom_score_adj" otherwise).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      SystemdCgroup = false
      # runc's container state under the node's directory, not /run/containerd/runc.
      Root = "$ctrd/runc"
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$node_dir/cni/net.d"
EOF
  cat > "$node_dir/cni/net.d/10-csp.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "csp", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$node_dir/cni/ipam"}}]}
EOF
  log "starting containerd $("$bin/containerd" --version | awk '{print $3}')"
  PATH="$bin:$PATH" start containerd "$bin/containerd" --config "$node_dir/containerd.toml"
  wait_for "containerd serving" 60 containerd "$bin/ctr" --address "$ctrd/containerd.sock" version
  import_images

  # The kubelet: the cluster's CA for clients, webhook authentication and authorization against the API
  # server (the real kubelet API), cgroup v1 allowed, evictions at absolute floors (a shared machine's disk
  # is often above the default percentages).
  local healthz; healthz="$(free_port)"
  cat > "$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$ctrd/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
evictionHard: {memory.available: 100Mi, nodefs.available: 1Gi, imagefs.available: 1Gi, nodefs.inodesFree: "1%", imagefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
podLogsDir: $node_dir/pod-logs
serializeImagePulls: false
EOF
  log "starting the kubelet (node $NODE_NAME, region $NODE_REGION)"
  start kubelet "$bin/kubelet" --config "$node_dir/kubelet.yaml" \
    --kubeconfig "$node_dir/kubelet.kubeconfig" --root-dir "$node_dir/kubelet" \
    --cert-dir "$node_dir/kubelet-pki" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" \
    --node-labels "topology.kubernetes.io/region=$NODE_REGION" --v=1
  wait_for "kubelet /healthz" 90 kubelet curl -fsS "http://127.0.0.1:$healthz/healthz"

  # kube-proxy, iptables mode; it must not touch the machine's conntrack table sizes (0 = leave them).
  local kp_health kp_metrics
  kp_health="$(free_port)"; kp_metrics="$(free_port)"
  cat > "$node_dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$node_dir/kube-proxy.kubeconfig"}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$kp_health
metricsBindAddress: 127.0.0.1:$kp_metrics
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
  log "starting kube-proxy (iptables)"
  start kube-proxy "$bin/kube-proxy" --config "$node_dir/kube-proxy.yaml" --v=1

  local sched_port; sched_port="$(free_port)"
  log "starting kube-scheduler"
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$node_dir/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$node_dir/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$node_dir/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false --v=1

  # CoreDNS on the node's address: cluster.local from the API server (the RBAC kubeadm gives it),
  # everything else to the machine's resolvers.
  kubectl apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}]
EOF
  local dns_health dns_ready
  dns_health="$(free_port)"; dns_ready="$(free_port)"
  cat > "$node_dir/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$dns_health
    ready 127.0.0.1:$dns_ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $node_dir/coredns.kubeconfig local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
    loadbalance
}
EOF
  log "starting CoreDNS on $NODE_IP:53"
  start coredns "$bin/coredns" -conf "$node_dir/Corefile"
  wait_for "CoreDNS ready" 60 coredns curl -fsS "http://127.0.0.1:$dns_ready/ready"

  wait_for "node $NODE_NAME Ready" 120 kubelet \
    kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
  wait_for "kube-proxy healthy" 60 kube-proxy curl -fsS "http://127.0.0.1:$kp_health/healthz"
  log "node $NODE_NAME is Ready (pods on $BRIDGE $POD_CIDR, DNS $NODE_IP)"
}

# The image archives e2e/images.sh has built (all of them, or those named), into containerd's k8s.io
# namespace (the kubelet's).
import_images() {
  local t0=$SECONDS n=0 tars=("$@")
  [[ ${#tars[@]} -gt 0 ]] || tars=("$e2e/.cache/images"/*.tar)
  for tar in "${tars[@]}"; do
    # (ctr warns on every call that cgroup v1 is deprecated: shown only when the import fails)
    "$bin/ctr" --address "$node_dir/containerd/containerd.sock" -n k8s.io images import "$tar" \
      > "$node_dir/import.log" 2>&1 || { cat "$node_dir/import.log" >&2; die "importing $tar failed"; }
    n=$((n + 1))
  done
  log "imported $n images into containerd ($((SECONDS - t0))s)"
}

# Every process in the pods' cgroups (cgroup v1: each hierarchy has kubepods/; v2: one tree).
kill_pod_processes() {
  local dirs
  mapfile -t dirs < <(find /sys/fs/cgroup -maxdepth 2 -type d -name kubepods 2>/dev/null)
  [[ ${#dirs[@]} -gt 0 ]] || return 0
  for _ in 1 2 3; do
    local pids_found
    pids_found="$(find "${dirs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)"
    [[ -n "$pids_found" ]] || break
    # shellcheck disable=SC2086
    kill -KILL $pids_found 2>/dev/null || true
    sleep 0.3
  done
  # Remove the (now empty) cgroups, deepest first.
  for d in "${dirs[@]}"; do
    find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

down() {
  local was=0
  for c in coredns kube-scheduler kube-proxy kubelet containerd; do alive "$c" && was=1; done
  [[ $was == 1 || -d "$node_dir" ]] || { log "no node"; return 0; }
  for c in coredns kube-scheduler kubelet; do stop_proc "$c"; done
  # The pods' processes, then their shims and containerd (the shims outlive containerd otherwise).
  kill_pod_processes
  pkill -KILL -f -- "containerd-shim-runc-v2 .*-address $node_dir/containerd/containerd.sock" 2>/dev/null || true
  stop_proc containerd
  stop_proc kube-proxy
  cleanup
}

# What a node leaves on the machine, removed even when its processes are gone: kube-proxy's iptables
# chains, mounts under the node's directory (pod volumes, network namespaces, overlay rootfs), the bridge,
# the pods' cgroups and the kernel settings.
cleanup() {
  kill_pod_processes
  if [[ -x "$bin/kube-proxy" ]]; then
    "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  # The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT), which kube-proxy's
  # cleanup leaves: the jumps to them first, then the chains.
  local table rule chain
  for table in filter nat mangle; do
    local saved; saved="$(iptables-save -t "$table" 2>/dev/null || true)"
    while read -r rule; do
      [[ -n "$rule" ]] && eval "iptables -t $table ${rule/#-A/-D}" 2>/dev/null || true
    done < <(grep -E '^-A [A-Z]+ .*-j KUBE-' <<<"$saved" | grep -vE '^-A KUBE-' || true)
    for op in -F -X; do
      while read -r chain; do
        [[ -n "$chain" ]] && iptables -t "$table" "$op" "$chain" 2>/dev/null || true
      done < <(awk '/^:KUBE-/ {print substr($1, 2)}' <<<"$saved")
    done
  done
  if [[ -d "$node_dir" ]]; then
    local m
    # Deepest first; lazily, so that a mount still in use does not stop the rest.
    while read -r m; do
      [[ -n "$m" ]] && umount -l "$m" 2>/dev/null || true
    done < <(findmnt -rn -o TARGET | grep -F "$node_dir/" | sort -r || true)
  fi
  ip link del "$BRIDGE" 2>/dev/null || true
  restore_sysctls
  log "the node is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  cleanup) cleanup ;;
  # import NAME...: e.g. `import project` after `e2e/images.sh project`.
  import) shift; names=(); for n in "$@"; do names+=("$e2e/.cache/images/$n.tar"); done; import_images "${names[@]}" ;;
  *) echo "usage: $0 up|down|cleanup|import NAME..." >&2; exit 2 ;;
esac
