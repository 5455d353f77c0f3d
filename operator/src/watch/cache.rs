//! What the operator caches of the cluster's Services and EndpointSlices: the few fields
//! [`endpoints::gather`](super::endpoints::gather) reads, and nothing else.
//!
//! The operator watches every Service and EndpointSlice of the cluster, and most of them belong to no
//! contract. As `k8s-openapi` structs a 6-endpoint EndpointSlice takes ~4 KiB of memory and a Service
//! ~2.5 KiB (object references, conditions, hints, zones, IP families, cluster IPs, timestamps, uid,
//! owner references, labels and annotations, all parsed); with 15,000 of each that was ~110 MiB, most of
//! the operator's memory. These types read the same JSON (so the watches and the tests feed them the
//! objects the API serves) and keep:
//!
//! - of both: `metadata.name`, `metadata.namespace` and `metadata.resourceVersion` (the reflector's key
//!   and the watcher's bookmark), in an otherwise empty `ObjectMeta` (the controller drops the
//!   resourceVersion once the watcher has read it);
//! - of a Service: its ports (name, port, numeric targetPort), or its `externalName` when its type is
//!   `ExternalName`;
//! - of an EndpointSlice: its Service (label `kubernetes.io/service-name`), its region label
//!   (`topology.kubernetes.io/region`), its ports (name, port) and, per endpoint, the first address, the
//!   ready condition and the Node.
//!
//! Strings are `Box<str>` and lists boxed slices: nothing here grows after it is read.
//!
//! The operator's own ConfigMaps are cached the same way ([`CachedConfigMap`]): their name, owners and a
//! fingerprint of what they publish, instead of ~10 KiB of files each.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use serde::Deserialize;

use crate::publish::configmap;

/// The EndpointSlice label that names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service, as cached.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "wire::Service")]
pub struct CachedService {
    /// Name, namespace and resourceVersion only.
    pub metadata: ObjectMeta,
    /// Its ports, or its DNS name.
    pub shape: ServiceShape,
}

/// What a Service routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceShape {
    /// A Service with ports (ClusterIP, NodePort, LoadBalancer, headless): its endpoints are in its
    /// EndpointSlices.
    Ports(Box<[ServicePort]>),
    /// `type: ExternalName`: one DNS name (empty if the Service has none).
    ExternalName(Box<str>),
}

/// A port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `name` (empty when unnamed).
    pub name: Box<str>,
    /// `port`.
    pub port: i32,
    /// `targetPort` when it is a number.
    pub target_port: Option<i32>,
}

/// One of the operator's ConfigMaps, as cached: its name, owners and [`configmap::fingerprint`], not its
/// ~10 KiB of files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "wire::ConfigMap")]
pub struct CachedConfigMap {
    /// Name, namespace, resourceVersion and owner references (the controller maps it to its contract).
    pub metadata: ObjectMeta,
    /// What it publishes.
    pub fingerprint: u64,
}

impl From<wire::ConfigMap> for CachedConfigMap {
    fn from(cm: wire::ConfigMap) -> Self {
        let wire::ConfigMap { metadata, data } = cm;
        let owners = metadata.owner_references.unwrap_or_default();
        let fingerprint =
            configmap::fingerprint_of(data.as_ref(), metadata.labels.as_ref(), metadata.annotations.as_ref(), &owners);
        Self {
            metadata: ObjectMeta {
                name: metadata.name,
                namespace: metadata.namespace,
                resource_version: metadata.resource_version,
                owner_references: (!owners.is_empty()).then_some(owners),
                ..ObjectMeta::default()
            },
            fingerprint,
        }
    }
}

/// An EndpointSlice, as cached.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "wire::EndpointSlice")]
pub struct CachedSlice {
    /// Name, namespace and resourceVersion only.
    pub metadata: ObjectMeta,
    /// Its Service: the label `kubernetes.io/service-name`.
    pub service: Option<Box<str>>,
    /// The label `topology.kubernetes.io/region` (endpoints imported from another cluster carry it).
    pub region: Option<Box<str>>,
    /// Its ports.
    pub ports: Box<[SlicePort]>,
    /// Its endpoints that have an address.
    pub endpoints: Box<[SliceEndpoint]>,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// `name` (empty when unnamed; it matches the Service port of the same name).
    pub name: Box<str>,
    /// `port`; none means "all ports".
    pub port: Option<i32>,
}

/// An endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its first address.
    pub address: Box<str>,
    /// `conditions.ready`, unset counting as ready (as the API says).
    pub ready: bool,
    /// `nodeName`.
    pub node: Option<Box<str>>,
}

