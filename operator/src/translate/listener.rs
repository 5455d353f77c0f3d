//! The listener: an HTTP connection manager that takes its routes over RDS.

use super::*;

/// The listener: an HTTP connection manager (HTTP/1.1 and HTTP/2 downstream, detected) whose routes come
/// over RDS from `<config dir>/rds.yaml`, watching the directory so that a ConfigMap update (kubelet swaps
/// a symlink) is picked up; tracing on, so that the routes' tags reach a tracer the bootstrap configures;
/// the router filter.
pub(crate) fn listener(spec: &ChannelContractSpec, names: &Names<'_>, options: &ProxyOptions) -> Listener {
    let address = options.listener.unwrap_or_else(|| {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), u16::try_from(spec.port).unwrap_or_default())
    });
    let routes = http_connection_manager::RouteSpecifier::Rds(Rds {
        config_source: Some(path_config_source(&options.config_dir, "rds.yaml")),
        route_config_name: names.base(),
    });
    let hcm = connection_manager(names.base(), routes);
    http_listener(names.base(), address.ip(), address.port(), &hcm)
}

/// An HTTP connection manager (stats under `name`, tracing on, the router filter) whose routes come from
/// `routes`.
fn connection_manager(name: String, routes: http_connection_manager::RouteSpecifier) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: name,
        route_specifier: Some(routes),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..HttpFilter::default()
        }],
        tracing: Some(http_connection_manager::Tracing::default()),
        ..HttpConnectionManager::default()
    }
}

/// A listener `name` on `ip:port` with the one HTTP connection manager `hcm`.
fn http_listener(name: String, ip: IpAddr, port: u16, hcm: &HttpConnectionManager) -> Listener {
    Listener {
        name,
        address: Some(socket_address(&ip.to_string(), u32::from(port))),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(hcm))),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

/// The listener of a gateway proxy for every contract on `port`: `csp~port~<port>` on `address:port`, an
/// HTTP connection manager whose routes come from the scope that matches the request's authority
/// ([`scope`](super::scope)), scopes and route configurations both over ADS. With `tracing` (the share of
/// requests that start a trace, in hundredths of a percent), an OpenTelemetry tracer exports the spans
/// (with the routes' `csp.*` tags) to the bootstrap's OTLP cluster.
pub fn gateway_listener(address: IpAddr, port: u16, tracing: Option<u32>) -> Listener {
    let name = format!("csp~port~{port}");
    let mut hcm = connection_manager(name.clone(), scoped_routes_by_header(":authority"));
    if let Some(share) = tracing {
        hcm.tracing = Some(otlp_tracing(share));
    }
    hcm.access_log = vec![grpc_access_log(SLO_LOG, None, &[])];
    for http in &mut hcm.http_filters {
        if http.name == "envoy.filters.http.router" {
            http.config_type = Some(http_filter::ConfigType::TypedConfig(any(&Router {
                upstream_log: vec![drill_upstream_log()],
                ..Router::default()
            })));
        }
    }
    http_listener(name, address, port, &hcm)
}

/// The service name of the gateway proxies' spans.
pub const TRACE_SERVICE: &str = "csp-gateway";

/// Tracing with an OpenTelemetry tracer that exports over gRPC to the bootstrap's OTLP cluster; `share`
/// of the requests (hundredths of a percent) start a trace, and every request whose trace context arrives
/// sampled is traced.
fn otlp_tracing(share: u32) -> http_connection_manager::Tracing {
    use crate::envoy::pb::envoy::config::core::v3::{GrpcService, grpc_service};
    use crate::envoy::pb::envoy::config::trace::v3::OpenTelemetryConfig;
    use crate::envoy::pb::envoy::config::trace::v3::tracing;
    use crate::envoy::pb::envoy::r#type::v3::Percent;
    let config = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                cluster_name: crate::envoy::bootstrap::OTLP_CLUSTER.to_owned(),
                ..Default::default()
            })),
            ..GrpcService::default()
        }),
        service_name: TRACE_SERVICE.to_owned(),
        ..OpenTelemetryConfig::default()
    };
    http_connection_manager::Tracing {
        random_sampling: Some(Percent { value: f64::from(share) / 100.0 }),
        provider: Some(tracing::Http {
            name: "envoy.tracers.opentelemetry".to_owned(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(any(&config))),
        }),
        ..http_connection_manager::Tracing::default()
    }
}

/// The log name of the gateway's access log of every request (see `publish::xds::als`).
pub const SLO_LOG: &str = "csp-slo";

/// The log name of the router's log of every try of a drill's request.
pub const DRILL_LOG: &str = "csp-drill";

/// Every try of a drill's requests (those with the `x-csp-drill` header, which the contract's routes add
/// while its drill runs), logged over gRPC to the operator: when the try started and ended, its status,
/// and the endpoint that took it (channel, region, whether under the fault). The drill's switchover is
/// measured from them (`observe::drill`).
fn drill_upstream_log() -> crate::envoy::pb::envoy::config::accesslog::v3::AccessLog {
    use crate::envoy::pb::envoy::config::accesslog::v3::{AccessLogFilter, HeaderFilter, access_log_filter};
    let present = HeaderMatcher {
        name: super::fault::DRILL_HEADER.to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
        ..HeaderMatcher::default()
    };
    let only_drills = AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::HeaderFilter(HeaderFilter {
            header: Some(present),
        })),
    };
    grpc_access_log(DRILL_LOG, Some(only_drills), &[super::fault::DRILL_HEADER])
}

