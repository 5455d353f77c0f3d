//! The vocabulary the stages hand on to each other: a contract's channels' endpoints (the input of
//! [`desired`](crate::translate::desired) besides the contract), how the proxies are set up, and the Envoy
//! resources that carry a contract out. The ground floor: it imports nothing of this crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crds::{ChannelContract, ChannelStatus};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, ScopedRouteConfiguration};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use serde::{Deserialize, Serialize};

/// Where the ConfigMap with the files is mounted in the proxy by default; `lds.yaml` names
/// `<dir>/rds.yaml` as its route source.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/envoy/csp";

/// The ready endpoints behind each channel of a contract: the input of
/// [`desired`](crate::translate::desired) besides the contract.
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

/// What one contract becomes for one proxy served over xDS (the proxy's own region first): every resource
/// here is the contract's own, so that an ACK or a NACK of it concerns this contract alone.
#[derive(Clone, Debug, PartialEq)]
pub struct XdsContract {
    /// The channel clusters in channel order, then the aggregate cluster.
    pub clusters: Vec<Cluster>,
    /// The routes.
    pub route_configuration: RouteConfiguration,
    /// During a drill: the route configuration of the fault listener for the drill's requests.
    pub fault_routes: Vec<RouteConfiguration>,
    /// The scopes that send the gateway listener's requests for the contract's Service to its routes.
    pub scopes: Vec<ScopedRouteConfiguration>,
    /// The port of the gateway listener the contract is served on (`spec.port`).
    pub port: u16,
}

/// A contract's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContractKey {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ContractKey {
    /// The key of a contract.
    pub fn of(contract: &ChannelContract) -> Self {
        Self { namespace: contract.namespace().unwrap_or_default(), name: contract.name_any() }
    }

    /// The controller's reference to it.
    pub fn object_ref(&self) -> ObjectRef<ChannelContract> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

impl std::fmt::Display for ContractKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A ContractDrill's fault while it is in force: what the xDS translation puts into the contract's
/// resources for the proxies (see `translate::fault`).
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveFault {
    /// The drill run (`<namespace>/<drill>/<run>`): the value of the `x-csp-drill` header the contract's
    /// routes add, which makes the proxies log every try of those requests.
    pub run: String,
    /// What fails.
    pub fault: crds::Fault,
}

impl ActiveFault {
    /// Whether an endpoint of `channel` in `region` is under the fault: `region` alone fails every
    /// channel's endpoints there, `channel` alone all of that channel's, both only their intersection.
    pub fn hits(&self, channel: &str, region: Option<&str>) -> bool {
        let channel_hit = self.fault.channel.as_deref().is_none_or(|c| c == channel);
        let region_hit = self.fault.region.as_deref().is_none_or(|r| Some(r) == region);
        channel_hit && region_hit
    }

    /// A short, stable suffix for the configuration version of a contract under this fault.
    pub fn version_suffix(&self) -> String {
        let text = format!("{}|{}", self.run, serde_json::to_string(&self.fault).unwrap_or_default());
        let hash = text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
        format!("+drill.{hash:016x}")
    }
}

/// The faults in force, by contract: kept by the drill controller of every replica (from the
/// ContractDrills it watches and the time), read by the reconciler when it publishes over xDS.
pub type Faults = std::sync::Arc<std::sync::RwLock<BTreeMap<ContractKey, ActiveFault>>>;
