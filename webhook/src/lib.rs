//! The Channel Contracts admission webhook: enforces ContractPolicies on Services and ChannelContracts,
//! and audits existing objects.
//!
//! Pure: [`subject`] (what is judged, built alike for admission and audit), [`evaluate`] (policies × object → allow / deny / warn with messages) and [`admission`] (the
//! AdmissionReview in, the answer out, over an [`admission::Index`]). The thin shells around them:
//! [`index`] (caches fed by watches), [`server`] (HTTPS, bounded memory), [`audit`] (existing objects →
//! policy status, one replica at a time; [`openreports`]: the same results as OpenReports Reports), [`selfcert`]/[`certs`] (self-managed TLS), [`metrics`], and
//! [`runtime`], which wires them together.

pub mod admission;
pub mod audit;
pub mod certs;
pub mod enforcement;
pub mod evaluate;
pub mod index;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod openreports;
pub mod runtime;
pub mod selfcert;
pub mod server;
pub mod subject;
pub mod vap;

pub use runtime::{Args, RunError, TlsArgs, run};
