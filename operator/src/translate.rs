//! `desired`: a ChannelContract and the endpoints of its channels become the Envoy resources that carry it
//! out. A pure function: no client, no clock, no I/O; the same input gives byte-identical output.
//!
//! What each contract field becomes is the table "What it becomes in Envoy" of the API; the choices that
//! the table leaves open (how failover is made to really happen) are explained where they are made, in
//! [`channel_cluster`], [`load_assignment`] and [`aggregate_cluster`].
//!
//! Resources, for a contract `<name>` in namespace `<ns>`:
//! - one cluster per channel, `csp~<ns>~<name>~<channel>`, in the order of `spec.channels`;
//! - the aggregate cluster `csp~<ns>~<name>` listing them in that order;
//! - the route configuration `csp~<ns>~<name>`: one virtual host, a route per channel selector
//!   (`x-channel-priority: <selector>` straight to that channel), then the default route to the aggregate;
//! - the listener `csp~<ns>~<name>`: an HTTP connection manager that takes its routes over RDS from
//!   `<config dir>/rds.yaml`, and the router filter.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crds::{ChannelContract, ChannelContractSpec, ChannelStatus, CircuitBreaker, Protocol, RetryPolicy, RetryStrategy};
use prost::Name;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envoy::json::{self, JsonError};
use crate::envoy::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers, cluster,
};
use crate::envoy::pb::envoy::config::core::v3::{
    self as core, ApiVersion, ConfigSource, HeaderValue, HeaderValueOption, Locality, PathConfigSource,
    RoutingPriority, SocketAddress, WatchedDirectory, config_source, header_value_option, socket_address,
};
use crate::envoy::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, cluster_load_assignment, lb_endpoint,
};
use crate::envoy::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use crate::envoy::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, Tracing, VirtualHost, header_matcher,
    retry_policy, route, route_action, route_match,
};
use crate::envoy::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig;
use crate::envoy::pb::envoy::extensions::filters::http::router::v3::Router;
use crate::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use crate::envoy::pb::envoy::service::discovery::v3::DiscoveryResponse;
use crate::envoy::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use crate::envoy::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use crate::envoy::pb::envoy::r#type::v3::Percent;
use crate::envoy::pb::google::protobuf::{self as protobuf, UInt32Value};
use crate::envoy::{any, upstream_http};

/// Where the ConfigMap with the files is mounted in the proxy by default; `lds.yaml` names
/// `<dir>/rds.yaml` as its route source.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/envoy/csp";
/// The request header that sends a request straight to the channel with that selector.
pub const CHANNEL_HEADER: &str = "x-channel-priority";
/// The response header that names the contract that served a request (`<namespace>/<name>`).
pub const CONTRACT_HEADER: &str = "x-csp-contract";
/// The tracing tag with the contract (`<namespace>/<name>`).
pub const CONTRACT_TAG: &str = "csp.contract";
/// The tracing tag with the channel (the default route's value is the chain, e.g. `primary>cache`).
pub const CHANNEL_TAG: &str = "csp.channel";
/// The channel of a contract that declares none.
pub const DEFAULT_CHANNEL: &str = "primary";

/// Envoy's overprovisioning factor, written out on every load assignment. 140 (1.4, Envoy's default) is
/// kept deliberately: a region keeps all of the primary's traffic while at least 1/1.4 ≈ 72% of its
/// endpoints are healthy, and spills proportionally to the next region below that; once every endpoint of
/// a region is ejected, all of its traffic goes to the next. A factor of 100 would move traffic away at
/// the first ejection (a partial failure of one region would already load the next region), and a huge
/// factor would pile a whole region's traffic on its last endpoint.
pub const OVERPROVISIONING_FACTOR: u32 = 140;

/// The ready endpoints behind each channel of a contract: the input of [`desired`] besides the contract.
///
/// The same shape is the endpoints file of `operator render --endpoints` (YAML or JSON):
///
/// ```yaml
/// channels:
///   primary:
///   - {address: 127.0.0.2, port: 8080, region: gz}
///   - {address: 127.0.0.3, port: 8080, region: sz, ready: false}
///   cache:
///   - {address: verify-cache.example, port: 8080}   # a hostname: the cluster resolves it (STRICT_DNS)
/// ```
///
/// `ready` defaults to true and `region` to none. A channel that is missing, or has no ready endpoint,
/// gets a cluster with no endpoints: Envoy accepts it and the aggregate cluster skips it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelEndpoints {
    /// Endpoints by channel name (`spec.channels[].name`, or `primary` for a contract without channels).
    #[serde(default)]
    pub channels: BTreeMap<String, Vec<Endpoint>>,
}

