//! The Channel Contracts operator: ChannelContract -> Envoy configuration.
//!
//! Pure (no client, no clock, no I/O), tested exhaustively:
//! - [`translate::desired`]: a contract and its channels' endpoints become Envoy resources, the
//!   ConfigMap's filesystem-xDS files and the config version;
//! - [`endpoints`]: a contract's channels' endpoints from Services, EndpointSlices and Nodes, as
//!   [`cache`] keeps them;
//! - [`index`]: which contracts a Service, EndpointSlice or Node change concerns;
//! - [`status`]: the conditions (Accepted, Programmed, Ready) and the rest of a contract's status;
//! - [`configmap`]: the ConfigMap a contract publishes; [`controller::plan`]: what a reconcile does;
//! - [`lifecycle::leader::decide`]: the leader election's decision on a Lease.
//!
//! The shells around them:
//! - [`run`]: `operator run`, the controller (kube-runtime) with its watches, the admin server
//!   ([`admin`]: `/healthz`, `/readyz`, `/metrics` of [`metrics`]) and leader election ([`lifecycle::leader`]);
//! - [`controller`]: the reconciler, which reads the caches, writes the ConfigMap, status and Events;
//! - [`render`]: the offline `operator render` command;
//! - [`envoy`]: the typed Envoy messages, their proto3 JSON, bootstraps that use them.

pub mod admin;
pub mod cache;
pub mod configmap;
pub mod controller;
pub mod endpoints;
pub mod envoy;
pub mod index;
pub mod metrics;
pub mod model;
pub mod render;
pub mod run;
pub mod status;
pub mod translate;

pub use crds::{ResolvedChannel, resolve_channels};
pub use model::{ChannelEndpoints, Endpoint, EnvoyResources, ProxyOptions};
pub use translate::{TranslateError, desired};
