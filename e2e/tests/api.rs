//! The API as a user meets it with kubectl: the CRDs install, kubectl documents and lists them, the
//! examples are accepted, and the API server itself refuses nonsense contracts with a message that
//! names the field (CEL rules and schema validation, with nothing of ours running).

use std::time::Duration;

use e2e::{TestNamespace, ensure_crds, kubectl, repo_root, unique, wait_until};

const VALID_CONTRACT: &str = r#"
apiVersion: csp.contracts.dev/v1alpha1
kind: ChannelContract
metadata: {name: NAME}
spec:
  service: payment-verify
  port: 8080
  sla: {maxLatency: 120ms}
  retry:
    maxRetries: 3
    perTryTimeout: 40ms
    backoff: {baseInterval: 25ms, maxInterval: 250ms}
  circuitBreaker: {threshold: 0.85}
  channels:
  - {name: primary, service: payment-verify, port: 8080}
  - {name: cache, service: verify-cache, port: 8080, selector: cache}
  failover: {regions: [gz, sz, hz]}
"#;

fn contract(name: &str) -> String {
    VALID_CONTRACT.replace("NAME", name)
}

#[test]
fn crds_apply_and_reapply_cleanly() {
    ensure_crds();
    let dir = repo_root().join("crds/manifests");
    let dir = dir.to_string_lossy();
    // A user's plain client-side apply, twice: the second changes nothing.
    let first = kubectl(&["apply", "-f", &dir], None).ok();
    assert!(first.contains("channelcontracts.csp.contracts.dev"), "{first}");
    let second = kubectl(&["apply", "-f", &dir], None).ok();
    assert!(
        second.contains("channelcontracts.csp.contracts.dev unchanged")
            && second.contains("contractpolicies.csp.contracts.dev unchanged")
            && second.contains("contractdrills.csp.contracts.dev unchanged"),
        "re-applying the CRDs should change nothing:\n{second}"
    );
    let established = kubectl(
        &[
            "get",
            "crd",
            "channelcontracts.csp.contracts.dev",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ],
        None,
    )
    .ok();
    assert_eq!(established, "True");
}

#[test]
fn a_deleted_namespace_really_goes_away() {
    ensure_crds();
    let ns = TestNamespace::new("gc", &[]);
    kubectl(&["create", "configmap", "x", "-n", &ns.name, "--from-literal=a=b"], None).ok();
    kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&contract("doomed"))).ok();
    kubectl(&["delete", "namespace", &ns.name, "--wait=false"], None).ok();
    // The namespace controller (kube-controller-manager) empties it and removes it.
    wait_until("the namespace to be deleted", Duration::from_secs(90), || {
        let r = kubectl(&["get", "namespace", &ns.name], None);
        (!r.success && r.stderr.contains("NotFound")).then_some(())
    });
}

#[test]
fn kubectl_explain_documents_the_retry_fields() {
    ensure_crds();
    // Discovery of a new CRD can lag a moment behind Established.
    let out = wait_until("kubectl explain to know ChannelContract", Duration::from_secs(30), || {
        let r = kubectl(&["explain", "channelcontract.spec.retry"], None);
        r.success.then_some(r.stdout)
    });
    for field in ["strategy", "maxRetries", "perTryTimeout", "backoff", "retryOn", "budgetPercent"] {
        assert!(out.contains(field), "kubectl explain should document {field}:\n{out}");
    }
    assert!(out.contains("How many times a failed request is retried"), "{out}");
    let out = kubectl(&["explain", "contractpolicy.spec.failover.requiredRegions"], None).ok();
    assert!(out.contains("Every one of these regions must be declared"), "{out}");
}

