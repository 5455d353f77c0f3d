//! Clusters: one per channel (circuit breakers, outlier detection) and the aggregate over them.

use super::*;
use crate::envoy::pb::envoy::config::cluster::v3::cluster;

/// `circuitBreaker.max*` and `retry.budgetPercent`: one threshold for the DEFAULT routing priority (the
/// only one routes use). The retry budget is always set, at `budgetPercent` or Envoy's 20% when omitted,
/// so that retries are bounded by a share of the traffic rather than by a fixed count.
pub(crate) fn circuit_breakers(cb: &CircuitBreaker, retry: &RetryPolicy) -> CircuitBreakers {
    CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            priority: RoutingPriority::Default.into(),
            max_connections: uint(cb.max_connections),
            max_pending_requests: uint(cb.max_pending_requests),
            max_requests: uint(cb.max_requests),
            retry_budget: Some(circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(Percent { value: retry.budget_percent.unwrap_or(20.0) }),
                min_retry_concurrency: None,
                ..circuit_breakers::thresholds::RetryBudget::default()
            }),
            ..circuit_breakers::Thresholds::default()
        }],
        ..CircuitBreakers::default()
    }
}

/// `circuitBreaker.*` as outlier detection, the only thing that ejects endpoints (there is no active health
/// checking), and so what moves traffic to the next region and the next channel.
/// - `consecutiveErrors` -> `consecutive_5xx`, enforced at 100%. Connection failures, resets and timeouts
///   count as 5xx (local-origin errors are not split out), so a dead endpoint is ejected as fast as one
///   that answers 503.
/// - `threshold` -> failure-percentage ejection: `failure_percentage_threshold = round((1 - threshold) *
///   100)`, at least 1 (0 would eject endpoints that never fail, since Envoy ejects when `100 - success
///   rate >= failure_percentage_threshold`), enforced at 100%, over `minimumRequests` requests per
///   endpoint, with `failure_percentage_minimum_hosts: 1` so that it applies to channels of any size
///   (Envoy's default of 5 hosts would switch it off for small ones).
/// - `threshold: 1` tolerates no failure, which a whole failure percentage cannot say (1% lets one failure
///   in more than 100 requests pass, 0% ejects every endpoint): it also sets `consecutive_5xx: 1`, so that
///   the first failure (a 5xx, a reset, a connection failure, a timeout: the same events the failure
///   percentage counts) ejects the endpoint.
/// - success-rate ejection (statistical, relative to the other endpoints) is not in the contract and is
///   switched off (`enforcing_success_rate: 0`), so that the contract is all that ejects.
pub(crate) fn outlier_detection(cb: &CircuitBreaker) -> Result<OutlierDetection, TranslateError> {
    let mut od = OutlierDetection {
        consecutive_5xx: uint(cb.consecutive_errors),
        enforcing_consecutive_5xx: uint(100),
        interval: Some(pb_duration("spec.circuitBreaker.interval", &cb.interval)?),
        base_ejection_time: Some(pb_duration("spec.circuitBreaker.baseEjectionTime", &cb.base_ejection_time)?),
        max_ejection_percent: uint(cb.max_ejection_percent),
        enforcing_success_rate: uint(0),
        ..OutlierDetection::default()
    };
    if let Some(threshold) = cb.threshold {
        if threshold >= 1.0 {
            // No failure is tolerated, which no failure percentage says: the first failure ejects.
            od.consecutive_5xx = uint(1);
        }
        od.failure_percentage_threshold = uint(failure_percentage(threshold));
        od.enforcing_failure_percentage = uint(100);
        od.failure_percentage_request_volume = uint(cb.minimum_requests);
        od.failure_percentage_minimum_hosts = uint(1);
    }
    Ok(od)
}

/// `round((1 - threshold) * 100)`, kept within 1..=100.
pub(crate) fn failure_percentage(threshold: f64) -> i32 {
    // threshold is in (0, 1] (validated), so the product is in [0, 100).
    let percent = ((1.0 - threshold) * 100.0).round();
    if percent >= 100.0 {
        100
    } else if percent >= 1.0 {
        percent as i32
    } else {
        1
    }
}

/// The cluster of one channel.
///
/// - STATIC with the endpoints inline when every address is an IP (always, for EndpointSlices of type
///   IPv4/IPv6); STRICT_DNS (IPv4 preferred) only when some address is a DNS name.
/// - `common_lb_config.healthy_panic_threshold: 0`: panic mode off. With Envoy's default (50%), a channel
///   or region with more than half of its endpoints ejected would send traffic to the ejected ones again
///   instead of failing over, and the declared chain would not be what traffic does.
/// - `connect_timeout`: the deadline of one try (`perTryTimeout`, else `maxLatency`), at most Envoy's
///   default of 5s: a connection that cannot be made within a try is of no use to it, and failing it early
///   counts it for ejection early.
/// - the circuit breakers, outlier detection and, for HTTP2/GRPC, upstream HTTP/2 of the contract.
pub(crate) fn channel_cluster(
    spec: &ChannelContractSpec,
    name: &str,
    endpoints: &[Published],
    load_assignment: ClusterLoadAssignment,
) -> Result<Cluster, TranslateError> {
    let dns = endpoints.iter().any(|e| e.dns);
    let discovery_type = if dns { cluster::DiscoveryType::StrictDns } else { cluster::DiscoveryType::Static };
    let try_deadline = match &spec.retry.per_try_timeout {
        Some(per_try) => pb_duration("spec.retry.perTryTimeout", per_try)?,
        None => pb_duration("spec.sla.maxLatency", &spec.sla.max_latency)?,
    };
    let five_seconds = protobuf::Duration { seconds: 5, nanos: 0 };
    let connect_timeout = if (try_deadline.seconds, try_deadline.nanos) < (5, 0) { try_deadline } else { five_seconds };
    let mut cluster = Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery_type.into())),
        connect_timeout: Some(connect_timeout),
        load_assignment: Some(load_assignment),
        circuit_breakers: Some(circuit_breakers(&spec.circuit_breaker, &spec.retry)),
        outlier_detection: Some(outlier_detection(&spec.circuit_breaker)?),
        common_lb_config: Some(common_lb_config()),
        ..Cluster::default()
    };
    if dns {
        cluster.dns_lookup_family = cluster::DnsLookupFamily::V4Preferred.into();
    }
    cluster.typed_extension_protocol_options.insert(HttpProtocolOptions::full_name(), any(&protocol_options(spec)));
    Ok(cluster)
}

