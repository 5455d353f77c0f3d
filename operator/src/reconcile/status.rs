//! A contract's status from what the reconciler observed: the conditions Accepted, Programmed and Ready
//! (Kubernetes API conventions: CamelCase reasons, `observedGeneration`, `lastTransitionTime` that moves
//! only when a condition's status flips), the published `configVersion`, and what each channel resolved
//! to. Pure: the clock is an argument.
//!
//! | condition | True | False |
//! |---|---|---|
//! | `Accepted` | `Valid` | `InvalidSpec` |
//! | `Programmed` | `Programmed` (the ConfigMap holds this generation's configuration) | `InvalidSpec`, `ServiceNotFound`, `ServicePortNotFound`, `InvalidEndpoint`, `ConfigMapConflict`, `ConfigTooLarge`, `ApplyFailed`, `InternalError` |
//! | `Ready` | `Ready` (programmed, and some channel has a ready endpoint) | `NoReadyEndpoints`, `ServiceNotFound`, `NotProgrammed` |
//!
//! When the contract cannot be programmed, `configVersion` stays the one last published (the ConfigMap
//! is left as it was), so status always says what proxies run.

use crds::conditions::condition;
use crds::{ChannelContractStatus, ChannelStatus, ProxyRejection, ProxyStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::publish::xds::XdsObservation;
use crate::watch::endpoints::summary;

/// The condition types.
pub mod condition {
    /// The spec is valid.
    pub const ACCEPTED: &str = "Accepted";
    /// The configuration of the current generation is published.
    pub const PROGRAMMED: &str = "Programmed";
    /// Proxies can serve the contract: programmed, with ready endpoints.
    pub const READY: &str = "Ready";
    /// Every condition type, in the order status lists them.
    pub const ALL: [&str; 3] = [ACCEPTED, PROGRAMMED, READY];
}

/// The condition reasons (CamelCase, per the API conventions).
pub mod reason {
    /// Accepted=True.
    pub const VALID: &str = "Valid";
    /// Accepted=False, Programmed=False: the spec breaks a rule of the API.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Programmed=True.
    pub const PROGRAMMED: &str = "Programmed";
    /// Programmed=False, Ready=False: a Service the contract names does not exist.
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    /// Programmed=False: a channel's port is not a port of its Service.
    pub const SERVICE_PORT_NOT_FOUND: &str = "ServicePortNotFound";
    /// Programmed=False: an endpoint cannot be used (not an address, port 0).
    pub const INVALID_ENDPOINT: &str = "InvalidEndpoint";
    /// Programmed=False: writing the ConfigMap failed (retried with back-off).
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// Programmed=False: a ConfigMap the operator does not own has the contract's ConfigMap name.
    pub const CONFIG_MAP_CONFLICT: &str = "ConfigMapConflict";
    /// Programmed=False: the configuration is larger than a ConfigMap may be.
    pub const CONFIG_TOO_LARGE: &str = "ConfigTooLarge";
    /// Programmed=False: the configuration could not be written out (a bug of the operator).
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// Ready=True.
    pub const READY: &str = "Ready";
    /// Ready=False: programmed, but no channel has a ready endpoint.
    pub const NO_READY_ENDPOINTS: &str = "NoReadyEndpoints";
    /// Ready=False: not programmed for a reason other than a missing Service.
    pub const NOT_PROGRAMMED: &str = "NotProgrammed";
    /// Programmed=False: a proxy rejected (NACK) the current configuration; proxies are served the last
    /// version they accepted.
    pub const PROXY_REJECTED: &str = "ProxyRejected";
    /// Ready=False: proxies serve the contract's namespace, but none runs the current configuration yet.
    pub const NO_PROXY_SERVING: &str = "NoProxyServing";
}

/// Whether the configuration of the current generation is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Programming {
    /// The ConfigMap holds it.
    Programmed {
        /// Its version.
        config_version: String,
    },
    /// It is not; the last good ConfigMap, if any, stays as it was.
    NotProgrammed {
        /// One of [`reason`].
        reason: &'static str,
        /// What is wrong and what to do, for users.
        message: String,
    },
}

/// What one reconcile observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Why the spec is invalid, if it is.
    pub invalid_spec: Option<String>,
    /// Whether it is programmed.
    pub programming: Programming,
    /// What each channel resolved to; None when that is unknown (invalid spec): status keeps the last.
    pub channels: Option<Vec<ChannelStatus>>,
    /// What the xDS server knows of the contract's proxies; None when the xDS path is off.
    pub xds: Option<XdsObservation>,
    /// Whether the ConfigMap path is on.
    pub config_map: bool,
}

/// Whether a reason is the user's to fix (the controller waits for a change) rather than transient.
pub fn is_invalid_input(reason: &str) -> bool {
    !matches!(reason, reason::APPLY_FAILED)
}

