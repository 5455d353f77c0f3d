//! A gateway fleet fed over xDS: real Envoys, one per region (gz, sz, hz), take every contract over ADS
//! (TLS) from the operator; each proxy sends traffic to its own region first, then in the declared order;
//! an edit reaches every proxy without a restart and status counts their ACKs; a contract one proxy
//! rejects is `ProxyRejected` with Envoy's own message while the others keep flowing.

use std::time::{Duration, Instant};

use e2e::kubectl;
use e2e::xds::{ProxySpec, XdsBed, XdsOperator, xds_operator};
use serde_json::Value;

const PORT: u16 = 18080;

fn acked(c: &Value, n: i64) -> bool {
    let p = &c["status"]["proxies"];
    p["selected"] == n && p["acked"] == n
}

fn log_of(operator: &XdsOperator) -> impl Fn() -> String + '_ {
    move || format!("--- operator log ---\n{}", operator.log_tail())
}

fn regional_fleet(bed: &mut XdsBed, operator: &XdsOperator) {
    // gz and sz give their region in the bootstrap; hz gives none: the operator reads its Pod's Node.
    bed.start_proxy(operator, ProxySpec::new("proxy-gz", "gz", 2, 19101));
    bed.start_proxy(operator, ProxySpec::new("proxy-sz", "sz", 3, 19102));
    let mut hz = ProxySpec::new("proxy-hz", "hz", 4, 19103);
    hz.region = None;
    hz.pod_region = Some("hz".to_owned());
    bed.start_proxy(operator, hz);
}

#[test]
fn each_proxy_sends_traffic_to_its_own_region_first_and_an_edit_reaches_all_without_a_restart() {
    let operator = xds_operator();
    let mut bed = XdsBed::new("xds-regions");
    for b in ["gz-1", "sz-1", "hz-1", "cache-1"] {
        bed.start_backend(b);
    }
    bed.service("pay", PORT, &[("gz-1", "gz"), ("sz-1", "sz"), ("hz-1", "hz")]);
    bed.service("pay-cache", PORT, &[("cache-1", "gz")]);
    let spec = "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n  retry:\n    maxRetries: 3\n    backoff: {baseInterval: 10ms, maxInterval: 50ms}\n  circuitBreaker: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n  failover: {regions: [gz, sz, hz]}\n";
    bed.contract(operator, "pay", spec);
    regional_fleet(&mut bed, operator);

    let c = bed.wait_status("pay", "3/3 proxies acked", Duration::from_secs(60), &log_of(operator), |c| acked(c, 3));
    let version = c["status"]["configVersion"].as_str().expect("a configVersion").to_owned();
    assert_eq!(c["status"]["proxies"]["summary"], "3/3 acked");
    let ready = c["status"]["conditions"].as_array().and_then(|a| a.iter().find(|c| c["type"] == "Ready")).cloned();
    assert_eq!(ready.as_ref().map(|r| r["status"].clone()), Some(Value::from("True")), "{c:#}");

    // (a) Each proxy's own region first.
    for (proxy, backend) in [("proxy-gz", "gz-1"), ("proxy-sz", "sz-1"), ("proxy-hz", "hz-1")] {
        bed.settles_on(proxy, "pay", PORT, backend, 10, Duration::from_secs(30));
    }
    // Then the declared order: for hz, its own region, then gz, then sz.
    bed.backend("hz-1").set_mode("status 503");
    bed.settles_on("proxy-hz", "pay", PORT, "gz-1", 10, Duration::from_secs(30));
    bed.backend("gz-1").set_mode("status 503");
    bed.settles_on("proxy-hz", "pay", PORT, "sz-1", 10, Duration::from_secs(30));
    bed.settles_on("proxy-gz", "pay", PORT, "sz-1", 10, Duration::from_secs(30));
    for b in ["gz-1", "hz-1"] {
        bed.backend(b).set_mode("ok");
    }

    // (b) An edit (a cache channel reached by header) reaches all three, ACKed at the new version, and
    // changes their behaviour, with no restart.
    let uptimes: Vec<u64> = bed.proxies.iter().map(|p| p.uptime().expect("Envoy's uptime")).collect();
    let edited = Instant::now();
    bed.contract(
        operator,
        "pay",
        &format!(
            "{spec}  channels:\n  - {{name: primary}}\n  - {{name: cache, service: pay-cache, selector: cache}}\n"
        ),
    );
    let c = bed.wait_status("pay", "3/3 acked at a new version", Duration::from_secs(30), &log_of(operator), |c| {
        acked(c, 3) && c["status"]["configVersion"] != version.as_str()
    });
    let acked_after = edited.elapsed();
    for proxy in ["proxy-gz", "proxy-sz", "proxy-hz"] {
        let replies = bed.get_many(proxy, "pay", PORT, 5, &[("x-channel-priority", "cache")]);
        assert!(replies.iter().all(|r| r.status == 200 && r.backend == "cache-1"), "{proxy}: {replies:?}");
    }
    for (p, before) in bed.proxies.iter().zip(uptimes) {
        assert!(p.uptime().expect("uptime") >= before, "{} restarted", p.spec.name);
    }
    let new_version = c["status"]["configVersion"].as_str().unwrap_or_default();
    for p in &bed.proxies {
        let clusters = p.cluster_versions();
        let cache = clusters.iter().find(|(name, _)| name.ends_with("~pay~cache"));
        assert_eq!(cache.map(|(_, v)| v.as_str()), Some(new_version), "{}: {clusters:?}", p.spec.name);
    }
    let pushes = operator.metric("csp_xds_push_duration_seconds_count").unwrap_or(0.0);
    assert!(pushes >= 1.0, "no push was measured:\n{}", operator.metrics());
    let connected = operator.metric("csp_xds_connected_proxies").unwrap_or(0.0);
    assert!(connected >= 3.0, "3 proxies of this test are connected, the metric says {connected}");
    println!("measured: edit -> 3/3 proxies acked in status after {:.2}s", acked_after.as_secs_f64());
    let table = kubectl(&["get", "chc", "-n", &bed.ns.name], None).ok();
    assert!(table.contains("3/3 acked"), "kubectl get shows the proxies: {table}");
}
