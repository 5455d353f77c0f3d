//! The xDS server: every replica of the operator serves the contracts over ADS (gRPC, state of the
//! world and delta, TLS) to a fleet of Envoys, each proxy with its own region first, and tells status
//! which proxies acknowledged or rejected each contract's version.
//!
//! - [`catalog`]: what is served of each contract; a rejected version is withdrawn for the last accepted.
//! - [`snapshot`]: what one proxy's view (region, namespaces, listen address) is served, per type.
//! - [`session`]: one stream's protocol (nonces, ACK and NACK, subscriptions), pure.
//! - [`fleet`]: the proxies connected, what each runs and rejected; a contract's proxy counts.
//! - [`server`]: the gRPC service; [`framing`]: its messages on the wire, each in a buffer of its own;
//!   [`tls`]: its certificate, reloaded when the files change.
//!
//! [`Xds`] ties them together: the reconciler [`publish`](Xds::publish)es each contract's version, the
//! streams read snapshots and report answers, and status reads [`observe`](Xds::observe).

pub mod als;
pub mod catalog;
pub mod fleet;
pub mod framing;
pub mod metrics;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crds::ChannelContract;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use self::catalog::{Catalog, Published, Rejection};
use self::fleet::{Fleet, ProxyCounts, ProxyIdentity, counts};
use self::metrics::XdsMetrics;
use self::session::Event;
use self::snapshot::{Contracts, Snapshot, View, contracts, derive, snapshot_of};
use crate::model::{ChannelEndpoints, ContractKey};

/// What the xDS server knows of a contract, for its status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct XdsObservation {
    /// The proxies that serve its namespace, and what they did with the current version.
    pub proxies: ProxyCounts,
    /// A proxy rejected the current version: this is the rejection.
    pub rejection: Option<Rejection>,
    /// The version proxies are served (the current one, the last accepted after a rejection, or none).
    pub served: Option<String>,
}

/// What one replica's proxies did with each contract: how every replica tells the leader, which writes
/// status from all of them. Only contracts some proxy of the replica serves are listed.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// The replica (its identity).
    pub replica: String,
    /// By `<namespace>/<name>`.
    pub contracts: BTreeMap<String, ContractReport>,
    /// What this replica's proxies logged of each drill run (by run), for the leader's verdict.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drills: BTreeMap<String, crate::observe::drill::DrillLog>,
}

/// The views whose contracts are the same: a region and a set of namespaces (None: all).
type ContractsOf = (Option<String>, Option<BTreeSet<String>>, bool);

/// One contract in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ContractReport {
    /// The version the counts are about (the replica's current one).
    pub version: String,
    /// Proxies that serve the contract's namespace.
    pub selected: i32,
    /// Of those, running `version`.
    pub acked: i32,
    /// Of those, rejected `version`.
    pub rejected: i32,
    /// The latest rejection of `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<Rejection>,
}

#[derive(Debug, Default)]
struct Inner {
    catalog: Catalog,
    fleet: Fleet,
    /// The other replicas' reports, by replica.
    peers: BTreeMap<String, Report>,
    views: HashMap<View, Arc<Snapshot>>,
    /// The contracts' resources of each region and set of namespaces, shared by their views.
    contracts: HashMap<ContractsOf, Arc<Contracts>>,
    /// Versions being pushed: since when (for `csp_xds_push_duration_seconds`).
    pushes: HashMap<ContractKey, (String, Instant)>,
}

/// How many proxies take their whole configuration at once (see [`Xds::initial_push`]).
pub const INITIAL_PUSHES: usize = 16;

/// The xDS state of one replica.
#[derive(Debug)]
pub struct Xds {
    inner: Mutex<Inner>,
    initial_pushes: Arc<Semaphore>,
    generation: watch::Sender<u64>,
    dirty: Mutex<BTreeSet<ContractKey>>,
    dirty_notify: Notify,
    next_stream: AtomicU64,
    metrics: XdsMetrics,
    /// Every contract the reconciler has looked at since the start (published or held).
    seen: Mutex<BTreeSet<ContractKey>>,
    /// Whether every contract known at the start has been looked at: until then no response is sent, so
    /// that a restarted operator never serves a proxy an empty or partial configuration.
    warm: watch::Sender<bool>,
    /// What this replica's proxies logged of the latest drill runs, by run.
    drill_logs: Mutex<BTreeMap<String, crate::observe::drill::DrillLog>>,
}