#[test]
fn kubectl_get_csp_lists_both_kinds_with_their_columns() {
    ensure_crds();
    let ns = TestNamespace::new("get-csp", &[]);
    let name = unique("listed");
    kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&contract(&name))).ok();
    let policy = unique("listed-policy");
    let policy_yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {policy}}}\nspec:\n  enforcementAction: Audit\n  match: {{namespaces: [{ns}]}}\n  failover: {{requiredRegions: [gz, sz, hz]}}\n",
        ns = ns.name
    );
    kubectl(&["apply", "-f", "-"], Some(&policy_yaml)).ok();

    let out = wait_until("kubectl get csp to list both kinds", Duration::from_secs(30), || {
        let r = kubectl(&["get", "csp", "-n", &ns.name], None);
        (r.success && r.stdout.contains(&name) && r.stdout.contains(&policy)).then_some(r.stdout)
    });
    let _ = kubectl(&["delete", "contractpolicy", &policy, "--ignore-not-found"], None);
    for header in ["SERVICE", "CHANNELS", "REGIONS", "READY", "AGE", "ACTION", "VIOLATIONS", "COMPLIANCE", "FLEET"] {
        assert!(out.contains(header), "kubectl get csp should show the column {header}:\n{out}");
    }
    let row = out.lines().find(|l| l.contains(&name)).unwrap_or_default();
    assert!(row.contains("payment-verify"), "contract row: {row}");
    assert!(row.contains(r#"["gz","sz","hz"]"#), "contract row should show its regions: {row}");
    let row = out.lines().find(|l| l.contains(&policy)).unwrap_or_default();
    assert!(row.contains("Audit"), "policy row: {row}");
}

#[test]
fn every_example_is_accepted() {
    ensure_crds();
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    // Namespaces first, as a user would apply them.
    files.sort_by_key(|p| (!p.to_string_lossy().contains("namespace"), p.clone()));
    assert!(files.len() >= 2, "examples/ should hold a ChannelContract and a ContractPolicy");
    let mut applied = Vec::new();
    for file in &files {
        let path = file.to_string_lossy().into_owned();
        let out = kubectl(&["apply", "-f", &path], None).ok();
        assert!(out.contains("created") || out.contains("configured") || out.contains("unchanged"), "{out}");
        applied.push(path);
    }
    let contract = kubectl(&["get", "chc", "payment-verify", "-n", "payments", "-o", "json"], None).ok();
    let contract: serde_json::Value = serde_json::from_str(&contract).expect("json");
    assert_eq!(contract["spec"]["channels"].as_array().map(Vec::len), Some(3));
    assert_eq!(contract["spec"]["failover"]["regions"], serde_json::json!(["gz", "sz", "hz"]));
    let drill = kubectl(&["get", "drill", "gz-outage", "-n", "payments", "-o", "json"], None).ok();
    let drill: crds::ContractDrill = serde_json::from_str(&drill).expect("the example drill fits the types");
    assert_eq!(crds::validate::drill(&drill.spec), Ok(()));
    for path in applied.iter().rev() {
        let _ = kubectl(&["delete", "-f", path, "--wait=false", "--ignore-not-found"], None);
    }
}

#[test]
fn the_server_applies_defaults() {
    ensure_crds();
    let ns = TestNamespace::new("defaults", &[]);
    let minimal = "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {name: minimal}\nspec: {service: web, port: 80, sla: {maxLatency: 1s}}\n";
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(minimal)).ok();
    let got = kubectl(&["get", "chc", "minimal", "-n", &ns.name, "-o", "json"], None).ok();
    let got: serde_json::Value = serde_json::from_str(&got).expect("json");
    let spec = &got["spec"];
    assert_eq!(spec["protocol"], "HTTP");
    assert_eq!(spec["retry"]["strategy"], "ExponentialBackoff");
    assert_eq!(spec["retry"]["maxRetries"], 2);
    assert_eq!(spec["retry"]["backoff"]["baseInterval"], "25ms");
    assert_eq!(spec["circuitBreaker"]["maxEjectionPercent"], 100);
    // The Rust types read what the server wrote.
    let typed: crds::ChannelContract = serde_json::from_value(got).expect("the server's object fits the types");
    assert_eq!(crds::validate::contract(&typed.spec), Ok(()));
}

