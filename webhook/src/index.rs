//! In-memory caches of what the evaluation reads, fed by watches: ContractPolicies, ChannelContracts,
//! Namespaces and Services (metadata only). Ready once every watch has listed.

use std::collections::BTreeMap;
use std::sync::Arc;

use crds::{ChannelContract, ContractPolicy};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use crate::admission;
use crate::evaluate::ContractRef;

/// The caches.
#[derive(Clone)]
pub struct Caches {
    /// ContractPolicies.
    pub policies: Store<ContractPolicy>,
    /// ChannelContracts.
    pub contracts: Store<ChannelContract>,
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
    let policy_stream = watcher(Api::<ContractPolicy>::all(client.clone()), cfg.clone())
        .default_backoff()
        .reflect(policies_w)
        .map(move |event| {
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
    let contract_stream =
        watcher(Api::<ChannelContract>::all(client.clone()), cfg.clone()).default_backoff().reflect(contracts_w);
    let namespace_stream = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), cfg.clone())
        .default_backoff()
        .reflect(namespaces_w);
    let service_stream =
        watcher(Api::<PartialObjectMeta<Service>>::all(client), cfg).default_backoff().reflect(services_w);

    let run = async move {
        futures::join!(
            drain("ContractPolicy", policy_stream),
            drain("ChannelContract", contract_stream),
            drain("Namespace", namespace_stream),
            drain("Service", service_stream),
        );
    };
    (Caches { policies, contracts, namespaces, services }, run)
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
    /// Waits until every cache has listed once.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
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
        self.caches.policies.state()
    }

    fn contracts_in(&self, namespace: &str) -> Vec<ContractRef> {
        self.caches
            .contracts
            .state()
            .iter()
            .filter(|c| c.metadata.namespace.as_deref() == Some(namespace))
            .map(|c| contract_ref(c))
            .collect()
    }

    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.caches.cached_namespace_labels(namespace).or_else(|| self.fetched.get(namespace).cloned())
    }
}
