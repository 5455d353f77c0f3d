//! A cluster made of files: the ContractPolicies, Namespaces and ChannelContracts that the webhook's caches
//! would hold, and the judgement of one object by the webhook's own admission code
//! ([`webhook::admission::review`]) on an AdmissionReview built as the API server builds it. Nothing is
//! re-implemented here: an answer offline is the answer the webhook gives.

use std::collections::BTreeMap;
use std::sync::Arc;

use crds::{ChannelContractSpec, ContractPolicy};
use kube::core::admission::AdmissionResponse;
use serde::Serialize;
use serde_json::{Value, json};
use webhook::admission::{self, Index, Settings};
use webhook::evaluate::{self, ContractRef};

use crate::manifests::Manifest;

/// The namespace of an object that names none, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why the files do not make a cluster.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfflineError {
    /// A ContractPolicy that cannot be read at all.
    #[error("{source_name}: ContractPolicy {name} cannot be read: {reason}")]
    Policy {
        /// Where it came from.
        source_name: String,
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A ContractPolicy that the API server would refuse (the webhook would skip it).
    #[error("{source_name}: ContractPolicy {name} is invalid: {reason}")]
    InvalidPolicy {
        /// Where it came from.
        source_name: String,
        /// Its name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Two ContractPolicies with one name.
    #[error("{source_name}: ContractPolicy {name} is defined twice (also in {first})")]
    DuplicatePolicy {
        /// The second.
        source_name: String,
        /// Its name.
        name: String,
        /// The first.
        first: String,
    },
}

/// What the webhook's caches would hold.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    policies: Vec<(String, Arc<ContractPolicy>)>,
    contracts: BTreeMap<String, Vec<ContractRef>>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    settings: Settings,
}

impl Cluster {
    /// An empty cluster whose webhook exempts `exempt_namespaces` besides the system ones.
    pub fn new(exempt_namespaces: Vec<String>) -> Self {
        Self { settings: Settings { exempt_namespaces }, ..Self::default() }
    }

    /// Adds a ContractPolicy, checked as the API server checks it.
    pub fn add_policy(&mut self, m: &Manifest) -> Result<(), OfflineError> {
        let name = m.name().to_owned();
        let policy: ContractPolicy = serde_json::from_value(m.value.clone()).map_err(|e| OfflineError::Policy {
            source_name: m.source.clone(),
            name: name.clone(),
            reason: e.to_string(),
        })?;
        if let Some(reason) = evaluate::unreadable(&policy.spec) {
            return Err(OfflineError::InvalidPolicy { source_name: m.source.clone(), name, reason });
        }
        if let Some((first, _)) = self.policies.iter().find(|(_, p)| p.metadata.name.as_deref() == Some(&name)) {
            return Err(OfflineError::DuplicatePolicy { source_name: m.source.clone(), name, first: first.clone() });
        }
        self.policies.push((m.source.clone(), Arc::new(policy)));
        Ok(())
    }

    /// Adds what the webhook learns from an object: a Namespace's labels (with the
    /// `kubernetes.io/metadata.name` label the API server adds), a ChannelContract's Service and regions.
    /// Returns whether the object was one of those.
    pub fn add_object(&mut self, m: &Manifest, default_namespace: &str) -> bool {
        match (m.group(), m.kind()) {
            ("", "Namespace") => {
                let mut labels: BTreeMap<String, String> = m
                    .value
                    .pointer("/metadata/labels")
                    .and_then(|l| serde_json::from_value(l.clone()).ok())
                    .unwrap_or_default();
                labels.insert("kubernetes.io/metadata.name".to_owned(), m.name().to_owned());
                self.namespaces.insert(m.name().to_owned(), labels);
                true
            }
            (crds::GROUP, "ChannelContract") => {
                let spec: Option<ChannelContractSpec> =
                    m.value.get("spec").and_then(|s| serde_json::from_value(s.clone()).ok());
                let Some(spec) = spec else { return false };
                let namespace = m.namespace().unwrap_or(default_namespace).to_owned();
                let contracts = self.contracts.entry(namespace).or_default();
                contracts.retain(|c| c.name != m.name());
                contracts.push(ContractRef {
                    name: m.name().to_owned(),
                    service: spec.service,
                    regions: spec.failover.map(|f| f.regions).unwrap_or_default(),
                });
                true
            }
            _ => false,
        }
    }

    /// The policies, by name.
    pub fn policies(&self) -> impl Iterator<Item = &ContractPolicy> {
        self.policies.iter().map(|(_, p)| p.as_ref())
    }

