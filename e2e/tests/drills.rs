//! The SLO loop against real Envoys fed over xDS by the operator. ContractDrills: the drill's fault goes
//! into the proxies (an outage of a region as the proxies see it), the data plane's own failover moves
//! the traffic, the fault leaves with the drill's duration or with the drill, and a trigger starts a drill
//! on a real breach that a real Prometheus records with the chart's rules. Traces: every request is a span
//! at a real OpenTelemetry Collector with the contract's attributes.

use std::time::{Duration, Instant};

use e2e::kubectl;
use e2e::observability::{Collector, Span, operator_with_prometheus};
use e2e::traffic::Traffic;
use e2e::xds::{ProxySpec, XdsBed, XdsOperator, xds_operator};
use serde_json::Value;

const PORT: u16 = 18080;

fn log_of(operator: &XdsOperator) -> impl Fn() -> String + '_ {
    move || format!("--- operator log ---\n{}", operator.log_tail())
}

fn acked(c: &Value, n: i64) -> bool {
    let p = &c["status"]["proxies"];
    p["selected"] == n && p["acked"] == n
}

fn version(c: &Value) -> String {
    c["status"]["configVersion"].as_str().unwrap_or_default().to_owned()
}

fn drill(bed: &XdsBed, name: &str, duration: &str) {
    drill_promising(bed, name, duration, "5s");
}

fn drill_promising(bed: &XdsBed, name: &str, duration: &str, within: &str) {
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractDrill\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  contract: pay\n  fault: {{region: gz, abort: {{httpStatus: 503, percent: 100}}}}\n  duration: {duration}\n  expect: {{failoverWithin: {within}}}\n",
        ns = bed.ns.name
    );
    kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
}

/// A bed with Service `pay` (gz-1 in gz, sz-1 in sz), contract `pay` with `spec`, and one proxy in gz
/// (admin port `admin_port`) that has acked it and sends its traffic to gz; returns the plain version.
fn gz_proxy_with_pay(operator: &XdsOperator, name: &str, spec: &str, admin_port: u16) -> (XdsBed, String) {
    let log = log_of(operator);
    let mut bed = XdsBed::new(name);
    for b in ["gz-1", "sz-1"] {
        bed.start_backend(b);
    }
    bed.service("pay", PORT, &[("gz-1", "gz"), ("sz-1", "sz")]);
    bed.contract(operator, "pay", spec);
    bed.start_proxy(operator, ProxySpec::new("proxy-gz", "gz", 2, admin_port));
    let c = bed.wait_status("pay", "1/1 acked", Duration::from_secs(60), &log, |c| acked(c, 1));
    bed.settles_on("proxy-gz", "pay", PORT, "gz-1", 10, Duration::from_secs(30));
    (bed, version(&c))
}

/// Waits until drill `name` has a verdict.
fn verdict(bed: &XdsBed, name: &str) -> Value {
    e2e::wait_until(&format!("drill {name}'s verdict"), Duration::from_secs(40), || {
        let d = kubectl(&["get", "drill", name, "-n", &bed.ns.name, "-o", "json"], None);
        let d: Value = serde_json::from_str(&d.stdout).ok()?;
        matches!(d["status"]["phase"].as_str(), Some("Passed" | "Failed" | "Aborted")).then_some(d)
    })
}

