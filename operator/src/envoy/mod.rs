//! Envoy v3 resources as typed protobuf messages, their proto3 JSON, and the filesystem-xDS files.
//!
//! # Which Rust types for Envoy's API
//!
//! The resources are built with the prost structs of `envoy-types` (`envoy_types::pb::envoy::…`),
//! re-exported here as [`pb`]: the whole Envoy API, extensions included (the fault filter, gRPC access
//! logs, internal listeners, tracers, upstream HTTP filters), with its tonic service bindings. It was
//! `xds-api` 0.2 before, which compiles only the core xDS files of an older API: every extension a contract
//! needed had to be written by hand (upstream HTTP/2 and TLS were), and a newer field such as
//! `CustomTag.value` could not be set at all.
//!
//! `envoy-types` has no descriptors and no JSON. The proto3 JSON of the ConfigMap's files and of `render`
//! is printed by [`json`] through `prost-reflect`, against descriptors compiled from `envoy-types`' own
//! `.proto` files ([`descriptors`]): canonical proto3 JSON, `Any` inlined at every depth (tested there and
//! by real Envoy).

pub mod bootstrap;
pub mod descriptors;
pub mod json;

pub use envoy_types::pb;

use pb::envoy::config::core::v3::{
    ApiVersion, ConfigSource, Http1ProtocolOptions, Http2ProtocolOptions, PathConfigSource, WatchedDirectory,
    config_source,
};
use pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use pb::google::protobuf::Any;

/// Wraps a message in a `google.protobuf.Any`.
pub fn any<M: prost::Message + prost::Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

/// A config source that reads `<dir>/<file>` and follows moves in `<dir>`.
pub fn path_config_source(dir: &str, file: &str) -> ConfigSource {
    let dir = dir.trim_end_matches('/');
    let dir = if dir.is_empty() { "/" } else { dir };
    ConfigSource {
        resource_api_version: ApiVersion::V3.into(),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::PathConfigSource(PathConfigSource {
            path: format!("{}/{file}", dir.trim_end_matches('/')),
            watched_directory: Some(WatchedDirectory { path: dir.to_owned(), ..WatchedDirectory::default() }),
            ..PathConfigSource::default()
        })),
        ..ConfigSource::default()
    }
}

/// A cluster's upstream protocol options (`Cluster.typed_extension_protocol_options`, keyed by the message's
/// full name): HTTP/2 with prior knowledge and Envoy's default HTTP/2 settings.
pub fn explicit_http2() -> HttpProtocolOptions {
    explicit_http(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default()))
}

/// [`explicit_http2`] for HTTP/1.1 with Envoy's default settings.
pub fn explicit_http1() -> HttpProtocolOptions {
    explicit_http(ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default()))
}

fn explicit_http(protocol: ProtocolConfig) -> HttpProtocolOptions {
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
    fn upstream_protocol_options_are_keyed_by_their_full_name() {
        assert_eq!(
            HttpProtocolOptions::type_url(),
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
    }

    #[test]
    fn explicit_http_encodes_with_envoys_field_numbers() {
        // Field 3 (explicit_http_config, length-delimited) holding field 2 (http2_protocol_options, empty)
        // or field 1 (http_protocol_options, empty).
        assert_eq!(explicit_http2().encode_to_vec(), vec![0x1a, 0x02, 0x12, 0x00]);
        assert_eq!(explicit_http1().encode_to_vec(), vec![0x1a, 0x02, 0x0a, 0x00]);
    }
}
