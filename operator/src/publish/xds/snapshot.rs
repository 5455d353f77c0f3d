//! What one proxy is served: its view (region, namespaces, listen address) over the catalog, per
//! resource type. Proxies with the same view share one snapshot per catalog generation, and views with
//! the same region and namespaces (that differ in the listen address alone) share its contracts'
//! resources ([`Contracts`]): only the listeners are a view's own.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::Arc;

use prost::Name;

use super::catalog::{Catalog, ChangeLog, ContractResources, Resource};
use crate::envoy::any;
use crate::envoy::pb::envoy::config::cluster::v3::Cluster;
use crate::envoy::pb::envoy::config::listener::v3::Listener;
use crate::envoy::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use crate::model::ContractKey;
use crate::translate::{fault_listener, gateway_listener};

/// The resource types served, in the order a change is sent: clusters before the listeners and scopes
/// that lead to them, scopes before the routes they name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// CDS.
    Cluster,
    /// LDS.
    Listener,
    /// SRDS.
    Scope,
    /// RDS.
    Route,
}

impl Kind {
    /// Every kind, in sending order.
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Listener, Kind::Scope, Kind::Route];
    /// The kinds a contract has resources of.
    pub const OF_CONTRACTS: [Kind; 3] = [Kind::Cluster, Kind::Scope, Kind::Route];

    /// Its type URL.
    pub fn type_url(self) -> String {
        match self {
            Kind::Cluster => Cluster::type_url(),
            Kind::Listener => Listener::type_url(),
            Kind::Scope => ScopedRouteConfiguration::type_url(),
            Kind::Route => RouteConfiguration::type_url(),
        }
    }

    /// The kind of a type URL this server serves.
    pub fn of(type_url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == type_url)
    }

    /// Its index in [`Kind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether a proxy subscribes to all resources of the kind (wildcard) rather than to names.
    pub fn wildcard(self) -> bool {
        self != Kind::Route
    }
}

/// What a proxy is served depends on these alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct View {
    /// The proxy's region: first in every primary's order.
    pub region: Option<String>,
    /// The namespaces whose contracts it serves; None: all.
    pub namespaces: Option<BTreeSet<String>>,
    /// The address its gateway listeners bind.
    pub listen: IpAddr,
    /// Whether it can carry a drill's fault (internal listeners).
    pub drills: bool,
    /// The share of requests its gateway listeners trace (hundredths of a percent); None: no tracer.
    pub tracing: Option<u32>,
}

impl View {
    /// What the contracts' resources depend on: the region, the namespaces and whether drills' faults
    /// can be put in (not the listen address).
    pub fn audience(&self) -> (Option<String>, Option<BTreeSet<String>>, bool) {
        (self.region.clone(), self.namespaces.clone(), self.drills)
    }

    fn serves(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|n| n.contains(namespace))
    }
}

/// The contract that owns a resource, from its name (`csp~<ns>~<name>…`); None for a listener.
pub fn owner(kind: Kind, name: &str) -> Option<ContractKey> {
    if kind == Kind::Listener {
        return None;
    }
    let mut parts = name.split('~');
    (parts.next()? == "csp").then_some(())?;
    let namespace = parts.next()?.to_owned();
    let name = parts.next()?.to_owned();
    Some(ContractKey { namespace, name })
}

/// One resource of a snapshot: its version, and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The version: the owning contract's `configVersion`, or the listener's own.
    pub version: Arc<str>,
    /// The resource.
    pub resource: Arc<Resource>,
}

/// Resources by name (names shared with the catalog's resources: a copy copies no name).
pub type Items = BTreeMap<Arc<str>, Item>;

/// Everything one view is served, by kind, by name.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The catalog generation it was made at.
    pub generation: u64,
    /// By [`Kind::index`], by name. The contracts' kinds are those of the view's [`Contracts`].
    pub kinds: [Arc<Items>; 4],
    /// The contracts changed at the generations before this one: what a snapshot of the same view at an
    /// earlier generation differs in (see [`Snapshot::changed_since`]).
    pub log: Arc<ChangeLog>,
}