/// The status for an observation, given the previous status (for `lastTransitionTime`, the published
/// `configVersion` and `proxies`) and the current time.
pub fn status(
    observation: &Observation,
    generation: Option<i64>,
    previous: Option<&ChannelContractStatus>,
    now: &Time,
) -> ChannelContractStatus {
    let previous_conditions = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(type_, ok, reason, message, generation, previous_conditions, now)
    };
    let accepted = match &observation.invalid_spec {
        None => cond(condition::ACCEPTED, true, reason::VALID, "the spec is valid".to_owned()),
        Some(why) => cond(condition::ACCEPTED, false, reason::INVALID_SPEC, why.clone()),
    };
    let channels =
        observation.channels.clone().unwrap_or_else(|| previous.map(|s| s.channels.clone()).unwrap_or_default());
    let rejection = observation.xds.as_ref().and_then(|x| x.rejection.as_ref().map(|r| (r, x.served.as_ref())));
    let (programmed, ready, config_version) = match &observation.programming {
        Programming::Programmed { config_version } if let Some((rejection, served)) = rejection => {
            let serving = match served {
                Some(v) => format!("proxies are served the last configuration they accepted, {v}"),
                None => "no configuration of this contract was ever accepted, so proxies are served none".to_owned(),
            };
            let message = format!(
                "proxy {} rejected the configuration {config_version}: {}; {serving}. Fix the contract (or the proxy) and the next version is tried",
                rejection.proxy, rejection.message
            );
            (
                cond(condition::PROGRAMMED, false, reason::PROXY_REJECTED, message.clone()),
                cond(
                    condition::READY,
                    false,
                    reason::NOT_PROGRAMMED,
                    format!("the contract is not programmed (ProxyRejected): {message}"),
                ),
                served.cloned(),
            )
        }
        Programming::Programmed { config_version } => (
            cond(
                condition::PROGRAMMED,
                true,
                reason::PROGRAMMED,
                format!("the proxy configuration {config_version} is {}", where_published(observation)),
            ),
            match observation.xds.as_ref().map(|x| &x.proxies) {
                Some(p) if p.selected > 0 && p.acked == 0 => cond(
                    condition::READY,
                    false,
                    reason::NO_PROXY_SERVING,
                    format!(
                        "{} proxies serve this namespace and none runs the configuration {config_version} yet ({} on another version, {} rejected)",
                        p.selected, p.stale, p.rejected
                    ),
                ),
                _ => ready_condition(&channels, &cond),
            },
            Some(config_version.clone()),
        ),
        Programming::NotProgrammed { reason: why, message } => {
            let kept = previous.and_then(|s| s.config_version.clone());
            let keeping = match &kept {
                Some(v) => format!("; the last good configuration {v} stays published"),
                None => "; nothing is published".to_owned(),
            };
            let programmed = cond(condition::PROGRAMMED, false, why, format!("{message}{keeping}"));
            let ready = if *why == reason::SERVICE_NOT_FOUND {
                cond(condition::READY, false, reason::SERVICE_NOT_FOUND, message.clone())
            } else {
                cond(
                    condition::READY,
                    false,
                    reason::NOT_PROGRAMMED,
                    format!("the contract is not programmed ({why}): {message}"),
                )
            };
            (programmed, ready, kept)
        }
    };
    ChannelContractStatus {
        observed_generation: generation,
        config_version,
        conditions: vec![accepted, programmed, ready],
        channel_summary: Some(summary(&channels)),
        channels,
        proxies: observation.xds.as_ref().map(proxy_status),
        // The drill controller writes these; a reconcile keeps what it finds.
        last_drill: previous.and_then(|s| s.last_drill.clone()),
        last_passed_drill_time: previous.and_then(|s| s.last_passed_drill_time.clone()),
    }
}

fn where_published(observation: &Observation) -> &'static str {
    match (observation.xds.is_some(), observation.config_map) {
        (true, true) => "served over xDS and published in the ConfigMap",
        (true, false) => "served over xDS",
        _ => "published in the ConfigMap",
    }
}

/// `status.proxies` from what the xDS server knows.
pub fn proxy_status(x: &XdsObservation) -> ProxyStatus {
    let p = &x.proxies;
    let mut summary = format!("{}/{} acked", p.acked, p.selected);
    if p.rejected > 0 {
        summary.push_str(&format!(", {} rejected", p.rejected));
    }
    ProxyStatus {
        selected: p.selected,
        acked: p.acked,
        stale: p.stale,
        rejected: p.rejected,
        last_rejection: p.last_rejection.as_ref().or(x.rejection.as_ref()).map(|r| ProxyRejection {
            proxy: r.proxy.clone(),
            config_version: r.version.clone(),
            message: r.message.clone(),
            time: r.time.clone(),
        }),
        summary,
    }
}

