use super::*;
use crate::observe::drill::TryLog;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).expect("timestamp")
}

fn drill(extra: serde_json::Value) -> ContractDrill {
    let mut spec = serde_json::json!({
        "contract": "pv",
        "fault": {"region": "gz", "abort": {"httpStatus": 503, "percent": 100}},
        "duration": "60s",
        "expect": {"failoverWithin": "1800ms"}
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    let mut d = ContractDrill::new("gz-outage", serde_json::from_value(spec).expect("spec"));
    d.metadata.namespace = Some("payments".into());
    d.metadata.generation = Some(1);
    d
}

fn contract(acked: i32, regions: &[&str]) -> ChannelContract {
    let mut c = ChannelContract::new(
        "pv",
        serde_json::from_value(serde_json::json!({
            "service": "pv", "port": 8080, "sla": {"maxLatency": "120ms"},
            "failover": {"regions": ["gz", "sz", "hz"]}
        }))
        .expect("spec"),
    );
    c.status = Some(crds::ChannelContractStatus {
        channels: vec![crds::ChannelStatus {
            name: "primary".into(),
            endpoints: i32::try_from(regions.len()).unwrap_or(0),
            regions: regions.iter().map(|r| r.to_string()).collect(),
        }],
        proxies: Some(crds::ProxyStatus { selected: acked, acked, ..Default::default() }),
        ..Default::default()
    });
    c
}

fn inputs<'a>(contract: Option<&'a ChannelContract>, log: Option<&'a DrillLog>, now: Timestamp) -> Inputs<'a> {
    Inputs { contract, another_running: false, log, breach: None, now }
}

fn apply(d: &mut ContractDrill, decision: &Decision) {
    if let Some(s) = &decision.status {
        d.status = Some(s.clone());
    }
}

#[test]
fn a_drill_runs_its_fault_for_its_duration_then_passes_on_the_logs() {
    let c = contract(3, &["gz", "sz", "hz"]);
    let mut d = drill(serde_json::json!({}));
    let first = decide(&d, &inputs(Some(&c), None, at(0)));
    let status = first.status.as_ref().expect("started");
    assert_eq!((status.phase, status.runs), (Some(DrillPhase::Running), 1));
    assert_eq!(status.fault_summary.as_deref(), Some("region=gz abort=503@100%"));
    assert_eq!(first.requeue, Some(Duration::from_secs(64)));
    assert_eq!(first.event.as_ref().map(|e| e.1), Some("DrillStarted"));
    apply(&mut d, &first);
    assert_eq!(run_key(&d, 1), "payments/gz-outage/1");
    assert!(fault_in_force(&d, at(0)) && fault_in_force(&d, at(59)));
    assert!(!fault_in_force(&d, at(60)), "the fault ends with its duration, whatever the controller does");

    // During the fault (and its settling) nothing changes.
    let waiting = decide(&d, &inputs(Some(&c), None, at(61)));
    assert!(waiting.status.is_none());
    assert_eq!(waiting.requeue, Some(Duration::from_secs(3)));

    let mut log = DrillLog::default();
    let ms = 1_000_000i64;
    let t0 = at(1).as_nanosecond() as i64;
    for (offset, faulted, region, status) in [(0, true, "gz", 503), (20, true, "gz", 503), (900, false, "sz", 200)] {
        log.add(&TryLog {
            run: "payments/gz-outage/1".into(),
            proxy: "gw-1".into(),
            start: t0 + offset * ms,
            end: t0 + (offset + 12) * ms,
            faulted,
            channel: "primary".into(),
            region: region.into(),
            status,
        });
    }
    let done = decide(&d, &inputs(Some(&c), Some(&log), at(64)));
    let status = done.status.as_ref().expect("judged");
    assert_eq!(status.phase, Some(DrillPhase::Passed));
    assert_eq!(status.switchover.as_deref(), Some("912ms"));
    assert_eq!(status.failed_requests, Some(2));
    assert_eq!(
        status.served_by,
        vec![ServedBy { channel: "primary".into(), region: "sz".into(), faulted: false, requests: 1 }]
    );
    let last = done.last_drill.as_ref().expect("the contract hears of it");
    assert_eq!(
        (last.phase, last.switchover.as_deref(), last.promised.as_deref()),
        (DrillPhase::Passed, Some("912ms"), Some("1800ms"))
    );
    apply(&mut d, &done);
    // Finished, no trigger: terminal.
    assert_eq!(decide(&d, &inputs(Some(&c), Some(&log), at(500))).status, None);
}

#[test]
fn an_impossible_promise_fails_and_says_by_how_much() {
    let c = contract(1, &["gz", "sz", "hz"]);
    let mut d = drill(serde_json::json!({"expect": {"failoverWithin": "1ms"}}));
    let started = decide(&d, &inputs(Some(&c), None, at(0)));
    apply(&mut d, &started);
    let mut log = DrillLog::default();
    let t0 = at(1).as_nanosecond() as i64;
    log.add(&TryLog {
        run: "r".into(),
        proxy: "gw-1".into(),
        start: t0,
        end: t0 + 1_000_000,
        faulted: true,
        channel: "primary".into(),
        region: "gz".into(),
        status: 503,
    });
    log.add(&TryLog {
        run: "r".into(),
        proxy: "gw-1".into(),
        start: t0 + 100_000_000,
        end: t0 + 105_000_000,
        faulted: false,
        channel: "primary".into(),
        region: "sz".into(),
        status: 200,
    });
    let done = decide(&d, &inputs(Some(&c), Some(&log), at(70)));
    let status = done.status.expect("judged");
    assert_eq!(status.phase, Some(DrillPhase::Failed));
    let succeeded = status.conditions.iter().find(|c| c.type_ == "Succeeded").expect("condition");
    assert_eq!(succeeded.message, "the switchover took 105ms on proxy gw-1, 104ms longer than the promised 1ms");
    assert_eq!(done.event.map(|e| (e.0, e.1)), Some((true, "DrillFailed")));
}

#[test]
fn a_drill_refuses_to_start_when_it_cannot_prove_anything() {
    let d = drill(serde_json::json!({}));
    let aborted = |decision: Decision| {
        let s = decision.status.expect("status");
        assert_eq!(s.phase, Some(DrillPhase::Aborted));
        s.conditions
            .iter()
            .find(|c| c.type_ == "Succeeded")
            .map(|c| (c.reason.clone(), c.message.clone()))
            .expect("why")
    };
    let (why, _) = aborted(decide(&d, &inputs(None, None, at(0))));
    assert_eq!(why, reason::CONTRACT_NOT_FOUND);
    let (why, _) = aborted(decide(&d, &inputs(Some(&contract(0, &["gz", "sz", "hz"])), None, at(0))));
    assert_eq!(why, reason::NO_PROXY_SERVING);
    let (why, message) = aborted(decide(&d, &inputs(Some(&contract(2, &["gz", "hz"])), None, at(0))));
    assert_eq!(why, reason::NOT_READY);
    assert!(message.contains("[sz]"), "{message}");
    // Another drill of the same contract: wait, do not abort.
    let c = contract(2, &["gz", "sz", "hz"]);
    let busy = decide(&d, &Inputs { another_running: true, ..inputs(Some(&c), None, at(0)) });
    assert_eq!(busy.status.and_then(|s| s.phase), Some(DrillPhase::Pending));
}

#[test]
fn a_rejected_fault_or_a_deleted_contract_aborts_a_running_drill() {
    let mut c = contract(2, &["gz", "sz", "hz"]);
    let mut d = drill(serde_json::json!({}));
    let started = decide(&d, &inputs(Some(&c), None, at(0)));
    apply(&mut d, &started);
    let gone = decide(&d, &inputs(None, None, at(5)));
    assert_eq!(gone.status.and_then(|s| s.phase), Some(DrillPhase::Aborted));
    assert!(gone.last_drill.is_some(), "a run that started is the contract's last drill");
    if let Some(status) = c.status.as_mut() {
        status.conditions.push(condition(
            "Programmed",
            false,
            "ProxyRejected",
            "gw-1: unknown listener".into(),
            Some(1),
            &[],
            &Time(at(2)),
        ));
    }
    let rejected = decide(&d, &inputs(Some(&c), None, at(5)));
    let s = rejected.status.expect("aborted");
    let why = s.conditions.iter().find(|c| c.type_ == "Succeeded").expect("why");
    assert_eq!(why.reason, reason::FAULT_REJECTED);
    assert!(why.message.ends_with("gw-1: unknown listener"), "{}", why.message);
}

#[test]
fn a_trigger_fires_on_a_sustained_breach_and_cools_down() {
    let c = contract(2, &["gz", "sz", "hz"]);
    let mut d = drill(serde_json::json!({"trigger": {"slaBreachRatio": 0.05, "for": "1m", "cooldown": "10m"}}));
    let no_prom = decide(&d, &inputs(Some(&c), None, at(0)));
    let s = no_prom.status.expect("says why");
    assert_eq!(s.phase, None, "no run yet");
    assert_eq!(
        s.conditions.iter().find(|c| c.type_ == "Triggered").map(|c| c.reason.as_str()),
        Some(reason::NO_PROMETHEUS)
    );
    let not_yet =
        decide(&d, &Inputs { breach: Some(Breach::Not("fell to 0.01".into())), ..inputs(Some(&c), None, at(0)) });
    apply(&mut d, &not_yet);
    assert_eq!(d.status.as_ref().and_then(|s| s.phase), Some(DrillPhase::Pending));
    let fire =
        decide(&d, &Inputs { breach: Some(Breach::Sustained { lowest: 0.2 }), ..inputs(Some(&c), None, at(10)) });
    let s = fire.status.clone().expect("runs");
    assert_eq!((s.phase, s.runs), (Some(DrillPhase::Running), 1));
    assert_eq!(s.triggered_at, Some(Time(at(10))));
    apply(&mut d, &fire);
    let done = decide(&d, &inputs(Some(&c), Some(&DrillLog::default()), at(100)));
    apply(&mut d, &done);
    assert_eq!(d.status.as_ref().and_then(|s| s.phase), Some(DrillPhase::Aborted), "no traffic met the fault");
    // Within the cool-down the trigger is not judged, whatever the breach.
    let cooling =
        decide(&d, &Inputs { breach: Some(Breach::Sustained { lowest: 0.9 }), ..inputs(Some(&c), None, at(200)) });
    assert!(cooling.status.as_ref().and_then(|s| s.phase) != Some(DrillPhase::Running));
    // After it, a sustained breach runs the drill again.
    let again =
        decide(&d, &Inputs { breach: Some(Breach::Sustained { lowest: 0.9 }), ..inputs(Some(&c), None, at(800)) });
    assert_eq!(again.status.map(|s| (s.phase, s.runs)), Some((Some(DrillPhase::Running), 2)));
}
