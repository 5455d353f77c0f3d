//! The pure policy evaluation: an object, the operation, the ContractPolicies, what governs the object
//! and its namespace's labels in; allow / deny / warn with messages out. No client, no clock, no I/O.

use std::collections::BTreeMap;

use crds::{
    ContractPolicy, ContractPolicySpec, EnforcementAction, FAILOVER_REGIONS_ANNOTATION, WEBHOOK_OPT_OUT_LABEL,
    WEBHOOK_OPT_OUT_VALUE,
};

use crate::subject::push_unique;
pub use crate::subject::{
    ContractRef, Declaration, DrillEvidence, Kind, Subject, contract_declaration, parse_regions, service_declaration,
};
use kube::core::{Selector, SelectorExt};

/// Namespaces that no policy ever matches, whatever it says.
pub const ALWAYS_EXEMPT: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Why a policy enforces nothing, if it does not: a spec that breaks the API's rules, such as a selector
/// that cannot be read (stored before the CRD's rules refused it). Such a policy is `Accepted=False` and
/// is skipped by admission and the audit alike: a typo in a policy never blocks the cluster.
pub fn unreadable(spec: &ContractPolicySpec) -> Option<String> {
    crds::validate::policy(spec).err().map(|e| format!("{e}; the policy enforces nothing until it is fixed"))
}

/// Whether a namespace opted out of the webhook (label `csp.contracts.dev/webhook: disabled`).
pub fn opted_out(namespace_labels: Option<&BTreeMap<String, String>>) -> bool {
    namespace_labels.and_then(|l| l.get(WEBHOOK_OPT_OUT_LABEL)).is_some_and(|v| v == WEBHOOK_OPT_OUT_VALUE)
}

/// Whether a policy applies to a subject.
///
/// `namespace_labels` is `None` when the namespace is unknown; a policy with a namespace selector then
/// applies (fail closed). A policy whose selectors cannot be read applies nowhere ([`unreadable`]; callers
/// leave such policies out before they ask).
pub fn matches(
    spec: &ContractPolicySpec,
    subject: &Subject,
    namespace_labels: Option<&BTreeMap<String, String>>,
    exempt_namespaces: &[String],
) -> bool {
    if is_exempt(&subject.namespace, exempt_namespaces) || opted_out(namespace_labels) {
        return false;
    }
    let m = &spec.r#match;
    if !m.kinds.contains(&subject.kind.as_match_kind()) {
        return false;
    }
    if !m.namespaces.is_empty() && !m.namespaces.contains(&subject.namespace) {
        return false;
    }
    if m.excluded_namespaces.contains(&subject.namespace) {
        return false;
    }
    if let Some(selector) = &m.namespace_selector {
        match (Selector::try_from(selector.clone()), namespace_labels) {
            (Err(_), _) => return false,
            (Ok(sel), Some(labels)) if !sel.matches(labels) => return false,
            _ => {}
        }
    }
    if let Some(selector) = &m.label_selector {
        match Selector::try_from(selector.clone()) {
            Ok(sel) if sel.matches(&subject.labels) => {}
            _ => return false,
        }
    }
    true
}

/// Whether a namespace is never matched.
pub fn is_exempt(namespace: &str, exempt_namespaces: &[String]) -> bool {
    ALWAYS_EXEMPT.contains(&namespace) || exempt_namespaces.iter().any(|n| n == namespace)
}

/// One thing an object lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Required regions that are not declared.
    MissingRegions {
        /// Required and not declared, in the policy's order.
        missing: Vec<String>,
        /// What the policy requires.
        required: Vec<String>,
    },
    /// Fewer regions declared than the policy's minimum.
    TooFewRegions {
        /// The policy's minimum.
        min: i32,
    },
    /// A Service that no ChannelContract governs, where the policy requires one.
    NoContract,
    /// A ChannelContract with no Passed ContractDrill within the policy's `spec.drill.requiredWithin`
    /// (the audit's judgement only: admission does not judge drills).
    NoRecentDrill {
        /// The window, as the policy writes it (`720h`).
        window: String,
        /// When a drill last passed (RFC 3339), if ever.
        last_passed: Option<String>,
    },
}

