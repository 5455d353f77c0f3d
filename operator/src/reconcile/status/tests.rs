//! Tests of [`super`].

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
        xds: None,
        config_map: true,
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
        xds: None,
        config_map: true,
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
        xds: None,
        config_map: true,
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
        xds: None,
        config_map: true,
        invalid_spec: None,
        programming: Programming::NotProgrammed { reason: reason::SERVICE_NOT_FOUND, message: "x".into() },
        channels: Some(vec![]),
    };
    let port = Observation {
        xds: None,
        config_map: true,
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
        xds: None,
        config_map: true,
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
    // The operator owns status.proxies (written from the xDS server, cleared when xDS is off).
    assert!(fields["proxies"].is_null(), "{cleared}");
}

#[test]
fn the_status_patch_never_sends_the_drill_fields_back_from_a_cached_status() {
    // The reconcile's cache may hold an older lastDrill than the one the drill controller just wrote.
    let mut s = status(&programmed(&[("primary", 2)]), Some(3), None, &at(100));
    s.last_drill = Some(crds::drill::LastDrill {
        name: "older".into(),
        time: at(50),
        phase: crds::DrillPhase::Passed,
        switchover: None,
        promised: None,
    });
    s.last_passed_drill_time = Some(at(50));
    let patch = merge_patch(&s);
    let fields = patch["status"].as_object().expect("object");
    for field in DRILL_FIELDS {
        assert!(!fields.contains_key(field), "{field} is the drill controller's: {patch}");
    }
    assert_eq!(patch["status"]["observedGeneration"], 3);
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
