//! The Argo CD health checks and the Karmada resource interpreter customizations we ship
//! (integrations/), run with gopher-lua the way those projects run them (e2e/.bin/luacheck), on objects
//! captured from the real API server in each state: a contract the operator made Ready (Healthy), one
//! whose Service is missing (Degraded), one no operator has seen yet (Progressing); a policy the webhook
//! audited clean (Healthy), one with a violation (Degraded), one not yet audited (Progressing). The fleet
//! hub's `status.fleet` is judged in the fleet suite. `CSP_UPDATE_TESTDATA=1` writes the captured objects
//! as Argo CD testdata (integrations/argocd/resource_customizations/…/testdata).

use std::time::Duration;

use e2e::lua::{argocd_health, capture, health_lua, karmada, scrubbed};
use e2e::testbed::{Placement, Testbed};
use e2e::webhook::{WebhookFixture, create_policy};
use e2e::{kubectl, repo_root, unique, wait_until};
use serde_json::{Value, json};

fn get(kind: &str, name: &str, namespace: Option<&str>) -> Value {
    let mut args = vec!["get", kind, name, "-o", "json"];
    if let Some(ns) = namespace {
        args.extend_from_slice(&["-n", ns]);
    }
    serde_json::from_str(&kubectl(&args, None).ok()).expect("json")
}

fn item(cluster: &str, status: &Value, health: &str) -> Value {
    json!({"clusterName": cluster, "status": status, "applied": true, "health": health})
}

