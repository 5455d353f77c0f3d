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
use std::path::PathBuf;
use std::sync::Arc;

use crds::ChannelContract;
use futures::{StreamExt, future, stream};
use kube::api::ListParams;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::reports::{self, ReportPlace};
use super::watches::{self, Watches};
use crate::model::{DEFAULT_CONFIG_DIR, ProxyOptions};
use crate::publish::configmap::{self};
use crate::publish::xds::Xds;
use crate::publish::xds::server::{self, RegionOf, ServeError, ServerConfig, TlsFiles};
use crate::reconcile::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};
use crate::watch::Caches;
use crate::watch::index::ContractKey;
use lifecycle::admin::{self, Readiness};
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
    /// Where contracts go, and the xDS server.
    #[command(flatten)]
    pub xds: XdsArgs,
}

/// Where a contract's configuration goes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The ConfigMap `<contract>-envoy` (filesystem xDS files), for proxies that cannot speak xDS.
    Configmap,
    /// The operator's xDS server (ADS over gRPC).
    Xds,
}

/// Where contracts go, and the xDS server.
#[derive(clap::Args, Debug, Clone)]
pub struct XdsArgs {
    /// Where contracts go: `configmap`, `xds`, or both (comma-separated).
    #[arg(long, env = "CSP_OPERATOR_PUBLISH", value_delimiter = ',', default_value = "configmap")]
    pub publish: Vec<Target>,
    /// Where the xDS server listens (every replica serves xDS).
    #[arg(long, env = "CSP_OPERATOR_XDS_LISTEN", default_value = "0.0.0.0:18000")]
    pub xds_listen: SocketAddr,
    /// The xDS server's certificate (PEM).
    #[arg(long, env = "CSP_OPERATOR_XDS_TLS_CERT", value_name = "FILE", requires = "xds_tls_key")]
    pub xds_tls_cert: Option<PathBuf>,
    /// The xDS server certificate's key (PEM).
    #[arg(long, env = "CSP_OPERATOR_XDS_TLS_KEY", value_name = "FILE", requires = "xds_tls_cert")]
    pub xds_tls_key: Option<PathBuf>,
    /// Require proxies to present a certificate signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "CSP_OPERATOR_XDS_CLIENT_CA", value_name = "FILE", requires = "xds_tls_cert")]
    pub xds_client_ca: Option<PathBuf>,
    /// Serve xDS without TLS (local tests only).
    #[arg(long, env = "CSP_OPERATOR_XDS_INSECURE", conflicts_with = "xds_tls_cert")]
    pub xds_insecure: bool,
    /// The namespace of the proxies' Pods, when their node metadata does not say (for their Node's region).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,
    /// A proxy that answers no HTTP/2 PING for this many seconds is disconnected (pinged after 30 s idle).
    /// Envoy answers from the thread that applies its configuration: applying 20,000 clusters took it
    /// 100 s on a loaded 2-core machine (`make bench-xds`), so a short timeout cuts a proxy off in the
    /// middle of its first configuration, again after each reconnection.
    #[arg(long, env = "CSP_OPERATOR_XDS_KEEPALIVE_TIMEOUT", value_name = "SECONDS", default_value_t = 300)]
    pub xds_keepalive_timeout: u64,
}

impl XdsArgs {
    fn serves_xds(&self) -> bool {
        self.publish.contains(&Target::Xds)
    }

