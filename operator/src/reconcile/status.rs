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
use crds::{ChannelContractStatus, ChannelStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::endpoints::summary;

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
    let (programmed, ready, config_version) = match &observation.programming {
        Programming::Programmed { config_version } => (
            cond(
                condition::PROGRAMMED,
                true,
                reason::PROGRAMMED,
                format!("the proxy configuration {config_version} is published in the ConfigMap"),
            ),
            ready_condition(&channels, &cond),
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
        proxies: previous.and_then(|s| s.proxies.clone()),
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

/// The status fields the operator writes (`proxies` is not among them).
pub const WRITTEN_FIELDS: [&str; 5] =
    ["observedGeneration", "configVersion", "conditions", "channels", "channelSummary"];

/// The JSON merge patch that makes the status `next`: `{"status": …}` with every field of
/// [`WRITTEN_FIELDS`] that `next` leaves out set to null (a merge patch removes a field only when told to).
pub fn merge_patch(next: &ChannelContractStatus) -> serde_json::Value {
    let mut status = serde_json::to_value(next).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(fields) = status.as_object_mut() {
        for field in WRITTEN_FIELDS {
            fields.entry(field).or_insert(serde_json::Value::Null);
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
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).expect("timestamp"))
    }

    fn channels(counts: &[(&str, i32)]) -> Vec<ChannelStatus> {
        counts.iter().map(|(n, e)| ChannelStatus { name: (*n).into(), endpoints: *e, regions: vec![] }).collect()
    }

    fn programmed(counts: &[(&str, i32)]) -> Observation {
        Observation {
            invalid_spec: None,
            programming: Programming::Programmed { config_version: "sha256:aaa".into() },
            channels: Some(channels(counts)),
        }
    }

    fn cond<'a>(s: &'a ChannelContractStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}"))
    }

    fn triple(s: &ChannelContractStatus, type_: &str) -> (String, String) {
        let c = cond(s, type_);
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn a_programmed_contract_with_endpoints_is_ready() {
        let s = status(&programmed(&[("primary", 2), ("cache", 1)]), Some(3), None, &at(100));
        assert_eq!(triple(&s, "Accepted"), ("True".into(), "Valid".into()));
        assert_eq!(triple(&s, "Programmed"), ("True".into(), "Programmed".into()));
        assert_eq!(triple(&s, "Ready"), ("True".into(), "Ready".into()));
        assert_eq!(s.observed_generation, Some(3));
        assert!(s.conditions.iter().all(|c| c.observed_generation == Some(3)));
        assert_eq!(s.config_version.as_deref(), Some("sha256:aaa"));
        assert_eq!(s.channel_summary.as_deref(), Some("primary:2,cache:1"));
        assert_eq!(cond(&s, "Ready").message, "ready endpoints: primary:2,cache:1");
    }

    #[test]
    fn ready_says_degraded_when_the_primary_is_empty_and_false_when_all_are() {
        let s = status(&programmed(&[("primary", 0), ("cache", 1)]), Some(1), None, &at(100));
        assert_eq!(triple(&s, "Ready"), ("True".into(), "Ready".into()));
        assert!(cond(&s, "Ready").message.starts_with("degraded: channel \"primary\""), "{:?}", cond(&s, "Ready"));
        let s = status(&programmed(&[("primary", 0), ("cache", 0)]), Some(1), None, &at(100));
        assert_eq!(triple(&s, "Ready"), ("False".into(), "NoReadyEndpoints".into()));
        assert_eq!(triple(&s, "Programmed"), ("True".into(), "Programmed".into()));
    }

    fn service_missing(channels: Option<Vec<ChannelStatus>>) -> Observation {
        Observation {
            invalid_spec: None,
            programming: Programming::NotProgrammed {
                reason: reason::SERVICE_NOT_FOUND,
                message: "Service \"pv\" (spec.service) not found".into(),
            },
            channels,
        }
    }

    #[test]
    fn a_missing_service_keeps_the_last_published_version_and_says_so() {
        let good = status(&programmed(&[("primary", 2)]), Some(1), None, &at(100));
        let missing = service_missing(Some(channels(&[("primary", 0)])));
        let s = status(&missing, Some(2), Some(&good), &at(200));
        assert_eq!(triple(&s, "Accepted"), ("True".into(), "Valid".into()));
        assert_eq!(triple(&s, "Programmed"), ("False".into(), "ServiceNotFound".into()));
        assert_eq!(triple(&s, "Ready"), ("False".into(), "ServiceNotFound".into()));
        assert_eq!(s.config_version.as_deref(), Some("sha256:aaa"), "the last good version stays");
        assert!(cond(&s, "Programmed").message.ends_with("the last good configuration sha256:aaa stays published"));
        let fresh = status(&missing, Some(1), None, &at(200));
        assert_eq!(fresh.config_version, None);
        assert!(cond(&fresh, "Programmed").message.ends_with("nothing is published"));
    }

    #[test]
    fn an_invalid_spec_is_not_accepted_nor_programmed_and_keeps_the_last_channels() {
        let good = status(&programmed(&[("primary", 2)]), Some(1), None, &at(100));
        let invalid = Observation {
            invalid_spec: Some("spec.retry.perTryTimeout: too long".into()),
            programming: Programming::NotProgrammed {
                reason: reason::INVALID_SPEC,
                message: "spec.retry.perTryTimeout: too long".into(),
            },
            channels: None,
        };
        let s = status(&invalid, Some(2), Some(&good), &at(200));
        assert_eq!(triple(&s, "Accepted"), ("False".into(), "InvalidSpec".into()));
        assert_eq!(triple(&s, "Programmed"), ("False".into(), "InvalidSpec".into()));
        assert_eq!(triple(&s, "Ready"), ("False".into(), "NotProgrammed".into()));
        assert_eq!(s.channels, good.channels);
        assert!(is_invalid_input(reason::INVALID_SPEC) && !is_invalid_input(reason::APPLY_FAILED));
    }

    #[test]
    fn last_transition_time_moves_only_when_the_status_flips() {
        let s1 = status(&programmed(&[("primary", 2)]), Some(1), None, &at(100));
        // Same statuses, new generation and endpoint counts: times stay.
        let s2 = status(&programmed(&[("primary", 5)]), Some(2), Some(&s1), &at(200));
        assert!(s2.conditions.iter().all(|c| c.last_transition_time == at(100)));
        assert!(transitions(Some(&s1), &s2).is_empty(), "no event for an unchanged condition");
        // Ready flips to False: only its time moves.
        let s3 = status(&programmed(&[("primary", 0)]), Some(2), Some(&s2), &at(300));
        assert_eq!(cond(&s3, "Ready").last_transition_time, at(300));
        assert_eq!(cond(&s3, "Programmed").last_transition_time, at(100));
        assert_eq!(transitions(Some(&s2), &s3).iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Ready"]);
        // The first status: every condition is a transition.
        assert_eq!(transitions(None, &s1).len(), 3);
    }

    #[test]
    fn a_new_reason_with_the_same_status_is_a_transition_but_keeps_the_time() {
        let not_found = Observation {
            invalid_spec: None,
            programming: Programming::NotProgrammed { reason: reason::SERVICE_NOT_FOUND, message: "x".into() },
            channels: Some(vec![]),
        };
        let port = Observation {
            programming: Programming::NotProgrammed { reason: reason::SERVICE_PORT_NOT_FOUND, message: "y".into() },
            ..not_found.clone()
        };
        let s1 = status(&not_found, Some(1), None, &at(100));
        let s2 = status(&port, Some(1), Some(&s1), &at(200));
        assert_eq!(cond(&s2, "Programmed").last_transition_time, at(100));
        let changed: Vec<&str> = transitions(Some(&s1), &s2).iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(changed, ["Programmed", "Ready"]);
        assert_eq!(status(&port, Some(1), Some(&s2), &at(300)), s2, "a steady state computes the same status");
    }

    #[test]
    fn a_new_working_contract_gets_one_normal_event_that_names_every_condition() {
        let s1 = status(&programmed(&[("primary", 2)]), Some(1), None, &at(100));
        let e = event(None, &s1).expect("an event");
        assert!(!e.warning);
        assert_eq!(e.reason, "Ready");
        for part in ["Accepted=True (Valid)", "Programmed=True (Programmed)", "Ready=True (Ready)"] {
            assert!(e.note.contains(part), "{part} missing from {:?}", e.note);
        }
        assert_eq!(event(Some(&s1), &s1), None, "nothing changed, no event");
    }

    #[test]
    fn a_failure_event_is_a_warning_named_after_its_cause() {
        let good = status(&programmed(&[("primary", 2)]), Some(1), None, &at(100));
        let missing = service_missing(None);
        let s2 = status(&missing, Some(2), Some(&good), &at(200));
        let e = event(Some(&good), &s2).expect("an event");
        assert!(e.warning);
        assert_eq!(e.reason, "ServiceNotFound", "Programmed is the first condition that broke");
        assert!(!e.note.contains("Accepted"), "Accepted did not change: {:?}", e.note);
        assert!(e.note.contains("Programmed=False (ServiceNotFound): Service \"pv\""), "{:?}", e.note);
        assert!(e.note.contains("Ready=False (ServiceNotFound)"), "{:?}", e.note);

        // Back to working: a Normal event again.
        let s3 = status(&programmed(&[("primary", 1)]), Some(3), Some(&s2), &at(300));
        let e = event(Some(&s2), &s3).expect("an event");
        assert_eq!((e.warning, e.reason.as_str()), (false, "Ready"));
    }

    #[test]
    fn the_note_fits_the_api_limit_on_a_character_boundary() {
        let long = Observation {
            invalid_spec: Some("é".repeat(2000)),
            programming: Programming::NotProgrammed { reason: reason::INVALID_SPEC, message: "ü".repeat(2000) },
            channels: None,
        };
        let e = event(None, &status(&long, Some(1), None, &at(1))).expect("an event");
        assert!(e.note.len() <= EVENT_NOTE_LIMIT, "{}", e.note.len());
        assert!(e.note.ends_with('…'));
        assert_eq!((e.warning, e.reason.as_str()), (true, "InvalidSpec"));
    }

    #[test]
    fn the_status_patch_sets_every_written_field_and_clears_the_unset_ones() {
        let s = status(&programmed(&[("primary", 2)]), Some(3), None, &at(100));
        let patch = merge_patch(&s);
        assert_eq!(patch["status"]["observedGeneration"], 3);
        assert_eq!(patch["status"]["channelSummary"], "primary:2");
        assert_eq!(patch["status"]["conditions"].as_array().map(Vec::len), Some(3));
        let cleared = merge_patch(&ChannelContractStatus::default());
        let fields = cleared["status"].as_object().expect("object");
        assert_eq!(fields.len(), WRITTEN_FIELDS.len());
        assert!(fields.values().all(serde_json::Value::is_null), "{cleared}");
        assert!(!fields.contains_key("proxies"), "the operator does not write proxies");
    }

    #[test]
    fn the_fingerprint_ignores_transition_times_only() {
        let s1 = status(&programmed(&[("primary", 2)]), Some(1), None, &at(100));
        let later = status(&programmed(&[("primary", 2)]), Some(1), None, &at(200));
        assert_ne!(s1, later);
        assert_eq!(fingerprint(&s1), fingerprint(&later), "only the times differ");
        let other = status(&programmed(&[("primary", 3)]), Some(1), None, &at(100));
        assert_ne!(fingerprint(&s1), fingerprint(&other));
        let next_generation = status(&programmed(&[("primary", 2)]), Some(2), None, &at(100));
        assert_ne!(fingerprint(&s1), fingerprint(&next_generation));
    }
}
