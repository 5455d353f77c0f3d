//! The catalog: what the xDS server serves of each contract, and which versions proxies rejected.
//!
//! Each contract has its `current` version (the reconciler's latest translation) and the last version a
//! proxy acknowledged (`accepted`). A version that any proxy rejects (NACK) is withdrawn from the whole
//! fleet: every proxy is served the contract's `accepted` version instead (or nothing, if no version was
//! ever accepted), so that the fleet runs one version of a contract and a proxy that restarts never loads
//! the rejected one. The rejected version is not offered again; the next version (a spec or endpoint
//! change) is.
//!
//! Pure: no clock (times are arguments), no I/O.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use crds::ChannelContract;
use prost::Name;

use crate::envoy::any;
use crate::envoy::pb::envoy::config::cluster::v3::Cluster;
use crate::envoy::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use crate::envoy::pb::google::protobuf::Any;
use crate::model::{ActiveFault, ChannelEndpoints, ContractKey};
use crate::translate::{self, ValidContract};

/// How many rejected versions of a contract are remembered (so that flapping between them is not retried).
const REMEMBERED_REJECTIONS: usize = 8;

/// How many accepted versions of a contract are kept to fall back on.
const REMEMBERED_ACCEPTED: usize = 4;

/// One resource as it is sent: its name and its encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource's name (shared by every snapshot that has the resource).
    pub name: Arc<str>,
    /// The resource.
    pub any: Any,
}

/// A contract's resources for the proxies of one region, encoded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContractResources {
    /// The gateway listener's port the contract is served on.
    pub port: u16,
    /// Clusters (CDS).
    pub clusters: Vec<Arc<Resource>>,
    /// Scoped route configurations (SRDS).
    pub scopes: Vec<Arc<Resource>>,
    /// Route configurations (RDS).
    pub routes: Vec<Arc<Resource>>,
}

/// A region (None: no region), whether the proxies take drills' faults, and the translation, if any.
type RegionResources = (Option<String>, bool, Option<Arc<ContractResources>>);

/// One version of a contract as the reconciler published it, from which the resources of each region
/// are made (once per region, on demand).
#[derive(Debug)]
pub struct Published {
    /// The contract.
    pub key: ContractKey,
    /// Its `configVersion`.
    pub version: String,
    contract: Arc<ChannelContract>,
    endpoints: ChannelEndpoints,
    /// A drill's fault in force when it was published (part of its version).
    fault: Option<ActiveFault>,
    /// Made per region (a few), looked up without allocating.
    by_region: Mutex<Vec<RegionResources>>,
}

impl Published {
    /// A version of a contract: the contract (valid: the reconciler translated it) and its endpoints.
    pub fn new(key: ContractKey, version: String, contract: Arc<ChannelContract>, endpoints: ChannelEndpoints) -> Self {
        Self { key, version, contract, endpoints, fault: None, by_region: Mutex::default() }
    }

    /// The same, under a drill's fault.
    pub fn with_fault(mut self, fault: Option<ActiveFault>) -> Self {
        self.fault = fault;
        self
    }

    /// The contract's resources for the proxies of `region` (their region first in the primary's order),
    /// with the drill's fault for proxies that can take it (`drills`). None if the contract does not
    /// translate (it did when published, so never in practice).
    pub fn resources(&self, region: Option<&str>, drills: bool) -> Option<Arc<ContractResources>> {
        let drills = drills && self.fault.is_some();
        let mut memo = self.by_region.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, made)) = memo.iter().find(|(r, d, _)| r.as_deref() == region && *d == drills) {
            return made.clone();
        }
        let made = self.translate(region, drills);
        memo.push((region.map(str::to_owned), drills, made.clone()));
        made
    }

    fn translate(&self, region: Option<&str>, drills: bool) -> Option<Arc<ContractResources>> {
        let fault = self.fault.as_ref().filter(|_| drills);
        let translated = ValidContract::new(&self.contract)
            .and_then(|valid| translate::xds(&valid, &self.endpoints, region, fault))
            .inspect_err(|e| tracing::error!(contract = %self.key, error = %e, "cannot translate for xDS"))
            .ok()?;
        let encode_all = |items: Vec<(String, Any)>| -> Vec<Arc<Resource>> {
            items.into_iter().map(|(name, any)| Arc::new(Resource { name: Arc::from(name), any })).collect()
        };
        Some(Arc::new(ContractResources {
            port: translated.port,
            clusters: encode_all(translated.clusters.iter().map(|c| (c.name.clone(), any(c))).collect()),
            scopes: encode_all(translated.scopes.iter().map(|s| (s.name.clone(), any(s))).collect()),
            routes: std::iter::once(&translated.route_configuration)
                .chain(&translated.fault_routes)
                .map(|r| Arc::new(Resource { name: Arc::from(r.name.as_str()), any: any(r) }))
                .collect(),
        }))
    }
}