fn meta(wire: wire::Meta) -> ObjectMeta {
    ObjectMeta {
        name: wire.name,
        namespace: wire.namespace,
        resource_version: wire.resource_version,
        ..ObjectMeta::default()
    }
}

impl From<wire::Service> for CachedService {
    fn from(service: wire::Service) -> Self {
        let spec = service.spec.unwrap_or_default();
        let shape = if spec.type_.as_deref() == Some("ExternalName") {
            ServiceShape::ExternalName(spec.external_name.unwrap_or_default().into())
        } else {
            ServiceShape::Ports(
                spec.ports
                    .into_iter()
                    .flatten()
                    .map(|p| ServicePort {
                        name: p.name.unwrap_or_default().into(),
                        port: p.port,
                        target_port: match p.target_port {
                            Some(IntOrString::Int(port)) => Some(port),
                            _ => None,
                        },
                    })
                    .collect(),
            )
        };
        Self { metadata: meta(service.metadata), shape }
    }
}

impl From<wire::EndpointSlice> for CachedSlice {
    fn from(slice: wire::EndpointSlice) -> Self {
        let wire::EndpointSlice { mut metadata, ports, endpoints } = slice;
        let mut labels = metadata.labels.take().unwrap_or_default();
        let mut label = |key: &str| labels.remove(key).map(String::into_boxed_str);
        let (service, region) = (label(SERVICE_NAME_LABEL), label(crds::REGION_LABEL));
        let ports =
            ports.into_iter().flatten().map(|p| SlicePort { name: p.name.unwrap_or_default().into(), port: p.port });
        let endpoints = endpoints.into_iter().flatten().filter_map(|e| {
            Some(SliceEndpoint {
                address: e.addresses.into_iter().next()?.into(),
                ready: e.conditions.and_then(|c| c.ready).unwrap_or(true),
                node: e.node_name.map(String::into_boxed_str),
            })
        });
        Self { metadata: meta(metadata), service, region, ports: ports.collect(), endpoints: endpoints.collect() }
    }
}

/// The JSON the API serves, read field by field: everything else is skipped by the parser, never
/// allocated.
mod wire {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::{BTreeMap, Deserialize, IntOrString};

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Meta {
        pub name: Option<String>,
        pub namespace: Option<String>,
        pub resource_version: Option<String>,
        pub labels: Option<BTreeMap<String, String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ConfigMapMeta {
        pub name: Option<String>,
        pub namespace: Option<String>,
        pub resource_version: Option<String>,
        pub labels: Option<BTreeMap<String, String>>,
        pub annotations: Option<BTreeMap<String, String>>,
        pub owner_references: Option<Vec<OwnerReference>>,
    }

    #[derive(Debug, Deserialize)]
    pub struct ConfigMap {
        pub metadata: ConfigMapMeta,
        pub data: Option<BTreeMap<String, String>>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Service {
        pub metadata: Meta,
        pub spec: Option<ServiceSpec>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    pub struct ServiceSpec {
        #[serde(rename = "type")]
        pub type_: Option<String>,
        pub external_name: Option<String>,
        pub ports: Option<Vec<ServicePort>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ServicePort {
        pub name: Option<String>,
        pub port: i32,
        pub target_port: Option<IntOrString>,
    }

    #[derive(Debug, Deserialize)]
    pub struct EndpointSlice {
        pub metadata: Meta,
        pub ports: Option<Vec<Port>>,
        pub endpoints: Option<Vec<Endpoint>>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Port {
        pub name: Option<String>,
        pub port: Option<i32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Endpoint {
        #[serde(default)]
        pub addresses: Vec<String>,
        pub conditions: Option<Conditions>,
        pub node_name: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    pub struct Conditions {
        pub ready: Option<bool>,
    }
}

/// The API resource of a cached type: the same as the full type's, so that `Api<CachedService>` lists
/// and watches `/api/v1/services`.
macro_rules! same_resource_as {
    ($cached:ty, $full:ty) => {
        impl Resource for $cached {
            const API_VERSION: &'static str = <$full as Resource>::API_VERSION;
            const GROUP: &'static str = <$full as Resource>::GROUP;
            const KIND: &'static str = <$full as Resource>::KIND;
            const VERSION: &'static str = <$full as Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str = <$full as Resource>::URL_PATH_SEGMENT;
            type Scope = NamespaceResourceScope;
        }

        impl Metadata for $cached {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

same_resource_as!(CachedService, k8s_openapi::api::core::v1::Service);
same_resource_as!(CachedSlice, k8s_openapi::api::discovery::v1::EndpointSlice);
same_resource_as!(CachedConfigMap, k8s_openapi::api::core::v1::ConfigMap);

#[cfg(test)]
mod tests;
