//! The protobuf descriptors of the Envoy API files whose messages the operator writes as proto3 JSON
//! ([`super::json`]): the ConfigMap's files, `render`, bootstraps.
//!
//! `envoy-types` ships the prost structs and the `.proto` files they were generated from, but no
//! descriptor set. [`ENVOY_API`] is that set for [`FILES`] and everything they import, compiled from
//! `envoy-types`' own `.proto` files by the pure-Rust compiler `protox` (without source info), committed so
//! that a build needs no compiler. A test compiles it again and fails when it differs (after a bump of
//! `envoy-types`, or a change of [`FILES`]); regenerate with
//! `UPDATE_DESCRIPTORS=1 cargo test -p channel-contracts-operator --lib envoy::descriptors`.

/// The descriptor set (binary `google.protobuf.FileDescriptorSet`).
pub static ENVOY_API: &[u8] = include_bytes!("envoy-api.binpb");

/// The files compiled (with their imports): those the operator's resources and bootstraps are made of,
/// and the extensions they carry in an `Any`.
pub const FILES: &[&str] = &[
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/route/v3/scoped_route.proto",
    "envoy/config/metrics/v3/stats.proto",
    "envoy/config/trace/v3/opentelemetry.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/grpc/v3/als.proto",
    "envoy/extensions/bootstrap/internal_listener/v3/internal_listener.proto",
    "envoy/extensions/clusters/aggregate/v3/cluster.proto",
    "envoy/extensions/filters/common/fault/v3/fault.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/header_mutation/v3/header_mutation.proto",
    "envoy/extensions/filters/http/lua/v3/lua.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/upstream_codec/v3/upstream_codec.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
];

/// The include folders of `envoy-types`' `proto/` folder.
#[cfg(test)]
const INCLUDES: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "opentelemetry-proto",
    "client_model",
    "cel-spec/proto",
    "ratelimit/api",
];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// `envoy-types`' folder, as cargo resolved it for this workspace.
    fn envoy_types_dir() -> PathBuf {
        let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
        let manifest = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "envoy-types")
            .and_then(|p| p["manifest_path"].as_str())
            .expect("envoy-types is a dependency");
        PathBuf::from(manifest).parent().expect("its folder").to_path_buf()
    }

    fn compile() -> Vec<u8> {
        let proto = envoy_types_dir().join("proto");
        let includes: Vec<PathBuf> = INCLUDES.iter().map(|i| proto.join(i)).collect();
        let mut compiler = protox::Compiler::new(&includes).expect("the include folders exist");
        compiler.include_imports(true).include_source_info(false);
        compiler.open_files(FILES).expect("the Envoy API compiles");
        compiler.encode_file_descriptor_set()
    }

    #[test]
    fn the_committed_descriptors_are_envoy_types_own() {
        let fresh = compile();
        if std::env::var_os("UPDATE_DESCRIPTORS").is_some() {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/envoy/envoy-api.binpb");
            std::fs::write(&path, &fresh).expect("write the descriptors");
            return;
        }
        assert!(
            fresh == ENVOY_API,
            "src/envoy/envoy-api.binpb is not what envoy-types' .proto files compile to; regenerate it with \
             UPDATE_DESCRIPTORS=1 cargo test -p channel-contracts-operator --lib envoy::descriptors"
        );
    }
}
