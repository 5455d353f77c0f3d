//! One test per row of the API's "What it becomes in Envoy" table, asserting on the typed messages, plus
//! the endpoint, naming and error rules of `desired`.

use prost::Message;
use serde_json::json;

use super::*;
use crate::envoy::pb::envoy::config::cluster::v3::cluster;
use crate::envoy::pb::envoy::config::core::v3::config_source;
use crate::envoy::pb::envoy::config::route::v3::route;
use crate::envoy::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use crds::resolve_channels;

fn contract(spec: serde_json::Value) -> ChannelContract {
    serde_json::from_value(json!({
        "apiVersion": "csp.contracts.dev/v1alpha1",
        "kind": "ChannelContract",
        "metadata": {"name": "payment-verify", "namespace": "payments"},
        "spec": spec,
    }))
    .expect("test contract deserializes")
}

fn minimal() -> serde_json::Value {
    json!({"service": "payment-verify", "port": 8080, "sla": {"maxLatency": "120ms"}})
}

fn with(mut spec: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    spec[key] = value;
    spec
}

fn three_channels() -> serde_json::Value {
    with(
        minimal(),
        "channels",
        json!([
            {"name": "primary"},
            {"name": "cache", "service": "verify-cache", "selector": "cache"},
            {"name": "static", "service": "verify-static", "port": 9090, "selector": "static"},
        ]),
    )
}

fn ep(address: &str, region: Option<&str>) -> Endpoint {
    Endpoint { address: address.to_owned(), port: 8080, ready: true, region: region.map(str::to_owned) }
}

fn endpoints(channels: &[(&str, Vec<Endpoint>)]) -> ChannelEndpoints {
    ChannelEndpoints { channels: channels.iter().map(|(c, e)| ((*c).to_owned(), e.clone())).collect() }
}

fn build(spec: serde_json::Value) -> EnvoyResources {
    desired(&contract(spec), &ChannelEndpoints::default(), &ProxyOptions::default()).expect("translates")
}

fn build_with(spec: serde_json::Value, eps: &ChannelEndpoints) -> EnvoyResources {
    desired(&contract(spec), eps, &ProxyOptions::default()).expect("translates")
}

fn cluster<'a>(r: &'a EnvoyResources, name: &str) -> &'a Cluster {
    r.clusters.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no cluster {name}"))
}

fn routes(r: &EnvoyResources) -> &[Route] {
    &r.route_configuration.virtual_hosts[0].routes
}

fn action(route: &Route) -> &RouteAction {
    match &route.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

fn target(route: &Route) -> &str {
    match &action(route).cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("not a cluster: {other:?}"),
    }
}

fn ms(millis: i32) -> Option<protobuf::Duration> {
    Some(protobuf::Duration { seconds: 0, nanos: millis * 1_000_000 })
}

fn secs(seconds: i64) -> Option<protobuf::Duration> {
    Some(protobuf::Duration { seconds, nanos: 0 })
}

const PRIMARY: &str = "csp~payments~payment-verify~primary";
const AGGREGATE: &str = "csp~payments~payment-verify";

// --- sla.maxLatency -> RouteAction.timeout -----------------------------------------------------------

#[test]
fn max_latency_is_the_timeout_of_every_route() {
    let r = build(three_channels());
    assert_eq!(routes(&r).len(), 3);
    for route in routes(&r) {
        assert_eq!(action(route).timeout, ms(120), "{}", route.name);
    }
    let r = build(with(minimal(), "sla", json!({"maxLatency": "1.5s"})));
    assert_eq!(action(&routes(&r)[0]).timeout, Some(protobuf::Duration { seconds: 1, nanos: 500_000_000 }));
}

// --- retry.* -> RouteAction.retry_policy -------------------------------------------------------------

#[test]
fn retry_maps_to_retry_on_num_retries_per_try_timeout_and_back_off() {
    let r = build(with(
        three_channels(),
        "retry",
        json!({"strategy": "ExponentialBackoff", "maxRetries": 3, "perTryTimeout": "40ms",
               "backoff": {"baseInterval": "25ms", "maxInterval": "250ms"},
               "retryOn": ["5xx", "reset", "connect-failure", "retriable-4xx"]}),
    ));
    for route in routes(&r) {
        let policy = action(route).retry_policy.as_ref().expect("a retry policy");
        assert_eq!(policy.retry_on, "5xx,reset,connect-failure,retriable-4xx");
        assert_eq!(policy.num_retries, Some(UInt32Value { value: 3 }));
        assert_eq!(policy.per_try_timeout, ms(40));
        let back_off = policy.retry_back_off.as_ref().expect("back-off");
        assert_eq!((back_off.base_interval, back_off.max_interval), (ms(25), ms(250)));
    }
}

#[test]
fn retry_defaults_are_two_retries_on_5xx_reset_connect_failure_and_ten_times_the_base() {
    let r = build(minimal());
    let policy = action(&routes(&r)[0]).retry_policy.clone().expect("a retry policy");
    assert_eq!(policy.retry_on, "5xx,reset,connect-failure");
    assert_eq!(policy.num_retries, Some(UInt32Value { value: 2 }));
    assert_eq!(policy.per_try_timeout, None);
    let back_off = policy.retry_back_off.expect("back-off");
    assert_eq!((back_off.base_interval, back_off.max_interval), (ms(25), ms(250)));
}

