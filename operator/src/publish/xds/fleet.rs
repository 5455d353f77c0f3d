//! The fleet: the proxies connected to this replica, which version of each contract each one runs, and
//! which versions each one rejected; and the proxy counts a contract's status shows.
//!
//! Pure: no clock, no I/O.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::model::ContractKey;

use super::catalog::Rejection;

/// Who a proxy is, from its `node`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyIdentity {
    /// `node.id` (its pod name).
    pub id: String,
    /// `node.cluster`: its fleet.
    pub fleet: String,
    /// Its region: `node.locality.region`, or its Pod's Node's.
    pub region: Option<String>,
    /// The namespaces whose contracts it serves; None: all.
    pub namespaces: Option<BTreeSet<String>>,
    /// Whether its bootstrap enables internal listeners, which a ContractDrill's fault needs (node
    /// metadata `csp.contracts.dev/features` lists `drills`).
    pub drills: bool,
    /// The share of requests its gateway listeners trace, in hundredths of a percent (10000: all), when
    /// its bootstrap has the OTLP cluster (features list `tracing`; node metadata
    /// `csp.contracts.dev/trace-sampling`, percent, default 1); None: no tracing.
    pub tracing: Option<u32>,
}

impl ProxyIdentity {
    /// Whether the proxy serves the contracts of `namespace`.
    pub fn serves(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|n| n.contains(namespace))
    }
}

/// What the fleet knows of one proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyState {
    /// Who it is.
    pub identity: ProxyIdentity,
    /// The version of each contract it runs (all of the contract's resources acknowledged at it). Keys
    /// and versions are shared (a fleet of proxies runs the same few versions of the same contracts).
    pub running: HashMap<Arc<ContractKey>, Arc<str>>,
    /// Its last rejection of each contract.
    pub rejected: HashMap<ContractKey, Rejection>,
}

/// A contract's proxy counts (`status.proxies`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyCounts {
    /// Proxies that serve the contract's namespace.
    pub selected: i32,
    /// Of those, proxies that run the current version.
    pub acked: i32,
    /// Of those, proxies that rejected the current version.
    pub rejected: i32,
    /// The others: on an older version, or not yet acknowledged.
    pub stale: i32,
    /// The latest rejection of the current version.
    pub last_rejection: Option<Rejection>,
}

/// The proxies of every stream of this replica, by stream id.
#[derive(Debug, Default)]
pub struct Fleet {
    proxies: HashMap<u64, ProxyState>,
    /// One copy of each contract's key, shared by the proxies' `running`.
    keys: HashSet<Arc<ContractKey>>,
}

impl Fleet {
    /// A stream opened by a proxy.
    pub fn connect(&mut self, stream: u64, identity: ProxyIdentity) {
        self.proxies.insert(stream, ProxyState { identity, running: HashMap::new(), rejected: HashMap::new() });
    }

    /// A stream closed; returns the proxy it was.
    pub fn disconnect(&mut self, stream: u64) -> Option<ProxyState> {
        self.proxies.remove(&stream)
    }

    /// The proxy of a stream.
    pub fn proxy(&self, stream: u64) -> Option<&ProxyState> {
        self.proxies.get(&stream)
    }

    /// Every proxy.
    pub fn proxies(&self) -> impl Iterator<Item = &ProxyState> {
        self.proxies.values()
    }

    /// How many proxies are connected.
    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    /// Whether no proxy is connected.
    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }

    /// The proxy of `stream` runs `version` of a contract (None: it no longer has the contract).
    pub fn running(&mut self, stream: u64, key: &ContractKey, version: Option<Arc<str>>) {
        let Some(proxy) = self.proxies.get_mut(&stream) else { return };
        match version {
            Some(v) => {
                let shared = match self.keys.get(key) {
                    Some(shared) => shared.clone(),
                    None => {
                        let shared = Arc::new(key.clone());
                        self.keys.insert(shared.clone());
                        shared
                    }
                };
                proxy.running.insert(shared, v);
            }
            None => {
                proxy.running.remove(key);
            }
        }
    }

    /// A contract is gone: its key is no longer kept for proxies that will run it.
    pub fn forget(&mut self, key: &ContractKey) {
        self.keys.remove(key);
    }

    /// The proxy of `stream` rejected a version of a contract.
    pub fn rejected(&mut self, stream: u64, key: &ContractKey, rejection: Rejection) {
        if let Some(proxy) = self.proxies.get_mut(&stream) {
            proxy.rejected.insert(key.clone(), rejection);
        }
    }

    /// Whether every proxy that serves `key`'s namespace runs `version` (and at least one does).
    pub fn all_run(&self, key: &ContractKey, version: &str) -> bool {
        let mut any = false;
        for proxy in self.proxies.values().filter(|p| p.identity.serves(&key.namespace)) {
            if proxy.running.get(key).map(|v| &**v) != Some(version) {
                return false;
            }
            any = true;
        }
        any
    }
}

/// A contract's counts over proxies (those of every replica).
pub fn counts<'a>(proxies: impl Iterator<Item = &'a ProxyState>, key: &ContractKey, current: &str) -> ProxyCounts {
    let mut counts = ProxyCounts::default();
    for proxy in proxies.filter(|p| p.identity.serves(&key.namespace)) {
        counts.selected += 1;
        if proxy.running.get(key).map(|v| &**v) == Some(current) {
            counts.acked += 1;
        } else if let Some(rejection) = proxy.rejected.get(key).filter(|r| r.version == current) {
            counts.rejected += 1;
            if counts.last_rejection.as_ref().is_none_or(|last| last.time < rejection.time) {
                counts.last_rejection = Some(rejection.clone());
            }
        } else {
            counts.stale += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(id: &str, namespaces: Option<&[&str]>) -> ProxyIdentity {
        ProxyIdentity {
            id: id.into(),
            fleet: "csp-gateway".into(),
            region: None,
            namespaces: namespaces.map(|n| n.iter().map(|s| (*s).to_owned()).collect()),
            drills: false,
            tracing: None,
        }
    }

    #[test]
    fn counts_split_selected_proxies_into_acked_rejected_and_stale() {
        let key = ContractKey { namespace: "a".into(), name: "c".into() };
        let mut fleet = Fleet::default();
        fleet.connect(1, identity("p1", None));
        fleet.connect(2, identity("p2", Some(&["a"])));
        fleet.connect(3, identity("p3", None));
        fleet.connect(4, identity("p4", Some(&["b"])));
        fleet.running(1, &key, Some("v2".into()));
        fleet.running(2, &key, Some("v1".into()));
        let rejection = Rejection { version: "v2".into(), proxy: "p3".into(), message: "no".into(), time: "t".into() };
        fleet.rejected(3, &key, rejection.clone());
        let counts = counts(fleet.proxies(), &key, "v2");
        assert_eq!(
            counts,
            ProxyCounts { selected: 3, acked: 1, rejected: 1, stale: 1, last_rejection: Some(rejection) }
        );
        assert!(!fleet.all_run(&key, "v2"));
        fleet.running(2, &key, Some("v2".into()));
        fleet.disconnect(3);
        assert!(fleet.all_run(&key, "v2"));
        assert_eq!(fleet.len(), 3);
    }
}
