//! Scopes: how a gateway listener, shared by every contract on its port, finds a contract's routes.
//!
//! The listener's HTTP connection manager uses scoped routes (SRDS): it builds a key from the request's
//! `:authority` (the `Host` header) and takes the route configuration of the scope with that key. Each
//! contract has one scope per name of its Service that a client may call, `<service>.<namespace>`,
//! `<service>.<namespace>.svc` and `<service>.<namespace>.svc.cluster.local`, each with the port, as an
//! HTTP client writes the authority (`payment-verify.payments:8080`). Scopes are resources of the contract's
//! own (`csp~<ns>~<name>~<host>`), as its route configuration is, so that a proxy's ACK or NACK of them
//! concerns that contract alone.

use super::*;
use crate::envoy::pb::envoy::config::route::v3::ScopedRouteConfiguration;
use crate::envoy::pb::envoy::config::route::v3::scoped_route_configuration::{Key, key};

/// The name of the scoped routes of every gateway listener (all share one set of scopes).
pub const SCOPED_ROUTES: &str = "csp";

/// The cluster domain of the Service names a scope answers to.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// The authorities (`host:port`) a contract's Service answers to on a gateway.
pub fn hosts(service: &str, namespace: &str, port: u16) -> Vec<String> {
    [
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.{CLUSTER_DOMAIN}"),
    ]
    .into_iter()
    .map(|host| format!("{host}:{port}"))
    .collect()
}

/// The contract's scopes, one per authority of [`hosts`], each sending to the contract's route
/// configuration.
pub(crate) fn scopes(names: &Names<'_>, service: &str, port: u16) -> Vec<ScopedRouteConfiguration> {
    hosts(service, names.namespace, port)
        .into_iter()
        .map(|host| ScopedRouteConfiguration {
            name: format!("{}~{host}", names.base()),
            route_configuration_name: names.base(),
            key: Some(Key { fragments: vec![key::Fragment { r#type: Some(key::fragment::Type::StringKey(host)) }] }),
            ..ScopedRouteConfiguration::default()
        })
        .collect()
}
