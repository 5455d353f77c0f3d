//! The audit's results as OpenReports (`openreports.io/v1alpha1` `Report`), one per namespace, so that
//! Policy Reporter and the other tools that read OpenReports show them with no glue.
//!
//! Each namespace with at least one matched object gets the Report `channel-contracts` (source
//! `channel-contracts`, label `app.kubernetes.io/managed-by: channel-contracts-webhook`): one result per
//! policy and matched object, `pass`, or `fail` (`warn` for a policy whose action is Warn, which OpenReports
//! calls not scored), with the audit's message (what to fix). A namespace whose objects no policy matches
//! any more loses its Report. At most [`MAX_RESULTS`] results per Report (failures first; the summary
//! still counts them all, and `configuration.limits.maxResults` says so).
//!
//! `--openreports auto` (the default) publishes when the API server serves `openreports.io/v1alpha1`
//! (its CRD installed), and looks again at every audit; `on` warns when it does not; `off` never writes.
//! A Report is rewritten only when its results change, or every refresh period (the audit's status
//! refresh, 10 minutes).

use std::collections::BTreeMap;
use std::time::Instant;

use crds::{ContractPolicy, EnforcementAction};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::evaluate::{self, Problem, Subject};

/// The Reports' `source`.
pub const SOURCE: &str = "channel-contracts";
/// Every Report's name (one per namespace).
pub const REPORT_NAME: &str = "channel-contracts";
/// The label that marks our Reports (value [`MANAGED_BY`]).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "channel-contracts-webhook";
/// The API group and version.
pub const API_VERSION: &str = "openreports.io/v1alpha1";
/// At most this many results per Report (a Report is one object: etcd keeps objects under 1.5 MiB).
pub const MAX_RESULTS: usize = 1000;

/// Whether the audit publishes OpenReports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// When the API server serves openreports.io/v1alpha1.
    #[default]
    Auto,
    /// Always (warns when the CRD is missing).
    On,
    /// Never.
    Off,
}

/// `metav1.Timestamp`.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Nanoseconds.
    pub nanos: i32,
}

/// `corev1.ObjectReference`, the fields we fill.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// v1 or csp.contracts.dev/v1alpha1.
    pub api_version: String,
    /// Service or ChannelContract.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// One result: a policy on one object.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ReportResult {
    /// [`SOURCE`].
    pub source: String,
    /// The ContractPolicy.
    pub policy: String,
    /// What was judged: `failover-regions`, `require-contract`, `drill` (the first shortfall), or
    /// `baseline` for a pass.
    pub rule: String,
    /// `Resilience`.
    pub category: String,
    /// high (Deny), medium (Warn), low (Audit).
    pub severity: String,
    /// When the audit found it.
    pub timestamp: Timestamp,
    /// pass, fail or warn.
    pub result: String,
    /// false for a Warn policy's result.
    pub scored: bool,
    /// The object.
    pub resources: Vec<ObjectReference>,
    /// What is wrong and how to fix it, or that it complies.
    pub message: String,
    /// `enforcementAction`.
    pub properties: BTreeMap<String, String>,
}

/// pass, fail, warn, error, skip counts.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Results that pass.
    pub pass: usize,
    /// Scored results that fail.
    pub fail: usize,
    /// Not scored results that fail.
    pub warn: usize,
    /// Never: every matched object is judged.
    pub error: usize,
    /// Never.
    pub skip: usize,
}

/// A namespace's Report, but its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceReport {
    /// The counts over every result, kept or not.
    pub summary: Summary,
    /// The results kept (failures first, then by policy, kind and name), at most [`MAX_RESULTS`].
    pub results: Vec<ReportResult>,
    /// Whether some were left out.
    pub truncated: bool,
}

fn rule_of(problem: &Problem) -> &'static str {
    match problem {
        Problem::MissingRegions { .. } | Problem::TooFewRegions { .. } => "failover-regions",
        Problem::NoContract => "require-contract",
        Problem::NoRecentDrill { .. } => "drill",
    }
}