/// [`problems`] and, for a ChannelContract whose drills the audit knows ([`Subject::drills`]), whether it
/// has the proof a policy's `spec.drill.requiredWithin` asks for at `now`. A contract younger than the
/// window is in its grace period; a contract whose status says nothing of drills and that is older than the
/// window falls short.
pub fn audit_problems(spec: &ContractPolicySpec, subject: &Subject, now: k8s_openapi::jiff::Timestamp) -> Vec<Problem> {
    let mut out = problems(spec, subject);
    let (Some(requirement), Some(evidence)) = (&spec.drill, subject.drills) else { return out };
    let Ok(window) = crds::duration::parse(&requirement.required_within) else { return out };
    let within = |t: k8s_openapi::jiff::Timestamp| now.duration_since(t).as_secs_f64() <= window.as_secs_f64();
    if evidence.created.is_some_and(within) || evidence.last_passed.is_some_and(within) {
        return out;
    }
    out.push(Problem::NoRecentDrill {
        window: requirement.required_within.clone(),
        last_passed: evidence.last_passed.map(|t| t.to_string()),
    });
    out
}

/// The problems of a subject under one policy; empty means it complies.
pub fn problems(spec: &ContractPolicySpec, subject: &Subject) -> Vec<Problem> {
    let declared = &subject.declaration.regions;
    let mut out = Vec::new();
    let required = &spec.failover.required_regions;
    let missing: Vec<String> = required.iter().filter(|r| !declared.contains(r)).cloned().collect();
    if !missing.is_empty() {
        out.push(Problem::MissingRegions { missing, required: required.clone() });
    }
    if let Some(min) = spec.failover.min_regions
        && (declared.len() as i64) < i64::from(min)
    {
        out.push(Problem::TooFewRegions { min });
    }
    if spec.require_contract && subject.kind == Kind::Service && subject.declaration.governed_by.is_empty() {
        out.push(Problem::NoContract);
    }
    out
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

/// The text that says what is wrong and how to fix it, without the policy's name.
pub fn describe(subject: &Subject, problems: &[Problem]) -> String {
    let declared = &subject.declaration.regions;
    let mut what = Vec::new();
    let mut wanted: Vec<String> = Vec::new();
    let mut fixes = Vec::new();
    for p in problems {
        match p {
            Problem::MissingRegions { missing, required } => {
                what.push(format!(
                    "missing failover regions {}; required {}, declared {}",
                    list(missing),
                    list(required),
                    list(declared)
                ));
                push_unique(&mut wanted, required.iter().cloned());
            }
            Problem::TooFewRegions { min } => {
                let noun = if declared.len() == 1 { "region" } else { "regions" };
                what.push(format!(
                    "declares {} failover {noun} {}; at least {min} required",
                    declared.len(),
                    list(declared)
                ));
            }
            Problem::NoContract => what.push("is not governed by a ChannelContract".to_owned()),
            Problem::NoRecentDrill { window, last_passed } => what.push(format!(
                "has no ContractDrill that Passed within {window} (last passed: {})",
                last_passed.as_deref().unwrap_or("never")
            )),
        }
    }
    let region_problem =
        problems.iter().any(|p| matches!(p, Problem::MissingRegions { .. } | Problem::TooFewRegions { .. }));
    if region_problem {
        push_unique(&mut wanted, declared.iter().cloned());
        let min = problems.iter().find_map(|p| match p {
            Problem::TooFewRegions { min } => Some(*min),
            _ => None,
        });
        let at_least = match min {
            Some(m) if wanted.len() < m as usize => format!(" (at least {m} regions)"),
            _ => String::new(),
        };
        let value = if wanted.is_empty() { "<region>,<region>".to_owned() } else { wanted.join(",") };
        fixes.push(match subject.kind {
            Kind::Service => format!(
                "Declare them with annotation {FAILOVER_REGIONS_ANNOTATION}=\"{value}\"{at_least} or in a ChannelContract's spec.failover.regions."
            ),
            Kind::ChannelContract => {
                format!("Declare them in spec.failover.regions, e.g. regions: [{}]{at_least}.", value.replace(',', ", "))
            }
        });
    }
    if problems.contains(&Problem::NoContract) {
        fixes.push(format!(
            "Create a ChannelContract in namespace {} with spec.service: {}.",
            subject.namespace, subject.name
        ));
    }
    if problems.iter().any(|p| matches!(p, Problem::NoRecentDrill { .. })) {
        fixes.push(format!(
            "Prove it: create a ContractDrill in namespace {} with spec.contract: {} and a fault its failover must absorb (e.g. fault: {{region: <a failover region>, abort: {{httpStatus: 503}}}}), and let it pass.",
            subject.namespace, subject.name
        ));
    }
    format!("{}. {}", what.join("; "), fixes.join(" "))
}

/// What one policy says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The policy's name.
    pub policy: String,
    /// What the policy does about it.
    pub action: EnforcementAction,
    /// The full message, naming the policy, the object, what is missing and how to fix it.
    pub message: String,
    /// What the object lacks.
    pub problems: Vec<Problem>,
    /// A Deny that this UPDATE does not enforce: the object already fell short of the policy, and the update
    /// leaves what it declares as it was ([`tolerate_existing`]). Admitted with a warning.
    pub tolerated: bool,
}

