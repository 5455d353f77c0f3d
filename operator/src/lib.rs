//! The Channel Contracts operator: ChannelContract -> Envoy configuration.
//!
//! - [`translate::desired`]: the pure translation of a contract and its channels' endpoints into Envoy
//!   resources, the ConfigMap's filesystem-xDS files and the config version;
//! - [`envoy`]: the typed Envoy messages, their proto3 JSON, bootstraps that use them;
//! - [`render`]: the offline `operator render` command.

pub mod envoy;
pub mod render;
pub mod translate;

pub use translate::{
    ChannelEndpoints, Endpoint, EnvoyResources, ProxyOptions, ResolvedChannel, TranslateError, desired,
    resolve_channels,
};