/// One endpoint of a channel's Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// An IPv4 or IPv6 address, or a DNS name.
    pub address: String,
    /// The port the endpoint serves on (the EndpointSlice port, not necessarily the Service port).
    pub port: u16,
    /// Whether the endpoint is ready; only ready endpoints are published.
    #[serde(default = "ready_default")]
    pub ready: bool,
    /// Its `topology.kubernetes.io/region`, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

fn ready_default() -> bool {
    true
}

/// How the proxy that runs the configuration is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyOptions {
    /// The address the listener binds. None: `0.0.0.0:<spec.port>`.
    pub listener: Option<SocketAddr>,
    /// The directory the files are mounted at in the proxy (the listener reads `<dir>/rds.yaml`).
    pub config_dir: String,
    /// The proxy's own region: it goes first in the primary's failover order (over xDS, per proxy). None
    /// for the ConfigMap, which serves every proxy alike.
    pub local_region: Option<String>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self { listener: None, config_dir: DEFAULT_CONFIG_DIR.to_owned(), local_region: None }
    }
}

/// The Envoy resources that carry out one contract.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvoyResources {
    /// The channel clusters in channel order, then the aggregate cluster.
    pub clusters: Vec<Cluster>,
    /// The routes.
    pub route_configuration: RouteConfiguration,
    /// The listener (routes over RDS from `<config dir>/rds.yaml`).
    pub listener: Listener,
    /// What each channel resolved to, in channel order (for `status.channels`).
    pub channels: Vec<ChannelStatus>,
    /// The filesystem-xDS files for the ConfigMap: `cds.yaml`, `rds.yaml`, `lds.yaml`.
    pub files: BTreeMap<String, String>,
    /// `sha256:<hex>` of the canonical proto3 JSON of all resources.
    pub config_version: String,
}

/// Why a contract could not be translated.
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The contract has no `metadata.name` or `metadata.namespace`.
    #[error("the ChannelContract has no metadata.{0}; give it one")]
    MissingMetadata(&'static str),
    /// The spec breaks a rule of the API.
    #[error("ChannelContract {contract} is invalid: {source}")]
    InvalidSpec {
        /// `<namespace>/<name>`.
        contract: String,
        /// Every broken rule.
        #[source]
        source: crds::validate::InvalidSpec,
    },
    /// Endpoints were given for a channel that the contract does not have.
    #[error("endpoints are given for channel {channel:?}, but the contract's channels are [{declared}]")]
    UnknownChannel {
        /// The unknown channel.
        channel: String,
        /// The contract's channels, comma-separated.
        declared: String,
    },
    /// An endpoint cannot be used.
    #[error("channel {channel:?}: endpoint {address:?} port {port}: {reason}")]
    InvalidEndpoint {
        /// The channel.
        channel: String,
        /// The endpoint's address.
        address: String,
        /// The endpoint's port.
        port: u16,
        /// What is wrong.
        reason: String,
    },
    /// A duration does not fit in a protobuf Duration.
    #[error("{field}: {value:?} is too long a duration")]
    Duration {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
    },
    /// The resources could not be written out (a bug of this crate, not of the input).
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The resources could not be written as YAML (a bug of this crate, not of the input).
    #[error("cannot write {file}: {reason}")]
    Yaml {
        /// The file.
        file: &'static str,
        /// What failed.
        reason: String,
    },
}

impl TranslateError {
    /// A CamelCase reason for a status condition or a metric label (bounded; never the message).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingMetadata(_) | Self::InvalidSpec { .. } | Self::Duration { .. } => "InvalidSpec",
            Self::UnknownChannel { .. } => "UnknownChannel",
            Self::InvalidEndpoint { .. } => "InvalidEndpoint",
            Self::Json(_) | Self::Yaml { .. } => "InternalError",
        }
    }

    /// Whether the input is at fault (wait for it to change) rather than this program (a bug).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, Self::Json(_) | Self::Yaml { .. })
    }
}