#[test]
fn contracts_healthy_progressing_and_degraded_are_told_apart_by_argocd_and_karmada() {
    let mut tb = Testbed::new("lua-contracts");
    let ns = tb.ns.name.clone();
    tb.start_backend("pay-1");
    tb.service("pay", 18000);
    tb.endpoint_slice("pay-1", "pay", None, &[("pay-1", Placement::Node("gz"))]);
    tb.contract("pay", "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n");
    tb.contract("orphan", "  service: missing\n  port: 18000\n  sla: {maxLatency: 1s}\n");
    tb.contract_for("no-operator-selects-this", "unseen", "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n");
    tb.wait_condition("pay", "Ready", "True", "Ready");
    tb.wait_condition("orphan", "Programmed", "False", "ServiceNotFound");
    let ready = get("channelcontract", "pay", Some(&ns));
    let orphan = get("channelcontract", "orphan", Some(&ns));
    let unseen = get("channelcontract", "unseen", Some(&ns));
    assert!(unseen.get("status").is_none(), "no operator selects it: {unseen}");

    let (status, message) = argocd_health("ChannelContract", &ready);
    assert_eq!(status, "Healthy", "{message}");
    assert!(message.contains("channels "), "{message}");
    let (status, message) = argocd_health("ChannelContract", &orphan);
    assert_eq!(status, "Degraded", "{message}");
    assert!(message.starts_with("ServiceNotFound: ") && message.contains("missing"), "{message}");
    let (status, message) = argocd_health("ChannelContract", &unseen);
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Progressing", "Waiting for the operator to reconcile the contract")
    );
    // A spec change the operator has not observed yet: Progressing until it has.
    let mut newer = ready.clone();
    newer["metadata"]["generation"] = json!(ready["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
    assert_eq!(argocd_health("ChannelContract", &newer).0, "Progressing");
    for (name, object) in
        [("healthy", &ready), ("degraded_service_not_found", &orphan), ("progressing_no_status", &unseen)]
    {
        capture("ChannelContract", name, object);
    }

    // Karmada: health, the reflected status, and the aggregate of two members' statuses.
    let health =
        |o: &Value| karmada("ChannelContract", "healthInterpretation", "InterpretHealth", std::slice::from_ref(o));
    assert_eq!(health(&ready), [json!(true)]);
    assert_eq!(health(&orphan), [json!(false)]);
    assert_eq!(health(&unseen), [json!(false)]);
    let reflected = karmada("ChannelContract", "statusReflection", "ReflectStatus", std::slice::from_ref(&ready));
    assert_eq!(reflected[0]["conditions"], ready["status"]["conditions"]);
    let aggregate = |items: Vec<Value>| {
        let template = scrubbed(ready.clone());
        karmada("ChannelContract", "statusAggregation", "AggregateStatus", &[template, Value::Array(items)])
            .pop()
            .expect("the aggregated object")
    };
    let both = aggregate(vec![
        item("gz-cluster", &ready["status"], "Healthy"),
        item("sz-cluster", &ready["status"], "Healthy"),
    ]);
    let cond = |o: &Value, t: &str| {
        o["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or_default()
    };
    assert_eq!(cond(&both, "Ready")["status"], "True", "{both}");
    assert_eq!(cond(&both, "Ready")["message"], "True on all 2 clusters");
    let mixed = aggregate(vec![
        item("gz-cluster", &ready["status"], "Healthy"),
        item("sz-cluster", &orphan["status"], "Unhealthy"),
    ]);
    let programmed = cond(&mixed, "Programmed");
    assert_eq!(
        (programmed["status"].as_str(), programmed["reason"].as_str()),
        (Some("False"), Some("ServiceNotFound")),
        "{mixed}"
    );
    assert!(programmed["message"].as_str().is_some_and(|m| m.starts_with("sz-cluster: ")), "{programmed}");
}

#[test]
fn policies_audited_clean_with_violations_and_not_yet_audited_are_told_apart_by_argocd_and_karmada() {
    let webhook = WebhookFixture::start("lua-policies");
    let team = webhook.namespace("lua-policies", &[]);
    let svc = |name: &str, regions: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations: {{csp.contracts.dev/failover-regions: \"{regions}\"}}\nspec:\n  ports: [{{port: 80}}]\n"
        )
    };
    kubectl(&["apply", "-n", &team.name, "-f", "-"], Some(&svc("cart", "gz,sz"))).ok();
    let clean = create_policy(&unique("lua-clean"), "Audit", &[&team.name], &["gz", "sz"], "");
    let strict = create_policy(&unique("lua-strict"), "Audit", &[&team.name], &["gz", "sz", "hz"], "");
    let audited = |p: &str| {
        wait_until("the audit to judge cart", Duration::from_secs(30), || {
            let o = get("contractpolicy", p, None);
            (o["status"]["matched"] == 1 && o["status"]["observedGeneration"] == o["metadata"]["generation"])
                .then_some(o)
        })
    };
    let (clean_obj, strict_obj) = (audited(&clean.name), audited(&strict.name));
    // As created, before any audit: what `kubectl create -o json` returns.
    let name = unique("lua-new");
    let fresh_yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec:\n  enforcementAction: Audit\n  match: {{namespaces: [{}]}}\n",
        team.name
    );
    let fresh: Value =
        serde_json::from_str(&kubectl(&["create", "-o", "json", "-f", "-"], Some(&fresh_yaml)).ok()).expect("json");
    let _ = kubectl(&["delete", "contractpolicy", &name, "--wait=false"], None);

    let (status, message) = argocd_health("ContractPolicy", &clean_obj);
    assert_eq!((status.as_str(), message.as_str()), ("Healthy", "1 matched objects comply"));
    let (status, message) = argocd_health("ContractPolicy", &strict_obj);
    assert_eq!(status, "Degraded", "{message}");
    assert!(
        message.starts_with("1 of 1 matched objects fall short (0% compliant); e.g. ") && message.contains("hz"),
        "{message}"
    );
    assert_eq!(argocd_health("ContractPolicy", &fresh).0, "Progressing");
    for (n, o) in [("healthy", &clean_obj), ("degraded_violation", &strict_obj), ("progressing_not_audited", &fresh)] {
        capture("ContractPolicy", n, o);
    }

    let health =
        |o: &Value| karmada("ContractPolicy", "healthInterpretation", "InterpretHealth", std::slice::from_ref(o));
    assert_eq!(health(&clean_obj), [json!(true)]);
    assert_eq!(health(&strict_obj), [json!(true)], "violations are the audit's finding, not an unhealthy copy");
    assert_eq!(health(&fresh), [json!(false)]);
    let reflected = karmada("ContractPolicy", "statusReflection", "ReflectStatus", std::slice::from_ref(&strict_obj))
        .pop()
        .expect("status");
    assert_eq!((reflected["matched"].as_i64(), reflected["violations"].as_i64()), (Some(1), Some(1)));
    let aggregated = karmada(
        "ContractPolicy",
        "statusAggregation",
        "AggregateStatus",
        &[
            scrubbed(fresh.clone()),
            json!([
                item("member-b", &strict_obj["status"], "Healthy"),
                item("member-a", &clean_obj["status"], "Healthy"),
                {"clusterName": "member-c", "applied": false, "health": "Unknown"},
            ]),
        ],
    )
    .pop()
    .expect("the aggregated object");
    let fleet = &aggregated["status"]["fleet"];
    assert_eq!((fleet["summary"].as_str(), fleet["unreachable"].as_i64()), (Some("1/3"), Some(1)), "{aggregated}");
    assert_eq!(fleet["members"][0]["cluster"], "member-a", "sorted by cluster: {fleet}");
    assert_eq!(fleet["members"][1]["message"], "1 of 1 matched objects fall short");
    assert_eq!(
        (aggregated["status"]["matched"].as_i64(), aggregated["status"]["compliance"].as_str()),
        (Some(2), Some("50%"))
    );
    // The aggregate is a status the CRD accepts: the API server validates it (on an object of our own; the
    // template's spec went through Lua, whose empty tables have no array/object type).
    let object = unique("lua-aggregate");
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {object}}}\nspec:\n  enforcementAction: Audit\n  match: {{namespaces: [{}]}}\n",
        team.name
    );
    kubectl(&["create", "-f", "-"], Some(&yaml)).ok();
    let status_patch = json!({"status": aggregated["status"]});
    let patched = kubectl(
        &[
            "patch",
            "contractpolicy",
            &object,
            "--subresource",
            "status",
            "--type",
            "merge",
            "-p",
            &status_patch.to_string(),
        ],
        None,
    );
    let _ = kubectl(&["delete", "contractpolicy", &object, "--wait=false"], None);
    patched.ok();
    drop((clean, strict));
}

