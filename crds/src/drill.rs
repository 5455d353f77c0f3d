//! `ContractDrill`: a disaster-recovery drill that proves a ChannelContract's promise with a real fault.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema::{conditions_schema, dns_label_schema, duration_schema, object_name_schema, region_schema};

/// A disaster-recovery drill: the operator puts a fault into the proxies that serve a ChannelContract (an
/// outage of one region or channel, as the proxies see it), measures from the proxies' own access logs
/// how long traffic took to move to the next region or channel, compares that with the promise, and
/// removes the fault after `duration`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "csp.contracts.dev",
    version = "v1alpha1",
    kind = "ContractDrill",
    plural = "contractdrills",
    singular = "contractdrill",
    shortname = "drill",
    category = "csp",
    namespaced,
    status = "ContractDrillStatus",
    derive = "PartialEq",
    doc = "A ContractDrill proves a ChannelContract's failover promise with a real fault: the operator pushes the fault to the contract's proxies over xDS, measures the switchover from their access logs, reports Passed or Failed against spec.expect.failoverWithin, and removes the fault after spec.duration.",
    printcolumn = r#"{"name":"Contract","type":"string","jsonPath":".spec.contract","description":"The ChannelContract under test"}"#,
    printcolumn = r#"{"name":"Fault","type":"string","jsonPath":".status.faultSummary","description":"What fails: region and/or channel, abort and/or delay"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Pending, Running, Passed, Failed or Aborted"}"#,
    printcolumn = r#"{"name":"Switchover","type":"string","jsonPath":".status.switchover","description":"Fault start to the first request served by the next region or channel (the slowest proxy)"}"#,
    printcolumn = r#"{"name":"Promised","type":"string","jsonPath":".spec.expect.failoverWithin","description":"The switchover the contract promises"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.expect.failoverWithin) < duration(self.duration)")
        .message("spec.expect.failoverWithin must be shorter than spec.duration (the switchover must happen while the fault lasts)")
        .field_path(".expect.failoverWithin").reason(Reason::FieldValueInvalid),
    validation = Rule::new("self.contract == oldSelf.contract && self.fault == oldSelf.fault && self.duration == oldSelf.duration && self.expect == oldSelf.expect")
    .message("a ContractDrill's contract, fault, duration and expect cannot change (a drill's result must describe what it ran); create a new ContractDrill instead")
        .reason(Reason::FieldValueForbidden)
)]
pub struct ContractDrillSpec {
    /// The ChannelContract under test, in the drill's namespace.
    #[schemars(schema_with = "object_name_schema")]
    pub contract: String,

    /// What fails, as a real outage would for the proxies.
    pub fault: Fault,

    /// How long the fault lasts (e.g. `60s`). The operator removes it after this, whatever happens, and
    /// also when the drill is deleted or aborted. At most 1h.
    #[serde(default = "default_duration")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(
        validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1h')")
            .message("spec.duration must be between 1s and 1h")
    )]
    pub duration: String,

    /// The promise under test.
    pub expect: Expectation,

    /// Run the drill by itself, each time the contract's SLA is breached too often for too long. Omitted:
    /// the drill runs once, when it is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
}

fn default_duration() -> String {
    "60s".to_owned()
}

/// What fails. `region`, `channel` or both say where; `abort`, `delay` or both say how.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.region) || has(self.channel)")
        .message("spec.fault needs region, channel or both: say where the outage is"),
    validation = Rule::new("has(self.abort) || has(self.delay)")
        .message("spec.fault needs abort, delay or both: say how the outage fails requests")
)]
pub struct Fault {
    /// The region whose endpoints fail (`topology.kubernetes.io/region`): with `channel`, that channel's
    /// endpoints in the region; alone, every channel's endpoints in the region (a whole region down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "region_schema")]
    pub region: Option<String>,

    /// The channel whose endpoints fail: with `region`, only those in the region; alone, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "dns_label_schema")]
    pub channel: Option<String>,

    /// The failing endpoints answer with an HTTP error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,

    /// The failing endpoints answer late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
}

/// The failing endpoints answer with an HTTP error.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AbortFault {
    /// The status they answer with (500 to 599: what a failing service answers, and what the contract's
    /// outlier detection counts). Default 503.
    #[serde(default = "default_abort_status")]
    #[schemars(range(min = 500, max = 599))]
    pub http_status: i32,

    /// The share of their requests that fail, in percent (greater than 0, at most 100). Default 100.
    #[serde(default = "hundred")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 100.0").message("spec.fault.abort.percent must be greater than 0 and at most 100"))]
    pub percent: f64,
}

/// The failing endpoints answer late.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DelayFault {
    /// How late (e.g. `2s`).
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.fault.delay.duration must be greater than 0"))]
    pub duration: String,

    /// The share of their requests that are delayed, in percent (greater than 0, at most 100). Default 100.
    #[serde(default = "hundred")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 100.0").message("spec.fault.delay.percent must be greater than 0 and at most 100"))]
    pub percent: f64,
}

fn default_abort_status() -> i32 {
    503
}

fn hundred() -> f64 {
    100.0
}

/// The promise under test.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Expectation {
    /// The longest acceptable switchover: from the first request that meets the fault to the first
    /// request served by the next region or channel, on every proxy (e.g. `1800ms`).
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("spec.expect.failoverWithin must be greater than 0"))]
    pub failover_within: String,
}

