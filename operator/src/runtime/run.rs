//! `operator run`: the controller against a cluster.
//!
//! ```text
//! operator run [--admin-listen 0.0.0.0:8080] [--proxy-config-dir /etc/envoy/csp]
//!              [--contract-selector LABELS] [--concurrency 8] [--log-format json|text]
//!              [--leader-elect [--leader-election-namespace NS] [--leader-election-lease NAME] [--identity ID]]
//! ```
//!
//! It watches ChannelContracts (those `--contract-selector` matches), Services, EndpointSlices, Nodes
//! (metadata) and the ConfigMaps it manages (label `app.kubernetes.io/managed-by`). Each watch fills a
//! cache and then, through the [`ContractIndex`], triggers the contracts its change concerns; since the
//! trigger comes after the cache update on the same stream, a reconcile never reads a cache older than the
//! event that caused it. Reconciles wait until every cache has listed once, so that a restart never
//! reports a Service as missing only because its watch had not caught up.
//!
//! One [`CancellationToken`] (SIGTERM or Ctrl-C) stops everything: the controller lets running
//! reconciles finish, the admin server stops, the leader releases its Lease.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crds::ChannelContract;
use futures::{Stream, StreamExt, future, stream};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, predicates};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::cache::{CachedConfigMap, CachedService, CachedSlice};
use crate::configmap;
use crate::controller::{Caches, Context, error_policy, reconcile};
use crate::index::{ContractIndex, ContractKey};
use crate::metrics::Metrics;
use crate::model::{DEFAULT_CONFIG_DIR, ProxyOptions};
use lifecycle::leader::{self, LeaderElectionArgs, LeaderError};

/// Arguments of `operator run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Where the admin server (plain HTTP: /healthz, /readyz, /metrics) listens.
    #[arg(long, env = "CSP_OPERATOR_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// How proxies use the ConfigMaps.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// Leader election.
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
    /// Reconcile only the ChannelContracts with these labels (a label selector such as `team=payments`).
    /// Omitted: all.
    #[arg(long, env = "CSP_OPERATOR_CONTRACT_SELECTOR", value_name = "LABELS")]
    pub contract_selector: Option<String>,
    /// At most this many contracts are reconciled at once.
    #[arg(long, env = "CSP_OPERATOR_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Log format: json (production) or text.
    #[arg(long, env = "CSP_LOG_FORMAT", default_value = "json")]
    pub log_format: lifecycle::LogFormat,
}

/// How proxies use the ConfigMaps.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ProxyArgs {
    /// Where proxies mount a contract's ConfigMap: its lds.yaml takes the routes from <DIR>/rds.yaml.
    #[arg(long, env = "CSP_PROXY_CONFIG_DIR", value_name = "DIR", default_value = DEFAULT_CONFIG_DIR)]
    pub proxy_config_dir: String,
}

