//! ContractDrills against real Envoys fed over xDS by the operator: the drill's fault goes into the
//! proxies (an outage of a region as the proxies see it), the data plane's own failover moves the traffic,
//! and the fault leaves with the drill's duration or with the drill.

use std::time::{Duration, Instant};

use e2e::kubectl;
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
    let yaml = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractDrill\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  contract: pay\n  fault: {{region: gz, abort: {{httpStatus: 503, percent: 100}}}}\n  duration: {duration}\n  expect: {{failoverWithin: 5s}}\n",
        ns = bed.ns.name
    );
    kubectl(&["apply", "-f", "-"], Some(&yaml)).ok();
}

#[test]
fn a_drills_fault_fails_a_region_over_and_leaves_with_its_duration_or_its_drill() {
    let operator = xds_operator();
    let log = log_of(operator);
    let mut bed = XdsBed::new("drill-fault");
    for b in ["gz-1", "sz-1"] {
        bed.start_backend(b);
    }
    bed.service("pay", PORT, &[("gz-1", "gz"), ("sz-1", "sz")]);
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  retry:\n    maxRetries: 3\n    backoff: {baseInterval: 10ms, maxInterval: 50ms}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz]}\n";
    bed.contract(operator, "pay", spec);
    bed.start_proxy(operator, ProxySpec::new("proxy-gz", "gz", 2, 19301));
    let c = bed.wait_status("pay", "1/1 acked", Duration::from_secs(60), &log, |c| acked(c, 1));
    let plain = version(&c);
    bed.settles_on("proxy-gz", "pay", PORT, "gz-1", 10, Duration::from_secs(30));
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
    let judged = e2e::wait_until("the drill's verdict", Duration::from_secs(30), || {
        let d = kubectl(&["get", "drill", "gz-outage", "-n", &bed.ns.name, "-o", "json"], None);
        let d: Value = serde_json::from_str(&d.stdout).ok()?;
        matches!(d["status"]["phase"].as_str(), Some("Passed" | "Failed" | "Aborted")).then_some(d)
    });
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
