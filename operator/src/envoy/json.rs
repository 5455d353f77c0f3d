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
        envoy::extensions::filters::http::lua::v3::Lua::full_name(),
        envoy::extensions::filters::http::lua::v3::LuaPerRoute::full_name(),
        envoy::extensions::access_loggers::grpc::v3::HttpGrpcAccessLogConfig::full_name(),
        envoy::extensions::access_loggers::file::v3::FileAccessLog::full_name(),
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
    fn extension_messages_are_inlined_too() {
        let cluster = Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(cluster::CustomClusterType {
                name: "envoy.clusters.aggregate".into(),
                typed_config: Some(any(&ClusterConfig { clusters: vec!["a".into(), "b".into()] })),
            })),
            typed_extension_protocol_options: [(
                crate::envoy::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions::full_name(),
                any(&crate::envoy::explicit_http2()),
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
    fn the_extensions_of_the_next_features_are_inlined_at_every_depth() {
        use crate::envoy::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
        use crate::envoy::pb::envoy::config::core::v3::{DataSource, GrpcService, data_source, grpc_service};
        use crate::envoy::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
        use crate::envoy::pb::envoy::config::trace::v3::{OpenTelemetryConfig, tracing};
        use crate::envoy::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
        use crate::envoy::pb::envoy::extensions::access_loggers::grpc::v3::{
            CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig,
        };
        use crate::envoy::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
        use crate::envoy::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
        use crate::envoy::pb::envoy::extensions::filters::http::lua::v3::Lua;
        use crate::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager;
        use crate::envoy::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};

        let grpc = |cluster: &str| GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                cluster_name: cluster.into(),
                ..grpc_service::EnvoyGrpc::default()
            })),
            ..GrpcService::default()
        };
        let http_filter = |name: &str, config: Any| HttpFilter {
            name: name.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(config)),
            ..HttpFilter::default()
        };
        let log = |name: &str, config: Any| AccessLog {
            name: name.into(),
            config_type: Some(access_log::ConfigType::TypedConfig(config)),
            ..AccessLog::default()
        };
        let fault = HttpFault {
            delay: Some(FaultDelay {
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(Duration {
                    seconds: 1,
                    nanos: 0,
                })),
                ..FaultDelay::default()
            }),
            ..HttpFault::default()
        };
        let lua = Lua {
            default_source_code: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString("function envoy_on_request(h) end".into())),
                ..DataSource::default()
            }),
            ..Lua::default()
        };
        let grpc_log = HttpGrpcAccessLogConfig {
            common_config: Some(CommonGrpcAccessLogConfig {
                log_name: "l".into(),
                grpc_service: Some(grpc("als")),
                ..CommonGrpcAccessLogConfig::default()
            }),
            ..HttpGrpcAccessLogConfig::default()
        };
        let hcm = HttpConnectionManager {
            stat_prefix: "s".into(),
            http_filters: vec![
                http_filter("envoy.filters.http.fault", any(&fault)),
                http_filter("envoy.filters.http.lua", any(&lua)),
                http_filter("envoy.filters.http.router", any(&Router::default())),
            ],
            access_log: vec![
                log(
                    "envoy.access_loggers.file",
                    any(&FileAccessLog { path: "/dev/stdout".into(), ..Default::default() }),
                ),
                log("envoy.access_loggers.http_grpc", any(&grpc_log)),
            ],
            tracing: Some(http_connection_manager::Tracing {
                provider: Some(tracing::Http {
                    name: "envoy.tracers.opentelemetry".into(),
                    config_type: Some(tracing::http::ConfigType::TypedConfig(any(&OpenTelemetryConfig {
                        grpc_service: Some(grpc("otel")),
                        service_name: "proxy".into(),
                        ..OpenTelemetryConfig::default()
                    }))),
                }),
                custom_tags: vec![CustomTag {
                    tag: "csp.channel".into(),
                    r#type: Some(custom_tag::Type::Value("%UPSTREAM_METADATA(csp:channel)%".into())),
                }],
                ..http_connection_manager::Tracing::default()
            }),
            ..HttpConnectionManager::default()
        };
        let listener = Listener {
            name: "l".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
                }],
                ..FilterChain::default()
            }],
            ..Listener::default()
        };
        let value = to_value(&any(&listener)).expect("json");
        let hcm = &value["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(
            hcm["http_filters"][0]["typed_config"],
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault", "delay": {"fixed_delay": "1s"}})
        );
        assert_eq!(
            hcm["http_filters"][1]["typed_config"],
            json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": "function envoy_on_request(h) end"}
            })
        );
        assert_eq!(
            hcm["access_log"],
            json!([
                {"name": "envoy.access_loggers.file", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": "/dev/stdout"
                }},
                {"name": "envoy.access_loggers.http_grpc", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
                    "common_config": {"grpc_service": {"envoy_grpc": {"cluster_name": "als"}}, "log_name": "l"}
                }}
            ])
        );
        assert_eq!(
            hcm["tracing"],
            json!({
                "custom_tags": [{"tag": "csp.channel", "value": "%UPSTREAM_METADATA(csp:channel)%"}],
                "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}},
                    "service_name": "proxy"
                }}
            })
        );
    }

    #[test]
    fn bootstrap_extensions_are_inlined_against_the_whole_api() {
        use crate::envoy::pb::envoy::config::bootstrap::v3::Bootstrap;
        use crate::envoy::pb::envoy::config::core::v3::TypedExtensionConfig;
        use crate::envoy::pb::envoy::config::metrics::v3::{StatsConfig, TagSpecifier, tag_specifier};
        use crate::envoy::pb::envoy::extensions::bootstrap::internal_listener::v3::InternalListener;

        let bootstrap = Bootstrap {
            bootstrap_extensions: vec![TypedExtensionConfig {
                name: "envoy.bootstrap.internal_listener".into(),
                typed_config: Some(any(&InternalListener { buffer_size_kb: Some(UInt32Value { value: 64 }) })),
            }],
            stats_config: Some(StatsConfig {
                stats_tags: vec![TagSpecifier {
                    tag_name: "csp_channel".into(),
                    tag_value: Some(tag_specifier::TagValue::Regex("^csp\\.(.+?)\\.".into())),
                }],
                ..StatsConfig::default()
            }),
            ..Bootstrap::default()
        };
        assert!(to_value(&bootstrap).is_err(), "bootstraps are outside the resources' pool");
        let value = to_value_any_api(&bootstrap).expect("json");
        assert_eq!(
            value,
            json!({
                "bootstrap_extensions": [{"name": "envoy.bootstrap.internal_listener", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener",
                    "buffer_size_kb": 64
                }}],
                "stats_config": {"stats_tags": [{"regex": "^csp\\.(.+?)\\.", "tag_name": "csp_channel"}]}
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
