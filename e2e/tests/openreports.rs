//! The audit's results as OpenReports, for real: a control plane of its own with the OpenReports Report
//! CRD (from its Go module's manifests, `make tools`), so that the API server validates every Report the
//! webhook writes, and so that no other test's webhook publishes there. The webhook runs as the chart's
//! webhook ServiceAccount.

use std::time::{Duration, Instant};

use e2e::fleet::ControlPlane;
use e2e::webhook::{NAMESPACE_LABEL, WebhookFixture};
use e2e::{rbac, tool, wait_until};
use serde_json::Value;

fn report(cp: &ControlPlane, namespace: &str) -> Option<Value> {
    let r = cp.kubectl(&["get", "reports.openreports.io", "channel-contracts", "-n", namespace, "-o", "json"], None);
    r.success.then(|| serde_json::from_str(&r.stdout).expect("json"))
}

fn summary(r: &Value) -> (i64, i64, i64) {
    let s = &r["summary"];
    (s["pass"].as_i64().unwrap_or(-1), s["fail"].as_i64().unwrap_or(-1), s["warn"].as_i64().unwrap_or(-1))
}

#[test]
fn the_audit_publishes_a_report_per_namespace_that_follows_the_objects_and_goes_with_the_policies() {
    let cp = ControlPlane::start("openreports");
    cp.install(&[]);
    let crd = tool("crds/openreports.io_reports.yaml");
    cp.kubectl(&["apply", "--server-side", "-f", &crd.to_string_lossy()], None).ok();
    cp.kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd/reports.openreports.io"], None).ok();
    let sa = cp.service_account(&rbac::webhook_service_account());
    let webhook = WebhookFixture::start_on(&cp.kubeconfig(), &sa, "openreports-webhook", &[]);
    cp.namespace("shop", &[&format!("{NAMESPACE_LABEL}={}", webhook.id)]);
    cp.namespace("quiet", &[&format!("{NAMESPACE_LABEL}={}", webhook.id)]);

    let policy = |name: &str, action: &str, regions: &str| {
        format!(
            "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec:\n  enforcementAction: {action}\n  match: {{namespaces: [shop], kinds: [Service]}}\n  failover: {{requiredRegions: [{regions}]}}\n"
        )
    };
    let service = |name: &str, regions: Option<&str>| {
        let annotations = regions
            .map(|r| format!("  annotations: {{csp.contracts.dev/failover-regions: \"{r}\"}}\n"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n{annotations}spec:\n  ports: [{{port: 80}}]\n"
        )
    };
    cp.kubectl(&["apply", "-f", "-"], Some(&service("cart", Some("gz,sz")))).ok();
    cp.kubectl(&["apply", "-f", "-"], Some(&service("other", Some("gz,sz")))).ok();
    cp.kubectl(&["apply", "-f", "-"], Some(&policy("regions", "Audit", "gz, sz"))).ok();
    cp.kubectl(&["apply", "-f", "-"], Some(&policy("soft", "Warn", "gz, sz, hz"))).ok();
    // Admitted under Audit, warned about under Warn.
    let created = Instant::now();
    cp.kubectl(&["apply", "-f", "-"], Some(&service("legacy", None))).ok();

    let r = wait_until("the Report to count legacy", Duration::from_secs(30), || {
        report(&cp, "shop").filter(|r| summary(r) == (2, 1, 3))
    });
    eprintln!("Service admitted -> in the namespace's Report: {:.2}s", created.elapsed().as_secs_f64());
    assert_eq!(r["source"], "channel-contracts");
    assert_eq!(r["metadata"]["labels"]["app.kubernetes.io/managed-by"], "channel-contracts-webhook");
    let results = r["results"].as_array().expect("results");
    assert_eq!(results.len(), 6, "2 policies x 3 Services: {r}");
    let first = &results[0];
    assert_eq!(
        (first["result"].as_str(), first["policy"].as_str(), first["rule"].as_str()),
        (Some("fail"), Some("regions"), Some("failover-regions")),
        "{first}"
    );
    assert_eq!(
        first["resources"][0],
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "namespace": "shop", "name": "legacy"})
    );
    assert!(first["message"].as_str().is_some_and(|m| m.contains("gz") && m.contains("sz")), "{first}");
    assert_eq!((first["severity"].as_str(), first["scored"].as_bool()), (Some("low"), Some(true)));
    assert!(first["timestamp"]["seconds"].as_i64().is_some_and(|s| s > 1_700_000_000), "{first}");
    let warned: Vec<&Value> = results.iter().filter(|x| x["result"] == "warn").collect();
    assert_eq!(warned.len(), 3, "soft's hz is declared by none: {r}");
    assert!(warned.iter().all(|w| w["scored"] == false && w["policy"] == "soft"));
    assert!(report(&cp, "quiet").is_none(), "no Report where nothing is matched");
    let table = cp.kubectl(&["get", "reports.openreports.io", "-n", "shop"], None).ok();
    assert!(table.contains("PASS") && table.contains("FAIL"), "the CRD's printer columns: {table}");

    // The objects change, the Report follows.
    cp.kubectl(&["apply", "-f", "-"], Some(&service("legacy", Some("gz,sz,hz")))).ok();
    cp.kubectl(&["apply", "-f", "-"], Some(&service("cart", Some("gz,sz,hz")))).ok();
    cp.kubectl(&["apply", "-f", "-"], Some(&service("other", Some("gz,sz,hz")))).ok();
    wait_until("every result to pass", Duration::from_secs(30), || {
        report(&cp, "shop").filter(|r| summary(r) == (6, 0, 0))
    });

    // The policies go, the Report goes.
    cp.kubectl(&["delete", "contractpolicy", "regions", "soft"], None).ok();
    wait_until("the Report to be deleted", Duration::from_secs(30), || report(&cp, "shop").is_none().then_some(()));
    drop(webhook);
}