    /// The xDS server's configuration, if xDS is on.
    fn server_config(&self) -> Result<Option<ServerConfig>, RunError> {
        if !self.serves_xds() {
            return Ok(None);
        }
        let tls = match (&self.xds_tls_cert, &self.xds_tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: self.xds_client_ca.clone() })
            }
            _ if self.xds_insecure => None,
            _ => return Err(RunError::XdsTls),
        };
        Ok(Some(ServerConfig {
            listen: self.xds_listen,
            tls,
            pod_namespace: self.pod_namespace.clone(),
            keepalive_timeout: std::time::Duration::from_secs(self.xds_keepalive_timeout.max(1)),
        }))
    }
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
pub enum RunError {
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
    /// xDS is on without TLS material.
    #[error(
        "--publish includes xds but the xDS server has no certificate: give --xds-tls-cert and --xds-tls-key (the chart mounts them), or --xds-insecure for a local test"
    )]
    XdsTls,
    /// The xDS server failed.
    #[error(transparent)]
    Xds(#[from] ServeError),
}

/// Runs the controller until `cancel` (or until leadership, once held, is lost).
pub async fn run(args: RunArgs, cancel: CancellationToken) -> Result<(), RunError> {
    let xds_config = args.xds.server_config()?;
    let client = connect(&args).await?;
    let admin_listener =
        admin::bind(args.admin_listen).await.map_err(|source| RunError::Admin { addr: args.admin_listen, source })?;
    let metrics = Arc::new(Metrics::new());
    let (leader_tx, leader_rx) = watch::channel(!args.leader_election.leader_elect);
    let (synced_tx, synced_rx) = watch::channel(false);
    let (caches, writers) = watches::caches();
    let identity = args.leader_election.identity();
    let reporter = Reporter { controller: configmap::MANAGER.to_owned(), instance: Some(identity.clone()) };
    let proxy = ProxyOptions { listener: None, config_dir: args.proxy.proxy_config_dir.clone(), local_region: None };
    let xds = xds_config.as_ref().map(|_| Arc::new(Xds::new(metrics.xds.clone())));
    let ctx = Arc::new(
        Context::new(client.clone(), reporter, metrics.clone(), caches.clone(), proxy, leader_rx.clone(), synced_rx)
            .publishing(xds.clone(), args.xds.publish.contains(&Target::Configmap)),
    );
    let mut watches = Watches::start(&client, args.contract_selector.as_deref(), &ctx, writers);
    let mut report_task = None;
    let (xds_task, status_triggers) = match (&xds, xds_config) {
        (Some(xds), Some(config)) => {
            let region_of = region_of(client.clone(), caches.clone());
            let task = tokio::spawn(server::serve(xds.clone(), config, Some(region_of), cancel.clone()));
            if args.leader_election.leader_elect {
                // Several replicas: each reports its proxies, the leader counts them all.
                let place = ReportPlace {
                    namespace: args.leader_election.leader_election_namespace.clone(),
                    lease: args.leader_election.leader_election_lease.clone(),
                    identity: identity.clone(),
                };
                report_task = Some(tokio::spawn(reports::write_reports(
                    client.clone(),
                    xds.clone(),
                    place.clone(),
                    cancel.clone(),
                )));
                tokio::spawn(reports::read_reports(client.clone(), xds.clone(), place, cancel.clone()));
            }
            (Some(task), Some(proxy_triggers(xds.clone(), leader_rx.clone())))
        }
        _ => (None, None),
    };
    if let Some(xds) = &xds {
        tokio::spawn(warm_up(xds.clone(), caches.clone(), ctx.synced.clone(), cancel.clone()));
    }
    if let Some(status_triggers) = status_triggers {
        watches.triggers = stream::select(watches.triggers, status_triggers).boxed();
    }

    let ready = Readiness::new(NOT_READY);
    let ready_task = tokio::spawn(announce_sync(caches, ready.clone(), synced_tx, cancel.clone()));
    let app = admin::router(ready, {
        let metrics = metrics.clone();
        move || metrics.encode()
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, app, cancel.clone()));
    let leader_task = args.leader_election.leader_elect.then(|| {
        tokio::spawn(leader::run(client.clone(), args.leader_election.clone(), leader_tx.clone(), cancel.clone()))
    });
    if leader_task.is_none() {
        tracing::info!("leader election off: this instance reconciles");
    }
    drop(leader_tx);
    let leader_gauge = tokio::spawn(gauge_leadership(leader_rx.clone(), metrics));
    let controller = controller(watches, ctx, leader_rx, args.concurrency, &cancel);

    tracing::info!(admin = %args.admin_listen, proxy_config_dir = %args.proxy.proxy_config_dir, %identity, "operator running");
    let xds_failed = async {
        match xds_task {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                _ => future::pending().await,
            },
            None => future::pending().await,
        }
    };
    let outcome = tokio::select! {
        outcome = until_stopped(controller, leader_task, &cancel) => outcome,
        failed = xds_failed => {
            cancel.cancel();
            Err(RunError::Xds(failed))
        }
    };
    ready_task.abort();
    leader_gauge.abort();
    if let Some(task) = report_task {
        // Let this replica empty its report, so that the leader stops counting its proxies at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
    }
    let admin = match admin_task.await {
        Ok(Err(source)) => Err(RunError::Admin { addr: args.admin_listen, source }),
        _ => Ok(()),
    };
    outcome.and(admin)
}