impl Snapshot {
    /// The contracts whose resources may differ between `earlier`, a snapshot of the same view, and this
    /// one (all others are the same in both); None when that is not known (the log does not reach back).
    pub fn changed_since(&self, earlier: &Snapshot) -> Option<BTreeSet<&ContractKey>> {
        self.log.changed(earlier.generation, self.generation)
    }

    /// The resources of kind `kind` of one contract: those named `csp~<ns>~<name>` or
    /// `csp~<ns>~<name>~…` (the names [`owner`] attributes to it), in name order.
    pub fn of_contract<'a>(
        &'a self,
        kind: Kind,
        key: &ContractKey,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a Item)> + use<'a> {
        of_contract(&self.kinds[kind.index()], key)
    }
}

/// The contracts' resources served to the views of one region and set of namespaces (every kind but the
/// listeners), and the ports of their gateway listeners.
#[derive(Debug, Default)]
pub struct Contracts {
    /// The catalog generation they were made at.
    pub generation: u64,
    /// By [`Kind::index`] (no listeners), by name.
    pub kinds: [Arc<Items>; 4],
    /// The ports the contracts are served on.
    pub ports: BTreeSet<u16>,
}

/// The contracts' resources for `view`'s region and namespaces over the catalog.
pub fn contracts(catalog: &Catalog, view: &View) -> Contracts {
    let mut kinds: [Items; 4] = Default::default();
    for published in catalog.all_served() {
        if !view.serves(&published.key.namespace) {
            continue;
        }
        let Some(resources) = published.resources(view.region.as_deref(), view.drills) else { continue };
        add(&mut kinds, &resources, &Arc::from(published.version.as_str()));
    }
    Contracts { generation: catalog.generation(), kinds: kinds.map(Arc::new), ports: ports(catalog, view) }
}

/// The same as [`contracts`], made from `earlier` (of the same region and namespaces) by looking again
/// only at the contracts changed since. None when the catalog's log no longer reaches back to `earlier`.
pub fn derive(earlier: &Contracts, catalog: &Catalog, view: &View) -> Option<Contracts> {
    let changed = catalog.log().changed(earlier.generation, catalog.generation())?;
    let mut kinds: [Items; 4] = Default::default();
    for kind in Kind::OF_CONTRACTS {
        kinds[kind.index()] = (*earlier.kinds[kind.index()]).clone();
    }
    for key in changed {
        for kind in Kind::OF_CONTRACTS {
            let gone: Vec<Arc<str>> = of_contract(&kinds[kind.index()], key).map(|(name, _)| name.clone()).collect();
            for name in gone {
                kinds[kind.index()].remove(&*name);
            }
        }
        if !view.serves(&key.namespace) {
            continue;
        }
        let Some(published) = catalog.served(key) else { continue };
        let Some(resources) = published.resources(view.region.as_deref(), view.drills) else { continue };
        add(&mut kinds, &resources, &Arc::from(published.version.as_str()));
    }
    Some(Contracts { generation: catalog.generation(), kinds: kinds.map(Arc::new), ports: ports(catalog, view) })
}

/// The snapshot of `view`: the contracts' resources for its region and namespaces, and its listeners.
pub fn snapshot_of(contracts: &Contracts, log: &Arc<ChangeLog>, view: &View) -> Snapshot {
    let mut listeners = Items::new();
    for &port in &contracts.ports {
        let listener = gateway_listener(view.listen, port, view.tracing);
        let resource = Resource { name: Arc::from(listener.name.as_str()), any: any(&listener) };
        // The listener is made from the port, the address and the tracing share alone.
        let tracing = view.tracing.map(|t| t.to_string()).unwrap_or_default();
        let version: Arc<str> = Arc::from(format!("listener-v3:{}:{port}:{tracing}", view.listen).as_str());
        listeners.insert(resource.name.clone(), Item { version, resource: Arc::new(resource) });
    }
    if view.drills {
        // The internal listener that drills' faulted endpoints are reached through: always there for a
        // proxy that can have it, so that a drill's start and end change no listener.
        let listener = fault_listener();
        let resource = Resource { name: Arc::from(listener.name.as_str()), any: any(&listener) };
        let version: Arc<str> = Arc::from("fault-listener-v1");
        listeners.insert(resource.name.clone(), Item { version, resource: Arc::new(resource) });
    }
    let mut kinds = contracts.kinds.clone();
    kinds[Kind::Listener.index()] = Arc::new(listeners);
    Snapshot { generation: contracts.generation, kinds, log: log.clone() }
}

