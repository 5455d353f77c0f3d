//! `operator fleet`: the hub that carries a baseline to many clusters and rolls their compliance up.
//!
//! ```text
//! operator fleet [--namespace NS] [--argocd-namespace argocd] [--hub-name hub]
//!                [--resync-interval 30s] [--member-timeout 10s] [--admin-listen 0.0.0.0:8080]
//!                [--leader-elect [--leader-election-lease NAME] …] [--log-format json|text]
//! ```
//!
//! - Members ([`members`]) are the Secrets of `--namespace` labelled `csp.contracts.dev/member-cluster`,
//!   and Argo CD's cluster Secrets in `--argocd-namespace`; a Secret that changes restarts its member's
//!   sync with the new credentials, one that goes stops it.
//! - Every ContractPolicy labelled `csp.contracts.dev/propagate: "true"` is applied to every member and
//!   kept there ([`sync`]); one that is deleted, or loses the label, is deleted on every member.
//! - The roll-up ([`rollup`]) goes to each propagated policy's `status.fleet` ([`status`]: server-side
//!   apply of that field alone, field manager [`sync::FIELD_MANAGER`]) and to metrics ([`metrics`]).
//! - [`watches`]: the hub's own watches of the propagated policies and the member Secrets.
//!
//! Members enforce by themselves: their webhook holds its copy of each policy, so a hub that stops
//! changes nothing there; it only stops carrying changes and rolling results up.
//!
//! Only the leader (with `--leader-elect`) talks to members; the other replicas wait, ready.

pub mod members;
pub mod metrics;
pub mod rollup;
pub mod status;
pub mod sync;
pub mod watches;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crds::{ContractPolicy, PROPAGATE_LABEL};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use lifecycle::admin::{self, Readiness};
use lifecycle::leader::{self, LeaderElectionArgs, LeaderError};
use metrics::FleetMetrics;
use sync::{Board, Desired, Settings};

/// Arguments of `operator fleet`.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Where the admin server (plain HTTP: /healthz, /readyz, /metrics) listens.
    #[arg(long, env = "CSP_FLEET_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// The namespace of the member Secrets (label `csp.contracts.dev/member-cluster`): the hub's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "csp-system")]
    pub namespace: String,
    /// Also read Argo CD's cluster Secrets (label `argocd.argoproj.io/secret-type: cluster`) in this
    /// namespace. Omitted: only our own Secrets.
    #[arg(long, env = "CSP_FLEET_ARGOCD_NAMESPACE")]
    pub argocd_namespace: Option<String>,
    /// This hub's name: the value of the label `csp.contracts.dev/fleet-hub` on every policy it applies
    /// to a member. Policies with another hub's name (or none) are never deleted by this hub.
    #[arg(long, env = "CSP_FLEET_HUB_NAME", default_value = "hub")]
    pub hub_name: String,
    /// How often every member is synced when nothing changed (drift is also seen at once, through a
    /// watch on each member).
    #[arg(long, env = "CSP_FLEET_RESYNC_INTERVAL", default_value = "30s", value_parser = crds::duration::parse_flag)]
    pub resync_interval: Duration,
    /// How long one sync of a member may take before the member counts as unreachable.
    #[arg(long, env = "CSP_FLEET_MEMBER_TIMEOUT", default_value = "10s", value_parser = crds::duration::parse_flag)]
    pub member_timeout: Duration,
    /// Leader election.
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
    /// Log format: json (production) or text.
    #[arg(long, env = "CSP_LOG_FORMAT", default_value = "json")]
    pub log_format: lifecycle::LogFormat,
}

