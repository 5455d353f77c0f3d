//! The operator as service teams meet it, with real traffic: a real operator process against the real API
//! server publishes each contract's ConfigMap; a real Envoy follows that ConfigMap through filesystem xDS
//! (mirrored the kubelet's way) in a network namespace of the test's own, in front of real backends
//! whose behaviour the tests change. Each test has its own Kubernetes namespace, Nodes, backends and
//! Envoy; the operator is shared.
//!
//! Run with `--nocapture` to see the measured latencies and delays.

use std::time::{Duration, Instant};

use e2e::testbed::{CONTRACT_LABEL, Placement, Testbed, operator, spawn_operator};
use e2e::{curl, kubectl, rbac, unique, wait_until};
use serde_json::Value;

/// The Service port of every contract here, which is also Envoy's listener port.
const PORT: u16 = 18000;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A Service `name` with one EndpointSlice holding the named backends on the gz Node.
fn service_with(tb: &Testbed, name: &str, backends: &[&str]) {
    tb.service(name, PORT);
    let endpoints: Vec<(&str, Placement<'_>)> = backends.iter().map(|b| (*b, Placement::Node("gz"))).collect();
    tb.endpoint_slice(&format!("{name}-1"), name, None, &endpoints);
}

/// A backend behind the Service "pay" (on the gz Node) and the contract "pay" over it, with `spec`.
fn pay_over(tb: &mut Testbed, backend: &str, spec: &str) {
    tb.start_backend(backend);
    service_with(tb, "pay", &[backend]);
    tb.contract("pay", spec);
}

/// Sends requests back to back until `backend` answers one with 200: how long that took, and every reply
/// seen on the way.
fn traffic_moves_to(tb: &mut Testbed, backend: &str) -> (Duration, Vec<e2e::testbed::Reply>) {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        tb.envoy_mut().assert_running();
        let r = tb.get(&[]);
        let done = r.status == 200 && r.backend == backend;
        seen.push(r);
        if done {
            return (start.elapsed(), seen);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "traffic never moved to {backend}: {seen:?}");
    }
}