/// One channel with its defaults applied: what the controller watches EndpointSlices for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedChannel {
    /// The channel's name.
    pub name: String,
    /// Its Service, in the contract's namespace (`spec.service` when the channel names none).
    pub service: String,
    /// Its Service port (`spec.port` when the channel names none).
    pub port: i32,
    /// Its `x-channel-priority` selector, if any.
    pub selector: Option<String>,
}

/// An endpoint that will be published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Published {
    address: String,
    port: u16,
    /// A DNS name rather than an IP address.
    dns: bool,
    region: Option<String>,
}

/// Resource names of one contract.
struct Names<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl Names<'_> {
    /// `<namespace>/<name>`: the value of the response header and the tracing tag.
    fn contract(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// The aggregate cluster, the route configuration, the virtual host and the listener.
    fn base(&self) -> String {
        format!("csp~{}~{}", self.namespace, self.name)
    }
    fn channel_cluster(&self, channel: &str) -> String {
        format!("csp~{}~{}~{channel}", self.namespace, self.name)
    }
}

/// The Envoy resources for a contract and the endpoints of its channels.
pub fn desired(
    contract: &ChannelContract,
    endpoints: &ChannelEndpoints,
    options: &ProxyOptions,
) -> Result<EnvoyResources, TranslateError> {
    let name = contract.metadata.name.as_deref().ok_or(TranslateError::MissingMetadata("name"))?;
    let namespace = contract.metadata.namespace.as_deref().ok_or(TranslateError::MissingMetadata("namespace"))?;
    let names = Names { namespace, name };
    let spec = &contract.spec;
    crds::validate::contract(spec)
        .map_err(|source| TranslateError::InvalidSpec { contract: names.contract(), source })?;

    let channels = resolve_channels(spec);
    if let Some(unknown) = endpoints.channels.keys().find(|c| !channels.iter().any(|r| &r.name == *c)) {
        return Err(TranslateError::UnknownChannel {
            channel: unknown.clone(),
            declared: channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
        });
    }

    let mut clusters = Vec::with_capacity(channels.len() + 1);
    let mut statuses = Vec::with_capacity(channels.len());
    for (i, channel) in channels.iter().enumerate() {
        let published = published_endpoints(&channel.name, endpoints.channels.get(&channel.name))?;
        // Region failover is for the primary (the first channel); the fallbacks keep one priority.
        let region_order = if i == 0 { failover_order(spec, options) } else { Vec::new() };
        let assignment = load_assignment(&names.channel_cluster(&channel.name), &published, &region_order);
        statuses.push(channel_status(&channel.name, &assignment, published.len()));
        clusters.push(channel_cluster(spec, &names.channel_cluster(&channel.name), &published, assignment)?);
    }
    let chain: Vec<String> = channels.iter().map(|c| names.channel_cluster(&c.name)).collect();
    clusters.push(aggregate_cluster(spec, &names.base(), chain));

    let route_configuration = route_configuration(spec, &names, &channels)?;
    let listener = listener(spec, &names, options);
    let (files, config_version) = files(&names, &clusters, &route_configuration, &listener)?;
    Ok(EnvoyResources { clusters, route_configuration, listener, channels: statuses, files, config_version })
}

/// The channels in order, defaults applied: none declared means one channel `primary`, the Service itself.
/// [`ChannelEndpoints`] is keyed by these names.
pub fn resolve_channels(spec: &ChannelContractSpec) -> Vec<ResolvedChannel> {
    if spec.channels.is_empty() {
        return vec![ResolvedChannel {
            name: DEFAULT_CHANNEL.to_owned(),
            service: spec.service.clone(),
            port: spec.port,
            selector: None,
        }];
    }
    spec.channels
        .iter()
        .map(|c| ResolvedChannel {
            name: c.name.clone(),
            service: c.service.clone().unwrap_or_else(|| spec.service.clone()),
            port: c.port.unwrap_or(spec.port),
            selector: c.selector.clone(),
        })
        .collect()
}

/// The regions of the primary in the order they are tried: the proxy's own region first (over xDS), then
/// `spec.failover.regions`. Empty when the contract declares no failover.
fn failover_order(spec: &ChannelContractSpec, options: &ProxyOptions) -> Vec<String> {
    let Some(failover) = &spec.failover else { return Vec::new() };
    let mut order: Vec<String> = options.local_region.iter().cloned().collect();
    for region in &failover.regions {
        if !order.contains(region) {
            order.push(region.clone());
        }
    }
    order
}

