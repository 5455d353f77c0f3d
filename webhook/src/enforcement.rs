//! `spec.enforcement`: the leader keeps the generated ValidatingAdmissionPolicies and bindings ([`vap`])
//! (with what ChannelContracts declare for Services in them), every policy's `Enforced` condition, and the
//! webhook's own registration narrowed to the kinds it still judges.
//!
//! The order makes every hand-over overlap rather than gap: a policy moving to CEL gets its
//! ValidatingAdmissionPolicy applied, and [`HANDOVER`] later its condition, which is when the replicas
//! stop judging it ([`vap::enforced_by_vap`]); the registration is narrowed only on a later pass, once the
//! conditions are written. A policy moving back to the webhook gets the registration widened and its
//! condition first, and its generated objects are deleted [`HANDOVER`] later. A deleted policy's objects
//! go with it (owner references).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crds::conditions::condition;
use crds::{ContractPolicy, MatchKind};
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::index::Caches;
use crate::vap::{self, Generated, Path};

/// The field manager of everything this module writes.
pub const FIELD_MANAGER: &str = "csp-webhook-enforcement";
/// How long the API server gets to load a ValidatingAdmissionPolicy before the webhook stops judging its
/// policy, and the replicas to see a condition before the generated objects go.
pub const HANDOVER: Duration = Duration::from_secs(3);
/// How often everything is applied again even when nothing changed (repairs edits and deletions).
const RESYNC: Duration = Duration::from_secs(60);
/// How often the caches are looked at for a change.
const POLL: Duration = Duration::from_millis(500);
/// The name of the match condition the webhook keeps on its own registration.
pub const MATCH_CONDITION: &str = "csp.contracts.dev/webhook-policies";

/// What the loop needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Generator settings (the namespaces never matched).
    pub vap: vap::Settings,
    /// The webhook's own ValidatingWebhookConfiguration, narrowed to the kinds it judges; `None`: left
    /// alone.
    pub webhook_config: Option<String>,
    /// Also leave out of that registration the Services whose own annotation satisfies every policy
    /// ([`prefilter`]).
    pub prefilter: bool,
}

/// When the API server must call the webhook for a Service, as CEL, or `None` when always: unless what
/// the Service declares itself (its annotation) holds every region that any policy on Services requires,
/// and at least as many regions as the largest `minRegions`. Such a Service passes every policy (regions
/// from contracts only add), so the webhook would admit it without a word. `None` while any policy
/// requires a contract (CEL cannot see contracts) or no policy judges Services.
pub fn prefilter(policies: &[Arc<ContractPolicy>]) -> Option<String> {
    let on_services: Vec<&ContractPolicy> =
        policies.iter().map(AsRef::as_ref).filter(|p| p.spec.r#match.kinds.contains(&MatchKind::Service)).collect();
    if on_services.is_empty() || on_services.iter().any(|p| p.spec.require_contract) {
        return None;
    }
    let mut required: Vec<String> = Vec::new();
    for r in on_services.iter().flat_map(|p| &p.spec.failover.required_regions) {
        if !required.contains(r) {
            required.push(r.clone());
        }
    }
    let min = on_services.iter().filter_map(|p| p.spec.failover.min_regions).max();
    let tokens = vap::own_regions_cel();
    let required = vap::list_lit(&required);
    let suffices = match min {
        Some(min) => format!("sets.contains({tokens}, {required}) && size({tokens}.distinct()) >= {min}"),
        None => format!("sets.contains({tokens}, {required})"),
    };
    Some(format!("request.resource.resource != 'services' || object == null || !({suffices})"))
}

/// The match condition for the webhook's registration when it judges only `kinds`, and only the
/// Services that `prefilter` lets through, or `None` when it judges everything (no condition).
pub fn match_condition(kinds: &BTreeSet<MatchKind>, prefilter: Option<&str>) -> Option<MatchCondition> {
    let narrowed = match (kinds.contains(&MatchKind::Service), kinds.contains(&MatchKind::ChannelContract)) {
        (true, true) => None,
        (true, false) => Some("request.resource.resource == 'services'"),
        (false, true) => Some("request.resource.resource == 'channelcontracts'"),
        (false, false) => Some("false"),
    };
    let expression = match (narrowed, prefilter) {
        (None, None) => return None,
        (Some(k), None) => k.to_owned(),
        (None, Some(p)) => p.to_owned(),
        (Some(k), Some(p)) => format!("({k}) && ({p})"),
    };
    Some(MatchCondition { name: MATCH_CONDITION.into(), expression })
}

/// What one pass decided for one policy.
struct Plan {
    generated: Option<Vec<Generated>>,
    /// Why the webhook judges it, when it does.
    webhook_reason: Option<String>,
}

/// Runs while `leader` says so, until cancelled.
pub async fn run_loop(
    client: Client,
    caches: Caches,
    settings: Settings,
    mut leader: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut state = State::default();
    loop {
        if !*leader.borrow_and_update() {
            state = State::default();
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = leader.changed() => if changed.is_err() { return },
            }
            continue;
        }
        if let Err(e) = pass(&client, &caches, &settings, &mut state).await {
            tracing::warn!(error = %e, "keeping the ValidatingAdmissionPolicies of ContractPolicies failed; retrying");
            state.fingerprint = None;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {},
        }
    }
}

