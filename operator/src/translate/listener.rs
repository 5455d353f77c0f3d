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
    http_listener(names.base(), address.ip(), address.port(), routes)
}

/// A listener `name` on `ip:port` with one HTTP connection manager (stats under `name`, tracing on, the
/// router filter) whose routes come from `routes`.
fn http_listener(name: String, ip: IpAddr, port: u16, routes: http_connection_manager::RouteSpecifier) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.clone(),
        route_specifier: Some(routes),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
            ..HttpFilter::default()
        }],
        tracing: Some(http_connection_manager::Tracing::default()),
        ..HttpConnectionManager::default()
    };
    Listener {
        name,
        address: Some(socket_address(&ip.to_string(), u32::from(port))),
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

/// The listener of a gateway proxy for every contract on `port`: `csp~port~<port>` on `address:port`, an
/// HTTP connection manager whose routes come from the scope that matches the request's authority
/// ([`scope`](super::scope)), scopes and route configurations both over ADS.
pub fn gateway_listener(address: IpAddr, port: u16) -> Listener {
    http_listener(format!("csp~port~{port}"), address, port, scoped_routes_by_header(":authority"))
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
pub fn fault_listener() -> Listener {
    use crate::envoy::pb::envoy::config::listener::v3::listener::{InternalListenerConfig, ListenerSpecifier};
    use crate::envoy::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    let mut listener = http_listener(
        super::fault::FAULT_LISTENER.to_owned(),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        0,
        scoped_routes_by_header(super::fault::DRILL_HEADER),
    );
    listener.address = None;
    listener.listener_specifier = Some(ListenerSpecifier::InternalListener(InternalListenerConfig::default()));
    for chain in &mut listener.filter_chains {
        for filter in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(config)) = &filter.config_type else { continue };
            let Ok(mut hcm) = <HttpConnectionManager as prost::Message>::decode(config.value.as_slice()) else {
                continue;
            };
            hcm.tracing = None;
            hcm.http_filters.insert(
                0,
                HttpFilter {
                    name: super::fault::FAULT_FILTER.to_owned(),
                    config_type: Some(http_filter::ConfigType::TypedConfig(any(&HttpFault::default()))),
                    ..HttpFilter::default()
                },
            );
            filter.config_type = Some(filter::ConfigType::TypedConfig(any(&hcm)));
        }
    }
    listener
}