/// The ready endpoints of a channel, checked, without duplicates (a Pod can sit in two EndpointSlices for
/// a moment) and sorted, so that the input's order never shows in the output.
fn published_endpoints(channel: &str, endpoints: Option<&Vec<Endpoint>>) -> Result<Vec<Published>, TranslateError> {
    let mut published = Vec::new();
    for e in endpoints.into_iter().flatten().filter(|e| e.ready) {
        let invalid = |reason: &str| TranslateError::InvalidEndpoint {
            channel: channel.to_owned(),
            address: e.address.clone(),
            port: e.port,
            reason: reason.to_owned(),
        };
        if e.port == 0 {
            return Err(invalid("0 is not a port"));
        }
        let dns = match e.address.parse::<IpAddr>() {
            Ok(_) => false,
            Err(_) if is_dns_name(&e.address) => true,
            Err(_) => return Err(invalid("not an IP address nor a DNS name")),
        };
        let region = e.region.clone().filter(|r| !r.is_empty());
        published.push(Published { address: e.address.clone(), port: e.port, dns, region });
    }
    // A regionless duplicate sorts after one with a region, so the region is kept.
    published.sort_by(|a, b| {
        (&a.address, a.port, a.region.is_none(), &a.region).cmp(&(&b.address, b.port, b.region.is_none(), &b.region))
    });
    published.dedup_by(|b, a| a.address == b.address && a.port == b.port);
    Ok(published)
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A channel's endpoints grouped by locality (region), one priority per region in `region_order`, compacted
/// so that priorities stay contiguous (a declared region with no endpoint takes no level); the endpoints
/// of regions not in the order, and those without a region, share the level after them.
///
/// `policy.overprovisioning_factor` is written out (see [`OVERPROVISIONING_FACTOR`]). Endpoints carry no
/// health status (UNKNOWN, which counts as healthy): health comes from outlier detection, and only ready
/// endpoints are here at all.
fn load_assignment(cluster_name: &str, endpoints: &[Published], region_order: &[String]) -> ClusterLoadAssignment {
    let rank = |region: &Option<String>| {
        region.as_ref().and_then(|r| region_order.iter().position(|o| o == r)).unwrap_or(region_order.len())
    };
    // (rank, region) -> endpoints; the regionless sort last within the shared last level.
    let mut groups: BTreeMap<(usize, bool, Option<String>), Vec<&Published>> = BTreeMap::new();
    for e in endpoints {
        groups.entry((rank(&e.region), e.region.is_none(), e.region.clone())).or_default().push(e);
    }
    let mut priorities: Vec<usize> = groups.keys().map(|k| k.0).collect();
    priorities.dedup();
    let localities = groups
        .into_iter()
        .map(|((rank, _, region), members)| LocalityLbEndpoints {
            locality: region.map(|region| Locality { region, ..Locality::default() }),
            lb_endpoints: members.into_iter().map(lb_endpoint).collect(),
            priority: u32::try_from(priorities.iter().position(|p| *p == rank).unwrap_or(0)).unwrap_or(u32::MAX),
            ..LocalityLbEndpoints::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_owned(),
        endpoints: localities,
        policy: Some(cluster_load_assignment::Policy {
            overprovisioning_factor: Some(UInt32Value { value: OVERPROVISIONING_FACTOR }),
            ..cluster_load_assignment::Policy::default()
        }),
        ..ClusterLoadAssignment::default()
    }
}

fn lb_endpoint(e: &Published) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
            crate::envoy::pb::envoy::config::endpoint::v3::Endpoint {
                address: Some(socket_address(&e.address, u32::from(e.port))),
                ..Default::default()
            },
        )),
        ..LbEndpoint::default()
    }
}

