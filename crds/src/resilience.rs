//! The resilience parts of a ChannelContract's spec: how failed requests are retried (and with what
//! back-off), and when an endpoint is ejected or a channel refuses more load (circuit breaking).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::duration_schema;

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
