//! The audit: every matched existing object is judged against every policy, periodically and whenever a
//! policy changes; the results go to each policy's status (server-side apply) and to metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crds::conditions::condition;
use crds::{ContractPolicy, ContractPolicyStatus, ViolationSample};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::evaluate::{self, Subject};
use crate::index::{Caches, contract_ref};
use crate::metrics::{Metrics, PolicyLabels, ReasonLabels};

/// The field manager of the audit's status writes.
pub const FIELD_MANAGER: &str = "channel-contracts-webhook-audit";
/// At most this many violation samples are kept in a policy's status.
pub const MAX_SAMPLES: usize = 20;
/// An audit whose result is what the policy's status already says writes nothing, unless the status's
/// `auditTime` is older than this: `auditTime` then still shows, at this resolution, that the audit runs.
pub const STATUS_REFRESH: Duration = Duration::from_secs(10 * 60);

/// What the audit found for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Objects the policy matched.
    pub matched: i64,
    /// Matched objects that fall short.
    pub violations: i64,
    /// Up to [`MAX_SAMPLES`] of them, sorted by kind, namespace and name.
    pub samples: Vec<ViolationSample>,
}

impl Report {
    /// The share of matched objects that comply, as status shows it (`97.5%`).
    pub fn compliance(&self) -> String {
        let ratio = self.ratio() * 100.0;
        let text = format!("{ratio:.1}");
        format!("{}%", text.trim_end_matches(".0"))
    }

    /// The share of matched objects that comply, in 0..1 (1 when nothing matched).
    pub fn ratio(&self) -> f64 {
        if self.matched == 0 { 1.0 } else { (self.matched - self.violations) as f64 / self.matched as f64 }
    }
}

/// Judges every subject against one policy. Pure.
pub fn audit_policy(
    policy: &ContractPolicy,
    subjects: &[Subject],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    exempt_namespaces: &[String],
    now: k8s_openapi::jiff::Timestamp,
) -> Report {
    let mut report = Report::default();
    if evaluate::unreadable(&policy.spec).is_some() {
        return report;
    }
    let mut samples = Vec::new();
    let name = policy.name_any();
    for s in subjects {
        if !evaluate::matches(&policy.spec, s, namespace_labels.get(&s.namespace), exempt_namespaces) {
            continue;
        }
        report.matched += 1;
        let problems = evaluate::audit_problems(&policy.spec, s, now);
        if problems.is_empty() {
            continue;
        }
        report.violations += 1;
        samples.push(ViolationSample {
            kind: s.kind.as_str().to_owned(),
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            message: evaluate::message(&name, policy.spec.enforcement_action, s, &problems),
        });
    }
    samples.sort_by(|a, b| (&a.kind, &a.namespace, &a.name).cmp(&(&b.kind, &b.namespace, &b.name)));
    samples.truncate(MAX_SAMPLES);
    report.samples = samples;
    report
}

/// Every existing Service and ChannelContract as admission would see them: objects being deleted are left
/// out, as admission never judges them.
pub fn subjects(caches: &Caches) -> Vec<Subject> {
    let contracts = caches.contracts.state();
    let mut by_namespace: BTreeMap<String, Vec<evaluate::ContractRef>> = BTreeMap::new();
    for c in &contracts {
        by_namespace.entry(c.namespace().unwrap_or_default()).or_default().push(contract_ref(c));
    }
    let mut out = Vec::new();
    for svc in caches.services.state().iter().filter(|s| s.metadata.deletion_timestamp.is_none()) {
        let namespace = svc.namespace().unwrap_or_default();
        let refs = by_namespace.get(&namespace).map(Vec::as_slice).unwrap_or_default();
        out.push(Subject::service(&namespace, &svc.name_any(), svc.labels().clone(), svc.annotations(), refs));
    }
    for c in contracts.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
        let regions = c.spec.failover.as_ref().map(|f| f.regions.as_slice()).unwrap_or_default();
        let evidence = evaluate::DrillEvidence {
            created: c.metadata.creation_timestamp.as_ref().map(|t| t.0),
            last_passed: c.status.as_ref().and_then(|s| s.last_passed_drill_time.as_ref()).map(|t| t.0),
        };
        out.push(
            Subject::contract(&c.namespace().unwrap_or_default(), &c.name_any(), c.labels().clone(), regions)
                .with_drills(evidence),
        );
    }
    out
}