/// The type URLs of the resources a contract has.
pub fn contract_type_urls() -> [String; 3] {
    [Cluster::type_url(), ScopedRouteConfiguration::type_url(), RouteConfiguration::type_url()]
}

/// A proxy's rejection of a contract's version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    /// The version rejected.
    pub version: String,
    /// The proxy (`node.id`).
    pub proxy: String,
    /// Envoy's own message.
    pub message: String,
    /// When (RFC 3339).
    pub time: String,
}

#[derive(Debug)]
struct Entry {
    current: Arc<Published>,
    /// Versions proxies acknowledged, latest first: a version some proxy took and another rejects is
    /// dropped, and the one before it is served.
    accepted: VecDeque<Arc<Published>>,
    rejections: VecDeque<Rejection>,
}

impl Entry {
    fn rejection_of(&self, version: &str) -> Option<&Rejection> {
        self.rejections.iter().find(|r| r.version == version)
    }

    fn served(&self) -> Option<&Arc<Published>> {
        if self.rejection_of(&self.current.version).is_some() { self.accepted.front() } else { Some(&self.current) }
    }
}

/// How many changes the [`ChangeLog`] keeps.
const LOGGED_CHANGES: usize = 4096;

/// The contracts whose served version changed at each of the latest catalog generations (one contract per
/// generation), so that what two snapshots of a view differ in is found without comparing them whole.
/// Immutable once shared: the catalog copies it on write, each snapshot holds the one of its generation.
#[derive(Debug, Clone)]
pub struct ChangeLog {
    /// (generation, contract), oldest first.
    entries: VecDeque<(u64, Arc<ContractKey>)>,
    /// Changes at generations up to this one may be missing.
    floor: u64,
    capacity: usize,
}

impl Default for ChangeLog {
    fn default() -> Self {
        Self::with_capacity(LOGGED_CHANGES)
    }
}

impl ChangeLog {
    /// A log that keeps the latest `capacity` changes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { entries: VecDeque::new(), floor: 0, capacity: capacity.max(1) }
    }

    /// The served version of `key` changed at `generation` (later than every one recorded before).
    pub fn record(&mut self, generation: u64, key: ContractKey) {
        self.entries.push_back((generation, Arc::new(key)));
        while self.entries.len() > self.capacity {
            if let Some((oldest, _)) = self.entries.pop_front() {
                self.floor = oldest;
            }
        }
    }

    /// The contracts whose served version changed after generation `since` up to `until`; None when the
    /// log does not hold every one of those generations (it no longer reaches back to `since`, or a
    /// snapshot was made without it).
    pub fn changed(&self, since: u64, until: u64) -> Option<BTreeSet<&ContractKey>> {
        if since < self.floor || until < since {
            return None;
        }
        // Generations only grow along the log: the first change after `since` is found by bisection.
        let first = self.entries.partition_point(|(g, _)| *g <= since);
        let logged: Vec<&(u64, Arc<ContractKey>)> =
            self.entries.range(first..).take_while(|(g, _)| *g <= until).collect();
        // One change per generation: a missing one means the log cannot say what changed.
        if u64::try_from(logged.len()).ok() != Some(until - since) {
            return None;
        }
        Some(logged.into_iter().map(|(_, key)| key.as_ref()).collect())
    }
}

/// What is served of every contract.
#[derive(Debug, Default)]
pub struct Catalog {
    entries: BTreeMap<ContractKey, Entry>,
    generation: u64,
    log: Arc<ChangeLog>,
}

