//! In-memory caches of what the evaluation reads, fed by watches: ContractPolicies, ChannelContracts,
//! Namespaces and Services (metadata only). Ready once every watch has listed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use crds::{CONTRACT_ANNOTATION, ChannelContract, ContractPolicy, FAILOVER_REGIONS_ANNOTATION};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use crate::evaluate::ContractRef;
use crate::{admission, evaluate};

/// The caches.
#[derive(Clone)]
pub struct Caches {
    /// ContractPolicies.
    pub policies: Store<ContractPolicy>,
    /// The names of those that cannot be read, judged once per change of a policy.
    pub unreadable_policies: UnreadablePolicies,
    /// ChannelContracts.
    pub contracts: Store<ChannelContract>,
    /// The same contracts by namespace, as a review reads them.
    pub contracts_by_namespace: ContractsByNamespace,
    /// Namespaces (metadata).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Services (metadata).
    pub services: Store<PartialObjectMeta<Service>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("policies", &self.policies.len())
            .field("contracts", &self.contracts.len())
            .field("namespaces", &self.namespaces.len())
            .field("services", &self.services.len())
            .finish()
    }
}

/// Starts the watches. The returned future runs them until cancelled; `policy_changed` is notified when
/// a policy's spec changes (its generation moves) or a policy is deleted, so that the audit can run.
pub fn start(
    client: Client,
    policy_changed: Arc<Notify>,
) -> (Caches, impl std::future::Future<Output = ()> + Send + 'static) {
    let (policies, policies_w) = reflector::store();
    let (contracts, contracts_w) = reflector::store();
    let (namespaces, namespaces_w) = reflector::store();
    let (services, services_w) = reflector::store();
    let cfg = watcher::Config::default().any_semantic();

    let mut generations: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let unreadable_policies = UnreadablePolicies::default();
    let unreadable = unreadable_policies.clone();
    let policy_stream = watcher(Api::<ContractPolicy>::all(client.clone()), cfg.clone())
        .default_backoff()
        .reflect(policies_w)
        .map(move |event| {
            if let Ok(event) = &event {
                unreadable.apply(event);
            }
            // Audit on spec changes only: our own status writes must not retrigger it.
            let changed = match &event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    generations.insert(p.name_any(), p.metadata.generation) != Some(p.metadata.generation)
                }
                Ok(watcher::Event::Delete(p)) => generations.remove(&p.name_any()).is_some(),
                Ok(watcher::Event::InitDone) => true,
                _ => false,
            };
            if changed {
                policy_changed.notify_one();
            }
            event
        });
    let contracts_by_namespace = ContractsByNamespace::default();
    let contract_stream = {
        let by_namespace = contracts_by_namespace.clone();
        watcher(Api::<ChannelContract>::all(client.clone()), cfg.clone())
            .default_backoff()
            .modify(|c| trim(&mut c.metadata, &[]))
            .reflect(contracts_w)
            .map(move |event| {
                if let Ok(event) = &event {
                    by_namespace.apply(event);
                }
                event
            })
    };
    let namespace_stream = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), cfg.clone())
        .default_backoff()
        .modify(|n| trim(&mut n.metadata, &[]))
        .reflect(namespaces_w);
    let service_stream = watcher(Api::<PartialObjectMeta<Service>>::all(client), cfg)
        .default_backoff()
        .modify(|s| trim(&mut s.metadata, &[FAILOVER_REGIONS_ANNOTATION, CONTRACT_ANNOTATION]))
        .reflect(services_w);

    let run = async move {
        futures::join!(
            drain("ContractPolicy", policy_stream),
            drain("ChannelContract", contract_stream),
            drain("Namespace", namespace_stream),
            drain("Service", service_stream),
        );
    };
    (Caches { policies, unreadable_policies, contracts, contracts_by_namespace, namespaces, services }, run)
}

/// Keeps of an object's metadata what the webhook reads: no managed fields, and only the annotations
/// named (a Service's `kubectl.kubernetes.io/last-applied-configuration` alone can be kilobytes). The
/// caches hold every Service of the cluster: at 100,000 Services this is most of the webhook's memory.
pub fn trim(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, keep_annotations: &[&str]) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| keep_annotations.contains(&k.as_str()));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The names of the ContractPolicies that cannot be read ([`evaluate::unreadable`]), kept from the
/// policies' watch: a policy is judged once when it changes, not once per admission review (which, at 100
/// policies, had made every review about 2.5 times slower).
#[derive(Clone, Debug, Default)]
pub struct UnreadablePolicies(Arc<RwLock<HashSet<String>>>);