/// Each violating object and the text the API server's refusal must contain (the field it names).
const INVALID: &[(&str, &str, &str)] = &[
    (
        "perTryTimeout greater than maxLatency",
        "spec: {service: s, port: 80, sla: {maxLatency: 100ms}, retry: {perTryTimeout: 200ms}}",
        "spec.retry.perTryTimeout must be less than or equal to spec.sla.maxLatency",
    ),
    (
        "baseInterval greater than maxInterval",
        "spec: {service: s, port: 80, sla: {maxLatency: 1s}, retry: {backoff: {baseInterval: 500ms, maxInterval: 100ms}}}",
        "spec.retry.backoff.baseInterval must be less than or equal to spec.retry.backoff.maxInterval",
    ),
    (
        "threshold of 0",
        "spec: {service: s, port: 80, sla: {maxLatency: 1s}, circuitBreaker: {threshold: 0}}",
        "spec.circuitBreaker.threshold",
    ),
    (
        "threshold above 1",
        "spec: {service: s, port: 80, sla: {maxLatency: 1s}, circuitBreaker: {threshold: 1.5}}",
        "spec.circuitBreaker.threshold",
    ),
    (
        "duplicate channel names",
        "spec: {service: s, port: 80, sla: {maxLatency: 1s}, channels: [{name: a}, {name: a}]}",
        "spec.channels[].name must be unique",
    ),
    (
        "duplicate selectors",
        "spec: {service: s, port: 80, sla: {maxLatency: 1s}, channels: [{name: a, selector: x}, {name: b, selector: x}]}",
        "spec.channels[].selector must be unique",
    ),
    (
        "duplicate regions",
        "spec: {service: s, port: 80, sla: {maxLatency: 1s}, failover: {regions: [gz, sz, gz]}}",
        "spec.failover.regions must not repeat a region",
    ),
    ("a missing required field (sla)", "spec: {service: s, port: 80}", "spec.sla: Required value"),
    ("a missing required field (service)", "spec: {port: 80, sla: {maxLatency: 1s}}", "spec.service: Required value"),
    ("a malformed duration", "spec: {service: s, port: 80, sla: {maxLatency: fast}}", "spec.sla.maxLatency"),
    (
        "a zero deadline",
        "spec: {service: s, port: 80, sla: {maxLatency: 0s}}",
        "spec.sla.maxLatency must be greater than 0",
    ),
    ("a port out of range", "spec: {service: s, port: 70000, sla: {maxLatency: 1s}}", "spec.port"),
];

#[test]
fn the_api_server_refuses_each_broken_invariant_naming_the_field() {
    ensure_crds();
    let ns = TestNamespace::new("invalid", &[]);
    let objects = INVALID.iter().enumerate().map(|(i, (what, spec, expected))| {
        let yaml = format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {{name: bad-{i}}}\n{spec}\n"
        );
        (*what, yaml, *expected)
    });
    assert_each_refused(&ns.name, objects);
}