/// Every request of a gateway listener, logged over gRPC to the operator (cluster `csp-xds`, which every
/// bootstrap of the operator's has): its route (the contract), status, response flags, duration, and the
/// channel, region and fallback of the endpoint that served it (custom tags from its metadata). The
/// operator makes every contract's SLO metrics of them. Envoy buffers and sends them in batches, every
/// second at most.
fn grpc_access_log(
    log_name: &str,
    filter: Option<crate::envoy::pb::envoy::config::accesslog::v3::AccessLogFilter>,
    headers: &[&str],
) -> crate::envoy::pb::envoy::config::accesslog::v3::AccessLog {
    use crate::envoy::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
    use crate::envoy::pb::envoy::config::core::v3::{ApiVersion, GrpcService, grpc_service};
    use crate::envoy::pb::envoy::extensions::access_loggers::grpc::v3::{
        CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig,
    };
    let host = |tag: &str, key: &str| super::route::host_metadata_tag(tag, key, "");
    let config = HttpGrpcAccessLogConfig {
        common_config: Some(CommonGrpcAccessLogConfig {
            log_name: log_name.to_owned(),
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                    cluster_name: crate::envoy::bootstrap::XDS_CLUSTER.to_owned(),
                    ..Default::default()
                })),
                ..GrpcService::default()
            }),
            transport_api_version: ApiVersion::V3.into(),
            buffer_flush_interval: Some(protobuf::Duration { seconds: 1, nanos: 0 }),
            custom_tags: vec![
                host("csp.channel", "channel"),
                host("csp.region", "region"),
                host("csp.fallback", "fallback"),
                host("csp.faulted", "faulted"),
            ],
            ..CommonGrpcAccessLogConfig::default()
        }),
        additional_request_headers_to_log: headers.iter().map(|h| (*h).to_owned()).collect(),
        ..HttpGrpcAccessLogConfig::default()
    };
    AccessLog {
        name: "envoy.access_loggers.http_grpc".to_owned(),
        filter,
        config_type: Some(access_log::ConfigType::TypedConfig(any(&config))),
    }
}

/// Routes from the scope (over ADS) whose key is the value of request header `header`.
fn scoped_routes_by_header(header: &str) -> http_connection_manager::RouteSpecifier {
    use crate::envoy::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion, ConfigSource, config_source};
    use crate::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        ScopedRds, ScopedRoutes, scoped_routes,
    };
    use scoped_routes::scope_key_builder::{FragmentBuilder, fragment_builder};
    let ads = || ConfigSource {
        resource_api_version: ApiVersion::V3.into(),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    };
    let key = FragmentBuilder {
        r#type: Some(fragment_builder::Type::HeaderValueExtractor(fragment_builder::HeaderValueExtractor {
            name: header.to_owned(),
            // The whole value: neither an authority nor a drill run has commas.
            element_separator: ",".to_owned(),
            extract_type: Some(fragment_builder::header_value_extractor::ExtractType::Index(0)),
        })),
    };
    http_connection_manager::RouteSpecifier::ScopedRoutes(ScopedRoutes {
        name: super::scope::SCOPED_ROUTES.to_owned(),
        scope_key_builder: Some(scoped_routes::ScopeKeyBuilder { fragments: vec![key] }),
        rds_config_source: Some(ads()),
        config_specifier: Some(scoped_routes::ConfigSpecifier::ScopedRds(ScopedRds {
            scoped_rds_config_source: Some(ads()),
            ..ScopedRds::default()
        })),
    })
}

/// The proxy's internal listener that the endpoints under a drill's fault are reached through
/// ([`super::fault`]): an HTTP connection manager with Envoy's fault filter (configured per route, by
/// each drill's fault route configuration) and the router, whose routes come from the scope keyed by the
/// request's `x-csp-drill` header. It shares the gateway listeners' scoped routes: the keys cannot meet
/// (an authority is never a drill run, which has slashes).
///
/// A request that finds no route here is one that met a faulted endpoint before the proxy had the drill's
/// scope and routes (the cluster update that points the endpoints here can arrive first): it is answered
/// 503 like the fault, not 404, so that the client's retries and the outlier detection treat it as the
/// outage it stands for (`make bench-drills` saw such 404s reach clients at the start of drills).
pub fn fault_listener() -> Listener {
    use crate::envoy::pb::envoy::config::accesslog::v3::{AccessLogFilter, ResponseFlagFilter, access_log_filter};
    use crate::envoy::pb::envoy::config::listener::v3::listener::{InternalListenerConfig, ListenerSpecifier};
    use crate::envoy::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    use crate::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        LocalReplyConfig, ResponseMapper,
    };
    use crate::envoy::pb::google::protobuf::UInt32Value;
    let name = super::fault::FAULT_LISTENER.to_owned();
    let mut hcm = connection_manager(name.clone(), scoped_routes_by_header(super::fault::DRILL_HEADER));
    hcm.tracing = None;
    hcm.local_reply_config = Some(LocalReplyConfig {
        mappers: vec![ResponseMapper {
            filter: Some(AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::ResponseFlagFilter(ResponseFlagFilter {
                    flags: vec!["NR".to_owned()],
                })),
            }),
            status_code: Some(UInt32Value { value: 503 }),
            ..ResponseMapper::default()
        }],
        ..LocalReplyConfig::default()
    });
    hcm.http_filters.insert(
        0,
        HttpFilter {
            name: super::fault::FAULT_FILTER.to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&HttpFault::default()))),
            ..HttpFilter::default()
        },
    );
    let mut listener = http_listener(name, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, &hcm);
    listener.address = None;
    listener.listener_specifier = Some(ListenerSpecifier::InternalListener(InternalListenerConfig::default()));
    listener
}
