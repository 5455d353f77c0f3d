//! The reconciler: for one ChannelContract, gather its channels' endpoints from the caches, translate
//! ([`translate`](crate::translate)), publish the ConfigMap, and write status and Events. The decisions are
//! pure ([`plan`](super::plan), [`status`](super::status)); this module only reads caches and writes to the API.
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

use crds::ChannelContract;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;

use super::{Plan, plan_for};
use crate::model::ProxyOptions;
use crate::publish::configmap::{self};
use crate::publish::xds::Xds;
use crate::publish::{Written, write_config_map};
use crate::reconcile::metrics::{Metrics, ReconcileResult};
use crate::reconcile::status::{self, Observation, Programming, reason};
use crate::watch::Caches;
use crate::watch::cache::CachedConfigMap;
use crate::watch::index::ContractKey;

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
pub enum ReconcileError {
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
    /// The xDS server's state, when the xDS path is on: every replica feeds it, the leader reads it.
    pub xds: Option<Arc<Xds>>,
    /// Whether the ConfigMap path is on.
    pub config_map: bool,
    /// The drills' faults in force (the drill controller keeps them): what a contract's xDS version
    /// carries while its drill runs.
    pub faults: crate::model::Faults,
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
        Self {
            client,
            reporter,
            metrics,
            caches,
            proxy,
            leader,
            synced,
            xds: None,
            config_map: true,
            faults: crate::model::Faults::default(),
            memory: Mutex::default(),
        }
    }

    /// Where contracts go: the xDS server (if any) and the ConfigMaps (if `config_map`).
    pub fn publishing(mut self, xds: Option<Arc<Xds>>, config_map: bool) -> Self {
        self.xds = xds;
        self.config_map = config_map;
        self
    }

    /// The drills' faults come from `faults`.
    pub fn with_faults(mut self, faults: crate::model::Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The fault in force for a contract, if a drill of it runs.
    fn fault(&self, key: &ContractKey) -> Option<crate::model::ActiveFault> {
        self.faults.read().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    /// Publishes a contract over xDS (with its drill's fault, if one is in force); returns the version
    /// the proxies are served: the configuration's own, `+drill.<hash>` during a drill.
    fn publish_xds(
        &self,
        key: &ContractKey,
        config_version: &str,
        contract: Arc<ChannelContract>,
        endpoints: crate::model::ChannelEndpoints,
    ) -> String {
        let fault = self.fault(key);
        let version = match &fault {
            Some(f) => format!("{config_version}{}", f.version_suffix()),
            None => config_version.to_owned(),
        };
        if let Some(xds) = &self.xds {
            if let Ok(max_latency) = crds::duration::parse(&contract.spec.sla.max_latency) {
                let objective = contract.spec.sla.objective.unwrap_or(crds::DEFAULT_SLA_OBJECTIVE);
                xds.slo().set_target(&key.namespace, &key.name, crate::observe::slo::Target { max_latency, objective });
            }
            xds.publish_with_fault(key.clone(), version.clone(), contract, endpoints, fault);
        }
        version
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
        if let Some(xds) = &self.xds {
            xds.remove(key);
            xds.slo().forget(&key.namespace, &key.name);
        }
        self.memory().remove(key);
        self.metrics.forget(key);
    }
}

/// The back-off after `failures` consecutive transient failures: 1s, 2s, 4s, … up to [`MAX_BACKOFF`].
pub fn backoff_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

/// Reconciles one contract (the controller calls it).
pub async fn reconcile(contract: Arc<ChannelContract>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if !*ctx.leader.borrow() && ctx.xds.is_none() {
        return Ok(Action::await_change());
    }
    // Until every cache has listed, a Service may look missing only because its watch is behind.
    if ctx.synced.clone().wait_for(|synced| *synced).await.is_err() {
        return Ok(Action::await_change());
    }
    if !*ctx.leader.borrow() {
        // Every replica serves xDS; only the leader writes.
        if let Some(xds) = &ctx.xds {
            let key = ContractKey::of(&contract);
            match plan_for(&contract, &ctx.caches, &ctx.proxy, false) {
                Plan::Publish { config_version, endpoints, .. } => {
                    ctx.publish_xds(&key, &config_version, contract.clone(), endpoints);
                }
                Plan::Hold { .. } => xds.held(&key),
            }
        }
        return Ok(Action::requeue(RESYNC));
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
pub fn error_policy(contract: Arc<ChannelContract>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
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
) -> Result<(Action, bool), ReconcileError> {
    let plan = plan_for(contract, &ctx.caches, &ctx.proxy, ctx.config_map);

    let (mut observation, failure) = match plan {
        Plan::Publish { config_map, config_version, channels, endpoints } => {
            let config_version = if ctx.xds.is_some() {
                ctx.publish_xds(key, &config_version, Arc::new(contract.clone()), endpoints)
            } else {
                config_version
            };
            let Some(config_map) = config_map else {
                let programming = Programming::Programmed { config_version };
                let observation = Observation {
                    invalid_spec: None,
                    programming,
                    channels: Some(channels),
                    xds: None,
                    config_map: false,
                };
                return finish(contract, key, ctx, observation, None).await;
            };
            let name = config_map.name_any();
            let fingerprint = configmap::fingerprint(&config_map);
            let existing = ctx.caches.config_maps.get(&ObjectRef::new(&name).within(&key.namespace));
            let published = existing.as_ref().is_some_and(|existing| existing.fingerprint == fingerprint);
            let written = if published {
                Ok(Written::Published)
            } else {
                let cached_owners = existing.as_ref().map(|e| e.metadata.owner_references.clone().unwrap_or_default());
                write_config_map(&ctx.client, &key.namespace, &config_map, cached_owners).await
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
                        Observation {
                            invalid_spec: None,
                            programming: programming(written),
                            channels: Some(channels),
                            xds: None,
                            config_map: true,
                        },
                        None,
                    )
                }
                Err(source) => {
                    let programming = Programming::NotProgrammed {
                        reason: reason::APPLY_FAILED,
                        message: format!("cannot write ConfigMap {}/{name}: {source}; retrying", key.namespace),
                    };
                    let error = ReconcileError::ApplyConfigMap { namespace: key.namespace.clone(), name, source };
                    let observation = Observation {
                        invalid_spec: None,
                        programming,
                        channels: Some(channels),
                        xds: None,
                        config_map: true,
                    };
                    (observation, Some(error))
                }
            }
        }
        Plan::Hold { invalid_spec, reason, message } => {
            if let Some(xds) = &ctx.xds {
                xds.held(key);
            }
            tracing::info!(contract = %key.name, namespace = %key.namespace, reason, %message, "not programmed");
            let programming = Programming::NotProgrammed { reason, message };
            (Observation { invalid_spec, programming, channels: None, xds: None, config_map: ctx.config_map }, None)
        }
    };
    observation.config_map = ctx.config_map;
    finish(contract, key, ctx, observation, failure).await
}

/// Writes the status an observation leads to (with what the xDS server knows of the proxies), and decides
/// when to look again.
async fn finish(
    contract: &ChannelContract,
    key: &ContractKey,
    ctx: &Context,
    mut observation: Observation,
    failure: Option<ReconcileError>,
) -> Result<(Action, bool), ReconcileError> {
    observation.xds = ctx.xds.as_ref().map(|x| x.observe(key));

    let previous = contract.status.as_ref();
    let next = status::status(&observation, contract.metadata.generation, previous, &status::now());
    let fingerprint = (previous != Some(&next)).then(|| status::fingerprint(&next));
    if let Some(fingerprint) = fingerprint.filter(|f| !ctx.wrote_recently(key, *f)) {
        let written = write_status(&ctx.client, key, &next).await;
        if let Err(source) = written {
            // A failed ConfigMap write is the error worth reporting; otherwise this one.
            return Err(failure.unwrap_or(ReconcileError::WriteStatus { contract: key.to_string(), source }));
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
    let event = KubeEvent {
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