/// How many drill runs' logs a replica keeps (the latest; a run is judged seconds after its fault ends).
const KEPT_DRILL_RUNS: usize = 16;

impl Xds {
    /// An empty server state.
    pub fn new(metrics: XdsMetrics) -> Self {
        Self {
            inner: Mutex::default(),
            initial_pushes: Arc::new(Semaphore::new(INITIAL_PUSHES)),
            generation: watch::channel(0).0,
            dirty: Mutex::default(),
            dirty_notify: Notify::new(),
            next_stream: AtomicU64::new(1),
            metrics,
            seen: Mutex::default(),
            warm: watch::channel(false).0,
            drill_logs: Mutex::default(),
        }
    }

    /// One try of a drill's request, from a proxy of this replica.
    pub fn drill_try(&self, entry: &crate::observe::drill::TryLog) {
        let mut logs = self.drill_logs.lock().unwrap_or_else(PoisonError::into_inner);
        if !logs.contains_key(&entry.run) && logs.len() >= KEPT_DRILL_RUNS {
            // Forget the run whose proxies logged least recently... the smallest key is good enough: runs
            // are `<ns>/<drill>/<n>`, and old ones are long judged.
            if let Some(oldest) = logs.keys().next().cloned() {
                logs.remove(&oldest);
            }
        }
        logs.entry(entry.run.clone()).or_default().add(entry);
    }

    /// What every replica's proxies logged of a drill run: this one's and the others' reports merged.
    pub fn drill_log(&self, run: &str) -> Option<crate::observe::drill::DrillLog> {
        let mut merged = self.drill_logs.lock().unwrap_or_else(PoisonError::into_inner).get(run).cloned();
        for peer in self.inner().peers.values() {
            if let Some(theirs) = peer.drills.get(run) {
                merged.get_or_insert_with(Default::default).merge(theirs);
            }
        }
        merged
    }

    /// Every contract's SLO metrics, which the access log service fills.
    pub fn slo(&self) -> Arc<crate::observe::slo::SloMetrics> {
        self.metrics.slo.clone()
    }