fn socket_address(address: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

fn channel_status(name: &str, assignment: &ClusterLoadAssignment, endpoints: usize) -> ChannelStatus {
    let mut regions: Vec<String> = Vec::new();
    for region in assignment.endpoints.iter().filter_map(|l| l.locality.as_ref()).map(|l| &l.region) {
        if !regions.contains(region) {
            regions.push(region.clone());
        }
    }
    ChannelStatus { name: name.to_owned(), endpoints: i32::try_from(endpoints).unwrap_or(i32::MAX), regions }
}

fn pb_duration(field: &'static str, value: &str) -> Result<protobuf::Duration, TranslateError> {
    let too_long = || TranslateError::Duration { field, value: value.to_owned() };
    // The spec is validated before translation, so the text parses; this only guards the conversion.
    let parsed = crds::duration::parse(value).map_err(|_| too_long())?;
    from_std(parsed).ok_or_else(too_long)
}

/// The largest duration protobuf (and so Envoy) admits: 10,000 years.
const MAX_PROTOBUF_SECONDS: u64 = 315_576_000_000;

fn from_std(d: Duration) -> Option<protobuf::Duration> {
    if d.as_secs() > MAX_PROTOBUF_SECONDS {
        return None;
    }
    protobuf::Duration::try_from(d).ok()
}

fn uint(value: i32) -> Option<UInt32Value> {
    Some(UInt32Value { value: u32::try_from(value).unwrap_or(0) })
}

/// `circuitBreaker.max*` and `retry.budgetPercent`: one threshold for the DEFAULT routing priority (the
/// only one routes use). The retry budget is always set, at `budgetPercent` or Envoy's 20% when omitted,
/// so that retries are bounded by a share of the traffic rather than by a fixed count.
fn circuit_breakers(cb: &CircuitBreaker, retry: &RetryPolicy) -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            priority: RoutingPriority::Default.into(),
            max_connections: uint(cb.max_connections),
            max_pending_requests: uint(cb.max_pending_requests),
            max_requests: uint(cb.max_requests),
            retry_budget: Some(circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(Percent { value: retry.budget_percent.unwrap_or(20.0) }),
                min_retry_concurrency: None,
            }),
            ..circuit_breakers::Thresholds::default()
        }],
        ..CircuitBreakers::default()
    }
}

/// `circuitBreaker.*` as outlier detection, the only thing that ejects endpoints (there is no active health
/// checking), and so what moves traffic to the next region and the next channel.
/// - `consecutiveErrors` -> `consecutive_5xx`, enforced at 100%. Connection failures, resets and timeouts
///   count as 5xx (local-origin errors are not split out), so a dead endpoint is ejected as fast as one
///   that answers 503.
/// - `threshold` -> failure-percentage ejection: `failure_percentage_threshold = round((1 - threshold) *
///   100)`, at least 1 (0 would eject endpoints that never fail, since Envoy ejects when `100 - success
///   rate >= failure_percentage_threshold`), enforced at 100%, over `minimumRequests` requests per
///   endpoint, with `failure_percentage_minimum_hosts: 1` so that it applies to channels of any size
///   (Envoy's default of 5 hosts would switch it off for small ones).
/// - `threshold: 1` tolerates no failure, which a whole failure percentage cannot say (1% lets one failure
///   in more than 100 requests pass, 0% ejects every endpoint): it also sets `consecutive_5xx: 1`, so that
///   the first failure (a 5xx, a reset, a connection failure, a timeout: the same events the failure
///   percentage counts) ejects the endpoint.
/// - success-rate ejection (statistical, relative to the other endpoints) is not in the contract and is
///   switched off (`enforcing_success_rate: 0`), so that the contract is all that ejects.
fn outlier_detection(cb: &CircuitBreaker) -> Result<OutlierDetection, TranslateError> {
    let mut od = OutlierDetection {
        consecutive_5xx: uint(cb.consecutive_errors),
        enforcing_consecutive_5xx: uint(100),
        interval: Some(pb_duration("spec.circuitBreaker.interval", &cb.interval)?),
        base_ejection_time: Some(pb_duration("spec.circuitBreaker.baseEjectionTime", &cb.base_ejection_time)?),
        max_ejection_percent: uint(cb.max_ejection_percent),
        enforcing_success_rate: uint(0),
        ..OutlierDetection::default()
    };
    if let Some(threshold) = cb.threshold {
        if threshold >= 1.0 {
            // No failure is tolerated, which no failure percentage says: the first failure ejects.
            od.consecutive_5xx = uint(1);
        }
        od.failure_percentage_threshold = uint(failure_percentage(threshold));
        od.enforcing_failure_percentage = uint(100);
        od.failure_percentage_request_volume = uint(cb.minimum_requests);
        od.failure_percentage_minimum_hosts = uint(1);
    }
    Ok(od)
}