#[test]
fn a_drills_fault_fails_a_region_over_and_leaves_with_its_duration_or_its_drill() {
    let operator = xds_operator();
    let log = log_of(operator);
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  retry:\n    maxRetries: 3\n    backoff: {baseInterval: 10ms, maxInterval: 50ms}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz]}\n";
    let (bed, plain) = gz_proxy_with_pay(operator, "drill-fault", spec, 19301);
    // Every request reaches the operator in the proxy's access log, and counts for the contract's SLO.
    let series = |channel: &str, region: &str, outcome: &str| {
        format!(
            "csp_contract_requests_total{{csp_namespace=\"{}\",csp_contract=\"pay\",csp_channel=\"{channel}\",csp_region=\"{region}\",csp_fallback=\"false\",csp_outcome=\"{outcome}\"}}",
            bed.ns.name
        )
    };
    let ok_gz = e2e::wait_until("the proxy's access logs counted by the operator", Duration::from_secs(15), || {
        operator.metric(&series("primary", "gz", "ok")).filter(|n| *n >= 10.0)
    });
    let sla = format!(
        "csp_contract_request_duration_seconds_bucket{{le=\"3.0\",csp_namespace=\"{}\",csp_contract=\"pay\",csp_channel=\"primary\",csp_region=\"gz\",csp_fallback=\"false\"}}",
        bed.ns.name
    );
    assert!(
        operator.metric(&sla).is_some_and(|n| n >= ok_gz),
        "a bucket at sla.maxLatency (3s):\n{}",
        operator.metrics()
    );

    // The drill: every gz endpoint fails for the proxies, and the proxy's own failover moves to sz.
    let started = Instant::now();
    drill(&bed, "gz-outage", "15s");
    bed.wait_status("pay", "the fault's version acked", Duration::from_secs(15), &log, |c| {
        acked(c, 1) && version(c).starts_with(&plain) && version(c).contains("+drill.")
    });
    bed.settles_on("proxy-gz", "pay", PORT, "sz-1", 10, Duration::from_secs(15));
    let moved = started.elapsed();
    // Nothing reaches gz while the fault lasts: the fault answers in its place.
    let replies = bed.get_many("proxy-gz", "pay", PORT, 20, &[]);
    assert!(replies.iter().all(|r| r.status == 200 && r.backend == "sz-1"), "{replies:?}");
    let faulted = bed.proxies[0].admin_get("/clusters").unwrap_or_default();
    assert!(faulted.contains("envoy://csp~fault/"), "gz is reached through the fault listener:\n{faulted}");
    e2e::wait_until("requests served by sz during the fault, counted", Duration::from_secs(15), || {
        operator.metric(&series("primary", "sz", "ok")).filter(|n| *n >= 20.0)
    });

    // The fault ends with the drill's duration: the proxies get the plain version back, and once gz's
    // ejection (2s) is over, gz takes the traffic again.
    bed.wait_status("pay", "the plain version back", Duration::from_secs(30), &log, |c| {
        acked(c, 1) && version(c) == plain
    });
    let ended = started.elapsed();
    assert!(ended >= Duration::from_secs(14), "the fault lasted its duration: {ended:?}");
    // The verdict, from the proxy's own log of every try: the fault met at gz, then sz answering.
    let judged = verdict(&bed, "gz-outage");
    let status = &judged["status"];
    assert_eq!(status["phase"], "Passed", "{judged:#}\n{}", log());
    let switchover = status["switchover"].as_str().unwrap_or_default().to_owned();
    assert!(!switchover.is_empty(), "{judged:#}");
    let served = status["servedBy"].as_array().cloned().unwrap_or_default();
    assert!(
        served.iter().any(|s| s["region"] == "sz" && s["faulted"] == false && s["requests"].as_i64() > Some(0)),
        "sz served during the drill: {judged:#}"
    );
    assert_eq!(status["proxies"][0]["proxy"], "proxy-gz", "{judged:#}");
    let contract = bed.get_contract("pay").expect("pay");
    assert_eq!(contract["status"]["lastDrill"]["name"], "gz-outage", "{contract:#}");
    assert_eq!(contract["status"]["lastDrill"]["phase"], "Passed", "{contract:#}");
    assert!(contract["status"]["lastPassedDrillTime"].is_string(), "{contract:#}");
    bed.settles_on("proxy-gz", "pay", PORT, "gz-1", 10, Duration::from_secs(20));

    // A drill deleted while it runs takes its fault with it.
    drill(&bed, "deleted", "300s");
    bed.wait_status("pay", "the second fault acked", Duration::from_secs(15), &log, |c| {
        acked(c, 1) && version(c).contains("+drill.")
    });
    bed.settles_on("proxy-gz", "pay", PORT, "sz-1", 10, Duration::from_secs(15));
    let deleted = Instant::now();
    kubectl(&["delete", "contractdrill", "deleted", "-n", &bed.ns.name, "--wait=false"], None).ok();
    bed.wait_status("pay", "no fault after the deletion", Duration::from_secs(15), &log, |c| {
        acked(c, 1) && version(c) == plain
    });
    let removed = deleted.elapsed();
    bed.settles_on("proxy-gz", "pay", PORT, "gz-1", 10, Duration::from_secs(20));
    println!(
        "measured: drill Passed with switchover {switchover} (promise 5s); drill created -> traffic on sz {:.2}s; fault removed {:.1}s after the start (duration 15s); deletion -> fault gone from the proxy's version in {:.2}s",
        moved.as_secs_f64(),
        ended.as_secs_f64(),
        removed.as_secs_f64()
    );
}

