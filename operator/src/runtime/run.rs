//! `operator run`: the controller against a cluster.
//!
//! ```text
//! operator run [--admin-listen 0.0.0.0:8080] [--proxy-config-dir /etc/envoy/csp]
//!              [--contract-selector LABELS] [--concurrency 8] [--log-format json|text]
//!              [--leader-elect [--leader-election-namespace NS] [--leader-election-lease NAME] [--identity ID]]
//!              [--prometheus-url URL [--prometheus-token-file FILE] [--prometheus-ca-file FILE]]
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
use super::xds::{Target, XdsArgs, proxy_triggers, region_of, warm_up};
use crate::model::{DEFAULT_CONFIG_DIR, ProxyOptions};
use crate::publish::configmap::{self};
use crate::publish::xds::Xds;
use crate::publish::xds::server::{self, ServeError};
use crate::reconcile::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};
use crate::watch::Caches;
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
    /// Omitted: all. With a selector, ContractDrills of contracts it does not select are left to the
    /// operator that selects them (not aborted as ContractNotFound).
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
    /// Where ContractDrill triggers read the SLA breach ratio.
    #[command(flatten)]
    pub prometheus: super::drills::prometheus::PrometheusArgs,
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
    /// The Prometheus flags are wrong.
    #[error(transparent)]
    Prometheus(#[from] super::drills::prometheus::PrometheusError),
}

/// Runs the controller until `cancel` (or until leadership, once held, is lost).
pub async fn run(args: RunArgs, cancel: CancellationToken) -> Result<(), RunError> {
    let xds_config = args.xds.server_config()?;
    let prometheus = super::drills::prometheus::Prometheus::new(&args.prometheus)?;
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
    let faults = crate::model::Faults::default();
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            reporter.clone(),
            metrics.clone(),
            caches.clone(),
            proxy,
            leader_rx.clone(),
            synced_rx,
        )
        .publishing(xds.clone(), args.xds.publish.contains(&Target::Configmap))
        .with_faults(faults.clone()),
    );
    let mut watches = Watches::start(&client, args.contract_selector.as_deref(), &ctx, writers);
    // ContractDrills: the faults every replica serves, the leader's decisions; a fault that changes
    // triggers its contract.
    let (drill_tx, drill_rx) = tokio::sync::mpsc::unbounded_channel();
    if xds.is_some() {
        let runtime = super::drills::DrillRuntime {
            client: client.clone(),
            faults,
            caches: caches.clone(),
            leader: leader_rx.clone(),
            triggers: drill_tx,
            reporter,
            logs: {
                let xds = xds.clone();
                Arc::new(move |run: &str| xds.as_ref().and_then(|x| x.drill_log(run)))
            },
            scoped: args.contract_selector.is_some(),
            prometheus,
            metrics: metrics.drills.clone(),
        };
        tokio::spawn(super::drills::run(runtime, cancel.clone()));
        let drill_triggers = tokio_stream::wrappers::UnboundedReceiverStream::new(drill_rx);
        watches.triggers = stream::select(watches.triggers, drill_triggers).boxed();
    }
    let mut report_task = None;
    let (xds_task, status_triggers) = match (&xds, xds_config) {
        (Some(xds), Some(config)) => {
            let region_of = region_of(client.clone(), caches.clone());
            let task = tokio::spawn(server::serve(xds.clone(), config, Some(region_of), cancel.clone()));
            if args.leader_election.leader_elect {
                // Several replicas: each reports its proxies, the leader counts them all.
                let namespace = args.leader_election.leader_election_namespace.clone();
                let place = ReportPlace {
                    owner: reports::own_pod(client.clone(), &namespace).await,
                    namespace,
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
