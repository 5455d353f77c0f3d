//! `kubectl contracts check`: judge manifests offline, as the webhook would on `kubectl apply`.
//!
//! Every Service and ChannelContract in the manifests is judged as a CREATE by the webhook's own code,
//! against the ContractPolicies in `--policies` and in the manifests; the manifests' Namespaces give their
//! labels, and their ChannelContracts govern their Services, as in a cluster. The exit code follows the
//! enforcement actions: 1 when a Deny policy refuses something (or, with `--strict`, a Warn policy warns),
//! 0 otherwise; Audit policies are reported and never fail the check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crds::ContractPolicy;
use serde::Serialize;
use serde_json::Value;
use webhook::evaluate::Subject;
use webhook::openreports;

use crate::manifests::{self, Manifest};
use crate::offline::{Cluster, Decision, Judgement};

/// How `check` writes what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CheckOutput {
    /// Lines for people.
    #[default]
    Human,
    /// One JSON document.
    Json,
    /// OpenReports `Report`s (openreports.io/v1alpha1), one per namespace, as YAML.
    Openreports,
}

/// Arguments of `check`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  # Judge a repository of manifests against the platform's policies
  kubectl contracts check -f deploy/ --policies platform/policies/

  # Warnings fail the build too
  kubectl contracts check -f deploy/ --policies platform/policies/ --strict

  # OpenReports for Policy Reporter, validated by the API server
  kubectl contracts check -f deploy/ --policies policies/ -o openreports | kubectl apply --dry-run=server -f -

Exit codes: 0 nothing denied, 1 a Deny policy refuses something (or a Warn policy warns, with --strict),
2 the manifests or policies cannot be read.")]
pub struct CheckArgs {
    /// Manifest files or directories (YAML or JSON, many documents, `-` for standard input).
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// ContractPolicy files or directories. ContractPolicies among the manifests count too.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub policies: Vec<PathBuf>,
    /// The namespace of objects that name none.
    #[arg(short = 'n', long, default_value = crate::offline::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Namespaces the webhook is told never to judge (its --exempt-namespaces), besides kube-system,
    /// kube-public and kube-node-lease.
    #[arg(long, value_delimiter = ',', value_name = "NS")]
    pub exempt_namespaces: Vec<String>,
    /// Fail on warnings too.
    #[arg(long)]
    pub strict: bool,
    /// human, json or openreports.
    #[arg(short = 'o', long, value_enum, default_value_t = CheckOutput::Human)]
    pub output: CheckOutput,
    /// Also list the objects that comply.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// One judged object.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Where it came from.
    pub source: String,
    /// Service or ChannelContract.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The webhook's answer.
    #[serde(flatten)]
    pub judgement: Judgement,
}

/// What `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    /// The policies, by name.
    pub policies: Vec<String>,
    /// Every judged object.
    pub objects: Vec<Finding>,
    /// Counts.
    pub totals: CheckTotals,
}

/// Counts of a check.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CheckTotals {
    /// Objects judged.
    pub judged: usize,
    /// Denied.
    pub denied: usize,
    /// Admitted with warnings.
    pub warned: usize,
    /// Objects some Audit policy reports.
    pub audited: usize,
    /// Admitted without a word.
    pub allowed: usize,
}