#[test]
fn a_drill_whose_promise_is_impossibly_short_fails_and_says_by_how_much() {
    let operator = xds_operator();
    let log = log_of(operator);
    // No retries, and gz is ejected only after 5 errors in a row: a client sending a request every 100ms
    // meets the fault five times (400ms at least) before sz answers. A promise of 100ms cannot be kept.
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  retry: {strategy: None}\n  circuitBreaker: {consecutiveErrors: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz]}\n";
    let (bed, _) = gz_proxy_with_pay(operator, "drill-short", spec, 19302);
    drill_promising(&bed, "too-short", "8s", "100ms");
    bed.wait_status("pay", "the fault's version acked", Duration::from_secs(15), &log, |c| {
        acked(c, 1) && version(c).contains("+drill.")
    });
    let mut seen = Vec::new();
    e2e::wait_until("sz to answer, one request every 100ms", Duration::from_secs(8), || {
        let reply = bed.get_many("proxy-gz", "pay", PORT, 1, &[]).remove(0);
        seen.push(format!("{}:{}", reply.status, reply.backend));
        std::thread::sleep(Duration::from_millis(100));
        (reply.status == 200 && reply.backend == "sz-1").then_some(())
    });
    let failures = seen.iter().filter(|r| r.starts_with("503")).count();
    assert!(failures >= 5, "the clients met the fault until gz was ejected: {seen:?}");

    let judged = verdict(&bed, "too-short");
    let status = &judged["status"];
    assert_eq!(status["phase"], "Failed", "{judged:#}\n{}", log());
    let switchover = crds::duration::parse(status["switchover"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("status.switchover: {e}: {judged:#}"));
    assert!(switchover >= Duration::from_millis(400), "five faults 100ms apart came first: {judged:#}");
    let succeeded = status["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Succeeded");
    let message = succeeded.and_then(|c| c["message"].as_str()).unwrap_or_default();
    // "the switchover took 512ms on proxy proxy-gz, 412ms longer than the promised 100ms"
    let by = crds::duration::parse(
        message
            .split(", ")
            .nth(1)
            .and_then(|rest| rest.strip_suffix(" longer than the promised 100ms"))
            .unwrap_or_else(|| panic!("the Succeeded condition says by how much: {judged:#}")),
    )
    .expect("a duration");
    assert!(message.contains("on proxy proxy-gz"), "{message}");
    let diff = switchover.saturating_sub(Duration::from_millis(100));
    assert!(by.abs_diff(diff) <= Duration::from_millis(1), "{by:?} is the switchover minus the promise: {message}");
    let contract = bed.get_contract("pay").expect("pay");
    assert_eq!(contract["status"]["lastDrill"]["phase"], "Failed", "{contract:#}");
    assert!(contract["status"]["lastPassedDrillTime"].is_null(), "no drill of pay ever passed: {contract:#}");
    // `kubectl get drill` shows it in its columns.
    let table = kubectl(&["get", "drill", "too-short", "-n", &bed.ns.name], None).stdout;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "CONTRACT", "FAULT", "PHASE", "SWITCHOVER", "PROMISED", "AGE"], "{table}");
    assert!(table.contains("Failed") && table.contains("100ms"), "{table}");
    let events = kubectl(
        &["get", "events", "-n", &bed.ns.name, "--field-selector", "involvedObject.name=too-short", "-o", "json"],
        None,
    )
    .stdout;
    assert!(events.contains("DrillFailed") && events.contains("longer than the promised 100ms"), "{events}");
    println!("measured: a 100ms promise failed: switchover {switchover:?}, said: {message}");
}

