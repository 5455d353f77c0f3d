//! The watches of `operator run`, built over the caches: each fills its cache and then triggers the
//! contracts its change concerns, so that a reconcile never reads a cache older than the event that caused
//! it.

use std::sync::{Arc, Mutex};

use crds::ChannelContract;
use futures::stream::BoxStream;
use futures::{StreamExt, future, stream};
use k8s_openapi::api::core::v1::Node;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, predicates};
use kube::{Api, Client, ResourceExt};

use crate::publish::configmap;
use crate::reconcile::Context;
use crate::watch::Caches;
use crate::watch::cache::{CachedConfigMap, CachedService, CachedSlice};
use crate::watch::index::{ContractIndex, ContractKey};
use crate::watch::triggers::{forget_resource_version, slim, slim_node, triggers, watch_failed};

/// The writers of the caches, for the watches to fill.
#[allow(missing_debug_implementations)]
pub struct Writers {
    contracts: Writer<ChannelContract>,
    services: Writer<CachedService>,
    slices: Writer<CachedSlice>,
    nodes: Writer<PartialObjectMeta<Node>>,
    config_maps: Writer<CachedConfigMap>,
}

/// Empty caches and their writers.
pub fn caches() -> (Caches, Writers) {
    let (contracts, contracts_w) = reflector::store::<ChannelContract>();
    let (services, services_w) = reflector::store::<CachedService>();
    let (slices, slices_w) = reflector::store::<CachedSlice>();
    let (nodes, nodes_w) = reflector::store();
    let (config_maps, config_maps_w) = reflector::store::<CachedConfigMap>();
    let index = Arc::new(Mutex::new(ContractIndex::default()));
    let caches = Caches { contracts, services, slices, nodes, config_maps, index };
    let writers = Writers {
        contracts: contracts_w,
        services: services_w,
        slices: slices_w,
        nodes: nodes_w,
        config_maps: config_maps_w,
    };
    (caches, writers)
}

/// What the controller is built over.
#[allow(missing_debug_implementations)]
pub struct Watches {
    /// The contracts whose generation changed.
    pub contracts: BoxStream<'static, Result<ChannelContract, watcher::Error>>,
    /// The contracts' cache.
    pub store: Store<ChannelContract>,
    /// The contracts that Service, EndpointSlice and Node changes concern.
    pub triggers: BoxStream<'static, ObjectRef<ChannelContract>>,
    /// The operator's ConfigMaps that changed (not by its own write).
    pub config_maps: BoxStream<'static, Result<CachedConfigMap, watcher::Error>>,
}

impl Watches {
    /// Starts the watches (they run as the controller polls them).
    pub fn start(client: &Client, contract_selector: Option<&str>, ctx: &Arc<Context>, writers: Writers) -> Self {
        let caches = ctx.caches.clone();
        let cfg = watcher::Config::default().any_semantic();
        let contract_cfg = match contract_selector {
            Some(selector) => cfg.clone().labels(selector),
            None => cfg.clone(),
        };
        let contract_stream = {
            let ctx = ctx.clone();
            watcher(Api::<ChannelContract>::all(client.clone()), contract_cfg)
                .default_backoff()
                .modify(slim)
                .reflect(writers.contracts)
                .inspect(move |event| match event {
                    Ok(Event::Apply(c) | Event::InitApply(c)) => ctx.caches.index().contract_applied(c),
                    Ok(Event::Delete(c)) => {
                        let key = ContractKey::of(c);
                        ctx.caches.index().contract_deleted(&key);
                        ctx.forget(&key);
                    }
                    Ok(Event::Init | Event::InitDone) => {}
                    Err(e) => watch_failed("ChannelContract", e),
                })
                .applied_objects()
                .filter(|r| future::ready(r.is_ok()))
                // Our own status writes do not change the generation: they do not reconcile again.
                .predicate_filter(predicates::generation, Default::default())
        };
        let service_triggers = {
            let caches = caches.clone();
            let events = watcher(Api::<CachedService>::all(client.clone()), cfg.clone())
                .default_backoff()
                .modify(forget_resource_version)
                .reflect(writers.services);
            triggers("Service", events, move |s, _| {
                caches.index().contracts_of_service(&s.namespace().unwrap_or_default(), &s.name_any())
            })
        };
        let slice_triggers = {
            let caches = caches.clone();
            let events = watcher(Api::<CachedSlice>::all(client.clone()), cfg.clone())
                .default_backoff()
                .modify(forget_resource_version)
                .reflect(writers.slices);
            triggers("EndpointSlice", events, move |s, deleted| {
                let (namespace, name) = (s.namespace().unwrap_or_default(), s.name_any());
                if deleted {
                    caches.index().slice_deleted(&namespace, &name)
                } else {
                    caches.index().slice_applied(&namespace, &name, s.service.as_deref())
                }
            })
        };
        let node_triggers = {
            let (caches, synced) = (caches.clone(), ctx.synced.clone());
            let events = watcher(Api::<PartialObjectMeta<Node>>::all(client.clone()), cfg.clone())
                .default_backoff()
                .modify(slim_node)
                .reflect(writers.nodes);
            triggers("Node", events, move |n, deleted| {
                let name = n.name_any();
                let changed = if deleted {
                    caches.index().node_deleted(&name)
                } else {
                    caches.index().node_applied(&name, n.labels().get(crds::REGION_LABEL).map(String::as_str))
                };
                // Before the caches have synced no reconcile has read a region, and every contract is
                // reconciled once they have: the first list of Nodes only records regions.
                if changed && *synced.borrow() { caches.contracts_on_node(&name) } else { Vec::new() }
            })
        };
        let managed = format!("{}={}", configmap::MANAGED_BY_LABEL, configmap::MANAGER);
        let config_map_stream = watcher(Api::<CachedConfigMap>::all(client.clone()), cfg.clone().labels(&managed))
            .default_backoff()
            .modify(forget_resource_version)
            .reflect(writers.config_maps)
            .map({
                // Every change reconciles the owner (so that an edit or a deletion is undone), except the
                // echo of the operator's own write.
                let ctx = ctx.clone();
                move |event| match event {
                    Ok(Event::Apply(cm)) if ctx.is_own_echo(&cm) => Vec::new(),
                    Ok(Event::Apply(cm) | Event::InitApply(cm)) => vec![Ok(cm)],
                    Ok(Event::Delete(cm)) => {
                        ctx.forget_published(&cm);
                        vec![Ok(cm)]
                    }
                    Ok(Event::Init | Event::InitDone) => Vec::new(),
                    Err(e) => {
                        watch_failed("ConfigMap", &e);
                        Vec::new()
                    }
                }
            })
            .flat_map(stream::iter);
        Self {
            contracts: contract_stream.boxed(),
            store: caches.contracts.clone(),
            triggers: stream::select_all([service_triggers.boxed(), slice_triggers.boxed(), node_triggers.boxed()])
                .boxed(),
            config_maps: config_map_stream.boxed(),
        }
    }
}
