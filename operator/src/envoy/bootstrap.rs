//! Envoy bootstraps that run a contract's resources: one that follows the ConfigMap's files
//! (filesystem xDS), for a proxy that mounts them, and one that embeds the resources (static), for
//! `envoy --mode validate` and for a proxy with no files.

use std::net::SocketAddr;

use prost::{Message, Name};

use super::json::{self, JsonError};
use super::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap};
use super::pb::envoy::config::core::v3::Node;
use super::pb::envoy::config::listener::v3::{Listener, filter};
use super::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use crate::envoy::any;
use crate::envoy::path_config_source;
use crate::model::EnvoyResources;

/// A bootstrap could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The listener has no HTTP connection manager to put the routes in.
    #[error("the listener {0:?} has no HTTP connection manager")]
    NoConnectionManager(String),
    /// The listener's HTTP connection manager does not decode.
    #[error("the listener's HTTP connection manager does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The bootstrap could not be written as JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// The bootstrap could not be written as YAML.
    #[error("cannot write the bootstrap as YAML: {0}")]
    Yaml(String),
}

fn node(id: &str) -> Node {
    Node { id: id.to_owned(), cluster: "channel-contracts".to_owned(), ..Node::default() }
}

fn admin(address: SocketAddr) -> Admin {
    Admin {
        address: Some(super::pb::envoy::config::core::v3::Address {
            address: Some(super::pb::envoy::config::core::v3::address::Address::SocketAddress(
                super::pb::envoy::config::core::v3::SocketAddress {
                    address: address.ip().to_string(),
                    port_specifier: Some(super::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                        u32::from(address.port()),
                    )),
                    ..Default::default()
                },
            )),
        }),
        ..Admin::default()
    }
}

/// A bootstrap that takes clusters from `<config_dir>/cds.yaml` and listeners from `<config_dir>/lds.yaml`
/// (whose listener takes its routes from `<config_dir>/rds.yaml`), following changes to the directory;
/// the admin interface listens on `admin`.
pub fn filesystem(config_dir: &str, admin_address: SocketAddr, node_id: &str) -> Bootstrap {
    Bootstrap {
        node: Some(node(node_id)),
        dynamic_resources: Some(bootstrap::DynamicResources {
            cds_config: Some(path_config_source(config_dir, "cds.yaml")),
            lds_config: Some(path_config_source(config_dir, "lds.yaml")),
            ..Default::default()
        }),
        admin: Some(admin(admin_address)),
        ..Bootstrap::default()
    }
}

/// A bootstrap with the resources embedded: the clusters, and the listener with the route configuration
/// inline instead of over RDS.
pub fn embedded(
    resources: &EnvoyResources,
    admin_address: SocketAddr,
    node_id: &str,
) -> Result<Bootstrap, BootstrapError> {
    Ok(Bootstrap {
        node: Some(node(node_id)),
        static_resources: Some(bootstrap::StaticResources {
            clusters: resources.clusters.clone(),
            listeners: vec![with_inline_routes(resources)?],
            ..Default::default()
        }),
        admin: Some(admin(admin_address)),
        ..Bootstrap::default()
    })
}

fn with_inline_routes(resources: &EnvoyResources) -> Result<Listener, BootstrapError> {
    let mut listener = resources.listener.clone();
    let typed_config = listener
        .filter_chains
        .iter_mut()
        .flat_map(|chain| chain.filters.iter_mut())
        .find_map(|f| match &mut f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) if any.type_url.ends_with(".HttpConnectionManager") => Some(any),
            _ => None,
        })
        .ok_or_else(|| BootstrapError::NoConnectionManager(resources.listener.name.clone()))?;
    let mut hcm = HttpConnectionManager::decode(typed_config.value.as_slice())?;
    hcm.route_specifier =
        Some(http_connection_manager::RouteSpecifier::RouteConfig(resources.route_configuration.clone()));
    *typed_config = any(&hcm);
    Ok(listener)
}

/// The bootstrap as YAML (proto3 JSON mapping).
pub fn to_yaml(bootstrap: &Bootstrap) -> Result<String, BootstrapError> {
    yaml_serde::to_string(&json::to_value_any_api(bootstrap)?).map_err(|e| BootstrapError::Yaml(e.to_string()))
}

/// How a proxy reaches the operator's xDS server.
#[derive(Debug, Clone, PartialEq)]
pub struct AdsBootstrap {
    /// `node.id`: the pod name (empty: Envoy's `--service-node` sets it).
    pub node_id: String,
    /// `node.cluster`: the fleet.
    pub fleet: String,
    /// `node.locality.region` (None: the operator reads the region of the Pod's Node).
    pub region: Option<String>,
    /// The namespaces whose contracts the proxy serves (empty: all).
    pub namespaces: Vec<String>,
    /// The namespace of the proxy's Pod, if not the operator's.
    pub pod_namespace: Option<String>,
    /// The address its gateway listeners bind (None: 0.0.0.0).
    pub listen_address: Option<std::net::IpAddr>,
    /// The xDS server: a host name or an IP address, and a port.
    pub xds_host: String,
    /// The xDS server's port.
    pub xds_port: u16,
    /// TLS to the server; None: plaintext.
    pub tls: Option<AdsTls>,
    /// Envoy's admin interface.
    pub admin: SocketAddr,
    /// Delta (incremental) xDS rather than state of the world.
    pub delta: bool,
    /// Where the proxy exports its spans (OTLP over gRPC); None: no tracing.
    pub otlp: Option<Otlp>,
}