#[test]
fn a_sustained_sla_breach_triggers_a_drill_by_itself_once_per_cooldown() {
    let mut bed = XdsBed::new("drill-trigger");
    let (operator, prometheus) = operator_with_prometheus(&bed, "drill-trigger-operator", &[19303]);
    let log = log_of(&operator);
    for b in ["gz-1", "sz-1"] {
        bed.start_backend(b);
    }
    bed.service("pay", PORT, &[("gz-1", "gz"), ("sz-1", "sz")]);
    // gz fails every other request: no retries hide it, and it never fails 5 times in a row, so the
    // proxies keep it. Half the requests breach the SLA, for as long as it lasts.
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  retry: {strategy: None}\n  circuitBreaker: {consecutiveErrors: 5, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz]}\n";
    bed.contract(&operator, "pay", spec);
    bed.start_proxy(&operator, ProxySpec::new("proxy-gz", "gz", 2, 19303));
    bed.wait_status("pay", "1/1 acked", Duration::from_secs(60), &log, |c| acked(c, 1));
    bed.settles_on("proxy-gz", "pay", PORT, "gz-1", 5, Duration::from_secs(30));
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractDrill\nmetadata: {{name: on-breach, namespace: {}}}\nspec:\n  contract: pay\n  fault: {{region: gz, abort: {{httpStatus: 503}}}}\n  duration: 10s\n  expect: {{failoverWithin: 5s}}\n  trigger: {{slaBreachRatio: 0.2, for: 1m, cooldown: 1h}}\n",
        bed.ns.name
    );
    kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
    let get = || -> Value {
        serde_json::from_str(&kubectl(&["get", "drill", "on-breach", "-n", &bed.ns.name, "-o", "json"], None).stdout)
            .unwrap_or(Value::Null)
    };
    let triggered = |d: &Value| {
        d["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Triggered").cloned()
    };
    // Healthy traffic first: the trigger waits, and says why.
    let traffic = Traffic::start(&bed, "proxy-gz", "pay", PORT, 1, Duration::from_millis(100));
    let waiting = e2e::wait_until("the trigger to wait", Duration::from_secs(30), || {
        triggered(&get()).filter(|c| c["status"] == "False" && c["reason"] == "WaitingForTrigger")
    });
    assert_eq!(get()["status"]["phase"], "Pending", "{:#}", get());
    let breach_began = Instant::now();
    bed.backend("gz-1").set_mode("flaky 1");
    let running = e2e::wait_until("the trigger to start the drill", Duration::from_secs(150), || {
        let d = get();
        matches!(d["status"]["phase"].as_str(), Some("Running" | "Passed" | "Failed" | "Aborted")).then_some(d)
    });
    let fired_after = breach_began.elapsed();
    let ratio = prometheus.value(&format!(
        "csp:contract_sla_breach:ratio_rate1m{{csp_namespace=\"{}\",csp_contract=\"pay\"}}",
        bed.ns.name
    ));
    assert!(fired_after >= Duration::from_secs(60), "not before the breach lasted `for` (1m): {fired_after:?}");
    let fired = triggered(&running).expect("a Triggered condition");
    assert_eq!(
        (fired["status"].as_str(), fired["reason"].as_str()),
        (Some("True"), Some("SLABreached")),
        "{running:#}"
    );
    assert!(running["status"]["triggeredAt"].is_string(), "{running:#}");
    let judged = verdict(&bed, "on-breach");
    assert_eq!(judged["status"]["phase"], "Passed", "{judged:#}\n{}", log());
    assert_eq!(judged["status"]["runs"], 1, "{judged:#}");
    // Prometheus has the run too (the dashboard's and CSPDrillFailed's series), from the leader.
    let runs = e2e::wait_until("csp_drill_runs_total in Prometheus", Duration::from_secs(20), || {
        prometheus
            .value(&format!(
                "sum(csp_drill_runs_total{{csp_namespace=\"{}\",csp_contract=\"pay\",drill=\"on-breach\",phase=\"Passed\"}})",
                bed.ns.name
            ))
            .filter(|v| *v >= 1.0)
    });
    // The breach goes on (gz is flaky again once the fault is gone), but the cool-down holds the next run.
    let cooling = e2e::wait_until("the cool-down", Duration::from_secs(30), || {
        triggered(&get()).filter(|c| c["reason"] == "CoolingDown")
    });
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(get()["status"]["runs"], 1, "one run per cool-down: {:#}", get());
    drop(traffic);
    println!(
        "measured: breach ratio {ratio:?} (threshold 0.2, for 1m): the trigger started the drill {:.1}s after the breach began; it {} with switchover {}; waiting said {:?}; cooling said {:?}; csp_drill_runs_total{{phase=Passed}} = {runs}",
        fired_after.as_secs_f64(),
        judged["status"]["phase"],
        judged["status"]["switchover"],
        waiting["message"],
        cooling["message"]
    );
}

