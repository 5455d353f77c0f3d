//! `ContractPolicy`: a governance baseline that the admission webhook enforces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{
    conditions_schema, duration_schema, label_selector_schema, namespace_list_schema, region_list_schema,
};

/// A governance baseline that the admission webhook enforces on Services and ChannelContracts. Apply the
/// same policy in every cluster of a federation.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "csp.contracts.dev",
    version = "v1alpha1",
    kind = "ContractPolicy",
    plural = "contractpolicies",
    singular = "contractpolicy",
    shortname = "cpol",
    category = "csp",
    status = "ContractPolicyStatus",
    derive = "PartialEq",
    doc = "A ContractPolicy states a governance baseline (for example: every Service declares failover regions gz, sz and hz) that the admission webhook enforces on Services and ChannelContracts, and that its audit reports on.",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.enforcementAction","description":"Deny, Warn or Audit"}"#,
    printcolumn = r#"{"name":"Regions","type":"string","jsonPath":".spec.failover.requiredRegions","description":"Regions every matched object must declare"}"#,
    printcolumn = r#"{"name":"Enforced-By","type":"string","jsonPath":".status.conditions[?(@.type==\"Enforced\")].reason","priority":1,"description":"Webhook or ValidatingAdmissionPolicy: what judges the policy's admission requests"}"#,
    printcolumn = r#"{"name":"Violations","type":"integer","jsonPath":".status.violations","description":"Matched objects that fall short, at the last audit"}"#,
    printcolumn = r#"{"name":"Compliance","type":"string","jsonPath":".status.compliance","description":"Share of matched objects that comply, at the last audit"}"#,
    printcolumn = r#"{"name":"Fleet","type":"string","jsonPath":".status.fleet.summary","description":"On a fleet hub: member clusters that comply, of those the policy is propagated to"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.enforcement) || self.enforcement != 'ValidatingAdmissionPolicy' || !has(self.requireContract) || !self.requireContract"
).message("spec.enforcement ValidatingAdmissionPolicy cannot enforce spec.requireContract (CEL sees only the object under admission, not the ChannelContracts of its namespace): use enforcement Webhook or Auto").field_path(".enforcement").reason(Reason::FieldValueInvalid))]
pub struct ContractPolicySpec {
    /// What happens to a request that falls short: Deny rejects it, Warn admits it with a warning that
    /// kubectl prints, Audit admits it and only the audit reports it.
    #[serde(default)]
    pub enforcement_action: EnforcementAction,

    /// What judges admission requests: Webhook (the default) answers them in the webhook;
    /// ValidatingAdmissionPolicy has the webhook generate and own a ValidatingAdmissionPolicy and binding
    /// that the API server evaluates in-process (CEL), with the same messages, for a rule CEL can express
    /// (anything but `requireContract`); Auto chooses ValidatingAdmissionPolicy whenever the rule allows.
    /// The audit judges every policy either way. The status condition `Enforced` says which one does.
    #[serde(default)]
    pub enforcement: Enforcement,

    /// Which objects the policy applies to.
    #[serde(default)]
    pub r#match: PolicyMatch,

    /// The failover regions that matched objects must declare.
    #[serde(default)]
    pub failover: FailoverRequirement,

    /// true: a matched Service must be governed by a ChannelContract in its namespace (one whose
    /// `spec.service` names it).
    #[serde(default)]
    pub require_contract: bool,

    /// Require proof: every matched ChannelContract must have a ContractDrill that Passed within the
    /// window. The audit reports the others; admission does not judge drills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillRequirement>,
}

/// How recent a contract's last passed drill must be.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DrillRequirement {
    /// The window (e.g. `720h`): a contract with no Passed drill that finished within it is a violation.
    /// A contract younger than the window is not judged yet (its grace period).
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m')").message("spec.drill.requiredWithin must be at least 1m"))]
    pub required_within: String,
}

/// What happens to a request that falls short of a policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EnforcementAction {
    // Reject the request.
    #[default]
    Deny,
    // Admit it with an admission warning.
    Warn,
    // Admit it; the audit reports it.
    Audit,
}

/// What judges a policy's admission requests.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Enforcement {
    // The webhook.
    #[default]
    Webhook,
    // A ValidatingAdmissionPolicy and binding that the webhook generates and owns.
    ValidatingAdmissionPolicy,
    // ValidatingAdmissionPolicy when the rule can be expressed in CEL, else the webhook.
    Auto,
}

