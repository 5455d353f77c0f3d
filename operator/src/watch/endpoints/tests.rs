//! Tests of [`super`].

use serde_json::json;

use crds::resolve_channels;

use super::*;

/// [`gather`] with the spec's channels resolved, as a reconcile does.
fn gather(namespace: &str, spec: &ChannelContractSpec, view: &StaticView) -> Result<ChannelEndpoints, GatherError> {
    super::gather(namespace, spec, &resolve_channels(spec), view)
}

fn spec(value: serde_json::Value) -> ChannelContractSpec {
    serde_json::from_value(value).expect("spec deserializes")
}

fn two_channels() -> ChannelContractSpec {
    spec(json!({
        "service": "pv", "port": 8080, "sla": {"maxLatency": "1s"},
        "channels": [{"name": "primary"}, {"name": "cache", "service": "pv-cache", "selector": "cache"}],
    }))
}

fn service(name: &str, ports: serde_json::Value) -> Arc<CachedService> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"ports": ports},
        }))
        .expect("service"),
    )
}

fn slice(
    name: &str,
    service: &str,
    region: Option<&str>,
    ports: serde_json::Value,
    eps: serde_json::Value,
) -> Arc<CachedSlice> {
    let mut labels = json!({SERVICE_NAME_LABEL: service});
    if let Some(r) = region {
        labels[crds::REGION_LABEL] = json!(r);
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "addressType": "IPv4", "ports": ports, "endpoints": eps,
        }))
        .expect("slice"),
    )
}

fn view() -> StaticView {
    let mut v = StaticView::default();
    for (name, ports) in
        [("pv", json!([{"name": "http", "port": 8080, "targetPort": 9000}])), ("pv-cache", json!([{"port": 8080}]))]
    {
        v.services.insert(("ns".into(), name.into()), service(name, ports));
    }
    v.node_regions.insert("node-gz".into(), "gz".into());
    v.node_regions.insert("node-sz".into(), "sz".into());
    v
}

fn ep(address: &str, port: u16, region: Option<&str>) -> Endpoint {
    Endpoint { address: address.into(), port, ready: true, region: region.map(Into::into) }
}

#[test]
fn ready_endpoints_take_their_node_region_and_the_named_slice_port() {
    let mut v = view();
    v.slices.push(slice(
        "pv-a",
        "pv",
        None,
        json!([{"name": "metrics", "port": 9100}, {"name": "http", "port": 9000}]),
        json!([
            {"addresses": ["10.0.0.1"], "nodeName": "node-gz", "conditions": {"ready": true}},
            {"addresses": ["10.0.0.2", "10.0.0.99"], "nodeName": "node-sz"},
            {"addresses": ["10.0.0.3"], "nodeName": "node-gz", "conditions": {"ready": false}},
            {"addresses": ["10.0.0.4"], "nodeName": "node-unknown"},
        ]),
    ));
    v.slices.push(slice("pv-cache-x", "pv-cache", None, json!([{"port": 7000}]), json!([{"addresses": ["10.0.1.1"]}])));
    let g = gather("ns", &two_channels(), &v).expect("gathers");
    assert_eq!(
        g.channels["primary"],
        vec![ep("10.0.0.1", 9000, Some("gz")), ep("10.0.0.2", 9000, Some("sz")), ep("10.0.0.4", 9000, None)]
    );
    assert_eq!(g.channels["cache"], vec![ep("10.0.1.1", 7000, None)]);
}

#[test]
fn the_slice_label_gives_the_region_when_the_endpoint_has_no_node_region() {
    let mut v = view();
    v.slices.push(slice(
        "pv-imported",
        "pv",
        Some("hz"),
        json!([{"name": "http", "port": 9000}]),
        json!([{"addresses": ["10.0.2.1"]}, {"addresses": ["10.0.2.2"], "nodeName": "node-gz"}]),
    ));
    let g = gather("ns", &two_channels(), &v).expect("gathers");
    assert_eq!(g.channels["primary"], vec![ep("10.0.2.1", 9000, Some("hz")), ep("10.0.2.2", 9000, Some("gz"))]);
    assert_eq!(g.channels["cache"], vec![]);
}

