//! The fleet, for real: a hub and three member clusters, each its own etcd, kube-apiserver and
//! kube-controller-manager; each member with its own webhook (as the chart's webhook ServiceAccount
//! there); the hub (`operator fleet`) as the chart's fleet ServiceAccount of the hub, reaching members with
//! the tokens of their chart's fleet-member ServiceAccount: members 1 and 2 registered by our kubeconfig
//! Secrets, member 3 by an Argo CD cluster Secret, read as Argo CD writes it.
//!
//! One test, in the order a platform team lives it: a policy reaches every member and is enforced there;
//! a hand edit on a member is reverted; a non-compliant Service admitted under Audit on member 2 shows at
//! the hub; deleting the hub's policy removes it everywhere; member 3 stopped is `unreachable` while the
//! others are still reported; a member Secret that would run a command is refused, and no credential is
//! ever logged; the hub stopped (process and control plane), members still deny.

use std::time::{Duration, Instant};

use e2e::fleet::{ControlPlane, Hub, argocd_cluster_secret, ca_of, member_secret, read, token_of};
use e2e::lua::{argocd_health, capture, karmada};
use e2e::webhook::{NAMESPACE_LABEL, WebhookFixture};
use e2e::{rbac, wait_until};
use serde_json::Value;

/// The members' audit interval (the webhook fixture's `--audit-interval`).
const AUDIT_INTERVAL: Duration = Duration::from_secs(3);
/// The hub's resync interval and member timeout.
const RESYNC: &str = "2s";
const MEMBER_TIMEOUT: &str = "3s";

fn fleet_of(hub: &ControlPlane, policy: &str) -> Option<Value> {
    let text = hub.get(&["contractpolicy", policy], "{.status.fleet}")?;
    serde_json::from_str(&text).ok()
}

fn member<'a>(fleet: &'a Value, cluster: &str) -> &'a Value {
    fleet["members"].as_array().and_then(|m| m.iter().find(|m| m["cluster"] == cluster)).unwrap_or(&Value::Null)
}

fn policy_yaml(name: &str, action: &str, namespace: &str) -> String {
    format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata:\n  name: {name}\n  labels:\n    csp.contracts.dev/propagate: \"true\"\n    team: platform\nspec:\n  enforcementAction: {action}\n  match: {{namespaces: [{namespace}], kinds: [Service]}}\n  failover: {{requiredRegions: [gz, sz, hz]}}\n"
    )
}

fn service_yaml(name: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  ports: [{{port: 80}}]\n"
    )
}

