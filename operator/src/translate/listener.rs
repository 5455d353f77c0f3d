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
