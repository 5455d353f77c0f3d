#!/usr/bin/env bash
# The chart's checks (`make chart-test`):
#   1. helm lint --strict, with the default values and with every values file in ci/
#   2. values.schema.json refuses wrong values (unknown keys, bad enums) and the templates refuse bad
#      combinations
#   3. golden tests: `helm template` with the default values, ci/non-default-values.yaml,
#      ci/local-values.yaml, ci/gateway-values.yaml, ci/metrics-values.yaml and operator.publish={configmap}
#      equals tests/golden/*.yaml (UPDATE_GOLDEN=1 rewrites the goldens; Helm-generated certificates are masked)
#   4. monitoring: the PrometheusRule's rules, as rendered, pass `promtool check rules` and the promtool unit
#      tests tests/prometheus/rules.test.yaml; the Grafana dashboard reads only those recording rules and the
#      metrics the binaries, the proxies and the API server export (tests/check_dashboard.py); and both tests
#      fail on a broken rule or a typo in the dashboard ($CSP_PROMTOOL, else e2e/.bin/promtool)
#   5. the chart's crds/ are byte-identical to crds/manifests/, and appVersion is the workspace version
#   6. the gateway fleet's Envoy bootstrap passes `envoy --mode validate` (with throwaway certificates at its
#      paths), and is key for key what `operator bootstrap` prints, apart from the chart's readiness
#      listener (when an operator binary is at hand: $CSP_OPERATOR_BIN, else target/{debug,release}/)
#   7. with --server: the rendered objects pass `kubectl apply --dry-run=server` on the local control plane
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
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "charts/test.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '[chart-test %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
FAILED=()
pass() { say "ok   $1"; }
fail() { say "FAIL $1"; FAILED+=("$1"); }

ENVOY="$ROOT/e2e/.bin/envoy"
PROMTOOL="${CSP_PROMTOOL:-$ROOT/e2e/.bin/promtool}"
for tool in "$HELM" "$KUBECTL" "$ENVOY" "$PROMTOOL"; do
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

refuses "value must be one of 'xds', 'configmap'" --set 'operator.publish={grpc}'
refuses "value must be one of 'helm', 'certManager', 'existingSecret'" --set operator.xds.tls.mode=vault
refuses "additional properties 'replica' not allowed" --set proxy.replica=2
refuses "minimum: got 80, want 1,024" --set proxy.enabled=true --set 'proxy.ports={80}'
refuses "needs operator.xds.tls.existingSecret" --set operator.xds.tls.mode=existingSecret
refuses "proxy.enabled needs the operator's xDS server" --set proxy.enabled=true --set 'operator.publish={configmap}'
refuses "give proxy.xdsClientSecret" --set proxy.enabled=true --set operator.xds.tls.mode=existingSecret \
  --set operator.xds.tls.existingSecret=xds-tls --set operator.xds.tls.requireClientCert=true
refuses "which is proxy.readiness.port" --set proxy.enabled=true --set 'proxy.ports={8080,19001}'
refuses "additional properties 'enable' not allowed" --set metrics.prometheusRule.enable=true
refuses "invalid propertyName 'severity'" --set metrics.prometheusRule.alertLabels.severity=page

# 3. golden tests. Helm-generated xDS certificates (operator.xds.tls.mode=helm) differ at every render: their
# data, expiry annotations and the pods' checksums of them are compared as <generated>.
unrandom() { # unrandom <file>: the generated certificate material replaced by <generated>
  sed -E -i \
    -e 's/^( +(tls\.crt|tls\.key|ca\.crt|csp\.contracts\.dev\/not-after|checksum\/xds-tls|checksum\/xds-ca|checksum\/xds-client): ).+$/\1<generated>/' \
    "$1"
}
golden() { # golden <name> [helm args...]
  local name="$1"; shift
  local want="$GOLDEN/$name.yaml" got="$TMP/$name.yaml"
  if ! render "$got" "$@"; then
    cat "$got.err"; fail "golden $name (helm template failed)"; return
  fi
  unrandom "$got"
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
golden gateway -f "$CHART/ci/gateway-values.yaml"
golden metrics -f "$CHART/ci/metrics-values.yaml"
golden configmap-only --set 'operator.publish={configmap}'

# 4. monitoring. The rules are tested as the chart renders them (release csp in csp-system: the names the tests
# expect), taken out of the PrometheusRule into the file that tests/prometheus/rules.test.yaml loads.
PROM="$TMP/prometheus"
mkdir -p "$PROM"
rules_of() { # rules_of <out> [helm args...]: the rule groups (.spec) of the rendered PrometheusRule
  local out="$1"; shift
  render "$out.chart" --set metrics.prometheusRule.enabled=true --show-only templates/prometheusrule.yaml "$@" \
    || { cat "$out.chart.err"; return 1; }
  python3 - "$out.chart" "$out" <<'PY'
import sys, yaml
class Dumper(yaml.SafeDumper):
    pass
# Multi-line expressions and descriptions as block scalars, as written.
Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))
rules = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PrometheusRule"]
if len(rules) != 1 or not rules[0].get("spec", {}).get("groups"):
    sys.exit(f"expected one PrometheusRule with groups, got {len(rules)}")
