//! Which contracts a change concerns: an in-memory index from Services, EndpointSlices and Nodes to the
//! ChannelContracts that use them, fed by the watches and by the reconciler. Pure data, no I/O; the
//! controller keeps it behind a mutex that is never held across an await.
//!
//! - A contract uses the Services its spec names (`spec.service` and each channel's Service): recorded
//!   when the contract's watch event is handled, so before any reconcile of that generation starts.
//! - A contract uses the Nodes its endpoints sit on; those are not indexed per contract: a Node whose
//!   region changes is rare, and then the controller finds its contracts through the EndpointSlices
//!   that name it (`Caches::contracts_on_node`). The Node's cache is updated before that scan, so either
//!   a running reconcile read the new region or the scan finds its contract and reconciles it again.
//! - EndpointSlices are indexed by their Service (label `kubernetes.io/service-name`), both to find a
//!   Service's slices without scanning every slice and to map a slice change to the Service's contracts
//!   (also when a slice moves from one Service to another, or is deleted).
//! - A Node change concerns its contracts only when its region label changed (or the Node came or went):
//!   Node status heartbeats never reconcile anything ([`ContractIndex::node_applied`]).

use std::collections::{BTreeMap, BTreeSet};

use crds::ChannelContract;

use crds::resolve_channels;

pub use crate::model::ContractKey;

type NamespacedName = (String, String);

/// The index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContractIndex {
    /// contract -> Services (in its namespace) it names.
    services_of: BTreeMap<ContractKey, BTreeSet<String>>,
    /// (namespace, Service) -> contracts.
    by_service: BTreeMap<NamespacedName, BTreeSet<ContractKey>>,
    /// (namespace, Service) -> names of its EndpointSlices, sorted (most Services have one or two: a
    /// vector costs a fraction of a set's node).
    slices: BTreeMap<NamespacedName, Vec<String>>,
    /// (namespace, EndpointSlice) -> its Service.
    slice_service: BTreeMap<NamespacedName, String>,
    /// Node -> its region label, as last seen.
    node_regions: BTreeMap<String, Option<String>>,
}