impl UnreadablePolicies {
    /// Follows one event of the policies' watch. A policy deleted while the watch was down stays named
    /// here, which is harmless: it is no longer in the cache, and a new policy of that name is judged anew.
    pub fn apply(&self, event: &watcher::Event<ContractPolicy>) {
        let mut names = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                if evaluate::unreadable(&p.spec).is_some() {
                    names.insert(p.name_any());
                } else {
                    names.remove(&p.name_any());
                }
            }
            watcher::Event::Delete(p) => {
                names.remove(&p.name_any());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    /// Whether the policy of this name cannot be read.
    pub fn contains(&self, name: &str) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).contains(name)
    }
}

/// The ChannelContracts of each namespace as [`ContractRef`]s, kept from the contracts' watch: a Service's
/// review reads its own namespace's contracts instead of scanning every contract of the cluster.
#[derive(Clone, Default)]
pub struct ContractsByNamespace(Arc<RwLock<ByNamespace>>);

#[derive(Default)]
struct ByNamespace {
    /// namespace -> contract name -> what the review needs of it.
    live: HashMap<String, BTreeMap<String, ContractRef>>,
    /// A relist in progress (after a watch had to start over): it replaces `live` once complete, so that
    /// contracts deleted while the watch was down go too.
    relisting: Option<HashMap<String, BTreeMap<String, ContractRef>>>,
}

impl std::fmt::Debug for ContractsByNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.0.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ContractsByNamespace").field("namespaces", &inner.live.len()).finish()
    }
}

impl ContractsByNamespace {
    /// Follows one event of the contracts' watch.
    pub fn apply(&self, event: &watcher::Event<ChannelContract>) {
        let mut guard = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *guard;
        match event {
            watcher::Event::Init => inner.relisting = Some(HashMap::new()),
            watcher::Event::InitApply(c) => insert(inner.relisting.get_or_insert_default(), c),
            watcher::Event::InitDone => {
                if let Some(fresh) = inner.relisting.take() {
                    inner.live = fresh;
                }
            }
            watcher::Event::Apply(c) => insert(&mut inner.live, c),
            watcher::Event::Delete(c) => {
                let namespace = c.namespace().unwrap_or_default();
                if let Some(contracts) = inner.live.get_mut(&namespace) {
                    contracts.remove(&c.name_any());
                    if contracts.is_empty() {
                        inner.live.remove(&namespace);
                    }
                }
            }
        }
    }

    /// The contracts of `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<ContractRef> {
        let inner = self.0.read().unwrap_or_else(PoisonError::into_inner);
        inner.live.get(namespace).map(|contracts| contracts.values().cloned().collect()).unwrap_or_default()
    }
}

fn insert(map: &mut HashMap<String, BTreeMap<String, ContractRef>>, contract: &ChannelContract) {
    map.entry(contract.namespace().unwrap_or_default())
        .or_default()
        .insert(contract.name_any(), contract_ref(contract));
}

async fn drain<K, S>(what: &'static str, stream: S)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(kind = what, error = %e, "watch failed; retrying with back-off");
        }
    }
}

impl Caches {
    /// Waits until every cache has listed once (polled: a Store's readiness wakes only its last waiter).
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        lifecycle::ready::polled(lifecycle::ready::POLL, || self.all_ready()).await
    }

    async fn all_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.policies.wait_until_ready().await?;
        self.contracts.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        Ok(())
    }

    /// A namespace's labels from the cache.
    pub fn cached_namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces.get(&ObjectRef::new(namespace)).map(|n| n.labels().clone())
    }
}

/// The caches plus namespaces looked up directly because the cache did not have them yet.
#[derive(Debug)]
pub struct View<'a> {
    /// The caches.
    pub caches: &'a Caches,
    /// Namespaces fetched from the API server for this request.
    pub fetched: BTreeMap<String, BTreeMap<String, String>>,
}

/// A ContractRef from a ChannelContract.
pub fn contract_ref(c: &ChannelContract) -> ContractRef {
    ContractRef {
        name: c.name_any(),
        service: c.spec.service.clone(),
        regions: c.spec.failover.as_ref().map(|f| f.regions.clone()).unwrap_or_default(),
    }
}