yaml.dump(rules[0]["spec"], open(sys.argv[2], "w"), Dumper=Dumper, sort_keys=False, width=1000)
PY
}
prom_check() { # prom_check <name> [helm args...]: promtool check rules on the rendered rules
  local name="$1"; shift
  local rules="$PROM/check-$name.yaml"
  if ! rules_of "$rules" "$@"; then
    fail "promtool check rules ($name: no rules rendered)"
  elif "$PROMTOOL" check rules "$rules" >"$rules.out" 2>&1; then
    pass "promtool check rules ($name: $(sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p' "$rules.out") rules)"
  else
    cat "$rules.out"; fail "promtool check rules ($name)"
  fi
}
prom_check default
prom_check metrics -f "$CHART/ci/metrics-values.yaml"
prom_check local -f "$CHART/ci/local-values.yaml"
# Without a webhook in the cluster (webhook.external.url) there is no scrape target to be down.
if [[ ! -s "$PROM/check-local.yaml" ]] || grep -q 'alert: CSPWebhookDown' "$PROM/check-local.yaml"; then
  fail "no CSPWebhookDown with webhook.external.url"
else
  pass "no CSPWebhookDown with webhook.external.url"
fi

RULES="$PROM/rendered-rules.yaml"
cp "$CHART/tests/prometheus/rules.test.yaml" "$PROM/rules.test.yaml"
if ! rules_of "$RULES"; then
  fail "promtool test rules (no rules rendered)"
else
  if "$PROMTOOL" test rules "$PROM/rules.test.yaml" >"$PROM/test.out" 2>&1; then
    pass "promtool test rules: $(grep -c '^  - name:' "$PROM/rules.test.yaml") test groups of tests/prometheus/rules.test.yaml"
  else
    cat "$PROM/test.out"; fail "promtool test rules (tests/prometheus/rules.test.yaml)"
  fi
  # The tests catch a broken rule: with the default objective 0.98 instead of 0.99 they must fail.
  cp "$RULES" "$PROM/intact-rules.yaml"
  sed -i 's/+ 0\.01$/+ 0.02/' "$RULES"
  if cmp -s "$RULES" "$PROM/intact-rules.yaml"; then
    fail "promtool test rules fails on a broken rule (no default objective \"+ 0.01\" in the rules to break)"
  elif "$PROMTOOL" test rules "$PROM/rules.test.yaml" >"$PROM/broken.out" 2>&1; then
    fail "promtool test rules fails on a broken rule (the tests passed with the default objective 0.98)"
  else
    pass "promtool test rules fails on a broken rule"
  fi
  cp "$PROM/intact-rules.yaml" "$RULES"
fi

# The dashboard: every expression reads recording rules of the rendered rules or known metrics (and parses:
# promtool checks them as recording rules), every panel has one, every variable used is defined; a typo in a
# rule name must fail the check.
DASHBOARD="$CHART/files/dashboards/channel-contracts.json"
if ! python3 "$CHART/tests/check_dashboard.py" "$DASHBOARD" "$RULES" "$PROM/dashboard-exprs.yaml" >"$PROM/dashboard.out" 2>&1; then
  cat "$PROM/dashboard.out"; fail "dashboard check (files/dashboards/channel-contracts.json)"