/// `round((1 - threshold) * 100)`, kept within 1..=100.
fn failure_percentage(threshold: f64) -> i32 {
    // threshold is in (0, 1] (validated), so the product is in [0, 100).
    let percent = ((1.0 - threshold) * 100.0).round();
    if percent >= 100.0 {
        100
    } else if percent >= 1.0 {
        percent as i32
    } else {
        1
    }
}

/// The cluster of one channel.
///
/// - STATIC with the endpoints inline when every address is an IP (always, for EndpointSlices of type
///   IPv4/IPv6); STRICT_DNS (IPv4 preferred) only when some address is a DNS name.
/// - `common_lb_config.healthy_panic_threshold: 0`: panic mode off. With Envoy's default (50%), a channel
///   or region with more than half of its endpoints ejected would send traffic to the ejected ones again
///   instead of failing over, and the declared chain would not be what traffic does.
/// - `connect_timeout`: the deadline of one try (`perTryTimeout`, else `maxLatency`), at most Envoy's
///   default of 5s: a connection that cannot be made within a try is of no use to it, and failing it early
///   counts it for ejection early.
/// - the circuit breakers, outlier detection and, for HTTP2/GRPC, upstream HTTP/2 of the contract.
fn channel_cluster(
    spec: &ChannelContractSpec,
    name: &str,
    endpoints: &[Published],
    load_assignment: ClusterLoadAssignment,
) -> Result<Cluster, TranslateError> {
    let dns = endpoints.iter().any(|e| e.dns);
    let discovery_type = if dns { cluster::DiscoveryType::StrictDns } else { cluster::DiscoveryType::Static };
    let try_deadline = match &spec.retry.per_try_timeout {
        Some(per_try) => pb_duration("spec.retry.perTryTimeout", per_try)?,
        None => pb_duration("spec.sla.maxLatency", &spec.sla.max_latency)?,
    };
    let five_seconds = protobuf::Duration { seconds: 5, nanos: 0 };
    let connect_timeout = if (try_deadline.seconds, try_deadline.nanos) < (5, 0) { try_deadline } else { five_seconds };
    let mut cluster = Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery_type.into())),
        connect_timeout: Some(connect_timeout),
        load_assignment: Some(load_assignment),
        circuit_breakers: Some(circuit_breakers(&spec.circuit_breaker, &spec.retry)),
        outlier_detection: Some(outlier_detection(&spec.circuit_breaker)?),
        common_lb_config: Some(common_lb_config()),
        ..Cluster::default()
    };
    if dns {
        cluster.dns_lookup_family = cluster::DnsLookupFamily::V4Preferred.into();
    }
    if matches!(spec.protocol, Protocol::Http2 | Protocol::Grpc) {
        cluster.typed_extension_protocol_options.insert(
            upstream_http::EXTENSION_NAME.to_owned(),
            any(&upstream_http::HttpProtocolOptions::explicit_http2()),
        );
    }
    Ok(cluster)
}

/// The load-balancing settings every cluster of a contract shares:
/// - `healthy_panic_threshold: 0`: panic mode off (see [`channel_cluster`] and [`aggregate_cluster`]);
/// - `update_merge_window: 0s`: a health change (an ejection, an unejection) reaches the load balancers
///   at once. Envoy's default merges health-only updates that follow a recent one into a window of 1s, so
///   when a second endpoint, region or channel failed shortly after a first one, traffic kept going to it
///   for up to a second after its ejection (measured in e2e: ~1s of failed requests when gz then sz fail,
///   against none for the first ejection). Contract clusters are small; rebuilding their load balancers on
///   every health change costs little.
fn common_lb_config() -> cluster::CommonLbConfig {
    cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        update_merge_window: Some(protobuf::Duration { seconds: 0, nanos: 0 }),
        ..Default::default()
    }
}

/// The `envoy.clusters.aggregate` cluster over the channel clusters, in channel order.
///
/// Its load balancer lines up the priorities of all channel clusters (primary's regions first, then each
/// fallback) and hands a request to the first level that has healthy (not ejected) endpoints, spilling by
/// the overprovisioning factor of each level; then the chosen cluster's own balancer picks the endpoint.
/// - `healthy_panic_threshold: 0` here too: the aggregate's own balancer has its own panic mode, which
///   would otherwise spread traffic over ejected channels when less than half of the chain is healthy.
/// - the same circuit breakers as the channels: the router takes retries from the budget of the route's
///   cluster, which for the default route is this one, not the channel that serves the try.
fn aggregate_cluster(spec: &ChannelContractSpec, name: &str, chain: Vec<String>) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(cluster::CustomClusterType {
            name: "envoy.clusters.aggregate".to_owned(),
            typed_config: Some(any(&ClusterConfig { clusters: chain })),
        })),
        lb_policy: cluster::LbPolicy::ClusterProvided.into(),
        circuit_breakers: Some(circuit_breakers(&spec.circuit_breaker, &spec.retry)),
        common_lb_config: Some(common_lb_config()),
        ..Cluster::default()
    }
}

