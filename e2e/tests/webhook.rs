//! The admission webhook as service teams meet it: a real webhook process registered with the real API
//! server, and kubectl. Each test has its own namespace and a ContractPolicy that matches only it.

use std::sync::OnceLock;
use std::time::Duration;

use e2e::webhook::{WebhookFixture, create_policy};
use e2e::{curl, kubectl, unique, wait_until};

fn fixture() -> &'static WebhookFixture {
    static F: OnceLock<WebhookFixture> = OnceLock::new();
    F.get_or_init(|| WebhookFixture::start("webhook"))
}

fn service(name: &str, annotation: Option<&str>) -> String {
    let annotations = annotation
        .map(|a| format!("  annotations: {{csp.contracts.dev/failover-regions: \"{a}\"}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{annotations}spec:\n  ports: [{{port: 8080}}]\n  clusterIP: None\n"
    )
}

fn contract(name: &str, service: &str, regions: &[&str]) -> String {
    format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {{name: {name}}}\nspec:\n  service: {service}\n  port: 8080\n  sla: {{maxLatency: 120ms}}\n  failover: {{regions: [{}]}}\n",
        regions.join(", ")
    )
}

const BASELINE: [&str; 3] = ["gz", "sz", "hz"];

#[test]
fn a_service_without_the_annotation_is_rejected_with_the_full_message() {
    let f = fixture();
    let ns = f.namespace("deny", &[]);
    let policy = create_policy(&unique("national-baseline"), "Deny", &[&ns.name], &BASELINE, "");
    let err = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("payment-verify", None))).failed();
    let expected = format!(
        "ContractPolicy \"{}\" denied Service {}/payment-verify: missing failover regions [gz, sz, hz]; required [gz, sz, hz], declared []. Declare them with annotation csp.contracts.dev/failover-regions=\"gz,sz,hz\" or in a ChannelContract's spec.failover.regions.",
        policy.name, ns.name
    );
    assert!(err.contains(&expected), "expected the full message:\n{expected}\ngot:\n{err}");
    assert!(err.contains("denied the request"), "{err}");

    // Missing only one region: the message says which.
    let err = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("two-regions", Some("gz,sz")))).failed();
    assert!(err.contains("missing failover regions [hz]; required [gz, sz, hz], declared [gz, sz]"), "{err}");
}

#[test]
fn a_compliant_service_is_accepted_and_spaces_in_the_annotation_are_fine() {
    let f = fixture();
    let ns = f.namespace("accept", &[]);
    let _policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &BASELINE, "");
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("plain", Some("gz,sz,hz")))).ok();
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("spaced", Some(" hz , gz,sz ,gz ")))).ok();
}

#[test]
fn a_service_governed_by_a_channel_contract_needs_no_annotation() {
    let f = fixture();
    let ns = f.namespace("governed", &[]);
    let _policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &BASELINE, "");
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&contract("pv", "payment-verify", &BASELINE))).ok();
    // The webhook learns of the contract through its watch: allow it a moment.
    wait_until("the governed Service to be admitted", Duration::from_secs(20), || {
        let r = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("payment-verify", None)));
        assert!(r.success || r.stderr.contains("denied"), "{}", r.stderr);
        r.success.then_some(())
    });
}

#[test]
fn a_contract_missing_a_region_is_rejected() {
    let f = fixture();
    let ns = f.namespace("contract", &[]);
    let policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &BASELINE, "");
    let err = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&contract("pv", "payment-verify", &["gz", "sz"])))
        .failed();
    let expected = format!(
        "ContractPolicy \"{}\" denied ChannelContract {}/pv: missing failover regions [hz]; required [gz, sz, hz], declared [gz, sz]. Declare them in spec.failover.regions",
        policy.name, ns.name
    );
    assert!(err.contains(&expected), "expected:\n{expected}\ngot:\n{err}");
}

#[test]
fn warn_prints_a_warning_and_admits() {
    let f = fixture();
    let ns = f.namespace("warn", &[]);
    let policy = create_policy(&unique("soft"), "Warn", &[&ns.name], &BASELINE, "");
    let r = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("lax", Some("gz"))));
    assert!(r.success, "Warn must admit: {}", r.stderr);
    let expected = format!(
        "Warning: ContractPolicy \"{}\" warns about Service {}/lax: missing failover regions [sz, hz]",
        policy.name, ns.name
    );
    assert!(r.stderr.contains(&expected), "expected kubectl to print:\n{expected}\ngot:\n{}", r.stderr);
}

