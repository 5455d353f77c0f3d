//! How the webhook runs: its settings, and the wiring of certificates, caches, the audit (with its leader
//! election) and the HTTPS server under one cancellation token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lifecycle::leader::{self, LeaderElectionArgs};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{admission, audit, index, metrics, selfcert, server};

/// What can stop the webhook.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client configuration.
    #[error("cannot reach the Kubernetes API (set KUBECONFIG or run in a pod): {0}")]
    Client(#[from] kube::Error),
    /// The serving certificate does not load.
    #[error("cannot load the serving certificate {cert} / key {key}: {source}")]
    Tls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The self-managed certificate could not be set up.
    #[error(transparent)]
    SelfCert(#[from] selfcert::SelfCertError),
    /// The server failed.
    #[error("the HTTPS server on {addr} failed: {source}")]
    Serve {
        /// Where it listened.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// TLS settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// The serving certificate (PEM); reloaded when it changes.
    #[arg(long, env = "CSP_WEBHOOK_TLS_CERT_FILE", default_value = "/var/run/csp/tls/tls.crt")]
    pub tls_cert_file: PathBuf,
    /// The serving key (PEM); reloaded when it changes.
    #[arg(long, env = "CSP_WEBHOOK_TLS_KEY_FILE", default_value = "/var/run/csp/tls/tls.key")]
    pub tls_key_file: PathBuf,
    /// Offer HTTP/2 (ALPN h2) besides HTTP/1.1. Off: the API server calls over HTTP/1.1, with a pool of
    /// connections, which costs it less per admission review than an HTTP/2 stream.
    #[arg(long, env = "CSP_WEBHOOK_HTTP2", default_value_t = false, action = clap::ArgAction::Set)]
    pub http2: bool,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "CSP_WEBHOOK_TLS_RELOAD_INTERVAL", default_value = "2s", value_parser = crds::duration::parse_flag)]
    pub tls_reload_interval: Duration,
    /// Self-managed certificates: keep a CA and serving certificate in this Secret of the webhook's
    /// namespace (created if missing, renewed before expiry) instead of reading the files.
    #[arg(long, env = "CSP_WEBHOOK_CERT_SECRET")]
    pub cert_secret: Option<String>,
    /// The webhook's own ValidatingWebhookConfiguration: with --cert-secret its caBundle gets the CA; and
    /// the leader narrows it (a match condition) to the kinds that policies the webhook judges cover, when
    /// generated ValidatingAdmissionPolicies judge the others (`spec.enforcement`).
    #[arg(long, env = "CSP_WEBHOOK_CONFIG_NAME")]
    pub webhook_config_name: Option<String>,
    /// With --cert-secret: the names the serving certificate covers (the Service's DNS names, or an IP).
    #[arg(long, env = "CSP_WEBHOOK_CERT_DNS_NAMES", value_delimiter = ',', default_value = "localhost")]
    pub cert_dns_names: Vec<String>,
    /// With --cert-secret: how long a serving certificate is valid.
    #[arg(long, env = "CSP_WEBHOOK_CERT_VALIDITY", default_value = "8760h", value_parser = crds::duration::parse_flag)]
    pub cert_validity: Duration,
    /// With --cert-secret: renew the serving certificate when less than this is left.
    #[arg(long, env = "CSP_WEBHOOK_CERT_RENEW_BEFORE", default_value = "720h", value_parser = crds::duration::parse_flag)]
    pub cert_renew_before: Duration,
    /// With --cert-secret: how often the Secret and the caBundle are checked.
    #[arg(long, env = "CSP_WEBHOOK_CERT_CHECK_INTERVAL", default_value = "60s", value_parser = crds::duration::parse_flag)]
    pub cert_check_interval: Duration,
}

