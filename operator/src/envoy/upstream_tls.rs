//! `envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext` and `CommonTlsContext`, which `xds-api`
//! 0.2 does not generate (their file, `tls.proto`, is not among those it compiles; the messages they hold,
//! `TlsCertificate` and `CertificateValidationContext`, are). Written here as prost messages with the
//! field numbers of Envoy's `tls.proto`, limited to the fields a proxy needs to reach the operator's xDS
//! server over TLS; [`file_descriptor`] describes the same subset for the proto3 JSON of bootstraps.

use prost_reflect::prost_types::{
    DescriptorProto, FieldDescriptorProto, FileDescriptorProto, OneofDescriptorProto,
    field_descriptor_proto::{Label, Type},
};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{CertificateValidationContext, TlsCertificate};

const PACKAGE: &str = "envoy.extensions.transport_sockets.tls.v3";

/// The transport socket name of TLS.
pub const TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// TLS of a cluster's upstream connections (a subset of Envoy's message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpstreamTlsContext {
    /// Certificates, validation, ALPN.
    #[prost(message, optional, tag = "1")]
    pub common_tls_context: Option<CommonTlsContext>,
    /// The server name (SNI) sent, and checked against the server's certificate when the validation
    /// context does not say otherwise.
    #[prost(string, tag = "2")]
    pub sni: String,
}

impl prost::Name for UpstreamTlsContext {
    const NAME: &'static str = "UpstreamTlsContext";
    const PACKAGE: &'static str = PACKAGE;
    fn full_name() -> String {
        format!("{PACKAGE}.UpstreamTlsContext")
    }
    fn type_url() -> String {
        format!("type.googleapis.com/{PACKAGE}.UpstreamTlsContext")
    }
}

/// `CommonTlsContext` (a subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommonTlsContext {
    /// The client certificate, for mutual TLS.
    #[prost(message, repeated, tag = "2")]
    pub tls_certificates: Vec<TlsCertificate>,
    /// How the server's certificate is checked.
    #[prost(oneof = "ValidationContextType", tags = "3")]
    pub validation_context_type: Option<ValidationContextType>,
    /// ALPN protocols offered.
    #[prost(string, repeated, tag = "4")]
    pub alpn_protocols: Vec<String>,
}

/// `CommonTlsContext.validation_context_type`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValidationContextType {
    /// Inline validation (a trusted CA).
    #[prost(message, tag = "3")]
    ValidationContext(CertificateValidationContext),
}

fn field(name: &str, json: &str, number: i32, ty: Type, label: Label, type_name: Option<&str>) -> FieldDescriptorProto {
    FieldDescriptorProto {
        name: Some(name.to_owned()),
        json_name: Some(json.to_owned()),
        number: Some(number),
        label: Some(label.into()),
        r#type: Some(ty.into()),
        type_name: type_name.map(str::to_owned),
        ..FieldDescriptorProto::default()
    }
}

/// The descriptor of the subset above, as protoc would write it for Envoy's file.
pub fn file_descriptor() -> FileDescriptorProto {
    let mut validation = field(
        "validation_context",
        "validationContext",
        3,
        Type::Message,
        Label::Optional,
        Some(&format!(".{PACKAGE}.CertificateValidationContext")),
    );
    validation.oneof_index = Some(0);
    let common = DescriptorProto {
        name: Some("CommonTlsContext".to_owned()),
        field: vec![
            field(
                "tls_certificates",
                "tlsCertificates",
                2,
                Type::Message,
                Label::Repeated,
                Some(&format!(".{PACKAGE}.TlsCertificate")),
            ),
            validation,
            field("alpn_protocols", "alpnProtocols", 4, Type::String, Label::Repeated, None),
        ],
        oneof_decl: vec![OneofDescriptorProto { name: Some("validation_context_type".to_owned()), options: None }],
        ..DescriptorProto::default()
    };
    let upstream = DescriptorProto {
        name: Some("UpstreamTlsContext".to_owned()),
        field: vec![
            field(
                "common_tls_context",
                "commonTlsContext",
                1,
                Type::Message,
                Label::Optional,
                Some(&format!(".{PACKAGE}.CommonTlsContext")),
            ),
            field("sni", "sni", 2, Type::String, Label::Optional, None),
        ],
        ..DescriptorProto::default()
    };
    FileDescriptorProto {
        name: Some("envoy/extensions/transport_sockets/tls/v3/tls.proto".to_owned()),
        package: Some(PACKAGE.to_owned()),
        dependency: vec!["envoy/extensions/transport_sockets/tls/v3/common.proto".to_owned()],
        message_type: vec![upstream, common],
        syntax: Some("proto3".to_owned()),
        ..FileDescriptorProto::default()
    }
}