/// The outcome of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Every policy that the object falls short of, sorted by policy name.
    pub verdicts: Vec<Verdict>,
    /// Names of the policies that matched the object.
    pub matched: Vec<String>,
}

impl Decision {
    fn denying(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| v.action == EnforcementAction::Deny && !v.tolerated)
    }

    /// Whether the request is admitted.
    pub fn allowed(&self) -> bool {
        self.denying().next().is_none()
    }

    /// The denial message: every denying policy, one per line.
    pub fn denial(&self) -> Option<String> {
        let lines: Vec<&str> = self.denying().map(|v| v.message.as_str()).collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// Admission warnings: one per Warn policy, and one per tolerated Deny.
    pub fn warnings(&self) -> Vec<String> {
        self.verdicts
            .iter()
            .filter(|v| v.action == EnforcementAction::Warn || (v.action == EnforcementAction::Deny && v.tolerated))
            .map(|v| v.message.clone())
            .collect()
    }
}

/// Lets an UPDATE through the Deny policies that the object already fell short of, as Kyverno's
/// `allowExistingViolations` does, when the update leaves what the object declares (its failover regions
/// and the contracts that govern it) as it was: an old non-compliant object can still be labelled,
/// scaled or given a port, with a warning that names the violation, and the audit keeps reporting it.
/// An update that makes the object fall short of a policy it met, or that touches the declaration while
/// still falling short, stays denied. `before` is the old object's decision under the same policies.
pub fn tolerate_existing(decision: &mut Decision, new: &Subject, old: &Subject, before: &Decision) {
    if new.declaration != old.declaration {
        return;
    }
    for verdict in &mut decision.verdicts {
        let already = before.verdicts.iter().any(|b| b.policy == verdict.policy && b.action == EnforcementAction::Deny);
        if verdict.action == EnforcementAction::Deny && already {
            verdict.tolerated = true;
            verdict.message = format!(
                "{} Allowed because this update leaves the declared failover regions and contracts as they were (the object already fell short); the audit keeps reporting it.",
                statement(&verdict.policy, "would deny", new, &verdict.problems)
            );
        }
    }
}

/// The message one policy gives about one object.
pub fn message(policy: &str, action: EnforcementAction, subject: &Subject, problems: &[Problem]) -> String {
    let verb = match action {
        EnforcementAction::Deny => "denied",
        EnforcementAction::Warn => "warns about",
        EnforcementAction::Audit => "audits",
    };
    statement(policy, verb, subject, problems)
}

/// `ContractPolicy "<policy>" <verb> <Kind> <ns>/<name>: <what is wrong and how to fix it>`.
fn statement(policy: &str, verb: &str, subject: &Subject, problems: &[Problem]) -> String {
    format!(
        "ContractPolicy {policy:?} {verb} {} {}/{}: {}",
        subject.kind,
        subject.namespace,
        subject.name,
        describe(subject, problems)
    )
}

