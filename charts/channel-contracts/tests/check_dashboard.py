#!/usr/bin/env python3
"""Checks the chart's Grafana dashboard (files/dashboards/channel-contracts.json) against its rules.

Usage: check_dashboard.py <dashboard.json> <rules.yaml> [<exprs.yaml>]
  rules.yaml: the rule groups of the rendered PrometheusRule (its .spec), as charts/test.sh extracts them.
  exprs.yaml: written with every expression as a recording rule (Grafana's variables replaced by a duration
    or `.*`), for `promtool check rules` to parse them.

Fails (exit 1, one line per problem) when
  - a PromQL expression (a panel's target, an annotation's query, a variable's label_values()) names a metric
    that is neither a recording rule of rules.yaml nor one of the raw metrics below (the metrics contract of
    the operator, the webhook, the gateway proxies and the API server), calls an unknown function, or
    matches or groups by a label those metrics do not have (also in a legend's {{label}});
  - a panel (other than a row or text) has no target, or a target has no expression;
  - a `$variable` / `${variable}` / `[[variable]]` is used but not defined in templating (Grafana's own
    `$__…` variables aside), or a variable is defined but never used;
  - panel ids repeat, a panel or target has a data source other than `${datasource}`, or the uid, title or
    schemaVersion are not the ones the chart promises.
"""

import json
import re
import sys

import yaml

# The raw metrics the dashboard may read (besides the recording rules).
RAW_METRICS = {
    # operator
    "csp_contract_requests_total",
    "csp_contract_request_duration_seconds_bucket",
    "csp_contract_request_duration_seconds_sum",
    "csp_contract_request_duration_seconds_count",
    "csp_contract_sla_objective",
    "csp_contract_sla_max_latency_seconds",
    "csp_contract_condition",
    "csp_drill_runs_total",
    "csp_drill_switchover_seconds",
    "csp_drill_promised_seconds",
    "csp_drill_active",
    "csp_xds_nacks_total",
    "csp_xds_connected_proxies",
    "csp_operator_leader",
    # webhook
    "csp_policy_compliance_ratio",
    "csp_policy_violations",
    "csp_policy_matched",
    "csp_admission_requests_total",
    # gateway proxies (Envoy)
    "envoy_cluster_zone_upstream_rq_completed",
    "envoy_cluster_outlier_detection_ejections_enforced_total",
    "envoy_cluster_membership_healthy",
    # API server and Prometheus
    "apiserver_admission_webhook_fail_open_count",
    "up",
}

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time",
    "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing",
    "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time",
    "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort",
    "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
}
# The labels those metrics and rules have (plus what Prometheus adds: job, namespace, pod, instance; cluster
# where a federated setup adds it).
LABELS = {
    "csp_namespace", "csp_contract", "csp_channel", "csp_region", "csp_fallback", "csp_outcome", "le",
    "condition", "drill", "phase", "contract", "policy", "kind", "operation", "decision", "name", "type",
    "job", "namespace", "pod", "instance", "cluster", "__name__",
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "by", "without", "on", "ignoring",
            "group_left", "group_right"}

