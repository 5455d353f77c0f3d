//! What one proxy is served: its view (region, namespaces, listen address) over the catalog, per
//! resource type. Proxies with the same view share one snapshot per catalog generation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use prost::Name;

use super::catalog::{Catalog, ContractResources, Resource};
use crate::envoy::any;
use crate::envoy::pb::envoy::config::cluster::v3::Cluster;
use crate::envoy::pb::envoy::config::listener::v3::Listener;
use crate::envoy::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use crate::model::ContractKey;
use crate::translate::gateway_listener;

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

/// Everything one view is served, by kind, by name.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The catalog generation it was made at.
    pub generation: u64,
    /// By [`Kind::index`], by name.
    pub kinds: [BTreeMap<String, Item>; 4],
}

/// The snapshot of `view` over the catalog.
pub fn snapshot(catalog: &Catalog, view: &View) -> Snapshot {
    let mut snapshot = Snapshot { generation: catalog.generation(), ..Snapshot::default() };
    let mut ports = BTreeSet::new();
    for published in catalog.all_served() {
        if view.namespaces.as_ref().is_some_and(|n| !n.contains(&published.key.namespace)) {
            continue;
        }
        let Some(resources) = published.resources(view.region.as_deref()) else { continue };
        let version: Arc<str> = Arc::from(published.version.as_str());
        ports.insert(resources.port);
        add(&mut snapshot, &resources, &version);
    }
    for port in ports {
        let listener = gateway_listener(view.listen, port);
        let resource = Resource { name: listener.name.clone(), any: any(&listener) };
        // The listener is made from the port and the address alone.
        let version: Arc<str> = Arc::from(format!("listener-v1:{}:{port}", view.listen).as_str());
        snapshot.kinds[Kind::Listener.index()]
            .insert(resource.name.clone(), Item { version, resource: Arc::new(resource) });
    }
    snapshot
}

fn add(snapshot: &mut Snapshot, resources: &ContractResources, version: &Arc<str>) {
    for (kind, list) in
        [(Kind::Cluster, &resources.clusters), (Kind::Scope, &resources.scopes), (Kind::Route, &resources.routes)]
    {
        for resource in list {
            snapshot.kinds[kind.index()]
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
}