/// The snapshot of `view` over the catalog.
pub fn snapshot(catalog: &Catalog, view: &View) -> Snapshot {
    snapshot_of(&contracts(catalog, view), catalog.log(), view)
}

/// The ports of the contracts served to the view.
fn ports(catalog: &Catalog, view: &View) -> BTreeSet<u16> {
    catalog
        .all_served()
        .filter(|published| view.serves(&published.key.namespace))
        .filter_map(|published| Some(published.resources(view.region.as_deref(), view.drills)?.port))
        .collect()
}

/// The resources of one contract in `items`: those named `csp~<ns>~<name>` or `csp~<ns>~<name>~…` (the
/// names [`owner`] attributes to it: namespaces and names never contain `~`), in name order.
fn of_contract<'a>(items: &'a Items, key: &ContractKey) -> impl Iterator<Item = (&'a Arc<str>, &'a Item)> + use<'a> {
    let base = format!("csp~{}~{}", key.namespace, key.name);
    let below = format!("{base}~");
    // '~' + 1: every name that starts with `<base>~` sorts before it.
    let above = format!("{base}\u{7f}");
    let exact = items.get_key_value(base.as_str());
    exact.into_iter().chain(items.range::<str, _>((Bound::Included(below.as_str()), Bound::Excluded(above.as_str()))))
}

