//! One webhook replica audits: two replicas with the chart's audit Lease (and the chart's RBAC), exactly
//! one of them audits and writes policies' audit status, and an audit whose result did not change writes
//! nothing. Its own test binary, so that no other webhook process of the tests takes part in the election.

use std::time::Duration;

use e2e::webhook::{WebhookFixture, create_policy};
use e2e::{kubectl, rbac, unique, wait_until};

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  annotations: {{csp.contracts.dev/failover-regions: \"sz\"}}\nspec:\n  ports: [{{port: 8080}}]\n  clusterIP: None\n"
    )
}

/// A metric's value from a `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[test]
fn one_replica_audits_and_an_unchanged_result_writes_nothing() {
    // The chart's audit Lease in its namespace: the only one its Role lets the webhook hold.
    let (ns, lease) = (rbac::NAMESPACE, rbac::webhook_audit_lease());
    let args = |id: &str| vec!["--audit-lease".to_owned(), lease.clone(), "--identity".to_owned(), id.to_owned()];
    let a = WebhookFixture::start_with("audit-a", &args("replica-a"));
    let b = WebhookFixture::start_with("audit-b", &args("replica-b"));
    let team = a.namespace("audit-leader", &[]);
    b.unregister();
    let policy = create_policy(&unique("watching"), "Audit", &[&team.name], &["gz"], "");
    let scrape = |f: &WebhookFixture| e2e::curl(&["--cacert", &f.ca_file.to_string_lossy(), &f.url("/metrics")]).1;
    let leaders = wait_until("exactly one audit leader", Duration::from_secs(30), || {
        let flags = [metric(&scrape(&a), "csp_audit_leader"), metric(&scrape(&b), "csp_audit_leader")];
        (flags.iter().sum::<f64>() == 1.0).then_some(flags)
    });
    let (leader, follower) = if leaders[0] == 1.0 { (&a, &b) } else { (&b, &a) };
    let holder = kubectl(&["get", "lease", &lease, "-n", ns, "-o", "jsonpath={.spec.holderIdentity}"], None).ok();
    assert_eq!(holder, if leaders[0] == 1.0 { "replica-a" } else { "replica-b" });

    // The result does not change: audits go on, the policy's status is not written again. (The leader's
    // other writer, spec.enforcement's `Enforced` condition, writes once per generation: after it.)
    let rv = |p: &str| kubectl(&["get", "contractpolicy", p, "-o", "jsonpath={.metadata.resourceVersion}"], None).ok();
    wait_until("the policy's Enforced condition", Duration::from_secs(30), || {
        let path = "jsonpath={.status.conditions[?(@.type==\"Enforced\")].reason}";
        let reason = kubectl(&["get", "contractpolicy", &policy.name, "-o", path], None).ok();
        (!reason.is_empty()).then_some(())
    });
    let before = rv(&policy.name);
    let runs = |f: &WebhookFixture| metric(&scrape(f), "csp_audit_runs_total{reason=\"ok\"}");
    let start = runs(leader);
    wait_until("three more audits", Duration::from_secs(30), || (runs(leader) >= start + 3.0).then_some(()));
    assert_eq!(rv(&policy.name), before, "an audit with the same result wrote the status again");
    assert_eq!(runs(follower), 0.0, "the follower audits nothing");
    assert!(!scrape(follower).contains(&format!("csp_policy_matched{{policy=\"{}\"}}", policy.name)));

    // A new result is written.
    kubectl(&["create", "-n", &team.name, "-f", "-"], Some(&service("counted"))).ok();
    wait_until("the audit to count the new Service", Duration::from_secs(30), || {
        let v = kubectl(&["get", "contractpolicy", &policy.name, "-o", "jsonpath={.status.violations}"], None).ok();
        (v.trim() == "1").then_some(())
    });
}