#[test]
fn fixed_strategy_has_equal_base_and_max_interval() {
    let r = build(with(
        minimal(),
        "retry",
        json!({"strategy": "Fixed", "backoff": {"baseInterval": "100ms", "maxInterval": "1s"}}),
    ));
    let back_off = action(&routes(&r)[0]).retry_policy.clone().and_then(|p| p.retry_back_off).expect("back-off");
    assert_eq!((back_off.base_interval, back_off.max_interval), (ms(100), ms(100)));
}

#[test]
fn strategy_none_means_no_retry_policy() {
    let r = build(with(three_channels(), "retry", json!({"strategy": "None", "maxRetries": 3})));
    assert!(routes(&r).iter().all(|route| action(route).retry_policy.is_none()));
}

// --- retry.budgetPercent, circuitBreaker.max* -> Cluster.circuit_breakers ---------------------------

#[test]
fn budget_percent_and_limits_are_circuit_breaker_thresholds_of_every_cluster() {
    let mut spec = with(three_channels(), "retry", json!({"budgetPercent": 35.5}));
    spec["circuitBreaker"] = json!({"maxConnections": 10, "maxPendingRequests": 20, "maxRequests": 30});
    let r = build(spec);
    assert_eq!(r.clusters.len(), 4);
    for c in &r.clusters {
        let thresholds = &c.circuit_breakers.as_ref().expect("circuit breakers").thresholds;
        assert_eq!(thresholds.len(), 1, "{}", c.name);
        let t = &thresholds[0];
        assert_eq!(t.priority, RoutingPriority::Default as i32);
        assert_eq!(t.max_connections, Some(UInt32Value { value: 10 }));
        assert_eq!(t.max_pending_requests, Some(UInt32Value { value: 20 }));
        assert_eq!(t.max_requests, Some(UInt32Value { value: 30 }));
        let budget = t.retry_budget.as_ref().expect("retry budget");
        assert_eq!(budget.budget_percent, Some(Percent { value: 35.5 }));
    }
}

#[test]
fn budget_defaults_to_envoys_twenty_percent_and_limits_to_1024() {
    let r = build(minimal());
    let t = &cluster(&r, PRIMARY).circuit_breakers.as_ref().expect("circuit breakers").thresholds[0];
    assert_eq!(t.retry_budget.as_ref().and_then(|b| b.budget_percent), Some(Percent { value: 20.0 }));
    assert_eq!(t.max_connections, Some(UInt32Value { value: 1024 }));
}

// --- circuitBreaker.threshold and the rest -> Cluster.outlier_detection ------------------------------

#[test]
fn threshold_becomes_failure_percentage_ejection() {
    let r = build(with(minimal(), "circuitBreaker", json!({"threshold": 0.85, "minimumRequests": 40})));
    let od = cluster(&r, PRIMARY).outlier_detection.clone().expect("outlier detection");
    assert_eq!(od.failure_percentage_threshold, Some(UInt32Value { value: 15 }));
    assert_eq!(od.enforcing_failure_percentage, Some(UInt32Value { value: 100 }));
    assert_eq!(od.failure_percentage_request_volume, Some(UInt32Value { value: 40 }));
    assert_eq!(od.failure_percentage_minimum_hosts, Some(UInt32Value { value: 1 }));
}

#[test]
fn failure_percentage_is_rounded_and_never_zero() {
    assert_eq!(failure_percentage(0.85), 15);
    assert_eq!(failure_percentage(0.5), 50);
    assert_eq!(failure_percentage(0.994), 1);
    assert_eq!(failure_percentage(0.996), 1);
    assert_eq!(failure_percentage(1.0), 1);
    assert_eq!(failure_percentage(0.001), 100);
    assert_eq!(failure_percentage(0.333), 67);
}

#[test]
fn threshold_one_ejects_at_the_first_failure_and_lower_thresholds_keep_consecutive_errors() {
    let od = |threshold: f64| {
        let r = build(with(minimal(), "circuitBreaker", json!({"threshold": threshold, "consecutiveErrors": 7})));
        cluster(&r, PRIMARY).outlier_detection.clone().expect("outlier detection")
    };
    let strict = od(1.0);
    assert_eq!(strict.consecutive_5xx, Some(UInt32Value { value: 1 }), "any failure ejects");
    assert_eq!(strict.enforcing_consecutive_5xx, Some(UInt32Value { value: 100 }));
    assert_eq!(strict.failure_percentage_threshold, Some(UInt32Value { value: 1 }), "never 0: that ejects all");
    for threshold in [0.99, 0.85, 0.5] {
        assert_eq!(od(threshold).consecutive_5xx, Some(UInt32Value { value: 7 }), "{threshold}");
    }
}