/// A proxy's span export: an OpenTelemetry Collector's OTLP gRPC receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// Its host name or IP address.
    pub host: String,
    /// Its port (4317 by convention).
    pub port: u16,
    /// The share of the requests that start a trace, in percent (a request that arrives with a sampled
    /// trace context is always traced).
    pub sampling: f64,
}

/// TLS from a proxy to the xDS server: files in the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdsTls {
    /// The CA that signed the server's certificate.
    pub ca_file: String,
    /// The name the server's certificate must have (SNI); None: the host.
    pub server_name: Option<String>,
    /// The proxy's own certificate and key, for mutual TLS.
    pub client_cert: Option<(String, String)>,
}

/// The cluster of the operator's xDS server in a proxy's bootstrap (also where the proxy sends its access
/// logs: every replica serves the access log service next to ADS).
pub const XDS_CLUSTER: &str = "csp-xds";

/// The node metadata key that lists what a proxy's bootstrap enables beyond plain ADS.
pub const FEATURES_KEY: &str = "csp.contracts.dev/features";

/// The feature of a bootstrap that enables Envoy's internal listeners: the proxy can carry a
/// ContractDrill's fault (its faulted endpoints are reached through an internal listener).
pub const FEATURE_DRILLS: &str = "drills";

/// The feature of a bootstrap that has the [`OTLP_CLUSTER`]: the operator gives the proxy's gateway
/// listeners an OpenTelemetry tracer that exports to it.
pub const FEATURE_TRACING: &str = "tracing";

/// The node metadata key of the tracing share, in percent (e.g. `"1"`, `"100"`).
pub const TRACE_SAMPLING_KEY: &str = "csp.contracts.dev/trace-sampling";

/// The cluster of the OpenTelemetry Collector in a tracing proxy's bootstrap.
pub const OTLP_CLUSTER: &str = "csp-otlp";

/// The proxy's own locality zone: Envoy counts responses per (proxy zone, upstream zone) only when the
/// proxy has a zone, and the contracts' endpoints carry their channel and region in theirs.
pub const PROXY_ZONE: &str = "csp-proxy";

/// The tags the bootstrap extracts from the contracts' cluster stats: the labels of the proxies'
/// Prometheus metrics (`/stats/prometheus`). Cluster names are `csp~<namespace>~<contract>[~<channel>]`;
/// the zone stats of a contract's aggregate are `cluster.<it>.zone.<proxy zone>.<channel>~<region>~<fallback>.…`.
pub const STATS_TAGS: [(&str, &str); 7] = [
    ("csp_namespace", r"^cluster\.csp~(([^.~]+)~)[^.~]+(?:~[^.~]*)*\."),
    ("csp_contract", r"^cluster\.csp~[^.~]+~(([^.~]+)(?:~[^.~]*)*\.)"),
    ("csp_channel", r"^cluster\.csp~[^.~]+~[^.~]+~(([^.~]+))\.(?!zone\.)"),
    ("csp_proxy_zone", r"^cluster\.csp~[^.]+\.zone\.(([^.]+)\.)[^.~]+~[^.~]*~[^.~]+\."),
    ("csp_channel", r"^cluster\.csp~[^.]+\.zone\.[^.]+\.(([^.~]+)~)[^.~]*~[^.~]+\."),
    ("csp_region", r"^cluster\.csp~[^.]+\.zone\.[^.]+\.[^.~]+(~([^.~]*))~[^.~]+\."),
    ("csp_fallback", r"^cluster\.csp~[^.]+\.zone\.[^.]+\.[^.~]+~[^.~]*(~([^.~]+)\.)"),
];