fn describe(seen: &[e2e::testbed::Reply]) -> String {
    seen.iter()
        .map(|r| format!("{}:{}", r.status, if r.backend.is_empty() { "-" } else { &r.backend }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sum of the Envoy stats whose names end with `.<suffix>`.
fn stat_sum(tb: &Testbed, suffix: &str) -> u64 {
    let stats = tb.envoy().admin_get("/stats").unwrap_or_default();
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.ends_with(&format!(".{suffix}")))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn a_slow_backend_gets_a_504_at_the_latency_sla() {
    let mut tb = Testbed::new("op-slow");
    pay_over(&mut tb, "slow-1", "  service: pay\n  port: 18000\n  sla: {maxLatency: 400ms}\n");
    tb.start_envoy("pay", PORT);
    tb.wait_served_by("slow-1", &[], Duration::from_secs(30));

    tb.backend("slow-1").set_mode("slow 3s");
    let replies = tb.get_many(5, &[]);
    let expected_contract = format!("{}/pay", tb.ns.name);
    for r in &replies {
        assert_eq!(r.status, 504, "a request past maxLatency gets a 504: {replies:?}");
        assert_eq!(r.contract, expected_contract, "Envoy's own 504 names the contract");
        assert!((0.2..=0.6).contains(&r.seconds), "504 after {:.3}s, expected 0.4s ± 50%: {replies:?}", r.seconds);
    }
    let times: Vec<String> = replies.iter().map(|r| format!("{:.3}s", r.seconds)).collect();
    println!("measured: maxLatency 400ms -> 504 after {}", times.join(", "));
}

#[test]
fn a_flaky_backend_is_retried_with_back_off_and_the_client_sees_success() {
    let mut tb = Testbed::new("op-flaky");
    pay_over(
        &mut tb,
        "flaky-1",
        "  service: pay\n  port: 18000\n  sla: {maxLatency: 3s}\n  retry:\n    strategy: ExponentialBackoff\n    maxRetries: 3\n    retryOn: [5xx]\n    backoff: {baseInterval: 25ms, maxInterval: 250ms}\n",
    );
    tb.start_envoy("pay", PORT);
    tb.wait_served_by("flaky-1", &[], Duration::from_secs(30));

    let before = tb.backend("flaky-1").requests();
    let backoffs_before = stat_sum(&tb, "upstream_rq_retry_backoff_exponential");
    // The backend fails the first 2 of every 3 requests it gets.
    tb.backend("flaky-1").set_mode("flaky 2");
    let replies = tb.get_many(5, &[]);
    for r in &replies {
        assert_eq!((r.status, r.backend.as_str()), (200, "flaky-1"), "retries hide the failures: {replies:?}");
    }
    let attempts = tb.backend("flaky-1").requests() - before;
    assert_eq!(attempts, 15, "each of the 5 requests took 3 attempts (2 failures, then success)");
    let backoffs = stat_sum(&tb, "upstream_rq_retry_backoff_exponential") - backoffs_before;
    assert!(backoffs >= 10, "Envoy backed off exponentially before each of the 10 retries (counted {backoffs})");
    let times: Vec<String> = replies.iter().map(|r| format!("{:.3}s", r.seconds)).collect();
    println!(
        "measured: flaky 2 -> 5 successes in {}, {attempts} attempts, {backoffs} exponential back-offs",
        times.join(", ")
    );
}

#[test]
fn a_failing_endpoint_is_ejected_traffic_degrades_to_the_fallback_channel_and_returns_when_it_recovers() {
    let mut tb = Testbed::new("op-eject");
    tb.start_backend("primary-1");
    tb.start_backend("cache-1");
    service_with(&tb, "pay", &["primary-1"]);
    service_with(&tb, "pay-cache", &["cache-1"]);
    tb.contract(
        "pay",
        "  service: pay\n  port: 18000\n  sla: {maxLatency: 3s}\n  retry:\n    maxRetries: 3\n    backoff: {baseInterval: 10ms, maxInterval: 50ms}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}\n  channels:\n  - {name: primary}\n  - {name: cache, service: pay-cache, selector: cache}\n",
    );
    tb.start_envoy("pay", PORT);
    tb.settles_on("primary-1", &[], 10, Duration::from_secs(30));
    // The proxy tells the backend which channel serves it.
    let replies = tb.get_many(5, &[]);
    assert!(replies.iter().all(|r| r.channel_priority == "primary"), "X-Channel-Priority at the backend: {replies:?}");

    tb.backend("primary-1").set_mode("status 503");
    let (degraded, seen) = traffic_moves_to(&mut tb, "cache-1");
    assert!(seen.iter().filter(|r| r.status != 200).count() <= 1, "clients saw failures: {}", describe(&seen));
    tb.settles_on("cache-1", &[], 20, Duration::from_secs(30));
    // Failed over with no header from the client: the fallback channel's backend hears it is the degraded
    // path (X-Channel-Priority: cache), on every request, the retried ones included.
    let replies = tb.get_many(10, &[]);
    assert!(
        replies.iter().all(|r| r.backend == "cache-1" && r.channel_priority == "cache"),
        "X-Channel-Priority at the fallback's backend: {replies:?}"
    );
    let primary = format!("csp~{}~pay~primary", tb.ns.name);
    let clusters = tb.envoy().admin_get("/clusters").unwrap_or_default();
    let ejected = format!("{primary}::{}:8080::health_flags::/failed_outlier_check", tb.backend("primary-1").address);
    assert!(clusters.contains(&ejected), "the primary endpoint is ejected:\n{clusters}");

    tb.backend("primary-1").set_mode("ok");
    let recovered = Instant::now();
    tb.settles_on("primary-1", &[], 10, Duration::from_secs(60));
    let returned = recovered.elapsed();
    println!(
        "measured: primary failing -> cache channel serves after {:.2}s (replies: {}); primary recovered -> traffic back after {:.2}s (baseEjectionTime 2s, interval 1s)",
        secs(degraded),
        describe(&seen),
        secs(returned)
    );
}

#[test]
fn the_channel_priority_header_goes_straight_to_that_channel() {
    let mut tb = Testbed::new("op-header");
    tb.start_backend("primary-1");
    tb.start_backend("cache-1");
    service_with(&tb, "pay", &["primary-1"]);
    service_with(&tb, "pay-cache", &["cache-1"]);
    tb.contract(
        "pay",
        "  service: pay\n  port: 18000\n  sla: {maxLatency: 2s}\n  channels:\n  - {name: primary}\n  - {name: cache, service: pay-cache, selector: cache}\n",
    );
    tb.start_envoy("pay", PORT);
    tb.settles_on("primary-1", &[], 5, Duration::from_secs(30));
    // The backend gets the serving channel's name, whatever the client sent (one header, not two).
    for (header, expected, seen) in
        [("cache", "cache-1", "cache"), ("CACHE", "cache-1", "cache"), ("no-such-channel", "primary-1", "primary")]
    {
        let replies = tb.get_many(5, &[("X-Channel-Priority", header)]);
        for r in &replies {
            assert_eq!(
                (r.status, r.backend.as_str(), r.channel_priority.as_str()),
                (200, expected, seen),
                "X-Channel-Priority: {header}: {replies:?}"
            );
        }
    }
    // The primary is healthy: only the header sends traffic to the cache.
    assert!(tb.get_many(5, &[]).iter().all(|r| r.backend == "primary-1"));
}

#[test]
fn with_gz_endpoints_down_traffic_fails_over_to_sz_then_hz() {
    let mut tb = Testbed::new("op-regions");
    for b in ["gz-1", "sz-1", "hz-1"] {
        tb.start_backend(b);
    }
    tb.service("pay", PORT);
    // gz and sz take their region from their Nodes; hz is imported: its slice carries the region.
    tb.endpoint_slice("pay-local", "pay", None, &[("gz-1", Placement::Node("gz")), ("sz-1", Placement::Node("sz"))]);
    tb.endpoint_slice("pay-imported", "pay", Some("hz"), &[("hz-1", Placement::Imported)]);
    tb.contract(
        "pay",
        "  service: pay\n  port: 18000\n  sla: {maxLatency: 3s}\n  retry:\n    maxRetries: 3\n    backoff: {baseInterval: 10ms, maxInterval: 50ms}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz, hz]}\n",
    );
    let contract = tb.wait_channels("pay", "primary:3");
    assert_eq!(condition_of(&contract, "Ready")["reason"], "Ready");
    assert_eq!(contract["status"]["channels"][0]["regions"], serde_json::json!(["gz", "sz", "hz"]));
    assert_eq!(contract["status"]["channels"][0]["endpoints"], 3);
    tb.start_envoy("pay", PORT);
    tb.settles_on("gz-1", &[], 10, Duration::from_secs(30));

    // Retries (3) outnumber the errors that eject (3), so a client sees at most the request that was in
    // flight when the region failed.
    let failures = |seen: &[e2e::testbed::Reply]| seen.iter().filter(|r| r.status != 200).count();
    tb.backend("gz-1").set_mode("status 503");
    let (to_sz, seen_sz) = traffic_moves_to(&mut tb, "sz-1");
    assert!(failures(&seen_sz) <= 1, "clients saw failures while gz failed over: {}", describe(&seen_sz));
    tb.settles_on("sz-1", &[], 10, Duration::from_secs(30));

    tb.backend("sz-1").set_mode("status 503");
    let (to_hz, seen_hz) = traffic_moves_to(&mut tb, "hz-1");
    assert!(failures(&seen_hz) <= 1, "clients saw failures while sz failed over: {}", describe(&seen_hz));
    tb.settles_on("hz-1", &[], 10, Duration::from_secs(30));
    println!(
        "measured: gz down -> sz after {:.2}s (replies: {}); sz down -> hz after {:.2}s (replies: {})",
        secs(to_sz),
        describe(&seen_sz),
        secs(to_hz),
        describe(&seen_hz)
    );
}

#[test]
fn editing_the_contract_changes_envoys_behaviour_without_a_restart() {
    let mut tb = Testbed::new("op-edit");
    pay_over(
        &mut tb,
        "slow-1",
        "  service: pay\n  port: 18000\n  sla: {maxLatency: 300ms}\n  retry: {strategy: None}\n",
    );
    tb.start_envoy("pay", PORT);
    tb.wait_served_by("slow-1", &[], Duration::from_secs(30));
    let version = tb.wait_programmed("pay");
    let pid = tb.envoy().pid().expect("Envoy's pid");
    assert_eq!(tb.envoy().command_name().as_deref(), Some("envoy"));

    tb.backend("slow-1").set_mode("slow 1s");
    let r = tb.get(&[]);
    assert_eq!(r.status, 504, "1s is past maxLatency 300ms: {r:?}");

    let edited = Instant::now();
    let ns = tb.ns.name.clone();
    kubectl(
        &[
            "patch",
            "channelcontract",
            "pay",
            "-n",
            &ns,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"sla":{"maxLatency":"3s"}}}"#,
        ],
        None,
    )
    .ok();
    let served = tb.wait_served_by("slow-1", &[], Duration::from_secs(30));
    let behaviour_changed = served.duration_since(edited);

    let new_version = tb.wait_programmed("pay");
    assert_ne!(new_version, version, "the edit is a new configuration");
    let mirrored = tb.volume().wait_for(&new_version, Duration::from_secs(10)).duration_since(edited);
    let contract = tb.get_json("channelcontract", "pay").expect("the contract");
    assert_eq!(contract["status"]["observedGeneration"], contract["metadata"]["generation"]);
    assert_eq!(contract["metadata"]["generation"], 2);
    let dump = tb.envoy().admin_get("/config_dump").unwrap_or_default();
    assert!(dump.contains(&format!("\"version_info\": \"{new_version}\"")), "Envoy runs the new version");

    tb.envoy_mut().assert_running();
    assert_eq!(tb.envoy().pid(), Some(pid), "the same Envoy process");
    assert_eq!(tb.envoy().command_name().as_deref(), Some("envoy"), "pid {pid} is still Envoy");
    let r = tb.get(&[]);
    assert_eq!((r.status, r.backend.as_str()), (200, "slow-1"));
    println!(
        "measured: maxLatency 300ms -> 3s: ConfigMap in the volume {:.2}s after the edit, first 200 (1s backend) {:.2}s after the edit, Envoy pid {pid} unchanged",
        secs(mirrored),
        secs(behaviour_changed)
    );
}

#[test]
fn deleting_the_contract_garbage_collects_its_config_map() {
    let mut tb = Testbed::new("op-gc");
    pay_over(&mut tb, "pay-1", "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n");
    tb.wait_programmed("pay");
    let contract = tb.get_json("channelcontract", "pay").expect("the contract");
    let cm = tb.get_json("configmap", "pay-envoy").expect("the ConfigMap is published");
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ChannelContract");
    assert_eq!(owner["name"], "pay");
    assert_eq!(owner["uid"], contract["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);

    let ns = tb.ns.name.clone();
    kubectl(&["delete", "channelcontract", "pay", "-n", &ns], None).ok();
    let deleted = Instant::now();
    wait_until("the garbage collector to delete pay-envoy", Duration::from_secs(60), || {
        tb.get_json("configmap", "pay-envoy").is_none().then_some(())
    });
    println!("measured: ConfigMap garbage-collected {:.2}s after the contract's deletion", secs(deleted.elapsed()));
}

/// The Events about a contract, oldest first.
fn events_of(ns: &str, name: &str) -> Vec<Value> {
    let field = format!("involvedObject.name={name}");
    let out = kubectl(&["get", "events", "-n", ns, "--field-selector", &field, "-o", "json"], None).ok();
    let list: Value = serde_json::from_str(&out).expect("event list");
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by_key(|e| e["eventTime"].as_str().or(e["firstTimestamp"].as_str()).unwrap_or_default().to_owned());
    items
}

fn condition_of(contract: &Value, type_: &str) -> Value {
    contract["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_else(|| panic!("no {type_} condition: {contract:#}"))
}

#[test]
fn a_contract_whose_service_does_not_exist_says_so_and_publishes_nothing() {
    let mut tb = Testbed::new("op-missing");
    tb.start_backend("pay-1");
    tb.contract("orphan", "  service: nowhere\n  port: 18000\n  sla: {maxLatency: 1s}\n");
    let contract = tb.wait_condition("orphan", "Programmed", "False", "ServiceNotFound");
    let programmed = condition_of(&contract, "Programmed");
    let message = programmed["message"].as_str().unwrap_or_default();
    assert!(message.contains("Service \"nowhere\" (channel \"primary\", spec.service) not found"), "{message}");
    assert!(message.contains("nothing is published"), "{message}");
    let ready = condition_of(&contract, "Ready");
    assert_eq!((&ready["status"], &ready["reason"]), (&Value::from("False"), &Value::from("ServiceNotFound")));
    let accepted = condition_of(&contract, "Accepted");
    assert_eq!((&accepted["status"], &accepted["reason"]), (&Value::from("True"), &Value::from("Valid")));
    assert!(contract["status"]["configVersion"].is_null(), "nothing was published");
    assert!(tb.get_json("configmap", "orphan-envoy").is_none(), "no ConfigMap is published");
    let ns = tb.ns.name.clone();
    let events = events_of(&ns, "orphan");
    let warning = events
        .iter()
        .find(|e| e["reason"] == "ServiceNotFound")
        .unwrap_or_else(|| panic!("no ServiceNotFound Event: {events:#?}"));
    assert_eq!(warning["type"], "Warning");
    let note = warning["message"].as_str().unwrap_or_default();
    assert!(note.contains("Programmed=False (ServiceNotFound): Service \"nowhere\""), "{note}");

    // The operator waits for the change: creating the Service programs the contract.
    service_with(&tb, "nowhere", &["pay-1"]);
    // Ready once the EndpointSlice is in too (the Service alone is programmed with no endpoints first).
    let contract = tb.wait_condition("orphan", "Ready", "True", "Ready");
    assert_eq!(condition_of(&contract, "Programmed")["status"], "True");
    let version = contract["status"]["configVersion"].as_str().expect("a configVersion").to_owned();
    let cm = tb.get_json("configmap", "orphan-envoy").expect("published once the Service exists");
    assert_eq!(cm["metadata"]["annotations"]["csp.contracts.dev/config-version"], version.as_str());
}

#[test]
fn a_contract_that_loses_a_channel_service_keeps_its_last_good_config_map() {
    let mut tb = Testbed::new("op-lastgood");
    tb.start_backend("pay-1");
    tb.start_backend("cache-1");
    service_with(&tb, "pay", &["pay-1"]);
    service_with(&tb, "pay-cache", &["cache-1"]);
    tb.contract(
        "pay",
        "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n  channels:\n  - {name: primary}\n  - {name: cache, service: pay-cache, selector: cache}\n",
    );
    let contract = tb.wait_channels("pay", "primary:1,cache:1");
    let version = contract["status"]["configVersion"].as_str().expect("a configVersion").to_owned();
    let before = tb.get_json("configmap", "pay-envoy").expect("published");
    assert_eq!(before["metadata"]["annotations"]["csp.contracts.dev/config-version"], version.as_str());

    let ns = tb.ns.name.clone();
    kubectl(&["delete", "service", "pay-cache", "-n", &ns], None).ok();
    let contract = tb.wait_condition("pay", "Programmed", "False", "ServiceNotFound");
    let message = condition_of(&contract, "Programmed")["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("Service \"pay-cache\" (channel \"cache\", spec.channels[1].service) not found"),
        "{message}"
    );
    assert!(message.contains(&format!("the last good configuration {version} stays published")), "{message}");
    assert_eq!(condition_of(&contract, "Ready")["reason"], "ServiceNotFound");
    assert_eq!(contract["status"]["configVersion"], version.as_str(), "status names what is still published");

    let after = tb.get_json("configmap", "pay-envoy").expect("still published");
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the ConfigMap is untouched"
    );
    assert_eq!(after["data"], before["data"]);

    // The Service comes back: the same inputs give the same configuration.
    service_with(&tb, "pay-cache", &["cache-1"]);
    let contract = tb.wait_channels("pay", "primary:1,cache:1");
    assert_eq!(contract["status"]["configVersion"], version.as_str());
}

#[test]
fn a_good_contract_is_ready_programmed_and_shows_its_channels_in_kubectl_get() {
    let mut tb = Testbed::new("op-good");
    for b in ["gz-1", "sz-1", "cache-1"] {
        tb.start_backend(b);
    }
    tb.service("pay", PORT);
    tb.endpoint_slice("pay-1", "pay", None, &[("gz-1", Placement::Node("gz")), ("sz-1", Placement::Node("sz"))]);
    service_with(&tb, "pay-cache", &["cache-1"]);
    tb.contract(
        "pay",
        "  service: pay\n  port: 18000\n  sla: {maxLatency: 120ms}\n  channels:\n  - {name: primary}\n  - {name: cache, service: pay-cache, selector: cache}\n  failover: {regions: [gz, sz, hz]}\n",
    );
    let contract = tb.wait_channels("pay", "primary:2,cache:1");
    let generation = contract["metadata"]["generation"].clone();
    for (type_, reason) in [("Accepted", "Valid"), ("Programmed", "Programmed"), ("Ready", "Ready")] {
        let c = condition_of(&contract, type_);
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("True"), Some(reason)), "{c}");
        assert_eq!(c["observedGeneration"], generation, "{c}");
        assert!(c["lastTransitionTime"].is_string(), "{c}");
    }
    let status = &contract["status"];
    assert_eq!(status["observedGeneration"], generation);
    assert_eq!(status["channelSummary"], "primary:2,cache:1");
    assert_eq!(status["channels"][0]["regions"], serde_json::json!(["gz", "sz"]));
    let version = status["configVersion"].as_str().expect("configVersion").to_owned();
    assert!(version.starts_with("sha256:") && version.len() == 7 + 64, "{version}");
    let cm = tb.get_json("configmap", "pay-envoy").expect("published");
    assert_eq!(cm["metadata"]["annotations"]["csp.contracts.dev/config-version"], version.as_str());
    let files: Vec<&String> = cm["data"].as_object().expect("data").keys().collect();
    assert_eq!(files, ["cds.yaml", "lds.yaml", "rds.yaml"]);

    let ns = tb.ns.name.clone();
    let table = kubectl(&["get", "chc", "pay", "-n", &ns], None).ok();
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SERVICE", "CHANNELS", "REGIONS", "READY", "PROXIES", "DRILL", "AGE"], "{table}");
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..5], ["pay", "pay", "primary:2,cache:1", r#"["gz","sz","hz"]"#, "True"], "{table}");

    // One Event per status change, naming every condition that moved; kubectl describe shows them.
    let events = events_of(&ns, "pay");
    let notes: Vec<&str> = events.iter().map(|e| e["message"].as_str().unwrap_or_default()).collect();
    for part in ["Accepted=True (Valid)", "Programmed=True (Programmed)", "Ready=True (Ready)"] {
        assert!(notes.iter().any(|n| n.contains(part)), "no Event says {part}: {events:#?}");
    }
    let ready = events.iter().find(|e| e["reason"] == "Ready").unwrap_or_else(|| panic!("no Ready Event: {events:#?}"));
    assert_eq!(ready["type"], "Normal");
    let mut distinct = notes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), notes.len(), "an Event repeats: {events:#?}");
    assert!(events.len() <= 3, "at most one Event per status change, fewer than one per condition: {events:#?}");
    let metrics = operator().metrics();
    for series in [
        "csp_operator_reconciles_total{result=\"ok\"}",
        "csp_operator_reconcile_duration_seconds_count",
        "csp_operator_contracts{condition=\"Ready\",status=\"True\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics:\n{metrics}");
    }
}

