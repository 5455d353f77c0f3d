//! The reconciler: for one ChannelContract, gather its channels' endpoints from the caches, translate
//! ([`desired`](crate::desired)), publish the ConfigMap, and write status and Events. The decisions are
//! pure ([`plan`], [`status`](crate::status)); this module only reads caches and writes to the API.
//!
//! - Invalid input (an invalid spec, a missing Service or port, an unusable endpoint) publishes nothing:
//!   the last good ConfigMap stays as it was, the conditions say why, and the contract is looked at again
//!   when something it uses changes (or after [`INVALID_INPUT_REQUEUE`]).
//! - Transient failures (writing the ConfigMap or the status) are retried per contract with exponential
//!   back-off, from 1s doubling up to [`MAX_BACKOFF`] ([`backoff_delay`]).
//! - One Event per status change that moves a condition's status or reason ([`status::event`]).
//! - Nothing is reconciled while this instance is not the leader ([`Context::leader`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crds::{ChannelContract, ChannelStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store, store::WriterDropped};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use crate::cache::{CachedConfigMap, CachedService, CachedSlice};
use crate::configmap::{self, ConfigMapError};
use crate::endpoints::{ClusterView, GatherError, gather};
use crate::index::{ContractIndex, ContractKey};
use crate::metrics::{Metrics, ReconcileResult};
use crate::model::ProxyOptions;
use crate::status::{self, Observation, Programming, reason};
use crate::translate::TranslateError;