/// Creates each `(what, yaml, expected)` in `namespace`; panics listing every one that was accepted or
/// whose refusal does not say `expected` (the field and the rule).
fn assert_each_refused<'a>(namespace: &str, objects: impl Iterator<Item = (&'a str, String, &'a str)>) {
    let mut failures = Vec::new();
    for (what, yaml, expected) in objects {
        let r = kubectl(&["create", "-n", namespace, "-f", "-"], Some(&yaml));
        if r.success {
            failures.push(format!("{what}: was accepted"));
        } else if !r.stderr.contains(expected) {
            failures.push(format!("{what}: refused without naming the field ({expected}):\n{}", r.stderr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_api_server_refuses_a_policy_with_duplicate_regions() {
    ensure_crds();
    let name = unique("bad-policy");
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec: {{failover: {{requiredRegions: [gz, gz]}}}}\n"
    );
    let err = kubectl(&["create", "-f", "-"], Some(&yaml)).failed();
    assert!(err.contains("spec.failover.requiredRegions must not repeat a region"), "{err}");
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec: {{enforcementAction: Block}}\n"
    );
    let err = kubectl(&["create", "-f", "-"], Some(&yaml)).failed();
    assert!(err.contains("spec.enforcementAction"), "{err}");
}

#[test]
fn the_api_server_refuses_a_policy_whose_selector_cannot_be_read() {
    ensure_crds();
    let cases = [
        (
            "{namespaceSelector: {matchExpressions: [{key: tier, operator: in, values: [gold]}]}}",
            "Unsupported value: \"in\"",
        ),
        (
            "{labelSelector: {matchExpressions: [{key: tier, operator: In}]}}",
            "operator In and NotIn need at least one value",
        ),
        (
            "{labelSelector: {matchExpressions: [{key: tier, operator: NotIn, values: []}]}}",
            "operator In and NotIn need at least one value",
        ),
        (
            "{labelSelector: {matchExpressions: [{key: tier, operator: Exists, values: [x]}]}}",
            "operator Exists and DoesNotExist take no values",
        ),
        (
            "{namespaceSelector: {matchExpressions: [{key: 'bad key', operator: Exists}]}}",
            "spec.match.namespaceSelector.matchExpressions[0].key",
        ),
        ("{namespaceSelector: {matchLabels: {'-bad': x}}}", "matchLabels keys must be label keys"),
        ("{labelSelector: {matchLabels: {tier: 'not a value'}}}", "spec.match.labelSelector.matchLabels.tier"),
    ];
    let mut failures = Vec::new();
    for (selector, expected) in cases {
        let name = unique("typo");
        let yaml = format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec: {{match: {selector}, failover: {{requiredRegions: [gz]}}}}\n"
        );
        let r = kubectl(&["create", "-f", "-"], Some(&yaml));
        if r.success {
            failures.push(format!("{selector}: was accepted"));
            let _ = kubectl(&["delete", "contractpolicy", &name], None);
        } else if !r.stderr.contains(expected) {
            failures.push(format!("{selector}: refused without saying {expected:?}:\n{}", r.stderr));
        }
    }
    // What a selector may say is still accepted.
    let name = unique("fine");
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec:\n  match:\n    namespaceSelector: {{matchLabels: {{example.com/tier: gold, empty: ''}}, matchExpressions: [{{key: legacy, operator: DoesNotExist}}, {{key: zone, operator: In, values: [a, b]}}]}}\n    labelSelector: {{matchExpressions: [{{key: app, operator: Exists}}]}}\n"
    );
    kubectl(&["create", "-f", "-"], Some(&yaml)).ok();
    kubectl(&["delete", "contractpolicy", &name], None).ok();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const VALID_DRILL: &str = "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractDrill\nmetadata: {name: NAME}\nspec:\n  contract: payment-verify\n  fault: {region: gz, abort: {}}\n  expect: {failoverWithin: 1800ms}\n";

#[test]
fn a_drill_gets_its_defaults_and_columns_and_cannot_be_rewritten() {
    ensure_crds();
    let ns = TestNamespace::new("drill", &[]);
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&VALID_DRILL.replace("NAME", "gz-outage"))).ok();
    let got = kubectl(&["get", "drill", "gz-outage", "-n", &ns.name, "-o", "json"], None).ok();
    let got: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(got["spec"]["duration"], "60s");
    assert_eq!(got["spec"]["fault"]["abort"], serde_json::json!({"httpStatus": 503, "percent": 100}));
    let table = kubectl(&["get", "drill", "-n", &ns.name], None).ok();
    for header in ["CONTRACT", "FAULT", "PHASE", "SWITCHOVER", "PROMISED"] {
        assert!(table.contains(header), "kubectl get drill should show the column {header}:\n{table}");
    }
    assert!(table.lines().any(|l| l.contains("gz-outage") && l.contains("1800ms")), "{table}");
    // What a drill ran must stay what it says: its fault, contract, duration and promise are fixed.
    let err = kubectl(
        &[
            "patch",
            "drill",
            "gz-outage",
            "-n",
            &ns.name,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"fault":{"region":"sz"}}}"#,
        ],
        None,
    )
    .failed();
    assert!(err.contains("cannot change") && err.contains("create a new ContractDrill"), "{err}");
    // Its trigger may change (arming or disarming a standing drill).
    kubectl(
        &[
            "patch",
            "drill",
            "gz-outage",
            "-n",
            &ns.name,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"trigger":{"slaBreachRatio":0.1}}}"#,
        ],
        None,
    )
    .ok();
    let list = kubectl(&["get", "csp", "-n", &ns.name, "-o", "name"], None).ok();
    assert!(list.contains("contractdrill.csp.contracts.dev/gz-outage"), "kubectl get csp lists drills: {list}");
}