#[test]
fn a_node_that_changes_region_moves_its_endpoints_to_that_region() {
    let mut tb = Testbed::new("op-relabel");
    pay_over(&mut tb, "pay-1", "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n");
    let before = tb.wait_channels("pay", "primary:1");
    assert_eq!(before["status"]["channels"][0]["regions"], serde_json::json!(["gz"]));
    let version = before["status"]["configVersion"].as_str().expect("a configVersion").to_owned();

    // The Node's region label changes: nothing else does, yet the contract is reconciled.
    let node = tb.node("gz");
    let started = Instant::now();
    kubectl(&["label", "node", &node, "topology.kubernetes.io/region=hz", "--overwrite"], None).ok();
    let after = wait_until("the endpoint in region hz", Duration::from_secs(30), || {
        let c = tb.get_json("channelcontract", "pay")?;
        (c["status"]["channels"][0]["regions"] == serde_json::json!(["hz"])).then_some(c)
    });
    println!("region relabel -> status: {:.2} s", secs(started.elapsed()));
    let moved = after["status"]["configVersion"].as_str().expect("a configVersion").to_owned();
    assert_ne!(moved, version, "the endpoint's locality is part of the configuration");
    let cm = tb.get_json("configmap", "pay-envoy").expect("published");
    assert_eq!(cm["metadata"]["annotations"]["csp.contracts.dev/config-version"], moved.as_str());
    assert!(cm["data"]["cds.yaml"].as_str().unwrap_or_default().contains("hz"), "{:#}", cm["data"]["cds.yaml"]);
}

