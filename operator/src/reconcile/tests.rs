//! The plan, from plain values.

use std::collections::BTreeMap;

use serde_json::json;

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::watch::endpoints::StaticView;

fn contract(spec: serde_json::Value) -> ChannelContract {
    serde_json::from_value(json!({
        "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
        "metadata": {"name": "pv", "namespace": "ns", "uid": "u-1", "generation": 2},
        "spec": spec,
    }))
    .expect("contract")
}

fn good_spec() -> serde_json::Value {
    json!({
        "service": "pv", "port": 8080, "sla": {"maxLatency": "1s"},
        "channels": [{"name": "primary"}, {"name": "cache", "service": "pv-cache", "selector": "cache"}],
        "failover": {"regions": ["gz", "sz"]},
    })
}

fn view() -> StaticView {
    let mut v = StaticView::default();
    for name in ["pv", "pv-cache"] {
        let svc = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 9000}]},
        }))
        .expect("service");
        v.services.insert(("ns".into(), name.into()), Arc::new(svc));
    }
    let slice = |name: &str, service: &str, address: &str, node: &str| {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 9000}],
                "endpoints": [{"addresses": [address], "nodeName": node}],
            }))
            .expect("slice"),
        )
    };
    v.slices = vec![
        slice("pv-1", "pv", "10.0.0.1", "n-gz"),
        slice("pv-2", "pv", "10.0.0.2", "n-sz"),
        slice("c-1", "pv-cache", "10.0.1.1", "n-gz"),
    ];
    v.node_regions = BTreeMap::from([("n-gz".into(), "gz".into()), ("n-sz".into(), "sz".into())]);
    v
}

#[test]
fn a_good_contract_publishes_its_config_map() {
    let plan = plan(&contract(good_spec()), &view(), &ProxyOptions::default());
    let Plan::Publish { config_map, config_version, channels, endpoints } = plan else { panic!("{plan:?}") };
    let config_map = config_map.expect("the ConfigMap path is on");
    assert_eq!(config_map.metadata.name.as_deref(), Some("pv-envoy"));
    assert_eq!(endpoints.channels["primary"].len(), 2, "the endpoints go to the xDS server: {endpoints:?}");
    assert!(config_version.starts_with("sha256:"));
    assert_eq!(crate::watch::endpoints::summary(&channels), "primary:2,cache:1");
    assert_eq!(channels[0].regions, ["gz", "sz"]);
    let cds = &config_map.data.as_ref().expect("data")["cds.yaml"];
    assert!(cds.contains("10.0.0.1") && cds.contains("9000"), "{cds}");
}

#[test]
fn without_the_config_map_path_no_config_map_is_made() {
    let plan = plan_for(&contract(good_spec()), &view(), &ProxyOptions::default(), false);
    let Plan::Publish { config_map, config_version, .. } = plan else { panic!("{plan:?}") };
    assert!(config_map.is_none());
    assert!(config_version.starts_with("sha256:"));
}

#[test]
fn invalid_input_holds_with_its_reason() {
    type Change = Box<dyn Fn(&mut StaticView)>;
    let cases: Vec<(serde_json::Value, Change, &str, bool)> = vec![
        (
            json!({"service": "pv", "port": 8080, "sla": {"maxLatency": "0s"}}),
            Box::new(|_| {}),
            reason::INVALID_SPEC,
            true,
        ),
        (
            good_spec(),
            Box::new(|v| {
                v.services.remove(&("ns".into(), "pv-cache".into()));
            }),
            reason::SERVICE_NOT_FOUND,
            false,
        ),
        (
            json!({"service": "pv", "port": 8081, "sla": {"maxLatency": "1s"}}),
            Box::new(|_| {}),
            reason::SERVICE_PORT_NOT_FOUND,
            false,
        ),
        (
            good_spec(),
            Box::new(|v| {
                let mut s = (*v.slices[0]).clone();
                s.endpoints[0].address = "not an address!".into();
                v.slices[0] = Arc::new(s);
            }),
            reason::INVALID_ENDPOINT,
            false,
        ),
    ];
    for (spec, change, expected, invalid_spec) in cases {
        let mut v = view();
        change(&mut v);
        let plan = plan(&contract(spec), &v, &ProxyOptions::default());
        let Plan::Hold { reason, invalid_spec: why, message } = &plan else { panic!("{plan:?}") };
        assert_eq!((*reason, why.is_some()), (expected, invalid_spec), "{message}");
        assert!(!message.is_empty());
    }
}

#[test]
fn the_missing_cache_service_is_named() {
    let mut v = view();
    v.services.remove(&("ns".into(), "pv-cache".into()));
    let plan = plan(&contract(good_spec()), &v, &ProxyOptions::default());
    let Plan::Hold { message, .. } = plan else { panic!("{plan:?}") };
    assert!(message.contains("Service \"pv-cache\" (channel \"cache\", spec.channels[1].service)"), "{message}");
}

#[test]
fn a_configuration_too_large_for_a_config_map_holds_as_config_too_large() {
    let mut v = view();
    let endpoints: Vec<serde_json::Value> =
        (0..1000).map(|i| json!({"addresses": [format!("10.1.{}.{}", i / 250, 1 + i % 250)]})).collect();
    v.slices.push(Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "pv-big", "namespace": "ns", "labels": {"kubernetes.io/service-name": "pv"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 9000}], "endpoints": endpoints,
        }))
        .expect("slice"),
    ));
    let channels: Vec<serde_json::Value> = (0..16).map(|i| json!({"name": format!("c{i}")})).collect();
    let spec = json!({"service": "pv", "port": 8080, "sla": {"maxLatency": "1s"}, "channels": channels});
    let plan = plan(&contract(spec), &v, &ProxyOptions::default());
    let Plan::Hold { reason, invalid_spec, message } = &plan else { panic!("{plan:?}") };
    assert_eq!((*reason, invalid_spec), (reason::CONFIG_TOO_LARGE, &None));
    assert!(message.contains("does not fit in ConfigMap ns/pv-envoy") && message.contains(" bytes)"), "{message}");
    assert!(status::is_invalid_input(reason), "it waits for a change");
}

#[test]
fn backoff_doubles_from_one_second_to_five_minutes() {
    let delays: Vec<u64> = (1..=10).map(|n| backoff_delay(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
    assert_eq!(backoff_delay(u32::MAX), MAX_BACKOFF);
    assert_eq!(backoff_delay(0), Duration::from_secs(1));
}
