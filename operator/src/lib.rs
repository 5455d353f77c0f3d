//! The Channel Contracts operator: ChannelContract -> Envoy configuration.
//!
//! The folders read the way a contract travels, and each imports only from those listed before it
//! (checked by a test, `layering`):
//! - [`model`]: the vocabulary every stage hands on (a contract's channels' endpoints, proxy options,
//!   the Envoy resources); [`envoy`]: the typed Envoy messages, their proto3 JSON, bootstraps;
//! - [`observe`]: what the proxies' access logs say: every contract's SLO as metrics, and a drill's
//!   switchover and verdict;
//! - [`translate`]: a contract and its channels' endpoints become Envoy resources ([`desired`]), one
//!   file per Envoy resource kind;
//! - [`publish`]: the ConfigMap a contract publishes, and whether the operator may write it;
//! - [`watch`]: the caches, the index of which contracts use what, the gathering of endpoints, the
//!   watches' triggers;
//! - [`reconcile`]: the pure plan of one reconcile, its status, the small executor that writes, metrics;
//! - [`runtime`]: `operator run` (controller, admin server, leader election); [`render`]: the offline
//!   `operator render` command; [`fleet`]: `operator fleet`, the hub that carries policies to member
//!   clusters and rolls their compliance up.
//!
//! Pure (no client, no clock, no I/O), tested exhaustively: [`translate`], [`model`], [`observe`], [`publish::configmap`],
//! [`watch::endpoints`], [`watch::index`], [`reconcile::plan`], [`reconcile::status`].

pub mod envoy;
pub mod fleet;
pub mod model;
pub mod observe;
pub mod publish;
pub mod reconcile;
pub mod render;
pub mod runtime;
pub mod translate;
pub mod watch;

pub use crds::{ResolvedChannel, resolve_channels};
pub use model::{ChannelEndpoints, Endpoint, EnvoyResources, ProxyOptions};
pub use translate::{TranslateError, desired};

#[cfg(test)]
mod layering;