impl admission::Index for View<'_> {
    fn policies(&self) -> Vec<Arc<ContractPolicy>> {
        let mut policies = self.caches.policies.state();
        policies.retain(|p| !self.caches.unreadable_policies.contains(&p.name_any()));
        policies
    }

    fn contracts_in(&self, namespace: &str) -> Vec<ContractRef> {
        self.caches.contracts_by_namespace.in_namespace(namespace)
    }

    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.caches.cached_namespace_labels(namespace).or_else(|| self.fetched.get(namespace).cloned())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_caches_keep_labels_and_the_judged_annotations_only() {
        let mut service: PartialObjectMeta<Service> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "pv", "namespace": "pay", "labels": {"tier": "gold"},
                "annotations": {
                    "csp.contracts.dev/failover-regions": "gz,sz",
                    "csp.contracts.dev/contract": "pv",
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"a big\": \"copy\"}"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {}}]
            }
        }))
        .expect("metadata");
        trim(&mut service.metadata, &[FAILOVER_REGIONS_ANNOTATION, CONTRACT_ANNOTATION]);
        assert_eq!(service.metadata.managed_fields, None);
        let kept: Vec<&String> = service.annotations().keys().collect();
        assert_eq!(kept, ["csp.contracts.dev/contract", "csp.contracts.dev/failover-regions"]);
        assert_eq!(service.labels().get("tier").map(String::as_str), Some("gold"));
        let subject =
            crate::subject::Subject::service("pay", "pv", service.labels().clone(), service.annotations(), &[]);
        assert_eq!(subject.declaration.regions, ["gz", "sz"], "what is judged is unchanged");
    }

    fn contract(namespace: &str, name: &str, service: &str) -> ChannelContract {
        serde_json::from_value(json!({
            "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"service": service, "port": 8080, "sla": {"maxLatency": "1s"},
                "failover": {"regions": ["gz", "sz"]}},
        }))
        .expect("contract")
    }

    fn names(index: &ContractsByNamespace, namespace: &str) -> Vec<String> {
        index.in_namespace(namespace).into_iter().map(|c| c.name).collect()
    }

    #[test]
    fn a_namespace_sees_only_its_own_contracts_as_the_watch_moves() {
        let index = ContractsByNamespace::default();
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(contract("pay", "b", "pv")));
        index.apply(&watcher::Event::InitApply(contract("pay", "a", "pv")));
        index.apply(&watcher::Event::InitApply(contract("shop", "c", "cart")));
        assert_eq!(names(&index, "pay"), Vec::<String>::new(), "nothing before the list is complete");
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(&index, "pay"), ["a", "b"]);
        assert_eq!(
            index.in_namespace("shop"),
            [ContractRef { name: "c".into(), service: "cart".into(), regions: vec!["gz".into(), "sz".into()] }]
        );
        assert!(index.in_namespace("elsewhere").is_empty());

        index.apply(&watcher::Event::Apply(contract("pay", "a", "pv-2")));
        assert_eq!(index.in_namespace("pay")[0].service, "pv-2", "an update replaces the contract");
        index.apply(&watcher::Event::Delete(contract("pay", "b", "pv")));
        assert_eq!(names(&index, "pay"), ["a"]);
    }

    #[test]
    fn a_policy_is_judged_unreadable_when_it_changes_and_forgotten_when_fixed_or_deleted() {
        let policy = |operator: &str| -> ContractPolicy {
            let spec = serde_json::from_value(json!({"match": {"labelSelector": {"matchExpressions": [
                {"key": "tier", "operator": operator, "values": ["gold"]}]}}}))
            .expect("spec");
            ContractPolicy::new("p", spec)
        };
        let names = UnreadablePolicies::default();
        names.apply(&watcher::Event::InitApply(policy("Equals")));
        assert!(names.contains("p"));
        names.apply(&watcher::Event::Apply(policy("In")));
        assert!(!names.contains("p"), "fixed");
        names.apply(&watcher::Event::Apply(policy("in")));
        assert!(names.contains("p"));
        names.apply(&watcher::Event::Delete(policy("in")));
        assert!(!names.contains("p"), "deleted");
    }

    #[test]
    fn a_relist_drops_contracts_deleted_while_the_watch_was_down() {
        let index = ContractsByNamespace::default();
        index.apply(&watcher::Event::Apply(contract("pay", "a", "pv")));
        index.apply(&watcher::Event::Apply(contract("pay", "gone", "pv")));
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(contract("pay", "a", "pv")));
        assert_eq!(names(&index, "pay"), ["a", "gone"], "the old view serves until the relist completes");
        index.apply(&watcher::Event::InitDone);
        assert_eq!(names(&index, "pay"), ["a"]);
    }
}