#[test]
fn prometheus_scraping_the_proxies_during_a_failover_gets_attainment_and_fallback_share_from_the_rules() {
    let mut bed = XdsBed::new("drill-slo");
    let (operator, prometheus) = operator_with_prometheus(&bed, "drill-slo-operator", &[19304]);
    let log = log_of(&operator);
    for b in ["primary-1", "cache-1"] {
        bed.start_backend(b);
    }
    bed.service("pay", PORT, &[("primary-1", "gz")]);
    bed.service("pay-cache", PORT, &[("cache-1", "gz")]);
    // The primary fails over to the cache channel once it fails 3 times in a row.
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  retry: {strategy: None}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 100}\n  channels:\n  - {name: primary}\n  - {name: cache, service: pay-cache, selector: cache}\n";
    bed.contract(&operator, "pay", spec);
    bed.start_proxy(&operator, ProxySpec::new("proxy-gz", "gz", 2, 19304));
    bed.wait_status("pay", "1/1 acked", Duration::from_secs(60), &log, |c| acked(c, 1));
    bed.settles_on("proxy-gz", "pay", PORT, "primary-1", 5, Duration::from_secs(30));
    // rate() counts a counter from its first sample: Prometheus must hold the primary's series, with what
    // the proxy served so far, before the traffic starts, or the requests before its first scrape are lost
    // to the proxies' rule and not to the access logs' (seen once: 79 requests, 0.56 against 0.50).
    let ns = bed.ns.name.clone();
    let served = bed.backend("primary-1").requests() as f64;
    e2e::wait_until("Prometheus to scrape the primary's series", Duration::from_secs(30), || {
        let v = prometheus.value(&format!(
            "sum(envoy_cluster_zone_upstream_rq_completed{{csp_namespace=\"{ns}\",csp_contract=\"pay\",csp_fallback=\"false\"}})"
        ))?;
        (v >= served).then_some(())
    });
    let before = Traffic::start(&bed, "proxy-gz", "pay", PORT, 1, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(15));
    // The failover: three failures reach the client, then the cache channel serves.
    bed.backend("primary-1").set_mode("status 503");
    e2e::wait_until("the cache channel to serve", Duration::from_secs(20), || {
        (before.count(200, "cache-1") > 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(15));
    drop(before);
    // Everything sent must have reached the rules (access logs flushed each second, scraped each second).
    let ns = &ns;
    let seen = {
        let total = bed.backend("primary-1").requests() + bed.backend("cache-1").requests();
        e2e::wait_until("the operator to count every request", Duration::from_secs(20), || {
            let counted: f64 = ["ok", "slow", "failed"]
                .iter()
                .filter_map(|o| {
                    prometheus.value(&format!("sum(csp_contract_requests_total{{csp_namespace=\"{ns}\",csp_contract=\"pay\",csp_outcome=\"{o}\"}})"))
                })
                .sum();
            (counted >= total as f64).then_some(counted)
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let q = |rule: &str| {
        prometheus
            .value(&format!("{rule}{{csp_namespace=\"{ns}\",csp_contract=\"pay\"}}"))
            .unwrap_or_else(|| panic!("{rule} has no value:\n{}", prometheus.log_tail()))
    };
    let attainment = q("csp:contract_sla_attainment:ratio_rate5m");
    let fallback = q("csp:contract_fallback_share:ratio_rate5m");
    let proxy_fallback = q("csp:proxy_fallback_share:ratio_rate5m");
    let failovers = prometheus.value(&format!(
        "sum(csp:contract_failovers:increase5m{{csp_namespace=\"{ns}\",csp_contract=\"pay\",csp_channel=\"primary\"}})"
    ));
    // What the clients saw, from the raw counters: the expected values of the rules.
    let raw = |sel: &str| {
        prometheus
            .value(&format!("sum(csp_contract_requests_total{{csp_namespace=\"{ns}\",csp_contract=\"pay\"{sel}}})"))
            .unwrap_or(0.0)
    };
    let all = raw("");
    let expected_attainment = raw(",csp_outcome=\"ok\"") / all;
    let expected_fallback = raw(",csp_fallback=\"true\"") / all;
    assert!(
        all >= 300.0 && expected_fallback > 0.2 && expected_fallback < 0.8,
        "traffic on both channels: {all} requests, {expected_fallback} on the fallback"
    );
    // rate() over a 5m window extrapolates the series that begin inside it; a few percent.
    assert!((attainment - expected_attainment).abs() < 0.05, "attainment {attainment} vs {expected_attainment}");
    assert!((fallback - expected_fallback).abs() < 0.05, "fallback share {fallback} vs {expected_fallback}");
    assert!(
        (proxy_fallback - expected_fallback).abs() < 0.05,
        "the proxies' own fallback share {proxy_fallback} vs {expected_fallback}"
    );
    assert!(failovers.is_some_and(|f| f >= 0.9), "the primary endpoint's ejection: {failovers:?}");
    println!(
        "measured: {seen} requests; attainment {attainment:.4} (counted {expected_attainment:.4}), fallback share {fallback:.4} (counted {expected_fallback:.4}), the proxies' fallback share {proxy_fallback:.4}, failovers {failovers:?}"
    );
}

#[test]
fn every_request_is_a_span_at_a_real_collector_with_the_channel_fallback_and_sla_breach() {
    let operator = xds_operator();
    let log = log_of(operator);
    let mut bed = XdsBed::new("drill-traces");
    let host: std::net::IpAddr = bed.host_address().parse().expect("an address");
    let collector = Collector::start(&bed.dir, std::net::SocketAddr::new(host, e2e::free_port()));
    for b in ["primary-1", "cache-1"] {
        bed.start_backend(b);
    }
    bed.service("pay", PORT, &[("primary-1", "gz")]);
    bed.service("pay-cache", PORT, &[("cache-1", "gz")]);
    // Three errors in a row eject the primary's endpoint; the cache channel then serves.
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 300ms}\n  retry: {strategy: None}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 300s, maxEjectionPercent: 100}\n  channels:\n  - {name: primary}\n  - {name: cache, service: pay-cache, selector: cache}\n";
    bed.contract(operator, "pay", spec);
    let mut proxy = ProxySpec::new("proxy-gz", "gz", 2, 19305);
    proxy.otlp = Some((collector.otlp, 100.0));
    bed.start_proxy(operator, proxy);
    bed.wait_status("pay", "1/1 acked", Duration::from_secs(60), &log, |c| acked(c, 1));
    bed.settles_on("proxy-gz", "pay", PORT, "primary-1", 5, Duration::from_secs(30));
    let mut sent = 0;
    let mut send = |n: usize| -> Vec<e2e::testbed::Reply> {
        sent += n;
        bed.get_many("proxy-gz", "pay", PORT, n, &[])
    };
    // Served by the primary within the SLA.
    let ok = send(5);
    assert!(ok.iter().all(|r| r.status == 200 && r.backend == "primary-1"), "{ok:?}");
    // Two timeouts (the primary answers after 1s; the SLA is 300ms): not three, so it stays in.
    bed.backend("primary-1").set_mode("slow 1s");
    let slow = send(2);
    assert!(slow.iter().all(|r| r.status == 504), "{slow:?}");
    bed.backend("primary-1").set_mode("ok");
    assert!(send(1).iter().all(|r| r.status == 200 && r.backend == "primary-1"));
    // The failover: three failures, then the cache channel.
    bed.backend("primary-1").set_mode("status 503");
    let failing = send(3);
    assert!(failing.iter().all(|r| r.status == 503), "{failing:?}");
    let degraded = send(5);
    assert!(degraded.iter().all(|r| r.status == 200 && r.backend == "cache-1"), "{degraded:?}");

    // One span per request (100% sampled) since the settling requests, at the collector.
    let contract = format!("{}/pay", bed.ns.name);
    let ours = |spans: Vec<Span>| -> Vec<Span> {
        let mut ours: Vec<Span> =
            spans.into_iter().filter(|s| s.attributes.get("csp.contract") == Some(&contract)).collect();
        ours.sort_by_key(|s| s.start_ns);
        ours
    };
    let spans = e2e::wait_until("the spans at the collector", Duration::from_secs(30), || {
        let spans = ours(collector.spans());
        (spans.len() >= 5 + sent).then_some(spans)
    });
    let last: Vec<&Span> = spans.iter().rev().take(sent).collect::<Vec<_>>().into_iter().rev().collect();
    let attrs = |s: &Span| {
        ["csp.channel", "csp.region", "csp.fallback.used", "csp.sla.breached"]
            .map(|k| s.attributes.get(k).cloned().unwrap_or_default())
    };
    let seen: Vec<[String; 4]> = last.iter().map(|s| attrs(s)).collect();
    let expect = |channel: &str, fallback: &str, breached: &str| {
        [channel.to_owned(), "gz".to_owned(), fallback.to_owned(), breached.to_owned()]
    };
    let ok_span = expect("primary", "false", "false");
    let mut expected = vec![ok_span.clone(); 5];
    expected.extend(vec![expect("primary", "false", "true"); 2]);
    expected.push(ok_span.clone());
    expected.extend(vec![expect("primary", "false", "false"); 3]);
    expected.extend(vec![expect("cache", "cache", "false"); 5]);
    assert_eq!(seen, expected, "span attributes in request order:\n{spans:#?}");
    let timed_out = last[5];
    // About the SLA: Envoy's timers run on a cached clock, so a timeout may measure a few ms short.
    assert!(timed_out.duration_ns >= 290_000_000, "a timed-out span lasts the SLA: {timed_out:?}");
    println!(
        "measured: {} spans at the collector for {sent} requests; attributes (channel, region, fallback.used, sla.breached) in order: {seen:?}",
        last.len()
    );
}

#[test]
fn a_drill_refuses_to_start_when_the_other_regions_are_not_ready_and_never_pushes_its_fault() {
    let operator = xds_operator();
    let log = log_of(operator);
    let mut bed = XdsBed::new("drill-refused");
    bed.start_backend("gz-1");
    // The contract fails over gz -> sz, but sz has no endpoint: an outage of gz would leave nowhere to go.
    bed.service("pay", PORT, &[("gz-1", "gz")]);
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  failover: {regions: [gz, sz]}\n";
    bed.contract(operator, "pay", spec);
    bed.start_proxy(operator, ProxySpec::new("proxy-gz", "gz", 2, 19306));
    let c = bed.wait_status("pay", "1/1 acked", Duration::from_secs(60), &log, |c| acked(c, 1));
    let plain = version(&c);
    drill(&bed, "gz-outage", "30s");
    let judged = verdict(&bed, "gz-outage");
    let status = &judged["status"];
    assert_eq!(status["phase"], "Aborted", "{judged:#}");
    let succeeded = status["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Succeeded");
    let (reason, message) = succeeded
        .map_or(("", ""), |c| (c["reason"].as_str().unwrap_or_default(), c["message"].as_str().unwrap_or_default()));
    assert_eq!(reason, "RegionsNotReady", "{judged:#}");
    assert!(message.contains("[sz]") && message.contains("no ready endpoints"), "{message}");
    // The proxies never saw the fault, and the traffic never moved.
    std::thread::sleep(Duration::from_secs(2));
    let contract = bed.get_contract("pay").expect("pay");
    assert_eq!(version(&contract), plain, "{contract:#}");
    let replies = bed.get_many("proxy-gz", "pay", PORT, 10, &[]);
    assert!(replies.iter().all(|r| r.status == 200 && r.backend == "gz-1"), "{replies:?}");
    println!("measured: refused: {message}");
}