#[test]
fn fixed_retries_wait_below_the_base_interval_as_the_crd_describes() {
    let crd = serde_json::to_value(<crds::ChannelContract as kube::CustomResourceExt>::crd()).expect("crd");
    let retry = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["retry"];
    let strategy = retry["properties"]["strategy"]["description"].as_str().unwrap_or_default();
    assert!(strategy.contains("Fixed (every retry waits a random time below `backoff.baseInterval`)"), "{strategy}");
    // Envoy's retry n waits below min(base * (2^n - 1), max): with max = base, below base every time.
    let r = build(with(minimal(), "retry", json!({"strategy": "Fixed", "backoff": {"baseInterval": "40ms"}})));
    let back_off = action(&routes(&r)[0]).retry_policy.clone().and_then(|p| p.retry_back_off).expect("back-off");
    assert_eq!((back_off.base_interval, back_off.max_interval), (ms(40), ms(40)));
}

#[test]
fn without_threshold_only_consecutive_errors_eject() {
    let r = build(minimal());
    let od = cluster(&r, PRIMARY).outlier_detection.clone().expect("outlier detection");
    assert_eq!(od.failure_percentage_threshold, None);
    assert_eq!(od.enforcing_failure_percentage, None);
    assert_eq!(od.enforcing_success_rate, Some(UInt32Value { value: 0 }));
    assert_eq!(od.consecutive_5xx, Some(UInt32Value { value: 5 }));
}

#[test]
fn consecutive_errors_interval_ejection_time_and_percent_are_outlier_detection() {
    let r = build(with(
        three_channels(),
        "circuitBreaker",
        json!({"consecutiveErrors": 7, "interval": "2s", "baseEjectionTime": "45s", "maxEjectionPercent": 60}),
    ));
    for c in r.clusters.iter().filter(|c| c.name != AGGREGATE) {
        let od = c.outlier_detection.clone().expect("outlier detection");
        assert_eq!(od.consecutive_5xx, Some(UInt32Value { value: 7 }));
        assert_eq!(od.enforcing_consecutive_5xx, Some(UInt32Value { value: 100 }));
        assert_eq!(od.interval, secs(2));
        assert_eq!(od.base_ejection_time, secs(45));
        assert_eq!(od.max_ejection_percent, Some(UInt32Value { value: 60 }));
    }
    assert_eq!(cluster(&r, AGGREGATE).outlier_detection, None);
}

// --- channels -> one cluster each + the aggregate cluster -------------------------------------------

#[test]
fn channels_become_clusters_and_an_aggregate_in_order() {
    let r = build(three_channels());
    let names: Vec<&str> = r.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "csp~payments~payment-verify~primary",
            "csp~payments~payment-verify~cache",
            "csp~payments~payment-verify~static",
            "csp~payments~payment-verify",
        ]
    );
    let aggregate = cluster(&r, AGGREGATE);
    assert_eq!(aggregate.lb_policy, cluster::LbPolicy::ClusterProvided as i32);
    let Some(cluster::ClusterDiscoveryType::ClusterType(custom)) = &aggregate.cluster_discovery_type else {
        panic!("the aggregate has no custom cluster type");
    };
    assert_eq!(custom.name, "envoy.clusters.aggregate");
    let config = custom.typed_config.as_ref().expect("typed config");
    assert_eq!(config.type_url, "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig");
    let config = ClusterConfig::decode(config.value.as_slice()).expect("decodes");
    assert_eq!(config.clusters, names[..3]);
}

#[test]
fn no_channels_means_one_primary_channel() {
    let r = build(minimal());
    let names: Vec<&str> = r.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [PRIMARY, AGGREGATE]);
    assert_eq!(r.channels, vec![ChannelStatus { name: "primary".into(), endpoints: 0, regions: vec![] }]);
}

#[test]
fn panic_mode_is_off_on_every_cluster() {
    let r = build(three_channels());
    for c in &r.clusters {
        let lb = c.common_lb_config.as_ref().expect("common lb config");
        assert_eq!(lb.healthy_panic_threshold, Some(Percent { value: 0.0 }), "{}", c.name);
    }
}

#[test]
fn health_changes_reach_the_load_balancers_at_once() {
    let r = build(three_channels());
    for c in &r.clusters {
        let lb = c.common_lb_config.as_ref().expect("common lb config");
        assert_eq!(lb.update_merge_window, Some(protobuf::Duration { seconds: 0, nanos: 0 }), "{}", c.name);
    }
}

// --- channels[].selector -> header routes ------------------------------------------------------------

#[test]
fn selectors_route_straight_to_their_channel_and_the_rest_to_the_aggregate() {
    let r = build(three_channels());
    let routes = routes(&r);
    assert_eq!(routes.len(), 3);
    for (route, (selector, cluster)) in routes
        .iter()
        .zip([("cache", "csp~payments~payment-verify~cache"), ("static", "csp~payments~payment-verify~static")])
    {
        let m = route.r#match.as_ref().expect("match");
        assert_eq!(m.path_specifier, Some(route_match::PathSpecifier::Prefix("/".into())));
        assert_eq!(m.headers.len(), 1);
        assert_eq!(m.headers[0].name, "x-channel-priority");
        let Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)) = &m.headers[0].header_match_specifier else {
            panic!("not a string match");
        };
        assert_eq!(sm.match_pattern, Some(string_matcher::MatchPattern::Exact(selector.into())));
        assert_eq!(target(route), cluster);
    }
    let default = &routes[2];
    assert!(default.r#match.as_ref().expect("match").headers.is_empty());
    assert_eq!(target(default), AGGREGATE);
    assert_eq!(r.route_configuration.virtual_hosts[0].domains, ["*"]);
}