#[test]
fn a_config_map_edited_or_deleted_by_hand_is_restored() {
    let mut tb = Testbed::new("op-restore");
    pay_over(&mut tb, "pay-1", "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n");
    let version = tb.wait_programmed("pay");
    let original = tb.get_json("configmap", "pay-envoy").expect("published");
    let ns = tb.ns.name.clone();
    let restored = |what: &str| {
        wait_until(what, Duration::from_secs(30), || {
            let cm = tb.get_json("configmap", "pay-envoy")?;
            (cm["data"] == original["data"]
                && cm["metadata"]["annotations"]["csp.contracts.dev/config-version"] == version.as_str())
            .then_some(cm)
        })
    };

    let started = Instant::now();
    kubectl(
        &["patch", "configmap", "pay-envoy", "-n", &ns, "--type", "merge", "-p", r#"{"data":{"cds.yaml":"edited"}}"#],
        None,
    )
    .ok();
    let back = restored("the edited ConfigMap restored");
    assert_ne!(back["metadata"]["resourceVersion"], original["metadata"]["resourceVersion"], "it was rewritten");
    println!("hand edit -> restored: {:.2} s", secs(started.elapsed()));

    let started = Instant::now();
    kubectl(&["delete", "configmap", "pay-envoy", "-n", &ns], None).ok();
    let back = restored("the deleted ConfigMap recreated");
    assert_ne!(back["metadata"]["uid"], original["metadata"]["uid"], "a new object");
    println!("deletion -> recreated: {:.2} s", secs(started.elapsed()));
}

#[test]
fn of_two_operators_one_leads_and_the_other_takes_over_when_it_stops() {
    let mut tb = Testbed::new("op-leader");
    tb.start_backend("pay-1");
    service_with(&tb, "pay", &["pay-1"]);
    let (id, ns) = (unique("op-ha"), tb.ns.name.clone());
    // The chart's Lease in the release namespace: the only one its RBAC lets the operator hold. A Lease left
    // by an earlier run goes first, so that the transitions counted are this test's.
    let (lease_ns, lease_name) = (rbac::NAMESPACE, rbac::operator_lease());
    rbac::ensure_chart_rbac();
    kubectl(&["delete", "lease", &lease_name, "-n", lease_ns, "--ignore-not-found"], None).ok();
    let start = |identity: &str| {
        let args: Vec<String> = [
            "--contract-selector",
            &format!("{CONTRACT_LABEL}={id}"),
            "--leader-elect",
            "--leader-election-namespace",
            lease_ns,
            "--leader-election-lease",
            &lease_name,
            "--identity",
            identity,
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "3s",
            "--retry-period",
            "500ms",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        spawn_operator(&args, &tb.dir.join(format!("{identity}.log")))
    };
    let mut operators = [("op-a", start("op-a")), ("op-b", start("op-b"))];
    let lease = |field: &str| {
        kubectl(&["get", "lease", &lease_name, "-n", lease_ns, "-o", &format!("jsonpath={{.spec.{field}}}")], None)
            .stdout
    };
    let leads = |port: u16| {
        curl(&[&format!("http://127.0.0.1:{port}/metrics")]).1.lines().any(|l| l.trim() == "csp_operator_leader 1")
    };
    let first = wait_until("one operator to hold the Lease", Duration::from_secs(30), || {
        let holder = lease("holderIdentity");
        operators.iter().any(|(name, _)| *name == holder).then_some(holder)
    });
    let (leader, standby) = if first == "op-a" { (0, 1) } else { (1, 0) };
    wait_until("the leader's metrics to say so", Duration::from_secs(10), || {
        leads(operators[leader].1.1).then_some(())
    });
    assert!(!leads(operators[standby].1.1), "only one instance leads");

    let spec = "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n";
    tb.contract_for(&id, "pay", spec);
    tb.wait_channels("pay", "primary:1");

    // The leader stops (SIGTERM): it releases the Lease and the standby takes over.
    operators[leader].1.0.stop();
    let stopped = Instant::now();
    let standby_name = operators[standby].0;
    wait_until("the standby to take the Lease", Duration::from_secs(15), || {
        (lease("holderIdentity") == standby_name).then_some(())
    });
    let takeover = stopped.elapsed();
    // Released, not expired: the old leader says so, and the standby had it well before the 4 s lease
    // duration would have run out.
    let old_log = std::fs::read_to_string(tb.dir.join(format!("{}.log", operators[leader].0))).unwrap_or_default();
    assert!(old_log.contains("released the leader Lease"), "the stopping leader should release its Lease:\n{old_log}");
    assert!(
        takeover < Duration::from_secs(3),
        "the standby took {takeover:?} to hold a released Lease (retry period 500ms; the lease duration is 4s)"
    );
    wait_until("the new leader's metrics to say so", Duration::from_secs(10), || {
        leads(operators[standby].1.1).then_some(())
    });
    assert!(lease("leaseTransitions").trim().parse::<i32>().is_ok_and(|t| t >= 1), "a transition is counted");
    // The new leader reconciles: an edit is programmed.
    kubectl(
        &[
            "patch",
            "channelcontract",
            "pay",
            "-n",
            &ns,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"sla":{"maxLatency":"2s"}}}"#,
        ],
        None,
    )
    .ok();
    let contract = tb.wait_condition("pay", "Programmed", "True", "Programmed");
    assert_eq!(contract["status"]["observedGeneration"], 2);
    let log = std::fs::read_to_string(tb.dir.join(format!("{standby_name}.log"))).unwrap_or_default();
    assert!(log.contains("became the leader"), "{log}");
    println!("measured: the standby held the Lease {:.2}s after the leader got SIGTERM", secs(takeover));
}

