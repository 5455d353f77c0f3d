//! Typed Envoy messages to the proto3 JSON mapping, the form Envoy reads from YAML and JSON files.
//!
//! A message is encoded with prost, decoded as a `prost_reflect::DynamicMessage` against the descriptors
//! of the Envoy API ([`super::descriptors`]; for the operator's resources only the files they need) and
//! serialized by
//! prost-reflect, which follows the proto3 JSON mapping to the letter:
//! - `google.protobuf.Any` becomes `{"@type": "type.googleapis.com/…", <the message's fields inline>}`,
//!   at any depth (resources of a DiscoveryResponse, `typed_config` of filters and cluster types,
//!   `typed_extension_protocol_options`). An `Any` whose type has no descriptor is an error, never an
//!   opaque blob.
//! - Durations are strings (`"0.120s"`), wrappers are bare values (`max_requests: 1024`), enums are names,
//!   64-bit integers are strings, fields left at their default are omitted.
//!
//! Field names are the proto names (`snake_case`), as in Envoy's own documentation and examples. Object
//! keys are sorted, so the same message always gives the same text, whatever the order in which protobuf
//! map fields were filled.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use prost::{Message, Name};
use prost_reflect::prost_types::{FileDescriptorProto, FileDescriptorSet};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

use super::descriptors::ENVOY_API;

/// A message could not be turned into JSON. Only a bug in this crate causes it (a message type without a
/// descriptor), never user input.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot write {message} as proto3 JSON: {reason}")]
pub struct JsonError {
    /// The message's full protobuf name.
    pub message: String,
    /// What failed.
    pub reason: String,
}

/// The messages the operator's resources are made of, and those they embed in an `Any`: the descriptor
/// pool for them holds only their files and those files' imports (the bootstrap and its imports are most
/// of the rest).
fn resource_roots() -> Vec<String> {
    use super::pb::envoy;
    vec![
        envoy::service::discovery::v3::DiscoveryResponse::full_name(),
        envoy::config::cluster::v3::Cluster::full_name(),
        envoy::config::listener::v3::Listener::full_name(),
        envoy::config::route::v3::RouteConfiguration::full_name(),
        envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::full_name(),
        envoy::extensions::filters::http::router::v3::Router::full_name(),
        envoy::extensions::clusters::aggregate::v3::ClusterConfig::full_name(),
        envoy::extensions::upstreams::http::v3::HttpProtocolOptions::full_name(),
        envoy::extensions::filters::http::fault::v3::HttpFault::full_name(),
        envoy::extensions::filters::http::header_mutation::v3::HeaderMutation::full_name(),
        envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec::full_name(),
        envoy::extensions::access_loggers::grpc::v3::HttpGrpcAccessLogConfig::full_name(),
        envoy::config::trace::v3::OpenTelemetryConfig::full_name(),
    ]
}

/// The descriptors of the files that define `roots` (all files when `None`) and of everything they import.
fn load_pool(roots: Option<&[String]>) -> Result<DescriptorPool, String> {
    let set = FileDescriptorSet::decode(ENVOY_API).map_err(|e| e.to_string())?;
    let mut files = set.file;
    if let Some(roots) = roots {
        let defines_root = |f: &FileDescriptorProto| {
            f.message_type.iter().any(|m| roots.contains(&format!("{}.{}", f.package(), m.name())))
        };
        let by_name: HashMap<&str, &FileDescriptorProto> = files.iter().map(|f| (f.name(), f)).collect();
        let mut keep: BTreeSet<&str> = BTreeSet::new();
        let mut pending: Vec<&str> = files.iter().filter(|f| defines_root(f)).map(|f| f.name()).collect();
        while let Some(name) = pending.pop() {
            if keep.insert(name) {
                let file = by_name.get(name).ok_or_else(|| format!("{name} is imported but missing"))?;
                pending.extend(file.dependency.iter().map(String::as_str));
            }
        }
        let keep: BTreeSet<String> = keep.into_iter().map(str::to_owned).collect();
        files.retain(|f| keep.contains(f.name()));
    }
    DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: files }).map_err(|e| e.to_string())
}

static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| load_pool(Some(&resource_roots())));
static FULL_POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| load_pool(None));

fn pool(full: bool) -> Result<&'static DescriptorPool, String> {
    let pool = if full { &*FULL_POOL } else { &*POOL };
    pool.as_ref().map_err(|e| format!("the Envoy descriptor pool does not load: {e}"))
}

/// The proto3 JSON of a message of the operator's resources (see [`resource_roots`]), with sorted object
/// keys.
pub fn to_value<M: prost::Message + prost::Name>(message: &M) -> Result<Value, JsonError> {
    to_value_in(message, false)
}