#[derive(Default)]
struct State {
    /// What the last complete pass saw: nothing to do while it stays the same (and [`RESYNC`] has not
    /// passed).
    fingerprint: Option<String>,
    at: Option<Instant>,
    /// Generated objects applied by this leader, by name, with what was applied.
    applied: BTreeMap<String, String>,
}

fn owner(policy: &ContractPolicy) -> Option<OwnerReference> {
    let mut o = policy.controller_owner_ref(&())?;
    o.block_owner_deletion = None;
    Some(o)
}

async fn pass(client: &Client, caches: &Caches, settings: &Settings, state: &mut State) -> Result<(), kube::Error> {
    let mut policies: Vec<Arc<ContractPolicy>> = caches.policies.state();
    policies.sort_by_key(|p| p.name_any());
    let mut contracts: Vec<(String, crate::evaluate::ContractRef)> = caches
        .contracts
        .state()
        .iter()
        .map(|c| (c.namespace().unwrap_or_default(), crate::index::contract_ref(c)))
        .collect();
    contracts.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    let declarations = vap::declarations(contracts.iter().map(|(ns, c)| (ns.as_str(), c)));
    let unfit = vap::declarations_unfit(&declarations);

    let mut plans = BTreeMap::new();
    for policy in &policies {
        let mut generated = vap::generate(policy, &settings.vap, &declarations);
        let mut webhook_reason = match vap::path(&policy.spec) {
            Path::Webhook(why) => Some(why),
            Path::Vap => None,
        };
        if let Some(why) = &unfit
            && generated.is_some()
            && policy.spec.r#match.kinds.contains(&MatchKind::Service)
        {
            generated = None;
            webhook_reason = Some(format!("{why}: the webhook judges admission requests"));
        }
        plans.insert(policy.name_any(), Plan { generated, webhook_reason });
    }
    let fingerprint = fingerprint(&policies, &plans, &declarations);
    let resync = state.at.is_none_or(|t| t.elapsed() >= RESYNC);
    if state.fingerprint.as_deref() == Some(fingerprint.as_str()) && !resync {
        return Ok(());
    }

    // 1. The generated policies.
    let vaps: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let mut fresh = false;
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut desired: BTreeSet<String> = BTreeSet::new();
    for policy in &policies {
        let Some(generated) = &plans[&policy.name_any()].generated else { continue };
        for g in generated {
            let (mut p, mut b) = (g.policy.clone(), g.binding.clone());
            let name = p.metadata.name.clone().unwrap_or_default();
            desired.insert(name.clone());
            p.metadata.owner_references = owner(policy).map(|o| vec![o]);
            b.metadata.owner_references = p.metadata.owner_references.clone();
            let text = serde_json::to_string(&(&p, &b)).unwrap_or_default();
            if state.applied.get(&name) == Some(&text) && !resync {
                continue;
            }
            let result = async {
                vaps.patch(&name, &apply, &Patch::Apply(&p)).await?;
                bindings.patch(&name, &apply, &Patch::Apply(&b)).await
            }
            .await;
            match result {
                Ok(_) => {
                    fresh = true;
                    state.applied.insert(name, text);
                }
                Err(e) => {
                    tracing::warn!(policy = %policy.name_any(), vap = %name, error = %e, "applying a ValidatingAdmissionPolicy failed");
                    failed.insert(policy.name_any(), e.to_string());
                }
            }
        }
    }

    // 2. Who judges what from now on: the webhook keeps every policy not handed over (yet).
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut by_vap: BTreeSet<String> = BTreeSet::new();
    let mut still_webhook: BTreeSet<MatchKind> = BTreeSet::new();
    let mut conditions = Vec::new();
    for policy in &policies {
        let name = policy.name_any();
        let plan = &plans[&name];
        let previous = policy.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        let generation = policy.metadata.generation;
        let cond = match (&plan.generated, failed.get(&name)) {
            (Some(g), None) => {
                by_vap.insert(name.clone());
                let names: Vec<String> = g.iter().filter_map(|g| g.policy.metadata.name.clone()).collect();
                condition(
                    vap::CONDITION,
                    true,
                    vap::BY_VAP,
                    format!(
                        "ValidatingAdmissionPolicies {} judge admission requests in the API server (CEL); the webhook audits",
                        names.join(", ")
                    ),
                    generation,
                    previous,
                    &now,
                )
            }
            (Some(_), Some(e)) => condition(
                vap::CONDITION,
                true,
                vap::BY_WEBHOOK,
                format!("applying the ValidatingAdmissionPolicies failed ({e}): the webhook judges admission requests"),
                generation,
                previous,
                &now,
            ),
            (None, _) => condition(
                vap::CONDITION,
                true,
                vap::BY_WEBHOOK,
                plan.webhook_reason.clone().unwrap_or_default(),
                generation,
                previous,
                &now,
            ),
        };
        if !by_vap.contains(&name) && evaluate_readable(policy) {
            still_webhook.extend(policy.spec.r#match.kinds.iter().copied());
        }
        conditions.push((policy.clone(), cond));
    }
    if by_vap.is_empty() {
        // Nothing is judged in CEL: the registration stays as the chart made it (a new policy is judged
        // as soon as the replicas see it, with no pass of the leader in between).
        still_webhook.extend([MatchKind::Service, MatchKind::ChannelContract]);
    }
    // Widen at once; narrowing waits for the conditions (the replicas judge by them).
    let handed_over_now: Vec<&String> =
        by_vap.iter().filter(|n| !policies.iter().any(|p| &p.name_any() == *n && vap::enforced_by_vap(p))).collect();
    let mut webhook_kinds = still_webhook.clone();
    for policy in &policies {
        if handed_over_now.contains(&&policy.name_any()) {
            webhook_kinds.extend(policy.spec.r#match.kinds.iter().copied());
        }
    }
    let prefilter = if settings.prefilter { prefilter(&policies) } else { None };
    if let Some(config) = &settings.webhook_config {
        narrow_registration(client, config, &webhook_kinds, prefilter.as_deref()).await?;
    }
    if fresh {
        tokio::time::sleep(HANDOVER).await;
    }
    let api: Api<ContractPolicy> = Api::all(client.clone());
    let mut changed_back = false;
    for (policy, cond) in &conditions {
        let current = policy.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == vap::CONDITION));
        let same = current.is_some_and(|c| {
            c.status == cond.status
                && c.reason == cond.reason
                && c.message == cond.message
                && c.observed_generation == cond.observed_generation
        });
        if same {
            continue;
        }
        changed_back |= current.is_some_and(|c| c.reason == vap::BY_VAP) && cond.reason != vap::BY_VAP;
        let patch = serde_json::json!({
            "apiVersion": format!("{}/{}", crds::GROUP, crds::VERSION),
            "kind": "ContractPolicy",
            "status": {"conditions": [cond]},
        });
        api.patch_status(&policy.name_any(), &apply, &Patch::Apply(&patch)).await?;
    }

    // 3. Generated objects no policy wants any more, once the replicas judge again.
    let selector = format!("app.kubernetes.io/managed-by={}", vap::MANAGED_BY);
    let stale = stale_names(&vaps, &selector, &desired).await?;
    let stale_bindings = stale_names(&bindings, &selector, &desired).await?;
    if !stale.is_empty() || !stale_bindings.is_empty() {
        if changed_back {
            tokio::time::sleep(HANDOVER).await;
        }
        for name in &stale_bindings {
            delete_ignoring_absent(&bindings, name).await?;
        }
        for name in &stale {
            delete_ignoring_absent(&vaps, name).await?;
            state.applied.remove(name);
        }
    }
    state.applied.retain(|n, _| desired.contains(n));
    // The next pass narrows the registration to what is still judged here, now that the conditions say so.
    if let Some(config) = &settings.webhook_config
        && !handed_over_now.is_empty()
    {
        narrow_registration(client, config, &still_webhook, prefilter.as_deref()).await?;
    }
    state.fingerprint = if failed.is_empty() { Some(fingerprint) } else { None };
    state.at = Some(Instant::now());
    Ok(())
}