/// Judges a subject against every policy (owned, or shared handles from the cache). The policies are
/// those that can be read: callers leave out [`unreadable`] ones (the index, once per policy change; the
/// audit, once per policy and audit).
pub fn evaluate<P: std::borrow::Borrow<ContractPolicy>>(
    subject: &Subject,
    policies: &[P],
    namespace_labels: Option<&BTreeMap<String, String>>,
    exempt_namespaces: &[String],
) -> Decision {
    let mut decision = Decision::default();
    let mut sorted: Vec<&ContractPolicy> = policies.iter().map(std::borrow::Borrow::borrow).collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for policy in sorted {
        let name = policy.metadata.name.clone().unwrap_or_default();
        if !matches(&policy.spec, subject, namespace_labels, exempt_namespaces) {
            continue;
        }
        decision.matched.push(name.clone());
        let found = problems(&policy.spec, subject);
        if found.is_empty() {
            continue;
        }
        let action = policy.spec.enforcement_action;
        let message = message(&name, action, subject, &found);
        decision.verdicts.push(Verdict { message, policy: name, action, problems: found, tolerated: false });
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::{CONTRACT_ANNOTATION, MatchKind};
    use proptest::prelude::*;

    fn policy(name: &str, action: &str, required: &[&str]) -> ContractPolicy {
        let spec: ContractPolicySpec = serde_json::from_value(serde_json::json!({
            "enforcementAction": action,
            "failover": {"requiredRegions": required},
        }))
        .expect("policy spec");
        ContractPolicy::new(name, spec)
    }

    fn service(ns: &str, name: &str, annotation: Option<&str>, contracts: &[ContractRef]) -> Subject {
        let mut annotations = BTreeMap::new();
        if let Some(a) = annotation {
            annotations.insert(FAILOVER_REGIONS_ANNOTATION.to_owned(), a.to_owned());
        }
        Subject {
            kind: Kind::Service,
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            declaration: service_declaration(name, &annotations, contracts),
            drills: None,
        }
    }

    #[test]
    fn the_documented_denial_message() {
        let p = policy("national-baseline", "Deny", &["gz", "sz", "hz"]);
        let s = service("payments", "payment-verify", Some("gz,sz"), &[]);
        let d = evaluate(&s, &[p], None, &[]);
        assert!(!d.allowed());
        assert_eq!(
            d.denial().expect("denied"),
            "ContractPolicy \"national-baseline\" denied Service payments/payment-verify: missing failover regions [hz]; \
             required [gz, sz, hz], declared [gz, sz]. Declare them with annotation \
             csp.contracts.dev/failover-regions=\"gz,sz,hz\" or in a ChannelContract's spec.failover.regions."
        );
    }

    #[test]
    fn a_governing_contract_declares_for_the_service() {
        let p = policy("base", "Deny", &["gz", "sz", "hz"]);
        let c = ContractRef {
            name: "pv".into(),
            service: "payment-verify".into(),
            regions: vec!["gz".into(), "sz".into(), "hz".into()],
        };
        let s = service("payments", "payment-verify", None, std::slice::from_ref(&c));
        assert!(evaluate(&s, std::slice::from_ref(&p), None, &[]).allowed());
        // A contract for another Service does not count.
        let other = ContractRef { service: "other".into(), ..c };
        let s = service("payments", "payment-verify", None, &[other]);
        assert!(!evaluate(&s, &[p], None, &[]).allowed());
    }

    #[test]
    fn the_contract_annotation_picks_one_contract() {
        let a = ContractRef { name: "a".into(), service: "svc".into(), regions: vec!["gz".into()] };
        let b = ContractRef { name: "b".into(), service: "svc".into(), regions: vec!["sz".into()] };
        let mut ann = BTreeMap::new();
        ann.insert(CONTRACT_ANNOTATION.to_owned(), "b".to_owned());
        let d = service_declaration("svc", &ann, &[a.clone(), b.clone()]);
        assert_eq!(d.regions, ["sz"]);
        assert_eq!(d.governed_by, ["b"]);
        let d = service_declaration("svc", &BTreeMap::new(), &[b, a]);
        assert_eq!(d.regions, ["gz", "sz"]);
    }

    #[test]
    fn exempt_namespaces_are_never_matched() {
        let p = policy("base", "Deny", &["gz"]);
        for ns in ["kube-system", "kube-public", "kube-node-lease", "csp-system"] {
            let s = service(ns, "x", None, &[]);
            let d = evaluate(&s, std::slice::from_ref(&p), None, &["csp-system".to_owned()]);
            assert!(d.allowed() && d.matched.is_empty(), "{ns}");
        }
    }

    #[test]
    fn warn_and_audit_admit() {
        let s = service("ns", "x", None, &[]);
        let d = evaluate(&s, &[policy("w", "Warn", &["gz"])], None, &[]);
        assert!(d.allowed());
        assert_eq!(d.warnings().len(), 1);
        assert!(
            d.warnings()[0].starts_with("ContractPolicy \"w\" warns about Service ns/x: missing failover regions [gz]")
        );
        let d = evaluate(&s, &[policy("a", "Audit", &["gz"])], None, &[]);
        assert!(d.allowed() && d.warnings().is_empty() && d.verdicts.len() == 1);
    }

    #[test]
    fn every_violated_policy_is_named() {
        let s = service("ns", "x", Some("gz"), &[]);
        let d = evaluate(&s, &[policy("b", "Deny", &["sz"]), policy("a", "Deny", &["hz"])], None, &[]);
        let text = d.denial().expect("denied");
        assert!(text.contains("ContractPolicy \"a\"") && text.contains("ContractPolicy \"b\""), "{text}");
    }

    #[test]
    fn match_fields() {
        let mut p = policy("p", "Deny", &["gz"]);
        let s = service("team", "x", None, &[]);
        p.spec.r#match.namespaces = vec!["other".into()];
        assert!(evaluate(&s, std::slice::from_ref(&p), None, &[]).allowed());
        p.spec.r#match.namespaces = vec![];
        p.spec.r#match.excluded_namespaces = vec!["team".into()];
        assert!(evaluate(&s, std::slice::from_ref(&p), None, &[]).allowed());
        p.spec.r#match.excluded_namespaces = vec![];
        p.spec.r#match.kinds = vec![MatchKind::ChannelContract];
        assert!(evaluate(&s, std::slice::from_ref(&p), None, &[]).allowed());
        p.spec.r#match.kinds = vec![MatchKind::Service];
        p.spec.r#match.namespace_selector =
            Some(serde_json::from_value(serde_json::json!({"matchLabels": {"tier": "production"}})).expect("selector"));
        let prod: BTreeMap<String, String> = [("tier".to_owned(), "production".to_owned())].into();
        let dev: BTreeMap<String, String> = [("tier".to_owned(), "dev".to_owned())].into();
        assert!(!evaluate(&s, std::slice::from_ref(&p), Some(&prod), &[]).allowed());
        assert!(evaluate(&s, std::slice::from_ref(&p), Some(&dev), &[]).allowed());
        // Unknown namespace labels: fail closed.
        assert!(!evaluate(&s, std::slice::from_ref(&p), None, &[]).allowed());
        p.spec.r#match.namespace_selector = None;
        p.spec.r#match.label_selector = Some(
            serde_json::from_value(serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}))
                .expect("selector"),
        );
        assert!(evaluate(&s, std::slice::from_ref(&p), None, &[]).allowed());
        let mut labelled = s.clone();
        labelled.labels.insert("app".into(), "x".into());
        assert!(!evaluate(&labelled, &[p], None, &[]).allowed());
    }

    #[test]
    fn min_regions_and_require_contract() {
        let mut p = policy("p", "Deny", &[]);
        p.spec.failover.min_regions = Some(2);
        let s = service("ns", "x", Some("gz"), &[]);
        let d = evaluate(&s, std::slice::from_ref(&p), None, &[]);
        assert!(d.denial().expect("denied").contains("declares 1 failover region [gz]; at least 2 required"));
        p.spec.failover.min_regions = None;
        p.spec.require_contract = true;
        let d = evaluate(&s, std::slice::from_ref(&p), None, &[]);
        let text = d.denial().expect("denied");
        assert!(text.contains("is not governed by a ChannelContract"), "{text}");
        assert!(text.contains("Create a ChannelContract in namespace ns with spec.service: x."), "{text}");
    }

    #[test]
    fn a_contract_missing_a_region() {
        let p = policy("p", "Deny", &["gz", "sz", "hz"]);
        let s = Subject {
            kind: Kind::ChannelContract,
            namespace: "ns".into(),
            name: "c".into(),
            labels: BTreeMap::new(),
            declaration: contract_declaration(&["gz".into(), "sz".into()]),
            drills: None,
        };
        let text = evaluate(&s, &[p], None, &[]).denial().expect("denied");
        assert_eq!(
            text,
            "ContractPolicy \"p\" denied ChannelContract ns/c: missing failover regions [hz]; required [gz, sz, hz], \
             declared [gz, sz]. Declare them in spec.failover.regions, e.g. regions: [gz, sz, hz]."
        );
    }

    fn region() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["gz", "sz", "hz", "bj", "sh", "cd"]).prop_map(str::to_owned)
    }

    proptest! {
        #[test]
        fn allowed_iff_declared_covers_required(
            required in prop::collection::vec(region(), 0..4),
            declared in prop::collection::vec(region(), 0..6),
        ) {
            let req: Vec<&str> = { let mut r: Vec<&str> = required.iter().map(String::as_str).collect(); r.sort_unstable(); r.dedup(); r };
            let p = policy("p", "Deny", &req);
            let s = service("ns", "x", Some(&declared.join(",")), &[]);
            let covers = req.iter().all(|r| declared.iter().any(|d| d == r));
            prop_assert_eq!(evaluate(&s, &[p], None, &[]).allowed(), covers);
        }

        #[test]
        fn whitespace_order_and_duplicates_change_nothing(
            declared in prop::collection::vec(region(), 0..6),
            required in prop::collection::vec(region(), 0..4),
            seps in prop::collection::vec(prop::sample::select(vec![",", ", ", " ,", " , ", ",,", "\t,"]), 6),
            seed in any::<u64>(),
        ) {
            let mut req: Vec<&str> = required.iter().map(String::as_str).collect(); req.sort_unstable(); req.dedup();
            let p = policy("p", "Deny", &req);
            let plain = service("ns", "x", Some(&declared.join(",")), &[]);
            let mut shuffled = declared.clone();
            if !shuffled.is_empty() { let n = shuffled.len(); shuffled.rotate_left((seed as usize) % n); }
            shuffled.extend(declared.iter().take(2).cloned());
            let mut messy = String::from("  ");
            for (i, r) in shuffled.iter().enumerate() { messy.push_str(r); messy.push_str(seps[i % seps.len()]); }
            let other = service("ns", "x", Some(&messy), &[]);
            prop_assert_eq!(
                evaluate(&plain, std::slice::from_ref(&p), None, &[]).allowed(),
                evaluate(&other, std::slice::from_ref(&p), None, &[]).allowed()
            );
        }

        #[test]
        fn adding_a_policy_never_turns_a_deny_into_an_allow(
            declared in prop::collection::vec(region(), 0..5),
            first in prop::collection::vec(region(), 0..4),
            second in prop::collection::vec(region(), 0..4),
            action in prop::sample::select(vec!["Deny", "Warn", "Audit"]),
        ) {
            let dedup = |v: &Vec<String>| { let mut r: Vec<String> = v.clone(); r.sort(); r.dedup(); r };
            let (first, second) = (dedup(&first), dedup(&second));
            let f: Vec<&str> = first.iter().map(String::as_str).collect();
            let g: Vec<&str> = second.iter().map(String::as_str).collect();
            let s = service("ns", "x", Some(&declared.join(",")), &[]);
            let one = [policy("a", "Deny", &f)];
            let two = [policy("a", "Deny", &f), policy("b", action, &g)];
            if !evaluate(&s, &one, None, &[]).allowed() {
                prop_assert!(!evaluate(&s, &two, None, &[]).allowed());
            }
        }
    }
}
