//! Hand-written OpenAPI fragments for fields whose shape schemars cannot say alone: validated duration
//! strings, DNS labels, region lists and condition lists keyed by `type`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{Schema, SchemaGenerator, json_schema};

/// A Go/Kubernetes duration such as `120ms`, `1.5s` or `2m`: CEL's `duration()` reads the same strings.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";
/// An RFC 1123 DNS label: what Service names, channel names and selectors are.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A label value: what regions are (`topology.kubernetes.io/region`).
pub const LABEL_VALUE_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

pub(crate) fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 32,
        "pattern": DURATION_PATTERN,
    })
}

pub(crate) fn dns_label_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 63,
        "pattern": DNS_LABEL_PATTERN,
    })
}

pub(crate) fn region_list_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 32,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "pattern": LABEL_VALUE_PATTERN,
        },
    })
}

pub(crate) fn namespace_list_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 256,
        "items": {
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "pattern": DNS_LABEL_PATTERN,
        },
    })
}

pub(crate) fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}