#[test]
fn slices_of_other_services_namespaces_or_ports_are_ignored() {
    let mut v = view();
    v.slices.push(slice(
        "other",
        "not-pv",
        None,
        json!([{"name": "http", "port": 9000}]),
        json!([{"addresses": ["10.9.0.1"]}]),
    ));
    v.slices.push(slice(
        "wrong-port-name",
        "pv",
        None,
        json!([{"name": "grpc", "port": 9000}]),
        json!([{"addresses": ["10.9.0.2"]}]),
    ));
    let mut elsewhere = (*slice(
        "elsewhere",
        "pv",
        None,
        json!([{"name": "http", "port": 9000}]),
        json!([{"addresses": ["10.9.0.3"]}]),
    ))
    .clone();
    elsewhere.metadata.namespace = Some("other-ns".into());
    v.slices.push(Arc::new(elsewhere));
    let g = gather("ns", &two_channels(), &v).expect("gathers");
    assert!(g.channels["primary"].is_empty(), "{g:?}");
}

#[test]
fn a_slice_port_without_a_number_uses_the_target_port() {
    let mut v = view();
    v.slices.push(slice("pv-all", "pv", None, json!([{"name": "http"}]), json!([{"addresses": ["10.0.3.1"]}])));
    let g = gather("ns", &two_channels(), &v).expect("gathers");
    assert_eq!(g.channels["primary"], vec![ep("10.0.3.1", 9000, None)]);
}

#[test]
fn missing_services_are_all_named_with_their_channel_and_field() {
    let mut v = view();
    v.services.remove(&("ns".to_owned(), "pv-cache".to_owned()));
    let err = gather("ns", &two_channels(), &v).expect_err("cache Service is missing");
    assert_eq!(
        err.to_string(),
        "Service \"pv-cache\" (channel \"cache\", spec.channels[1].service) not found in namespace ns: create it or fix the contract"
    );
    v.services.clear();
    let err = gather("ns", &two_channels(), &v).expect_err("both missing");
    let GatherError::ServiceNotFound { missing, .. } = &err else { panic!("{err:?}") };
    assert_eq!(missing.iter().map(|m| m.service.as_str()).collect::<Vec<_>>(), ["pv", "pv-cache"]);
    assert!(err.to_string().contains("Service \"pv\" (channel \"primary\", spec.service)"), "{err}");
    assert!(err.to_string().contains("create them"), "{err}");
}

#[test]
fn the_main_service_must_exist_even_when_no_channel_uses_it() {
    let mut v = view();
    v.services.remove(&("ns".to_owned(), "pv".to_owned()));
    let s = spec(json!({
        "service": "pv", "port": 8080, "sla": {"maxLatency": "1s"},
        "channels": [{"name": "only", "service": "pv-cache"}],
    }));
    let err = gather("ns", &s, &v).expect_err("pv is missing");
    assert!(err.to_string().starts_with("Service \"pv\" (spec.service) not found"), "{err}");
}

#[test]
fn a_port_that_the_service_lacks_is_named() {
    let mut s = two_channels();
    s.channels[1].port = Some(9999);
    let err = gather("ns", &s, &view()).expect_err("no port 9999");
    assert_eq!(
        err,
        GatherError::ServicePortNotFound {
            namespace: "ns".into(),
            service: "pv-cache".into(),
            channel: "cache".into(),
            port: 9999,
            ports: "8080".into(),
        }
    );
}

#[test]
fn an_external_name_service_is_one_dns_endpoint() {
    let mut v = view();
    let external: CachedService = serde_json::from_value(json!({
        "metadata": {"name": "pv-cache", "namespace": "ns"},
        "spec": {"type": "ExternalName", "externalName": "cache.example.org"},
    }))
    .expect("service");
    v.services.insert(("ns".into(), "pv-cache".into()), Arc::new(external));
    let g = gather("ns", &two_channels(), &v).expect("gathers");
    assert_eq!(g.channels["cache"], vec![ep("cache.example.org", 8080, None)]);
}

#[test]
fn a_contract_without_channels_gathers_its_service_as_primary() {
    let mut v = view();
    v.slices.push(slice(
        "pv-a",
        "pv",
        None,
        json!([{"name": "http", "port": 9000}]),
        json!([{"addresses": ["10.0.0.1"], "nodeName": "node-sz"}]),
    ));
    let s = spec(json!({"service": "pv", "port": 8080, "sla": {"maxLatency": "1s"}}));
    let g = gather("ns", &s, &v).expect("gathers");
    assert_eq!(g.channels.keys().collect::<Vec<_>>(), ["primary"]);
    assert_eq!(g.channels["primary"], vec![ep("10.0.0.1", 9000, Some("sz"))]);
}

#[test]
fn summary_lists_channels_in_order() {
    let channels = vec![
        crds::ChannelStatus { name: "primary".into(), endpoints: 2, regions: vec![] },
        crds::ChannelStatus { name: "cache".into(), endpoints: 1, regions: vec![] },
    ];
    assert_eq!(summary(&channels), "primary:2,cache:1");
    assert_eq!(summary(&[]), "");
}
