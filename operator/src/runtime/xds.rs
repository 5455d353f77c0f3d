//! The xDS side of `operator run`: where contracts go and the xDS server's flags ([`XdsArgs`]), the
//! region of a proxy's Pod (`region_of`), the warm-up before a (re)started replica answers proxies
//! (`warm_up`), and the status refreshes that proxies' answers trigger (`proxy_triggers`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crds::ChannelContract;
use futures::{StreamExt, stream};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::run::RunError;
use crate::publish::xds::Xds;
use crate::publish::xds::server::{RegionOf, ServerConfig, TlsFiles};
use crate::watch::Caches;
use crate::watch::index::ContractKey;

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
    pub(super) fn serves_xds(&self) -> bool {
        self.publish.contains(&Target::Xds)
    }

    /// The xDS server's configuration, if xDS is on.
    pub(super) fn server_config(&self) -> Result<Option<ServerConfig>, RunError> {
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

/// The contracts whose proxies answered, to refresh their status (on the leader), at most every
/// [`STATUS_BATCH`] so that a fleet's ACKs of one push make one status write per contract.
pub(super) fn proxy_triggers(
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
pub(super) fn region_of(client: Client, caches: Caches) -> RegionOf {
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
pub(super) async fn warm_up(
    xds: Arc<Xds>,
    caches: Caches,
    mut synced: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
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