/// Which objects a policy applies to. All conditions must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// Kinds the policy applies to: Service, ChannelContract or both.
    #[serde(default = "default_kinds")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(k, self.exists_one(l, l == k))").message("spec.match.kinds must not repeat a kind"))]
    pub kinds: Vec<MatchKind>,

    /// Namespaces the policy applies to. Empty: all namespaces.
    #[serde(default)]
    #[schemars(schema_with = "namespace_list_schema")]
    pub namespaces: Vec<String>,

    /// Namespaces the policy never applies to. kube-system, kube-public, kube-node-lease and the
    /// project's own namespace are always excluded.
    #[serde(default)]
    #[schemars(schema_with = "namespace_list_schema")]
    pub excluded_namespaces: Vec<String>,

    /// Only namespaces whose labels match. Omitted: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector_schema")]
    pub namespace_selector: Option<LabelSelector>,

    /// Only objects whose labels match. Omitted: every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector_schema")]
    pub label_selector: Option<LabelSelector>,
}

impl Default for PolicyMatch {
    fn default() -> Self {
        Self {
            kinds: default_kinds(),
            namespaces: Vec::new(),
            excluded_namespaces: Vec::new(),
            namespace_selector: None,
            label_selector: None,
        }
    }
}

fn default_kinds() -> Vec<MatchKind> {
    vec![MatchKind::Service, MatchKind::ChannelContract]
}

/// A kind that a policy can match.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchKind {
    // core/v1 Service.
    Service,
    // csp.contracts.dev/v1alpha1 ChannelContract.
    ChannelContract,
}

/// The failover regions that matched objects must declare.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRequirement {
    /// Every one of these regions must be declared.
    #[serde(default)]
    #[schemars(schema_with = "region_list_schema")]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(s, s == r))").message("spec.failover.requiredRegions must not repeat a region"))]
    pub required_regions: Vec<String>,

    /// At least this many regions must be declared. Omitted: no minimum beyond `requiredRegions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub min_regions: Option<i32>,
}

/// What the last audit found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContractPolicyStatus {
    /// The `metadata.generation` that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Accepted and Audited, per Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// When the last audit finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_time: Option<Time>,

    /// Existing objects the policy matched at the last audit.
    #[serde(default)]
    pub matched: i64,

    /// Matched objects that fall short.
    #[serde(default)]
    pub violations: i64,

    /// The share of matched objects that comply, e.g. `97.5%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<String>,

    /// Up to 20 of the objects that fall short, with what is wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub violation_samples: Vec<ViolationSample>,

    /// On a fleet hub, for a policy labelled `csp.contracts.dev/propagate: "true"`: how every member
    /// cluster stands. Written by the hub (`operator fleet`), never by the audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// The label that makes the fleet hub apply a ContractPolicy to every member cluster.
pub const PROPAGATE_LABEL: &str = "csp.contracts.dev/propagate";
/// The label of a Secret in the hub's namespace that registers a member cluster (its value: the member's
/// name); the Secret holds a kubeconfig.
pub const MEMBER_CLUSTER_LABEL: &str = "csp.contracts.dev/member-cluster";
/// The label the hub puts on every policy it applies to a member: the hub's name.
pub const FLEET_HUB_LABEL: &str = "csp.contracts.dev/fleet-hub";

/// How a propagated policy stands across the fleet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// `compliant/clusters`, e.g. `23/23` (the `FLEET` column).
    pub summary: String,
    /// Member clusters the policy is propagated to.
    pub clusters: i64,
    /// Members that are reachable, hold the hub's policy unchanged, were audited against it and have no
    /// violation. An unreachable member is never counted here.
    pub compliant: i64,
    /// Members whose API server did not answer at the last attempt.
    pub unreachable: i64,
    /// One entry per member, sorted by name.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub members: Vec<FleetMember>,
}

/// One member cluster's copy of a propagated policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetMember {
    /// The member's name (its Secret's `csp.contracts.dev/member-cluster` label, or the Argo CD cluster
    /// Secret's `name`).
    pub cluster: String,
    /// Whether the member's API server answered at the last attempt.
    pub reachable: bool,
    /// Whether the member holds the hub's policy unchanged (the hub restores it when it drifts).
    pub in_sync: bool,
    /// Whether the member counts as compliant: reachable, in sync, audited against this version of the
    /// policy, with no violation.
    pub compliant: bool,
    /// Objects the policy matched on the member at its last audit.
    #[serde(default)]
    pub matched: i64,
    /// Matched objects that fall short on the member.
    #[serde(default)]
    pub violations: i64,
    /// The member's compliance, e.g. `97.5%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<String>,
    /// When the member's audit last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_time: Option<Time>,
    /// Why the member is not compliant, when it is not (unreachable, out of sync, not audited, violations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One object that falls short of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ViolationSample {
    /// Service or ChannelContract.
    pub kind: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// What is wrong and how to fix it.
    pub message: String,
}
