//! The server state: what status reads of a contract's proxies, this replica's and the others'.

use super::*;
use crate::publish::xds::fleet::ProxyIdentity;

fn contract(name: &str) -> Arc<ChannelContract> {
    Arc::new(
        serde_json::from_value(
            serde_json::json!({"apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"service": "svc", "port": 8080, "sla": {"maxLatency": "1s"}}}),
        )
        .expect("a contract"),
    )
}

fn key(name: &str) -> ContractKey {
    ContractKey { namespace: "ns".into(), name: name.into() }
}

fn proxy(id: &str) -> ProxyIdentity {
    ProxyIdentity { id: id.into(), fleet: "f".into(), region: None, namespaces: None, drills: false, tracing: None }
}

#[test]
fn status_counts_this_replicas_proxies_and_the_fresh_reports_of_the_others() {
    let xds = Xds::new(XdsMetrics::default());
    xds.publish(key("a"), "v2".into(), contract("a"), ChannelEndpoints::default());
    xds.connect(1, proxy("p1"));
    xds.apply(1, vec![Event::Running { key: key("a"), version: Some("v2".into()) }], "t1");
    let mine = xds.report("me");
    assert_eq!(
        mine.contracts["ns/a"],
        ContractReport { version: "v2".into(), selected: 1, acked: 1, ..Default::default() }
    );

    let rejection = Rejection { version: "v2".into(), proxy: "p3".into(), message: "no".into(), time: "t9".into() };
    let peer = |replica: &str, version: &str, selected, acked, rejected, last: Option<Rejection>| Report {
        replica: replica.into(),
        contracts: BTreeMap::from([(
            "ns/a".to_owned(),
            ContractReport { version: version.into(), selected, acked, rejected, last_rejection: last },
        )]),
        drills: BTreeMap::new(),
    };
    xds.take_dirty();
    xds.peer_reports(vec![peer("b", "v2", 3, 1, 1, Some(rejection.clone())), peer("c", "v1", 2, 2, 0, None)]);
    assert!(xds.take_dirty().contains(&key("a")), "a peer's change refreshes the contract's status");
    let seen = xds.observe(&key("a")).proxies;
    // Mine: 1 acked. b: 3 selected, 1 acked, 1 rejected, 1 stale. c is behind (v1): its 2 are stale.
    assert_eq!(seen, ProxyCounts { selected: 6, acked: 2, rejected: 1, stale: 3, last_rejection: Some(rejection) });
    // A replica that is gone (its report no longer fresh) no longer counts.
    xds.peer_reports(Vec::new());
    assert_eq!(xds.observe(&key("a")).proxies.selected, 1);
}

#[test]
fn a_rejection_withdraws_the_version_for_the_last_accepted_one_and_says_so() {
    let xds = Xds::new(XdsMetrics::default());
    xds.connect(1, proxy("p1"));
    xds.publish(key("a"), "v1".into(), contract("a"), ChannelEndpoints::default());
    xds.apply(1, vec![Event::Running { key: key("a"), version: Some("v1".into()) }], "t1");
    xds.publish(key("a"), "v2".into(), contract("a"), ChannelEndpoints::default());
    let generation = *xds.generations().borrow();
    xds.apply(1, vec![Event::Rejected { key: key("a"), version: "v2".into(), message: "bad".into() }], "t2");
    assert!(*xds.generations().borrow() > generation, "the proxies are told");
    let seen = xds.observe(&key("a"));
    assert_eq!(seen.served.as_deref(), Some("v1"));
    assert_eq!(seen.rejection.map(|r| (r.proxy, r.message)), Some(("p1".to_owned(), "bad".to_owned())));
    assert_eq!(seen.proxies.rejected, 1);
}

#[test]
fn nothing_is_answered_until_every_contract_known_at_the_start_was_looked_at() {
    let xds = Xds::new(XdsMetrics::default());
    let keys = [key("a"), key("b")];
    xds.publish(key("a"), "v1".into(), contract("a"), ChannelEndpoints::default());
    assert!(!xds.has_seen(&keys));
    xds.held(&key("b"));
    assert!(xds.has_seen(&keys));
}

#[test]
fn a_drills_fault_reaches_only_the_proxies_that_can_take_it() {
    use crate::model::ActiveFault;
    use crate::publish::xds::snapshot::{Kind, View, snapshot};
    let mut c = (*contract("a")).clone();
    c.spec.failover = Some(crds::Failover { regions: vec!["gz".into(), "sz".into()] });
    let mut endpoints = ChannelEndpoints::default();
    endpoints.channels.insert(
        "primary".into(),
        vec![
            crate::model::Endpoint { address: "10.0.0.1".into(), port: 80, ready: true, region: Some("gz".into()) },
            crate::model::Endpoint { address: "10.0.0.2".into(), port: 80, ready: true, region: Some("sz".into()) },
        ],
    );
    let fault = ActiveFault {
        run: "ns/gz-outage/1".into(),
        fault: serde_json::from_value(serde_json::json!({"region": "gz", "abort": {}})).expect("fault"),
    };
    let xds = Xds::new(XdsMetrics::default());
    xds.publish_with_fault(key("a"), "v1+drill".into(), Arc::new(c), endpoints, Some(fault));
    let inner = xds.inner();
    let names = |drills: bool| {
        let view =
            View { region: Some("sz".into()), namespaces: None, listen: [0, 0, 0, 0].into(), drills, tracing: None };
        let s = snapshot(&inner.catalog, &view);
        Kind::ALL.iter().flat_map(|k| s.kinds[k.index()].keys().map(move |n| format!("{k:?}:{n}"))).collect::<Vec<_>>()
    };
    let capable = names(true);
    for expected in ["Listener:csp~fault", "Cluster:csp~ns~a~~drill", "Route:csp~ns~a~~drill", "Scope:csp~ns~a~~drill"]
    {
        assert!(capable.contains(&expected.to_owned()), "{expected} missing from {capable:?}");
    }
    let plain = names(false);
    assert!(plain.iter().all(|n| !n.contains("fault") && !n.contains("~~drill")), "{plain:?}");
}

#[test]
fn a_tracing_proxys_gateway_listeners_export_spans_to_its_otlp_cluster() {
    use crate::envoy::pb::envoy::config::core::v3::grpc_service;
    use crate::envoy::pb::envoy::config::listener::v3::{Listener, filter};
    use crate::envoy::pb::envoy::config::trace::v3::{OpenTelemetryConfig, tracing};
    use crate::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::Message;

    let hcm = |tracing: Option<u32>| {
        let listener = crate::translate::gateway_listener([0, 0, 0, 0].into(), 8080, tracing);
        let Some(filter::ConfigType::TypedConfig(any)) = &listener.filter_chains[0].filters[0].config_type else {
            panic!("{listener:?}")
        };
        let _: &Listener = &listener;
        HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM")
    };
    let traced = hcm(Some(2500)).tracing.expect("tracing");
    assert_eq!(traced.random_sampling.expect("a share").value, 25.0);
    let provider = traced.provider.expect("a tracer");
    assert_eq!(provider.name, "envoy.tracers.opentelemetry");
    let Some(tracing::http::ConfigType::TypedConfig(any)) = provider.config_type else { panic!("typed config") };
    let otel = OpenTelemetryConfig::decode(any.value.as_slice()).expect("OpenTelemetryConfig");
    let Some(grpc_service::TargetSpecifier::EnvoyGrpc(target)) = otel.grpc_service.and_then(|g| g.target_specifier)
    else {
        panic!("an Envoy gRPC target")
    };
    assert_eq!(target.cluster_name, crate::envoy::bootstrap::OTLP_CLUSTER);
    assert_eq!(otel.service_name, "csp-gateway");
    // Without the OTLP cluster in its bootstrap, no tracer (it would be rejected), only the routes' tags.
    assert!(hcm(None).tracing.is_some_and(|t| t.provider.is_none()));
}