#[test]
fn a_users_own_config_map_under_the_contracts_name_is_never_taken_over_and_the_contract_waits_for_the_name() {
    let mut tb = Testbed::new("op-conflict");
    let ns = tb.ns.name.clone();
    // The user's own ConfigMap, under the name the contract's would have, without the operator's label.
    let theirs = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pay-envoy\n  namespace: {ns}\n  labels: {{team: payments}}\ndata:\n  cds.yaml: mine\n"
    );
    kubectl(&["create", "-f", "-"], Some(&theirs)).ok();
    let before = tb.get_json("configmap", "pay-envoy").expect("the user's ConfigMap");

    pay_over(&mut tb, "pay-1", "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n");
    let contract = tb.wait_condition("pay", "Programmed", "False", "ConfigMapConflict");
    let message = condition_of(&contract, "Programmed")["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(&format!("ConfigMap {ns}/pay-envoy already exists")), "{message}");
    assert!(message.contains("Rename or delete that ConfigMap"), "{message}");
    assert!(contract["status"]["configVersion"].is_null(), "nothing was published");
    assert_eq!(condition_of(&contract, "Ready")["reason"], "NotProgrammed");
    let events = events_of(&ns, "pay");
    assert!(events.iter().any(|e| e["reason"] == "ConfigMapConflict" && e["type"] == "Warning"), "{events:#?}");

    let after = tb.get_json("configmap", "pay-envoy").expect("the user's ConfigMap is still there");
    for field in ["resourceVersion", "labels", "ownerReferences", "annotations", "uid"] {
        assert_eq!(after["metadata"][field], before["metadata"][field], "metadata.{field} untouched");
    }
    assert_eq!(after["data"], before["data"], "data untouched");

    // The name is freed: the contract is programmed without any change of its own.
    kubectl(&["delete", "configmap", "pay-envoy", "-n", &ns], None).ok();
    let freed = Instant::now();
    let version = tb.wait_programmed("pay");
    println!("name freed -> programmed: {:.2} s", secs(freed.elapsed()));
    let cm = tb.get_json("configmap", "pay-envoy").expect("the contract's own ConfigMap");
    assert_eq!(cm["metadata"]["annotations"]["csp.contracts.dev/config-version"], version.as_str());
    assert_eq!(cm["metadata"]["ownerReferences"][0]["uid"], contract["metadata"]["uid"]);
    assert_ne!(cm["metadata"]["uid"], before["metadata"]["uid"], "a new object, created by the operator");
}