/// The conditions the audit writes.
const AUDIT_CONDITIONS: [&str; 2] = ["Accepted", "Audited"];

/// The status the audit writes for a policy.
pub fn status_for(policy: &ContractPolicy, report: &Report, now: &Time) -> ContractPolicyStatus {
    let previous = policy.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = policy.metadata.generation;
    let accepted = match evaluate::unreadable(&policy.spec) {
        None => condition("Accepted", true, "Valid", "the policy is valid".into(), generation, previous, now),
        Some(why) => condition("Accepted", false, "InvalidSpec", why, generation, previous, now),
    };
    let audited = condition(
        "Audited",
        true,
        "AuditSucceeded",
        format!(
            "{} of {} matched objects fall short ({} compliant)",
            report.violations,
            report.matched,
            report.compliance()
        ),
        generation,
        previous,
        now,
    );
    ContractPolicyStatus {
        observed_generation: generation,
        conditions: vec![accepted, audited],
        audit_time: Some(now.clone()),
        matched: report.matched,
        violations: report.violations,
        compliance: Some(report.compliance()),
        violation_samples: report.samples.clone(),
        fleet: None,
    }
}

/// Whether `next` needs writing over the policy's current status: what it says differs (anything but
/// `auditTime`, and `fleet`, which the fleet hub writes), or the current `auditTime` is older than
/// [`STATUS_REFRESH`] at `now`.
pub fn needs_write(current: Option<&ContractPolicyStatus>, next: &ContractPolicyStatus, now: &Time) -> bool {
    let Some(current) = current else { return true };
    let stale = current
        .audit_time
        .as_ref()
        .is_none_or(|t| now.0.duration_since(t.0).as_secs_f64() >= STATUS_REFRESH.as_secs_f64());
    // Only the audit's own conditions: others (the leader's `Enforced`) are written by other managers.
    let own = |s: &ContractPolicyStatus| ContractPolicyStatus {
        audit_time: None,
        fleet: None,
        conditions: s.conditions.iter().filter(|c| AUDIT_CONDITIONS.contains(&c.type_.as_str())).cloned().collect(),
        ..s.clone()
    };
    stale || own(current) != own(next)
}