// --- failover.regions -> one priority per region -----------------------------------------------------

fn priorities(r: &EnvoyResources, cluster_name: &str) -> Vec<(u32, Option<String>, Vec<String>)> {
    let assignment = cluster(r, cluster_name).load_assignment.clone().expect("load assignment");
    assignment
        .endpoints
        .into_iter()
        .map(|l| {
            let addresses = l
                .lb_endpoints
                .iter()
                .map(|e| match &e.host_identifier {
                    Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                        match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                            Some(core::address::Address::SocketAddress(sa)) => sa.address.clone(),
                            other => panic!("not a socket address: {other:?}"),
                        }
                    }
                    other => panic!("not an endpoint: {other:?}"),
                })
                .collect();
            (l.priority, l.locality.map(|l| l.region).filter(|r| !r.is_empty()), addresses)
        })
        .collect()
}

fn p(priority: u32, region: Option<&str>, addresses: &[&str]) -> (u32, Option<String>, Vec<String>) {
    (priority, region.map(str::to_owned), addresses.iter().map(|a| (*a).to_owned()).collect())
}

#[test]
fn primary_regions_are_priorities_in_declared_order_then_the_rest() {
    let spec = with(three_channels(), "failover", json!({"regions": ["sz", "gz", "hz"]}));
    let eps = endpoints(&[
        (
            "primary",
            vec![
                ep("127.0.0.5", None),
                ep("127.0.0.4", Some("wh")),
                ep("127.0.0.3", Some("hz")),
                ep("127.0.0.2", Some("gz")),
                ep("127.0.0.6", Some("gz")),
                ep("127.0.0.1", Some("sz")),
                ep("127.0.0.7", Some("bj")),
            ],
        ),
        ("cache", vec![ep("127.0.1.1", Some("hz")), ep("127.0.1.2", Some("gz")), ep("127.0.1.3", None)]),
    ]);
    let r = build_with(spec, &eps);
    assert_eq!(
        priorities(&r, PRIMARY),
        [
            p(0, Some("sz"), &["127.0.0.1"]),
            p(1, Some("gz"), &["127.0.0.2", "127.0.0.6"]),
            p(2, Some("hz"), &["127.0.0.3"]),
            p(3, Some("bj"), &["127.0.0.7"]),
            p(3, Some("wh"), &["127.0.0.4"]),
            p(3, None, &["127.0.0.5"]),
        ]
    );
    // Fallback channels keep one priority, one locality per region.
    assert_eq!(
        priorities(&r, "csp~payments~payment-verify~cache"),
        [p(0, Some("gz"), &["127.0.1.2"]), p(0, Some("hz"), &["127.0.1.1"]), p(0, None, &["127.0.1.3"])]
    );
    assert_eq!(r.channels[0].regions, ["sz", "gz", "hz", "bj", "wh"]);
    assert_eq!(r.channels[0].endpoints, 7);
}

#[test]
fn priorities_stay_contiguous_when_a_declared_region_has_no_endpoint() {
    let spec = with(minimal(), "failover", json!({"regions": ["gz", "sz", "hz"]}));
    let eps = endpoints(&[("primary", vec![ep("127.0.0.3", Some("hz")), ep("127.0.0.2", Some("gz"))])]);
    let r = build_with(spec, &eps);
    assert_eq!(priorities(&r, PRIMARY), [p(0, Some("gz"), &["127.0.0.2"]), p(1, Some("hz"), &["127.0.0.3"])]);
}

#[test]
fn without_failover_the_primary_has_one_priority() {
    let eps = endpoints(&[("primary", vec![ep("127.0.0.3", Some("sz")), ep("127.0.0.2", Some("gz"))])]);
    let r = build_with(minimal(), &eps);
    assert_eq!(priorities(&r, PRIMARY), [p(0, Some("gz"), &["127.0.0.2"]), p(0, Some("sz"), &["127.0.0.3"])]);
}

#[test]
fn the_proxys_own_region_goes_first() {
    let spec = contract(with(minimal(), "failover", json!({"regions": ["gz", "sz", "hz"]})));
    let eps = endpoints(&[(
        "primary",
        vec![ep("127.0.0.2", Some("gz")), ep("127.0.0.3", Some("sz")), ep("127.0.0.4", Some("hz"))],
    )]);
    let options = ProxyOptions { local_region: Some("sz".into()), ..ProxyOptions::default() };
    let r = desired(&spec, &eps, &options).expect("translates");
    assert_eq!(
        priorities(&r, PRIMARY),
        [p(0, Some("sz"), &["127.0.0.3"]), p(1, Some("gz"), &["127.0.0.2"]), p(2, Some("hz"), &["127.0.0.4"])]
    );
}