/// [`to_value`] for any message of the xDS API (a bootstrap, say), against the descriptors of all of it.
pub fn to_value_any_api<M: prost::Message + prost::Name>(message: &M) -> Result<Value, JsonError> {
    to_value_in(message, true)
}

fn to_value_in<M: prost::Message + prost::Name>(message: &M, full: bool) -> Result<Value, JsonError> {
    let name = M::full_name();
    let fail = |reason: String| JsonError { message: name.clone(), reason };
    let descriptor = pool(full)
        .map_err(fail)?
        .get_message_by_name(&name)
        .ok_or_else(|| fail("no descriptor for this message type".to_owned()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| fail(format!("re-decoding failed: {e}")))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    let value =
        dynamic.serialize_with_options(serde_json::value::Serializer, &options).map_err(|e| fail(e.to_string()))?;
    Ok(sorted(value))
}

/// The same value with the keys of every object sorted (`@type` sorts first).
pub fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect::<Map<_, _>>())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use crate::envoy::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use crate::envoy::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig;
    use crate::envoy::pb::envoy::extensions::filters::http::router::v3::Router;
    use crate::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, http_filter,
    };
    use crate::envoy::pb::google::protobuf::{Any, Duration, UInt32Value};
    use serde_json::json;

    use super::*;

    fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
        Any { type_url: M::type_url(), value: m.encode_to_vec() }
    }

    #[test]
    fn any_is_inlined_with_its_type_at_every_depth() {
        let hcm = HttpConnectionManager {
            stat_prefix: "s".into(),
            http_filters: vec![HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
                ..HttpFilter::default()
            }],
            ..HttpConnectionManager::default()
        };
        let value = to_value(&any(&hcm)).expect("json");
        assert_eq!(
            value,
            json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                }],
                "stat_prefix": "s"
            })
        );
    }

    #[test]
    fn extension_messages_outside_xds_api_are_inlined_too() {
        let cluster = Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(cluster::CustomClusterType {
                name: "envoy.clusters.aggregate".into(),
                typed_config: Some(any(&ClusterConfig { clusters: vec!["a".into(), "b".into()] })),
            })),
            typed_extension_protocol_options: [(
                crate::envoy::upstream_http::EXTENSION_NAME.to_owned(),
                any(&crate::envoy::upstream_http::explicit_http2()),
            )]
            .into_iter()
            .collect(),
            ..Cluster::default()
        };
        let value = to_value(&cluster).expect("json");
        assert_eq!(
            value["cluster_type"]["typed_config"],
            json!({"@type": "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig", "clusters": ["a", "b"]})
        );
        assert_eq!(
            value["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"],
            json!({
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            })
        );
    }

    #[test]
    fn well_known_types_use_their_json_forms() {
        let cluster = Cluster {
            name: "c".into(),
            connect_timeout: Some(Duration { seconds: 0, nanos: 120_000_000 }),
            per_connection_buffer_limit_bytes: Some(UInt32Value { value: 7 }),
            ..Cluster::default()
        };
        let value = to_value(&cluster).expect("json");
        assert_eq!(value, json!({"connect_timeout": "0.120s", "name": "c", "per_connection_buffer_limit_bytes": 7}));
    }

    #[test]
    fn an_any_of_an_unknown_type_is_an_error_not_a_blob() {
        let cluster = Cluster {
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(cluster::CustomClusterType {
                name: "x".into(),
                typed_config: Some(Any { type_url: "type.googleapis.com/no.such.Message".into(), value: vec![] }),
            })),
            ..Cluster::default()
        };
        assert!(to_value(&cluster).is_err());
    }

    #[test]
    fn keys_are_sorted_with_type_first() {
        let value = sorted(json!({"b": 1, "a": {"z": 1, "@type": "t", "c": [{"y": 1, "x": 2}]}}));
        assert_eq!(
            serde_json::to_string(&value).expect("text"),
            r#"{"a":{"@type":"t","c":[{"x":2,"y":1}],"z":1},"b":1}"#
        );
    }

    #[test]
    fn the_resource_pool_holds_only_what_the_resources_need() {
        let (small, full) = (pool(false).expect("pool"), pool(true).expect("full pool"));
        for root in resource_roots() {
            assert!(small.get_message_by_name(&root).is_some(), "{root} missing");
        }
        assert!(small.get_message_by_name("google.protobuf.Any").is_some());
        let (n, all) = (small.files().len(), full.files().len());
        assert!(n < all, "{n} of {all} files");
        assert!(small.get_message_by_name("envoy.config.bootstrap.v3.Bootstrap").is_none());
        assert!(full.get_message_by_name("envoy.config.bootstrap.v3.Bootstrap").is_some());
    }
}