#[test]
fn audit_admits_silently_and_the_object_shows_up_in_the_policy_status() {
    let f = fixture();
    let ns = f.namespace("audit", &[]);
    let policy = create_policy(&unique("watching"), "Audit", &[&ns.name], &BASELINE, "");
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("good", Some("gz,sz,hz")))).ok();
    let r = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("quiet", None)));
    assert!(r.success, "Audit must admit: {}", r.stderr);
    assert!(!r.stderr.contains("Warning"), "Audit must be silent: {}", r.stderr);
    let status = wait_until("the audit to report the Service", Duration::from_secs(30), || {
        let out = kubectl(&["get", "contractpolicy", &policy.name, "-o", "jsonpath={.status}"], None).ok();
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["violations"] == 1 && v["matched"] == 2).then_some(v)
    });
    assert_eq!(status["compliance"], "50%");
    let sample = &status["violationSamples"][0];
    assert_eq!((sample["kind"].as_str(), sample["name"].as_str()), (Some("Service"), Some("quiet")));
    assert_eq!(sample["namespace"], ns.name.as_str());
    assert!(sample["message"].as_str().unwrap_or_default().contains("missing failover regions [gz, sz, hz]"));
    let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    assert!(conditions.iter().any(|c| c["type"] == "Audited" && c["status"] == "True"), "{conditions:?}");
    // kubectl shows the figures in its columns.
    let row = kubectl(&["get", "cpol", &policy.name], None).ok();
    assert!(row.contains("Audit") && row.contains("50%"), "{row}");
}

#[test]
fn kube_system_is_never_blocked() {
    let f = fixture();
    let ns = f.namespace("kube-system", &[]);
    // The policy even names kube-system: it is exempt all the same.
    let _policy = create_policy(&unique("overreach"), "Deny", &[&ns.name, "kube-system"], &BASELINE, "");
    let name = unique("svc");
    kubectl(&["create", "-n", "kube-system", "-f", "-"], Some(&service(&name, None))).ok();
    kubectl(&["delete", "service", &name, "-n", "kube-system"], None).ok();
}

#[test]
fn an_update_that_removes_the_annotation_is_rejected() {
    let f = fixture();
    let ns = f.namespace("update", &[]);
    let _policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &BASELINE, "");
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("kept", Some("gz,sz,hz")))).ok();
    let err =
        kubectl(&["annotate", "service", "kept", "-n", &ns.name, "csp.contracts.dev/failover-regions-"], None).failed();
    assert!(err.contains("missing failover regions [gz, sz, hz]"), "{err}");
    // The Service keeps its annotation.
    let kept =
        kubectl(&["get", "service", "kept", "-n", &ns.name, "-o", "jsonpath={.metadata.annotations}"], None).ok();
    assert!(kept.contains("gz,sz,hz"), "{kept}");
}

#[test]
fn delete_is_allowed_even_for_a_non_compliant_service() {
    let f = fixture();
    let ns = f.namespace("delete", &[]);
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("legacy", None))).ok();
    let _policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &BASELINE, "");
    kubectl(&["delete", "service", "legacy", "-n", &ns.name], None).ok();
}

#[test]
fn server_side_dry_run_is_rejected_too() {
    let f = fixture();
    let ns = f.namespace("dry-run", &[]);
    let _policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &BASELINE, "");
    let err =
        kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&service("rehearsal", Some("gz"))))
            .failed();
    assert!(err.contains("missing failover regions [sz, hz]"), "{err}");
    let ok =
        kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&service("fine", Some("gz,sz,hz"))))
            .ok();
    assert!(ok.contains("(server dry run)"), "{ok}");
}

#[test]
fn every_violated_policy_is_named_in_one_response() {
    let f = fixture();
    let ns = f.namespace("several", &[]);
    let a = create_policy(&unique("regions-a"), "Deny", &[&ns.name], &["gz"], "");
    let b = create_policy(&unique("regions-b"), "Deny", &[&ns.name], &["hz"], "");
    let err = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("short", Some("sz")))).failed();
    assert!(err.contains(&format!("ContractPolicy \"{}\" denied", a.name)), "{err}");
    assert!(err.contains(&format!("ContractPolicy \"{}\" denied", b.name)), "{err}");
}