#[test]
fn load_assignments_keep_envoys_overprovisioning_factor_explicitly() {
    let r = build(three_channels());
    for c in r.clusters.iter().filter(|c| c.name != AGGREGATE) {
        let policy = c.load_assignment.as_ref().and_then(|a| a.policy.as_ref()).expect("policy");
        assert_eq!(policy.overprovisioning_factor, Some(UInt32Value { value: 140 }));
    }
}

// --- protocol -> upstream HTTP/2 ---------------------------------------------------------------------

#[test]
fn http2_and_grpc_speak_http2_upstream() {
    for (protocol, http2) in [("HTTP2", true), ("GRPC", true), ("HTTP", false)] {
        let r = build(with(three_channels(), "protocol", json!(protocol)));
        for c in &r.clusters {
            assert_eq!(c.typed_extension_protocol_options.len(), 1);
            let any = &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
            assert_eq!(any.type_url, "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
            let options = HttpProtocolOptions::decode(any.value.as_slice()).expect("decodes");
            let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) = &options.upstream_protocol_options else {
                panic!("not explicit");
            };
            assert_eq!(
                matches!(explicit.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_))),
                http2,
                "{protocol} {}",
                c.name
            );
            assert!(explicit.protocol_config.is_some());
        }
    }
}

// --- X-Channel-Priority: the serving channel, on every try -------------------------------------------

