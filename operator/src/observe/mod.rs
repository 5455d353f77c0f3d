//! What the proxies' own access logs say, once they reach the operator (the gRPC access log service that
//! every replica serves next to xDS): the SLO of every contract as metrics ([`slo`]), and what happened
//! during a ContractDrill's fault ([`drill`]). Pure: records in, counters and judgements out; no client,
//! no clock, no I/O.
//!
//! Why access logs and not the proxies' stats: with the aggregate cluster of a contract, Envoy charges a
//! request's outcome to the route's cluster, and a request whose route timeout (`sla.maxLatency`) fires
//! while a retry waits for its back-off is charged to no cluster, virtual cluster or route at all (only to
//! the listener, which every contract on a port shares). Those are exactly the requests that breach the
//! SLA. The access log of the connection manager sees every request once, with its final status, its
//! response flags, its duration and the endpoint that answered it, so the SLA is judged exactly.

pub mod drill;
pub mod drill_metrics;
pub mod slo;
pub mod trigger;

/// `<namespace>/<name>` of a contract from the name of one of its routes (`csp~<ns>~<name>` for the
/// default route, `csp~<ns>~<name>~<channel>` for a channel's selector route).
pub fn contract_of_route(route: &str) -> Option<(&str, &str)> {
    let rest = route.strip_prefix("csp~")?;
    let mut parts = rest.split('~');
    let namespace = parts.next().filter(|s| !s.is_empty())?;
    let name = parts.next().filter(|s| !s.is_empty())?;
    Some((namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_their_contract() {
        assert_eq!(contract_of_route("csp~payments~payment-verify"), Some(("payments", "payment-verify")));
        assert_eq!(contract_of_route("csp~payments~payment-verify~cache"), Some(("payments", "payment-verify")));
        assert_eq!(contract_of_route("other"), None);
        assert_eq!(contract_of_route("csp~~x"), None);
        assert_eq!(contract_of_route("csp~payments"), None);
    }
}