/// The request header set on every request to a channel's backend: the name of the channel that serves
/// it, so that a backend reached on a degraded path knows it (and may relax its checks).
pub const CHANNEL_PRIORITY_HEADER: &str = "x-channel-priority";

/// The upstream protocol of every cluster of a contract (HTTP/1.1, or HTTP/2 for HTTP2 and GRPC), and
/// the upstream HTTP filters every try passes through: `x-channel-priority: <channel>` set from the
/// metadata of the endpoint the try goes to ([`super::endpoint::endpoint_metadata`]), then the codec.
///
/// The filters are on the aggregate cluster as well as on the channels': a request routed to the
/// aggregate runs the aggregate's upstream filters (verified with Envoy 1.40), whichever channel's
/// endpoint takes the try, so that the header names the channel that really serves it, after a failover
/// too, and whatever the client sent.
pub(crate) fn protocol_options(spec: &ChannelContractSpec) -> HttpProtocolOptions {
    use crate::envoy::pb::envoy::config::common::mutation_rules::v3::{
        HeaderMutation as Mutation, header_mutation::Action,
    };
    use crate::envoy::pb::envoy::extensions::filters::http::header_mutation::v3::{HeaderMutation, Mutations};
    use crate::envoy::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
    let mut options =
        if matches!(spec.protocol, Protocol::Http2 | Protocol::Grpc) { explicit_http2() } else { explicit_http1() };
    let header = HeaderMutation {
        mutations: Some(Mutations {
            request_mutations: vec![Mutation {
                action: Some(Action::Append(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: CHANNEL_PRIORITY_HEADER.to_owned(),
                        value: format!("%UPSTREAM_METADATA({}:channel)%", super::endpoint::METADATA_NAMESPACE),
                        ..HeaderValue::default()
                    }),
                    append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                    ..HeaderValueOption::default()
                })),
            }],
            ..Mutations::default()
        }),
        ..HeaderMutation::default()
    };
    let filter = |name: &str, config: protobuf::Any| HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..HttpFilter::default()
    };
    options.http_filters = vec![
        filter("envoy.filters.http.header_mutation", any(&header)),
        filter("envoy.filters.http.upstream_codec", any(&UpstreamCodec::default())),
    ];
    options
}

/// The load-balancing settings every cluster of a contract shares:
/// - `healthy_panic_threshold: 0`: panic mode off (see [`channel_cluster`] and [`aggregate_cluster`]);
/// - `update_merge_window: 0s`: a health change (an ejection, an unejection) reaches the load balancers
///   at once. Envoy's default merges health-only updates that follow a recent one into a window of 1s, so
///   when a second endpoint, region or channel failed shortly after a first one, traffic kept going to it
///   for up to a second after its ejection (measured in e2e: ~1s of failed requests when gz then sz fail,
///   against none for the first ejection). Contract clusters are small; rebuilding their load balancers on
///   every health change costs little.
pub(crate) fn common_lb_config() -> cluster::CommonLbConfig {
    cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        update_merge_window: Some(protobuf::Duration { seconds: 0, nanos: 0 }),
        ..Default::default()
    }
}

/// The `envoy.clusters.aggregate` cluster over the channel clusters, in channel order.
///
/// Its load balancer lines up the priorities of all channel clusters (primary's regions first, then each
/// fallback) and hands a request to the first level that has healthy (not ejected) endpoints, spilling by
/// the overprovisioning factor of each level; then the chosen cluster's own balancer picks the endpoint.
/// - `healthy_panic_threshold: 0` here too: the aggregate's own balancer has its own panic mode, which
///   would otherwise spread traffic over ejected channels when less than half of the chain is healthy.
/// - the same circuit breakers as the channels: the router takes retries from the budget of the route's
///   cluster, which for the default route is this one, not the channel that serves the try.
pub(crate) fn aggregate_cluster(spec: &ChannelContractSpec, name: &str, chain: Vec<String>) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(cluster::CustomClusterType {
            name: "envoy.clusters.aggregate".to_owned(),
            typed_config: Some(any(&ClusterConfig { clusters: chain })),
        })),
        lb_policy: cluster::LbPolicy::ClusterProvided.into(),
        circuit_breakers: Some(circuit_breakers(&spec.circuit_breaker, &spec.retry)),
        common_lb_config: Some(common_lb_config()),
        typed_extension_protocol_options: std::collections::HashMap::from([(
            HttpProtocolOptions::full_name(),
            any(&protocol_options(spec)),
        )]),
        ..Cluster::default()
    }
}
