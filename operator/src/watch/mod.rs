//! What the operator watches and how a change finds its contracts: the caches (Services, EndpointSlices,
//! Nodes, ConfigMaps, kept as the fields the operator reads: [`cache`]), the [`index`] of which contracts
//! use what, the gathering of a contract's endpoints from them ([`endpoints`]), and the triggers that turn
//! a watch's changes into the contracts they concern ([`triggers`]).

pub mod cache;
pub mod endpoints;
pub mod index;
pub mod triggers;

use std::sync::{Arc, Mutex, PoisonError};

use crds::ChannelContract;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::WriterDropped};

use self::cache::{CachedConfigMap, CachedService, CachedSlice};
use self::endpoints::ClusterView;
use self::index::{ContractIndex, ContractKey};

/// The caches the reconciler reads, filled by the watches. Services and EndpointSlices are kept as the
/// few fields the operator reads ([`cache`]); the other objects without `metadata.managedFields`
/// and kubectl's last-applied configuration, Nodes with only their region label (see [`triggers`]).
#[derive(Clone)]
pub struct Caches {
    /// ChannelContracts (those the operator's selector matches).
    pub contracts: Store<ChannelContract>,
    /// Services.
    pub services: Store<CachedService>,
    /// EndpointSlices.
    pub slices: Store<CachedSlice>,
    /// Nodes (metadata: their labels).
    pub nodes: Store<PartialObjectMeta<Node>>,
    /// The ConfigMaps the operator manages, as their fingerprints.
    pub config_maps: Store<CachedConfigMap>,
    /// Which contracts use what.
    pub index: Arc<Mutex<ContractIndex>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("contracts", &self.contracts.len())
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .field("nodes", &self.nodes.len())
            .field("config_maps", &self.config_maps.len())
            .finish()
    }
}

impl Caches {
    /// Waits until every watch has listed once.
    ///
    /// A Store's readiness wakes only the last task that waited on it (the controller also waits on
    /// the contracts' Store), so this polls again every 100 ms; call it from one task and fan the result
    /// out (see [`crate::reconcile::Context::synced`]).
    pub async fn wait_until_ready(&self) -> Result<(), WriterDropped> {
        lifecycle::ready::polled(lifecycle::ready::POLL, || self.all_ready()).await
    }

    async fn all_ready(&self) -> Result<(), WriterDropped> {
        self.contracts.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await?;
        Ok(())
    }

    /// The index, locked (never across an await).
    pub fn index(&self) -> std::sync::MutexGuard<'_, ContractIndex> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The contracts with an endpoint on `node`: those of the Services whose EndpointSlices name it. A
    /// scan of every cached EndpointSlice, made only when a Node's region changes (or a Node comes or
    /// goes), which is rare; keeping a Node -> contracts map up to date instead cost memory on every
    /// contract and work on every reconcile.
    pub fn contracts_on_node(&self, node: &str) -> Vec<ContractKey> {
        let slices = self.slices.state();
        let index = self.index();
        let mut keys: Vec<ContractKey> = slices
            .iter()
            .filter(|s| s.endpoints.iter().any(|e| e.node.as_deref() == Some(node)))
            .filter_map(|s| Some(index.contracts_of_service(s.metadata.namespace.as_deref()?, s.service.as_deref()?)))
            .flatten()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

impl ClusterView for Caches {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<CachedService>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<CachedSlice>> {
        let names = self.index().slices_of(namespace, service);
        names
            .iter()
            .filter_map(|n| self.slices.get(&ObjectRef::new(n).within(namespace)))
            // The index may lag the cache by an event: trust the slice's own label.
            .filter(|s| s.service.as_deref() == Some(service))
            .collect()
    }

    fn node_region(&self, node: &str) -> Option<String> {
        self.nodes.get(&ObjectRef::new(node)).and_then(|n| n.labels().get(crds::REGION_LABEL).cloned())
    }
}