/// Why `check` could not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The manifests.
    #[error(transparent)]
    Manifests(#[from] manifests::ManifestError),
    /// A policy.
    #[error(transparent)]
    Policy(#[from] crate::offline::OfflineError),
    /// No policy at all.
    #[error("no ContractPolicy in {0}: give the policies with --policies PATH")]
    NoPolicies(String),
}

/// Reads everything and judges each Service and ChannelContract.
pub fn check(args: &CheckArgs) -> Result<(Checked, Cluster, Vec<Manifest>), CheckError> {
    let objects = manifests::load(&args.files)?;
    let policy_docs = manifests::load(&args.policies)?;
    let mut cluster = Cluster::new(args.exempt_namespaces.clone());
    let is_policy = |m: &Manifest| m.group() == crds::GROUP && m.kind() == "ContractPolicy";
    for m in policy_docs.iter().chain(&objects).filter(|m| is_policy(m)) {
        cluster.add_policy(m)?;
    }
    if cluster.policies().next().is_none() {
        let places: Vec<String> = args.files.iter().chain(&args.policies).map(|p| p.display().to_string()).collect();
        return Err(CheckError::NoPolicies(places.join(", ")));
    }
    for m in &objects {
        cluster.add_object(m, &args.namespace);
    }
    let mut findings = Vec::new();
    let mut totals = CheckTotals::default();
    for m in objects.iter().filter(|m| judged(m)) {
        let namespace = m.namespace().unwrap_or(&args.namespace).to_owned();
        let judgement = cluster.judge(&m.value, None, &namespace);
        totals.judged += 1;
        match judgement.decision {
            Decision::Deny => totals.denied += 1,
            Decision::Warn => totals.warned += 1,
            Decision::Allow => totals.allowed += 1,
        }
        if !judgement.audits.is_empty() {
            totals.audited += 1;
        }
        findings.push(Finding {
            source: m.source.clone(),
            kind: m.kind().to_owned(),
            namespace,
            name: m.name().to_owned(),
            judgement,
        });
    }
    let policies = cluster.policies().map(|p| p.metadata.name.clone().unwrap_or_default()).collect();
    Ok((Checked { policies, objects: findings, totals }, cluster, objects))
}

fn judged(m: &Manifest) -> bool {
    matches!((m.group(), m.kind()), ("", "Service") | (crds::GROUP, "ChannelContract"))
}

/// Whether the check fails.
pub fn fails(checked: &Checked, strict: bool) -> bool {
    checked.totals.denied > 0 || (strict && checked.totals.warned > 0)
}

/// The lines for people.
pub fn human(checked: &Checked, verbose: bool) -> String {
    let mut out = String::new();
    for f in &checked.objects {
        let what = format!("{} {}/{} ({})", f.kind, f.namespace, f.name, f.source);
        let j = &f.judgement;
        match j.decision {
            Decision::Deny => {
                for line in j.message.iter().flat_map(|m| m.lines()) {
                    out.push_str(&format!("DENY   {what}: {line}\n"));
                }
            }
            Decision::Allow if verbose && j.audits.is_empty() => out.push_str(&format!("ok     {what}\n")),
            _ => {}
        }
        for w in &j.warnings {
            out.push_str(&format!("WARN   {what}: {w}\n"));
        }
        for a in &j.audits {
            out.push_str(&format!("AUDIT  {what}: {a}\n"));
        }
    }
    let t = &checked.totals;
    out.push_str(&format!(
        "{} object{} judged by {} polic{}: {} denied, {} warned, {} audited, {} allowed without a word\n",
        t.judged,
        if t.judged == 1 { "" } else { "s" },
        checked.policies.len(),
        if checked.policies.len() == 1 { "y" } else { "ies" },
        t.denied,
        t.warned,
        t.audited,
        t.allowed
    ));
    out
}

/// The name of the Reports `check` writes (the webhook's audit writes `channel-contracts`).
pub const REPORT_NAME: &str = "channel-contracts-check";
/// Their `app.kubernetes.io/managed-by`: not the webhook's, so that its audit leaves them alone.
pub const MANAGED_BY: &str = "kubectl-contracts";

/// OpenReports, one per namespace with a matched object, built by the webhook's own
/// [`openreports::reports`] from the same subjects its audit builds.
pub fn openreports(cluster: &Cluster, objects: &[Manifest], default_namespace: &str) -> Vec<Value> {
    let mut subjects = Vec::new();
    for m in objects.iter().filter(|m| judged(m)) {
        let ns = m.namespace().unwrap_or(default_namespace);
        let labels: BTreeMap<String, String> = m
            .value
            .pointer("/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        let subject = if m.kind() == "Service" {
            let annotations: BTreeMap<String, String> = m
                .value
                .pointer("/metadata/annotations")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            Subject::service(ns, m.name(), labels, &annotations, &webhook::admission::Index::contracts_in(cluster, ns))
        } else {
            let regions: Vec<String> = m
                .value
                .pointer("/spec/failover/regions")
                .and_then(|r| serde_json::from_value(r.clone()).ok())
                .unwrap_or_default();
            Subject::contract(ns, m.name(), labels, &regions)
        };
        subjects.push(subject);
    }
    let policies: Vec<Arc<ContractPolicy>> = webhook::admission::Index::policies(cluster);
    let reports = openreports::reports(
        &policies,
        &subjects,
        cluster.namespace_labels_map(),
        cluster.exempt_namespaces(),
        k8s_openapi::jiff::Timestamp::now(),
    );
    reports
        .iter()
        .map(|(ns, report)| {
            let mut object = openreports::object(ns, report);
            object["metadata"]["name"] = REPORT_NAME.into();
            object["metadata"]["labels"] = serde_json::json!({ openreports::MANAGED_BY_LABEL: MANAGED_BY });
            object
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    const POLICIES: &str = "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {name: baseline}\nspec:\n  enforcementAction: Deny\n  match: {namespaces: [pay]}\n  failover: {requiredRegions: [gz, sz, hz]}\n---\napiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {name: soft}\nspec:\n  enforcementAction: Warn\n  match: {namespaces: [shop]}\n  failover: {requiredRegions: [gz, sz]}\n";
    const APPS: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: bare, namespace: pay}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: governed, namespace: pay}\nspec: {ports: [{port: 80}]}\n---\napiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {name: governed, namespace: pay}\nspec: {service: governed, port: 80, sla: {maxLatency: 100ms}, failover: {regions: [gz, sz, hz]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop, annotations: {csp.contracts.dev/failover-regions: gz}}\nspec: {ports: [{port: 80}]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: pay}\n";

    fn args(dir: &std::path::Path) -> CheckArgs {
        CheckArgs {
            files: vec![write(dir, "apps.yaml", APPS)],
            policies: vec![write(dir, "policies.yaml", POLICIES)],
            namespace: "default".into(),
            exempt_namespaces: vec![],
            strict: false,
            output: CheckOutput::Human,
            verbose: false,
        }
    }

    #[test]
    fn deny_fails_the_check_warn_only_with_strict() {
        let dir = tempfile::tempdir().expect("dir");
        let mut a = args(dir.path());
        let (checked, _, _) = check(&a).expect("checked");
        assert_eq!(checked.totals, CheckTotals { judged: 4, denied: 1, warned: 1, audited: 0, allowed: 2 });
        assert!(fails(&checked, false));
        let text = human(&checked, false);
        assert!(
            text.contains("DENY   Service pay/bare (") && text.contains("missing failover regions [gz, sz, hz]"),
            "{text}"
        );
        assert!(text.contains("WARN   Service shop/cart"), "{text}");
        assert!(!text.contains("governed"), "a governed Service complies: {text}");
        // Without the Deny: passes, unless --strict.
        a.files = vec![write(dir.path(), "shop.yaml", APPS.split("---\n").nth(3).expect("cart"))];
        let (checked, _, _) = check(&a).expect("checked");
        assert!(!fails(&checked, false));
        assert!(fails(&checked, true));
    }

    #[test]
    fn no_policy_anywhere_is_an_error_that_says_where_it_looked() {
        let dir = tempfile::tempdir().expect("dir");
        let mut a = args(dir.path());
        a.policies = vec![];
        let err = check(&a).expect_err("no policies").to_string();
        assert!(
            err.starts_with("no ContractPolicy in ") && err.ends_with("give the policies with --policies PATH"),
            "{err}"
        );
    }

    #[test]
    fn openreports_have_a_result_per_policy_and_object_and_our_own_name_and_label() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, cluster, objects) = check(&args(dir.path())).expect("checked");
        let reports = openreports(&cluster, &objects, "default");
        assert_eq!(reports.len(), 2, "pay and shop");
        let pay = reports.iter().find(|r| r["metadata"]["namespace"] == "pay").expect("pay");
        assert_eq!(pay["metadata"]["name"], REPORT_NAME);
        assert_eq!(pay["metadata"]["labels"]["app.kubernetes.io/managed-by"], MANAGED_BY);
        assert_eq!(pay["summary"]["fail"], 1);
        assert_eq!(pay["summary"]["pass"], 2, "the governed Service and its contract");
        let shop = reports.iter().find(|r| r["metadata"]["namespace"] == "shop").expect("shop");
        assert_eq!(shop["summary"]["warn"], 1);
    }
}
