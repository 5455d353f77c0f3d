//! Tests of [`super`].

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::*;

fn slice_json() -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": "pv-abcde", "namespace": "ns", "resourceVersion": "42", "uid": "u-1",
            "generateName": "pv-", "creationTimestamp": "2026-11-26T00:00:00Z",
            "labels": {SERVICE_NAME_LABEL: "pv", crds::REGION_LABEL: "hz",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-11-26T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "pv", "uid": "u-0",
                "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:endpoints": {}}}],
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9000, "protocol": "TCP", "appProtocol": "http"}, {"name": "all"}],
        "endpoints": [
            {"addresses": ["10.0.0.1", "10.0.0.9"], "nodeName": "n1", "zone": "gz-a",
             "conditions": {"ready": true, "serving": true, "terminating": false},
             "targetRef": {"kind": "Pod", "name": "pv-1", "namespace": "ns", "uid": "p-1"},
             "hints": {"forZones": [{"name": "gz-a"}]}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            {"addresses": ["10.0.0.3"]},
            {"addresses": []},
        ],
    })
}

#[test]
fn a_slice_keeps_its_service_region_ports_and_addressed_endpoints() {
    let cached: CachedSlice = serde_json::from_value(slice_json()).expect("reads an EndpointSlice");
    // The full type reads the same JSON: it is what the API serves.
    let _: EndpointSlice = serde_json::from_value(slice_json()).expect("valid EndpointSlice");
    assert_eq!(
        cached,
        CachedSlice {
            metadata: ObjectMeta {
                name: Some("pv-abcde".into()),
                namespace: Some("ns".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            service: Some("pv".into()),
            region: Some("hz".into()),
            ports: [SlicePort { name: "http".into(), port: Some(9000) }, SlicePort { name: "all".into(), port: None }]
                .into(),
            endpoints: [
                SliceEndpoint { address: "10.0.0.1".into(), ready: true, node: Some("n1".into()) },
                SliceEndpoint { address: "10.0.0.2".into(), ready: false, node: None },
                SliceEndpoint { address: "10.0.0.3".into(), ready: true, node: None },
            ]
            .into(),
        }
    );
}

#[test]
fn a_slice_without_labels_ports_or_endpoints_is_empty_not_an_error() {
    let cached: CachedSlice =
        serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "ns"}, "addressType": "FQDN"}))
            .expect("reads");
    assert_eq!((cached.service, cached.region), (None, None));
    assert!(cached.ports.is_empty() && cached.endpoints.is_empty());
}

#[test]
fn a_service_keeps_its_ports_or_its_external_name() {
    let value = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "pv", "namespace": "ns", "resourceVersion": "7", "labels": {"app": "pv"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"], "selector": {"app": "pv"},
            "ports": [{"name": "http", "port": 8080, "targetPort": 9000, "protocol": "TCP"},
                      {"port": 8443, "targetPort": "https"}]},
        "status": {"loadBalancer": {}},
    });
    let _: Service = serde_json::from_value(value.clone()).expect("valid Service");
    let cached: CachedService = serde_json::from_value(value).expect("reads a Service");
    assert_eq!(cached.metadata.labels, None, "labels are not kept");
    assert_eq!(cached.metadata.resource_version.as_deref(), Some("7"));
    assert_eq!(
        cached.shape,
        ServiceShape::Ports(
            [
                ServicePort { name: "http".into(), port: 8080, target_port: Some(9000) },
                ServicePort { name: "".into(), port: 8443, target_port: None },
            ]
            .into()
        )
    );

    let external: CachedService = serde_json::from_value(json!({
        "metadata": {"name": "cache", "namespace": "ns"},
        "spec": {"type": "ExternalName", "externalName": "cache.example.org", "ports": [{"port": 80}]},
    }))
    .expect("reads");
    assert_eq!(external.shape, ServiceShape::ExternalName("cache.example.org".into()));
    let no_spec: CachedService =
        serde_json::from_value(json!({"metadata": {"name": "x", "namespace": "ns"}})).expect("reads");
    assert_eq!(no_spec.shape, ServiceShape::Ports([].into()));
}

#[test]
fn a_config_map_keeps_its_name_owners_and_fingerprint_only() {
    let value = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "pv-envoy", "namespace": "ns", "resourceVersion": "9", "uid": "cm-1",
            "labels": {configmap::MANAGED_BY_LABEL: configmap::MANAGER, configmap::CONTRACT_LABEL: "pv"},
            "annotations": {configmap::CONFIG_VERSION_ANNOTATION: "sha256:abc"},
            "ownerReferences": [{"apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
                "name": "pv", "uid": "u-1", "controller": true, "blockOwnerDeletion": true}]},
        "data": {"cds.yaml": "resources: []", "lds.yaml": "resources: []", "rds.yaml": "resources: []"},
    });
    let full: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(value.clone()).expect("valid");
    let cached: CachedConfigMap = serde_json::from_value(value).expect("reads a ConfigMap");
    assert_eq!(cached.fingerprint, configmap::fingerprint(&full), "the same fingerprint as the full object");
    assert_eq!(cached.metadata.owner_references, full.metadata.owner_references);
    assert_eq!((cached.metadata.labels.as_ref(), cached.metadata.annotations.as_ref()), (None, None));
    assert_eq!(cached.metadata.name.as_deref(), Some("pv-envoy"));
}

#[test]
fn the_cached_types_address_the_same_api_resources() {
    use kube::Resource as _;
    assert_eq!(CachedService::url_path(&(), Some("ns")), Service::url_path(&(), Some("ns")));
    assert_eq!(CachedSlice::url_path(&(), Some("ns")), EndpointSlice::url_path(&(), Some("ns")));
    assert_eq!(CachedSlice::api_version(&()), "discovery.k8s.io/v1");
}
