//! A simulated proxy: a gRPC client of the operator's ADS server that speaks the incremental (delta)
//! protocol as Envoy does, without being an Envoy.
//!
//! - Its first request carries the `node` (id, fleet `csp-gateway`, `locality.region`, and the metadata
//!   `csp.contracts.dev/namespaces`, empty: all namespaces); it subscribes to Clusters, Listeners and
//!   ScopedRouteConfigurations with wildcard requests (no names), as Envoy does;
//! - it acknowledges every response at once with its nonce (it never rejects one);
//! - from every scope received it reads the route configuration the scope names, and subscribes to the
//!   RouteConfigurations it does not have yet by name, as Envoy's scoped RDS does.
//!
//! It keeps what the measurements need and no more (a thousand of them run in one process): how many
//! resources of each type it received, the set of route names it subscribed to (as hashes), and the
//! versions of the resources of the *watched* contracts (those a benchmark edits). Responses are decoded
//! with lean message types that skip the resources' bodies (only scopes are read), so that the client's
//! own work stays small next to the server's.
//!
//! It reports ([`Report`]) when it has every resource of the initial configuration, and, for a watched
//! contract, each time all of that contract's resources it holds (clusters, scopes, route configuration)
//! have been acknowledged at one version: the moment it runs that version.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use operator::envoy::pb::envoy::config::core::v3::{Locality, Node};
use operator::envoy::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use operator::envoy::pb::google::protobuf::{Struct, Value, value};
use operator::publish::xds::framing;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The ADS method for delta xDS.
const DELTA_ADS: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The type URLs, in the order of [`Kind`].
pub const TYPE_URLS: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];

/// The resource types, as indexes into [`TYPE_URLS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// CDS.
    Cluster = 0,
    /// LDS.
    Listener = 1,
    /// SRDS.
    Scope = 2,
    /// RDS.
    Route = 3,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Cluster, Kind::Listener, Kind::Scope, Kind::Route];

    fn of(type_url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| TYPE_URLS[*k as usize] == type_url)
    }
}

/// How many resources of each type make the whole initial configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Expected {
    /// Clusters.
    pub clusters: usize,
    /// Listeners.
    pub listeners: usize,
    /// Scoped route configurations.
    pub scopes: usize,
    /// Route configurations.
    pub routes: usize,
}

impl Expected {
    fn of(&self, kind: Kind) -> usize {
        match kind {
            Kind::Cluster => self.clusters,
            Kind::Listener => self.listeners,
            Kind::Scope => self.scopes,
            Kind::Route => self.routes,
        }
    }
}

/// What one simulated proxy is.
#[derive(Debug, Clone)]
pub struct Config {
    /// Its index (reports name it).
    pub index: usize,
    /// `node.id`.
    pub node_id: String,
    /// `node.locality.region`.
    pub region: String,
    /// The server, `https://host:port` or `http://host:port`.
    pub server: String,
    /// TLS to the server (None: plaintext).
    pub tls: Option<ClientTlsConfig>,
    /// The contracts whose versions it reports, by resource name base `csp~<ns>~<name>`.
    pub watched: Arc<HashSet<String>>,
    /// The initial configuration's size.
    pub expected: Expected,
}

/// What a simulated proxy reports.
#[derive(Debug, Clone)]
pub enum Report {
    /// It connected after retrying (its first attempts failed).
    Retried {
        /// The proxy.
        index: usize,
        /// Failed attempts before the one that connected.
        retries: u32,
    },
    /// Its stream is open (the first requests are handed to it).
    Connected {
        /// The proxy.
        index: usize,
        /// When.
        at: Instant,
    },
    /// It received and acknowledged every resource of the initial configuration.
    Initial {
        /// The proxy.
        index: usize,
        /// When the last of them was acknowledged.
        at: Instant,
        /// Bytes of responses received until then.
        bytes: usize,
    },
    /// It runs this version of a watched contract: all the contract's resources it holds have been
    /// received and acknowledged at this version.
    Runs {
        /// The proxy.
        index: usize,
        /// `csp~<ns>~<name>`.
        contract: String,
        /// The version (`configVersion`).
        version: String,
        /// When the last of the responses that completed it arrived.
        received: Instant,
        /// When its acknowledgement was handed to the stream.
        acked: Instant,
    },
    /// The stream ended or failed.
    Ended {
        /// The proxy.
        index: usize,
        /// Why.
        reason: String,
    },
}