/// What can stop `operator fleet`.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// No Kubernetes client configuration.
    #[error("cannot reach the Kubernetes API (set KUBECONFIG or run in a pod): {0}")]
    Client(#[source] kube::Error),
    /// The hub cannot read what it needs.
    #[error(
        "cannot list {what}: {source}. Is the CRD installed, and may the hub's ServiceAccount list it (the chart's fleet RBAC)?"
    )]
    List {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The hub name is not a label value.
    #[error("--hub-name {0:?} is not a valid label value (at most 63 of a-z, A-Z, 0-9, '-', '_', '.')")]
    HubName(String),
    /// The admin server failed.
    #[error("the admin server on {addr} failed: {source}")]
    Admin {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Leadership was lost.
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

/// What `/readyz` says until the hub's watches have listed once.
const NOT_READY: &str = "not ready: the watches of propagated ContractPolicies and member Secrets have not synced yet";

fn valid_label_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Runs the hub until `cancel` (or until leadership, once held, is lost).
pub async fn run(args: FleetArgs, cancel: CancellationToken) -> Result<(), FleetError> {
    if !valid_label_value(&args.hub_name) {
        return Err(FleetError::HubName(args.hub_name));
    }
    let client = Client::try_default().await.map_err(FleetError::Client)?;
    let policies: Api<ContractPolicy> = Api::all(client.clone());
    let selector = format!("{PROPAGATE_LABEL}=true");
    policies
        .list(&ListParams::default().labels(&selector).limit(1))
        .await
        .map_err(|source| FleetError::List { what: "ContractPolicies".into(), source })?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    secrets
        .list_metadata(&ListParams::default().labels(crds::MEMBER_CLUSTER_LABEL).limit(1))
        .await
        .map_err(|source| FleetError::List { what: format!("Secrets in namespace {}", args.namespace), source })?;
    let listener =
        admin::bind(args.admin_listen).await.map_err(|source| FleetError::Admin { addr: args.admin_listen, source })?;
    let metrics = Arc::new(FleetMetrics::new());
    let ready = Readiness::new(NOT_READY);
    let app = admin::router(ready.clone(), {
        let metrics = metrics.clone();
        move || metrics.encode()
    });
    let admin_task = tokio::spawn(admin::serve(listener, app, cancel.clone()));

    // The propagated policies, and the member Secrets, each followed by a watch.
    let (desired_tx, desired_rx) = watch::channel::<Desired>(None);
    tokio::spawn(watches::follow_policies(policies.clone(), selector, desired_tx, cancel.clone()));
    let (ours_tx, ours_rx) = watch::channel::<Option<Vec<Arc<Secret>>>>(None);
    tokio::spawn(watches::follow_secrets(
        secrets,
        watcher::Config::default().labels(crds::MEMBER_CLUSTER_LABEL),
        ours_tx,
        cancel.clone(),
    ));
    let (argo_tx, argo_rx) = watch::channel::<Option<Vec<Arc<Secret>>>>(None);
    match &args.argocd_namespace {
        Some(ns) if !ns.is_empty() => {
            let label = format!("{}={}", members::ARGOCD_SECRET_TYPE_LABEL, members::ARGOCD_SECRET_TYPE);
            tokio::spawn(watches::follow_secrets(
                Api::namespaced(client.clone(), ns),
                watcher::Config::default().labels(&label),
                argo_tx,
                cancel.clone(),
            ));
        }
        _ => {
            argo_tx.send_replace(Some(Vec::new()));
        }
    }
    {
        let (mut d, mut o, mut a, ready) = (desired_rx.clone(), ours_rx.clone(), argo_rx.clone(), ready.clone());
        tokio::spawn(async move {
            let synced = async {
                let _ = d.wait_for(Option::is_some).await;
                let _ = o.wait_for(Option::is_some).await;
                let _ = a.wait_for(Option::is_some).await;
            };
            synced.await;
            ready.set_ready();
            tracing::info!("watches synced: ready");
        });
    }

    let (leader_tx, mut leader_rx) = watch::channel(!args.leader_election.leader_elect);
    let leader_task = args.leader_election.leader_elect.then(|| {
        tokio::spawn(leader::run(client.clone(), args.leader_election.clone(), leader_tx.clone(), cancel.clone()))
    });
    drop(leader_tx);
    tracing::info!(
        namespace = %args.namespace,
        argocd_namespace = ?args.argocd_namespace,
        hub = %args.hub_name,
        admin = %args.admin_listen,
        "fleet hub running"
    );

    let work = {
        let (cancel, metrics) = (cancel.clone(), metrics.clone());
        let settings =
            Settings { hub: args.hub_name.clone(), resync: args.resync_interval, timeout: args.member_timeout };
        async move {
            // Only the leader talks to members (without election: this instance).
            if leader_rx.wait_for(|l| *l).await.is_err() {
                return;
            }
            metrics.set_leader(true);
            let board = Arc::new(Board::default());
            let supervisor = tokio::spawn(supervise(
                ours_rx,
                argo_rx,
                desired_rx.clone(),
                settings,
                board.clone(),
                metrics.clone(),
                cancel.clone(),
            ));
            status::roll_up(policies, desired_rx, board, metrics, cancel).await;
            let _ = supervisor.await;
        }
    };
    let work_task = tokio::spawn(work);
    let outcome = match leader_task {
        Some(task) => tokio::select! {
            r = task => match r {
                Ok(Err(lost)) => Err(FleetError::Leader(lost)),
                _ => Ok(()),
            },
            _ = cancel.cancelled() => Ok(()),
        },
        None => {
            cancel.cancelled().await;
            Ok(())
        }
    };
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), work_task).await;
    let admin = match admin_task.await {
        Ok(Err(source)) => Err(FleetError::Admin { addr: args.admin_listen, source }),
        _ => Ok(()),
    };
    outcome.and(admin)
}