    /// The namespaces whose labels are known.
    pub fn namespace_labels_map(&self) -> &BTreeMap<String, BTreeMap<String, String>> {
        &self.namespaces
    }

    /// The namespaces the webhook never judges besides the system ones.
    pub fn exempt_namespaces(&self) -> &[String] {
        &self.settings.exempt_namespaces
    }

    /// Judges one request as the webhook would: `old` makes it an UPDATE.
    pub fn judge(&self, object: &Value, old: Option<&Value>, namespace: &str) -> Judgement {
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let judged = matches!((group, kind), ("", "Service") | (crds::GROUP, "ChannelContract"));
        if !judged {
            return Judgement::not_judged(format!(
                "the webhook judges Services and ChannelContracts; the API server does not send it {kind}"
            ));
        }
        let mut object = object.clone();
        object["metadata"]["namespace"] = json!(namespace);
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let plural = if kind == "Service" { "services" } else { "channelcontracts" };
        let operation = if old.is_some() { "UPDATE" } else { "CREATE" };
        let review = json!({
            "apiVersion": admission::API_VERSION,
            "kind": "AdmissionReview",
            "request": {
                "uid": "00000000-0000-0000-0000-000000000000",
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": plural},
                "name": name,
                "namespace": namespace,
                "operation": operation,
                "userInfo": {"username": "kubectl-contracts"},
                "object": object,
                "oldObject": old,
                "dryRun": true,
            }
        });
        let body = serde_json::to_vec(&review).unwrap_or_default();
        match admission::review(&body, self, &self.settings) {
            Ok((answer, outcome)) => Judgement::from_answer(answer.response, outcome),
            Err(bad) => Judgement {
                decision: Decision::Deny,
                message: Some(bad.to_string()),
                warnings: Vec::new(),
                audits: Vec::new(),
                reason: "bad-request".to_owned(),
            },
        }
    }
}

impl Index for Cluster {
    fn policies(&self) -> Vec<Arc<ContractPolicy>> {
        self.policies.iter().map(|(_, p)| Arc::clone(p)).collect()
    }

    fn contracts_in(&self, namespace: &str) -> Vec<ContractRef> {
        self.contracts.get(namespace).cloned().unwrap_or_default()
    }

    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.get(namespace).cloned()
    }
}

/// What the webhook answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub enum Decision {
    /// Admitted without a word.
    Allow,
    /// Admitted with warnings.
    Warn,
    /// Refused.
    Deny,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Allow => "Allow",
            Self::Warn => "Warn",
            Self::Deny => "Deny",
        })
    }
}

/// The webhook's answer to one request, as `kubectl` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    /// Allow, Warn or Deny.
    pub decision: Decision,
    /// The denial message (one line per denying policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The warnings kubectl prints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What Audit policies would report (admission says nothing of them; the audit does).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audits: Vec<String>,
    /// Why, when no policy was evaluated: `exempt-namespace`, `opted-out`, `not-judged`, …; `policy`
    /// otherwise.
    pub reason: String,
}

impl Judgement {
    fn not_judged(message: String) -> Self {
        Self {
            decision: Decision::Allow,
            message: None,
            warnings: Vec::new(),
            audits: vec![],
            reason: format!("not-judged: {message}"),
        }
    }

