//! Envoy bootstraps that run a contract's resources: one that follows the ConfigMap's files
//! (filesystem xDS), for a proxy that mounts them, and one that embeds the resources (static), for
//! `envoy --mode validate` and for a proxy with no files.

use std::net::SocketAddr;

use prost::Message;

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