/// Every namespace's Report. Pure.
pub fn reports(
    policies: &[std::sync::Arc<ContractPolicy>],
    subjects: &[Subject],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    exempt: &[String],
    now: k8s_openapi::jiff::Timestamp,
) -> BTreeMap<String, NamespaceReport> {
    let timestamp = Timestamp { seconds: now.as_second(), nanos: 0 };
    let mut out: BTreeMap<String, NamespaceReport> = BTreeMap::new();
    for policy in policies {
        if evaluate::unreadable(&policy.spec).is_some() {
            continue;
        }
        let name = policy.name_any();
        let action = policy.spec.enforcement_action;
        let (severity, scored) = match action {
            EnforcementAction::Deny => ("high", true),
            EnforcementAction::Warn => ("medium", false),
            EnforcementAction::Audit => ("low", true),
        };
        for s in subjects {
            if !evaluate::matches(&policy.spec, s, namespace_labels.get(&s.namespace), exempt) {
                continue;
            }
            let problems = evaluate::audit_problems(&policy.spec, s, now);
            let report = out.entry(s.namespace.clone()).or_default();
            let (result, rule, message) = if problems.is_empty() {
                report.summary.pass += 1;
                (
                    "pass",
                    "baseline",
                    format!("{} {}/{} meets ContractPolicy {name}", s.kind.as_str(), s.namespace, s.name),
                )
            } else {
                let result = if scored { "fail" } else { "warn" };
                if scored {
                    report.summary.fail += 1;
                } else {
                    report.summary.warn += 1;
                }
                (result, rule_of(&problems[0]), evaluate::message(&name, action, s, &problems))
            };
            let api_version = match s.kind {
                evaluate::Kind::Service => "v1".to_owned(),
                evaluate::Kind::ChannelContract => format!("{}/{}", crds::GROUP, crds::VERSION),
            };
            report.results.push(ReportResult {
                source: SOURCE.into(),
                policy: name.clone(),
                rule: rule.into(),
                category: "Resilience".into(),
                severity: severity.into(),
                timestamp,
                result: result.into(),
                scored,
                resources: vec![ObjectReference {
                    api_version,
                    kind: s.kind.as_str().into(),
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                }],
                message,
                properties: BTreeMap::from([("enforcementAction".to_owned(), format!("{action:?}"))]),
            });
        }
    }
    for report in out.values_mut() {
        report.results.sort_by(|a, b| {
            (a.result == "pass", &a.policy, &a.resources[0].kind, &a.resources[0].name).cmp(&(
                b.result == "pass",
                &b.policy,
                &b.resources[0].kind,
                &b.resources[0].name,
            ))
        });
        report.truncated = report.results.len() > MAX_RESULTS;
        report.results.truncate(MAX_RESULTS);
    }
    out
}

/// The Report object for `namespace`, as applied.
pub fn object(namespace: &str, report: &NamespaceReport) -> serde_json::Value {
    let mut body = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "Report",
        "metadata": {
            "name": REPORT_NAME,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        },
        "source": SOURCE,
        "summary": report.summary,
        "results": report.results,
    });
    if report.truncated {
        body["configuration"] = serde_json::json!({"limits": {"maxResults": MAX_RESULTS}});
    }
    body
}

/// Writes the Reports, remembering what it wrote; the leader's audit owns one.
#[derive(Debug)]
pub struct Publisher {
    mode: Mode,
    field_manager: &'static str,
    refresh: std::time::Duration,
    /// Whether the API server served the group at the last look.
    available: Option<bool>,
    /// What each namespace's Report says (timestamps zeroed) and when it was written.
    written: BTreeMap<String, (Vec<ReportResult>, Summary, Instant)>,
}

fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("openreports.io", "v1alpha1", "Report"), "reports")
}

fn without_time(results: &[ReportResult]) -> Vec<ReportResult> {
    results.iter().map(|r| ReportResult { timestamp: Timestamp::default(), ..r.clone() }).collect()
}

impl Publisher {
    /// A publisher in `mode` that writes as `field_manager` (server-side apply) and rewrites an unchanged
    /// Report after `refresh`.
    pub fn new(mode: Mode, field_manager: &'static str, refresh: std::time::Duration) -> Self {
        Self { mode, field_manager, refresh, available: None, written: BTreeMap::new() }
    }

    /// Forgets what it wrote (another replica may have written since): the next publish writes all.
    pub fn forget(&mut self) {
        self.written.clear();
    }

    async fn served(&mut self, client: &Client) -> bool {
        let served = match client.list_api_group_resources(API_VERSION).await {
            Ok(list) => list.resources.iter().any(|r| r.name == "reports"),
            Err(_) => false,
        };
        if self.available != Some(served) {
            match (served, self.mode) {
                (true, _) => {
                    tracing::info!("the API server serves openreports.io/v1alpha1: the audit publishes Reports")
                }
                (false, Mode::On) => tracing::warn!(
                    "--openreports on, but the API server does not serve openreports.io/v1alpha1: install the OpenReports CRD (openreports.io_reports.yaml)"
                ),
                (false, _) => {
                    tracing::info!("openreports.io/v1alpha1 is not served: no Reports (install its CRD to get them)")
                }
            }
        }
        self.available = Some(served);
        served
    }

    /// Whether this audit publishes: not `off`, and the API server serves the Report CRD (asked each
    /// time). The caller computes the Reports only then.
    pub async fn publishing(&mut self, client: &Client) -> bool {
        self.mode != Mode::Off && self.served(client).await
    }

