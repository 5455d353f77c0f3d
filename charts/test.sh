#!/usr/bin/env bash
# The chart's checks (`make chart-test`):
#   1. helm lint --strict, with the default values and with every values file in ci/
#   2. values.schema.json refuses wrong values (unknown keys, bad enums) and the templates refuse bad
#      combinations
#   3. golden tests: `helm template` with the default values, ci/non-default-values.yaml and
#      ci/local-values.yaml equals tests/golden/*.yaml (UPDATE_GOLDEN=1 rewrites the goldens)
#   4. the chart's crds/ are byte-identical to crds/manifests/, and appVersion is the workspace version
#   5. with --server: the rendered objects pass `kubectl apply --dry-run=server` on the local control plane
#      (start it first: `make cluster-up`; nothing is created)
#
# Usage: bash charts/test.sh [--server] [--kubeconfig PATH]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/channel-contracts"
GOLDEN="$CHART/tests/golden"
HELM="$ROOT/e2e/.bin/helm"
KUBECTL="$ROOT/e2e/.bin/kubectl"
KUBECONFIG_PATH="$ROOT/e2e/.run/kubeconfig"
SERVER=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --server) SERVER=1 ;;
    --kubeconfig) KUBECONFIG_PATH="$2"; shift ;;
    --kubeconfig=*) KUBECONFIG_PATH="${1#*=}" ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "charts/test.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[chart-test %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
FAILED=()
pass() { say "ok   $1"; }
fail() { say "FAIL $1"; FAILED+=("$1"); }

for tool in "$HELM" "$KUBECTL"; do
  [[ -x "$tool" ]] || { echo "charts/test.sh: $tool is missing: run \`make tools\` first" >&2; exit 2; }
done

# The chart asks for Kubernetes >= 1.30 (kubeVersion); this helm is built without a default Kubernetes
# version, so render for the pinned release.
# shellcheck source=/dev/null
source "$ROOT/e2e/tools/versions.env"
KUBE_VERSION="${KUBERNETES_VERSION:?e2e/tools/versions.env sets no KUBERNETES_VERSION}"

RELEASE=csp
NAMESPACE=csp-system
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

render() { # render <out> [helm args...]: helm template of the chart as release csp in csp-system
  local out="$1"; shift
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" "$@" >"$out" 2>"$out.err"
}

