//! `desired`: a ChannelContract and the endpoints of its channels become the Envoy resources that carry it
//! out. A pure function: no client, no clock, no I/O; the same input gives byte-identical output.
//!
//! What each contract field becomes is the table "What it becomes in Envoy" of the API; the choices that
//! the table leaves open (how failover is made to really happen) are explained where they are made, in
//! [`cluster`] and [`endpoint`].
//!
//! Resources, for a contract `<name>` in namespace `<ns>`:
//! - one cluster per channel, `csp~<ns>~<name>~<channel>`, in the order of `spec.channels`;
//! - the aggregate cluster `csp~<ns>~<name>` listing them in that order;
//! - the route configuration `csp~<ns>~<name>`: one virtual host, a route per channel selector
//!   (`x-channel-priority: <selector>` straight to that channel), then the default route to the aggregate;
//! - the listener `csp~<ns>~<name>`: an HTTP connection manager that takes its routes over RDS from
//!   `<config dir>/rds.yaml`, and the router filter.
//!
//! One file per Envoy resource kind: [`cluster`] (channel and aggregate clusters), [`endpoint`] (load
//! assignments), [`route`], [`listener`]; this module ties them together and writes the files.

mod cluster;
mod endpoint;
pub mod fault;
mod listener;
mod route;
mod scope;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crds::{
    ChannelContract, ChannelContractSpec, ChannelStatus, CircuitBreaker, Protocol, ResolvedChannel, RetryPolicy,
    RetryStrategy,
};
use prost::Name;
use sha2::{Digest, Sha256};

use crate::envoy::json::{self, JsonError};
use crate::envoy::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection, circuit_breakers};
use crate::envoy::pb::envoy::config::core::v3::{
    self as core, HeaderValue, HeaderValueOption, Locality, RoutingPriority, SocketAddress, header_value_option,
    socket_address,
};
use crate::envoy::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, cluster_load_assignment, lb_endpoint,
};
use crate::envoy::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use crate::envoy::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, Tracing, VirtualHost, header_matcher,
    retry_policy, route_action, route_match,
};
use crate::envoy::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig;
use crate::envoy::pb::envoy::extensions::filters::http::router::v3::Router;
use crate::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use crate::envoy::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use crate::envoy::pb::envoy::service::discovery::v3::DiscoveryResponse;
use crate::envoy::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use crate::envoy::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use crate::envoy::pb::envoy::r#type::v3::Percent;
use crate::envoy::pb::google::protobuf::{self as protobuf, UInt32Value};
use crate::envoy::{any, explicit_http1, explicit_http2, path_config_source};

use crate::model::{ActiveFault, ChannelEndpoints, Endpoint, EnvoyResources, ProxyOptions, XdsContract};

use self::cluster::*;
use self::endpoint::*;
use self::listener::*;
use self::route::*;

pub use self::cluster::CHANNEL_PRIORITY_HEADER;
pub use self::endpoint::{METADATA_NAMESPACE, OVERPROVISIONING_FACTOR};
pub use self::listener::{fault_listener, gateway_listener};
pub use self::scope::{SCOPED_ROUTES, hosts};

/// The request header that sends a request straight to the channel with that selector.
pub const CHANNEL_HEADER: &str = "x-channel-priority";

/// The response header that names the contract that served a request (`<namespace>/<name>`).
pub const CONTRACT_HEADER: &str = "x-csp-contract";

/// The tracing tag with the contract (`<namespace>/<name>`).
pub const CONTRACT_TAG: &str = "csp.contract";

/// The tracing tag with the channel that served the request.
pub const CHANNEL_TAG: &str = "csp.channel";

/// The tracing tag with the region of the endpoint that served the request.
pub const REGION_TAG: &str = "csp.region";

/// The tracing tag with the fallback channel that served the request (`false` for the primary).
pub const FALLBACK_TAG: &str = "csp.fallback.used";

/// The tracing tag that says whether the request breached the SLA.
pub const SLA_BREACHED_TAG: &str = "csp.sla.breached";

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

