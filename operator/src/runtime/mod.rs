//! The operator as a process: `operator run` ([`run`]): the watches, the controller, the admin server
//! ([`lifecycle::admin`]: `/healthz`, `/readyz`, `/metrics`) and leader election ([`lifecycle::leader`]).

pub mod run;
pub mod watches;
