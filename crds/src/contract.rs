//! `ChannelContract`: the resilience contract of one service.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::resilience::{CircuitBreaker, RetryPolicy};
use crate::schema::{conditions_schema, dns_label_schema, duration_schema, region_list_schema};

/// The resilience contract of one service: its channels, latency SLA, retries, circuit breaking and
/// failover regions. The operator turns it into Envoy configuration.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "csp.contracts.dev",
    version = "v1alpha1",
    kind = "ChannelContract",
    plural = "channelcontracts",
    singular = "channelcontract",
    shortname = "chc",
    category = "csp",
    namespaced,
    status = "ChannelContractStatus",
    derive = "PartialEq",
    doc = "A ChannelContract declares the resilience contract of one Service: latency SLA, retries with back-off, circuit breaking, ordered fallback channels and cross-region failover. The operator publishes it as Envoy configuration.",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service","description":"The Service clients call"}"#,
    printcolumn = r#"{"name":"Channels","type":"string","jsonPath":".status.channelSummary","description":"Channels in order (primary first) with their ready endpoints"}"#,
    printcolumn = r#"{"name":"Regions","type":"string","jsonPath":".spec.failover.regions","description":"Failover regions in order"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether proxies serve the contract"}"#,
    printcolumn = r#"{"name":"Proxies","type":"string","jsonPath":".status.proxies.summary","description":"Proxies over xDS: how many of those that serve the namespace run the current configuration"}"#,
    printcolumn = r#"{"name":"Drill","type":"string","jsonPath":".status.lastDrill.phase","description":"The result of the last ContractDrill of the contract"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.retry) || !has(self.retry.perTryTimeout) || duration(self.retry.perTryTimeout) <= duration(self.sla.maxLatency)"
).message("spec.retry.perTryTimeout must be less than or equal to spec.sla.maxLatency (one try cannot outlast the whole request)").field_path(".retry.perTryTimeout").reason(Reason::FieldValueInvalid))]
pub struct ChannelContractSpec {
    /// The Service that clients call, in the contract's namespace.
    #[schemars(schema_with = "dns_label_schema")]
    pub service: String,

    /// The Service port that clients call.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// The protocol spoken to the upstream endpoints: HTTP (HTTP/1.1), HTTP2 or GRPC (both HTTP/2).
    #[serde(default)]
    pub protocol: Protocol,

    /// The latency service-level agreement.
    pub sla: Sla,

    /// How failed requests are retried. Omitted: exponential back-off, 2 retries on 5xx, reset and
    /// connect-failure.
    #[serde(default)]
    pub retry: RetryPolicy,

    /// When an endpoint is ejected for failing, and how much load it may take.
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,

    /// The channels in order: the first is the primary, the rest are degraded fallbacks that take traffic
    /// when the earlier ones have no healthy endpoint. Empty: one channel `primary` that is the Service
    /// itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(
        validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))")
            .message("spec.channels[].name must be unique: two channels have the same name"),
        validation = Rule::new("self.all(c, !has(c.selector) || self.exists_one(d, has(d.selector) && d.selector == c.selector))")
            .message("spec.channels[].selector must be unique: two channels have the same selector")
    )]
    pub channels: Vec<Channel>,

    /// Cross-region failover of the primary channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
}

/// The protocol spoken to upstream endpoints.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    // HTTP/1.1.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    // HTTP/2 (prior knowledge).
    #[serde(rename = "HTTP2")]
    Http2,
    // gRPC over HTTP/2.
    #[serde(rename = "GRPC")]
    Grpc,
}

/// The latency service-level agreement.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sla {
    /// End-to-end deadline of one request, retries included (a duration such as `120ms`, `1.5s`). A
    /// request that has no response by then gets a 504.
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.sla.maxLatency must be greater than 0"))]
    pub max_latency: String,

    /// The share of requests that must be answered within `maxLatency` without failing, greater than 0
    /// and less than 1, e.g. `0.999`. Omitted: 0.99. The chart's alert CSPContractSLABreached fires when
    /// more than `1 - objective` of the requests breach for 5 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0").message("spec.sla.objective must be greater than 0 and less than 1 (e.g. 0.999)"))]
    pub objective: Option<f64>,
}

