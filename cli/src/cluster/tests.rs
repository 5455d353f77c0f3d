//! Tests of [`super`].

use crds::{ChannelContract, ContractDrill, ContractPolicy, DrillPhase};

use super::*;

fn drill_args(extra: &[&str]) -> DrillArgs {
    #[derive(clap::Parser)]
    struct Top {
        #[command(flatten)]
        drill: DrillArgs,
    }
    let mut argv = vec!["drill", "pay"];
    argv.extend_from_slice(extra);
    <Top as clap::Parser>::try_parse_from(argv).expect("arguments").drill
}

#[test]
fn a_drill_is_an_abort_of_503_unless_told_otherwise_and_needs_a_place_and_a_promise() {
    let d = drill_object(&drill_args(&["--region", "gz", "--within", "2s"]), "payments", None).expect("a drill");
    assert_eq!(d.metadata.generate_name.as_deref(), Some("pay-drill-"));
    assert_eq!(d.metadata.namespace.as_deref(), Some("payments"));
    assert_eq!(d.spec.fault.summary(), "region=gz abort=503@100%");
    assert_eq!((d.spec.duration.as_str(), d.spec.expect.failover_within.as_str()), ("60s", "2s"));

    let d = drill_object(&drill_args(&["--channel", "primary", "--delay", "2s", "--name", "slow"]), "p", Some("3s"))
        .expect("the last promise");
    assert_eq!(d.metadata.name.as_deref(), Some("slow"));
    assert_eq!(d.spec.fault.summary(), "channel=primary delay=2s@100%");
    assert_eq!(d.spec.expect.failover_within, "3s", "taken from the contract's last drill");
    let d =
        drill_object(&drill_args(&["--region", "gz", "--abort", "500", "--delay", "1s", "--within", "1s"]), "p", None)
            .expect("both");
    assert_eq!(d.spec.fault.summary(), "region=gz abort=500@100% delay=1s@100%");

    let err = drill_object(&drill_args(&["--within", "2s"]), "p", None).expect_err("where?").to_string();
    assert_eq!(err, "say where the outage is: --region, --channel or both");
    let err = drill_object(&drill_args(&["--region", "gz"]), "p", None).expect_err("promise?").to_string();
    assert!(err.starts_with("say what the contract promises with --within"), "{err}");
}

fn contract(name: &str, status: serde_json::Value) -> ChannelContract {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
        "metadata": {"name": name, "namespace": "pay"},
        "spec": {"service": name, "port": 80, "sla": {"maxLatency": "100ms"}},
        "status": status,
    }))
    .expect("a contract")
}

#[test]
fn status_rows_say_what_is_not_ready_and_roll_the_fleet_out() {
    let ready = contract(
        "a",
        serde_json::json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "proxies": {"selected": 2, "acked": 2, "stale": 0, "rejected": 0, "summary": "2/2 acked"},
            "channelSummary": "primary:2",
            "lastDrill": {"name": "d", "time": "2026-01-01T00:00:00Z", "phase": "Passed", "switchover": "900ms"}
        }),
    );
    let broken = contract(
        "b",
        serde_json::json!({"conditions": [{"type": "Ready", "status": "False", "reason": "ServiceNotFound", "message": "Service pay/b does not exist", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "proxies": {"selected": 2, "acked": 1, "stale": 0, "rejected": 1, "summary": "1/2 acked, 1 rejected",
                "lastRejection": {"proxy": "gz-2", "configVersion": "sha256:bad", "message": "cluster: invalid", "time": "2026-01-01T00:00:00Z"}}}),
    );
    let policy: ContractPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ContractPolicy", "metadata": {"name": "baseline"},
        "spec": {"enforcementAction": "Deny", "failover": {"requiredRegions": ["gz"]}},
        "status": {"matched": 4, "violations": 1, "compliance": "75%", "auditTime": "2026-01-01T00:00:00Z",
            "violationSamples": [{"kind": "Service", "namespace": "pay", "name": "x", "message": "missing gz"}],
            "fleet": {"summary": "1/2", "clusters": 2, "compliant": 1, "unreachable": 0, "members": [
                {"cluster": "m1", "reachable": true, "inSync": true, "compliant": true, "matched": 1, "violations": 0},
                {"cluster": "m2", "reachable": true, "inSync": true, "compliant": false, "matched": 3, "violations": 2, "message": "2 violations"}]}}
    }))
    .expect("a policy");
    let s = summarize(&[broken, ready], &[policy]);
    assert_eq!(s.contracts[0].name, "a", "sorted");
    assert_eq!(s.contracts[0].last_drill, "Passed 900ms");
    assert_eq!(s.contracts[1].reason.as_deref(), Some("ServiceNotFound: Service pay/b does not exist"));
    assert_eq!(s.policies[0].fleet, "1/2");
    assert_eq!(s.fleet.len(), 2);
    let text = table(&s);
    assert!(text.contains("pay/b is not ready: ServiceNotFound: Service pay/b does not exist"), "{text}");
    assert!(text.contains("pay/b: proxy gz-2 refused sha256:bad: cluster: invalid"), "{text}");
    assert_eq!(s.contracts[0].rejection, None, "nothing refused");
    assert!(text.contains("baseline: Service pay/x: missing gz"), "{text}");
    assert!(text.contains("FLEET (2 members)"), "{text}");
    let header = text.lines().nth(1).unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAMESPACE", "NAME", "SERVICE", "READY", "PROXIES", "CHANNELS", "LAST", "DRILL"]
    );
    assert!(table(&Status::default()).contains("CONTRACTS (0)\nNAMESPACE"), "empty tables say so");
}

#[test]
fn progress_says_each_change_once() {
    let mut drill: ContractDrill = serde_json::from_value(serde_json::json!({
        "apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ContractDrill", "metadata": {"name": "d", "namespace": "pay"},
        "spec": {"contract": "pay", "fault": {"region": "gz", "abort": {}}, "duration": "60s", "expect": {"failoverWithin": "2s"}},
        "status": {"phase": "Running", "conditions": [{"type": "FaultActive", "status": "True", "reason": "Pushed", "message": "the fault is in 1 proxy", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    }))
    .expect("a drill");
    let mut p = Progress::default();
    assert_eq!(p.lines(&drill), ["phase Running", "FaultActive=True (Pushed): the fault is in 1 proxy"]);
    assert!(p.lines(&drill).is_empty(), "nothing new");
    let status = drill.status.as_mut().expect("status");
    status.proxies =
        vec![crds::ProxySwitchover { proxy: "gz-1".into(), switchover: Some("800ms".into()), requests: 40 }];
    status.phase = Some(DrillPhase::Passed);
    status.served_by =
        vec![crds::ServedBy { channel: "primary".into(), region: "sz".into(), faulted: false, requests: 39 }];
    let lines = p.lines(&drill);
    assert_eq!(
        lines,
        [
            "phase Passed",
            "proxy gz-1 switched over in 800ms (40 requests during the fault)",
            "served by primary/sz: 39"
        ]
    );
}