fn evaluate_readable(policy: &ContractPolicy) -> bool {
    crate::evaluate::unreadable(&policy.spec).is_none()
}

fn fingerprint(
    policies: &[Arc<ContractPolicy>],
    plans: &BTreeMap<String, Plan>,
    declarations: &BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    for p in policies {
        let enforced = vap::enforced_by_vap(p);
        let plan = &plans[&p.name_any()];
        let condition = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == vap::CONDITION))
            .map(|c| format!("{}{}{}{:?}", c.status, c.reason, c.message, c.observed_generation));
        out.push_str(&format!(
            "{}|{:?}|{:?}|{enforced}|{:?}|{}\n",
            p.name_any(),
            p.metadata.generation,
            p.metadata.uid,
            condition,
            plan.generated.as_ref().map_or(0, Vec::len)
        ));
    }
    out.push_str(&serde_json::to_string(declarations).unwrap_or_default());
    out
}

/// The generated objects (by `selector`) of one kind that are not `desired`.
async fn stale_names<K>(api: &Api<K>, selector: &str, desired: &BTreeSet<String>) -> Result<Vec<String>, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = api.list_metadata(&ListParams::default().labels(selector)).await?;
    Ok(listed.items.into_iter().filter_map(|o| o.metadata.name).filter(|n| !desired.contains(n)).collect())
}