#[test]
fn malformed_requests_get_a_clear_400_never_an_allow() {
    let f = fixture();
    let ca = f.ca_file.to_string_lossy().into_owned();
    let url = f.url("/validate");
    let post = |body: &str| {
        curl(&["--cacert", &ca, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", body, &url])
    };
    let (code, body) = post("{not json");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not JSON"), "{body}");
    let (code, body) =
        post(r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("admission.k8s.io/v1"), "{body}");
    let (code, body) =
        post(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("uid"), "{body}");
    // A review with a uid but no object: a well-formed denial.
    let (code, body) = post(
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","kind":{"group":"","version":"v1","kind":"Service"},"resource":{"group":"","version":"v1","resource":"services"},"namespace":"team","name":"x","operation":"CREATE","userInfo":{}}}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["response"]["allowed"], false, "{body}");
    assert_eq!(v["response"]["uid"], "u1");
    // Oversized: refused before it is read whole.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let big_file = std::env::temp_dir().join(unique("big.json"));
    std::fs::write(&big_file, big).expect("write");
    let data = format!("@{}", big_file.display());
    // (HTTP/1.1: over HTTP/2 the server's early answer comes with a stream reset that curl reports instead.)
    let (code, body) = curl(&[
        "--http1.1",
        "--cacert",
        &ca,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &data,
        &url,
    ]);
    let _ = std::fs::remove_file(&big_file);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("exceeds 4 MiB"), "{body}");
    // Plain HTTP on the TLS port.
    let (code, body) = curl(&[&format!("http://127.0.0.1:{}/validate", f.port)]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("HTTP request to an HTTPS server"), "{body}");
    // Still serving afterwards.
    assert_eq!(curl(&["--cacert", &ca, &f.url("/healthz")]).0, 200);
}

#[test]
fn metrics_count_admissions_by_kind_operation_and_decision() {
    let f = fixture();
    let ns = f.namespace("metrics", &[]);
    let policy = create_policy(&unique("counted"), "Deny", &[&ns.name], &BASELINE, "");
    let _ = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("counted", None))).failed();
    let (code, text) = curl(&["--cacert", &f.ca_file.to_string_lossy(), &f.url("/metrics")]);
    assert_eq!(code, 200);
    assert!(
        text.contains(r#"csp_admission_requests_total{kind="Service",operation="CREATE",decision="deny"}"#),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"csp_admission_policy_verdicts_total{{policy="{}",kind="Service",action="Deny"}} 1"#,
            policy.name
        )),
        "{text}"
    );
    assert!(text.contains("csp_admission_duration_seconds_bucket"), "{text}");
    wait_until("policy gauges", Duration::from_secs(30), || {
        let (_, text) = curl(&["--cacert", &f.ca_file.to_string_lossy(), &f.url("/metrics")]);
        text.contains(&format!(r#"csp_policy_compliance_ratio{{policy="{}"}}"#, policy.name)).then_some(())
    });
}

#[test]
fn a_non_compliant_service_being_deleted_can_still_lose_its_finalizer() {
    let f = fixture();
    let ns = f.namespace("finalizer", &[]);
    let legacy = "apiVersion: v1\nkind: Service\nmetadata:\n  name: legacy\n  finalizers: [example.com/cleanup]\nspec:\n  ports: [{port: 8080}]\n  clusterIP: None\n";
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(legacy)).ok();
    let _policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &BASELINE, "");
    kubectl(&["delete", "service", "legacy", "-n", &ns.name, "--wait=false"], None).ok();
    // The cleanup controller's last step: remove its finalizer from the Terminating, non-compliant Service.
    kubectl(
        &[
            "patch",
            "service",
            "legacy",
            "-n",
            &ns.name,
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
        None,
    )
    .ok();
    wait_until("the Service to be gone", Duration::from_secs(30), || {
        let r = kubectl(&["get", "service", "legacy", "-n", &ns.name], None);
        (!r.success && r.stderr.contains("NotFound")).then_some(())
    });
}

#[test]
fn an_old_non_compliant_service_can_be_labelled_with_a_warning_but_not_left_short_when_its_regions_change() {
    let f = fixture();
    let ns = f.namespace("existing", &[]);
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("legacy", Some("gz")))).ok();
    let policy = create_policy(&unique("baseline"), "Deny", &[&ns.name], &BASELINE, "");

    // A label, a port: allowed, with a warning that names the violation.
    let r = kubectl(&["label", "service", "legacy", "-n", &ns.name, "team=payments"], None);
    assert!(r.success, "a label change must be admitted: {}", r.stderr);
    let expected = format!(
        "Warning: ContractPolicy \"{}\" would deny Service {}/legacy: missing failover regions [sz, hz]; required [gz, sz, hz], declared [gz].",
        policy.name, ns.name
    );
    assert!(r.stderr.contains(&expected), "expected kubectl to print:\n{expected}\ngot:\n{}", r.stderr);
    let r = kubectl(
        &[
            "patch",
            "service",
            "legacy",
            "-n",
            &ns.name,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/ports/0/port","value":9090}]"#,
        ],
        None,
    );
    assert!(r.success, "a port change must be admitted: {}", r.stderr);

    // Touching the declaration while still short: denied, and the Service keeps what it had.
    let err = kubectl(
        &["annotate", "--overwrite", "service", "legacy", "-n", &ns.name, "csp.contracts.dev/failover-regions=gz,sz"],
        None,
    )
    .failed();
    assert!(
        err.contains(&format!(
            "ContractPolicy \"{}\" denied Service {}/legacy: missing failover regions [hz]",
            policy.name, ns.name
        )),
        "{err}"
    );

    // The audit still reports it.
    wait_until("the audit to report the labelled Service", Duration::from_secs(30), || {
        let out = kubectl(&["get", "contractpolicy", &policy.name, "-o", "jsonpath={.status}"], None).ok();
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["violations"] == 1 && v["violationSamples"][0]["name"] == "legacy").then_some(())
    });

    // Fixing it is an update like any other.
    kubectl(
        &[
            "annotate",
            "--overwrite",
            "service",
            "legacy",
            "-n",
            &ns.name,
            "csp.contracts.dev/failover-regions=gz,sz,hz",
        ],
        None,
    )
    .ok();
}