fn remove_from<K: Ord + Clone, V: Ord>(map: &mut BTreeMap<K, BTreeSet<V>>, key: &K, value: &V) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl ContractIndex {
    /// A contract was created or changed: it now uses the Services its spec names.
    pub fn contract_applied(&mut self, contract: &ChannelContract) {
        let key = ContractKey::of(contract);
        let mut services: BTreeSet<String> = resolve_channels(&contract.spec).into_iter().map(|c| c.service).collect();
        services.insert(contract.spec.service.clone());
        for old in self.services_of.get(&key).cloned().unwrap_or_default() {
            remove_from(&mut self.by_service, &(key.namespace.clone(), old), &key);
        }
        for service in &services {
            self.by_service.entry((key.namespace.clone(), service.clone())).or_default().insert(key.clone());
        }
        self.services_of.insert(key, services);
    }

    /// A contract was deleted.
    pub fn contract_deleted(&mut self, key: &ContractKey) {
        for old in self.services_of.remove(key).unwrap_or_default() {
            remove_from(&mut self.by_service, &(key.namespace.clone(), old), key);
        }
    }

    /// The contracts that use the Service `namespace/name`.
    pub fn contracts_of_service(&self, namespace: &str, name: &str) -> Vec<ContractKey> {
        self.by_service.get(&(namespace.to_owned(), name.to_owned())).into_iter().flatten().cloned().collect()
    }

    /// An EndpointSlice was created or changed; `service` is its `kubernetes.io/service-name` label.
    /// Returns the contracts it concerns (of its Service, and of its former Service if it moved).
    pub fn slice_applied(&mut self, namespace: &str, slice: &str, service: Option<&str>) -> Vec<ContractKey> {
        let mut affected = self.slice_deleted(namespace, slice);
        if let Some(service) = service.filter(|s| !s.is_empty()) {
            let names = self.slices.entry((namespace.to_owned(), service.to_owned())).or_default();
            if let Err(at) = names.binary_search_by(|n| n.as_str().cmp(slice)) {
                names.insert(at, slice.to_owned());
            }
            self.slice_service.insert((namespace.to_owned(), slice.to_owned()), service.to_owned());
            affected.extend(self.contracts_of_service(namespace, service));
        }
        affected.sort();
        affected.dedup();
        affected
    }

    /// An EndpointSlice was deleted. Returns the contracts of its Service.
    pub fn slice_deleted(&mut self, namespace: &str, slice: &str) -> Vec<ContractKey> {
        let Some(service) = self.slice_service.remove(&(namespace.to_owned(), slice.to_owned())) else {
            return Vec::new();
        };
        let key = (namespace.to_owned(), service.clone());
        if let Some(names) = self.slices.get_mut(&key) {
            names.retain(|n| n != slice);
            if names.is_empty() {
                self.slices.remove(&key);
            }
        }
        self.contracts_of_service(namespace, &service)
    }

    /// The names of the EndpointSlices of the Service `namespace/service`.
    pub fn slices_of(&self, namespace: &str, service: &str) -> Vec<String> {
        self.slices.get(&(namespace.to_owned(), service.to_owned())).cloned().unwrap_or_default()
    }

    /// A Node was created or changed. Returns whether that concerns contracts: its region label is not
    /// the one last seen (or the Node is new).
    pub fn node_applied(&mut self, node: &str, region: Option<&str>) -> bool {
        let region = region.map(str::to_owned);
        if self.node_regions.get(node) == Some(&region) {
            return false;
        }
        self.node_regions.insert(node.to_owned(), region);
        true
    }

    /// A Node was deleted. Returns whether it was known.
    pub fn node_deleted(&mut self, node: &str) -> bool {
        self.node_regions.remove(node).is_some()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn contract(name: &str, service: &str, cache: Option<&str>) -> ChannelContract {
        let mut spec = json!({"service": service, "port": 8080, "sla": {"maxLatency": "1s"}});
        if let Some(cache) = cache {
            spec["channels"] = json!([{"name": "primary"}, {"name": "cache", "service": cache}]);
        }
        serde_json::from_value(json!({
            "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
        }))
        .expect("contract")
    }

    fn key(name: &str) -> ContractKey {
        ContractKey { namespace: "ns".into(), name: name.into() }
    }

    #[test]
    fn services_map_to_the_contracts_that_name_them() {
        let mut index = ContractIndex::default();
        index.contract_applied(&contract("a", "pv", Some("cache")));
        index.contract_applied(&contract("b", "pv", None));
        assert_eq!(index.contracts_of_service("ns", "pv"), [key("a"), key("b")]);
        assert_eq!(index.contracts_of_service("ns", "cache"), [key("a")]);
        assert_eq!(index.contracts_of_service("other", "pv"), []);

        // An edit that drops the cache channel drops the mapping.
        index.contract_applied(&contract("a", "pv", None));
        assert_eq!(index.contracts_of_service("ns", "cache"), []);
        index.contract_deleted(&key("b"));
        assert_eq!(index.contracts_of_service("ns", "pv"), [key("a")]);
        index.contract_deleted(&key("a"));
        assert_eq!(index, ContractIndex::default(), "nothing is left behind");
    }

    #[test]
    fn slices_map_to_their_service_contracts_also_when_they_move_or_go() {
        let mut index = ContractIndex::default();
        index.contract_applied(&contract("a", "pv", Some("cache")));
        index.contract_applied(&contract("b", "other", None));
        assert_eq!(index.slice_applied("ns", "pv-1", Some("pv")), [key("a")]);
        assert_eq!(index.slice_applied("ns", "pv-2", Some("pv")), [key("a")]);
        assert_eq!(index.slices_of("ns", "pv"), ["pv-1", "pv-2"]);
        // Relabelled to another Service: both Services' contracts are concerned.
        assert_eq!(index.slice_applied("ns", "pv-2", Some("other")), [key("a"), key("b")]);
        assert_eq!(index.slices_of("ns", "pv"), ["pv-1"]);
        assert_eq!(index.slice_deleted("ns", "pv-2"), [key("b")]);
        assert_eq!(index.slices_of("ns", "other"), Vec::<String>::new());
        // A slice of a Service that no contract uses concerns none, but is indexed for later.
        assert_eq!(index.slice_applied("ns", "x-1", Some("x")), []);
        assert_eq!(index.slices_of("ns", "x"), ["x-1"]);
        assert_eq!(index.slice_applied("ns", "unlabelled", None), []);
        assert_eq!(index.slice_deleted("ns", "never-seen"), []);
    }

    #[test]
    fn nodes_concern_contracts_only_when_their_region_changes() {
        let mut index = ContractIndex::default();
        assert!(index.node_applied("n1", Some("gz")), "a new Node");
        assert!(!index.node_applied("n1", Some("gz")), "same region: a heartbeat");
        assert!(index.node_applied("n1", Some("sz")));
        assert!(index.node_applied("n1", None));
        assert!(!index.node_applied("n1", None));
        assert!(index.node_deleted("n1"));
        assert!(!index.node_deleted("n1"), "already gone");
        assert!(index.node_applied("n1", None), "back again");
    }
}