/// A bootstrap that takes everything over ADS from the operator: clusters and listeners, and through
/// the listeners scoped routes and routes.
pub fn ads(options: &AdsBootstrap) -> Bootstrap {
    use super::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use super::pb::envoy::config::core::v3::TypedExtensionConfig;
    use super::pb::envoy::config::core::v3::{
        AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService, Locality,
        TransportSocket, api_config_source, config_source, data_source, grpc_service, transport_socket,
    };
    use super::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint};
    use super::pb::envoy::config::metrics::v3::{StatsConfig, TagSpecifier, tag_specifier};
    use super::pb::envoy::extensions::bootstrap::internal_listener::v3::InternalListener;
    use super::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use super::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, TlsCertificate, UpstreamTlsContext,
    };
    use super::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use super::pb::google::protobuf::{Struct, Value, value};

    let mut metadata = std::collections::HashMap::new();
    let mut put = |key: &str, text: String| {
        metadata.insert(key.to_owned(), Value { kind: Some(value::Kind::StringValue(text)) });
    };
    if !options.namespaces.is_empty() {
        put("csp.contracts.dev/namespaces", options.namespaces.join(","));
    }
    if let Some(address) = options.listen_address {
        put("csp.contracts.dev/listen-address", address.to_string());
    }
    if let Some(namespace) = &options.pod_namespace {
        put("csp.contracts.dev/pod-namespace", namespace.clone());
    }
    let mut features = vec![FEATURE_DRILLS];
    if let Some(otlp) = &options.otlp {
        features.push(FEATURE_TRACING);
        put(TRACE_SAMPLING_KEY, otlp.sampling.to_string());
    }
    put(FEATURES_KEY, features.join(","));
    let node = Node {
        id: options.node_id.clone(),
        cluster: options.fleet.clone(),
        metadata: (!metadata.is_empty()).then_some(Struct { fields: metadata }),
        locality: Some(Locality {
            region: options.region.clone().unwrap_or_default(),
            zone: PROXY_ZONE.to_owned(),
            ..Locality::default()
        }),
        ..Node::default()
    };
    let ads_source = || ConfigSource {
        resource_api_version: ApiVersion::V3.into(),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    };
    let file = |path: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        watched_directory: None,
    };
    let transport_socket = options.tls.as_ref().map(|tls| {
        let context = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: tls
                    .client_cert
                    .iter()
                    .map(|(cert, key)| TlsCertificate {
                        certificate_chain: Some(file(cert)),
                        private_key: Some(file(key)),
                        ..TlsCertificate::default()
                    })
                    .collect(),
                validation_context_type: Some(ValidationContextType::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(file(&tls.ca_file)),
                    ..Default::default()
                })),
                alpn_protocols: vec!["h2".to_owned()],
                ..CommonTlsContext::default()
            }),
            sni: tls.server_name.clone().unwrap_or_else(|| options.xds_host.clone()),
            ..UpstreamTlsContext::default()
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".to_owned(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
        }
    });
    // A gRPC cluster of one endpoint: resolved by DNS unless it is an IP address.
    let grpc_cluster = |name: &str, host: &str, port: u16| {
        let resolved_by_dns = host.parse::<std::net::IpAddr>().is_err();
        Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                if resolved_by_dns { cluster::DiscoveryType::StrictDns } else { cluster::DiscoveryType::Static }.into(),
            )),
            connect_timeout: Some(super::pb::google::protobuf::Duration { seconds: 2, nanos: 0 }),
            typed_extension_protocol_options: [(HttpProtocolOptions::full_name(), any(&super::explicit_http2()))]
                .into_iter()
                .collect(),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name.to_owned(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                            super::pb::envoy::config::endpoint::v3::Endpoint {
                                address: Some(socket(host, port)),
                                ..Default::default()
                            },
                        )),
                        ..LbEndpoint::default()
                    }],
                    ..LocalityLbEndpoints::default()
                }],
                ..ClusterLoadAssignment::default()
            }),
            ..Cluster::default()
        }
    };
    let xds_cluster = Cluster { transport_socket, ..grpc_cluster(XDS_CLUSTER, &options.xds_host, options.xds_port) };
    let mut clusters = vec![xds_cluster];
    if let Some(otlp) = &options.otlp {
        clusters.push(grpc_cluster(OTLP_CLUSTER, &otlp.host, otlp.port));
    }
    Bootstrap {
        node: Some(node),
        dynamic_resources: Some(bootstrap::DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: if options.delta {
                    api_config_source::ApiType::DeltaGrpc
                } else {
                    api_config_source::ApiType::Grpc
                }
                .into(),
                transport_api_version: ApiVersion::V3.into(),
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                        cluster_name: XDS_CLUSTER.to_owned(),
                        ..Default::default()
                    })),
                    ..GrpcService::default()
                }],
                set_node_on_first_message_only: true,
                ..ApiConfigSource::default()
            }),
            cds_config: Some(ads_source()),
            lds_config: Some(ads_source()),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources { clusters, ..Default::default() }),
        admin: Some(admin(options.admin)),
        bootstrap_extensions: vec![TypedExtensionConfig {
            name: "envoy.bootstrap.internal_listener".to_owned(),
            typed_config: Some(any(&InternalListener::default())),
        }],
        stats_config: Some(StatsConfig {
            stats_tags: STATS_TAGS
                .iter()
                .map(|(name, regex)| TagSpecifier {
                    tag_name: (*name).to_owned(),
                    tag_value: Some(tag_specifier::TagValue::Regex((*regex).to_owned())),
                })
                .collect(),
            ..StatsConfig::default()
        }),
        ..Bootstrap::default()
    }
}

fn socket(host: &str, port: u16) -> super::pb::envoy::config::core::v3::Address {
    use super::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..SocketAddress::default()
        })),
    }
}