/// How long a contract with invalid input waits before it is looked at again without a change.
pub const INVALID_INPUT_REQUEUE: Duration = Duration::from_secs(5 * 60);
/// How often a programmed contract is looked at again without a change (a safety net for missed events).
pub const RESYNC: Duration = Duration::from_secs(10 * 60);
/// How long a status this instance wrote is trusted to be the API server's while the cache does not show
/// it yet (the watch is normally milliseconds behind; someone else may write the status meanwhile).
pub const WRITTEN_TRUST: Duration = Duration::from_secs(30);
/// How often a contract whose ConfigMap name is taken by someone else's ConfigMap looks again: the
/// operator watches only the ConfigMaps with its label, so it does not see that one go.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(10);
/// The longest back-off after transient failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// A transient failure of a reconcile (invalid input is not an error: it is a condition).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ConfigMap could not be written.
    #[error("cannot write ConfigMap {namespace}/{name}: {source}; retrying with back-off")]
    ApplyConfigMap {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The status could not be written.
    #[error("cannot write the status of ChannelContract {contract}: {source}; retrying with back-off")]
    WriteStatus {
        /// `<namespace>/<name>`.
        contract: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// The caches the reconciler reads, filled by the watches. Services and EndpointSlices are kept as the
/// few fields the operator reads ([`crate::cache`]); the other objects without `metadata.managedFields`
/// and kubectl's last-applied configuration, Nodes with only their region label (see `run`).
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
    /// out (see [`Context::synced`]).
    pub async fn wait_until_ready(&self) -> Result<(), WriterDropped> {
        loop {
            if let Ok(result) = tokio::time::timeout(Duration::from_millis(100), self.all_ready()).await {
                return result;
            }
        }
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

/// What the reconciler shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Who publishes the Events. Each reconcile that has Events to publish makes its own [`Recorder`] (as
    /// kube's documentation intends): one shared Recorder keeps every Event of the last 6 minutes in a
    /// map that it scans on every publish, tens of MiB and a quadratic cost after thousands of new
    /// contracts. Events are only published on status changes, so that map saved nothing but a
    /// repeat within 6 minutes (a flapping condition), which is now an Event of its own.
    pub reporter: Reporter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The caches.
    pub caches: Caches,
    /// How the proxies that mount the ConfigMaps are set up.
    pub proxy: ProxyOptions,
    /// Whether this instance reconciles (leader election).
    pub leader: watch::Receiver<bool>,
    /// Whether every cache has listed once.
    pub synced: watch::Receiver<bool>,
    /// What this instance remembers of each contract between reconciles.
    memory: Mutex<HashMap<ContractKey, Memory>>,
}

/// What the operator remembers of one contract between its reconciles.
#[derive(Debug, Default)]
struct Memory {
    /// Consecutive transient failures (the back-off).
    failures: u32,
    /// The status this instance last wrote ([`status::fingerprint`]) and when: a reconcile that runs
    /// before the contract's cache has seen that write would otherwise write the same status, and publish
    /// the same Event, a second time.
    written: Option<(u64, Instant)>,
    /// What this instance last published in the contract's ConfigMap ([`configmap::fingerprint`]): the
    /// watch event of that write (its echo) reconciles nothing.
    published: Option<u64>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("caches", &self.caches).field("proxy", &self.proxy).finish()
    }
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        caches: Caches,
        proxy: ProxyOptions,
        leader: watch::Receiver<bool>,
        synced: watch::Receiver<bool>,
    ) -> Self {
        Self { client, reporter, metrics, caches, proxy, leader, synced, memory: Mutex::default() }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<ContractKey, Memory>> {
        self.memory.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this instance wrote a status with this [`status::fingerprint`] for `key` less than
    /// [`WRITTEN_TRUST`] ago, so that the API server has it even if the cache does not show it yet.
    fn wrote_recently(&self, key: &ContractKey, fingerprint: u64) -> bool {
        self.memory()
            .get(key)
            .and_then(|m| m.written)
            .is_some_and(|(written, at)| at.elapsed() < WRITTEN_TRUST && written == fingerprint)
    }

    /// Forgets the statuses written so far: another instance may have written since (on becoming the
    /// leader).
    pub fn forget_written(&self) {
        for memory in self.memory().values_mut() {
            memory.written = None;
        }
    }

    /// The contract whose ConfigMap this is (`<contract>-envoy` in its namespace).
    fn owner_key(cached: &CachedConfigMap) -> Option<ContractKey> {
        let name = configmap::contract_name(cached.metadata.name.as_deref()?)?;
        Some(ContractKey { namespace: cached.namespace().unwrap_or_default(), name: name.to_owned() })
    }

    /// Whether a ConfigMap from the watch is what this instance last published under its name: the echo
    /// of its own write, which needs no reconcile.
    pub fn is_own_echo(&self, cached: &CachedConfigMap) -> bool {
        Self::owner_key(cached)
            .is_some_and(|key| self.memory().get(&key).and_then(|m| m.published) == Some(cached.fingerprint))
    }

    /// A ConfigMap is gone: what was published under its name no longer is.
    pub fn forget_published(&self, cached: &CachedConfigMap) {
        if let Some(key) = Self::owner_key(cached)
            && let Some(memory) = self.memory().get_mut(&key)
        {
            memory.published = None;
        }
    }

    /// Forgets a deleted contract.
    pub fn forget(&self, key: &ContractKey) {
        self.memory().remove(key);
        self.metrics.forget(key);
    }
}

/// The back-off after `failures` consecutive transient failures: 1s, 2s, 4s, … up to [`MAX_BACKOFF`].
pub fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// What a reconcile does, decided from the contract and the caches alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Publish this ConfigMap (if it is not already what is published).
    Publish {
        /// The ConfigMap.
        config_map: Box<ConfigMap>,
        /// Its configuration's version.
        config_version: String,
        /// What each channel resolved to.
        channels: Vec<ChannelStatus>,
    },
    /// Publish nothing, and say why.
    Hold {
        /// Why the spec is invalid, if that is the reason.
        invalid_spec: Option<String>,
        /// One of [`reason`].
        reason: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Decides what to publish for a contract, reading Services, EndpointSlices and Nodes through `view`.
/// Also returns the Nodes of the contract's endpoints.
pub fn plan(contract: &ChannelContract, view: &impl ClusterView, proxy: &ProxyOptions) -> Plan {
    let hold = |invalid: bool, reason: &'static str, message: String| Plan::Hold {
        invalid_spec: invalid.then(|| message.clone()),
        reason,
        message,
    };
    if let Err(e) = crds::validate::contract(&contract.spec) {
        return hold(true, reason::INVALID_SPEC, e.to_string());
    }
    let namespace = contract.namespace().unwrap_or_default();
    let gathered = match gather(&namespace, &contract.spec, view) {
        Ok(g) => g,
        Err(e @ GatherError::ServiceNotFound { .. }) => {
            return hold(false, reason::SERVICE_NOT_FOUND, e.to_string());
        }
        Err(e @ GatherError::ServicePortNotFound { .. }) => {
            return hold(false, reason::SERVICE_PORT_NOT_FOUND, e.to_string());
        }
    };
    let resources = match crate::desired(contract, &gathered, proxy) {
        Ok(r) => r,
        Err(e) => {
            let plan = match &e {
                TranslateError::MissingMetadata(_)
                | TranslateError::InvalidSpec { .. }
                | TranslateError::Duration { .. } => hold(true, reason::INVALID_SPEC, e.to_string()),
                TranslateError::InvalidEndpoint { .. } => hold(false, reason::INVALID_ENDPOINT, e.to_string()),
                TranslateError::UnknownChannel { .. } | TranslateError::Json(_) | TranslateError::Yaml { .. } => {
                    hold(false, reason::INTERNAL_ERROR, format!("{e} (a bug of the operator: please report it)"))
                }
            };
            return plan;
        }
    };
    match configmap::desired(contract, &resources) {
        Ok(cm) if let Some(size) = configmap::too_large(&cm) => {
            hold(false, reason::CONFIG_TOO_LARGE, configmap::too_large_message(&namespace, &cm.name_any(), Some(size)))
        }
        Ok(cm) => Plan::Publish {
            config_map: Box::new(cm),
            config_version: resources.config_version.clone(),
            channels: resources.channels.clone(),
        },
        Err(e @ ConfigMapError::NameTooLong(_)) => hold(true, reason::INVALID_SPEC, e.to_string()),
        Err(e @ ConfigMapError::NoUid) => hold(false, reason::INTERNAL_ERROR, e.to_string()),
    }
}

/// Reconciles one contract (the controller calls it).
pub async fn reconcile(contract: Arc<ChannelContract>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !*ctx.leader.borrow() {
        return Ok(Action::await_change());
    }
    // Until every cache has listed, a Service may look missing only because its watch is behind.
    if ctx.synced.clone().wait_for(|synced| *synced).await.is_err() {
        return Ok(Action::await_change());
    }
    let key = ContractKey::of(&contract);
    let start = Instant::now();
    let result = reconcile_contract(&contract, &key, &ctx).await;
    let (metric, outcome) = match result {
        Ok((action, programmed)) => {
            if let Some(memory) = ctx.memory().get_mut(&key) {
                memory.failures = 0;
            }
            (if programmed { ReconcileResult::Ok } else { ReconcileResult::InvalidInput }, Ok(action))
        }
        Err(e) => (ReconcileResult::Error, Err(e)),
    };
    ctx.metrics.reconciled(metric, start.elapsed().as_secs_f64());
    outcome
}

/// What the controller does after a transient failure: back off, per contract.
pub fn error_policy(contract: Arc<ChannelContract>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ContractKey::of(&contract);
    let failures = {
        let mut all = ctx.memory();
        let memory = all.entry(key.clone()).or_default();
        memory.failures = memory.failures.saturating_add(1);
        memory.failures
    };
    let delay = backoff_delay(failures);
    tracing::warn!(contract = %key.name, namespace = %key.namespace, %error, failures, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_contract(
    contract: &ChannelContract,
    key: &ContractKey,
    ctx: &Context,
) -> Result<(Action, bool), Error> {
    let plan = plan(contract, &ctx.caches, &ctx.proxy);

    let (observation, failure) = match plan {
        Plan::Publish { config_map, config_version, channels } => {
            let name = config_map.name_any();
            let fingerprint = configmap::fingerprint(&config_map);
            let existing = ctx.caches.config_maps.get(&ObjectRef::new(&name).within(&key.namespace));
            let published = existing.as_ref().is_some_and(|existing| existing.fingerprint == fingerprint);
            let written = if published {
                Ok(Written::Published)
            } else {
                let cached_owners = existing.as_ref().map(|e| e.metadata.owner_references.clone().unwrap_or_default());
                publish_config_map(&ctx.client, &key.namespace, &config_map, cached_owners).await
            };
            let programming = |written| match written {
                Written::Published => Programming::Programmed { config_version: config_version.clone() },
                Written::Conflict { controller } => Programming::NotProgrammed {
                    reason: reason::CONFIG_MAP_CONFLICT,
                    message: configmap::conflict_message(&key.namespace, &name, controller.as_deref()),
                },
                Written::TooLarge => Programming::NotProgrammed {
                    reason: reason::CONFIG_TOO_LARGE,
                    message: configmap::too_large_message(&key.namespace, &name, None),
                },
            };
            match written {
                Ok(written) => {
                    if !published && written == Written::Published {
                        ctx.memory().entry(key.clone()).or_default().published = Some(fingerprint);
                        tracing::info!(contract = %key.name, namespace = %key.namespace, config_map = %name, %config_version, "published");
                    }
                    (
                        Observation { invalid_spec: None, programming: programming(written), channels: Some(channels) },
                        None,
                    )
                }
                Err(source) => {
                    let programming = Programming::NotProgrammed {
                        reason: reason::APPLY_FAILED,
                        message: format!("cannot write ConfigMap {}/{name}: {source}; retrying", key.namespace),
                    };
                    let error = Error::ApplyConfigMap { namespace: key.namespace.clone(), name, source };
                    (Observation { invalid_spec: None, programming, channels: Some(channels) }, Some(error))
                }
            }
        }
        Plan::Hold { invalid_spec, reason, message } => {
            tracing::info!(contract = %key.name, namespace = %key.namespace, reason, %message, "not programmed");
            let programming = Programming::NotProgrammed { reason, message };
            (Observation { invalid_spec, programming, channels: None }, None)
        }
    };

    let previous = contract.status.as_ref();
    let next = status::status(&observation, contract.metadata.generation, previous, &status::now());
    let fingerprint = (previous != Some(&next)).then(|| status::fingerprint(&next));
    if let Some(fingerprint) = fingerprint.filter(|f| !ctx.wrote_recently(key, *f)) {
        let written = write_status(&ctx.client, key, &next).await;
        if let Err(source) = written {
            // A failed ConfigMap write is the error worth reporting; otherwise this one.
            return Err(failure.unwrap_or(Error::WriteStatus { contract: key.to_string(), source }));
        }
        ctx.memory().entry(key.clone()).or_default().written = Some((fingerprint, Instant::now()));
        publish_event(ctx, contract, previous, &next).await;
    }
    ctx.metrics.record_conditions(key, &next.conditions);
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(match observation.programming {
        Programming::Programmed { .. } => (Action::requeue(RESYNC), true),
        // The operator does not watch ConfigMaps without its label: it looks again until the name is free.
        Programming::NotProgrammed { reason: reason::CONFIG_MAP_CONFLICT, .. } => {
            (Action::requeue(CONFLICT_RECHECK), false)
        }
        Programming::NotProgrammed { .. } => (Action::requeue(INVALID_INPUT_REQUEUE), false),
    })
}

/// What became of a ConfigMap write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// The ConfigMap holds the desired configuration.
    Published,
    /// Someone else's ConfigMap has the name: nothing was written ([`configmap::Write::Conflict`]).
    Conflict {
        /// Its controller, if any.
        controller: Option<String>,
    },
    /// The API server refused it as too large ([`configmap::refused_as_too_large`]).
    TooLarge,
}

/// Writes the ConfigMap if the operator may ([`configmap::write`]): created with a plain POST when the
/// cache has none (JSON that the API server decodes cheaply; most ConfigMaps are written once); updated
/// with server-side apply (forced: the operator owns these fields) when it is the contract's own. When
/// the POST finds a ConfigMap the cache does not show (one without the operator's label), its owners are
/// read before anything is written. An apply body is parsed as YAML, which on ~10 KiB of files costs the
/// API server several times a JSON create.
async fn publish_config_map(
    client: &Client,
    namespace: &str,
    config_map: &ConfigMap,
    cached_owners: Option<Vec<OwnerReference>>,
) -> Result<Written, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let uid = config_map.owner_references().first().map(|o| o.uid.clone()).unwrap_or_default();
    let too_large = |e: kube::Error| match e {
        kube::Error::Api(status) if configmap::refused_as_too_large(status.code, &status.message) => {
            Ok(Written::TooLarge)
        }
        other => Err(other),
    };
    let mut decision = configmap::write(cached_owners.as_deref(), &uid);
    // A ConfigMap deleted between the POST and the read is created again by a second POST.
    for _ in 0..2 {
        if decision != configmap::Write::Create {
            break;
        }
        let params = PostParams { dry_run: false, field_manager: Some(configmap::MANAGER.to_owned()) };
        match api.create(&params, config_map).await {
            Ok(_) => return Ok(Written::Published),
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(e) => return too_large(e),
        }
        let existing = api.get_metadata_opt(&config_map.name_any()).await?;
        decision = configmap::write(existing.as_ref().map(|m| m.owner_references()), &uid);
    }
    match decision {
        // Created and deleted by someone else twice in a row: the back-off tries again.
        configmap::Write::Create => Err(kube::Error::Api(Box::new(
            kube::core::Status::failure(
                "the ConfigMap was created and deleted by someone else while it was being written",
                "Conflict",
            )
            .with_code(409),
        ))),
        configmap::Write::Conflict { controller } => Ok(Written::Conflict { controller }),
        configmap::Write::Update => {
            let params = PatchParams::apply(configmap::MANAGER).force();
            match api.patch(&config_map.name_any(), &params, &Patch::Apply(config_map)).await {
                Ok(_) => Ok(Written::Published),
                Err(e) => too_large(e),
            }
        }
    }
}

/// Writes the status with a JSON merge patch that sets every field the operator writes (those it no
/// longer sets become null, so they are removed). The operator is the status's only writer, so
/// server-side apply's field ownership buys nothing here, and its YAML-parsed body made status writes
/// the largest cost of a contract to the API server.
async fn write_status(
    client: &Client,
    key: &ContractKey,
    next: &crds::ChannelContractStatus,
) -> Result<(), kube::Error> {
    let api: Api<ChannelContract> = Api::namespaced(client.clone(), &key.namespace);
    let params = PatchParams { field_manager: Some(configmap::MANAGER.to_owned()), ..PatchParams::default() };
    api.patch_status(&key.name, &params, &Patch::Merge(status::merge_patch(next))).await.map(|_| ())
}

async fn publish_event(
    ctx: &Context,
    contract: &ChannelContract,
    previous: Option<&crds::ChannelContractStatus>,
    next: &crds::ChannelContractStatus,
) {
    let Some(summary) = status::event(previous, next) else { return };
    let event = Event {
        type_: if summary.warning { EventType::Warning } else { EventType::Normal },
        reason: summary.reason,
        note: Some(summary.note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &contract.object_ref(&())).await {
        tracing::warn!(contract = %contract.name_any(), error = %e, "cannot publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::endpoints::StaticView;

    fn contract(spec: serde_json::Value) -> ChannelContract {
        serde_json::from_value(json!({
            "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
            "metadata": {"name": "pv", "namespace": "ns", "uid": "u-1", "generation": 2},
            "spec": spec,
        }))
        .expect("contract")
    }

    fn good_spec() -> serde_json::Value {
        json!({
            "service": "pv", "port": 8080, "sla": {"maxLatency": "1s"},
            "channels": [{"name": "primary"}, {"name": "cache", "service": "pv-cache", "selector": "cache"}],
            "failover": {"regions": ["gz", "sz"]},
        })
    }

    fn view() -> StaticView {
        let mut v = StaticView::default();
        for name in ["pv", "pv-cache"] {
            let svc = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 9000}]},
            }))
            .expect("service");
            v.services.insert(("ns".into(), name.into()), Arc::new(svc));
        }
        let slice = |name: &str, service: &str, address: &str, node: &str| {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
                    "addressType": "IPv4", "ports": [{"name": "http", "port": 9000}],
                    "endpoints": [{"addresses": [address], "nodeName": node}],
                }))
                .expect("slice"),
            )
        };
        v.slices = vec![
            slice("pv-1", "pv", "10.0.0.1", "n-gz"),
            slice("pv-2", "pv", "10.0.0.2", "n-sz"),
            slice("c-1", "pv-cache", "10.0.1.1", "n-gz"),
        ];
        v.node_regions = BTreeMap::from([("n-gz".into(), "gz".into()), ("n-sz".into(), "sz".into())]);
        v
    }

    #[test]
    fn a_good_contract_publishes_its_config_map() {
        let plan = plan(&contract(good_spec()), &view(), &ProxyOptions::default());
        let Plan::Publish { config_map, config_version, channels } = plan else { panic!("{plan:?}") };
        assert_eq!(config_map.metadata.name.as_deref(), Some("pv-envoy"));
        assert!(config_version.starts_with("sha256:"));
        assert_eq!(crate::endpoints::summary(&channels), "primary:2,cache:1");
        assert_eq!(channels[0].regions, ["gz", "sz"]);
        let cds = &config_map.data.as_ref().expect("data")["cds.yaml"];
        assert!(cds.contains("10.0.0.1") && cds.contains("9000"), "{cds}");
    }

    #[test]
    fn invalid_input_holds_with_its_reason() {
        type Change = Box<dyn Fn(&mut StaticView)>;
        let cases: Vec<(serde_json::Value, Change, &str, bool)> = vec![
            (
                json!({"service": "pv", "port": 8080, "sla": {"maxLatency": "0s"}}),
                Box::new(|_| {}),
                reason::INVALID_SPEC,
                true,
            ),
            (
                good_spec(),
                Box::new(|v| {
                    v.services.remove(&("ns".into(), "pv-cache".into()));
                }),
                reason::SERVICE_NOT_FOUND,
                false,
            ),
            (
                json!({"service": "pv", "port": 8081, "sla": {"maxLatency": "1s"}}),
                Box::new(|_| {}),
                reason::SERVICE_PORT_NOT_FOUND,
                false,
            ),
            (
                good_spec(),
                Box::new(|v| {
                    let mut s = (*v.slices[0]).clone();
                    s.endpoints[0].address = "not an address!".into();
                    v.slices[0] = Arc::new(s);
                }),
                reason::INVALID_ENDPOINT,
                false,
            ),
        ];
        for (spec, change, expected, invalid_spec) in cases {
            let mut v = view();
            change(&mut v);
            let plan = plan(&contract(spec), &v, &ProxyOptions::default());
            let Plan::Hold { reason, invalid_spec: why, message } = &plan else { panic!("{plan:?}") };
            assert_eq!((*reason, why.is_some()), (expected, invalid_spec), "{message}");
            assert!(!message.is_empty());
        }
    }

    #[test]
    fn the_missing_cache_service_is_named() {
        let mut v = view();
        v.services.remove(&("ns".into(), "pv-cache".into()));
        let plan = plan(&contract(good_spec()), &v, &ProxyOptions::default());
        let Plan::Hold { message, .. } = plan else { panic!("{plan:?}") };
        assert!(message.contains("Service \"pv-cache\" (channel \"cache\", spec.channels[1].service)"), "{message}");
    }

    #[test]
    fn a_configuration_too_large_for_a_config_map_holds_as_config_too_large() {
        let mut v = view();
        let endpoints: Vec<serde_json::Value> =
            (0..1000).map(|i| json!({"addresses": [format!("10.1.{}.{}", i / 250, 1 + i % 250)]})).collect();
        v.slices.push(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "pv-big", "namespace": "ns", "labels": {"kubernetes.io/service-name": "pv"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 9000}], "endpoints": endpoints,
            }))
            .expect("slice"),
        ));
        let channels: Vec<serde_json::Value> = (0..16).map(|i| json!({"name": format!("c{i}")})).collect();
        let spec = json!({"service": "pv", "port": 8080, "sla": {"maxLatency": "1s"}, "channels": channels});
        let plan = plan(&contract(spec), &v, &ProxyOptions::default());
        let Plan::Hold { reason, invalid_spec, message } = &plan else { panic!("{plan:?}") };
        assert_eq!((*reason, invalid_spec), (reason::CONFIG_TOO_LARGE, &None));
        assert!(message.contains("does not fit in ConfigMap ns/pv-envoy") && message.contains(" bytes)"), "{message}");
        assert!(status::is_invalid_input(reason), "it waits for a change");
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let delays: Vec<u64> = (1..=10).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff_delay(u32::MAX), MAX_BACKOFF);
        assert_eq!(backoff_delay(0), Duration::from_secs(1));
    }
}