fn add(kinds: &mut [Items; 4], resources: &ContractResources, version: &Arc<str>) {
    for (kind, list) in
        [(Kind::Cluster, &resources.clusters), (Kind::Scope, &resources.scopes), (Kind::Route, &resources.routes)]
    {
        for resource in list {
            kinds[kind.index()]
                .insert(resource.name.clone(), Item { version: version.clone(), resource: resource.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_come_from_resource_names() {
        let key = |ns: &str, n: &str| Some(ContractKey { namespace: ns.into(), name: n.into() });
        assert_eq!(owner(Kind::Cluster, "csp~payments~verify~primary"), key("payments", "verify"));
        assert_eq!(owner(Kind::Route, "csp~payments~verify"), key("payments", "verify"));
        assert_eq!(owner(Kind::Scope, "csp~a~b~b.a:80"), key("a", "b"));
        assert_eq!(owner(Kind::Listener, "csp~port~8080"), None);
        assert_eq!(owner(Kind::Cluster, "other"), None);
        for kind in Kind::ALL {
            assert_eq!(Kind::of(&kind.type_url()), Some(kind));
        }
    }

    use proptest::prelude::*;

    use super::super::catalog::{Published, Rejection};
    use crate::model::{ChannelEndpoints, Endpoint};

    /// Contracts in two namespaces; `c1-x` sorts among `c1`'s resources.
    const CONTRACTS: [(&str, &str); 4] = [("a", "c1"), ("a", "c1-x"), ("b", "c1"), ("b", "c2")];

    fn published(i: usize, version: u8, port: u16) -> Published {
        let (namespace, name) = CONTRACTS[i];
        let contract: crds::ChannelContract = serde_json::from_value(serde_json::json!({
            "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"service": name, "port": port, "sla": {"maxLatency": format!("{}ms", 100 + u32::from(version))},
                "failover": {"regions": ["gz", "sz"]}},
        }))
        .expect("a contract");
        let mut endpoints = ChannelEndpoints::default();
        endpoints.channels.insert(
            "primary".into(),
            vec![Endpoint { address: "10.0.0.1".into(), port: 80, ready: true, region: Some("sz".into()) }],
        );
        let key = ContractKey { namespace: namespace.into(), name: name.into() };
        Published::new(key, format!("v{version}"), Arc::new(contract), endpoints)
    }

    /// Each resource by name: its version and its proto3 JSON. Not the bytes: a protobuf map (an
    /// endpoint's metadata) is encoded in the order of a `HashMap`, which differs between two
    /// translations of the same version.
    fn canonical(kinds: &[Arc<Items>; 4]) -> Vec<Vec<(String, String, serde_json::Value)>> {
        kinds
            .iter()
            .map(|items| {
                items
                    .iter()
                    .map(|(name, item)| {
                        let json = crate::envoy::json::to_value(&item.resource.any).expect("json");
                        (name.to_string(), item.version.to_string(), json)
                    })
                    .collect()
            })
            .collect()
    }

    #[derive(Debug, Clone)]
    enum Change {
        Publish { contract: usize, version: u8, port: u16 },
        Remove { contract: usize },
        Accept { contract: usize, version: u8 },
        Reject { contract: usize, version: u8 },
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => (0..4usize, 0..3u8, prop::sample::select(vec![80u16, 8080]))
                .prop_map(|(contract, version, port)| Change::Publish { contract, version, port }),
            1 => (0..4usize).prop_map(|contract| Change::Remove { contract }),
            1 => (0..4usize, 0..3u8).prop_map(|(contract, version)| Change::Accept { contract, version }),
            1 => (0..4usize, 0..3u8).prop_map(|(contract, version)| Change::Reject { contract, version }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn contracts_made_from_the_previous_ones_are_those_made_whole(
            changes in prop::collection::vec(change(), 1..25),
            only_a in prop::bool::ANY,
            every in 1..4usize,
        ) {
            let mut catalog = Catalog::default();
            let view = View {
                region: Some("gz".into()),
                namespaces: only_a.then(|| ["a".to_owned()].into_iter().collect()),
                listen: IpAddr::from([127, 0, 0, 2]),
                drills: false,
                tracing: None,
            };
            let mut earlier = contracts(&catalog, &view);
            for (step, change) in changes.into_iter().enumerate() {
                let key = |i: usize| ContractKey { namespace: CONTRACTS[i].0.into(), name: CONTRACTS[i].1.into() };
                match change {
                    Change::Publish { contract, version, port } => {
                        // A version is its content (the operator's versions are hashes of it): the same
                        // version is always on the same port, whatever port was drawn.
                        let port = if (contract + usize::from(version)) % 2 == 0 { port.min(80) } else { port.max(8080) };
                        catalog.publish(published(contract, version, port));
                    }
                    Change::Remove { contract } => {
                        catalog.remove(&key(contract));
                    }
                    Change::Accept { contract, version } => catalog.accepted(&key(contract), &format!("v{version}")),
                    Change::Reject { contract, version } => {
                        let rejection =
                            Rejection { version: format!("v{version}"), proxy: "p".into(), message: "no".into(), time: "t".into() };
                        catalog.rejected(&key(contract), rejection);
                    }
                }
                if step % every == 0 {
                    let derived = derive(&earlier, &catalog, &view).expect("the log reaches back");
                    let whole = contracts(&catalog, &view);
                    prop_assert_eq!(derived.generation, whole.generation);
                    prop_assert_eq!(canonical(&derived.kinds), canonical(&whole.kinds));
                    prop_assert_eq!(&derived.ports, &whole.ports);
                    let (a, b) = (snapshot_of(&derived, catalog.log(), &view), snapshot(&catalog, &view));
                    prop_assert_eq!(canonical(&a.kinds), canonical(&b.kinds));
                    earlier = derived;
                }
            }
        }
    }

    #[test]
    fn a_contracts_resources_are_found_by_name_and_changes_by_generation() {
        let mut catalog = Catalog::default();
        for i in 0..4 {
            catalog.publish(published(i, 1, 80));
        }
        let view =
            View { region: None, namespaces: None, listen: IpAddr::from([0, 0, 0, 0]), drills: false, tracing: None };
        let before = snapshot(&catalog, &view);
        let c1 = ContractKey { namespace: "a".into(), name: "c1".into() };
        let names: Vec<&str> = before.of_contract(Kind::Cluster, &c1).map(|(n, _)| &**n).collect();
        assert_eq!(names, vec!["csp~a~c1", "csp~a~c1~primary"], "not c1-x's");
        catalog.publish(published(0, 2, 80));
        let after = snapshot(&catalog, &view);
        let changed: Vec<&ContractKey> = after.changed_since(&before).expect("logged").into_iter().collect();
        assert_eq!(changed, vec![&c1]);
        assert_eq!(after.changed_since(&after).map(|c| c.len()), Some(0));
    }
}
