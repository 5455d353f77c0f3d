//! The gRPC service: `envoy.service.discovery.v3.AggregatedDiscoveryService`, both methods (state of the
//! world and delta), over TLS (optionally requiring client certificates).
//!
//! A stream's first request must carry the `node`: `id` (the proxy's pod name), `cluster` (its fleet),
//! `locality.region`, and in `metadata` the keys of [`metadata`]. When the region is empty, the region of
//! the proxy's Pod's Node is asked of the [`RegionOf`] the operator gives (from its Node cache).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::body::Body as BoxBody;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tonic::transport::Server;

use super::fleet::ProxyIdentity;
use super::framing;
use super::session::{Request, Response, Session};
use super::tls;
use super::{Xds, view_of};
use crate::envoy::pb::envoy::config::core::v3::Node;
use crate::envoy::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use crate::envoy::pb::google::protobuf::value::Kind as ValueKind;

/// The node metadata keys the server reads.
pub mod metadata {
    /// The namespaces whose contracts the proxy serves, comma-separated; empty or absent: all.
    pub const NAMESPACES: &str = "csp.contracts.dev/namespaces";
    /// The address the proxy's gateway listeners bind (default `0.0.0.0`).
    pub const LISTEN_ADDRESS: &str = "csp.contracts.dev/listen-address";
    /// The namespace of the proxy's Pod (to find its Node's region); default: the operator's.
    pub const POD_NAMESPACE: &str = "csp.contracts.dev/pod-namespace";
    /// What the proxy's bootstrap enables, comma-separated (`drills`: internal listeners).
    pub const FEATURES: &str = crate::envoy::bootstrap::FEATURES_KEY;
}

/// The region of a Pod's Node: `(namespace, pod) -> region`.
pub type RegionOf = Arc<dyn Fn(String, String) -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address.
    pub listen: SocketAddr,
    /// TLS; None: plaintext.
    pub tls: Option<TlsFiles>,
    /// The namespace a proxy's Pod is looked for in when its node does not say.
    pub pod_namespace: String,
    /// How long a proxy may leave an HTTP/2 PING unanswered before it is disconnected.
    pub keepalive_timeout: Duration,
}

/// The PEM files of the server's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The serving certificate (chain).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// When given, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// Why the server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS cannot be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The address cannot be bound.
    #[error("cannot listen for xDS on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed.
    #[error("the xDS server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The ADS service.
#[derive(Clone)]
pub struct Ads {
    xds: Arc<Xds>,
    region_of: Option<RegionOf>,
    pod_namespace: String,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Ads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ads").field("pod_namespace", &self.pod_namespace).finish()
    }
}

/// Binds `config.listen` and serves ADS until `cancel`.
pub async fn serve(
    xds: Arc<Xds>,
    config: ServerConfig,
    region_of: Option<RegionOf>,
    cancel: CancellationToken,
) -> Result<(), ServeError> {
    let acceptor = config.tls.as_ref().map(|files| tls::acceptor(files, cancel.clone())).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    tracing::info!(listen = %config.listen, tls = config.tls.is_some(), "xDS server listening");
    let access_logs = super::als::AccessLogs { slo: xds.slo(), xds: xds.clone() };
    let ads = Ads { xds, region_of, pod_namespace: config.pod_namespace, cancel: cancel.clone() };
    let mut server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(config.keepalive_timeout));
    let router = server.add_service(AdsService { ads }).add_service(
        crate::envoy::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer::new(
            access_logs,
        ),
    );
    match acceptor {
        Some(acceptor) => {
            let incoming = tls::incoming(listener, acceptor, cancel.clone());
            router.serve_with_incoming_shutdown(ReceiverStream::new(incoming), cancel.cancelled_owned()).await?
        }
        None => router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), cancel.cancelled_owned()).await?,
    }
    Ok(())
}

/// How long a new proxy keeps its turn to take the whole configuration ([`Xds::initial_push`]) at most.
const INITIAL_PUSH_HOLD: Duration = Duration::from_secs(30);

/// The largest request accepted (a proxy subscribing to many route configurations at once).
const MAX_REQUEST: usize = 16 << 20;

/// The service's two methods.
const STREAM_AGGREGATED: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_AGGREGATED: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// `envoy.service.discovery.v3.AggregatedDiscoveryService` over [`framing`], which keeps no buffer per
/// stream (the generated service kept one the size of a stream's largest response).
#[derive(Clone, Debug)]
pub struct AdsService {
    ads: Ads,
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl Service<http::Request<BoxBody>> for AdsService {
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    // The framing's errors are tonic::Status, the error of tonic's bodies.
    #[allow(clippy::result_large_err)]
    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        let (delta, body) = match request.uri().path() {
            DELTA_AGGREGATED => (true, request.into_body()),
            STREAM_AGGREGATED => (false, request.into_body()),
            other => {
                let status = Status::unimplemented(format!("{other} is not a method of this server"));
                return future::ready(Ok(status.into_http()));
            }
        };
        let rx = if delta {
            let inbound = framing::Inbound::<DeltaDiscoveryRequest>::new(body, MAX_REQUEST)
                .map(|r| r.map(|r| (r.node.clone(), Request::from(r))).map_err(|s| s.to_string()));
            self.ads.start(inbound, true)
        } else {
            let inbound = framing::Inbound::<DiscoveryRequest>::new(body, MAX_REQUEST)
                .map(|r| r.map(|r| (r.node.clone(), Request::from(r))).map_err(|s| s.to_string()));
            self.ads.start(inbound, false)
        };
        let outbound = framing::Outbound::new(rx, |response| match response {
            Response::Delta(r) => framing::frame(r),
            Response::Sotw(r) => framing::frame(r),
        });
        let mut response = http::Response::new(tonic::body::Body::new(outbound));
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        future::ready(Ok(response))
    }
}