/// Runs one audit over the caches and writes the status of every policy whose result changed.
pub async fn run_once(
    client: &Client,
    caches: &Caches,
    metrics: &Metrics,
    exempt: &[String],
    reports: &mut crate::openreports::Publisher,
) -> Result<usize, kube::Error> {
    let subjects = subjects(caches);
    let namespace_labels: BTreeMap<String, BTreeMap<String, String>> =
        caches.namespaces.state().iter().map(|n| (n.name_any(), n.labels().clone())).collect();
    let api: Api<ContractPolicy> = Api::all(client.clone());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let policies = caches.policies.state();
    let mut first_error = None;
    for policy in &policies {
        let report = audit_policy(policy, &subjects, &namespace_labels, exempt, now.0);
        let labels = PolicyLabels { policy: policy.name_any() };
        metrics.policy_matched.get_or_create(&labels).set(report.matched);
        metrics.policy_violations.get_or_create(&labels).set(report.violations);
        metrics.policy_compliance.get_or_create(&labels).set(report.ratio());
        let status = status_for(policy, &report, &now);
        if !needs_write(policy.status.as_ref(), &status, &now) {
            continue;
        }
        let patch = serde_json::json!({
            "apiVersion": format!("{}/{}", crds::GROUP, crds::VERSION),
            "kind": "ContractPolicy",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(e) = api.patch_status(&policy.name_any(), &params, &Patch::Apply(&patch)).await {
            tracing::warn!(policy = %policy.name_any(), error = %e, "writing the policy's audit status failed");
            first_error.get_or_insert(e);
        }
    }
    // Judged again per object for the Reports, only when they are published (most clusters have no
    // OpenReports CRD).
    if reports.publishing(client).await {
        let by_namespace = crate::openreports::reports(&policies, &subjects, &namespace_labels, exempt, now.0);
        if let Err(e) = reports.publish(client, &by_namespace).await {
            tracing::warn!(error = %e, "publishing the OpenReports Reports failed");
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(policies.len()),
    }
}

/// Audits periodically and whenever `policy_changed` is notified, until cancelled, while `leader` says
/// this replica is the one that writes audit status. Call it once the caches have synced.
#[allow(clippy::too_many_arguments)]
pub async fn run_loop(
    client: Client,
    caches: Caches,
    metrics: Arc<Metrics>,
    exempt: Vec<String>,
    interval: Duration,
    policy_changed: Arc<Notify>,
    mut leader: tokio::sync::watch::Receiver<bool>,
    openreports: crate::openreports::Mode,
    cancel: CancellationToken,
) {
    let mut known: Vec<String> = Vec::new();
    let mut reports = crate::openreports::Publisher::new(openreports, FIELD_MANAGER, STATUS_REFRESH);
    loop {
        if !*leader.borrow_and_update() {
            metrics.forget_policies(&known);
            known.clear();
            reports.forget();
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = leader.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let start = std::time::Instant::now();
        let result = run_once(&client, &caches, &metrics, &exempt, &mut reports).await;
        let reason = if result.is_ok() { "ok" } else { "error" };
        metrics.audit_runs.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
        match result {
            Ok(n) => tracing::info!(policies = n, elapsed_ms = start.elapsed().as_millis() as u64, "audit done"),
            Err(e) => tracing::warn!(error = %e, "audit incomplete; retrying at the next tick"),
        }
        let now: Vec<String> = caches.policies.state().iter().map(|p| p.name_any()).collect();
        for gone in known.iter().filter(|k| !now.contains(k)) {
            metrics.forget_policy(gone);
        }
        known = now;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {},
            _ = leader.changed() => {},
            _ = policy_changed.notified() => {
                // Let a burst of policy edits settle into one audit.
                tokio::time::sleep(Duration::from_millis(200)).await;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::Kind;

    fn svc(ns: &str, name: &str, regions: &[&str]) -> Subject {
        Subject {
            kind: Kind::Service,
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            declaration: evaluate::contract_declaration(&regions.iter().map(|r| r.to_string()).collect::<Vec<_>>()),
            drills: None,
        }
    }

    fn at(second: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + second).expect("timestamp")
    }

    #[test]
    fn a_drill_requirement_reports_contracts_without_a_recent_passed_drill() {
        let spec = serde_json::from_value(serde_json::json!({
            "enforcementAction": "Deny", "match": {"kinds": ["ChannelContract"]}, "drill": {"requiredWithin": "720h"}
        }))
        .expect("spec");
        let p = ContractPolicy::new("proof", spec);
        let day = 86_400;
        let contract = |name: &str, created: i64, passed: Option<i64>| {
            Subject::contract("payments", name, BTreeMap::new(), &["gz".to_owned()])
                .with_drills(evaluate::DrillEvidence { created: Some(at(created)), last_passed: passed.map(at) })
        };
        let subjects = vec![
            contract("new", -10 * day, None),               // in its grace period
            contract("proven", -90 * day, Some(-29 * day)), // passed 29 days ago
            contract("stale", -90 * day, Some(-31 * day)),  // passed 31 days ago
            contract("never", -31 * day, None),             // grace period over, never drilled
            svc("payments", "a-service", &[]),              // not matched: the policy is about contracts
        ];
        let r = audit_policy(&p, &subjects, &BTreeMap::new(), &[], at(0));
        assert_eq!((r.matched, r.violations), (4, 2));
        let names: Vec<&str> = r.samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["never", "stale"]);
        assert_eq!(
            r.samples[0].message,
            "ContractPolicy \"proof\" denied ChannelContract payments/never: has no ContractDrill that Passed within 720h (last passed: never). Prove it: create a ContractDrill in namespace payments with spec.contract: never and a fault its failover must absorb (e.g. fault: {region: <a failover region>, abort: {httpStatus: 503}}), and let it pass."
        );
        assert!(r.samples[1].message.contains("(last passed: 2026-12-15T08:00:00Z)"), "{}", r.samples[1].message);
        // Admission does not judge drills: the same policy admits the same contract.
        let never = &subjects[3];
        assert!(evaluate::problems(&p.spec, never).is_empty());
    }

    #[test]
    fn report_counts_matched_violations_and_compliance() {
        let spec = serde_json::from_value(
            serde_json::json!({"enforcementAction": "Audit", "failover": {"requiredRegions": ["gz", "sz"]}}),
        )
        .expect("spec");
        let p = ContractPolicy::new("p", spec);
        let mut subjects: Vec<Subject> = (0..39).map(|i| svc("a", &format!("ok-{i}"), &["gz", "sz"])).collect();
        subjects.push(svc("a", "bad", &["gz"]));
        subjects.push(svc("kube-system", "ignored", &[]));
        let r = audit_policy(&p, &subjects, &BTreeMap::new(), &[], at(0));
        assert_eq!((r.matched, r.violations), (40, 1));
        assert_eq!(r.compliance(), "97.5%");
        assert_eq!(r.samples.len(), 1);
        assert!(r.samples[0].message.contains("missing failover regions [sz]"));
        let all_ok = audit_policy(&p, &subjects[..3], &BTreeMap::new(), &[], at(0));
        assert_eq!(all_ok.compliance(), "100%");
    }

    #[test]
    fn the_audit_skips_what_admission_skips_and_broken_policies() {
        let spec = serde_json::from_value(serde_json::json!({"failover": {"requiredRegions": ["gz"]}})).expect("spec");
        let p = ContractPolicy::new("p", spec);
        let subjects = vec![svc("opted-out", "a", &[]), svc("kept", "b", &[]), svc("csp-system", "c", &[])];
        let labels = BTreeMap::from([
            ("opted-out".to_owned(), BTreeMap::from([("csp.contracts.dev/webhook".to_owned(), "disabled".to_owned())])),
            ("kept".to_owned(), BTreeMap::from([("csp.contracts.dev/webhook".to_owned(), "enabled".to_owned())])),
        ]);
        let r = audit_policy(&p, &subjects, &labels, &["csp-system".to_owned()], at(0));
        assert_eq!((r.matched, r.violations), (1, 1));
        assert_eq!(r.samples[0].namespace, "kept");

        let broken = serde_json::from_value(serde_json::json!({
            "failover": {"requiredRegions": ["gz"]},
            "match": {"labelSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}},
        }))
        .expect("spec");
        let broken = ContractPolicy::new("broken", broken);
        let r = audit_policy(&broken, &subjects, &labels, &[], at(0));
        assert_eq!((r.matched, r.violations), (0, 0), "a policy that cannot be read enforces nothing");
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).expect("ts"));
        let status = status_for(&broken, &r, &now);
        let accepted = &status.conditions[0];
        assert_eq!(
            (accepted.type_.as_str(), accepted.status.as_str(), accepted.reason.as_str()),
            ("Accepted", "False", "InvalidSpec")
        );
        assert!(
            accepted.message.contains("\"Equals\" is not an operator") && accepted.message.contains("enforces nothing"),
            "{}",
            accepted.message
        );
    }

    #[test]
    fn objects_being_deleted_are_left_out_of_the_audit_as_admission_leaves_them_alone() {
        use k8s_openapi::api::core::v1::Service;
        use kube::core::PartialObjectMeta;
        use kube::runtime::{reflector, watcher};

        let (services, mut writer) = reflector::store::<PartialObjectMeta<Service>>();
        let service = |name: &str, deleting: bool| -> PartialObjectMeta<Service> {
            let mut meta: PartialObjectMeta<Service> = serde_json::from_value(serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": name, "namespace": "team"},
            }))
            .expect("service");
            if deleting {
                meta.metadata.deletion_timestamp =
                    Some(Time(k8s_openapi::jiff::Timestamp::from_second(1).expect("ts")));
            }
            meta
        };
        writer.apply_watcher_event(&watcher::Event::Apply(service("kept", false)));
        writer.apply_watcher_event(&watcher::Event::Apply(service("terminating", true)));
        let caches = Caches {
            policies: reflector::store().0,
            unreadable_policies: crate::index::UnreadablePolicies::default(),
            contracts: reflector::store().0,
            contracts_by_namespace: crate::index::ContractsByNamespace::default(),
            namespaces: reflector::store().0,
            services,
        };
        let names: Vec<String> = subjects(&caches).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["kept"]);
    }

    #[test]
    fn an_unchanged_result_writes_nothing_until_the_refresh() {
        let spec = serde_json::from_value(serde_json::json!({"failover": {"requiredRegions": ["gz"]}})).expect("spec");
        let mut p = ContractPolicy::new("p", spec);
        let at = |s: i64| Time(k8s_openapi::jiff::Timestamp::from_second(s).expect("ts"));
        let report = Report { matched: 2, violations: 1, samples: vec![] };
        let first = status_for(&p, &report, &at(1_000));
        assert!(needs_write(None, &first, &at(1_000)));
        p.status = Some(first.clone());
        let again = status_for(&p, &report, &at(1_060));
        assert!(!needs_write(Some(&first), &again, &at(1_060)), "same result a minute later");
        // What a fleet hub writes next to the audit's fields is not the audit's to rewrite.
        let with_fleet = ContractPolicyStatus {
            fleet: Some(crds::FleetStatus { summary: "1/1".into(), clusters: 1, compliant: 1, ..Default::default() }),
            ..first.clone()
        };
        assert!(!needs_write(Some(&with_fleet), &again, &at(1_060)), "the hub's status.fleet is not a change");
        let later = status_for(&p, &report, &at(1_000 + STATUS_REFRESH.as_secs() as i64));
        assert!(needs_write(Some(&first), &later, &at(1_000 + STATUS_REFRESH.as_secs() as i64)), "auditTime refresh");
        let changed = status_for(&p, &Report { matched: 2, violations: 0, samples: vec![] }, &at(1_060));
        assert!(needs_write(Some(&first), &changed, &at(1_060)), "a new result");
    }

    #[test]
    fn samples_are_capped() {
        let spec = serde_json::from_value(serde_json::json!({"failover": {"requiredRegions": ["gz"]}})).expect("spec");
        let p = ContractPolicy::new("p", spec);
        let subjects: Vec<Subject> = (0..50).map(|i| svc("a", &format!("s-{i:02}"), &[])).collect();
        let r = audit_policy(&p, &subjects, &BTreeMap::new(), &[], at(0));
        assert_eq!((r.violations, r.samples.len()), (50, MAX_SAMPLES));
        assert_eq!(r.samples[0].name, "s-00");
    }

    #[test]
    fn last_transition_time_moves_only_on_a_flip() {
        let spec = serde_json::from_value(serde_json::json!({})).expect("spec");
        let mut p = ContractPolicy::new("p", spec);
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).expect("ts"));
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).expect("ts"));
        let s0 = status_for(&p, &Report::default(), &t0);
        p.status = Some(s0);
        let s1 = status_for(&p, &Report::default(), &t1);
        assert_eq!(s1.conditions[0].last_transition_time, t0);
        assert_eq!(s1.audit_time, Some(t1));
    }
}