/// Resource names of one contract.
pub(crate) struct Names<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl Names<'_> {
    /// `<namespace>/<name>`: the value of the response header and the tracing tag.
    pub(crate) fn contract(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// The aggregate cluster, the route configuration, the virtual host and the listener.
    pub(crate) fn base(&self) -> String {
        format!("csp~{}~{}", self.namespace, self.name)
    }
    pub(crate) fn channel_cluster(&self, channel: &str) -> String {
        format!("csp~{}~{}~{channel}", self.namespace, self.name)
    }
}

/// A contract checked for translation: its metadata is there, its spec is valid and its channels are
/// resolved. A reconcile makes one and hands it to the gathering of endpoints and to [`translate`], so
/// that the spec is validated and its channels resolved once.
#[derive(Debug, Clone)]
pub struct ValidContract<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `metadata.namespace`.
    pub namespace: &'a str,
    /// The spec, valid.
    pub spec: &'a ChannelContractSpec,
    /// Its channels, defaults applied ([`crds::resolve_channels`]).
    pub channels: Vec<ResolvedChannel>,
}

impl<'a> ValidContract<'a> {
    /// Checks a contract.
    pub fn new(contract: &'a ChannelContract) -> Result<Self, TranslateError> {
        let name = contract.metadata.name.as_deref().ok_or(TranslateError::MissingMetadata("name"))?;
        let namespace = contract.metadata.namespace.as_deref().ok_or(TranslateError::MissingMetadata("namespace"))?;
        let spec = &contract.spec;
        crds::validate::contract(spec)
            .map_err(|source| TranslateError::InvalidSpec { contract: Names { namespace, name }.contract(), source })?;
        Ok(Self { name, namespace, spec, channels: crds::resolve_channels(spec) })
    }
}

/// The Envoy resources for a contract and the endpoints of its channels.
pub fn desired(
    contract: &ChannelContract,
    endpoints: &ChannelEndpoints,
    options: &ProxyOptions,
) -> Result<EnvoyResources, TranslateError> {
    translate(&ValidContract::new(contract)?, endpoints, options)
}

/// [`desired`] for a contract already checked.
pub fn translate(
    contract: &ValidContract<'_>,
    endpoints: &ChannelEndpoints,
    options: &ProxyOptions,
) -> Result<EnvoyResources, TranslateError> {
    let names = Names { namespace: contract.namespace, name: contract.name };
    let Parts { clusters, channels: statuses, route_configuration, .. } =
        parts(contract, endpoints, options.local_region.as_deref(), None)?;
    let listener = listener(contract.spec, &names, options);
    let (files, config_version) = files(&names, &clusters, &route_configuration, &listener)?;
    Ok(EnvoyResources { clusters, route_configuration, listener, channels: statuses, files, config_version })
}

/// What a contract becomes for one proxy served over xDS, whose own region is `local_region`: its
/// clusters (the primary's regions with `local_region` first), its route configuration, and the scopes
/// that send a gateway listener's requests for the contract's Service to those routes ([`scope`]). The
/// listener is not the contract's own: every contract on a port shares [`gateway_listener`].
///
/// With a drill's `fault` (for a proxy that has the fault listener, [`fault`]), the endpoints under it are
/// reached through [`fault_listener`], and the contract has the fault's cluster, route configuration and
/// scope too.
pub fn xds(
    contract: &ValidContract<'_>,
    endpoints: &ChannelEndpoints,
    local_region: Option<&str>,
    fault: Option<&ActiveFault>,
) -> Result<XdsContract, TranslateError> {
    let names = Names { namespace: contract.namespace, name: contract.name };
    let Parts { clusters, route_configuration, faulted, .. } = parts(contract, endpoints, local_region, fault)?;
    let port = u16::try_from(contract.spec.port).unwrap_or_default();
    let mut scopes = scope::scopes(&names, &contract.spec.service, port);
    let mut clusters = clusters;
    let mut fault_routes = Vec::new();
    if let Some(fault) = fault {
        clusters.push(self::fault::passthrough_cluster(contract.spec, &names, &faulted));
        fault_routes.push(self::fault::route_configuration(&names, fault)?);
        scopes.push(self::fault::scope(&names, fault));
    }
    Ok(XdsContract { clusters, route_configuration, fault_routes, scopes, port })
}