/// The SLA objective of a contract that declares none.
pub const DEFAULT_SLA_OBJECTIVE: f64 = 0.99;

/// One channel: a Service that can answer the contract's requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    /// The channel's name, unique in the contract (a DNS label, e.g. `primary`, `cache`).
    #[schemars(schema_with = "dns_label_schema")]
    pub name: String,

    /// The Service behind the channel, in the contract's namespace. Omitted: `spec.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "dns_label_schema")]
    pub service: Option<String>,

    /// The Service port. Omitted: `spec.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// A request with header `X-Channel-Priority: <selector>` goes straight to this channel. Unique in
    /// the contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "dns_label_schema")]
    pub selector: Option<String>,
}

/// Cross-region failover of the primary channel.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// The regions in the order in which the primary's endpoints are tried, region by region (values of
    /// the `topology.kubernetes.io/region` label). Each region once.
    #[schemars(schema_with = "region_list_schema")]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(s, s == r))").message("spec.failover.regions must not repeat a region"))]
    pub regions: Vec<String>,
}

/// What the operator last did with the contract.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelContractStatus {
    /// The `metadata.generation` that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Hash of the proxy configuration now published (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,

    /// Accepted, Programmed and Ready, per Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,

    /// What each channel resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<ChannelStatus>,

    /// The channels in order with their ready endpoints, e.g. `primary:6,cache:2` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_summary: Option<String>,

    /// Proxies that take the configuration over xDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxies: Option<ProxyStatus>,

    /// The last ContractDrill of the contract that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<crate::drill::LastDrill>,

    /// When a ContractDrill of the contract last Passed: what a ContractPolicy's `spec.drill.requiredWithin`
    /// judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_passed_drill_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// What one channel resolved to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// The channel's name.
    pub name: String,
    /// Ready endpoints published for the channel.
    pub endpoints: i32,
    /// Regions of those endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
}

/// Proxies that take the configuration over xDS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// Proxies connected to the operator's xDS servers (every replica) that serve the contract's namespace.
    pub selected: i32,
    /// Of those, proxies that acknowledged (ACK) the contract's current configuration and run it.
    pub acked: i32,
    /// Of those, proxies that are on another version or have not answered yet.
    pub stale: i32,
    /// Of those, proxies that rejected (NACK) the current configuration.
    pub rejected: i32,
    /// The latest rejection of the current configuration by a proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rejection: Option<ProxyRejection>,
    /// For `kubectl get`: e.g. `3/3 acked` or `2/3 acked, 1 rejected`.
    #[serde(default)]
    pub summary: String,
}

/// A proxy's rejection of a contract's configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRejection {
    /// The proxy (its `node.id`, the pod name).
    pub proxy: String,
    /// The configuration version it rejected.
    pub config_version: String,
    /// Envoy's own message.
    pub message: String,
    /// When (RFC 3339).
    pub time: String,
}

/// The channel of a contract that declares none.
pub const DEFAULT_CHANNEL: &str = "primary";

/// One channel with its defaults applied: what the controller watches EndpointSlices for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedChannel {
    /// The channel's name.
    pub name: String,
    /// Its Service, in the contract's namespace (`spec.service` when the channel names none).
    pub service: String,
    /// Its Service port (`spec.port` when the channel names none).
    pub port: i32,
    /// Its `x-channel-priority` selector, if any.
    pub selector: Option<String>,
}

/// The channels in order, defaults applied: none declared means one channel `primary`, the Service itself.
/// The operator's endpoints are keyed by these names.
pub fn resolve_channels(spec: &ChannelContractSpec) -> Vec<ResolvedChannel> {
    if spec.channels.is_empty() {
        return vec![ResolvedChannel {
            name: DEFAULT_CHANNEL.to_owned(),
            service: spec.service.clone(),
            port: spec.port,
            selector: None,
        }];
    }
    spec.channels
        .iter()
        .map(|c| ResolvedChannel {
            name: c.name.clone(),
            service: c.service.clone().unwrap_or_else(|| spec.service.clone()),
            port: c.port.unwrap_or(spec.port),
            selector: c.selector.clone(),
        })
        .collect()
}
