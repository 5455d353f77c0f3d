//! The configuration is one that the real Envoy accepts: `envoy --mode validate` on a bootstrap that embeds
//! it, for every ChannelContract in `examples/` and for many generated valid contracts with endpoints.
//! Envoy comes from `e2e/.bin/envoy` (`make tools`) or `$CSP_E2E_BIN`; without it these tests fail.
#![allow(clippy::unwrap_used)]

mod real_envoy;

use std::path::Path;

use crds::ChannelContract;
use operator::envoy::bootstrap;
use operator::model::{ChannelEndpoints, Endpoint, EnvoyResources, ProxyOptions};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

fn validate_resources(resources: &EnvoyResources, what: &str) {
    let admin = "127.0.0.1:9901".parse().unwrap();
    let yaml = bootstrap::to_yaml(&bootstrap::embedded(resources, admin, "validate").unwrap()).unwrap();
    if let Err(envoy_says) = real_envoy::validate(&yaml) {
        panic!("Envoy refuses the configuration of {what}:\n{envoy_says}\n--- bootstrap ---\n{yaml}");
    }
}

/// Every ChannelContract document in `examples/`.
fn example_contracts() -> Vec<(String, ChannelContract)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut found = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")) {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if value.get("kind") == Some(&json!("ChannelContract")) {
                let text = yaml_serde::to_string(&value).unwrap();
                let contract = operator::render::parse_contract(&path.display().to_string(), &text).unwrap();
                found.push((path.display().to_string(), contract));
            }
        }
    }
    found
}

/// Endpoints for each channel of a contract: every declared region, one undeclared, one without.
fn endpoints_for(contract: &ChannelContract) -> ChannelEndpoints {
    let mut regions: Vec<Option<String>> =
        contract.spec.failover.iter().flat_map(|f| f.regions.iter().cloned().map(Some)).collect();
    regions.extend([Some("undeclared".to_owned()), None]);
    let names: Vec<String> = if contract.spec.channels.is_empty() {
        vec!["primary".to_owned()]
    } else {
        contract.spec.channels.iter().map(|c| c.name.clone()).collect()
    };
    let channels = names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let list = regions
                .iter()
                .enumerate()
                .map(|(j, region)| Endpoint {
                    address: format!("127.0.{i}.{}", j + 2),
                    port: 8080,
                    ready: true,
                    region: region.clone(),
                })
                .collect();
            (name, list)
        })
        .collect();
    ChannelEndpoints { channels }
}

#[test]
fn envoy_accepts_every_example_contract() {
    let examples = example_contracts();
    assert!(!examples.is_empty(), "examples/ has no ChannelContract");
    for (path, contract) in examples {
        let options = ProxyOptions::default();
        let bare = operator::desired(&contract, &ChannelEndpoints::default(), &options).unwrap();
        validate_resources(&bare, &format!("{path} without endpoints"));
        let full = operator::desired(&contract, &endpoints_for(&contract), &options).unwrap();
        validate_resources(&full, &format!("{path} with endpoints"));
    }
}

const RETRY_ON: [&str; 12] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];
const REGIONS: [&str; 5] = ["gz", "sz", "hz", "bj", "eu-west-1"];

fn ms(millis: u64) -> String {
    crds::duration::format(std::time::Duration::from_millis(millis))
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,14}[a-z0-9])?"
}

prop_compose! {
    fn retry()(
        strategy in prop::sample::select(vec!["None", "Fixed", "ExponentialBackoff"]),
        max_retries in 0i32..=10,
        per_try_percent in prop::option::of(1u64..=100),
        base in 1u64..2_000,
        extra in prop::option::of(0u64..10_000),
        retry_on in prop::sample::subsequence(RETRY_ON.to_vec(), 1..=6),
        budget in prop::option::of(0.0f64..=100.0),
    ) -> (Value, Option<u64>) {
        let mut retry = json!({
            "strategy": strategy, "maxRetries": max_retries, "retryOn": retry_on,
            "backoff": {"baseInterval": ms(base)},
        });
        if let Some(extra) = extra {
            retry["backoff"]["maxInterval"] = json!(ms(base + extra));
        }
        if let Some(budget) = budget {
            retry["budgetPercent"] = json!(budget);
        }
        (retry, per_try_percent)
    }
}

prop_compose! {
    fn circuit_breaker()(
        threshold in prop::option::of(0.001f64..=1.0),
        minimum_requests in 1i32..10_000,
        consecutive_errors in 1i32..1_000,
        interval in 1u64..600_000,
        base_ejection in 1u64..3_600_000,
        max_ejection_percent in 0i32..=100,
        limits in (1i32..1_000_000, 1i32..1_000_000, 1i32..1_000_000),
    ) -> Value {
        let mut cb = json!({
            "minimumRequests": minimum_requests, "consecutiveErrors": consecutive_errors,
            "interval": ms(interval), "baseEjectionTime": ms(base_ejection),
            "maxEjectionPercent": max_ejection_percent,
            "maxConnections": limits.0, "maxPendingRequests": limits.1, "maxRequests": limits.2,
        });
        if let Some(threshold) = threshold {
            cb["threshold"] = json!(threshold);
        }
        cb
    }
}