// --- lean messages ---------------------------------------------------------------------------------
// The fields of envoy.service.discovery.v3.DeltaDiscoveryResponse, Resource, google.protobuf.Any and
// envoy.config.route.v3.ScopedRouteConfiguration that a proxy needs here; prost skips the others. Strings
// are read as bytes (the same wire type) so that nothing is copied.

#[derive(Clone, PartialEq, prost::Message)]
struct LeanResponse {
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LeanResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(bytes = "bytes", repeated, tag = "6")]
    removed_resources: Vec<Bytes>,
    #[prost(string, tag = "5")]
    nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeanResource {
    #[prost(bytes = "bytes", tag = "3")]
    name: Bytes,
    #[prost(bytes = "bytes", tag = "1")]
    version: Bytes,
    #[prost(message, optional, tag = "2")]
    resource: Option<LeanAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeanAny {
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LeanScope {
    #[prost(bytes = "bytes", tag = "2")]
    route_configuration_name: Bytes,
}

// --- the proxy ------------------------------------------------------------------------------------

/// Envoy's HTTP/2 windows for its gRPC streams (its defaults, 256 MiB).
const WINDOW: u32 = 256 << 20;

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// `csp~<ns>~<name>` of a resource name `csp~<ns>~<name>[~…]`.
fn base(name: &[u8]) -> Option<&[u8]> {
    let mut tildes = name.iter().enumerate().filter(|(_, b)| **b == b'~').map(|(i, _)| i);
    let third = tildes.nth(2);
    if !name.starts_with(b"csp~") {
        return None;
    }
    Some(match third {
        Some(i) => &name[..i],
        None => name,
    })
}

/// What the proxy holds.
#[derive(Debug, Default)]
struct Held {
    /// Resources received per type (the initial configuration is complete when they reach [`Expected`]).
    received: [usize; 4],
    /// Hashes of the route configuration names subscribed to.
    routes: HashSet<u64>,
    /// Watched contracts' resources: (kind, name) -> version, by contract.
    watched: HashMap<String, HashMap<(Kind, Bytes), Bytes>>,
    /// The version of each watched contract last reported.
    reported: HashMap<String, Bytes>,
    initial_done: bool,
    bytes: usize,
}

fn node(config: &Config) -> Node {
    let string = |s: &str| Value { kind: Some(value::Kind::StringValue(s.to_owned())) };
    Node {
        id: config.node_id.clone(),
        cluster: "csp-gateway".to_owned(),
        locality: Some(Locality { region: config.region.clone(), ..Locality::default() }),
        metadata: Some(Struct {
            fields: [("csp.contracts.dev/namespaces".to_owned(), string(""))].into_iter().collect(),
        }),
        user_agent_name: "csp-bench-simulated-proxy".to_owned(),
        ..Node::default()
    }
}

/// How many times a proxy tries to connect before it gives up.
const CONNECT_ATTEMPTS: u32 = 8;

/// Opens the connection (its own TCP connection, as every proxy has), with Envoy's windows. As Envoy
/// does, a proxy whose connection fails (a TLS handshake the server timed out while a thousand others
/// were under way) tries again after a back-off (0.5 s doubling, at most 8 s, jittered), up to
/// [`CONNECT_ATTEMPTS`] times; the number of retries is returned with the channel.
pub async fn connect(config: &Config) -> Result<(Channel, u32), tonic::transport::Error> {
    let mut attempt = 0;
    loop {
        match connect_once(config).await {
            Ok(channel) => return Ok((channel, attempt)),
            Err(e) if attempt + 1 >= CONNECT_ATTEMPTS => return Err(e),
            Err(_) => {
                let base = Duration::from_millis(500) * 2u32.pow(attempt.min(4));
                let seed = format!("{}/{attempt}", config.index);
                let jitter = Duration::from_millis(hash(seed.as_bytes()) % 500);
                tokio::time::sleep(base.min(Duration::from_secs(8)) + jitter).await;
                attempt += 1;
            }
        }
    }
}

async fn connect_once(config: &Config) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(config.server.clone())?
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .connect_timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    if let Some(tls) = &config.tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    endpoint.connect().await
}

/// Runs one simulated proxy until its stream ends or `reports` is closed.
pub async fn run(config: Config, channel: Channel, reports: mpsc::UnboundedSender<Report>) {
    let reason = match stream(&config, channel, &reports).await {
        Ok(()) => "the server ended the stream".to_owned(),
        Err(status) => format!("{}: {}", status.code(), status.message()),
    };
    let _ = reports.send(Report::Ended { index: config.index, reason });
}

// Its errors are tonic::Status, the error of a gRPC stream (what a proxy reports as its end).
#[allow(clippy::result_large_err)]
async fn stream(config: &Config, channel: Channel, reports: &mpsc::UnboundedSender<Report>) -> Result<(), Status> {
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let wildcard = |kind: Kind, node: Option<Node>| DeltaDiscoveryRequest {
        node,
        type_url: TYPE_URLS[kind as usize].to_owned(),
        ..DeltaDiscoveryRequest::default()
    };
    let send = |request: DeltaDiscoveryRequest| tx.send(request).map_err(|_| Status::cancelled("the stream is gone"));
    send(wildcard(Kind::Cluster, Some(node(config))))?;
    send(wildcard(Kind::Listener, None))?;
    send(wildcard(Kind::Scope, None))?;

    // The stream over the channel itself, framed as the operator frames it: each response is gathered in
    // a buffer of its own size and freed once read. (tonic's generated client decodes into one buffer per
    // stream that keeps the size of the largest response, ~13 MiB here: a thousand proxies in one process
    // held ~16 GiB, and the machine stalled.)
    let mut channel = channel;
    futures::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::unavailable(format!("the connection is not ready: {e}")))?;
    let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|request| framing::frame(&request).map(Frame::data));
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(DELTA_ADS)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(outbound)))
        .map_err(|e| Status::internal(format!("a request: {e}")))?;
    let response = channel.call(request).await.map_err(|e| Status::unavailable(format!("the call failed: {e}")))?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unavailable(format!("HTTP status {}", response.status())));
    }
    if let Some(status) = Status::from_header_map(response.headers()).filter(|s| s.code() != tonic::Code::Ok) {
        return Err(status);
    }
    let _ = reports.send(Report::Connected { index: config.index, at: Instant::now() });
    let mut inbound = framing::Inbound::raw(response.into_body(), 1 << 30);
    let mut held = Held::default();
    while let Some(message) = inbound.next().await {
        let bytes = message?;
        let received = Instant::now();
        held.bytes += bytes.len();
        let response = LeanResponse::decode(bytes).map_err(|e| Status::internal(format!("decode a response: {e}")))?;
        let Some(kind) = Kind::of(&response.type_url) else {
            send(DeltaDiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                ..DeltaDiscoveryRequest::default()
            })?;
            continue;
        };
        held.received[kind as usize] += response.resources.len();
        let mut touched: HashSet<String> = HashSet::new();
        let mut new_routes = Vec::new();
        for resource in &response.resources {
            if let Some(contract) = base(&resource.name).and_then(|b| std::str::from_utf8(b).ok())
                && config.watched.contains(contract)
            {
                // Copies: the received fields are slices of the whole response (~13 MiB for the first
                // clusters), which a slice kept here would keep alive for as long as the proxy runs.
                held.watched
                    .entry(contract.to_owned())
                    .or_default()
                    .insert((kind, Bytes::copy_from_slice(&resource.name)), Bytes::copy_from_slice(&resource.version));
                touched.insert(contract.to_owned());
            }
            if kind == Kind::Scope
                && let Some(any) = &resource.resource
            {
                let scope = LeanScope::decode(any.value.clone())
                    .map_err(|e| Status::internal(format!("decode a scope: {e}")))?;
                let route = scope.route_configuration_name;
                if !route.is_empty() && held.routes.insert(hash(&route)) {
                    new_routes.push(String::from_utf8_lossy(&route).into_owned());
                }
            }
        }
        for name in &response.removed_resources {
            if let Some(contract) = base(name).and_then(|b| std::str::from_utf8(b).ok())
                && let Some(resources) = held.watched.get_mut(contract)
            {
                resources.remove(&(kind, name.clone()));
                touched.insert(contract.to_owned());
            }
        }
        // Envoy asks for the route configurations of new scopes, then acknowledges the scopes.
        if !new_routes.is_empty() {
            send(DeltaDiscoveryRequest {
                type_url: TYPE_URLS[Kind::Route as usize].to_owned(),
                resource_names_subscribe: new_routes,
                ..DeltaDiscoveryRequest::default()
            })?;
        }
        send(DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..DeltaDiscoveryRequest::default()
        })?;
        let acked = Instant::now();
        if !held.initial_done && Kind::ALL.iter().all(|k| held.received[*k as usize] >= config.expected.of(*k)) {
            held.initial_done = true;
            let _ = reports.send(Report::Initial { index: config.index, at: acked, bytes: held.bytes });
        }
        for contract in touched {
            let Some(resources) = held.watched.get(&contract) else { continue };
            let kinds: HashSet<Kind> = resources.keys().map(|(k, _)| *k).collect();
            let versions: HashSet<&Bytes> = resources.values().collect();
            if kinds.len() < 3 || versions.len() != 1 {
                continue;
            }
            let Some(version) = versions.into_iter().next().cloned() else { continue };
            if held.reported.get(&contract) != Some(&version) {
                held.reported.insert(contract.clone(), version.clone());
                let _ = reports.send(Report::Runs {
                    index: config.index,
                    contract,
                    version: String::from_utf8_lossy(&version).into_owned(),
                    received,
                    acked,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_names_its_contract() {
        assert_eq!(base(b"csp~ns~a~primary"), Some(&b"csp~ns~a"[..]));
        assert_eq!(base(b"csp~ns~a"), Some(&b"csp~ns~a"[..]));
        assert_eq!(base(b"csp~ns~a~a.ns:8080"), Some(&b"csp~ns~a"[..]));
        assert_eq!(base(b"csp~port~8080"), Some(&b"csp~port~8080"[..]));
        assert_eq!(base(b"other"), None);
    }

    #[test]
    fn lean_messages_read_what_the_full_ones_write() {
        use operator::envoy::pb::envoy::config::route::v3::ScopedRouteConfiguration;
        use operator::envoy::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
        use operator::envoy::pb::google::protobuf::Any;
        let scope = ScopedRouteConfiguration {
            name: "csp~ns~a~a.ns:8080".into(),
            route_configuration_name: "csp~ns~a".into(),
            ..Default::default()
        };
        let full = DeltaDiscoveryResponse {
            system_version_info: "g1".into(),
            resources: vec![Resource {
                name: scope.name.clone(),
                version: "v1".into(),
                resource: Some(Any { type_url: TYPE_URLS[2].into(), value: scope.encode_to_vec() }),
                ..Default::default()
            }],
            type_url: TYPE_URLS[2].into(),
            removed_resources: vec!["csp~ns~b~b.ns:8080".into()],
            nonce: "1-1".into(),
            ..Default::default()
        };
        let lean = LeanResponse::decode(Bytes::from(full.encode_to_vec())).expect("decodes");
        assert_eq!((lean.type_url.as_str(), lean.nonce.as_str()), (TYPE_URLS[2], "1-1"));
        assert_eq!(lean.removed_resources, vec![Bytes::from_static(b"csp~ns~b~b.ns:8080")]);
        let resource = &lean.resources[0];
        assert_eq!((&resource.name[..], &resource.version[..]), (&b"csp~ns~a~a.ns:8080"[..], &b"v1"[..]));
        let body = resource.resource.as_ref().expect("a body").value.clone();
        assert_eq!(&LeanScope::decode(body).expect("a scope").route_configuration_name[..], b"csp~ns~a");
    }
}
