//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`: which protocol a cluster speaks upstream, and
//! the upstream HTTP filters its requests pass through.

use super::pb::envoy::config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions};
pub use super::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
pub use super::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};

/// The key of `Cluster.typed_extension_protocol_options` that Envoy reads these options from.
pub const EXTENSION_NAME: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Upstream HTTP/2 (prior knowledge) with Envoy's default HTTP/2 settings.
pub fn explicit_http2() -> HttpProtocolOptions {
    explicit(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default()))
}

/// Upstream HTTP/1.1 with Envoy's default settings.
pub fn explicit_http1() -> HttpProtocolOptions {
    explicit(ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default()))
}

fn explicit(protocol: ProtocolConfig) -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(protocol),
        })),
        ..HttpProtocolOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use prost::{Message, Name};

    use super::*;

    #[test]
    fn type_url_is_envoys() {
        assert_eq!(HttpProtocolOptions::type_url(), format!("type.googleapis.com/{EXTENSION_NAME}"));
    }

    #[test]
    fn explicit_http2_encodes_with_envoys_field_numbers() {
        // Field 3 (explicit_http_config, length-delimited) holding field 2 (http2_protocol_options, empty).
        assert_eq!(explicit_http2().encode_to_vec(), vec![0x1a, 0x02, 0x12, 0x00]);
    }
}
