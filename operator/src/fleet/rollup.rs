//! The roll-up: what the hub knows of every member becomes each propagated policy's `status.fleet`.
//! Pure.
//!
//! A member counts as compliant for a policy only when all of these hold: its API server answered at the
//! last attempt, it holds the hub's policy unchanged, its audit has judged this version of the policy
//! (`status.observedGeneration` = `metadata.generation` on the member), and that audit found no
//! violation. Anything unknown counts against: an unreachable member, or one with no webhook to audit,
//! is never compliant.

use std::collections::BTreeMap;

use crds::{ContractPolicy, ContractPolicySpec, ContractPolicyStatus, FleetMember, FleetStatus};
use k8s_openapi::jiff::Timestamp;

/// A member's copy of one policy, as the hub last read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Copy {
    /// The copy's spec (None: the member has no copy).
    pub spec: Option<ContractPolicySpec>,
    /// Whether the copy carries the hub's label (it is the hub's, not a member's own policy).
    pub labelled: bool,
    /// The copy's `metadata.generation`.
    pub generation: Option<i64>,
    /// What the member's audit wrote.
    pub status: Option<ContractPolicyStatus>,
    /// Why applying it failed, if it did.
    pub apply_error: Option<String>,
}

/// What the hub knows of a member.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// Whether the member's API server answered at the last attempt.
    pub reachable: bool,
    /// Why not, or why the last attempt failed (an API error: the server answered).
    pub error: Option<String>,
    /// Since when it has not answered (the first failed attempt of the current outage).
    pub unreachable_since: Option<Timestamp>,
    /// When it last answered.
    pub last_contact: Option<Timestamp>,
    /// Its copies of the propagated policies, by name, as last read (kept while it is unreachable).
    pub copies: BTreeMap<String, Copy>,
}

impl Observation {
    /// A member the hub cannot even try: its Secret is unusable.
    pub fn unusable(why: String) -> Self {
        Self { reachable: false, error: Some(why), ..Self::default() }
    }
}

/// One member's standing on one policy.
pub fn member_status(cluster: &str, spec: &ContractPolicySpec, seen: &Observation, policy: &str) -> FleetMember {
    let copy = seen.copies.get(policy);
    let status = copy.and_then(|c| c.status.as_ref());
    let in_sync = copy.is_some_and(|c| c.labelled && c.spec.as_ref() == Some(spec));
    let audited = copy.is_some_and(|c| {
        c.generation.is_some()
            && status.is_some_and(|s| s.observed_generation == c.generation && s.audit_time.is_some())
    });
    let violations = status.map(|s| s.violations).unwrap_or_default();
    let matched = status.map(|s| s.matched).unwrap_or_default();
    let message = if !seen.reachable {
        let since =
            seen.unreachable_since.map(|t| format!(" since {}", t.strftime("%Y-%m-%dT%H:%M:%SZ"))).unwrap_or_default();
        Some(format!("unreachable{since}: {}", seen.error.as_deref().unwrap_or("no answer")))
    } else if let Some(e) = copy.and_then(|c| c.apply_error.as_ref()).or(seen.error.as_ref()) {
        Some(format!("the hub cannot apply the policy: {e}"))
    } else if copy.is_none_or(|c| c.spec.is_none()) {
        Some("the member has no copy of the policy yet".to_owned())
    } else if !in_sync {
        Some("the member's copy differs from the hub's (edited on the member): the hub restores it".to_owned())
    } else if !audited {
        Some(format!(
            "not audited yet at generation {}: the member's webhook audit writes its status (is the webhook installed there?)",
            copy.and_then(|c| c.generation).unwrap_or_default()
        ))
    } else if violations > 0 {
        // The sample's message names the object and says what to fix.
        let first = status.and_then(|s| s.violation_samples.first()).map(|v| format!("; e.g. {}", v.message));
        Some(format!("{violations} of {matched} matched objects fall short{}", first.unwrap_or_default()))
    } else {
        None
    };
    FleetMember {
        cluster: cluster.to_owned(),
        reachable: seen.reachable,
        in_sync,
        compliant: seen.reachable && in_sync && audited && violations == 0,
        matched,
        violations,
        compliance: status.and_then(|s| s.compliance.clone()),
        audit_time: status.and_then(|s| s.audit_time.clone()),
        message,
    }
}

