//! The endpoints of a contract's channels, gathered from Services, EndpointSlices and Nodes: the input of
//! [`desired`](crate::translate::desired) besides the contract. Pure: it reads a [`ClusterView`] (the controller's
//! caches, or plain values in tests) and does no I/O.
//!
//! For each channel (see [`resolve_channels`]):
//! - its Service must exist in the contract's namespace, and so must `spec.service` (the Service clients
//!   call), else [`GatherError::ServiceNotFound`] names every missing one;
//! - the channel's port is a port of that Service (`spec.ports[].port`), else
//!   [`GatherError::ServicePortNotFound`]; its name picks the EndpointSlice port (`ports[].name`, unnamed
//!   matches unnamed), whose number is the endpoint's port;
//! - the endpoints are those of the Service's EndpointSlices (label `kubernetes.io/service-name`), first
//!   address of each, only ready ones (`conditions.ready` unset counts as ready, as the API says);
//! - an endpoint's region is `topology.kubernetes.io/region` of its Node (`nodeName`), else the same label
//!   on the EndpointSlice (endpoints imported from other clusters);
//! - an `ExternalName` Service is one endpoint: its DNS name on the channel's port.

use std::collections::BTreeMap;
use std::sync::Arc;

use crds::ChannelContractSpec;

use super::cache::{CachedService, CachedSlice, ServiceShape};

use crds::ResolvedChannel;

use crate::model::{ChannelEndpoints, Endpoint};

pub use super::cache::SERVICE_NAME_LABEL;

/// What the gathering reads: Services, EndpointSlices by Service, and Node regions.
pub trait ClusterView {
    /// The Service `namespace/name`, if it exists.
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<CachedService>>;
    /// The EndpointSlices of the Service `namespace/service` (label `kubernetes.io/service-name`).
    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<CachedSlice>>;
    /// The `topology.kubernetes.io/region` label of a Node, if the Node exists and has it.
    fn node_region(&self, node: &str) -> Option<String>;
}

/// A Service that a contract needs and does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingService {
    /// The Service's name (in the contract's namespace).
    pub service: String,
    /// The field that names it: `spec.service` or `spec.channels[i].service`.
    pub field: String,
    /// The channels that use it (empty when only `spec.service` names it).
    pub channels: Vec<String>,
}

impl std::fmt::Display for MissingService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Service {:?}", self.service)?;
        match self.channels.as_slice() {
            [] => write!(f, " ({})", self.field),
            [one] => write!(f, " (channel {one:?}, {})", self.field),
            many => write!(f, " (channels {}, {})", many.join(", "), self.field),
        }
    }
}

/// Why the endpoints cannot be gathered: input that the user must fix; the controller waits for a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatherError {
    /// Services that the contract names do not exist.
    #[error(
        "{} not found in namespace {namespace}: create {} or fix the contract",
        list(.missing),
        if .missing.len() == 1 { "it" } else { "them" }
    )]
    ServiceNotFound {
        /// The contract's namespace.
        namespace: String,
        /// Every missing Service.
        missing: Vec<MissingService>,
    },
    /// A channel's port is not a port of its Service.
    #[error(
        "Service {namespace}/{service} has no port {port} (channel {channel:?}); its ports are [{ports}]: fix the channel's port or the Service"
    )]
    ServicePortNotFound {
        /// The contract's namespace.
        namespace: String,
        /// The Service.
        service: String,
        /// The channel.
        channel: String,
        /// The port the channel asks for.
        port: i32,
        /// The Service's ports, comma-separated.
        ports: String,
    },
}

