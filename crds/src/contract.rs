//! `ChannelContract`: the resilience contract of one service.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Sla {
    /// End-to-end deadline of one request, retries included (a duration such as `120ms`, `1.5s`). A
    /// request that has no response by then gets a 504.
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.sla.maxLatency must be greater than 0"))]
    pub max_latency: String,
}

/// How failed requests are retried.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// None (no retries), Fixed (every retry waits a random time below `backoff.baseInterval`) or
    /// ExponentialBackoff (retry n waits a random time below `backoff.baseInterval` * (2^n - 1), at most
    /// `backoff.maxInterval`). Intervals are jittered, as Envoy's always are.
    #[serde(default)]
    pub strategy: RetryStrategy,

    /// How many times a failed request is retried (0 to 10).
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub max_retries: i32,

    /// Deadline of each try (a duration). Must be at most `sla.maxLatency`. Omitted: each try may take
    /// what is left of `sla.maxLatency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.retry.perTryTimeout must be greater than 0"))]
    pub per_try_timeout: Option<String>,

    /// Intervals between tries.
    #[serde(default)]
    pub backoff: Backoff,

    /// Which failures are retried, in Envoy's `retry_on` vocabulary.
    #[serde(default = "default_retry_on")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d == c))").message("spec.retry.retryOn must not repeat a condition"))]
    pub retry_on: Vec<RetryOn>,

    /// Retries may be at most this percentage of the active requests to a channel (a retry budget that
    /// keeps retries from amplifying an outage). Omitted: Envoy's default of 20%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub budget_percent: Option<f64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            strategy: RetryStrategy::default(),
            max_retries: default_max_retries(),
            per_try_timeout: None,
            backoff: Backoff::default(),
            retry_on: default_retry_on(),
            budget_percent: None,
        }
    }
}

fn default_max_retries() -> i32 {
    2
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::FiveXx, RetryOn::Reset, RetryOn::ConnectFailure]
}

/// The retry strategy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RetryStrategy {
    // No retries.
    None,
    // A constant interval between tries.
    Fixed,
    // Jittered exponential back-off.
    #[default]
    ExponentialBackoff,
}

/// A retry condition in Envoy's `retry_on` vocabulary.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryOn {
    // Any 5xx response, or no response.
    #[serde(rename = "5xx")]
    FiveXx,
    // 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    // A reset or a disconnect.
    #[serde(rename = "reset")]
    Reset,
    // A reset before the request was sent.
    #[serde(rename = "reset-before-request")]
    ResetBeforeRequest,
    // A failed connection.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    // A 409 Conflict.
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    // A REFUSED_STREAM from an HTTP/2 upstream.
    #[serde(rename = "refused-stream")]
    RefusedStream,
    // gRPC status CANCELLED.
    #[serde(rename = "cancelled")]
    Cancelled,
    // gRPC status DEADLINE_EXCEEDED.
    #[serde(rename = "deadline-exceeded")]
    DeadlineExceeded,
    // gRPC status INTERNAL.
    #[serde(rename = "internal")]
    Internal,
    // gRPC status RESOURCE_EXHAUSTED.
    #[serde(rename = "resource-exhausted")]
    ResourceExhausted,
    // gRPC status UNAVAILABLE.
    #[serde(rename = "unavailable")]
    Unavailable,
}

impl RetryOn {
    /// The word as Envoy spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FiveXx => "5xx",
            Self::GatewayError => "gateway-error",
            Self::Reset => "reset",
            Self::ResetBeforeRequest => "reset-before-request",
            Self::ConnectFailure => "connect-failure",
            Self::Retriable4xx => "retriable-4xx",
            Self::RefusedStream => "refused-stream",
            Self::Cancelled => "cancelled",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::Internal => "internal",
            Self::ResourceExhausted => "resource-exhausted",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Intervals between tries.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.maxInterval) || duration(self.baseInterval) <= duration(self.maxInterval)"
).message("spec.retry.backoff.baseInterval must be less than or equal to spec.retry.backoff.maxInterval").field_path(".baseInterval").reason(Reason::FieldValueInvalid))]
pub struct Backoff {
    /// The bound of the first interval (ExponentialBackoff), or of every interval (Fixed). A duration.
    #[serde(default = "default_base_interval")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.retry.backoff.baseInterval must be greater than 0"))]
    pub base_interval: String,

    /// The longest interval (ExponentialBackoff). Omitted: ten times `baseInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_schema")]
    pub max_interval: Option<String>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base_interval: default_base_interval(), max_interval: None }
    }
}

fn default_base_interval() -> String {
    "25ms".to_owned()
}

/// When an endpoint is ejected for failing, and how much load a channel may take.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Minimum success rate of an endpoint, in (0, 1]; an endpoint below it (over `minimumRequests`
    /// requests in an `interval`) is ejected; 1 tolerates no failure: an endpoint is ejected at its first
    /// failure. Omitted: endpoints are ejected on consecutive errors only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("spec.circuitBreaker.threshold must be greater than 0 and at most 1 (a success rate such as 0.85)"))]
    pub threshold: Option<f64>,

    /// Requests an endpoint must see in an `interval` before its success rate is judged.
    #[serde(default = "default_minimum_requests")]
    #[schemars(range(min = 1))]
    pub minimum_requests: i32,

    /// Consecutive 5xx responses after which an endpoint is ejected.
    #[serde(default = "default_consecutive_errors")]
    #[schemars(range(min = 1))]
    pub consecutive_errors: i32,

    /// How often endpoints are judged (a duration).
    #[serde(default = "default_interval")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.circuitBreaker.interval must be greater than 0"))]
    pub interval: String,

    /// How long an endpoint stays ejected the first time; longer each time again (a duration).
    #[serde(default = "default_base_ejection_time")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.circuitBreaker.baseEjectionTime must be greater than 0"))]
    pub base_ejection_time: String,

    /// The largest percentage of a channel's endpoints that may be ejected at once. 100 lets traffic
    /// leave a channel whose endpoints all fail, which is what failover needs.
    #[serde(default = "default_max_ejection_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: i32,

    /// The most connections to a channel's endpoints.
    #[serde(default = "default_max_1024")]
    #[schemars(range(min = 1))]
    pub max_connections: i32,

    /// The most requests waiting for a connection.
    #[serde(default = "default_max_1024")]
    #[schemars(range(min = 1))]
    pub max_pending_requests: i32,

    /// The most requests in flight to a channel.
    #[serde(default = "default_max_1024")]
    #[schemars(range(min = 1))]
    pub max_requests: i32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            threshold: None,
            minimum_requests: default_minimum_requests(),
            consecutive_errors: default_consecutive_errors(),
            interval: default_interval(),
            base_ejection_time: default_base_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
            max_connections: default_max_1024(),
            max_pending_requests: default_max_1024(),
            max_requests: default_max_1024(),
        }
    }
}

fn default_minimum_requests() -> i32 {
    20
}
fn default_consecutive_errors() -> i32 {
    5
}
fn default_interval() -> String {
    "10s".to_owned()
}
fn default_base_ejection_time() -> String {
    "30s".to_owned()
}
fn default_max_ejection_percent() -> i32 {
    100
}
fn default_max_1024() -> i32 {
    1024
}

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
    /// Proxies connected to the xDS server that subscribe to this contract.
    pub connected: i32,
    /// Proxies that acknowledged the current configuration.
    pub acked: i32,
    /// Proxies that rejected the current configuration.
    pub rejected: i32,
    /// The last rejection's message from a proxy.
    #[serde(default)]
    pub last_rejection: String,
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
