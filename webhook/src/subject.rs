//! What the webhook judges: a Service or a ChannelContract, what it declares (its failover regions and
//! the contracts that govern it), built the same way for admission and for the audit. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crds::{CONTRACT_ANNOTATION, FAILOVER_REGIONS_ANNOTATION, MatchKind};

/// The kinds the webhook judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Service.
    Service,
    /// csp.contracts.dev/v1alpha1 ChannelContract.
    ChannelContract,
}

impl Kind {
    /// The kind's name as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::ChannelContract => "ChannelContract",
        }
    }

    pub(crate) fn as_match_kind(self) -> MatchKind {
        match self {
            Self::Service => MatchKind::Service,
            Self::ChannelContract => MatchKind::ChannelContract,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ChannelContract as the index knows it: which Service it governs and which regions it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractRef {
    /// The contract's name.
    pub name: String,
    /// `spec.service`.
    pub service: String,
    /// `spec.failover.regions`.
    pub regions: Vec<String>,
}

/// What an object declares: its failover regions and the contracts that govern it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declaration {
    /// Declared regions: unique, in the order first declared.
    pub regions: Vec<String>,
    /// Names of the ChannelContracts that govern the object (Services only).
    pub governed_by: Vec<String>,
}

/// The object under judgement.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Service or ChannelContract.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What it declares.
    pub declaration: Declaration,
    /// For a ChannelContract judged by the audit: its drills ([`DrillEvidence`]). Admission never judges
    /// drills, and leaves this empty.
    pub drills: Option<DrillEvidence>,
}

/// What the audit knows of a ChannelContract's drills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrillEvidence {
    /// When the contract was created (its grace period starts there).
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    /// When a drill of it last Passed (`status.lastPassedDrillTime`).
    pub last_passed: Option<k8s_openapi::jiff::Timestamp>,
}

impl Subject {
    /// A Service: what it declares comes from its annotations and from the ChannelContracts of its
    /// namespace that govern it ([`service_declaration`]). Admission and the audit both build Services
    /// here, so they cannot judge one differently.
    pub fn service(
        namespace: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        contracts_in_namespace: &[ContractRef],
    ) -> Self {
        Self {
            kind: Kind::Service,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels,
            declaration: service_declaration(name, annotations, contracts_in_namespace),
            drills: None,
        }
    }

    /// A ChannelContract: what it declares is its `spec.failover.regions`.
    pub fn contract(namespace: &str, name: &str, labels: BTreeMap<String, String>, regions: &[String]) -> Self {
        Self {
            kind: Kind::ChannelContract,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels,
            declaration: contract_declaration(regions),
            drills: None,
        }
    }

    /// The same subject with what the audit knows of its drills.
    pub fn with_drills(mut self, evidence: DrillEvidence) -> Self {
        self.drills = Some(evidence);
        self
    }
}

/// Splits a region list as users write it in the annotation: commas, semicolons, any white space,
/// duplicates and empty items are all fine. (The generated ValidatingAdmissionPolicies split alike:
/// [`crate::vap`].)
pub fn parse_regions(text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    text.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|r| !r.is_empty())
        .filter(|r| seen.insert(r.to_string()))
        .map(str::to_owned)
        .collect()
}

pub(crate) fn push_unique(into: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// What a Service declares: the regions of its annotation, plus those of the ChannelContracts in its
/// namespace that govern it (`spec.service` names it). When the Service's `csp.contracts.dev/contract`
/// annotation names a contract that governs it, only that contract counts.
pub fn service_declaration(
    name: &str,
    annotations: &BTreeMap<String, String>,
    contracts_in_namespace: &[ContractRef],
) -> Declaration {
    let mut decl = Declaration::default();
    if let Some(text) = annotations.get(FAILOVER_REGIONS_ANNOTATION) {
        push_unique(&mut decl.regions, parse_regions(text));
    }
    let governing: Vec<&ContractRef> = contracts_in_namespace.iter().filter(|c| c.service == name).collect();
    let named = annotations.get(CONTRACT_ANNOTATION).map(|n| n.trim());
    let chosen: Vec<&ContractRef> = match named {
        Some(n) if governing.iter().any(|c| c.name == n) => governing.into_iter().filter(|c| c.name == n).collect(),
        _ => governing,
    };
    let mut chosen = chosen;
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    for c in chosen {
        decl.governed_by.push(c.name.clone());
        push_unique(&mut decl.regions, c.regions.iter().cloned());
    }
    decl
}

/// What a ChannelContract declares: its `spec.failover.regions`.
pub fn contract_declaration(regions: &[String]) -> Declaration {
    let mut decl = Declaration::default();
    push_unique(&mut decl.regions, regions.iter().cloned());
    decl
}
