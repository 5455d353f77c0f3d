//! Typed Envoy messages to the proto3 JSON mapping, the form Envoy reads from YAML and JSON files.
//!
//! A message is encoded with prost, decoded as a `prost_reflect::DynamicMessage` against the descriptors
//! of the whole xDS API (shipped by `xds-api`, plus [`super::upstream_http`]) and serialized by
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

use std::sync::LazyLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

use super::upstream_http;

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

static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    let mut pool = DescriptorPool::decode(xds_api::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())?;
    pool.add_file_descriptor_proto(upstream_http::file_descriptor()).map_err(|e| e.to_string())?;
    Ok(pool)
});

fn pool() -> Result<&'static DescriptorPool, String> {
    POOL.as_ref().map_err(|e| format!("the Envoy descriptor pool does not load: {e}"))
}

/// The proto3 JSON of a message, with sorted object keys.
pub fn to_value<M: prost::Message + prost::Name>(message: &M) -> Result<Value, JsonError> {
    let name = M::full_name();
    let fail = |reason: String| JsonError { message: name.clone(), reason };
    let descriptor = pool()
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
    use serde_json::json;
    use xds_api::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use xds_api::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig;
    use xds_api::pb::envoy::extensions::filters::http::router::v3::Router;
    use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, HttpFilter, http_filter,
    };
    use xds_api::pb::google::protobuf::{Any, Duration, UInt32Value};

    use super::*;
    use crate::envoy::upstream_http::HttpProtocolOptions;

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
                any(&HttpProtocolOptions::explicit_http2()),
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
}