/// (address kind, last octet, port, ready, region index)
type RawEndpoint = (bool, u8, u16, bool, Option<usize>);

prop_compose! {
    fn case()(
        name in dns_label(),
        namespace in dns_label(),
        protocol in prop::sample::select(vec!["HTTP", "HTTP2", "GRPC"]),
        max_latency in 1u64..120_000,
        (retry, per_try_percent) in retry(),
        circuit_breaker in circuit_breaker(),
        channels in prop::collection::vec((prop::option::of(1i32..=65535), any::<bool>()), 0..5),
        failover in prop::option::of(prop::sample::subsequence(REGIONS.to_vec(), 0..=4)),
        endpoints in prop::collection::vec(
            prop::collection::vec((prop::bool::weighted(0.1), 1u8..=254, 1u16..=65535, prop::bool::weighted(0.8), prop::option::of(0usize..REGIONS.len())), 0..6),
            5,
        ),
    ) -> (ChannelContract, ChannelEndpoints) {
        let mut retry = retry;
        if let Some(percent) = per_try_percent {
            retry["perTryTimeout"] = json!(ms((max_latency * percent / 100).max(1)));
        }
        let channel_list: Vec<Value> = channels
            .iter()
            .enumerate()
            .map(|(i, (port, selector))| {
                let mut c = json!({"name": if i == 0 { "primary".to_owned() } else { format!("fallback-{i}") }});
                if i > 0 {
                    c["service"] = json!(format!("svc-{i}"));
                }
                if let Some(port) = port {
                    c["port"] = json!(port);
                }
                if *selector {
                    c["selector"] = json!(format!("sel-{i}"));
                }
                c
            })
            .collect();
        let mut spec = json!({
            "service": "svc", "port": 8080, "protocol": protocol, "sla": {"maxLatency": ms(max_latency)},
            "retry": retry, "circuitBreaker": circuit_breaker, "channels": channel_list,
        });
        if let Some(regions) = failover {
            spec["failover"] = json!({"regions": regions});
        }
        let contract: ChannelContract = serde_json::from_value(json!({
            "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec,
        })).unwrap();
        let names: Vec<String> = if channels.is_empty() {
            vec!["primary".to_owned()]
        } else {
            (0..channels.len()).map(|i| if i == 0 { "primary".to_owned() } else { format!("fallback-{i}") }).collect()
        };
        let endpoints = ChannelEndpoints {
            channels: names.into_iter().zip(endpoints).enumerate().map(|(i, (name, raw))| {
                let list = raw.into_iter().map(|(dns, octet, port, ready, region): RawEndpoint| Endpoint {
                    address: if dns { format!("backend-{octet}.example") } else { format!("127.0.{i}.{octet}") },
                    port,
                    ready,
                    region: region.map(|r| REGIONS[r].to_owned()),
                }).collect();
                (name, list)
            }).collect(),
        };
        (contract, endpoints)
    }
}

proptest! {
    // Each case starts Envoy once (about a quarter of a second); 64 cases, bounded shrinking.
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn envoy_accepts_generated_contracts((contract, endpoints) in case()) {
        prop_assert_eq!(crds::validate::contract(&contract.spec), Ok(()), "the generator made an invalid contract");
        let resources = operator::desired(&contract, &endpoints, &ProxyOptions::default()).unwrap();
        let again = operator::desired(&contract, &endpoints, &ProxyOptions::default()).unwrap();
        prop_assert_eq!(&resources.files, &again.files);
        validate_resources(&resources, "a generated contract");
    }
}

#[test]
fn envoy_refuses_a_broken_configuration_so_the_check_means_something() {
    let contract = &example_contracts()[0].1;
    let mut resources = operator::desired(contract, &ChannelEndpoints::default(), &ProxyOptions::default()).unwrap();
    // An aggregate cluster must use the CLUSTER_PROVIDED load balancer; Envoy refuses ROUND_ROBIN.
    if let Some(aggregate) = resources.clusters.last_mut() {
        aggregate.lb_policy = 0;
    }
    let admin = "127.0.0.1:9901".parse().unwrap();
    let yaml = bootstrap::to_yaml(&bootstrap::embedded(&resources, admin, "validate").unwrap()).unwrap();
    assert!(real_envoy::validate(&yaml).is_err(), "Envoy accepted an aggregate cluster without CLUSTER_PROVIDED");
}

#[test]
fn envoy_accepts_a_threshold_of_one_and_a_fixed_retry() {
    let text = "apiVersion: csp.contracts.dev/v1alpha1\nkind: ChannelContract\nmetadata: {name: strict, namespace: payments}\nspec:\n  service: pv\n  port: 8080\n  sla: {maxLatency: 1s}\n  retry: {strategy: Fixed, backoff: {baseInterval: 40ms}}\n  circuitBreaker: {threshold: 1, minimumRequests: 5}\n";
    let contract = operator::render::parse_contract("strict", text).unwrap();
    let resources = operator::desired(&contract, &endpoints_for(&contract), &ProxyOptions::default()).unwrap();
    let od = resources.clusters[0].outlier_detection.clone().unwrap();
    assert_eq!((od.consecutive_5xx.unwrap().value, od.failure_percentage_threshold.unwrap().value), (1, 1));
    validate_resources(&resources, "a contract with threshold 1 and Fixed retries");
}