impl Catalog {
    /// Bumped whenever what is served changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A contract's new version. Returns whether what is served changed.
    pub fn publish(&mut self, published: Published) -> bool {
        let published = Arc::new(published);
        let key = published.key.clone();
        let changed = match self.entries.get_mut(&published.key) {
            Some(entry) if entry.current.version == published.version => false,
            Some(entry) => {
                let before = entry.served().map(|p| p.version.clone());
                entry.current = published;
                before != entry.served().map(|p| p.version.clone())
            }
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry { current: published, accepted: VecDeque::new(), rejections: VecDeque::new() },
                );
                true
            }
        };
        self.bump(changed, key)
    }

    /// A contract is gone. Returns whether what is served changed.
    pub fn remove(&mut self, key: &ContractKey) -> bool {
        let changed = self.entries.remove(key).is_some_and(|e| e.served().is_some());
        self.bump(changed, key.clone())
    }

    /// A proxy acknowledged `version` of a contract: while it is the current one, it becomes the version
    /// served after a later rejection.
    pub fn accepted(&mut self, key: &ContractKey, version: &str) {
        if let Some(entry) = self.entries.get_mut(key)
            && entry.current.version == version
            && entry.rejection_of(version).is_none()
            && entry.accepted.front().is_none_or(|a| a.version != version)
        {
            entry.accepted.push_front(entry.current.clone());
            entry.accepted.truncate(REMEMBERED_ACCEPTED);
        }
    }

    /// A proxy rejected a version of a contract: the fleet is served the accepted version instead. Returns
    /// whether what is served changed.
    pub fn rejected(&mut self, key: &ContractKey, rejection: Rejection) -> bool {
        let Some(entry) = self.entries.get_mut(key) else { return false };
        let before = entry.served().map(|p| p.version.clone());
        // A version some proxy took and another refuses is not served again: the one before it is.
        entry.accepted.retain(|a| a.version != rejection.version);
        entry.rejections.retain(|r| r.version != rejection.version);
        entry.rejections.push_front(rejection);
        entry.rejections.truncate(REMEMBERED_REJECTIONS);
        let changed = before != entry.served().map(|p| p.version.clone());
        self.bump(changed, key.clone())
    }

    /// What is served of a contract now, if anything.
    pub fn served(&self, key: &ContractKey) -> Option<&Arc<Published>> {
        self.entries.get(key)?.served()
    }

    /// Every contract served, in key order.
    pub fn all_served(&self) -> impl Iterator<Item = &Arc<Published>> {
        self.entries.values().filter_map(Entry::served)
    }

    /// The rejection of the contract's current version, if a proxy rejected it.
    pub fn current_rejection(&self, key: &ContractKey) -> Option<&Rejection> {
        let entry = self.entries.get(key)?;
        entry.rejection_of(&entry.current.version)
    }

    /// The version of a contract the reconciler published last.
    pub fn current_version(&self, key: &ContractKey) -> Option<&str> {
        self.entries.get(key).map(|e| e.current.version.as_str())
    }

    /// The contracts changed at the latest generations.
    pub fn log(&self) -> &Arc<ChangeLog> {
        &self.log
    }

    fn bump(&mut self, changed: bool, key: ContractKey) -> bool {
        if changed {
            self.generation += 1;
            Arc::make_mut(&mut self.log).record(self.generation, key);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(name: &str, version: &str) -> Published {
        let key = ContractKey { namespace: "ns".into(), name: name.into() };
        let contract: ChannelContract = serde_json::from_value(
            serde_json::json!({"apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"service": "svc", "port": 8080, "sla": {"maxLatency": "1s"}}}),
        )
        .expect("a contract");
        Published::new(key, version.into(), Arc::new(contract), ChannelEndpoints::default())
    }

    fn rejection(version: &str) -> Rejection {
        Rejection { version: version.into(), proxy: "p".into(), message: "no".into(), time: "t".into() }
    }

    fn served(catalog: &Catalog, name: &str) -> Option<String> {
        catalog.served(&ContractKey { namespace: "ns".into(), name: name.into() }).map(|p| p.version.clone())
    }

    #[test]
    fn a_rejected_version_is_withdrawn_for_the_last_accepted_one_and_not_offered_again() {
        let key = ContractKey { namespace: "ns".into(), name: "a".into() };
        let mut catalog = Catalog::default();
        assert!(catalog.publish(published("a", "v1")));
        catalog.accepted(&key, "v1");
        assert!(catalog.publish(published("a", "v2")));
        assert_eq!(served(&catalog, "a").as_deref(), Some("v2"));
        // One proxy takes v2, then another rejects it: v1, accepted before, is served to all.
        catalog.accepted(&key, "v2");
        let generation = catalog.generation();
        assert!(catalog.rejected(&key, rejection("v2")));
        assert!(catalog.generation() > generation);
        assert_eq!(served(&catalog, "a").as_deref(), Some("v1"));
        assert_eq!(catalog.current_rejection(&key).map(|r| r.version.as_str()), Some("v2"));
        // The same rejection again changes nothing.
        assert!(!catalog.rejected(&key, rejection("v2")));
        // A proxy that acknowledges v2 late does not make it accepted.
        catalog.accepted(&key, "v2");
        assert_eq!(served(&catalog, "a").as_deref(), Some("v1"));
        // The next version is offered; going back to the rejected one is not.
        assert!(catalog.publish(published("a", "v3")));
        assert_eq!(served(&catalog, "a").as_deref(), Some("v3"));
        assert!(catalog.current_rejection(&key).is_none());
        assert!(catalog.publish(published("a", "v2")));
        assert_eq!(served(&catalog, "a").as_deref(), Some("v1"));
    }

    #[test]
    fn a_contract_never_accepted_is_not_served_once_rejected_and_others_are_untouched() {
        let key = ContractKey { namespace: "ns".into(), name: "a".into() };
        let mut catalog = Catalog::default();
        catalog.publish(published("a", "v1"));
        catalog.publish(published("b", "w1"));
        assert!(catalog.rejected(&key, rejection("v1")));
        assert_eq!(served(&catalog, "a"), None);
        assert_eq!(served(&catalog, "b").as_deref(), Some("w1"));
        assert_eq!(catalog.all_served().count(), 1);
        assert!(!catalog.publish(published("b", "w1")), "the same version changes nothing");
        assert!(catalog.remove(&ContractKey { namespace: "ns".into(), name: "b".into() }));
        assert_eq!(catalog.all_served().count(), 0);
    }

    #[test]
    fn resources_are_made_per_region_with_that_region_first() {
        let mut p = published("a", "v1");
        let contract = Arc::get_mut(&mut p.contract).expect("unshared");
        contract.spec.failover = Some(crds::Failover { regions: vec!["gz".into(), "sz".into()] });
        p.endpoints.channels.insert(
            "primary".into(),
            vec![
                crate::model::Endpoint { address: "10.0.0.1".into(), port: 80, ready: true, region: Some("gz".into()) },
                crate::model::Endpoint { address: "10.0.0.2".into(), port: 80, ready: true, region: Some("sz".into()) },
            ],
        );
        let sz = p.resources(Some("sz"), false).expect("translates");
        let none = p.resources(None, false).expect("translates");
        assert_ne!(sz.clusters[0].any, none.clusters[0].any, "the primary's order differs by region");
        assert_eq!(sz.scopes.len(), 3);
        assert_eq!(&*sz.routes[0].name, "csp~ns~a");
        assert!(Arc::ptr_eq(&sz, &p.resources(Some("sz"), false).expect("memo")), "made once per region");
    }

    #[test]
    fn the_change_log_says_which_contracts_changed_between_two_generations_while_it_reaches_back() {
        let key = |n: &str| ContractKey { namespace: "ns".into(), name: n.into() };
        let mut log = ChangeLog::with_capacity(2);
        assert_eq!(log.changed(0, 0).map(|c| c.len()), Some(0));
        log.record(1, key("a"));
        log.record(2, key("b"));
        assert_eq!(log.changed(0, 2), Some([&key("a"), &key("b")].into_iter().collect()));
        assert_eq!(log.changed(1, 2), Some([&key("b")].into_iter().collect()));
        assert_eq!(log.changed(0, 1), Some([&key("a")].into_iter().collect()));
        log.record(3, key("a"));
        assert_eq!(log.changed(0, 3), None, "generation 1 is no longer logged");
        assert_eq!(log.changed(1, 3), Some([&key("a"), &key("b")].into_iter().collect()));

        let mut catalog = Catalog::default();
        catalog.publish(published("a", "v1"));
        catalog.publish(published("b", "w1"));
        catalog.publish(published("a", "v1"));
        assert_eq!(catalog.generation(), 2, "the same version changes nothing");
        catalog.remove(&key("a"));
        assert_eq!(catalog.log().changed(1, 3), Some([&key("a"), &key("b")].into_iter().collect()));
    }
}