/// When the drill runs by itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// The share of the contract's requests that took longer than `sla.maxLatency` or failed, above which
    /// the SLA counts as breached (greater than 0, at most 1), e.g. `0.05`.
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("spec.trigger.slaBreachRatio must be greater than 0 and at most 1"))]
    pub sla_breach_ratio: f64,

    /// How long the breach ratio must stay above `slaBreachRatio` before the drill runs. Default 5m.
    #[serde(default = "five_minutes", rename = "for")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('24h')").message("spec.trigger.for must be between 1m and 24h"))]
    pub for_: String,

    /// After a run, the trigger is not judged again for this long. Default 1h.
    #[serde(default = "one_hour")]
    #[schemars(schema_with = "duration_schema")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("spec.trigger.cooldown must be between 1m and 168h"))]
    pub cooldown: String,
}

fn five_minutes() -> String {
    "5m".to_owned()
}

fn one_hour() -> String {
    "1h".to_owned()
}

/// Where a drill is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DrillPhase {
    // Not started: waiting for the operator, or for its trigger.
    #[default]
    Pending,
    // The fault is in the proxies.
    Running,
    // The switchover happened within the promise.
    Passed,
    // The switchover was slower than promised, or did not happen.
    Failed,
    // The drill could not run or was stopped (its contract is missing or not ready, no proxy serves it,
    // its other regions are not ready); the fault, if it was pushed, was removed.
    Aborted,
}

impl DrillPhase {
    /// Whether the phase is a result (Passed, Failed or Aborted).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Passed | Self::Failed | Self::Aborted)
    }
}

/// What the drill did and found.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContractDrillStatus {
    /// The `metadata.generation` that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pending, Running, Passed, Failed or Aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DrillPhase>,

    /// What fails, for `kubectl get`: e.g. `region=gz abort=503@100%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_summary: Option<String>,

    /// When the operator pushed the fault (the current or last run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the fault was removed from every proxy and the result was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// The switchover measured: from the first request that met the fault to the first request served by
    /// the next region or channel, on the slowest proxy (e.g. `912ms`). Absent when none happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<String>,

    /// The switchover of each proxy that took part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub proxies: Vec<ProxySwitchover>,

    /// Requests during the fault by who answered them (the faulted endpoints included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub served_by: Vec<ServedBy>,

    /// Requests during the fault that failed (the client got a 5xx or no answer), over every proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_requests: Option<i64>,

    /// How many times the drill has run (a drill with a trigger may run many times).
    #[serde(default)]
    pub runs: i32,

    /// When the trigger last fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_at: Option<Time>,

    /// FaultActive and Succeeded, per Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One proxy's switchover.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProxySwitchover {
    /// The proxy (its `node.id`, the pod name).
    pub proxy: String,
    /// Its switchover (e.g. `850ms`); absent when no request of it was served by the next region or
    /// channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<String>,
    /// Requests it logged during the fault.
    pub requests: i64,
}

/// Requests served by one channel in one region.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServedBy {
    /// The channel.
    pub channel: String,
    /// The region (empty when the endpoint has none).
    #[serde(default)]
    pub region: String,
    /// Whether these endpoints were under the fault.
    #[serde(default)]
    pub faulted: bool,
    /// Requests (tries) they answered.
    pub requests: i64,
}

/// The drill a contract last finished, in the contract's status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LastDrill {
    /// The ContractDrill.
    pub name: String,
    /// When it finished.
    pub time: Time,
    /// Passed, Failed or Aborted.
    pub phase: DrillPhase,
    /// The switchover it measured, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<String>,
    /// The promise it tested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promised: Option<String>,
}

impl Fault {
    /// `region=gz channel=primary abort=503@100% delay=2s@50%`: what `kubectl get` shows.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(region) = &self.region {
            parts.push(format!("region={region}"));
        }
        if let Some(channel) = &self.channel {
            parts.push(format!("channel={channel}"));
        }
        if let Some(abort) = &self.abort {
            parts.push(format!("abort={}@{}%", abort.http_status, abort.percent));
        }
        if let Some(delay) = &self.delay {
            parts.push(format!("delay={}@{}%", delay.duration, delay.percent));
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_api_md_drill() {
        let spec: ContractDrillSpec = serde_json::from_value(serde_json::json!({
            "contract": "payment-verify",
            "fault": {"region": "gz", "abort": {"httpStatus": 503, "percent": 100}},
            "expect": {"failoverWithin": "1800ms"},
            "trigger": {"slaBreachRatio": 0.05}
        }))
        .expect("the API's example parses");
        assert_eq!(spec.duration, "60s");
        let trigger = spec.trigger.expect("trigger");
        assert_eq!((trigger.for_.as_str(), trigger.cooldown.as_str()), ("5m", "1h"));
        assert_eq!(spec.fault.summary(), "region=gz abort=503@100%");
        let back = serde_json::to_value(&trigger).expect("serializes");
        assert_eq!(back["for"], "5m", "the field is `for` on the wire");
    }

    #[test]
    fn delay_defaults_to_every_request() {
        let fault: Fault =
            serde_json::from_value(serde_json::json!({"channel": "primary", "delay": {"duration": "2s"}}))
                .expect("parses");
        assert_eq!(fault.delay.as_ref().map(|d| d.percent), Some(100.0));
        assert_eq!(fault.summary(), "channel=primary delay=2s@100%");
    }
}
