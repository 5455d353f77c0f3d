//! The drill controller: ContractDrills run their faults through the proxies and are judged on the
//! proxies' own logs ([`decide`]: the pure decision).

pub mod decide;