    /// Writes every namespace's Report that changed, deletes ours in namespaces that have none now.
    /// Returns how many it wrote. Call it when [`publishing`](Self::publishing) says so.
    pub async fn publish(
        &mut self,
        client: &Client,
        reports: &BTreeMap<String, NamespaceReport>,
    ) -> Result<usize, kube::Error> {
        let ar = resource();
        let params = PatchParams::apply(self.field_manager).force();
        let mut wrote = 0;
        let mut first_error = None;
        for (namespace, report) in reports {
            let results = without_time(&report.results);
            let fresh = self
                .written
                .get(namespace)
                .is_some_and(|(r, s, at)| *r == results && *s == report.summary && at.elapsed() < self.refresh);
            if fresh {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
            match api.patch(REPORT_NAME, &params, &Patch::Apply(object(namespace, report))).await {
                Ok(_) => {
                    wrote += 1;
                    self.written.insert(namespace.clone(), (results, report.summary, Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(namespace = %namespace, error = %e, "writing the namespace's OpenReports Report failed");
                    self.written.remove(namespace);
                    first_error.get_or_insert(e);
                }
            }
        }
        // Ours where no result is left.
        let all: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let ours = all.list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))).await?;
        for r in ours.items {
            let namespace = r.namespace().unwrap_or_default();
            if reports.contains_key(&namespace) || r.name_any() != REPORT_NAME {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
            match api.delete(REPORT_NAME, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::debug!(namespace = %namespace, "deleted the Report: no policy matches there any more")
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            self.written.remove(&namespace);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(wrote),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy(name: &str, action: &str, namespaces: &[&str]) -> Arc<ContractPolicy> {
        let spec = serde_json::from_value(serde_json::json!({
            "enforcementAction": action,
            "match": {"namespaces": namespaces, "kinds": ["Service"]},
            "failover": {"requiredRegions": ["gz", "sz"]},
        }))
        .expect("spec");
        Arc::new(ContractPolicy::new(name, spec))
    }

    fn svc(ns: &str, name: &str, regions: &[&str]) -> Subject {
        let annotations: BTreeMap<String, String> = if regions.is_empty() {
            BTreeMap::new()
        } else {
            BTreeMap::from([(crds::FAILOVER_REGIONS_ANNOTATION.to_owned(), regions.join(","))])
        };
        Subject::service(ns, name, BTreeMap::new(), &annotations, &[])
    }

    #[test]
    fn one_report_per_namespace_with_a_result_per_policy_and_object_failures_first() {
        let policies = [policy("regions", "Deny", &["shop", "pay"]), policy("soft", "Warn", &["shop"])];
        let subjects = [
            svc("shop", "cart", &["gz", "sz"]),
            svc("shop", "legacy", &[]),
            svc("pay", "ok", &["gz", "sz"]),
            svc("other", "x", &[]),
        ];
        let now = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("ts");
        let out = reports(&policies, &subjects, &BTreeMap::new(), &[], now);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["pay", "shop"], "no Report where nothing matched");
        let shop = &out["shop"];
        assert_eq!(shop.summary, Summary { pass: 2, fail: 1, warn: 1, error: 0, skip: 0 });
        let first = &shop.results[0];
        assert_eq!(
            (first.result.as_str(), first.policy.as_str(), first.rule.as_str()),
            ("fail", "regions", "failover-regions")
        );
        assert_eq!(first.resources[0].name, "legacy");
        assert!(first.message.contains("gz") && first.message.contains("sz"), "{}", first.message);
        assert_eq!((first.severity.as_str(), first.scored), ("high", true));
        let warn = &shop.results[1];
        assert_eq!((warn.result.as_str(), warn.scored, warn.severity.as_str()), ("warn", false, "medium"));
        assert!(shop.results[2..].iter().all(|r| r.result == "pass" && r.rule == "baseline"));
        assert_eq!(first.timestamp, Timestamp { seconds: 1_700_000_000, nanos: 0 });
        let o = object("shop", shop);
        assert_eq!(o["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(o["results"][0]["resources"][0]["apiVersion"], "v1");
        assert!(o.get("configuration").is_none());
    }

    #[test]
    fn a_report_keeps_at_most_max_results_failures_first_and_says_so() {
        let policies = [policy("regions", "Audit", &["big"])];
        let mut subjects: Vec<Subject> =
            (0..MAX_RESULTS).map(|i| svc("big", &format!("ok-{i:04}"), &["gz", "sz"])).collect();
        subjects.push(svc("big", "zz-bad", &[]));
        let out = reports(&policies, &subjects, &BTreeMap::new(), &[], k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let big = &out["big"];
        assert_eq!((big.results.len(), big.truncated), (MAX_RESULTS, true));
        assert_eq!(big.summary.pass + big.summary.fail, MAX_RESULTS + 1, "the summary counts them all");
        assert_eq!(big.results[0].resources[0].name, "zz-bad", "failures are kept first");
        assert_eq!(object("big", big)["configuration"]["limits"]["maxResults"], MAX_RESULTS);
    }
}