/// `retry.*` as a route's retry policy; None for strategy None (no retries at all).
///
/// Envoy's back-off is always fully jittered: retry `n` (from 1) waits a random time below `base * (2^n -
/// 1)`, capped at `max_interval`. ExponentialBackoff: `baseInterval` and `maxInterval` (omitted: ten times
/// the base, as the API says). Fixed: base and max both `baseInterval`, so that every retry waits a random
/// time below `baseInterval`, as the field's description says (Envoy has no unjittered interval).
fn retry_policy(
    retry: &RetryPolicy,
) -> Result<Option<crate::envoy::pb::envoy::config::route::v3::RetryPolicy>, TranslateError> {
    if retry.strategy == RetryStrategy::None {
        return Ok(None);
    }
    let base = pb_duration("spec.retry.backoff.baseInterval", &retry.backoff.base_interval)?;
    let max = match (retry.strategy, &retry.backoff.max_interval) {
        (RetryStrategy::Fixed, _) => base,
        (_, Some(max)) => pb_duration("spec.retry.backoff.maxInterval", max)?,
        (_, None) => {
            let base_std = crds::duration::parse(&retry.backoff.base_interval).unwrap_or_default();
            from_std(base_std.saturating_mul(10)).ok_or(TranslateError::Duration {
                field: "spec.retry.backoff.baseInterval",
                value: retry.backoff.base_interval.clone(),
            })?
        }
    };
    let per_try_timeout = match &retry.per_try_timeout {
        Some(t) => Some(pb_duration("spec.retry.perTryTimeout", t)?),
        None => None,
    };
    Ok(Some(crate::envoy::pb::envoy::config::route::v3::RetryPolicy {
        retry_on: retry.retry_on.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
        num_retries: uint(retry.max_retries),
        per_try_timeout,
        retry_back_off: Some(retry_policy::RetryBackOff { base_interval: Some(base), max_interval: Some(max) }),
        ..Default::default()
    }))
}

/// The routes: one per channel selector (in channel order) straight to that channel, then the default
/// route to the aggregate cluster. Every route has the SLA timeout, the retry policy, the tracing tags and
/// the `x-csp-contract` response header (which replaces one an upstream may have set, and is also added
/// to Envoy's own replies such as a 504 on timeout).
fn route_configuration(
    spec: &ChannelContractSpec,
    names: &Names<'_>,
    channels: &[ResolvedChannel],
) -> Result<RouteConfiguration, TranslateError> {
    let timeout = pb_duration("spec.sla.maxLatency", &spec.sla.max_latency)?;
    let retry = retry_policy(&spec.retry)?;
    let make_route = |name: String, headers: Vec<HeaderMatcher>, cluster: String, channel_tag: String| Route {
        name,
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
            headers,
            ..RouteMatch::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            timeout: Some(timeout),
            retry_policy: retry.clone(),
            ..RouteAction::default()
        })),
        tracing: Some(Tracing {
            custom_tags: vec![literal_tag(CONTRACT_TAG, &names.contract()), literal_tag(CHANNEL_TAG, &channel_tag)],
            ..Tracing::default()
        }),
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: CONTRACT_HEADER.to_owned(),
                value: names.contract(),
                ..HeaderValue::default()
            }),
            append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            ..HeaderValueOption::default()
        }],
        ..Route::default()
    };
    let mut routes: Vec<Route> = channels
        .iter()
        .filter_map(|c| c.selector.as_ref().map(|selector| (c, selector)))
        .map(|(c, selector)| {
            let cluster = names.channel_cluster(&c.name);
            make_route(cluster.clone(), vec![channel_header(selector)], cluster, c.name.clone())
        })
        .collect();
    let chain = channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(">");
    routes.push(make_route(names.base(), Vec::new(), names.base(), chain));
    Ok(RouteConfiguration {
        name: names.base(),
        virtual_hosts: vec![VirtualHost {
            name: names.base(),
            // The listener is the contract's own, so every request it takes is for this service.
            domains: vec!["*".to_owned()],
            routes,
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    })
}

/// `x-channel-priority: <selector>`, exact, ignoring case (selectors are lowercase DNS labels).
fn channel_header(selector: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: CHANNEL_HEADER.to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(selector.to_owned())),
            ignore_case: true,
        })),
        ..HeaderMatcher::default()
    }
}