fn ready_condition(channels: &[ChannelStatus], cond: &impl Fn(&str, bool, &str, String) -> Condition) -> Condition {
    let serving: Vec<&ChannelStatus> = channels.iter().filter(|c| c.endpoints > 0).collect();
    let Some(first) = serving.first() else {
        return cond(
            condition::READY,
            false,
            reason::NO_READY_ENDPOINTS,
            "no channel has a ready endpoint: requests fail until one has (check the Services' EndpointSlices)"
                .to_owned(),
        );
    };
    let message = match channels.first() {
        Some(primary) if primary.name != first.name => format!(
            "degraded: channel {:?} has no ready endpoint; traffic goes to channel {:?} ({})",
            primary.name,
            first.name,
            summary(channels)
        ),
        _ => format!("ready endpoints: {}", summary(channels)),
    };
    cond(condition::READY, true, reason::READY, message)
}

/// The conditions of `next` that are new or whose status or reason differ from `previous`: what deserves
/// an Event.
pub fn transitions<'a>(
    previous: Option<&ChannelContractStatus>,
    next: &'a ChannelContractStatus,
) -> Vec<&'a Condition> {
    let before = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    next.conditions
        .iter()
        .filter(|c| !before.iter().any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason))
        .collect()
}

/// A fingerprint of a status, its conditions' `lastTransitionTime` left out: two statuses with the same
/// fingerprint say the same thing (a status computed from a cache that lags behind gets new transition
/// times for the conditions it thinks flipped, and nothing else different).
pub fn fingerprint(status: &ChannelContractStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut timeless = status.clone();
    for c in &mut timeless.conditions {
        c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(&timeless).unwrap_or_default().hash(&mut hasher);
    hasher.finish()
}

/// The status fields the operator writes.
pub const WRITTEN_FIELDS: [&str; 6] =
    ["observedGeneration", "configVersion", "conditions", "channels", "channelSummary", "proxies"];

/// The status fields the drill controller writes, never a reconcile.
pub const DRILL_FIELDS: [&str; 2] = ["lastDrill", "lastPassedDrillTime"];

/// The JSON merge patch that makes the status `next`: `{"status": …}` with every field of
/// [`WRITTEN_FIELDS`] that `next` leaves out set to null (a merge patch removes a field only when told to).
pub fn merge_patch(next: &ChannelContractStatus) -> serde_json::Value {
    let mut status = serde_json::to_value(next).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(fields) = status.as_object_mut() {
        for field in WRITTEN_FIELDS {
            fields.entry(field).or_insert(serde_json::Value::Null);
        }
        // The drill controller owns these. A reconcile sees them through its cache, which may not hold
        // the drill's latest write yet: sending them back could undo a drill's result.
        for field in DRILL_FIELDS {
            fields.remove(field);
        }
    }
    serde_json::json!({ "status": status })
}

/// The most an Event's note may hold (the API server refuses longer notes).
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// The Event a reconcile publishes: one per status change that moved a condition, not one per
/// condition, so that a new contract costs the API server one Event write instead of three (Events were
/// half of the writes per contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    /// Whether it is a Warning (some changed condition is not True) or Normal.
    pub warning: bool,
    /// The reason of the headline condition: the first changed condition that is not True (the cause, in
    /// the order Accepted, Programmed, Ready), else the last changed one (`Ready` for a new, working
    /// contract).
    pub reason: String,
    /// Every changed condition, `Type=Status (Reason): message`, `; `-separated, at most
    /// [`EVENT_NOTE_LIMIT`] bytes.
    pub note: String,
}

/// The Event for a status change, if any condition moved (see [`transitions`]).
pub fn event(previous: Option<&ChannelContractStatus>, next: &ChannelContractStatus) -> Option<EventSummary> {
    let changed = transitions(previous, next);
    let headline = changed.iter().find(|c| c.status != "True").or(changed.last())?;
    let note = changed
        .iter()
        .map(|c| {
            let mut line = format!("{}={} ({})", c.type_, c.status, c.reason);
            if !c.message.is_empty() {
                line.push_str(": ");
                line.push_str(&c.message);
            }
            line
        })
        .collect::<Vec<_>>()
        .join("; ");
    Some(EventSummary { warning: headline.status != "True", reason: headline.reason.clone(), note: truncate(&note) })
}

fn truncate(text: &str) -> String {
    if text.len() <= EVENT_NOTE_LIMIT {
        return text.to_owned();
    }
    let mut end = EVENT_NOTE_LIMIT - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The current time, to the second (what the API server keeps of a `Time`), so that a status computed now
/// compares equal to itself after a round trip.
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

#[cfg(test)]
mod tests;