/// `status.fleet` of a propagated policy, over every member (sorted by name).
pub fn fleet_status(policy: &ContractPolicy, members: &BTreeMap<String, Observation>) -> FleetStatus {
    let name = kube::ResourceExt::name_any(policy);
    let members: Vec<FleetMember> =
        members.iter().map(|(cluster, seen)| member_status(cluster, &policy.spec, seen, &name)).collect();
    let clusters = members.len() as i64;
    let compliant = members.iter().filter(|m| m.compliant).count() as i64;
    let unreachable = members.iter().filter(|m| !m.reachable).count() as i64;
    FleetStatus { summary: format!("{compliant}/{clusters}"), clusters, compliant, unreachable, members }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn policy(generation: i64) -> ContractPolicy {
        let spec =
            serde_json::from_value(serde_json::json!({"failover": {"requiredRegions": ["gz", "sz"]}})).expect("spec");
        let mut p = ContractPolicy::new("baseline", spec);
        p.metadata.generation = Some(generation);
        p
    }

    fn audited(generation: i64, matched: i64, violations: i64) -> ContractPolicyStatus {
        ContractPolicyStatus {
            observed_generation: Some(generation),
            audit_time: Some(Time(Timestamp::from_second(1_000).expect("ts"))),
            matched,
            violations,
            compliance: Some(format!("{}%", if matched == 0 { 100 } else { (matched - violations) * 100 / matched })),
            violation_samples: if violations > 0 {
                vec![crds::ViolationSample {
                    kind: "Service".into(),
                    namespace: "shop".into(),
                    name: "cart".into(),
                    message: "ContractPolicy \"baseline\" audits Service shop/cart: missing failover regions [gz, sz]"
                        .into(),
                }]
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    fn seen(copy: Option<Copy>) -> Observation {
        Observation {
            reachable: true,
            copies: copy.into_iter().map(|c| ("baseline".to_owned(), c)).collect(),
            ..Default::default()
        }
    }

    fn copy(p: &ContractPolicy, generation: i64, status: Option<ContractPolicyStatus>) -> Copy {
        Copy { spec: Some(p.spec.clone()), labelled: true, generation: Some(generation), status, apply_error: None }
    }

    #[test]
    fn only_a_reachable_in_sync_audited_member_without_violations_is_compliant() {
        let p = policy(1);
        let mut members = BTreeMap::new();
        members.insert("a-ok".to_owned(), seen(Some(copy(&p, 3, Some(audited(3, 4, 0))))));
        members.insert("b-violating".to_owned(), seen(Some(copy(&p, 3, Some(audited(3, 4, 1))))));
        members.insert("c-stale-audit".to_owned(), seen(Some(copy(&p, 4, Some(audited(3, 4, 0))))));
        members.insert("d-no-webhook".to_owned(), seen(Some(copy(&p, 1, None))));
        let mut edited = copy(&p, 2, Some(audited(2, 4, 0)));
        edited.spec.as_mut().expect("spec").failover.required_regions.pop();
        members.insert("e-edited".to_owned(), seen(Some(edited)));
        let mut down = seen(Some(copy(&p, 3, Some(audited(3, 4, 0)))));
        down.reachable = false;
        down.error = Some("connection refused".into());
        down.unreachable_since = Some(Timestamp::from_second(2_000).expect("ts"));
        members.insert("f-down".to_owned(), down);
        members.insert("g-broken-secret".to_owned(), Observation::unusable("Secret x has no kubeconfig".into()));
        let mut foreign = copy(&p, 3, Some(audited(3, 4, 0)));
        foreign.labelled = false;
        members.insert("h-own-policy".to_owned(), seen(Some(foreign)));
        members.insert("i-no-copy".to_owned(), seen(None));

        let f = fleet_status(&p, &members);
        assert_eq!((f.summary.as_str(), f.clusters, f.compliant, f.unreachable), ("1/9", 9, 1, 2));
        let by: BTreeMap<_, _> = f.members.iter().map(|m| (m.cluster.as_str(), m)).collect();
        assert!(by["a-ok"].compliant && by["a-ok"].message.is_none());
        let msg = |c: &str| by[c].message.clone().unwrap_or_default();
        assert_eq!(
            msg("b-violating"),
            "1 of 4 matched objects fall short; e.g. ContractPolicy \"baseline\" audits Service shop/cart: missing failover regions [gz, sz]"
        );
        assert!(msg("c-stale-audit").contains("not audited yet at generation 4"), "{}", msg("c-stale-audit"));
        assert!(msg("d-no-webhook").contains("is the webhook installed there?"));
        assert!(!by["e-edited"].in_sync && msg("e-edited").contains("restores it"));
        assert_eq!(msg("f-down"), "unreachable since 1970-01-01T00:33:20Z: connection refused");
        assert_eq!((by["f-down"].matched, by["f-down"].compliant), (4, false), "last known numbers, never compliant");
        assert!(msg("g-broken-secret").contains("has no kubeconfig") && !by["g-broken-secret"].reachable);
        assert!(!by["h-own-policy"].in_sync, "a member's own policy of that name is not the hub's");
        assert!(msg("i-no-copy").contains("no copy"));
        assert_eq!(f.members.iter().map(|m| m.cluster.as_str()).collect::<Vec<_>>().first(), Some(&"a-ok"), "sorted");
    }

    #[test]
    fn an_apply_error_says_so_and_an_empty_fleet_is_zero_of_zero() {
        let p = policy(1);
        let mut c = copy(&p, 1, None);
        c.apply_error = Some("contractpolicies is forbidden".into());
        let mut members = BTreeMap::new();
        members.insert("m".to_owned(), seen(Some(c)));
        let f = fleet_status(&p, &members);
        assert_eq!(
            f.members[0].message.as_deref(),
            Some("the hub cannot apply the policy: contractpolicies is forbidden")
        );
        assert_eq!(fleet_status(&p, &BTreeMap::new()).summary, "0/0");
    }
}
