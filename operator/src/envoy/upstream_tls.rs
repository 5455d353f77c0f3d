//! `envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`: TLS of a cluster's upstream
//! connections (a proxy's connection to the operator's xDS server).

pub use super::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, UpstreamTlsContext, common_tls_context::ValidationContextType,
};

/// The transport socket name of TLS.
pub const TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