elif ! "$PROMTOOL" check rules "$PROM/dashboard-exprs.yaml" >"$PROM/dashboard-exprs.out" 2>&1; then
  cat "$PROM/dashboard-exprs.out"; fail "dashboard check (files/dashboards/channel-contracts.json: PromQL that does not parse)"
else
  pass "dashboard check: $(sed "s/^ *//" "$PROM/dashboard.out")"
fi
sed 's/csp:contract_failovers:increase5m/csp:contract_failover:increase5m/g' "$DASHBOARD" >"$PROM/typo.json"
if cmp -s "$DASHBOARD" "$PROM/typo.json"; then
  fail "dashboard check fails on a typo (the dashboard has no csp:contract_failovers:increase5m to misspell)"
elif python3 "$CHART/tests/check_dashboard.py" "$PROM/typo.json" "$RULES" >"$PROM/typo.out" 2>&1; then
  fail "dashboard check fails on a typo (it passed csp:contract_failover:increase5m)"
else
  pass "dashboard check fails on a typo"
fi
# The ConfigMap holds the file's JSON, unchanged.
if render "$PROM/dashboard.chart" --set metrics.grafanaDashboard.enabled=true --show-only templates/grafana-dashboard.yaml \
  && python3 - "$PROM/dashboard.chart" "$DASHBOARD" <<'PY'
import json, sys, yaml
cm = yaml.safe_load(open(sys.argv[1]))
assert cm["metadata"]["labels"].get("grafana_dashboard") == "1", cm["metadata"]["labels"]
assert json.loads(cm["data"]["channel-contracts.json"]) == json.load(open(sys.argv[2])), "the JSON differs"
PY
then
  pass "dashboard ConfigMap holds files/dashboards/channel-contracts.json"
else
  cat "$PROM/dashboard.chart.err" 2>/dev/null; fail "dashboard ConfigMap holds files/dashboards/channel-contracts.json"
fi

# 5. the chart's CRDs are crds/manifests, byte for byte; appVersion is the workspace version
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

# 6. the gateway's bootstrap: Envoy accepts it, and it is what `operator bootstrap` prints
BOOTSTRAP_PKI="$TMP/pki"
mkdir -p "$BOOTSTRAP_PKI/xds" "$BOOTSTRAP_PKI/xds-client"
# Throwaway certificate and key at the paths the bootstrap names (Envoy loads them while validating).
if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=validate \
  -keyout "$BOOTSTRAP_PKI/xds-client/tls.key" -out "$BOOTSTRAP_PKI/xds-client/tls.crt" >/dev/null 2>&1; then
  fail "gateway bootstrap (openssl could not make a throwaway certificate)"
fi
cp "$BOOTSTRAP_PKI/xds-client/tls.crt" "$BOOTSTRAP_PKI/xds/ca.crt"
OPERATOR_BIN="${CSP_OPERATOR_BIN:-}"
for candidate in "$ROOT/target/debug/operator" "$ROOT/target/release/operator"; do
  [[ -z "$OPERATOR_BIN" && -x "$candidate" ]] && OPERATOR_BIN="$candidate"