PANELS_WITHOUT_QUERIES = {"row", "text", "news", "dashlist", "alertlist", "annolist"}
VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def metric_names(expr, problems, where):
    """The metric names an expression reads; unknown functions and labels go to problems."""
    for m in re.finditer(r"\{([^{}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(1)):
            if label not in LABELS:
                problems.append(f"{where}: unknown label {label} in: {expr}")
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", expr):
        for label in re.findall(r"\w+", m.group(1)):
            if label not in LABELS:
                problems.append(f"{where}: unknown label {label} in: {expr}")
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without)\s*\([^()]*\)\s*", "", s)  # `sum by (l) (x)` -> `sum(x)`
    s = re.sub(r"\b(on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)  # matching label lists
    names = set()
    for m in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", s):
        ident, call = m.group(1), m.group(2)
        if call:
            if ident not in FUNCTIONS and ident not in AGGREGATIONS and ident.lower() not in KEYWORDS:
                problems.append(f"{where}: unknown function {ident}() in: {expr}")
        elif ident.lower() not in KEYWORDS:
            names.add(ident)
    return names


def main():
    dashboard_path, rules_path = sys.argv[1], sys.argv[2]
    dashboard = json.load(open(dashboard_path))
    groups = (yaml.safe_load(open(rules_path)) or {}).get("groups") or []
    rules = {r["record"] for g in groups for r in g.get("rules") or [] if "record" in r}
    allowed = rules | RAW_METRICS
    problems = []

    if not rules:
        problems.append(f"{rules_path}: no recording rules")
    for key, want in (("uid", "channel-contracts"), ("title", "Channel Contracts")):
        if dashboard.get(key) != want:
            problems.append(f"{key} is {dashboard.get(key)!r}, not {want!r}")
    if not 36 <= int(dashboard.get("schemaVersion") or 0) <= 41:
        problems.append(f"schemaVersion {dashboard.get('schemaVersion')} is not about 39")

    exprs = []  # (where, expr)

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels") or [])

    ids = []
    for p in panels(dashboard.get("panels") or []):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        ids.append(p.get("id"))
        if p.get("type") in PANELS_WITHOUT_QUERIES:
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"{where}: data source {p.get('datasource')}, not ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no target")
        for t in targets:
            if not (t.get("expr") or "").strip():
                problems.append(f"{where}: target {t.get('refId')} has no expression")
                continue
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"{where}: target {t.get('refId')} data source {t.get('datasource')}")
            exprs.append((f"{where} target {t.get('refId')}", t["expr"]))
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat") or ""):
                if label not in LABELS:
                    problems.append(f"{where}: target {t.get('refId')} legend names unknown label {label}")
    dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if dupes:
        problems.append(f"panel ids repeat: {dupes}")

    for a in (dashboard.get("annotations") or {}).get("list") or []:
        if a.get("expr"):
            exprs.append((f"annotation {a.get('name')!r}", a["expr"]))

    variables = (dashboard.get("templating") or {}).get("list") or []
    defined = {v.get("name") for v in variables}
    for v in variables:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*", q, re.S)
        if m:
            exprs.append((f"variable {v['name']}", m.group(1)))
        elif re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", q):
            pass
        else:
            problems.append(f"variable {v['name']}: not label_values(<selector>, <label>): {q!r}")

    if len(sys.argv) > 3:
        def concrete(expr):
            expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
            return VARIABLE.sub(".*", expr)

        rules_out = [{"record": f"dashboard:expression_{i}:check", "expr": concrete(e)}
                     for i, (_, e) in enumerate(exprs)]
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules_out}]}, open(sys.argv[3], "w"),
                       sort_keys=False, width=1000)

    for where, expr in exprs:
        for name in sorted(metric_names(expr, problems, where)):
            if name not in allowed:
                problems.append(f"{where}: {name} is neither a recording rule of the chart nor a known metric")

    # Every $variable used is defined, every one defined is used.
    used = set()

    def strings(node):
        if isinstance(node, dict):
            for k, val in node.items():
                if k == "templating":
                    for var in val.get("list") or []:
                        yield from strings({k2: v2 for k2, v2 in var.items() if k2 not in ("name", "current")})
                else:
                    yield from strings(val)
        elif isinstance(node, list):
            for val in node:
                yield from strings(val)
        elif isinstance(node, str):
            yield node

    for s in strings(dashboard):
        for m in VARIABLE.finditer(s):
            name = m.group(1) or m.group(2) or m.group(3)
            if name.startswith("__"):
                continue
            used.add(name)
            if name not in defined:
                problems.append(f"${name} is used but not defined in templating: {s}")
    for name in sorted(defined - used):
        problems.append(f"variable {name} is defined but never used")

    problems = list(dict.fromkeys(problems))
    for p in problems:
        print(f"  {p}")
    if problems:
        return 1
    print(f"  {len(exprs)} expressions, {len(rules)} recording rules, {len(defined)} variables: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