fn list(missing: &[MissingService]) -> String {
    missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The ready endpoints of each channel of a contract in `namespace`.
///
/// Every channel has an entry, possibly empty.
pub fn gather(
    namespace: &str,
    spec: &ChannelContractSpec,
    channels: &[ResolvedChannel],
    view: &impl ClusterView,
) -> Result<ChannelEndpoints, GatherError> {
    let missing = missing_services(namespace, spec, channels, view);
    if !missing.is_empty() {
        return Err(GatherError::ServiceNotFound { namespace: namespace.to_owned(), missing });
    }
    let mut gathered = ChannelEndpoints::default();
    for channel in channels {
        let Some(service) = view.service(namespace, &channel.service) else {
            // Checked above; a Service deleted in between is seen at the next reconcile.
            continue;
        };
        let endpoints = channel_endpoints(namespace, channel, &service, view)?;
        gathered.channels.insert(channel.name.clone(), endpoints);
    }
    Ok(gathered)
}

fn missing_services(
    namespace: &str,
    spec: &ChannelContractSpec,
    channels: &[ResolvedChannel],
    view: &impl ClusterView,
) -> Vec<MissingService> {
    // Service -> (field that names it first, channels that use it), in the order the contract names them.
    let mut wanted: Vec<MissingService> =
        vec![MissingService { service: spec.service.clone(), field: "spec.service".to_owned(), channels: Vec::new() }];
    for (i, channel) in channels.iter().enumerate() {
        let field = if spec.channels.get(i).is_some_and(|c| c.service.is_some()) {
            format!("spec.channels[{i}].service")
        } else {
            "spec.service".to_owned()
        };
        match wanted.iter_mut().find(|w| w.service == channel.service) {
            Some(w) => w.channels.push(channel.name.clone()),
            None => wanted.push(MissingService {
                service: channel.service.clone(),
                field,
                channels: vec![channel.name.clone()],
            }),
        }
    }
    wanted.retain(|w| view.service(namespace, &w.service).is_none());
    wanted
}

fn channel_endpoints(
    namespace: &str,
    channel: &ResolvedChannel,
    service: &CachedService,
    view: &impl ClusterView,
) -> Result<Vec<Endpoint>, GatherError> {
    let port_not_found = |ports: String| GatherError::ServicePortNotFound {
        namespace: namespace.to_owned(),
        service: channel.service.clone(),
        channel: channel.name.clone(),
        port: channel.port,
        ports,
    };
    let ports = match &service.shape {
        ServiceShape::ExternalName(host) if host.is_empty() => return Ok(Vec::new()),
        ServiceShape::ExternalName(host) => {
            let port = u16::try_from(channel.port).map_err(|_| port_not_found(String::new()))?;
            return Ok(vec![Endpoint { address: host.to_string(), port, ready: true, region: None }]);
        }
        ServiceShape::Ports(ports) => ports,
    };
    let Some(service_port) = ports.iter().find(|p| p.port == channel.port) else {
        return Err(port_not_found(ports.iter().map(|p| p.port.to_string()).collect::<Vec<_>>().join(", ")));
    };
    // A slice port without a number means "all ports": then the Service's numeric targetPort, or its port.
    let fallback_port = service_port.target_port.unwrap_or(service_port.port);

    let mut slices = view.endpoint_slices(namespace, &channel.service);
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut endpoints = Vec::new();
    for slice in slices {
        let Some(slice_port) =
            slice.ports.iter().find(|p| p.name == service_port.name).map(|p| p.port.unwrap_or(fallback_port))
        else {
            continue;
        };
        let Ok(port) = u16::try_from(slice_port) else { continue };
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            let node_region = endpoint.node.as_deref().and_then(|node| view.node_region(node));
            endpoints.push(Endpoint {
                address: endpoint.address.to_string(),
                port,
                ready: true,
                region: node_region.or_else(|| slice.region.as_deref().map(str::to_owned)),
            });
        }
    }
    Ok(endpoints)
}

/// `primary:2,cache:1`: the channels in order with their ready endpoints (the `Channels` column).
pub fn summary(channels: &[crds::ChannelStatus]) -> String {
    channels.iter().map(|c| format!("{}:{}", c.name, c.endpoints)).collect::<Vec<_>>().join(",")
}

/// A [`ClusterView`] over plain values, for tests and for `render`-like tools.
#[derive(Debug, Clone, Default)]
pub struct StaticView {
    /// Services by (namespace, name).
    pub services: BTreeMap<(String, String), Arc<CachedService>>,
    /// EndpointSlices, all of them.
    pub slices: Vec<Arc<CachedSlice>>,
    /// Node name -> region label, for Nodes that have one.
    pub node_regions: BTreeMap<String, String>,
}

impl ClusterView for StaticView {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<CachedService>> {
        self.services.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<CachedSlice>> {
        self.slices
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
            .filter(|s| s.service.as_deref() == Some(service))
            .cloned()
            .collect()
    }

    fn node_region(&self, node: &str) -> Option<String> {
        self.node_regions.get(node).cloned()
    }
}

#[cfg(test)]
mod tests;