    /// The reconciler looked at a contract and publishes nothing for it (its input is invalid).
    pub fn held(&self, key: &ContractKey) {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone());
    }

    /// Whether the reconciler has looked at every one of `keys`.
    pub fn has_seen(&self, keys: &[ContractKey]) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter().all(|k| seen.contains(k))
    }

    /// Every contract known at the start has been looked at: responses may be sent.
    pub fn set_warm(&self) {
        self.warm.send_replace(true);
    }

    /// Waits until [`set_warm`](Self::set_warm).
    pub async fn warm(&self) {
        let mut warm = self.warm.subscribe();
        let _ = warm.wait_for(|w| *w).await;
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn announce(&self, inner: &Inner) {
        self.generation.send_replace(inner.catalog.generation());
    }

    /// A contract's version, as the reconciler translated it.
    pub fn publish(
        &self,
        key: ContractKey,
        version: String,
        contract: Arc<ChannelContract>,
        endpoints: ChannelEndpoints,
    ) {
        self.publish_with_fault(key, version, contract, endpoints, None);
    }

    /// [`publish`](Self::publish), with a drill's fault in force (its version says so).
    pub fn publish_with_fault(
        &self,
        key: ContractKey,
        version: String,
        contract: Arc<ChannelContract>,
        endpoints: ChannelEndpoints,
        fault: Option<crate::model::ActiveFault>,
    ) {
        self.held(&key);
        let mut inner = self.inner();
        if inner.catalog.current_version(&key) == Some(version.as_str()) {
            return;
        }
        let published = Published::new(key.clone(), version.clone(), contract, endpoints).with_fault(fault);
        if inner.catalog.publish(published) {
            if inner.fleet.proxies().any(|p| p.identity.serves(&key.namespace)) {
                inner.pushes.insert(key.clone(), (version, Instant::now()));
            }
            self.announce(&inner);
        }
        drop(inner);
        self.mark_dirty([key]);
    }

    /// A contract is gone.
    pub fn remove(&self, key: &ContractKey) {
        let mut inner = self.inner();
        inner.pushes.remove(key);
        inner.fleet.forget(key);
        if inner.catalog.remove(key) {
            self.announce(&inner);
        }
    }

    /// What status says of a contract's proxies.
    pub fn observe(&self, key: &ContractKey) -> XdsObservation {
        let inner = self.inner();
        let Some(current) = inner.catalog.current_version(key) else { return XdsObservation::default() };
        let mut proxies = counts(inner.fleet.proxies(), key, current);
        let name = key.to_string();
        for peer in inner.peers.values() {
            let Some(theirs) = peer.contracts.get(&name) else { continue };
            proxies.selected += theirs.selected;
            if theirs.version == current {
                proxies.acked += theirs.acked;
                proxies.rejected += theirs.rejected;
                proxies.stale += theirs.selected - theirs.acked - theirs.rejected;
                if let Some(r) = &theirs.last_rejection
                    && proxies.last_rejection.as_ref().is_none_or(|last| last.time < r.time)
                {
                    proxies.last_rejection = Some(r.clone());
                }
            } else {
                // The other replica has not seen this version yet: its proxies cannot run it.
                proxies.stale += theirs.selected;
            }
        }
        XdsObservation {
            proxies,
            rejection: inner.catalog.current_rejection(key).cloned(),
            served: inner.catalog.served(key).map(|p| p.version.clone()),
        }
    }

    /// This replica's report of its proxies.
    pub fn report(&self, replica: &str) -> Report {
        let inner = self.inner();
        let mut contracts = BTreeMap::new();
        for published in inner.catalog.all_served() {
            let key = &published.key;
            let Some(current) = inner.catalog.current_version(key) else { continue };
            let c = counts(inner.fleet.proxies(), key, current);
            if c.selected > 0 {
                contracts.insert(
                    key.to_string(),
                    ContractReport {
                        version: current.to_owned(),
                        selected: c.selected,
                        acked: c.acked,
                        rejected: c.rejected,
                        last_rejection: c.last_rejection,
                    },
                );
            }
        }
        let drills = self.drill_logs.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Report { replica: replica.to_owned(), contracts, drills }
    }

    /// The other replicas' latest reports (those still alive). The contracts whose counts they change
    /// are refreshed.
    pub fn peer_reports(&self, reports: Vec<Report>) {
        let mut inner = self.inner();
        let next: BTreeMap<String, Report> = reports.into_iter().map(|r| (r.replica.clone(), r)).collect();
        let mut changed = BTreeSet::new();
        for replica in next.keys().chain(inner.peers.keys()).collect::<BTreeSet<_>>() {
            let (before, after) = (inner.peers.get(replica), next.get(replica));
            if before == after {
                continue;
            }
            for report in [before, after].into_iter().flatten() {
                for (name, c) in &report.contracts {
                    let other = [before, after].into_iter().flatten().find(|r| !std::ptr::eq(*r, report));
                    if other.and_then(|o| o.contracts.get(name)) != Some(c) {
                        changed.insert(name.clone());
                    }
                }
            }
        }
        inner.peers = next;
        let keys: Vec<ContractKey> = changed
            .into_iter()
            .filter_map(|n| {
                let (namespace, name) = n.split_once('/')?;
                Some(ContractKey { namespace: namespace.to_owned(), name: name.to_owned() })
            })
            .collect();
        drop(inner);
        self.mark_dirty(keys);
    }

    /// The contracts whose proxy counts may have changed since the last call (status is refreshed for them).
    pub fn take_dirty(&self) -> BTreeSet<ContractKey> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Waits until some contract is dirty.
    pub async fn dirtied(&self) {
        self.dirty_notify.notified().await;
    }

    fn mark_dirty(&self, keys: impl IntoIterator<Item = ContractKey>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        let before = dirty.len();
        dirty.extend(keys);
        if dirty.len() > before {
            self.dirty_notify.notify_one();
        }
    }

    /// The snapshot of a view at the current generation: made once per view and generation, its
    /// contracts' resources once per region and namespaces (from the previous ones when the catalog's log
    /// says what changed since).
    pub fn snapshot(&self, view: &View) -> Arc<Snapshot> {
        let mut inner = self.inner();
        let generation = inner.catalog.generation();
        if let Some(s) = inner.views.get(view).filter(|s| s.generation == generation) {
            return s.clone();
        }
        let audience = view.audience();
        let earlier = inner.contracts.get(&audience).cloned();
        let contracts = match earlier {
            Some(current) if current.generation == generation => current,
            earlier => {
                let derived = earlier.and_then(|earlier| derive(&earlier, &inner.catalog, view));
                let made = Arc::new(derived.unwrap_or_else(|| contracts(&inner.catalog, view)));
                inner.contracts.insert(audience, made.clone());
                made
            }
        };
        let made = Arc::new(snapshot_of(&contracts, inner.catalog.log(), view));
        inner.views.insert(view.clone(), made.clone());
        made
    }

    /// Waits for a turn to send a new proxy its whole configuration. Each of its first responses carries
    /// every resource of a type (tens of MiB with thousands of contracts) and stays in memory until the
    /// proxy has read it: a fleet that connects at once (an operator restart) would otherwise have all of
    /// them in memory together. The stream keeps the permit until the proxy has answered them.
    pub async fn initial_push(&self) -> Option<OwnedSemaphorePermit> {
        self.initial_pushes.clone().acquire_owned().await.ok()
    }

    /// Follows the catalog's generation (a stream wakes when it moves).
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A new stream's id.
    pub fn next_stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// A proxy connected on `stream`.
    pub fn connect(&self, stream: u64, identity: ProxyIdentity) {
        let mut inner = self.inner();
        let affected = self.served_in(&inner, &identity);
        inner.fleet.connect(stream, identity);
        self.metrics.connected.set(i64::try_from(inner.fleet.len()).unwrap_or(i64::MAX));
        drop(inner);
        self.mark_dirty(affected);
    }

    /// The proxy of `stream` went away.
    pub fn disconnect(&self, stream: u64) {
        let mut inner = self.inner();
        let Some(gone) = inner.fleet.disconnect(stream) else { return };
        self.metrics.connected.set(i64::try_from(inner.fleet.len()).unwrap_or(i64::MAX));
        let affected = self.served_in(&inner, &gone.identity);
        drop(inner);
        self.mark_dirty(affected);
    }

    fn served_in(&self, inner: &Inner, identity: &ProxyIdentity) -> Vec<ContractKey> {
        inner.catalog.all_served().filter(|p| identity.serves(&p.key.namespace)).map(|p| p.key.clone()).collect()
    }

    /// What a proxy's answers mean: the contracts it runs, those it rejected.
    pub fn apply(&self, stream: u64, events: Vec<Event>, now: &str) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.inner();
        let proxy = inner.fleet.proxy(stream).map(|p| p.identity.id.clone()).unwrap_or_default();
        let mut touched = Vec::new();
        let mut served_changed = false;
        for event in events {
            match event {
                Event::Running { key, version } => {
                    inner.fleet.running(stream, &key, version.clone());
                    if let Some(version) = version {
                        inner.catalog.accepted(&key, &version);
                        let done = inner.pushes.get(&key).is_some_and(|(v, _)| **v == *version)
                            && inner.fleet.all_run(&key, &version);
                        if done && let Some((_, since)) = inner.pushes.remove(&key) {
                            self.metrics.push_duration.observe(since.elapsed().as_secs_f64());
                        }
                    }
                    touched.push(key);
                }
                Event::Rejected { key, version, message } => {
                    tracing::warn!(contract = %key, %proxy, %version, %message, "a proxy rejected the contract's configuration");
                    self.metrics.nack(&key);
                    let rejection = Rejection { version, proxy: proxy.clone(), message, time: now.to_owned() };
                    inner.fleet.rejected(stream, &key, rejection.clone());
                    served_changed |= inner.catalog.rejected(&key, rejection);
                    inner.pushes.remove(&key);
                    touched.push(key);
                }
                Event::RejectedShared { type_url, message } => {
                    tracing::error!(%proxy, %type_url, %message, "a proxy rejected a shared resource (a bug of the operator: please report it)");
                }
            }
        }
        if served_changed {
            self.announce(&inner);
        }
        drop(inner);
        self.mark_dirty(touched);
    }
}

/// The region and namespaces a proxy's node asks for, and where its listeners bind.
pub fn view_of(identity: &ProxyIdentity, listen: std::net::IpAddr) -> View {
    View {
        region: identity.region.clone(),
        namespaces: identity.namespaces.clone(),
        listen,
        drills: identity.drills,
        tracing: identity.tracing,
    }
}

#[cfg(test)]
mod tests;