/// The webhook's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "webhook", version, about = "Channel Contracts admission webhook")]
pub struct Args {
    /// Where the HTTPS server listens.
    #[arg(long, env = "CSP_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The namespace the project runs in: never matched by any policy.
    #[arg(long, env = "POD_NAMESPACE", default_value = "csp-system")]
    pub namespace: String,
    /// More namespaces that no policy matches (besides kube-system, kube-public, kube-node-lease).
    #[arg(long = "exempt-namespace", env = "CSP_WEBHOOK_EXEMPT_NAMESPACES", value_delimiter = ',')]
    pub exempt_namespaces: Vec<String>,
    /// How often existing objects are audited (also whenever a policy changes).
    #[arg(long, env = "CSP_WEBHOOK_AUDIT_INTERVAL", default_value = "60s", value_parser = crds::duration::parse_flag)]
    pub audit_interval: Duration,
    /// Publish the audit's results as OpenReports Reports (one per namespace): auto, when the API server
    /// serves openreports.io/v1alpha1 (looked at every audit); on (warns when it does not); off.
    #[arg(long, env = "CSP_WEBHOOK_OPENREPORTS", value_enum, default_value = "auto")]
    pub openreports: crate::openreports::Mode,
    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, env = "CSP_WEBHOOK_DRAIN_TIMEOUT", default_value = "10s", value_parser = crds::duration::parse_flag)]
    pub drain_timeout: Duration,
    /// Log format: json (production) or text.
    #[arg(long, env = "CSP_LOG_FORMAT", default_value = "json")]
    pub log_format: lifecycle::LogFormat,
    /// Bounds on the memory that admission requests in flight take.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Only one replica audits and writes policies' audit status: the holder of this Lease in the
    /// webhook's namespace. Empty: this replica always audits (run exactly one).
    #[arg(long, env = "CSP_WEBHOOK_AUDIT_LEASE", default_value = "")]
    pub audit_lease: String,
    /// Leave out of the webhook's registration (--webhook-config-name) the Services whose own
    /// failover-regions annotation already satisfies every policy on Services: the API server admits them
    /// without calling the webhook (a CEL match condition the leader keeps), also while the webhook is
    /// down. A new or stricter policy reaches such Services once the leader has rewritten the condition.
    #[arg(long, env = "CSP_WEBHOOK_PREFILTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub prefilter: bool,
    /// This replica's identity in the audit Lease (the pod name). Omitted: `$HOSTNAME-<pid>`.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Bounds on the memory that admission requests in flight take (see [`server::Limits`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// The largest AdmissionReview body accepted, in bytes; a larger one gets 413.
    #[arg(long, env = "CSP_WEBHOOK_MAX_REQUEST_BYTES", default_value_t = server::MAX_BODY_BYTES)]
    pub max_request_bytes: usize,
    /// The memory, in bytes, that reviews in flight may take together (each is charged 16 times its body);
    /// a review that finds no room within --queue-timeout gets 429. Sized for the chart's 128Mi limit.
    #[arg(long, env = "CSP_WEBHOOK_INFLIGHT_BYTES", default_value_t = server::Limits::default().inflight_bytes)]
    pub inflight_bytes: usize,
    /// How long a review waits for room in the in-flight budget.
    #[arg(long, env = "CSP_WEBHOOK_QUEUE_TIMEOUT", default_value = "1s", value_parser = crds::duration::parse_flag)]
    pub queue_timeout: Duration,
}

impl LimitArgs {
    fn limits(&self) -> server::Limits {
        server::Limits {
            max_body_bytes: self.max_request_bytes,
            inflight_bytes: self.inflight_bytes,
            queue_timeout: self.queue_timeout,
        }
    }
}

