#!/usr/bin/env bash
# make peers: builds the policy engines that `make bench-peers` compares the webhook with, for benchmarks
# only (never CI, never `make test`), at the versions pinned in e2e/tools/versions.env:
#
#   e2e/.bin/peers/gatekeeper        OPA Gatekeeper (Go module github.com/open-policy-agent/gatekeeper/v3,
#                                    its root package main.go: the controller manager, webhook and audit)
#   e2e/.bin/peers/kyverno           Kyverno's admission controller (Go module github.com/kyverno/kyverno,
#                                    ./cmd/kyverno)
#   e2e/.bin/peers/crds/gatekeeper/  their CRDs, from the same modules (charts/gatekeeper/crds,
#   e2e/.bin/peers/crds/kyverno/     config/crds)
#
# Both are built inside their own module (the module cache's copy, fetched with `go mod download`): each
# go.mod carries the replace directives and pins its authors build with, which a wrapper module requiring
# it as a dependency would lose (Kyverno's replaces make it unusable as a dependency at all). A peer is
# rebuilt only when its version, this script or the Go toolchain changes (a stamp file per peer).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="$(dirname "$here")"
root="$(cd "$tools/../.." && pwd)"
bin="$root/e2e/.bin/peers"
mkdir -p "$bin/crds"
# shellcheck source=../versions.env
source "$tools/versions.env"

log() { printf '[peers %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# A module's directory in the module cache (downloaded when missing).
module_dir() {
  (cd "$here" && GOFLAGS= go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}

# build_peer NAME MODULE VERSION PACKAGE CRD_DIR LDFLAGS
build_peer() {
  local name="$1" module="$2" version="$3" pkg="$4" crd_dir="$5" ldflags="$6"
  local stamp_file="$bin/.stamp-$name"
  local want
  want="$(printf '%s\n' "$module@$version" "$(go version)" | cat - "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
  if [[ -x "$bin/$name" && -d "$bin/crds/$name" && "$(cat "$stamp_file" 2>/dev/null)" == "$want" ]]; then
    log "$name: up to date ($module@$version)"
    return
  fi
  log "$name: downloading $module@$version"
  local dir; dir="$(module_dir "$module" "$version")"
  [[ -f "$dir/go.mod" ]] || { log "$name: no module directory for $module@$version (go mod download failed?)"; exit 1; }
  log "$name: building $pkg in $dir (the first build takes several minutes)"
  local t0=$SECONDS
  # -mod=mod: the module cache's copy has no vendor folder; its go.sum is complete, so nothing is written.
  (cd "$dir" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -ldflags="-s -w $ldflags" \
    -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  rm -rf "$bin/crds/$name"
  mkdir -p "$bin/crds/$name"
  find "$dir/$crd_dir" -name '*.yaml' -exec install -m 0644 {} "$bin/crds/$name/" \;
  log "$name: built in $((SECONDS - t0))s; $(find "$bin/crds/$name" -name '*.yaml' | wc -l) CRD files in ${bin#"$root/"}/crds/$name"
  echo "$want" > "$stamp_file"
}

build_peer gatekeeper github.com/open-policy-agent/gatekeeper/v3 "$GATEKEEPER_VERSION" . charts/gatekeeper/crds \
  "-X github.com/open-policy-agent/gatekeeper/v3/pkg/version.Version=$GATEKEEPER_VERSION"
build_peer kyverno github.com/kyverno/kyverno "$KYVERNO_VERSION" ./cmd/kyverno config/crds \
  "-X github.com/kyverno/kyverno/pkg/version.BuildVersion=$KYVERNO_VERSION"
log "peers in ${bin#"$root/"}: gatekeeper $GATEKEEPER_VERSION, kyverno $KYVERNO_VERSION"
