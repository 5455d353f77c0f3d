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

/// A DNS subdomain (RFC 1123): what most object names are, e.g. a ChannelContract's.
pub const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

pub(crate) fn object_name_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
        "pattern": DNS_SUBDOMAIN_PATTERN,
    })
}

pub(crate) fn region_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 63,
        "pattern": LABEL_VALUE_PATTERN,
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

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
pub const LABEL_KEY_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
/// A label value, which may also be empty.
pub const LABEL_VALUE_OR_EMPTY_PATTERN: &str = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$";
/// The operators of a label selector requirement.
pub const SELECTOR_OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// A `metav1.LabelSelector` whose every part the API server checks, so that a typo is refused instead of
/// stored: the operator is one of [`SELECTOR_OPERATORS`], `In`/`NotIn` carry values and
/// `Exists`/`DoesNotExist` carry none, keys are label keys and values label values (k8s-openapi's schema
/// leaves all of that free). Bounded sizes keep the rules' CEL cost within the API server's budget.
pub(crate) fn label_selector_schema(_: &mut SchemaGenerator) -> Schema {
    let key_rule = format!("self.all(k, size(k) <= 317 && k.matches(r'{LABEL_KEY_PATTERN}'))");
    json_schema!({
        "type": "object",
        "description": "A label selector (matchLabels and matchExpressions, all ANDed), as in a Deployment's selector.",
        "properties": {
            "matchLabels": {
                "type": "object",
                "description": "{key: value} pairs; each is the requirement `key In (value)`.",
                "maxProperties": 64,
                "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_OR_EMPTY_PATTERN},
                "x-kubernetes-validations": [{
                    "rule": key_rule,
                    "message": "matchLabels keys must be label keys ([prefix/]name, name at most 63 characters of letters, digits, '-', '_' and '.')",
                }],
            },
            "matchExpressions": {
                "type": "array",
                "description": "Requirements, all ANDed.",
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "description": "A requirement: key, operator, and values for In and NotIn.",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "type": "string",
                            "description": "The label key the requirement applies to.",
                            "minLength": 1,
                            "maxLength": 317,
                            "pattern": LABEL_KEY_PATTERN,
                        },
                        "operator": {
                            "type": "string",
                            "description": "In, NotIn, Exists or DoesNotExist.",
                            "enum": SELECTOR_OPERATORS,
                        },
                        "values": {
                            "type": "array",
                            "description": "The values: at least one for In and NotIn, none for Exists and DoesNotExist.",
                            "maxItems": 64,
                            "items": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_OR_EMPTY_PATTERN},
                        },
                    },
                    "x-kubernetes-validations": [
                        {
                            "rule": "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
                            "message": "operator In and NotIn need at least one value in values",
                        },
                        {
                            "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
                            "message": "operator Exists and DoesNotExist take no values",
                        },
                    ],
                },
            },
        },
    })
}
