//! The operator as a process: `operator run` ([`run`]): the watches, the controller, the xDS server, the
//! admin server ([`lifecycle::admin`]: `/healthz`, `/readyz`, `/metrics`) and leader election
//! ([`lifecycle::leader`]); `operator bootstrap` ([`bootstrap`]): a proxy's Envoy bootstrap.

pub mod bootstrap;
pub mod check;
pub mod drills;
pub mod reports;
pub mod run;
pub mod watches;
pub mod xds;