/// An EndpointSlice `name` of Service `service` with `n` ready endpoints on made-up addresses (nothing
/// serves them: only their number matters).
fn big_slice(ns: &str, name: &str, service: &str, n: usize) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    for i in 0..n {
        yaml += &format!("- addresses: [10.200.{}.{}]\n  conditions: {{ready: true}}\n", i / 250, 1 + i % 250);
    }
    yaml
}

#[test]
fn a_configuration_too_large_for_a_config_map_says_config_too_large_and_keeps_the_last_good_one() {
    let mut tb = Testbed::new("op-toolarge");
    let ns = tb.ns.name.clone();
    tb.start_backend("pay-1");
    service_with(&tb, "pay", &["pay-1"]);
    // 16 channels (the most a contract has) over the one Service: every endpoint is in the configuration
    // 16 times.
    let mut spec = "  service: pay\n  port: 18000\n  sla: {maxLatency: 1s}\n  channels:\n".to_owned();
    for i in 0..16 {
        spec += &format!("  - {{name: c{i}}}\n");
    }
    tb.contract("pay", &spec);
    let version = tb.wait_programmed("pay");
    let before = tb.get_json("configmap", "pay-envoy").expect("published");

    // 400 endpoints x 16 channels, each with its locality and metadata: about 1.6 MB, over the 1 MiB a
    // ConfigMap holds (1000 took a loaded CI machine's debug build more than the 30 s wait to render).
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&big_slice(&ns, "pay-big", "pay", 400))).ok();
    let contract = tb.wait_condition("pay", "Programmed", "False", "ConfigTooLarge");
    let message = condition_of(&contract, "Programmed")["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(&format!("does not fit in ConfigMap {ns}/pay-envoy")), "{message}");
    assert!(message.contains(&format!("the last good configuration {version} stays published")), "{message}");
    assert_eq!(contract["status"]["configVersion"], version.as_str());
    let after = tb.get_json("configmap", "pay-envoy").expect("still published");
    assert_eq!(after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"], "untouched");

    // It waits for a change, and a change that fits programs it again.
    kubectl(&["delete", "endpointslice", "pay-big", "-n", &ns], None).ok();
    assert_eq!(tb.wait_programmed("pay"), version, "the same inputs give the same configuration");
}