#[test]
fn a_namespace_that_opted_out_is_neither_judged_nor_audited() {
    let f = fixture();
    let out = f.namespace("opted-out", &["csp.contracts.dev/webhook=disabled"]);
    let kept = f.namespace("opted-in", &[]);
    // This test's registration sends the opted-out namespace's requests anyway (the chart's does not): the
    // webhook itself leaves them alone.
    let _deny = create_policy(&unique("strict"), "Deny", &[&out.name], &BASELINE, "");
    kubectl(&["create", "-n", &out.name, "-f", "-"], Some(&service("free", None))).ok();
    let watching = create_policy(&unique("watching"), "Audit", &[&out.name, &kept.name], &BASELINE, "");
    // Created after the other: once the audit reports this one, it has seen both.
    kubectl(&["create", "-n", &kept.name, "-f", "-"], Some(&service("late", None))).ok();
    let status = wait_until("the audit to report the opted-in Service", Duration::from_secs(30), || {
        let out = kubectl(&["get", "contractpolicy", &watching.name, "-o", "jsonpath={.status}"], None).ok();
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["violationSamples"][0]["name"] == "late").then_some(v)
    });
    assert_eq!(
        (status["matched"].clone(), status["violations"].clone()),
        (1.into(), 1.into()),
        "only the opted-in Service counts: {status}"
    );
}

#[test]
fn the_audit_reports_a_contract_without_a_recent_passed_drill_and_says_how_to_prove_it() {
    let f = fixture();
    let ns = f.namespace("drill-audit", &[]);
    let policy = create_policy(&unique("drilled"), "Audit", &[&ns.name], &["gz"], "  drill: {requiredWithin: 1m}\n");
    for name in ["never", "proven"] {
        let yaml = format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {{name: {name}}}\nspec:\n  service: {name}\n  port: 8080\n  sla: {{maxLatency: 1s}}\n  failover: {{regions: [gz, sz]}}\n"
        );
        let r = kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&yaml));
        assert!(r.success, "Audit admits it: {}", r.stderr);
    }
    let status = || -> serde_json::Value {
        let out = kubectl(&["get", "contractpolicy", &policy.name, "-o", "jsonpath={.status}"], None).ok();
        serde_json::from_str(&out).unwrap_or_default()
    };
    // Younger than the window: a grace period, not a violation.
    wait_until("the audit to see both contracts", Duration::from_secs(30), || {
        let s = status();
        (s["matched"] == 2 && s["violations"] == 0).then_some(())
    });
    // A minute on, neither has proven anything.
    wait_until("the grace period to end", Duration::from_secs(90), || (status()["violations"] == 2).then_some(()));
    // One passes a drill (what the operator writes when one does).
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = format!("{{\"status\": {{\"lastPassedDrillTime\": \"{now}\"}}}}");
    let r = kubectl(
        &["patch", "channelcontract", "proven", "-n", &ns.name, "--subresource=status", "--type=merge", "-p", &patch],
        None,
    );
    assert!(r.success, "{}", r.stderr);
    let s = wait_until("the audit to count the proven contract", Duration::from_secs(30), || {
        let s = status();
        (s["violations"] == 1).then_some(s)
    });
    let sample = &s["violationSamples"][0];
    assert_eq!((sample["kind"].as_str(), sample["name"].as_str()), (Some("ChannelContract"), Some("never")), "{s:#}");
    let message = sample["message"].as_str().unwrap_or_default();
    assert!(message.contains("has no ContractDrill that Passed within 1m (last passed: never)"), "{message}");
    assert!(
        message.contains(&format!("create a ContractDrill in namespace {} with spec.contract: never", ns.name)),
        "{message}"
    );
}
