//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`, the one Envoy message this crate needs that
//! `xds-api` 0.2 does not generate (it compiles only the core xDS protos). It is written here as a prost
//! message with the field numbers of Envoy's `http_protocol_options.proto`, limited to the fields we set,
//! so that its binary encoding is the real one (what an xDS server sends). [`file_descriptor`] describes the
//! same subset for the proto3 JSON conversion in [`super::json`].

use prost_reflect::prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, OneofDescriptorProto,
    field_descriptor_proto::{Label, Type},
};
use xds_api::pb::envoy::config::core::v3::{Http1ProtocolOptions, Http2ProtocolOptions};

/// The key of `Cluster.typed_extension_protocol_options` that Envoy reads these options from.
pub const EXTENSION_NAME: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

const PACKAGE: &str = "envoy.extensions.upstreams.http.v3";

/// HTTP protocol options of a cluster's upstream connections (a subset of Envoy's message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpProtocolOptions {
    /// Which protocol to speak upstream.
    #[prost(oneof = "UpstreamProtocolOptions", tags = "3")]
    pub upstream_protocol_options: Option<UpstreamProtocolOptions>,
}

impl prost::Name for HttpProtocolOptions {
    const NAME: &'static str = "HttpProtocolOptions";
    const PACKAGE: &'static str = PACKAGE;

    fn full_name() -> String {
        EXTENSION_NAME.to_owned()
    }

    // prost's default has no domain (`/envoy…`); Envoy, like every protobuf runtime, wants this one.
    fn type_url() -> String {
        format!("type.googleapis.com/{EXTENSION_NAME}")
    }
}

/// `HttpProtocolOptions.upstream_protocol_options`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum UpstreamProtocolOptions {
    /// Always the given protocol, whatever the downstream speaks.
    #[prost(message, tag = "3")]
    ExplicitHttpConfig(ExplicitHttpConfig),
}

/// `HttpProtocolOptions.ExplicitHttpConfig`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExplicitHttpConfig {
    /// The protocol.
    #[prost(oneof = "ProtocolConfig", tags = "1, 2")]
    pub protocol_config: Option<ProtocolConfig>,
}

/// `HttpProtocolOptions.ExplicitHttpConfig.protocol_config`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ProtocolConfig {
    /// HTTP/1.1.
    #[prost(message, tag = "1")]
    HttpProtocolOptions(Http1ProtocolOptions),
    /// HTTP/2 (prior knowledge on plaintext).
    #[prost(message, tag = "2")]
    Http2ProtocolOptions(Http2ProtocolOptions),
}

impl HttpProtocolOptions {
    /// Upstream HTTP/2 with Envoy's default HTTP/2 settings.
    pub fn explicit_http2() -> Self {
        Self {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())),
            })),
        }
    }
}

fn message_field(name: &str, json_name: &str, number: i32, type_name: &str, oneof_index: i32) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.to_owned()),
        json_name: Some(json_name.to_owned()),
        number: Some(number),
        label: Some(Label::Optional.into()),
        r#type: Some(Type::Message.into()),
        type_name: Some(type_name.to_owned()),
        oneof_index: Some(oneof_index),
        ..FieldDescriptorProto::default()
    }
}

/// The descriptor of the subset above, as protoc would write it for Envoy's file.
pub fn file_descriptor() -> FileDescriptorProto {
    let explicit = DescriptorProto {
        name: Some("ExplicitHttpConfig".to_owned()),
        field: vec![
            message_field(
                "http_protocol_options",
                "httpProtocolOptions",
                1,
                ".envoy.config.core.v3.Http1ProtocolOptions",
                0,
            ),
            message_field(
                "http2_protocol_options",
                "http2ProtocolOptions",
                2,
                ".envoy.config.core.v3.Http2ProtocolOptions",
                0,
            ),
        ],
        oneof_decl: vec![OneofDescriptorProto { name: Some("protocol_config".to_owned()), options: None }],
        ..DescriptorProto::default()
    };
    let options = DescriptorProto {
        name: Some("HttpProtocolOptions".to_owned()),
        field: vec![message_field(
            "explicit_http_config",
            "explicitHttpConfig",
            3,
            &format!(".{PACKAGE}.HttpProtocolOptions.ExplicitHttpConfig"),
            0,
        )],
        nested_type: vec![explicit],
        oneof_decl: vec![OneofDescriptorProto { name: Some("upstream_protocol_options".to_owned()), options: None }],
        ..DescriptorProto::default()
    };
    FileDescriptorProto {
        name: Some("envoy/extensions/upstreams/http/v3/http_protocol_options.proto".to_owned()),
        package: Some(PACKAGE.to_owned()),
        dependency: vec!["envoy/config/core/v3/protocol.proto".to_owned()],
        message_type: vec![options],
        syntax: Some("proto3".to_owned()),
        ..FileDescriptorProto::default()
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
        assert_eq!(HttpProtocolOptions::explicit_http2().encode_to_vec(), vec![0x1a, 0x02, 0x12, 0x00]);
        let back = HttpProtocolOptions::decode(&[0x1a, 0x02, 0x12, 0x00][..]).expect("decodes");
        assert_eq!(back, HttpProtocolOptions::explicit_http2());
    }
}