async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sets the match condition of every webhook of the registration `name` to judge only `kinds`.
async fn narrow_registration(
    client: &Client,
    name: &str,
    kinds: &BTreeSet<MatchKind>,
    prefilter: Option<&str>,
) -> Result<(), kube::Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let wanted = match_condition(kinds, prefilter);
    for _attempt in 0..5 {
        let Some(mut vwc) = api.get_opt(name).await? else {
            tracing::warn!(webhook_config = name, "ValidatingWebhookConfiguration not found; cannot narrow it");
            return Ok(());
        };
        let mut changed = false;
        for hook in vwc.webhooks.iter_mut().flatten() {
            let mut conditions = hook.match_conditions.take().unwrap_or_default();
            let before = conditions.clone();
            conditions.retain(|c| c.name != MATCH_CONDITION);
            conditions.extend(wanted.clone());
            changed |= conditions != before;
            hook.match_conditions = (!conditions.is_empty()).then_some(conditions);
        }
        if !changed {
            return Ok(());
        }
        match api.replace(name, &PostParams::default(), &vwc).await {
            Ok(_) => {
                tracing::info!(webhook_config = name, ?kinds, "the webhook's registration now sends it these kinds");
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registration_is_narrowed_to_the_kinds_still_judged_here() {
        let kinds = |k: &[MatchKind]| k.iter().copied().collect::<BTreeSet<_>>();
        assert_eq!(match_condition(&kinds(&[MatchKind::Service, MatchKind::ChannelContract]), None), None);
        let only = |k| match_condition(&kinds(&[k]), None).map(|c| c.expression);
        assert_eq!(only(MatchKind::Service).as_deref(), Some("request.resource.resource == 'services'"));
        assert_eq!(
            only(MatchKind::ChannelContract).as_deref(),
            Some("request.resource.resource == 'channelcontracts'")
        );
        let none = match_condition(&kinds(&[]), None).expect("a condition");
        assert_eq!((none.name.as_str(), none.expression.as_str()), (MATCH_CONDITION, "false"));
        let both = match_condition(&kinds(&[MatchKind::ChannelContract]), Some("p")).expect("a condition");
        assert_eq!(both.expression, "(request.resource.resource == 'channelcontracts') && (p)");
        let all = match_condition(&kinds(&[MatchKind::Service, MatchKind::ChannelContract]), Some("p"));
        assert_eq!(all.map(|c| c.expression).as_deref(), Some("p"));
    }

    fn policy(name: &str, spec: serde_json::Value) -> Arc<ContractPolicy> {
        Arc::new(ContractPolicy::new(name, serde_json::from_value(spec).expect("spec")))
    }

    #[test]
    fn the_prefilter_lets_through_what_every_service_policy_might_refuse() {
        let a = policy("a", serde_json::json!({"failover": {"requiredRegions": ["gz", "sz"]}}));
        let b = policy(
            "b",
            serde_json::json!({"enforcementAction": "Warn", "failover": {"requiredRegions": ["sz", "hz"], "minRegions": 4}}),
        );
        let contracts_only = policy(
            "c",
            serde_json::json!({"match": {"kinds": ["ChannelContract"]}, "failover": {"requiredRegions": ["xz"]}}),
        );
        let expression = prefilter(&[a.clone(), b, contracts_only.clone()]).expect("a prefilter");
        let tokens = vap::own_regions_cel();
        assert_eq!(
            expression,
            format!(
                r#"request.resource.resource != 'services' || object == null || !(sets.contains({tokens}, ["gz", "sz", "hz"]) && size({tokens}.distinct()) >= 4)"#
            )
        );
        // A policy that requires a contract needs the webhook for every Service; none on Services, nothing to do.
        let strict = policy("s", serde_json::json!({"requireContract": true}));
        assert_eq!(prefilter(&[a, strict]), None);
        assert_eq!(prefilter(&[contracts_only]), None);
    }
}