/// The argocd-cm snippet embeds the health.lua files unchanged, and every case of Argo CD's
/// health_test.yaml passes on the committed testdata (as `argocd admin settings resource-overrides`
/// and Argo CD's own test suite would run them).
#[test]
fn the_argocd_cm_embeds_the_scripts_and_the_committed_testdata_pass_health_test_yaml() {
    let cm_path = repo_root().join("integrations/argocd/argocd-cm.yaml");
    let cm: Value = yaml_serde::from_str(&std::fs::read_to_string(&cm_path).expect("argocd-cm.yaml")).expect("yaml");
    for kind in ["ChannelContract", "ContractPolicy"] {
        let script = std::fs::read_to_string(health_lua(kind)).expect("health.lua");
        let key = format!("resource.customizations.health.csp.contracts.dev_{kind}");
        assert_eq!(
            cm["data"][&key].as_str(),
            Some(script.as_str()),
            "{key} in argocd-cm.yaml differs from {kind}/health.lua"
        );
        let dir = health_lua(kind).with_file_name("");
        let tests: Value =
            yaml_serde::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).expect("health_test.yaml"))
                .expect("yaml");
        let cases = tests["tests"].as_array().expect("tests");
        assert!(cases.len() >= 3, "{kind}: healthy, progressing and degraded at least");
        for case in cases {
            let input = case["inputPath"].as_str().expect("inputPath");
            let object: Value =
                yaml_serde::from_str(&std::fs::read_to_string(dir.join(input)).expect("testdata")).expect("yaml");
            let (status, message) = argocd_health(kind, &object);
            assert_eq!(
                status,
                case["healthStatus"]["status"].as_str().unwrap_or_default(),
                "{kind} {input}: {message}"
            );
            assert_eq!(message, case["healthStatus"]["message"].as_str().unwrap_or_default(), "{kind} {input}");
        }
    }
}