impl Ads {
    fn start(
        &self,
        inbound: impl Stream<Item = Result<(Option<Node>, Request), String>> + Send + Unpin + 'static,
        delta: bool,
    ) -> mpsc::Receiver<Result<Response, Status>> {
        let (tx, rx) = mpsc::channel(8);
        let ads = self.clone();
        tokio::spawn(async move { ads.run(inbound, tx, delta).await });
        rx
    }

    async fn run(
        self,
        mut inbound: impl Stream<Item = Result<(Option<Node>, Request), String>> + Send + Unpin,
        tx: mpsc::Sender<Result<Response, Status>>,
        delta: bool,
    ) {
        let Some(Ok((node, first))) = inbound.next().await else { return };
        let Some(node) = node.filter(|n| !n.id.is_empty()) else {
            let _ = tx.send(Err(Status::invalid_argument("the first request of a stream must carry node.id"))).await;
            return;
        };
        let (identity, listen) = self.identity(&node).await;
        let stream = self.xds.next_stream();
        let view = view_of(&identity, listen);
        tracing::info!(stream, proxy = %identity.id, fleet = %identity.fleet, region = ?identity.region, namespaces = ?identity.namespaces, delta, "proxy connected");
        let proxy = identity.id.clone();
        self.xds.connect(stream, identity);
        let mut session = Session::new(stream, delta);
        let mut generations = self.xds.generations();
        let mut next = Some(first);
        // A restarted operator answers nothing until it has every contract: the proxy keeps what it has.
        // Then a turn to take the whole configuration, kept until the proxy has answered it (or for at
        // most INITIAL_PUSH_HOLD, so that a proxy that never answers keeps no one waiting).
        let waited = tokio::select! {
            permit = async {
                self.xds.warm().await;
                self.xds.initial_push().await
            } => Some(permit),
            () = self.cancel.cancelled() => None,
            () = tx.closed() => None,
        };
        let Some(turn) = waited else {
            self.xds.disconnect(stream);
            tracing::info!(stream, %proxy, "proxy disconnected before its turn");
            return;
        };
        let mut initial = turn.map(|permit| (permit, tokio::time::Instant::now() + INITIAL_PUSH_HOLD));
        loop {
            if let Some(request) = next.take() {
                let events = session.request(request);
                self.xds.apply(stream, events, &now());
            }
            let snapshot = self.xds.snapshot(&view);
            for response in session.respond(&snapshot) {
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            if !session.awaiting() {
                initial = None;
            }
            let hold = initial.as_ref().map(|(_, until)| *until);
            tokio::select! {
                () = until(hold) => initial = None,
                received = inbound.next() => match received {
                    Some(Ok((_, request))) => next = Some(request),
                    Some(Err(status)) => {
                        tracing::info!(stream, %proxy, %status, "proxy stream failed");
                        break;
                    }
                    None => break,
                },
                changed = generations.changed() => if changed.is_err() { break },
                () = self.cancel.cancelled() => break,
                () = tx.closed() => break,
            }
        }
        self.xds.disconnect(stream);
        tracing::info!(stream, %proxy, "proxy disconnected");
    }

    /// Who the node is, and where its listeners bind.
    async fn identity(&self, node: &Node) -> (ProxyIdentity, IpAddr) {
        let field = |key: &str| {
            node.metadata.as_ref().and_then(|m| m.fields.get(key)).and_then(|v| match &v.kind {
                Some(ValueKind::StringValue(s)) => Some(s.trim().to_owned()),
                _ => None,
            })
        };
        let namespaces: Option<BTreeSet<String>> = field(metadata::NAMESPACES)
            .map(|s| s.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect::<BTreeSet<_>>())
            .filter(|n| !n.is_empty());
        let listen = match field(metadata::LISTEN_ADDRESS).filter(|s| !s.is_empty()) {
            Some(text) => text.parse().unwrap_or_else(|_| {
                tracing::warn!(proxy = %node.id, address = %text, "the node's listen address is not an IP address: 0.0.0.0 instead");
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }),
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let mut region = node.locality.as_ref().map(|l| l.region.clone()).filter(|r| !r.is_empty());
        if region.is_none()
            && let Some(region_of) = &self.region_of
        {
            let namespace =
                field(metadata::POD_NAMESPACE).filter(|s| !s.is_empty()).unwrap_or(self.pod_namespace.clone());
            region = region_of(namespace, node.id.clone()).await;
            if region.is_none() {
                tracing::info!(proxy = %node.id, "the proxy's region is unknown (no node.locality.region, no region on its Pod's Node): the declared order applies");
            }
        }
        let features = field(metadata::FEATURES).unwrap_or_default();
        let has = |feature: &str| features.split(',').any(|x| x.trim() == feature);
        let drills = has(crate::envoy::bootstrap::FEATURE_DRILLS);
        let tracing = has(crate::envoy::bootstrap::FEATURE_TRACING).then(|| {
            let percent = field(crate::envoy::bootstrap::TRACE_SAMPLING_KEY).and_then(|s| s.parse::<f64>().ok());
            let percent = percent.filter(|p| (0.0..=100.0).contains(p)).unwrap_or(1.0);
            // Hundredths of a percent: whole, so that views compare and hash.
            (percent * 100.0).round() as u32
        });
        let identity =
            ProxyIdentity { id: node.id.clone(), fleet: node.cluster.clone(), region, namespaces, drills, tracing };
        (identity, listen)
    }
}

/// Sleeps until `deadline`; never ends without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => future::pending().await,
    }
}

/// Now, RFC 3339 to the second.
fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now).to_string()
}