#[test]
fn a_hub_carries_policies_to_three_members_keeps_them_and_rolls_their_compliance_up() {
    let t0 = Instant::now();
    let mut planes = ControlPlane::start_many(&["hub", "member-1", "member-2", "member-3"]);
    eprintln!("4 control planes up in {:.1}s", t0.elapsed().as_secs_f64());
    let mut m3 = planes.pop().expect("member-3");
    let m2 = planes.pop().expect("member-2");
    let m1 = planes.pop().expect("member-1");
    let mut hub_plane = planes.pop().expect("hub");
    hub_plane.namespace("argocd", &[]);
    hub_plane.install(&["--set", "fleet.hub.argocdNamespace=argocd"]);
    for m in [&m1, &m2, &m3] {
        m.install(&[]);
    }

    // Each member: its own webhook, as its chart's webhook ServiceAccount; namespaces under it.
    let mut webhooks = Vec::new();
    for m in [&m1, &m2, &m3] {
        let sa = m.service_account(&rbac::webhook_service_account());
        // The fixture's audit interval is AUDIT_INTERVAL.
        let w = WebhookFixture::start_on(&m.kubeconfig(), &sa, &format!("webhook-{}", m.name), &[]);
        for ns in ["shop", "audited"] {
            m.namespace(ns, &[&format!("{NAMESPACE_LABEL}={}", w.id)]);
        }
        webhooks.push(w);
    }

    // Registration: members 1 and 2 by our Secrets, member 3 by an Argo CD cluster Secret.
    let mut tokens = Vec::new();
    for m in [&m1, &m2] {
        let kubeconfig = read(&m.service_account(&rbac::fleet_member_service_account()));
        tokens.push(token_of(&kubeconfig));
        hub_plane.kubectl(&["apply", "-f", "-"], Some(&member_secret(&m.name, &kubeconfig))).ok();
    }
    let m3_kubeconfig = read(&m3.service_account(&rbac::fleet_member_service_account()));
    tokens.push(token_of(&m3_kubeconfig));
    let argo = argocd_cluster_secret(
        "argocd",
        &m3.name,
        &format!("https://127.0.0.1:{}", m3.port()),
        &token_of(&m3_kubeconfig),
        &ca_of(&m3_kubeconfig),
    );
    hub_plane.kubectl(&["apply", "-f", "-"], Some(&argo)).ok();

    let mut hub = Hub::start(
        &hub_plane,
        &[
            "--argocd-namespace",
            "argocd",
            "--hub-name",
            "e2e-hub",
            "--resync-interval",
            RESYNC,
            "--member-timeout",
            MEMBER_TIMEOUT,
        ],
    );

    // 1. A propagated policy reaches every member, carries the hub's label, is audited there, and the hub's
    //    status says 3/3 (the FLEET column too).
    let created = Instant::now();
    hub_plane.kubectl(&["apply", "-f", "-"], Some(&policy_yaml("fleet-baseline", "Deny", "shop"))).ok();
    let mut reached = Vec::new();
    for m in [&m1, &m2, &m3] {
        wait_until(&format!("fleet-baseline on {}", m.name), Duration::from_secs(30), || {
            m.get(&["contractpolicy", "fleet-baseline"], "{.metadata.labels.csp\\.contracts\\.dev/fleet-hub}")
                .filter(|hub| hub == "e2e-hub")
        });
        reached.push(created.elapsed());
        let labels = m.get(&["contractpolicy", "fleet-baseline"], "{.metadata.labels}").unwrap_or_default();
        assert!(labels.contains("\"team\":\"platform\"") && !labels.contains("propagate"), "{labels}");
    }
    eprintln!("policy created on the hub -> on all 3 members: {:?}", reached);
    let fleet = wait_until("the hub to roll 3/3 up", Duration::from_secs(30), || {
        fleet_of(&hub_plane, "fleet-baseline").filter(|f| f["summary"] == "3/3")
    });
    eprintln!("policy created -> FLEET 3/3 at the hub: {:.2}s", created.elapsed().as_secs_f64());
    assert_eq!(
        (fleet["clusters"].as_i64(), fleet["compliant"].as_i64(), fleet["unreachable"].as_i64()),
        (Some(3), Some(3), Some(0))
    );
    for m in ["member-1", "member-2", "member-3"] {
        let e = member(&fleet, m);
        assert_eq!(
            (e["reachable"].as_bool(), e["inSync"].as_bool(), e["compliant"].as_bool()),
            (Some(true), Some(true), Some(true)),
            "{e}"
        );
        assert!(e["auditTime"].is_string(), "the member's audit time is rolled up: {e}");
    }
    // Argo CD's health of the hub's policy (our health.lua, run with gopher-lua).
    let hub_object = policy_json(&hub_plane, "fleet-baseline");
    assert_eq!(
        argocd_health("ContractPolicy", &hub_object),
        ("Healthy".to_owned(), "FLEET 3/3: every member cluster complies".to_owned())
    );
    capture("ContractPolicy", "fleet_healthy", &hub_object);
    let table = hub_plane.kubectl(&["get", "cpol", "fleet-baseline"], None).ok();
    assert!(table.lines().next().is_some_and(|h| h.contains("FLEET")), "{table}");
    assert!(table.lines().nth(1).is_some_and(|r| r.contains("3/3")), "{table}");

    // Enforced on the member by its own webhook.
    let denied = m1.kubectl(&["apply", "-f", "-"], Some(&service_yaml("cart", "shop"))).failed();
    assert!(denied.contains("fleet-baseline") && denied.contains("gz"), "{denied}");

    // 2. A hand edit on a member is reverted: a changed field (SSA takes it back) and an added one (the
    //    hub replaces the spec).
    let edited = Instant::now();
    m1.kubectl(
        &[
            "patch",
            "contractpolicy",
            "fleet-baseline",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"enforcementAction":"Audit"}}"#,
        ],
        None,
    )
    .ok();
    wait_until("the hub to restore enforcementAction on member-1", Duration::from_secs(20), || {
        m1.get(&["contractpolicy", "fleet-baseline"], "{.spec.enforcementAction}").filter(|a| a == "Deny")
    });
    let changed_back = edited.elapsed();
    let added = Instant::now();
    m1.kubectl(
        &[
            "patch",
            "contractpolicy",
            "fleet-baseline",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"drill":{"requiredWithin":"720h"}}}"#,
        ],
        None,
    )
    .ok();
    wait_until("the hub to remove the hand-added spec.drill on member-1", Duration::from_secs(20), || {
        m1.get(&["contractpolicy", "fleet-baseline"], "{.spec}").filter(|s| !s.contains("drill") && s.contains("Deny"))
    });
    eprintln!(
        "drift reverted: changed field {:.2}s, added field {:.2}s",
        changed_back.as_secs_f64(),
        added.elapsed().as_secs_f64()
    );
    let metrics = hub.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"csp_fleet_member_writes_total{cluster="member-1",action="restored"}"#)
                && !l.ends_with(" 0")),
        "{metrics}"
    );

    // 3. Audit on member 2: a non-compliant Service is admitted, the member's audit reports it, the hub
    //    shows it.
    hub_plane.kubectl(&["apply", "-f", "-"], Some(&policy_yaml("fleet-audit", "Audit", "audited"))).ok();
    wait_until("fleet-audit at 3/3", Duration::from_secs(30), || {
        fleet_of(&hub_plane, "fleet-audit").filter(|f| f["summary"] == "3/3")
    });
    let admitted = Instant::now();
    m2.kubectl(&["apply", "-f", "-"], Some(&service_yaml("legacy", "audited"))).ok();
    let fleet = wait_until("the hub to show member-2's violation", AUDIT_INTERVAL + Duration::from_secs(10), || {
        fleet_of(&hub_plane, "fleet-audit").filter(|f| f["summary"] == "2/3")
    });
    let shown = admitted.elapsed();
    let e = member(&fleet, "member-2");
    assert_eq!(
        (e["violations"].as_i64(), e["matched"].as_i64(), e["compliant"].as_bool()),
        (Some(1), Some(1), Some(false)),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 of 1 matched objects fall short") && m.contains("audited/legacy")),
        "{e}"
    );
    let member_audit = m2.get(&["contractpolicy", "fleet-audit"], "{.status.auditTime}").unwrap_or_default();
    eprintln!(
        "Service admitted on member-2 -> violation at the hub: {:.2}s (audit interval {AUDIT_INTERVAL:?}; member audit at {member_audit})",
        shown.as_secs_f64()
    );
    assert!(
        shown <= AUDIT_INTERVAL + Duration::from_secs(3),
        "{shown:?}: the audit interval plus the hub's own latency"
    );
    assert!(
        metrics_line(&hub, r#"csp_fleet_member_policy_violations{policy="fleet-audit",cluster="member-2"}"#)
            == Some(1.0)
    );
    assert!(metrics_line(&hub, r#"csp_fleet_policy_compliant_clusters{policy="fleet-audit"}"#) == Some(2.0));
    // Karmada's aggregation (our ResourceInterpreterCustomization, run with gopher-lua) over the members'
    // real copies says what the hub says.
    let items: Vec<Value> = [&m1, &m2, &m3]
        .iter()
        .map(|m| {
            serde_json::json!({"clusterName": m.name, "status": policy_json(m, "fleet-audit")["status"], "applied": true, "health": "Healthy"})
        })
        .collect();
    let template = policy_json(&hub_plane, "fleet-audit");
    let aggregated =
        karmada("ContractPolicy", "statusAggregation", "AggregateStatus", &[template, Value::Array(items)]);
    let karmada_fleet = &aggregated[0]["status"]["fleet"];
    assert_eq!(karmada_fleet["summary"], fleet["summary"], "Karmada's roll-up {karmada_fleet} vs the hub's {fleet}");
    assert_eq!(member(karmada_fleet, "member-2")["violations"], member(&fleet, "member-2")["violations"]);

    // 4. Deleting the hub's policy deletes it on every member.
    let deleted = Instant::now();
    hub_plane.kubectl(&["delete", "contractpolicy", "fleet-audit"], None).ok();
    for m in [&m1, &m2, &m3] {
        wait_until(&format!("fleet-audit gone from {}", m.name), Duration::from_secs(20), || {
            m.get(&["contractpolicy", "fleet-audit"], "{.metadata.name}").is_none().then_some(())
        });
    }
    eprintln!("hub policy deleted -> gone from all 3 members: {:.2}s", deleted.elapsed().as_secs_f64());
    // The members delete at the hub's request; the hub drops the policy's series on its own next pass.
    wait_until("the deleted policy's series to go from the hub's metrics", Duration::from_secs(20), || {
        metrics_line(&hub, r#"csp_fleet_policy_clusters{policy="fleet-audit"}"#).is_none().then_some(())
    });

    // 5. Member 3 stopped: unreachable, never compliant; the others still reported.
    m3.stop();
    let stopped = Instant::now();
    let fleet = wait_until("member-3 to show unreachable", Duration::from_secs(30), || {
        fleet_of(&hub_plane, "fleet-baseline").filter(|f| f["unreachable"] == 1)
    });
    eprintln!("member-3 stopped -> unreachable at the hub: {:.2}s", stopped.elapsed().as_secs_f64());
    assert_eq!(fleet["summary"], "2/3", "{fleet}");
    let e = member(&fleet, "member-3");
    assert_eq!((e["reachable"].as_bool(), e["compliant"].as_bool()), (Some(false), Some(false)), "{e}");
    assert!(e["message"].as_str().is_some_and(|m| m.starts_with("unreachable since")), "{e}");
    for m in ["member-1", "member-2"] {
        assert_eq!(member(&fleet, m)["compliant"].as_bool(), Some(true), "{fleet}");
    }
    assert_eq!(metrics_line(&hub, r#"csp_fleet_member_up{cluster="member-3"}"#), Some(0.0));
    let hub_object = policy_json(&hub_plane, "fleet-baseline");
    let (status, message) = argocd_health("ContractPolicy", &hub_object);
    assert_eq!(status, "Degraded", "{message}");
    assert!(message.starts_with("FLEET 2/3; member-3: unreachable since "), "{message}");
    capture("ContractPolicy", "fleet_degraded_unreachable", &hub_object);
    // `kubectl contracts status` on the hub shows the fleet, member by member.
    let status = std::process::Command::new(e2e::product_bin("kubectl-contracts"))
        .args(["status", "--kubeconfig", &hub_plane.kubeconfig().to_string_lossy()])
        .output()
        .expect("kubectl-contracts status");
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{table}{}", String::from_utf8_lossy(&status.stderr));
    let fleet_rows: Vec<&str> = table.lines().skip_while(|l| !l.starts_with("FLEET (")).collect();
    assert!(fleet_rows.first().is_some_and(|l| l.starts_with("FLEET (")), "a FLEET section:\n{table}");
    let row = |cluster: &str| {
        fleet_rows
            .iter()
            .find(|l| l.starts_with("fleet-baseline ") && l.split_whitespace().nth(1) == Some(cluster))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("a row for {cluster}:\n{table}"))
    };
    assert_eq!(&row("member-1")[2..5], ["yes", "yes", "yes"], "{table}");
    assert_eq!((row("member-3")[2], row("member-3")[4]), ("no", "no"), "unreachable, not compliant: {table}");
    assert!(row("member-3")[6..].join(" ").starts_with("unreachable since"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("fleet-baseline ") && l.contains(" 2/3")), "{table}");

    // 6. A member Secret whose kubeconfig would run a command in the hub is refused, with what to fix;
    //    that member counts, as not compliant.
    let exec = "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: k\n  cluster: {server: 'https://127.0.0.1:1'}\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nusers:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: [-c, 'echo pwned-secret-value']}\n";
    hub_plane.kubectl(&["apply", "-f", "-"], Some(&member_secret("member-4", exec))).ok();
    let fleet = wait_until("the refused member to show", Duration::from_secs(20), || {
        fleet_of(&hub_plane, "fleet-baseline").filter(|f| f["clusters"] == 4)
    });
    let e = member(&fleet, "member-4");
    assert!(e["message"].as_str().is_some_and(|m| m.contains("exec is not accepted")), "{e}");
    assert_eq!(fleet["summary"], "2/4", "{fleet}");
    hub_plane.kubectl(&["delete", "secret", "member-member-4", "-n", rbac::NAMESPACE], None).ok();
    wait_until("the unregistered member to go", Duration::from_secs(20), || {
        fleet_of(&hub_plane, "fleet-baseline").filter(|f| f["clusters"] == 3)
    });

    // No credential in the hub's log.
    let log = hub.log();
    assert!(log.contains("following member cluster"), "{log}");
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a member's token is in the hub's log");
    }
    assert!(!log.contains("pwned-secret-value"), "the refused Secret's content is in the hub's log");

    // 7. The hub gone (process and control plane): members still deny.
    hub.process.stop();
    hub_plane.stop();
    for (m, name) in [(&m1, "after-hub-1"), (&m2, "after-hub-2")] {
        let denied = m.kubectl(&["apply", "-f", "-"], Some(&service_yaml(name, "shop"))).failed();
        assert!(denied.contains("fleet-baseline"), "{} no longer denies with the hub gone: {denied}", m.name);
    }
    drop(webhooks);
}

fn policy_json(cp: &ControlPlane, name: &str) -> Value {
    serde_json::from_str(&cp.kubectl(&["get", "contractpolicy", name, "-o", "json"], None).ok()).expect("json")
}

fn metrics_line(hub: &Hub, series: &str) -> Option<f64> {
    hub.metrics().lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}