fn literal_tag(tag: &str, value: &str) -> CustomTag {
    CustomTag {
        tag: tag.to_owned(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal { value: value.to_owned() })),
    }
}

/// The listener: an HTTP connection manager (HTTP/1.1 and HTTP/2 downstream, detected) whose routes come
/// over RDS from `<config dir>/rds.yaml`, watching the directory so that a ConfigMap update (kubelet swaps
/// a symlink) is picked up; tracing on, so that the routes' tags reach a tracer the bootstrap configures;
/// the router filter.
fn listener(spec: &ChannelContractSpec, names: &Names<'_>, options: &ProxyOptions) -> Listener {
    let address = options.listener.unwrap_or_else(|| {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), u16::try_from(spec.port).unwrap_or_default())
    });
    let hcm = HttpConnectionManager {
        stat_prefix: names.base(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(path_config_source(&options.config_dir, "rds.yaml")),
            route_config_name: names.base(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..HttpFilter::default()
        }],
        tracing: Some(http_connection_manager::Tracing::default()),
        ..HttpConnectionManager::default()
    };
    Listener {
        name: names.base(),
        address: Some(socket_address(&address.ip().to_string(), u32::from(address.port()))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

/// A config source that reads `<dir>/<file>` and follows moves in `<dir>`.
pub(crate) fn path_config_source(dir: &str, file: &str) -> ConfigSource {
    let dir = dir.trim_end_matches('/');
    let dir = if dir.is_empty() { "/" } else { dir };
    ConfigSource {
        resource_api_version: ApiVersion::V3.into(),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::PathConfigSource(PathConfigSource {
            path: format!("{}/{file}", dir.trim_end_matches('/')),
            watched_directory: Some(WatchedDirectory { path: dir.to_owned() }),
        })),
        ..ConfigSource::default()
    }
}

/// The ConfigMap's files and the config version. The version is the SHA-256 of the canonical proto3 JSON
/// (sorted keys, no whitespace) of every resource, in file order; each file is a DiscoveryResponse with
/// that version as `version_info`, so that Envoy's `/config_dump` shows which version it runs.
fn files(
    names: &Names<'_>,
    clusters: &[Cluster],
    routes: &RouteConfiguration,
    listener: &Listener,
) -> Result<(BTreeMap<String, String>, String), TranslateError> {
    let sets: [(&'static str, &'static str, String, Vec<protobuf::Any>); 3] = [
        ("cds.yaml", "CDS (clusters)", Cluster::type_url(), clusters.iter().map(any).collect()),
        ("rds.yaml", "RDS (routes)", RouteConfiguration::type_url(), vec![any(routes)]),
        ("lds.yaml", "LDS (listener)", Listener::type_url(), vec![any(listener)]),
    ];
    let mut hasher = Sha256::new();
    for (_, _, _, resources) in &sets {
        for resource in resources {
            let canonical = serde_json::to_vec(&json::to_value(resource)?)
                .map_err(|e| JsonError { message: resource.type_url.clone(), reason: e.to_string() })?;
            hasher.update(&canonical);
            hasher.update(b"\n");
        }
    }
    let version = format!("sha256:{}", hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut files = BTreeMap::new();
    for (file, what, type_url, resources) in sets {
        let response = DiscoveryResponse { version_info: version.clone(), resources, type_url, ..Default::default() };
        let body = yaml_serde::to_string(&json::to_value(&response)?)
            .map_err(|e| TranslateError::Yaml { file, reason: e.to_string() })?;
        let header = format!(
            "# Envoy {what} of ChannelContract {}, written by the Channel Contracts operator. Do not edit.\n",
            names.contract()
        );
        files.insert(file.to_owned(), header + &body);
    }
    Ok((files, version))
}

#[cfg(test)]
mod tests;
