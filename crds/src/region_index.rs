//! `ContractRegionIndex`: what ChannelContracts declare for the Services they govern, published by the
//! webhook's leader for the ValidatingAdmissionPolicies it generates (CEL sees only the object under
//! admission and one parameter object: this one). Generated data; nobody edits it.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The name of the one object the webhook keeps.
pub const REGION_INDEX_NAME: &str = "contract-regions";

/// What ChannelContracts declare for the Services they govern.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "csp.contracts.dev",
    version = "v1alpha1",
    kind = "ContractRegionIndex",
    plural = "contractregionindexes",
    singular = "contractregionindex",
    category = "csp",
    derive = "PartialEq",
    doc = "What ChannelContracts declare for the Services they govern: the parameters of the ValidatingAdmissionPolicies that the webhook generates for ContractPolicies with spec.enforcement ValidatingAdmissionPolicy or Auto. Written by the webhook; not for editing.",
    printcolumn = r#"{"name":"Services","type":"integer","jsonPath":".spec.count","description":"Services that ChannelContracts govern"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ContractRegionIndexSpec {
    /// `<namespace>.<service>` → the contracts that govern it, sorted by name, with their regions:
    /// `<contract>=<region>,<region>;<contract>=…`.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// How many Services `services` holds.
    #[serde(default)]
    pub count: i64,
}