# 1. helm lint --strict
lint() { # lint <name> [helm args...]
  local name="$1"; shift
  if "$HELM" lint --strict --kube-version "$KUBE_VERSION" --namespace "$NAMESPACE" "$CHART" "$@" >"$TMP/lint.out" 2>&1; then
    pass "helm lint --strict ($name)"
  else
    cat "$TMP/lint.out"; fail "helm lint --strict ($name)"
  fi
}
lint "default values"
for values in "$CHART"/ci/*-values.yaml; do
  lint "${values#"$ROOT/"}" -f "$values"
done

# 2. what the schema and the templates refuse
refuses() { # refuses <what it says> <helm args...>
  local expect="$1"; shift
  if render "$TMP/refused.yaml" "$@"; then
    fail "refuses $* (it rendered)"
  elif ! grep -qF -- "$expect" "$TMP/refused.yaml.err"; then
    cat "$TMP/refused.yaml.err"; fail "refuses $* (but without \"$expect\")"
  else
    pass "refuses $*"
  fi
}
refuses "additional properties 'replica' not allowed" --set operator.replica=3
refuses "value must be one of 'Fail', 'Ignore'" --set webhook.failurePolicy=Sometimes
refuses "value must be one of 'selfManaged', 'certManager'" --set webhook.certificate.mode=vault
refuses "maximum: got 31, want 30" --set webhook.timeoutSeconds=31
refuses "does not match pattern" --set webhook.external.url=http://127.0.0.1:9443/validate
refuses "needs operator.leaderElection.enabled=true" --set operator.leaderElection.enabled=false
refuses "use webhook.certificate.mode=selfManaged" \
  --set webhook.external.url=https://127.0.0.1:9443/validate --set webhook.certificate.mode=certManager

# 3. golden tests
golden() { # golden <name> [helm args...]
  local name="$1"; shift
  local want="$GOLDEN/$name.yaml" got="$TMP/$name.yaml"
  if ! render "$got" "$@"; then
    cat "$got.err"; fail "golden $name (helm template failed)"; return
  fi
  if [[ "${UPDATE_GOLDEN:-}" == 1 ]]; then
    mkdir -p "$GOLDEN"; cp "$got" "$want"; pass "golden $name (rewritten: ${want#"$ROOT/"})"
  elif [[ ! -f "$want" ]]; then
    fail "golden $name (${want#"$ROOT/"} is missing: UPDATE_GOLDEN=1 bash charts/test.sh writes it)"
  elif diff -u --label "${want#"$ROOT/"} (committed)" --label "helm template (now)" "$want" "$got"; then
    pass "golden $name"
  else
    fail "golden $name (the diff above; if the change is intended: UPDATE_GOLDEN=1 bash charts/test.sh)"
  fi
}
golden default
golden non-default -f "$CHART/ci/non-default-values.yaml"
golden local -f "$CHART/ci/local-values.yaml"

# 4. the chart's CRDs are crds/manifests, byte for byte; appVersion is the workspace version
crds_same=1
for f in "$ROOT"/crds/manifests/*.yaml; do
  if ! cmp -s "$f" "$CHART/crds/$(basename "$f")"; then
    crds_same=0; say "     charts/channel-contracts/crds/$(basename "$f") differs from crds/manifests/$(basename "$f")"
  fi
done
for f in "$CHART"/crds/*; do
  [[ -f "$ROOT/crds/manifests/$(basename "$f")" ]] || { crds_same=0; say "     charts/channel-contracts/crds/$(basename "$f") is not in crds/manifests/"; }
done
if [[ $crds_same == 1 ]]; then
  pass "chart crds/ == crds/manifests/"
else
  fail "chart crds/ == crds/manifests/ (copy them: cp crds/manifests/*.yaml charts/channel-contracts/crds/)"
fi
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")"
workspace_version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")"
if [[ -n "$app_version" && "$app_version" == "$workspace_version" ]]; then
  pass "appVersion $app_version == workspace version"
else
  fail "appVersion \"$app_version\" != workspace version \"$workspace_version\" (Cargo.toml [workspace.package])"
fi

# 5. the API server accepts what the chart renders (server-side dry run: validation and admission, nothing
# stored). Rendered into the namespace `default`, which always exists, so that no namespace is created.
# cert-manager and Prometheus Operator kinds are left out: their CRDs are not on the local control plane.
if [[ $SERVER == 1 ]]; then
  if [[ ! -f "$KUBECONFIG_PATH" ]] || ! "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get --raw /readyz >/dev/null 2>&1; then
    fail "kubectl apply --dry-run=server (no API server answers with $KUBECONFIG_PATH: make cluster-up)"
  else
    dry_run() { # dry_run <name> [helm args...]
      local name="$1"; shift
      local out="$TMP/server-$name.yaml"
      if ! "$HELM" template "$RELEASE" "$CHART" --namespace default --kube-version "$KUBE_VERSION" "$@" >"$out" 2>"$out.err"; then
        cat "$out.err"; fail "kubectl apply --dry-run=server ($name: helm template failed)"; return
      fi
      if "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" apply --dry-run=server -f "$out" >"$out.log" 2>&1; then
        pass "kubectl apply --dry-run=server ($name: $(grep -c . "$out.log") objects)"
      else
        cat "$out.log"; fail "kubectl apply --dry-run=server ($name)"
      fi
    }
    dry_run default
    dry_run local -f "$CHART/ci/local-values.yaml"
    shown=()
    for t in "$CHART"/templates/*.yaml; do
      case "$(basename "$t")" in webhook-certificates.yaml|servicemonitor.yaml) continue ;; esac
      shown+=(--show-only "templates/$(basename "$t")")
    done
    dry_run non-default -f "$CHART/ci/non-default-values.yaml" "${shown[@]}"
  fi
fi

if [[ ${#FAILED[@]} -gt 0 ]]; then
  say "${#FAILED[@]} check(s) failed:"
  printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
say "all chart checks passed"