/// What can stop `operator run`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Kubernetes client configuration.
    #[error("cannot reach the Kubernetes API (set KUBECONFIG or run in a pod): {0}")]
    Client(#[source] kube::Error),
    /// ChannelContracts cannot be listed.
    #[error(
        "cannot list ChannelContracts{selector}: {source}. Is the CRD installed (kubectl apply -f crds/manifests/), may the operator list them (RBAC), and is --contract-selector a valid label selector?"
    )]
    ListContracts {
        /// ` with selector "…"`, or nothing.
        selector: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The admin server failed.
    #[error("the admin server on {addr} failed: {source}")]
    Admin {
        /// Where it listened.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Leadership was lost.
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

/// The contracts that a watch's changes concern, as the controller's triggers: `concerns(object, deleted)`
/// says which; the list markers concern none, and a failed watch is logged (it retries with back-off).
fn triggers<K>(
    kind: &'static str,
    events: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    mut concerns: impl FnMut(&K, bool) -> Vec<ContractKey>,
) -> impl Stream<Item = ObjectRef<ChannelContract>> {
    events
        .map(move |event| {
            let keys = match event {
                Ok(Event::Apply(object) | Event::InitApply(object)) => concerns(&object, false),
                Ok(Event::Delete(object)) => concerns(&object, true),
                Ok(Event::Init | Event::InitDone) => Vec::new(),
                Err(e) => {
                    watch_failed(kind, &e);
                    Vec::new()
                }
            };
            stream::iter(keys.into_iter().map(|k| k.object_ref()))
        })
        .flatten()
}

/// kubectl's copy of what was last applied with client-side apply.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What the caches keep of an object: all but `metadata.managedFields` and kubectl's last-applied
/// configuration, which nothing here reads and which are most of a small object's memory once parsed (the
/// managed fields of one Service take several KiB); with every Service and EndpointSlice of a cluster
/// cached, that is most of the operator's memory.
fn slim<K: ResourceExt>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

/// The watcher has taken the resourceVersion it resumes from by the time an object reaches `modify`;
/// nothing downstream reads it, and the cache would keep it twice (in the object and in its key).
fn forget_resource_version<K: ResourceExt>(object: &mut K) {
    object.meta_mut().resource_version = None;
}

/// What the cache keeps of a Node: its name and region label (a Node has dozens of labels and
/// annotations, and a cluster thousands of Nodes).
fn slim_node(node: &mut PartialObjectMeta<Node>) {
    let meta = &mut node.metadata;
    let region = meta.labels.take().unwrap_or_default().remove_entry(crds::REGION_LABEL);
    meta.labels = region.map(|entry| std::iter::once(entry).collect());
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
}

fn watch_failed(kind: &'static str, error: &watcher::Error) {
    tracing::warn!(kind, %error, "watch failed; retrying with back-off");
}

/// Runs the controller until `cancel` (or until leadership, once held, is lost).
pub async fn run(args: RunArgs, cancel: CancellationToken) -> Result<(), Error> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    let mut list = ListParams::default().limit(1);
    if let Some(selector) = &args.contract_selector {
        list = list.labels(selector);
    }
    Api::<ChannelContract>::all(client.clone()).list(&list).await.map_err(|source| Error::ListContracts {
        selector: args.contract_selector.as_ref().map(|s| format!(" with selector {s:?}")).unwrap_or_default(),
        source,
    })?;

    let admin_listener =
        admin::bind(args.admin_listen).await.map_err(|source| Error::Admin { addr: args.admin_listen, source })?;
    let metrics = Arc::new(Metrics::new());
    let (leader_tx, leader_rx) = watch::channel(!args.leader_election.leader_elect);
    let (contracts, contracts_w) = reflector::store::<ChannelContract>();
    let (services, services_w) = reflector::store::<CachedService>();
    let (slices, slices_w) = reflector::store::<CachedSlice>();
    let (nodes, nodes_w) = reflector::store();
    let (config_maps, config_maps_w) = reflector::store::<CachedConfigMap>();
    let index = Arc::new(Mutex::new(ContractIndex::default()));
    let caches = Caches { contracts: contracts.clone(), services, slices, nodes, config_maps, index };
    let identity = args.leader_election.identity();
    let reporter = Reporter { controller: configmap::MANAGER.to_owned(), instance: Some(identity.clone()) };
    let proxy = ProxyOptions { listener: None, config_dir: args.proxy.proxy_config_dir.clone(), local_region: None };
    let (synced_tx, synced_rx) = watch::channel(false);
    let ctx = Arc::new(Context::new(
        client.clone(),
        reporter,
        metrics.clone(),
        caches.clone(),
        proxy,
        leader_rx.clone(),
        synced_rx,
    ));

    let cfg = watcher::Config::default().any_semantic();
    let contract_cfg = match &args.contract_selector {
        Some(selector) => cfg.clone().labels(selector),
        None => cfg.clone(),
    };
    let contract_stream = {
        let ctx = ctx.clone();
        watcher(Api::<ChannelContract>::all(client.clone()), contract_cfg)
            .default_backoff()
            .modify(slim)
            .reflect(contracts_w)
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
            .reflect(services_w);
        triggers("Service", events, move |s, _| {
            caches.index().contracts_of_service(&s.namespace().unwrap_or_default(), &s.name_any())
        })
    };
    let slice_triggers = {
        let caches = caches.clone();
        let events = watcher(Api::<CachedSlice>::all(client.clone()), cfg.clone())
            .default_backoff()
            .modify(forget_resource_version)
            .reflect(slices_w);
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
            .reflect(nodes_w);
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
        .reflect(config_maps_w)
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

    // Ready once every cache has listed.
    let ready = Arc::new(AtomicBool::new(false));
    let ready_task = {
        let (caches, ready, cancel) = (caches.clone(), ready.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                synced = caches.wait_until_ready() => if synced.is_ok() {
                    ready.store(true, Ordering::Release);
                    synced_tx.send_replace(true);
                    tracing::info!(?caches, "caches synced: ready");
                },
                _ = cancel.cancelled() => {},
            }
        })
    };
    let admin_task = {
        let app = admin::router(AdminState { ready, metrics: metrics.clone() });
        tokio::spawn(admin::serve(admin_listener, app, cancel.clone()))
    };
    let leader_task = if args.leader_election.leader_elect {
        Some(tokio::spawn(leader::run(client.clone(), args.leader_election.clone(), leader_tx, cancel.clone())))
    } else {
        tracing::info!("leader election off: this instance reconciles");
        drop(leader_tx);
        None
    };
    let leader_gauge = {
        let (mut rx, metrics) = (leader_rx.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                metrics.set_leader(*rx.borrow_and_update());
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    // Becoming the leader reconciles every contract.
    let became_leader = stream::unfold(leader_rx, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    });

    let shutdown = cancel.clone().cancelled_owned();
    let controller = Controller::for_stream(contract_stream, contracts)
        .owns_stream(config_map_stream)
        .reconcile_on(stream::select_all([service_triggers.boxed(), slice_triggers.boxed(), node_triggers.boxed()]))
        .reconcile_all_on(became_leader.map({
            let ctx = ctx.clone();
            move |()| ctx.forget_written()
        }))
        .with_config(controller::Config::default().concurrency(args.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok((object, _)) => {
                    tracing::debug!(contract = %object.name, namespace = ?object.namespace, "reconciled")
                }
                // error_policy logs the reconcilers' own failures.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(controller::Error::ObjectNotFound(object)) => {
                    tracing::debug!(contract = %object.name, "triggered for a contract that is gone or not selected")
                }
                Err(e) => tracing::warn!(error = %e, "controller"),
            }
            future::ready(())
        });

    tracing::info!(admin = %args.admin_listen, proxy_config_dir = %args.proxy.proxy_config_dir, %identity, "operator running");
    let mut leader_task = leader_task;
    let outcome = {
        let leadership = async {
            match leader_task.as_mut() {
                Some(task) => match task.await {
                    Ok(Err(lost)) => lost,
                    // Ended by the cancellation (or panicked): the controller's end decides.
                    _ => future::pending().await,
                },
                None => future::pending().await,
            }
        };
        tokio::select! {
            () = controller => Ok(()),
            lost = leadership => Err(Error::Leader(lost)),
        }
    };
    cancel.cancel();
    ready_task.abort();
    leader_gauge.abort();
    if outcome.is_ok()
        && let Some(task) = leader_task
    {
        // Let the leader release its Lease, so that a successor takes over at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    let admin = match admin_task.await {
        Ok(Err(source)) => Err(Error::Admin { addr: args.admin_listen, source }),
        _ => Ok(()),
    };
    outcome.and(admin)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[test]
    fn the_caches_keep_no_managed_fields_and_no_last_applied_configuration() {
        let mut config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "pv-envoy", "namespace": "ns",
                "labels": {"app": "pv"},
                "annotations": {LAST_APPLIED_ANNOTATION: "{\"big\": true}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:data": {"f:cds.yaml": {}}}}],
            },
            "data": {"cds.yaml": "resources: []"},
        }))
        .expect("config map");
        let before = config_map.clone();
        slim(&mut config_map);
        assert_eq!(config_map.metadata.managed_fields, None);
        assert_eq!(config_map.annotations().keys().collect::<Vec<_>>(), ["keep"]);
        assert_eq!((config_map.labels(), &config_map.data), (before.labels(), &before.data));
    }

    #[test]
    fn the_node_cache_keeps_only_the_region_label() {
        let node = |labels: serde_json::Value| -> PartialObjectMeta<Node> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "n1", "resourceVersion": "9", "labels": labels,
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                    "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            }))
            .expect("node metadata")
        };
        let mut n = node(serde_json::json!({crds::REGION_LABEL: "gz", "kubernetes.io/hostname": "n1",
            "node.kubernetes.io/instance-type": "m5.large"}));
        slim_node(&mut n);
        assert_eq!(n.labels().iter().collect::<Vec<_>>(), [(&crds::REGION_LABEL.to_owned(), &"gz".to_owned())]);
        assert_eq!((n.annotations().len(), n.metadata.managed_fields.as_ref()), (0, None));
        assert_eq!((n.name_any(), n.resource_version()), ("n1".to_owned(), Some("9".to_owned())));
        let mut n = node(serde_json::json!({"kubernetes.io/hostname": "n1"}));
        slim_node(&mut n);
        assert!(n.labels().is_empty());
    }
}
