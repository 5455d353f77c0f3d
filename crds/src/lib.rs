//! The Channel Contracts API (`csp.contracts.dev/v1alpha1`): the `ChannelContract`, `ContractPolicy` and
//! `ContractDrill` custom resources, their CRD schemas (defaults, descriptions, CEL rules) and the validation that the
//! operator and the webhook share. Nothing in this crate does I/O.

pub mod conditions;
pub mod contract;
pub mod drill;
pub mod duration;
pub mod manifests;
pub mod policy;
pub mod resilience;
mod schema;
pub mod validate;

pub use contract::*;
pub use drill::*;
pub use policy::*;
pub use resilience::*;

/// The API group.
pub const GROUP: &str = "csp.contracts.dev";
/// The API version.
pub const VERSION: &str = "v1alpha1";
/// Annotation on a Service that declares its failover regions, e.g. `"gz,sz,hz"`.
pub const FAILOVER_REGIONS_ANNOTATION: &str = "csp.contracts.dev/failover-regions";
/// Annotation on a Service that names the ChannelContract that governs it.
pub const CONTRACT_ANNOTATION: &str = "csp.contracts.dev/contract";
/// The namespace label that opts a namespace out of the webhook (value [`WEBHOOK_OPT_OUT_VALUE`]): the
/// chart's ValidatingWebhookConfiguration does not send its requests, and the audit skips it too.
pub const WEBHOOK_OPT_OUT_LABEL: &str = "csp.contracts.dev/webhook";
/// The value of [`WEBHOOK_OPT_OUT_LABEL`] that opts out.
pub const WEBHOOK_OPT_OUT_VALUE: &str = "disabled";
/// The Node (or EndpointSlice) label that gives an endpoint's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