#[test]
fn every_cluster_tells_the_backend_the_channel_that_serves_it() {
    use crate::envoy::pb::envoy::config::common::mutation_rules::v3::header_mutation::Action;
    use crate::envoy::pb::envoy::extensions::filters::http::header_mutation::v3::HeaderMutation;
    let r = build(three_channels());
    for c in &r.clusters {
        let any = &c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        let options = HttpProtocolOptions::decode(any.value.as_slice()).expect("decodes");
        let names: Vec<&str> = options.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["envoy.filters.http.header_mutation", "envoy.filters.http.upstream_codec"], "{}", c.name);
        let Some(http_filter::ConfigType::TypedConfig(config)) = &options.http_filters[0].config_type else {
            panic!("typed config")
        };
        let mutation = HeaderMutation::decode(config.value.as_slice()).expect("decodes");
        let Some(Action::Append(option)) = &mutation.mutations.expect("mutations").request_mutations[0].action else {
            panic!("an append")
        };
        let header = option.header.as_ref().expect("header");
        assert_eq!(
            (header.key.as_str(), header.value.as_str()),
            ("x-channel-priority", "%UPSTREAM_METADATA(csp:channel)%")
        );
        assert_eq!(option.append_action, header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    }
    // ... and each endpoint says its channel, region and whether it is a fallback.
    let eps = endpoints(&[("primary", vec![ep("127.0.0.2", Some("gz"))]), ("cache", vec![ep("127.0.1.1", None)])]);
    let r = build_with(three_channels(), &eps);
    let meta = |cluster_name: &str| {
        let la = cluster(&r, cluster_name).load_assignment.clone().expect("assignment");
        let e = &la.endpoints[0];
        let fields = &e.lb_endpoints[0].metadata.as_ref().expect("metadata").filter_metadata["csp"].fields;
        let mut m: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| match &v.kind {
                Some(crate::envoy::pb::google::protobuf::value::Kind::StringValue(s)) => (k.clone(), s.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        m.sort();
        (e.locality.as_ref().map(|l| l.zone.clone()).unwrap_or_default(), m)
    };
    let kv = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    assert_eq!(meta(PRIMARY), ("primary~gz~false".to_owned(), kv(&[("channel", "primary"), ("region", "gz")])));
    assert_eq!(
        meta("csp~payments~payment-verify~cache"),
        ("cache~~true".to_owned(), kv(&[("channel", "cache"), ("fallback", "cache")]))
    );
}

// --- always: tracing tags and the contract header ----------------------------------------------------

#[test]
fn every_route_has_the_tracing_tags_and_the_contract_header() {
    use crate::envoy::pb::envoy::r#type::metadata::v3::{metadata_key::path_segment::Segment, metadata_kind};
    let r = build(three_channels());
    assert_eq!(routes(&r).len(), 3);
    for route in routes(&r) {
        let tags = &route.tracing.as_ref().expect("tracing").custom_tags;
        let names: Vec<&str> = tags.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(names, ["csp.contract", "csp.channel", "csp.region", "csp.fallback.used", "csp.sla.breached"]);
        assert!(matches!(&tags[0].r#type, Some(custom_tag::Type::Literal(l)) if l.value == "payments/payment-verify"));
        for (tag, key, default) in
            [(&tags[1], "channel", ""), (&tags[2], "region", ""), (&tags[3], "fallback", "false")]
        {
            let Some(custom_tag::Type::Metadata(m)) = &tag.r#type else { panic!("{} is not metadata", tag.tag) };
            assert!(matches!(m.kind.as_ref().and_then(|k| k.kind.as_ref()), Some(metadata_kind::Kind::Host(_))));
            let mk = m.metadata_key.as_ref().expect("key");
            assert_eq!(mk.key, "csp");
            assert!(matches!(mk.path[0].segment.as_ref(), Some(Segment::Key(k)) if k == key));
            assert_eq!(m.default_value, default);
        }
        assert!(
            matches!(&tags[4].r#type, Some(custom_tag::Type::Value(v)) if v == "%CEL(request.duration >= duration('120ms') || response.code_details == 'upstream_response_timeout' || response.flags / 4 % 2 == 1)%"),
            "{:?}",
            tags[4]
        );
        assert!(route.request_headers_to_add.is_empty(), "no drill, no x-csp-drill");
        let header = &route.response_headers_to_add;
        assert_eq!(header.len(), 1);
        let value = header[0].header.as_ref().expect("header");
        assert_eq!((value.key.as_str(), value.value.as_str()), ("x-csp-contract", "payments/payment-verify"));
        assert_eq!(header[0].append_action, header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    }
}

// --- endpoints ---------------------------------------------------------------------------------------

#[test]
fn only_ready_endpoints_are_published_once_each() {
    let mut not_ready = ep("127.0.0.9", Some("gz"));
    not_ready.ready = false;
    let eps = endpoints(&[(
        "primary",
        vec![ep("127.0.0.2", None), not_ready, ep("127.0.0.2", Some("gz")), ep("127.0.0.3", Some("gz"))],
    )]);
    let r = build_with(minimal(), &eps);
    assert_eq!(priorities(&r, PRIMARY), [p(0, Some("gz"), &["127.0.0.2", "127.0.0.3"])]);
    assert_eq!(r.channels[0].endpoints, 2);
}

#[test]
fn ip_endpoints_make_a_static_cluster_and_hostnames_a_strict_dns_one() {
    let eps = endpoints(&[
        ("primary", vec![ep("127.0.0.2", None), ep("::1", None)]),
        ("cache", vec![ep("verify-cache.payments.svc.cluster.local", None), ep("127.0.0.3", None)]),
    ]);
    let r = build_with(three_channels(), &eps);
    let kind = |name: &str| cluster(&r, name).cluster_discovery_type.clone();
    assert_eq!(kind(PRIMARY), Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)));
    assert_eq!(
        kind("csp~payments~payment-verify~cache"),
        Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
    );
    assert_eq!(
        cluster(&r, "csp~payments~payment-verify~cache").dns_lookup_family,
        cluster::DnsLookupFamily::V4Preferred as i32
    );
    // A channel with no endpoints at all is a static cluster with an empty load assignment.
    assert_eq!(
        kind("csp~payments~payment-verify~static"),
        Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32))
    );
    assert!(priorities(&r, "csp~payments~payment-verify~static").is_empty());
}

#[test]
fn unusable_endpoints_and_unknown_channels_are_errors() {
    let spec = contract(three_channels());
    let options = ProxyOptions::default();
    let bad = endpoints(&[("primary", vec![ep("not an address!", None)])]);
    let err = desired(&spec, &bad, &options).expect_err("refused");
    assert!(matches!(err, TranslateError::InvalidEndpoint { .. }), "{err}");
    assert!(err.to_string().contains("not an address!"), "{err}");

    let mut zero = ep("127.0.0.2", None);
    zero.port = 0;
    let err = desired(&spec, &endpoints(&[("primary", vec![zero])]), &options).expect_err("refused");
    assert!(matches!(err, TranslateError::InvalidEndpoint { .. }), "{err}");

    let err = desired(&spec, &endpoints(&[("mirror", vec![])]), &options).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "endpoints are given for channel \"mirror\", but the contract's channels are [primary, cache, static]"
    );
}

#[test]
fn invalid_contracts_and_missing_metadata_are_errors() {
    let spec = with(minimal(), "retry", json!({"perTryTimeout": "200ms"}));
    let err = desired(&contract(spec), &ChannelEndpoints::default(), &ProxyOptions::default()).expect_err("refused");
    let TranslateError::InvalidSpec { contract, source } = &err else { panic!("{err}") };
    assert_eq!(contract, "payments/payment-verify");
    assert_eq!(source.0[0].field, "spec.retry.perTryTimeout");

    let mut c = contract_without_namespace();
    assert!(matches!(
        desired(&c, &ChannelEndpoints::default(), &ProxyOptions::default()),
        Err(TranslateError::MissingMetadata("namespace"))
    ));
    c.metadata.name = None;
    assert!(matches!(
        desired(&c, &ChannelEndpoints::default(), &ProxyOptions::default()),
        Err(TranslateError::MissingMetadata("name"))
    ));
}

#[test]
fn error_reasons_are_bounded_and_tell_input_from_bugs() {
    let err = desired(&contract_without_namespace(), &ChannelEndpoints::default(), &ProxyOptions::default())
        .expect_err("refused");
    assert_eq!((err.reason(), err.is_invalid_input()), ("InvalidSpec", true));
    let bug = TranslateError::Yaml { file: "cds.yaml", reason: "x".into() };
    assert_eq!((bug.reason(), bug.is_invalid_input()), ("InternalError", false));
}

#[test]
fn durations_beyond_protobufs_range_are_refused_not_written() {
    let spec = with(minimal(), "sla", json!({"maxLatency": "99999999999h"}));
    let err = desired(&contract(spec), &ChannelEndpoints::default(), &ProxyOptions::default()).expect_err("refused");
    assert!(err.is_invalid_input(), "{err}");
}

#[test]
fn channels_resolve_with_the_services_defaults() {
    let spec = contract(three_channels()).spec;
    let resolved = resolve_channels(&spec);
    let view: Vec<(&str, &str, i32, Option<&str>)> =
        resolved.iter().map(|c| (c.name.as_str(), c.service.as_str(), c.port, c.selector.as_deref())).collect();
    assert_eq!(
        view,
        [
            ("primary", "payment-verify", 8080, None),
            ("cache", "verify-cache", 8080, Some("cache")),
            ("static", "verify-static", 9090, Some("static")),
        ]
    );
    let minimal = resolve_channels(&contract(minimal()).spec);
    assert_eq!(minimal.len(), 1);
    assert_eq!((minimal[0].name.as_str(), minimal[0].service.as_str()), ("primary", "payment-verify"));
}

fn contract_without_namespace() -> ChannelContract {
    let mut c = contract(minimal());
    c.metadata.namespace = None;
    c
}

// --- listener, timeouts, names, files ----------------------------------------------------------------

#[test]
fn the_listener_binds_the_service_port_and_reads_routes_from_the_config_dir() {
    let r = build(minimal());
    let Some(core::address::Address::SocketAddress(sa)) = r.listener.address.as_ref().and_then(|a| a.address.clone())
    else {
        panic!("no socket address");
    };
    assert_eq!(
        (sa.address.as_str(), sa.port_specifier),
        ("0.0.0.0", Some(socket_address::PortSpecifier::PortValue(8080)))
    );

    let options = ProxyOptions {
        listener: Some("127.0.0.1:18080".parse().expect("address")),
        config_dir: "/run/csp/".into(),
        local_region: None,
    };
    let r = desired(&contract(minimal()), &ChannelEndpoints::default(), &options).expect("translates");
    let Some(filter::ConfigType::TypedConfig(typed)) = &r.listener.filter_chains[0].filters[0].config_type else {
        panic!("no typed config");
    };
    let hcm = HttpConnectionManager::decode(typed.value.as_slice()).expect("decodes");
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else { panic!("not rds") };
    assert_eq!(rds.route_config_name, AGGREGATE);
    let Some(config_source::ConfigSourceSpecifier::PathConfigSource(path)) =
        rds.config_source.and_then(|s| s.config_source_specifier)
    else {
        panic!("not a path config source");
    };
    assert_eq!(path.path, "/run/csp/rds.yaml");
    assert_eq!(path.watched_directory.map(|w| w.path), Some("/run/csp".to_owned()));
    assert_eq!(hcm.http_filters[0].name, "envoy.filters.http.router");
}

#[test]
fn connect_timeout_is_the_try_deadline_at_most_five_seconds() {
    let r = build(with(minimal(), "retry", json!({"perTryTimeout": "40ms"})));
    assert_eq!(cluster(&r, PRIMARY).connect_timeout, ms(40));
    let r = build(minimal());
    assert_eq!(cluster(&r, PRIMARY).connect_timeout, ms(120));
    let r = build(with(minimal(), "sla", json!({"maxLatency": "30s"})));
    assert_eq!(cluster(&r, PRIMARY).connect_timeout, secs(5));
}

#[test]
fn files_are_discovery_responses_versioned_by_the_hash() {
    let r = build(three_channels());
    assert_eq!(r.files.keys().collect::<Vec<_>>(), ["cds.yaml", "lds.yaml", "rds.yaml"]);
    assert!(r.config_version.starts_with("sha256:"));
    assert_eq!(r.config_version.len(), "sha256:".len() + 64);
    for (name, text) in &r.files {
        let doc: serde_json::Value = yaml_serde::from_str(text).expect("yaml");
        assert_eq!(doc["version_info"], json!(r.config_version), "{name}");
        assert!(doc["resources"].as_array().is_some_and(|r| !r.is_empty()), "{name}");
    }
    let cds: serde_json::Value = yaml_serde::from_str(&r.files["cds.yaml"]).expect("yaml");
    assert_eq!(cds["resources"].as_array().map(Vec::len), Some(4));
    assert_eq!(cds["resources"][3]["@type"], json!("type.googleapis.com/envoy.config.cluster.v3.Cluster"));
    // Another contract, another version.
    let other = build(with(three_channels(), "sla", json!({"maxLatency": "121ms"})));
    assert_ne!(other.config_version, r.config_version);
}

#[test]
fn endpoint_files_parse_with_ready_defaulting_to_true() {
    let parsed: ChannelEndpoints = yaml_serde::from_str(
        "channels:\n  primary:\n  - {address: 127.0.0.2, port: 8080, region: gz}\n  - {address: h.example, port: 1, ready: false}\n",
    )
    .expect("parses");
    assert_eq!(
        parsed.channels["primary"],
        [ep("127.0.0.2", Some("gz")), Endpoint { address: "h.example".into(), port: 1, ready: false, region: None }]
    );
    assert!(yaml_serde::from_str::<ChannelEndpoints>("channels: {primary: [{address: x, port: 1, zone: a}]}").is_err());
}

// --- a drill's fault ---------------------------------------------------------------------------------

#[test]
fn a_drill_sends_the_faulted_endpoints_through_the_fault_listener() {
    use crate::envoy::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
    use crate::model::ActiveFault;
    let spec = with(three_channels(), "failover", json!({"regions": ["gz", "sz"]}));
    let c = contract(spec);
    let valid = ValidContract::new(&c).expect("valid");
    let eps = endpoints(&[
        ("primary", vec![ep("127.0.0.2", Some("gz")), ep("127.0.0.3", Some("sz"))]),
        ("cache", vec![ep("127.0.1.1", Some("gz"))]),
    ]);
    let fault = ActiveFault {
        run: "payments/gz-outage/1".into(),
        fault: serde_json::from_value(json!({"region": "gz", "abort": {"httpStatus": 503, "percent": 50}}))
            .expect("fault"),
    };
    let x = xds(&valid, &eps, Some("sz"), Some(&fault)).expect("translates");
    let address_of = |x: &crate::model::XdsContract, cluster_name: &str, ip: &str| {
        let c = x.clusters.iter().find(|c| c.name == cluster_name).expect("cluster");
        let la = c.load_assignment.as_ref().expect("assignment");
        la.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .find_map(|e| match &e.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
                    core::address::Address::SocketAddress(sa) if sa.address == ip => Some("socket".to_owned()),
                    core::address::Address::EnvoyInternalAddress(ia) if ia.endpoint_id == format!("{ip}:8080") => {
                        Some("internal".to_owned())
                    }
                    _ => None,
                },
                _ => None,
            })
            .unwrap_or_default()
    };
    // A region outage fails every channel's endpoints in gz, and nothing else.
    assert_eq!(address_of(&x, PRIMARY, "127.0.0.2"), "internal");
    assert_eq!(address_of(&x, "csp~payments~payment-verify~cache", "127.0.1.1"), "internal");
    assert_eq!(address_of(&x, PRIMARY, "127.0.0.3"), "socket");
    let pass = x.clusters.iter().find(|c| c.name == "csp~payments~payment-verify~~drill").expect("passthrough");
    assert_eq!(pass.load_assignment.as_ref().map(|l| l.endpoints[0].lb_endpoints.len()), Some(2));
    assert_eq!(x.fault_routes.len(), 1);
    let route = &x.fault_routes[0].virtual_hosts[0].routes[0];
    let config = &route.typed_per_filter_config["envoy.filters.http.fault"];
    let http_fault = HttpFault::decode(config.value.as_slice()).expect("decodes");
    let abort = http_fault.abort.expect("abort");
    assert_eq!(abort.percentage.map(|p| p.numerator), Some(500_000), "50% as millionths");
    let scope = x.scopes.iter().find(|s| s.name == "csp~payments~payment-verify~~drill").expect("scope");
    assert_eq!(scope.route_configuration_name, "csp~payments~payment-verify~~drill");
    // Every route of the contract marks the drill's requests.
    for r in &x.route_configuration.virtual_hosts[0].routes {
        let h = r.request_headers_to_add[0].header.as_ref().expect("header");
        assert_eq!((h.key.as_str(), h.value.as_str()), ("x-csp-drill", "payments/gz-outage/1"));
    }
    // A channel outage fails that channel only.
    let cache_down = ActiveFault {
        run: "r".into(),
        fault: serde_json::from_value(json!({"channel": "cache", "delay": {"duration": "2s"}})).expect("fault"),
    };
    let x = xds(&valid, &eps, None, Some(&cache_down)).expect("translates");
    assert_eq!(address_of(&x, PRIMARY, "127.0.0.2"), "socket");
    assert_eq!(address_of(&x, "csp~payments~payment-verify~cache", "127.0.1.1"), "internal");
}

#[test]
fn the_fault_listener_answers_a_request_it_has_no_route_for_like_the_fault() {
    use crate::envoy::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
    use crate::envoy::pb::envoy::config::listener::v3::filter;
    let listener = super::fault_listener();
    let Some(filter::ConfigType::TypedConfig(any)) = &listener.filter_chains[0].filters[0].config_type else {
        panic!("{listener:?}")
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM");
    let mappers = hcm.local_reply_config.expect("a local reply config").mappers;
    assert_eq!(mappers.len(), 1);
    let Some(FilterSpecifier::ResponseFlagFilter(flags)) =
        mappers[0].filter.as_ref().and_then(|f| f.filter_specifier.clone())
    else {
        panic!("{mappers:?}")
    };
    assert_eq!(flags.flags, ["NR"], "no route");
    assert_eq!(mappers[0].status_code.as_ref().map(|c| c.value), Some(503));
}
