//! A typo in a policy cannot block the cluster. The API server refuses unreadable selectors (see
//! `api.rs`); a policy stored before those rules existed (written under an older CRD) still can be read
//! back, and then it must enforce nothing and say why. Its own test binary: it swaps the ContractPolicy
//! CRD's schema for a moment, which no other test may see.

use std::time::Duration;

use e2e::webhook::{Policy, WebhookFixture};
use e2e::{kubectl, repo_root, unique, wait_until};

/// Puts the CRD back as the types generate it, even when the test fails.
struct RestoreCrd;

impl Drop for RestoreCrd {
    fn drop(&mut self) {
        let path = repo_root().join("crds/manifests/contractpolicies.yaml");
        let _ = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &path.to_string_lossy()], None);
    }
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports: [{{port: 8080}}]\n  clusterIP: None\n"
    )
}

#[test]
fn a_policy_stored_before_the_selector_rules_never_denies_and_says_why() {
    let f = WebhookFixture::start("typo");
    let ns = f.namespace("typo", &[]);
    let name = unique("typo");
    let broken = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: {name}}}\nspec:\n  enforcementAction: Deny\n  match:\n    namespaces: [{}]\n    labelSelector: {{matchExpressions: [{{key: tier, operator: Equals, values: [gold]}}]}}\n  failover: {{requiredRegions: [gz, sz, hz]}}\n",
        ns.name
    );

    // An older CRD: the selector's schema as k8s-openapi alone describes it (operator a free string).
    let restore = RestoreCrd;
    let crd = kubectl(&["get", "crd", "contractpolicies.csp.contracts.dev", "-o", "json"], None).ok();
    let mut crd: serde_json::Value = serde_json::from_str(&crd).expect("crd json");
    let selector = crd
        .pointer_mut(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/match/properties/labelSelector",
        )
        .expect("the labelSelector schema");
    *selector = serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    kubectl(&["replace", "-f", "-"], Some(&crd.to_string())).ok();
    let _policy = Policy { name: name.clone() };
    wait_until("the older schema to take the typo", Duration::from_secs(30), || {
        kubectl(&["create", "-f", "-"], Some(&broken)).success.then_some(())
    });
    drop(restore);
    wait_until("the CRD's rules to be back", Duration::from_secs(30), || {
        let other = unique("typo-again");
        let r = kubectl(&["create", "-f", "-"], Some(&broken.replace(&name, &other)));
        if r.success {
            let _ = kubectl(&["delete", "contractpolicy", &other], None);
        }
        (!r.success && r.stderr.contains("Unsupported value: \"Equals\"")).then_some(())
    });

    // The stored typo enforces nothing: a Service that falls far short of it is admitted.
    kubectl(&["create", "-n", &ns.name, "-f", "-"], Some(&service("unbothered"))).ok();
    // And the policy says why.
    let accepted = wait_until("the policy to be Accepted=False", Duration::from_secs(30), || {
        let out = kubectl(&["get", "contractpolicy", &name, "-o", "jsonpath={.status.conditions}"], None).ok();
        let conditions: Vec<serde_json::Value> = serde_json::from_str(&out).ok()?;
        conditions.into_iter().find(|c| c["type"] == "Accepted" && c["status"] == "False")
    });
    assert_eq!(accepted["reason"], "InvalidSpec");
    let message = accepted["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.match.labelSelector.matchExpressions[0].operator: \"Equals\" is not an operator")
            && message.contains("enforces nothing"),
        "{message}"
    );
    let status = kubectl(&["get", "contractpolicy", &name, "-o", "jsonpath={.status.matched}"], None).ok();
    assert_eq!(status.trim(), "0", "it matches nothing");
}
