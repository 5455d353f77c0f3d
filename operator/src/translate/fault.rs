//! A ContractDrill's fault in the proxies: an outage of some of a contract's endpoints, as the data plane
//! sees a real one, so that the data plane's own failover acts on it.
//!
//! Envoy's fault filter answers for the route (a local reply: no retry, no ejection, no failover), and it
//! cannot run as an upstream filter, so it cannot fail one region's endpoints only. Instead, while a
//! fault is in force, the endpoints under it are reached through an internal listener of the proxy
//! ([`FAULT_LISTENER`], Envoy's `envoy_internal_address`): that listener's connection manager runs the
//! fault filter with the drill's abort and/or delay for the drill's requests, and sends what it lets
//! through to the real endpoints ([`passthrough_cluster`]). To the contract's clusters those endpoints
//! answer 503s or answer late, exactly as failing pods would: retries, outlier detection, ejection, the
//! next priority (region) and the aggregate's next channel all act as they would in an outage.
//!
//! The resources are the contract's own (so that an ACK or NACK of them is the contract's): the
//! passthrough cluster, a route configuration with the fault, and a scope keyed by the drill run that the
//! listener picks by the request's `x-csp-drill` header, which the contract's routes add during the drill.
//! The listener itself is the proxy's (like the gateway listeners): it is served to proxies whose
//! bootstrap enables internal listeners ([`FAULT_LISTENER`]).

use super::*;
use crate::envoy::pb::envoy::config::core::v3::EnvoyInternalAddress;
use crate::envoy::pb::envoy::config::route::v3::ScopedRouteConfiguration;
use crate::envoy::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use crate::envoy::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use crate::envoy::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use crate::model::ActiveFault;

/// The proxy's internal listener that faulted endpoints are reached through.
pub const FAULT_LISTENER: &str = "csp~fault";

/// The request header that marks a drill's requests: the contract's routes add it during the drill, the
/// fault listener picks the drill's scope by it, and the proxies log every try of the requests that carry
/// it.
pub const DRILL_HEADER: &str = "x-csp-drill";

/// The HTTP filter name of Envoy's fault filter.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// `csp~<ns>~<name>~~drill`: the name of a contract's fault resources (a channel name is never empty, so
/// it is no channel's cluster).
pub(crate) fn resource_name(names: &Names<'_>) -> String {
    format!("{}~~drill", names.base())
}

/// The address of a faulted endpoint: the fault listener, with the endpoint's own address as its id.
pub(crate) fn internal_address(address: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::EnvoyInternalAddress(EnvoyInternalAddress {
            endpoint_id: format!("{address}:{port}"),
            address_name_specifier: Some(core::envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                FAULT_LISTENER.to_owned(),
            )),
        })),
    }
}

/// `percent` as a fraction of a million (Envoy's finest).
fn fraction(percent: f64) -> FractionalPercent {
    let millionths = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    FractionalPercent { numerator: millionths, denominator: fractional_percent::DenominatorType::Million.into() }
}

/// The fault filter's configuration for the drill: its abort and/or delay.
pub(crate) fn http_fault(fault: &ActiveFault) -> Result<HttpFault, TranslateError> {
    let abort = fault.fault.abort.as_ref().map(|a| FaultAbort {
        percentage: Some(fraction(a.percent)),
        error_type: Some(fault_abort::ErrorType::HttpStatus(u32::try_from(a.http_status).unwrap_or(503))),
        ..FaultAbort::default()
    });
    let delay = match &fault.fault.delay {
        Some(d) => Some(FaultDelay {
            percentage: Some(fraction(d.percent)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(pb_duration(
                "spec.fault.delay.duration",
                &d.duration,
            )?)),
        }),
        None => None,
    };
    Ok(HttpFault { abort, delay, ..HttpFault::default() })
}

/// The cluster of the real endpoints under the fault: what the fault listener lets through goes there.
/// No outlier detection or retries of its own: the contract's clusters judge these endpoints.
pub(crate) fn passthrough_cluster(spec: &ChannelContractSpec, names: &Names<'_>, endpoints: &[Published]) -> Cluster {
    use crate::envoy::pb::envoy::config::cluster::v3::cluster;
    let name = resource_name(names);
    let dns = endpoints.iter().any(|e| e.dns);
    let lb_endpoints = endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                crate::envoy::pb::envoy::config::endpoint::v3::Endpoint {
                    address: Some(socket_address(&e.address, u32::from(e.port))),
                    ..Default::default()
                },
            )),
            ..LbEndpoint::default()
        })
        .collect();
    let mut c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            if dns { cluster::DiscoveryType::StrictDns } else { cluster::DiscoveryType::Static }.into(),
        )),
        connect_timeout: Some(protobuf::Duration { seconds: 1, nanos: 0 }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints { lb_endpoints, ..LocalityLbEndpoints::default() }],
            ..ClusterLoadAssignment::default()
        }),
        ..Cluster::default()
    };
    if matches!(spec.protocol, Protocol::Http2 | Protocol::Grpc) {
        c.typed_extension_protocol_options.insert(HttpProtocolOptions::full_name(), any(&explicit_http2()));
    }
    c
}

/// The route configuration the fault listener uses for the drill's requests: the drill's fault (as the
/// fault filter's per-route configuration), then the passthrough cluster. No timeout of its own: the
/// contract's route's deadline and per-try timeout apply to the tries that reach it.
pub(crate) fn route_configuration(
    names: &Names<'_>,
    fault: &ActiveFault,
) -> Result<RouteConfiguration, TranslateError> {
    use crate::envoy::pb::envoy::config::route::v3::route;
    let name = resource_name(names);
    let config = any(&http_fault(fault)?);
    Ok(RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: name.clone(),
            domains: vec!["*".to_owned()],
            routes: vec![Route {
                name: name.clone(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                    ..RouteMatch::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(name)),
                    timeout: Some(protobuf::Duration { seconds: 0, nanos: 0 }),
                    ..RouteAction::default()
                })),
                typed_per_filter_config: std::collections::HashMap::from([(FAULT_FILTER.to_owned(), config)]),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    })
}

/// The scope that sends the drill's requests (header `x-csp-drill: <run>`) at the fault listener to the
/// drill's route configuration.
pub(crate) fn scope(names: &Names<'_>, fault: &ActiveFault) -> ScopedRouteConfiguration {
    use crate::envoy::pb::envoy::config::route::v3::scoped_route_configuration::{Key, key::Fragment, key::fragment};
    ScopedRouteConfiguration {
        name: resource_name(names),
        route_configuration_name: resource_name(names),
        key: Some(Key { fragments: vec![Fragment { r#type: Some(fragment::Type::StringKey(fault.run.clone())) }] }),
        ..ScopedRouteConfiguration::default()
    }
}