/// Keeps one sync task per registered member: starts new members, restarts one whose Secret changed,
/// stops one whose Secret went.
async fn supervise(
    mut ours: watch::Receiver<Option<Vec<Arc<Secret>>>>,
    mut argo: watch::Receiver<Option<Vec<Arc<Secret>>>>,
    desired: watch::Receiver<Desired>,
    settings: Settings,
    board: Arc<Board>,
    metrics: Arc<FleetMetrics>,
    cancel: CancellationToken,
) {
    let mut running: BTreeMap<String, (String, CancellationToken)> = BTreeMap::new();
    let mut reported: Vec<String> = Vec::new();
    loop {
        let (o, a) = (ours.borrow_and_update().clone(), argo.borrow_and_update().clone());
        if let (Some(o), Some(a)) = (o, a) {
            let (found, duplicates) = members::members(&o, &a);
            if duplicates != reported {
                for d in &duplicates {
                    tracing::warn!(error = %d, "a member is registered twice");
                }
                reported = duplicates;
            }
            metrics.set_members(found.len());
            let gone: Vec<String> = running.keys().filter(|n| !found.contains_key(*n)).cloned().collect();
            for name in gone {
                if let Some((_, token)) = running.remove(&name) {
                    token.cancel();
                }
                board.remove(&name);
                metrics.forget_member(&name);
                tracing::info!(member = %name, "member unregistered (its Secret is gone): no longer followed");
            }
            for (name, registration) in found {
                let version = match &registration {
                    Ok(m) => m.version.clone(),
                    Err(e) => format!("error:{e}"),
                };
                if running.get(&name).is_some_and(|(v, _)| *v == version) {
                    continue;
                }
                if let Some((_, token)) = running.remove(&name) {
                    token.cancel();
                }
                let token = cancel.child_token();
                match registration {
                    Ok(member) => {
                        tokio::spawn(sync::follow(
                            member,
                            desired.clone(),
                            settings.clone(),
                            board.clone(),
                            metrics.clone(),
                            token.clone(),
                        ));
                    }
                    Err(why) => {
                        tracing::warn!(member = %name, error = %why, "the member's Secret is unusable");
                        board.set(&name, rollup::Observation::unusable(why));
                    }
                }
                running.insert(name, (version, token));
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = ours.changed() => if r.is_err() { return },
            r = argo.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_name_must_be_a_label_value() {
        for ok in ["hub", "national-hub", "hub.1", "A_b"] {
            assert!(valid_label_value(ok), "{ok}");
        }
        for bad in ["", "-hub", "hub-", "a/b", &"x".repeat(64)] {
            assert!(!valid_label_value(bad), "{bad}");
        }
    }
}
