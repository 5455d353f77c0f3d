//! Envoy v3 resources as typed protobuf messages, their proto3 JSON, and the filesystem-xDS files.
//!
//! # Which Rust types for Envoy's API, and why `xds-api`
//!
//! The resources are built with the prost structs of [`xds_api`] (`xds_api::pb::envoy::…`), re-exported
//! here as [`pb`]. The alternative, `envoy-types`, has the same kind of prost/tonic structs but no JSON and
//! no descriptors, so the files of the ConfigMap could only have been written by hand, which is exactly
//! what typed resources are meant to prevent. `xds-api` ships the file descriptor set of the whole xDS API
//! (feature `descriptor`), and that is what the JSON is made from.
//!
//! Its own JSON (feature `pbjson`) is *not* used, after checking it against what Envoy reads:
//! - an `Any` is inlined (`{"@type": …, fields}`) only for nine top-level types (Cluster, Listener,
//!   HttpConnectionManager, …); any other `Any`, such as the router filter's `typed_config`, the aggregate
//!   cluster's `ClusterConfig` or `HttpProtocolOptions`, comes out as `{"@type": …, "value": [bytes]}`,
//!   which Envoy refuses;
//! - it compiles `google.protobuf` itself, so durations and wrappers come out as objects
//!   (`{"seconds": "5"}`, `{"value": 1024}`) instead of `"5s"` and `1024`: Envoy 1.40 happens to accept
//!   that, but it is not the proto3 JSON mapping and it is hard to read.
//!
//! So [`json`] encodes each typed message with prost and prints it through `prost-reflect` against those
//! descriptors: canonical proto3 JSON, `Any` inlined at every depth (tested there and by real Envoy).
//!
//! `xds-api` 0.2 lacks one message the contract needs, `envoy.extensions.upstreams.http.v3
//! .HttpProtocolOptions` (upstream HTTP/2); [`upstream_http`] defines the subset we use with Envoy's field
//! numbers, and its descriptor.
//!
//! The same structs serve a future xDS server: `xds-api` also has the tonic ADS service bindings, and an
//! `Any` for it is `prost::Message::encode` of these values.

pub mod bootstrap;
pub mod descriptors;
pub mod json;
pub mod upstream_http;
pub mod upstream_tls;

pub use envoy_types::pb;

use pb::envoy::config::core::v3::{ApiVersion, ConfigSource, PathConfigSource, WatchedDirectory, config_source};
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