/// The resources of a contract that do not depend on how the proxy takes them.
struct Parts {
    clusters: Vec<Cluster>,
    channels: Vec<ChannelStatus>,
    route_configuration: RouteConfiguration,
    /// The endpoints under the fault, if any.
    faulted: Vec<Published>,
}

fn parts(
    contract: &ValidContract<'_>,
    endpoints: &ChannelEndpoints,
    local_region: Option<&str>,
    fault: Option<&ActiveFault>,
) -> Result<Parts, TranslateError> {
    let names = Names { namespace: contract.namespace, name: contract.name };
    let (spec, channels) = (contract.spec, &contract.channels);
    if let Some(unknown) = endpoints.channels.keys().find(|c| !channels.iter().any(|r| &r.name == *c)) {
        return Err(TranslateError::UnknownChannel {
            channel: unknown.clone(),
            declared: channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
        });
    }

    let mut clusters = Vec::with_capacity(channels.len() + 1);
    let mut statuses = Vec::with_capacity(channels.len());
    let mut faulted = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let published = published_endpoints(&channel.name, endpoints.channels.get(&channel.name))?;
        // Region failover is for the primary (the first channel); the fallbacks keep one priority.
        let region_order = if i == 0 { failover_order(spec, local_region) } else { Vec::new() };
        let serving = Serving { channel: &channel.name, fallback: i > 0, fault };
        if let Some(fault) = fault {
            faulted.extend(published.iter().filter(|e| fault.hits(&channel.name, e.region.as_deref())).cloned());
        }
        let assignment = load_assignment(&names.channel_cluster(&channel.name), &published, &region_order, serving);
        statuses.push(channel_status(&channel.name, &assignment, published.len()));
        clusters.push(channel_cluster(spec, &names.channel_cluster(&channel.name), &published, assignment)?);
    }
    let chain: Vec<String> = channels.iter().map(|c| names.channel_cluster(&c.name)).collect();
    clusters.push(aggregate_cluster(spec, &names.base(), chain));

    let route_configuration = route_configuration(spec, &names, channels, fault)?;
    faulted.sort();
    faulted.dedup();
    Ok(Parts { clusters, channels: statuses, route_configuration, faulted })
}

/// The regions of the primary in the order they are tried: the proxy's own region first (over xDS), then
/// `spec.failover.regions`. Empty when the contract declares no failover.
pub(crate) fn failover_order(spec: &ChannelContractSpec, local_region: Option<&str>) -> Vec<String> {
    let Some(failover) = &spec.failover else { return Vec::new() };
    let mut order: Vec<String> = local_region.map(str::to_owned).into_iter().collect();
    for region in &failover.regions {
        if !order.contains(region) {
            order.push(region.clone());
        }
    }
    order
}

pub(crate) fn pb_duration(field: &'static str, value: &str) -> Result<protobuf::Duration, TranslateError> {
    let too_long = || TranslateError::Duration { field, value: value.to_owned() };
    // The spec is validated before translation, so the text parses; this only guards the conversion.
    let parsed = crds::duration::parse(value).map_err(|_| too_long())?;
    from_std(parsed).ok_or_else(too_long)
}

/// The largest duration protobuf (and so Envoy) admits: 10,000 years.
pub(crate) const MAX_PROTOBUF_SECONDS: u64 = 315_576_000_000;

pub(crate) fn from_std(d: Duration) -> Option<protobuf::Duration> {
    if d.as_secs() > MAX_PROTOBUF_SECONDS {
        return None;
    }
    // Below the limit above, the seconds fit an i64 and the nanoseconds an i32.
    Some(protobuf::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

pub(crate) fn uint(value: i32) -> Option<UInt32Value> {
    Some(UInt32Value { value: u32::try_from(value).unwrap_or(0) })
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