/// Runs the webhook until `cancel`.
pub async fn run(args: Args, cancel: CancellationToken) -> Result<(), RunError> {
    let client = kube::Client::try_default().await?;
    let (tls, cert_task) = match &args.tls.cert_secret {
        Some(secret) => {
            let settings = selfcert::Settings {
                namespace: args.namespace.clone(),
                secret: secret.clone(),
                dns_names: args.tls.cert_dns_names.clone(),
                webhook_config: args.tls.webhook_config_name.clone(),
                serving_validity: args.tls.cert_validity,
                renew_before: args.tls.cert_renew_before,
            };
            let material = selfcert::ensure(&client, &settings).await?;
            if let Some(name) = &settings.webhook_config {
                selfcert::inject_ca_bundle(&client, name, &material.ca_cert).await?;
            }
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(
                server::tls_config(material.serving.cert.as_bytes(), material.serving.key.as_bytes(), args.tls.http2)
                    .map_err(|source| RunError::Tls { cert: secret.into(), key: secret.into(), source })?,
            );
            let task = tokio::spawn(selfcert_loop(
                client.clone(),
                settings,
                material,
                tls.clone(),
                args.tls.http2,
                args.tls.cert_check_interval,
                cancel.clone(),
            ));
            (tls, task)
        }
        None => {
            let tls_err = |source| RunError::Tls {
                cert: args.tls.tls_cert_file.clone(),
                key: args.tls.tls_key_file.clone(),
                source,
            };
            let cert = tokio::fs::read(&args.tls.tls_cert_file).await.map_err(tls_err)?;
            let key = tokio::fs::read(&args.tls.tls_key_file).await.map_err(tls_err)?;
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(
                server::tls_config(&cert, &key, args.tls.http2).map_err(tls_err)?,
            );
            let task = tokio::spawn(server::reload_tls(
                tls.clone(),
                args.tls.tls_cert_file.clone(),
                args.tls.tls_key_file.clone(),
                args.tls.http2,
                args.tls.tls_reload_interval,
                cancel.clone(),
            ));
            (tls, task)
        }
    };

    let metrics = Arc::new(metrics::Metrics::new());
    let policy_changed = Arc::new(Notify::new());
    let (caches, watches) = index::start(client.clone(), policy_changed.clone());
    let ready = lifecycle::admin::Readiness::new(
        "caches of ContractPolicies, ChannelContracts, Namespaces and Services not synced yet",
    );
    let mut exempt = args.exempt_namespaces.clone();
    exempt.push(args.namespace.clone());
    exempt.retain(|n| !n.is_empty());

    let watch_task = tokio::spawn(watches);
    let (leader_tx, leader_rx) = watch::channel(args.audit_lease.is_empty());
    let enforcement_leader = leader_rx.clone();
    let election_task = if args.audit_lease.is_empty() {
        tracing::info!("no audit Lease: this replica audits");
        None
    } else {
        let election = LeaderElectionArgs {
            leader_elect: true,
            leader_election_namespace: args.namespace.clone(),
            leader_election_lease: args.audit_lease.clone(),
            identity: args.identity.clone(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        Some(tokio::spawn(audit_election(client.clone(), election, leader_tx, metrics.clone(), cancel.clone())))
    };
    // One waiter on the caches: it marks the server ready, then runs the audit.
    let audit_task = {
        let (client, caches, ready, metrics, exempt, cancel) =
            (client.clone(), caches.clone(), ready.clone(), metrics.clone(), exempt.clone(), cancel.clone());
        let (interval, openreports) = (args.audit_interval, args.openreports);
        tokio::spawn(async move {
            tokio::select! {
                synced = caches.wait_until_ready() => if synced.is_err() { return },
                _ = cancel.cancelled() => return,
            }
            ready.set_ready();
            tracing::info!(?caches, "caches synced: ready");
            audit::run_loop(client, caches, metrics, exempt, interval, policy_changed, leader_rx, openreports, cancel)
                .await;
        })
    };
    let enforcement_task = {
        let settings = crate::enforcement::Settings {
            vap: crate::vap::Settings { namespace: args.namespace.clone(), exempt_namespaces: exempt.clone() },
            webhook_config: args.tls.webhook_config_name.clone(),
            prefilter: args.prefilter,
        };
        let (client, caches, leader, cancel) = (client.clone(), caches.clone(), enforcement_leader, cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                synced = caches.wait_until_ready() => if synced.is_err() { return },
                _ = cancel.cancelled() => return,
            }
            crate::enforcement::run_loop(client, caches, settings, leader, cancel).await;
        })
    };
    let state = server::AppState {
        caches,
        metrics,
        settings: Arc::new(admission::Settings { exempt_namespaces: exempt }),
        ready,
        client: Some(client),
        budget: server::Budget::new(args.limits.limits()),
    };
    tracing::info!(listen = %args.listen, "serving admission reviews on /validate");
    let served = server::serve(args.listen, server::router(state), tls, args.drain_timeout, cancel.clone()).await;
    cancel.cancel();
    watch_task.abort();
    // Background tasks stop at the cancellation; an API call in flight gets a few seconds, no more.
    let tasks = [Some(audit_task), Some(enforcement_task), Some(cert_task), election_task];
    for task in tasks.into_iter().flatten() {
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("a background task did not stop within 5s; exiting anyway");
        }
    }
    served.map_err(|source| RunError::Serve { addr: args.listen, source })
}

/// Takes part in the audit's leader election until cancelled. Unlike the operator, a webhook replica that
/// loses the Lease keeps serving admissions: it stops auditing and rejoins the election.
async fn audit_election(
    client: kube::Client,
    election: LeaderElectionArgs,
    leader: watch::Sender<bool>,
    metrics: Arc<metrics::Metrics>,
    cancel: CancellationToken,
) {
    let gauge = {
        let (mut rx, metrics) = (leader.subscribe(), metrics.clone());
        tokio::spawn(async move {
            loop {
                metrics.audit_leader.set(i64::from(*rx.borrow_and_update()));
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    loop {
        match leader::run(client.clone(), election.clone(), leader.clone(), cancel.clone()).await {
            Ok(()) => break,
            Err(e) => {
                leader.send_replace(false);
                tracing::warn!(error = %e, "the audit Lease was lost: auditing stops on this replica until it is won again");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(election.retry_period) => {}
        }
    }
    gauge.abort();
}

/// Keeps the self-managed certificate fresh and the caBundle injected, until cancelled.
async fn selfcert_loop(
    client: kube::Client,
    settings: selfcert::Settings,
    mut current: selfcert::Material,
    tls: axum_server::tls_rustls::RustlsConfig,
    http2: bool,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {},
        }
        match selfcert::ensure(&client, &settings).await {
            Ok(material) => {
                if material.serving != current.serving {
                    match server::tls_config(material.serving.cert.as_bytes(), material.serving.key.as_bytes(), http2) {
                        Ok(new) => {
                            tls.reload_from_config(new);
                            tracing::info!(secret = %settings.secret, "serving certificate reloaded")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the renewed certificate does not load; keeping the previous one")
                        }
                    }
                }
                if let Some(name) = &settings.webhook_config
                    && let Err(e) = selfcert::inject_ca_bundle(&client, name, &material.ca_cert).await
                {
                    tracing::warn!(error = %e, "caBundle injection failed; retrying at the next check");
                }
                current = material;
            }
            Err(e) => {
                tracing::warn!(error = %e, "checking the self-managed certificate failed; retrying at the next check")
            }
        }
    }
}