    fn from_answer(response: Option<AdmissionResponse>, outcome: admission::Outcome) -> Self {
        let audits = outcome
            .evaluation
            .as_ref()
            .map(|d| {
                d.verdicts
                    .iter()
                    .filter(|v| v.action == crds::EnforcementAction::Audit)
                    .map(|v| v.message.clone())
                    .collect()
            })
            .unwrap_or_default();
        let Some(response) = response else {
            return Self {
                decision: Decision::Deny,
                message: Some("the webhook gave no response".to_owned()),
                warnings: Vec::new(),
                audits,
                reason: outcome.reason.to_owned(),
            };
        };
        let warnings = response.warnings.clone().unwrap_or_default();
        let decision = if !response.allowed {
            Decision::Deny
        } else if warnings.is_empty() {
            Decision::Allow
        } else {
            Decision::Warn
        };
        let message = (!response.allowed).then(|| response.result.message.clone());
        Self { decision, message, warnings, audits, reason: outcome.reason.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse;

    fn cluster(policies: &str, objects: &str) -> Cluster {
        let mut c = Cluster::new(vec![]);
        for m in parse("policies.yaml", policies).expect("policies") {
            c.add_policy(&m).expect("a policy");
        }
        for m in parse("objects.yaml", objects).expect("objects") {
            c.add_object(&m, DEFAULT_NAMESPACE);
        }
        c
    }

    const BASELINE: &str = "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {name: baseline}\nspec:\n  enforcementAction: Deny\n  match: {namespaces: [pay]}\n  failover: {requiredRegions: [gz, sz, hz]}\n";

    fn service(annotation: &str) -> Value {
        let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pv"}, "spec": {"ports": [{"port": 80}]}});
        if !annotation.is_empty() {
            s["metadata"]["annotations"] = json!({"csp.contracts.dev/failover-regions": annotation});
        }
        s
    }

    #[test]
    fn the_webhooks_own_message_comes_back_for_a_service_without_regions() {
        let c = cluster(BASELINE, "");
        let j = c.judge(&service(""), None, "pay");
        assert_eq!(j.decision, Decision::Deny);
        assert_eq!(
            j.message.as_deref(),
            Some(
                "ContractPolicy \"baseline\" denied Service pay/pv: missing failover regions [gz, sz, hz]; required [gz, sz, hz], declared []. Declare them with annotation csp.contracts.dev/failover-regions=\"gz,sz,hz\" or in a ChannelContract's spec.failover.regions."
            )
        );
        assert_eq!(c.judge(&service("gz,sz,hz"), None, "pay").decision, Decision::Allow);
        // Another namespace: the policy does not match.
        assert_eq!(c.judge(&service(""), None, "other").decision, Decision::Allow);
    }

    #[test]
    fn a_contract_in_the_files_governs_its_service() {
        let contract = "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {name: pv, namespace: pay}\nspec: {service: pv, port: 80, sla: {maxLatency: 100ms}, failover: {regions: [gz, sz, hz]}}\n";
        let c = cluster(BASELINE, contract);
        assert_eq!(c.judge(&service(""), None, "pay").decision, Decision::Allow);
    }

    #[test]
    fn warn_and_audit_policies_admit_and_say_what_they_would() {
        let policies = BASELINE.replace("Deny", "Warn")
            + "---\n"
            + &BASELINE.replace("Deny", "Audit").replace("name: baseline", "name: watching");
        let c = cluster(&policies, "");
        let j = c.judge(&service("gz"), None, "pay");
        assert_eq!(j.decision, Decision::Warn);
        assert!(j.warnings[0].starts_with("ContractPolicy \"baseline\" warns about Service pay/pv"), "{j:?}");
        assert!(j.audits[0].starts_with("ContractPolicy \"watching\" audits Service pay/pv"), "{j:?}");
    }

    #[test]
    fn an_update_that_keeps_an_old_shortfall_is_admitted_with_a_warning() {
        let c = cluster(BASELINE, "");
        let mut labelled = service("gz");
        labelled["metadata"]["labels"] = json!({"team": "pay"});
        let j = c.judge(&labelled, Some(&service("gz")), "pay");
        assert_eq!(j.decision, Decision::Warn, "{j:?}");
        assert!(j.warnings[0].contains("would deny"), "{j:?}");
        assert_eq!(c.judge(&service("gz,sz"), Some(&service("gz")), "pay").decision, Decision::Deny);
    }

    #[test]
    fn system_and_opted_out_namespaces_are_not_judged_and_other_kinds_are_not_sent() {
        let everywhere = BASELINE.replace("match: {namespaces: [pay]}", "match: {}");
        let c = cluster(
            &everywhere,
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: free, labels: {csp.contracts.dev/webhook: disabled}}\n",
        );
        assert_eq!(c.judge(&service(""), None, "kube-system").reason, "exempt-namespace");
        assert_eq!(c.judge(&service(""), None, "free").reason, "opted-out");
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        let j = c.judge(&cm, None, "pay");
        assert_eq!(j.decision, Decision::Allow);
        assert!(j.reason.starts_with("not-judged"), "{j:?}");
    }

    #[test]
    fn a_policy_the_api_server_would_refuse_is_an_error_not_a_silent_skip() {
        let broken = BASELINE.replace(
            "match: {namespaces: [pay]}",
            "match: {labelSelector: {matchExpressions: [{key: a, operator: Bogus}]}}",
        );
        let mut c = Cluster::new(vec![]);
        let m = &parse("p.yaml", &broken).expect("yaml")[0];
        let err = c.add_policy(m).expect_err("invalid");
        assert!(err.to_string().starts_with("p.yaml: ContractPolicy baseline is invalid: "), "{err}");
        let mut c = Cluster::new(vec![]);
        let m = &parse("p.yaml", BASELINE).expect("yaml")[0];
        c.add_policy(m).expect("first");
        assert!(matches!(c.add_policy(m), Err(OfflineError::DuplicatePolicy { .. })));
    }
}