done
bootstrap_of() { # bootstrap_of <out> [helm args...]: the bootstrap.yaml of the gateway's ConfigMap
  local out="$1"; shift
  render "$out.chart" --set proxy.enabled=true --show-only templates/gateway-bootstrap.yaml "$@" || return 1
  awk '/^  bootstrap.yaml: \|$/ {on=1; next} on && /^    / {print substr($0, 5); next} on && !/^ *$/ {on=0}' \
    "$out.chart" >"$out"
  [[ -s "$out" ]]
}
gateway_bootstrap() { # gateway_bootstrap <name> <operator bootstrap args> -- [helm args...]
  local name="$1"; shift
  local op_args=()
  while [[ $# -gt 0 && "$1" != -- ]]; do op_args+=("$1"); shift; done
  shift
  local file="$TMP/bootstrap-$name.yaml"
  if ! bootstrap_of "$file" "$@"; then
    cat "$file.chart.err" 2>/dev/null; fail "gateway bootstrap $name (no bootstrap rendered)"; return
  fi
  sed "s#/var/run/csp/#$BOOTSTRAP_PKI/#g" "$file" >"$file.local.yaml"
  # Envoy started with the Deployment's own arguments (the bootstrap at its local path, $(POD_NAME) filled).
  local envoy_args=()
  if ! render "$file.deploy" --set proxy.enabled=true --show-only templates/gateway-deployment.yaml "$@" \
    || ! mapfile -t envoy_args < <(python3 - "$file.deploy" "$file.local.yaml" <<'PY'
import sys, yaml
deploy = yaml.safe_load(open(sys.argv[1]))
for arg in deploy["spec"]["template"]["spec"]["containers"][0]["args"]:
    print(str(arg).replace("/etc/envoy/bootstrap.yaml", sys.argv[2]).replace("$(POD_NAME)", "validate"))
PY
  ) || [[ ${#envoy_args[@]} == 0 ]]; then
    fail "gateway bootstrap $name (no gateway Deployment arguments rendered)"; return
  fi
  if "$ENVOY" --mode validate "${envoy_args[@]}" >"$file.envoy" 2>&1; then
    pass "gateway bootstrap $name: envoy --mode validate with the Deployment's arguments"
  else
    grep -iE 'critical|error|exception|match for argument' "$file.envoy" | tail -5
    fail "gateway bootstrap $name: envoy --mode validate with the Deployment's arguments"
  fi
  if [[ -z "$OPERATOR_BIN" ]]; then
    say "skip gateway bootstrap $name == operator bootstrap (no operator binary: cargo build --bins, or CSP_OPERATOR_BIN)"
    return
  fi
  local xds=csp-channel-contracts-xds.csp-system.svc.cluster.local
  if ! "$OPERATOR_BIN" bootstrap --xds-address "$xds:18000" --ca /var/run/csp/xds/ca.crt --fleet csp-gateway \
    --pod-namespace "$NAMESPACE" --admin 127.0.0.1:9901 "${op_args[@]}" >"$file.operator" 2>&1; then
    cat "$file.operator"; fail "gateway bootstrap $name == operator bootstrap (operator bootstrap failed)"; return
  fi
  # Key for key, without the chart's readiness listener.
  if python3 - "$file" "$file.operator" <<'PY'
import sys, yaml
chart, operator = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
chart["static_resources"].pop("listeners", None)
if chart != operator:
    import difflib
    dump = lambda d: yaml.safe_dump(d, sort_keys=True).splitlines()
    print("\n".join(difflib.unified_diff(dump(operator), dump(chart), "operator bootstrap", "chart", lineterm="")))
    sys.exit(1)
PY
  then
    pass "gateway bootstrap $name == operator bootstrap ${op_args[*]}"
  else
    fail "gateway bootstrap $name == operator bootstrap ${op_args[*]} (the diff above: change _gateway-bootstrap.tpl)"
  fi
}
gateway_bootstrap default --
gateway_bootstrap mtls-sotw-namespaces \
  --client-cert /var/run/csp/xds-client/tls.crt --client-key /var/run/csp/xds-client/tls.key --sotw \
  --namespaces payments,orders -- \
  --set operator.xds.tls.requireClientCert=true --set proxy.sotw=true --set 'proxy.namespaces={payments,orders}'
gateway_bootstrap tracing --otlp-address otel-collector.observability.svc:4317 --trace-sampling 12.5 -- \
  --set proxy.tracing.otlpAddress=otel-collector.observability.svc:4317 --set-json proxy.tracing.sampling=12.5
gateway_bootstrap tracing-ip --otlp-address 10.0.0.7:4317 -- --set proxy.tracing.otlpAddress=10.0.0.7:4317

# 7. the API server accepts what the chart renders (server-side dry run: validation and admission, nothing
# stored). Rendered into the namespace `default`, which always exists, so that no namespace is created.
# cert-manager and Prometheus Operator kinds are left out: their CRDs are not on the local control plane.
# So is the `helm test` hook (--skip-tests): its Pod names a ServiceAccount that only the hook itself creates,
# which a dry run never stores; the in-cluster e2e suite runs `helm test` for real.
if [[ $SERVER == 1 ]]; then
  if [[ ! -f "$KUBECONFIG_PATH" ]] || ! "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get --raw /readyz >/dev/null 2>&1; then
    fail "kubectl apply --dry-run=server (no API server answers with $KUBECONFIG_PATH: make cluster-up)"
  else
    dry_run() { # dry_run <name> [helm args...]
      local name="$1"; shift
      local out="$TMP/server-$name.yaml"
      if ! "$HELM" template "$RELEASE" "$CHART" --namespace default --kube-version "$KUBE_VERSION" --skip-tests "$@" >"$out.all" 2>"$out.err"; then
        cat "$out.err"; fail "kubectl apply --dry-run=server ($name: helm template failed)"; return
      fi
      # Without the documents of cert-manager and Prometheus Operator kinds.
      awk 'BEGIN { RS = "\n---\n" } !/(^|\n)apiVersion: (cert-manager\.io|monitoring\.coreos\.com)\// { printf "---\n%s\n", $0 }' \
        "$out.all" >"$out"
      if "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" apply --dry-run=server -f "$out" >"$out.log" 2>&1; then
        pass "kubectl apply --dry-run=server ($name: $(grep -c . "$out.log") objects)"
      else
        cat "$out.log"; fail "kubectl apply --dry-run=server ($name)"
      fi
    }
    dry_run default
    dry_run local -f "$CHART/ci/local-values.yaml"
    # (the Argo CD Role goes to a namespace that exists)
    dry_run non-default -f "$CHART/ci/non-default-values.yaml" --set fleet.hub.argocdNamespace=kube-public
    # (its Roles in other namespaces would need those namespaces)
    dry_run gateway -f "$CHART/ci/gateway-values.yaml" --set-json 'operator.xds.proxyPodNamespaces=[]'

    # A real install with the gateway fleet (nothing runs: there is no kubelet), then an upgrade with the
    # same values: Helm's xDS certificates are read back (lookup) and rendered again, so the upgrade changes
    # no object and the certificates stay; then uninstall. failurePolicy Ignore: no webhook runs here.
    k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
    h() { "$HELM" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
    ns="csp-chart-test-$$"
    # Every object of the release with its generation (objects with a spec: only a spec change moves it, not
    # the status a controller writes, e.g. the deployment controller's with no kubelet) or else its
    # resourceVersion, and the xDS Secrets' data.
    release_state() {
      h get manifest csp-chart-test -n "$ns" | k get -n "$ns" -f - \
        -o jsonpath='{range .items[*]}{.kind}/{.metadata.name} {.metadata.generation}/{.metadata.resourceVersion}{"\n"}{end}' \
        | sed -E 's#^([^ ]+) ([0-9]+)/[0-9]+$#\1 generation \2#; s#^([^ ]+) /([0-9]+)$#\1 resourceVersion \2#' | sort
      k get secret -n "$ns" -l app.kubernetes.io/component=operator -o jsonpath='{range .items[*]}{.metadata.name} {.data}{"\n"}{end}'
    }
    install_args=(csp-chart-test "$CHART" -n "$ns" --set webhook.failurePolicy=Ignore
      --set proxy.enabled=true --set operator.xds.tls.requireClientCert=true)
    if ! h install "${install_args[@]}" --create-namespace >"$TMP/install.log" 2>&1; then
      cat "$TMP/install.log"; fail "helm install with the gateway fleet"
    else
      release_state >"$TMP/state.before"
      if ! h upgrade "${install_args[@]}" >"$TMP/upgrade.log" 2>&1; then
        cat "$TMP/upgrade.log"; fail "helm upgrade keeps the xDS certificates (upgrade failed)"
      elif release_state >"$TMP/state.after" && diff -u "$TMP/state.before" "$TMP/state.after" >"$TMP/state.diff" \
        && [[ $(grep -c 'xds' "$TMP/state.before") -ge 3 ]]; then
        pass "helm upgrade keeps the xDS certificates and changes no object ($(grep -c . "$TMP/state.before") lines)"
      else
        cut -c1-200 "$TMP/state.diff"; fail "helm upgrade keeps the xDS certificates and changes no object"
      fi
    fi
    h uninstall csp-chart-test -n "$ns" --wait >/dev/null 2>&1
    k delete namespace "$ns" --wait=false >/dev/null 2>&1
  fi
fi

if [[ ${#FAILED[@]} -gt 0 ]]; then
  say "${#FAILED[@]} check(s) failed:"
  printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
say "all chart checks passed"