/// The contracts whose proxies answered, to refresh their status (on the leader), at most every
/// [`STATUS_BATCH`] so that a fleet's ACKs of one push make one status write per contract.
fn proxy_triggers(
    xds: Arc<Xds>,
    leader: watch::Receiver<bool>,
) -> futures::stream::BoxStream<'static, kube::runtime::reflector::ObjectRef<ChannelContract>> {
    stream::unfold((xds, leader), |(xds, leader)| async move {
        loop {
            xds.dirtied().await;
            tokio::time::sleep(STATUS_BATCH).await;
            let keys = xds.take_dirty();
            if *leader.borrow() && !keys.is_empty() {
                let refs: Vec<_> = keys.iter().map(|k| k.object_ref()).collect();
                return Some((stream::iter(refs), (xds, leader)));
            }
        }
    })
    .flatten()
    .boxed()
}

/// How long proxy answers are gathered before the statuses they change are refreshed.
pub const STATUS_BATCH: std::time::Duration = std::time::Duration::from_millis(250);

/// The region of a proxy's Pod's Node: the Pod from the API (the operator may get Pods), the Node's
/// region from the Node cache.
fn region_of(client: Client, caches: Caches) -> RegionOf {
    use crate::watch::endpoints::ClusterView;
    Arc::new(move |namespace: String, pod: String| {
        let (client, caches) = (client.clone(), caches.clone());
        Box::pin(async move {
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, &namespace);
            let node = match pods.get_opt(&pod).await {
                Ok(found) => found?.spec?.node_name?,
                Err(e) => {
                    tracing::warn!(%namespace, %pod, error = %e, "cannot read the proxy's Pod to find its region");
                    return None;
                }
            };
            caches.node_region(&node)
        })
    })
}

/// How long the xDS server waits, at most, for the reconciler to look at every contract before it answers
/// proxies anyway.
pub const WARM_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Lets the xDS server answer once the caches have synced and the reconciler has looked at every contract
/// they hold, so that a restarted replica never serves a proxy a partial configuration.
async fn warm_up(xds: Arc<Xds>, caches: Caches, mut synced: watch::Receiver<bool>, cancel: CancellationToken) {
    tokio::select! {
        _ = synced.wait_for(|s| *s) => {},
        () = cancel.cancelled() => return,
    }
    let keys: Vec<ContractKey> = caches.contracts.state().iter().map(|c| ContractKey::of(c)).collect();
    let started = tokio::time::Instant::now();
    while !xds.has_seen(&keys) {
        if started.elapsed() > WARM_UP_LIMIT {
            tracing::warn!(
                contracts = keys.len(),
                "not every contract was reconciled within the warm-up limit: serving xDS anyway"
            );
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {},
            () = cancel.cancelled() => return,
        }
    }
    tracing::info!(
        contracts = keys.len(),
        after_ms = started.elapsed().as_millis() as u64,
        "xDS warm: every contract is in the catalog"
    );
    xds.set_warm();
}