#[test]
fn the_api_server_refuses_each_broken_drill_naming_the_field() {
    ensure_crds();
    let ns = TestNamespace::new("bad-drill", &[]);
    let cases = [
        ("no place", "fault: {abort: {}}", "spec.fault needs region, channel or both"),
        ("no failure", "fault: {region: gz}", "spec.fault needs abort, delay or both"),
        ("a 404 abort", "fault: {region: gz, abort: {httpStatus: 404}}", "spec.fault.abort.httpStatus"),
        (
            "a zero percent",
            "fault: {region: gz, abort: {percent: 0}}",
            "spec.fault.abort.percent must be greater than 0",
        ),
        (
            "a zero delay",
            "fault: {region: gz, delay: {duration: 0s}}",
            "spec.fault.delay.duration must be greater than 0",
        ),
        (
            "a promise longer than the fault",
            "fault: {region: gz, abort: {}}\n  duration: 1s",
            "spec.expect.failoverWithin must be shorter than spec.duration",
        ),
        (
            "a fault of a day",
            "fault: {region: gz, abort: {}}\n  duration: 24h",
            "spec.duration must be between 1s and 1h",
        ),
        (
            "a breach ratio above 1",
            "fault: {region: gz, abort: {}}\n  trigger: {slaBreachRatio: 1.5}",
            "spec.trigger.slaBreachRatio must be greater than 0 and at most 1",
        ),
        (
            "a trigger window of seconds",
            "fault: {region: gz, abort: {}}\n  trigger: {slaBreachRatio: 0.05, for: 10s}",
            "spec.trigger.for must be between 1m and 24h",
        ),
    ];
    let objects = cases.iter().enumerate().map(|(i, (what, fault, expected))| {
        let yaml = format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractDrill\nmetadata: {{name: bad-{i}}}\nspec:\n  contract: payment-verify\n  expect: {{failoverWithin: 1800ms}}\n  {fault}\n"
        );
        (*what, yaml, *expected)
    });
    assert_each_refused(&ns.name, objects);
}

#[test]
fn a_policy_may_require_a_recent_drill() {
    ensure_crds();
    let name = unique("proof");
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec: {{enforcementAction: Audit, drill: {{requiredWithin: 30s}}}}\n"
    );
    let err = kubectl(&["create", "-f", "-"], Some(&yaml)).failed();
    assert!(err.contains("spec.drill.requiredWithin must be at least 1m"), "{err}");
    kubectl(&["create", "-f", "-"], Some(&yaml.replace("30s", "720h"))).ok();
    let got = kubectl(&["get", "cpol", &name, "-o", "jsonpath={.spec.drill.requiredWithin}"], None).ok();
    let _ = kubectl(&["delete", "cpol", &name, "--ignore-not-found"], None);
    assert_eq!(got, "720h");
}