/// What `/readyz` says until every cache has listed once.
const NOT_READY: &str =
    "not ready: the watches of ChannelContracts, Services, EndpointSlices, Nodes and ConfigMaps have not synced yet";

/// A client, and a first list of the contracts: so that a missing CRD, RBAC or a bad selector fails the
/// start with a message that says so.
async fn connect(args: &RunArgs) -> Result<Client, RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let mut list = ListParams::default().limit(1);
    if let Some(selector) = &args.contract_selector {
        list = list.labels(selector);
    }
    Api::<ChannelContract>::all(client.clone()).list(&list).await.map_err(|source| RunError::ListContracts {
        selector: args.contract_selector.as_ref().map(|s| format!(" with selector {s:?}")).unwrap_or_default(),
        source,
    })?;
    Ok(client)
}

/// Ready once every cache has listed: `/readyz` and the reconciles (which wait for it) are told.
async fn announce_sync(caches: Caches, ready: Readiness, synced: watch::Sender<bool>, cancel: CancellationToken) {
    tokio::select! {
        result = caches.wait_until_ready() => if result.is_ok() {
            ready.set_ready();
            synced.send_replace(true);
            tracing::info!(?caches, "caches synced: ready");
        },
        _ = cancel.cancelled() => {},
    }
}

/// Keeps the leader gauge up to date.
async fn gauge_leadership(mut leader: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    loop {
        metrics.set_leader(*leader.borrow_and_update());
        if leader.changed().await.is_err() {
            return;
        }
    }
}

/// The controller over the watches: it reconciles a contract when it changes, when something it uses
/// changes, when its ConfigMap is edited or deleted, and every contract on becoming the leader.
fn controller(
    watches: Watches,
    ctx: Arc<Context>,
    leader: watch::Receiver<bool>,
    concurrency: u16,
    cancel: &CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let Watches { contracts, store, triggers, config_maps } = watches;
    let became_leader = stream::unfold(leader, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    });
    Controller::for_stream(contracts, store)
        .owns_stream(config_maps)
        .reconcile_on(triggers)
        .reconcile_all_on(became_leader.map({
            let ctx = ctx.clone();
            move |()| ctx.forget_written()
        }))
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(cancel.clone().cancelled_owned())
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
        })
}

/// Runs the controller until it ends (on `cancel`) or leadership, once held, is lost; then stops
/// everything and lets the leader release its Lease.
async fn until_stopped(
    controller: impl std::future::Future<Output = ()>,
    leader_task: Option<tokio::task::JoinHandle<Result<(), LeaderError>>>,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
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
            lost = leadership => Err(RunError::Leader(lost)),
        }
    };
    cancel.cancel();
    if outcome.is_ok()
        && let Some(task) = leader_task
    {
        // Let the leader release its Lease, so that a successor takes over at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn the_admin_server_is_unready_until_synced_and_serves_the_operators_metrics() {
        let (ready, metrics) = (Readiness::new(NOT_READY), Arc::new(Metrics::new()));
        let app = admin::router(ready.clone(), move || metrics.encode());
        let get = |path: &'static str| {
            let app = app.clone();
            async move {
                let response =
                    app.oneshot(Request::get(path).body(Body::empty()).expect("request")).await.expect("response");
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        assert_eq!(get("/readyz").await, (StatusCode::SERVICE_UNAVAILABLE, NOT_READY.to_owned()));
        ready.set_ready();
        assert_eq!(get("/readyz").await.0, StatusCode::OK);
        let (status, text) = get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for name in
            ["csp_operator_reconciles_total", "csp_operator_reconcile_duration_seconds", "csp_operator_contracts"]
        {
            assert!(text.contains(name), "{name} missing from {text}");
        }
    }
}
