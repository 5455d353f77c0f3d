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
    // sz speaks state-of-the-world ADS, the others delta.
    let mut sz = ProxySpec::new("proxy-sz", "sz", 3, 19102);
    sz.sotw = true;
    bed.start_proxy(operator, sz);
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
        if p.spec.sotw {
            // State of the world versions whole responses, not resources.
            assert!(cache.is_some(), "{}: {clusters:?}", p.spec.name);
        } else {
            assert_eq!(cache.map(|(_, v)| v.as_str()), Some(new_version), "{}: {clusters:?}", p.spec.name);
        }
    }
    let pushes = operator.metric("csp_xds_push_duration_seconds_count").unwrap_or(0.0);
    assert!(pushes >= 1.0, "no push was measured:\n{}", operator.metrics());
    let connected = operator.metric("csp_xds_connected_proxies").unwrap_or(0.0);
    assert!(connected >= 3.0, "3 proxies of this test are connected, the metric says {connected}");
    println!("measured: edit -> 3/3 proxies acked in status after {:.2}s", acked_after.as_secs_f64());
    let table = kubectl(&["get", "chc", "-n", &bed.ns.name], None).ok();
    assert!(table.contains("3/3 acked"), "kubectl get shows the proxies: {table}");
}

fn condition(c: &Value, type_: &str) -> Value {
    c["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_default()
}

/// An Envoy without the upstream HTTP protocol options extension (a locked-down or older build) cannot
/// take a contract with `protocol: GRPC` (upstream HTTP/2).
/// A proxy without Envoy's STRICT_DNS cluster: it rejects a contract with a channel behind an
/// `ExternalName` Service (a DNS name), and takes every other contract.
const LOCKED_DOWN: &str = "envoy.clusters/envoy.cluster.strict_dns";

#[test]
fn a_contract_a_proxy_rejects_is_proxy_rejected_with_envoys_message_and_the_others_keep_flowing() {
    let operator = xds_operator();
    let mut bed = XdsBed::new("xds-nack");
    for b in ["a-1", "b-1"] {
        bed.start_backend(b);
    }
    bed.service("svc-a", PORT, &[("a-1", "gz")]);
    bed.service("svc-b", PORT, &[("b-1", "gz")]);
    let a_spec = "  service: svc-a\n  port: 18080\n  sla: {maxLatency: 3s}\n";
    bed.contract(operator, "a", a_spec);
    bed.contract(operator, "b", "  service: svc-b\n  port: 18080\n  sla: {maxLatency: 3s}\n");
    bed.start_proxy(operator, ProxySpec::new("proxy-new", "gz", 2, 19201));
    let mut old = ProxySpec::new("proxy-old", "gz", 3, 19202);
    old.envoy_args = vec!["--disable-extensions".to_owned(), LOCKED_DOWN.to_owned()];
    bed.start_proxy(operator, old);
    let log = log_of(operator);
    let a = bed.wait_status("a", "2/2 acked", Duration::from_secs(60), &log, |c| acked(c, 2));
    bed.wait_status("b", "2/2 acked", Duration::from_secs(30), &log, |c| acked(c, 2));
    let accepted = a["status"]["configVersion"].as_str().expect("a configVersion").to_owned();
    for proxy in ["proxy-new", "proxy-old"] {
        bed.settles_on(proxy, "svc-a", PORT, "a-1", 3, Duration::from_secs(30));
    }

    // A real NACK: the locked-down proxy refuses the clusters of a's version with a DNS channel.
    let external = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ext, namespace: {}}}\nspec: {{type: ExternalName, externalName: backend.invalid, ports: [{{port: {PORT}}}]}}\n",
        bed.ns.name
    );
    kubectl(&["apply", "-f", "-"], Some(&external)).ok();
    bed.contract(operator, "a", &format!("{a_spec}  channels: [{{name: primary}}, {{name: ext, service: ext}}]\n"));
    let a = bed.wait_status("a", "ProxyRejected", Duration::from_secs(30), &log, |c| {
        condition(c, "Programmed")["reason"] == "ProxyRejected"
    });
    let programmed = condition(&a, "Programmed");
    let message = programmed["message"].as_str().unwrap_or_default();
    assert!(message.contains("proxy-old"), "the message names the proxy: {message}");
    assert!(
        message.contains("Didn't find a registered") && message.contains("envoy.cluster.strict_dns"),
        "the message is Envoy's own: {message}"
    );
    assert!(message.contains(&accepted), "the message says which version proxies are served: {message}");
    let rejection = &a["status"]["proxies"]["lastRejection"];
    assert_eq!(rejection["proxy"], "proxy-old", "{a:#}");
    assert!(rejection["message"].as_str().unwrap_or_default().contains("strict_dns"), "{a:#}");
    assert_eq!(a["status"]["configVersion"], accepted.as_str(), "status says what proxies run: {a:#}");
    assert_eq!(condition(&a, "Ready")["status"], "False");
    let nacks = operator.metric(&format!("csp_xds_nacks_total{{contract=\"{}/a\"}}", bed.ns.name)).unwrap_or(0.0);
    assert!(nacks >= 1.0, "the NACK is counted:\n{}", operator.metrics());

    // The other contract stays ACKed and serving on the same proxy; a keeps serving its last accepted
    // version everywhere.
    let b = bed.get_contract("b").expect("b");
    assert!(acked(&b, 2) && condition(&b, "Programmed")["status"] == "True", "{b:#}");
    for proxy in ["proxy-new", "proxy-old"] {
        bed.settles_on(proxy, "svc-b", PORT, "b-1", 3, Duration::from_secs(10));
        bed.settles_on(proxy, "svc-a", PORT, "a-1", 3, Duration::from_secs(30));
    }

    // A restarted proxy gets a's last accepted version, never the rejected one.
    bed.proxy("proxy-old").restart();
    bed.settles_on("proxy-old", "svc-a", PORT, "a-1", 3, Duration::from_secs(30));
    bed.settles_on("proxy-old", "svc-b", PORT, "b-1", 3, Duration::from_secs(10));
    let clusters = bed.proxy("proxy-old").cluster_versions();
    let a_clusters: Vec<&(String, String)> =
        clusters.iter().filter(|(n, _)| n.starts_with(&format!("csp~{}~a", bed.ns.name))).collect();
    assert!(!a_clusters.is_empty() && a_clusters.iter().all(|(_, v)| *v == accepted), "{clusters:?}");
    let log = bed.proxies[1].process.log_tail();
    assert!(!log.contains("config rejected"), "the restarted proxy was never offered the rejected version:\n{log}");

    // Fixing the contract (no DNS channel) programs it again.
    bed.contract(operator, "a", &format!("{a_spec}  protocol: HTTP\n"));
    bed.wait_status("a", "programmed and 2/2 acked again", Duration::from_secs(30), &log_of(operator), |c| {
        condition(c, "Programmed")["status"] == "True" && acked(c, 2)
    });
}

#[test]
fn two_replicas_serve_proxies_status_counts_both_and_losing_the_leader_loses_no_request() {
    use e2e::rbac;
    let id = e2e::unique("xds-replicas");
    let leader_args = [
        "--leader-elect".to_owned(),
        "--leader-election-namespace".to_owned(),
        rbac::NAMESPACE.to_owned(),
        "--leader-election-lease".to_owned(),
        rbac::operator_lease(),
    ];
    let mut first = XdsOperator::start("xds-replica-1", &id, &leader_args);
    let second = XdsOperator::start("xds-replica-2", &id, &leader_args);
    let both_logs = || format!("--- replica 1 ---\n{}\n--- replica 2 ---\n{}", first.log_tail(), second.log_tail());
    let mut bed = XdsBed::new("xds-replicas");
    bed.start_backend("gz-1");
    bed.service("pay", PORT, &[("gz-1", "gz")]);
    bed.contract(&first, "pay", "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n");
    // (e) One proxy on each replica: the leader's status counts both.
    bed.start_proxy(&first, ProxySpec::new("proxy-1", "gz", 2, 19301));
    bed.start_proxy(&second, ProxySpec::new("proxy-2", "gz", 3, 19302));
    let c = bed.wait_status("pay", "2/2 acked over two replicas", Duration::from_secs(60), &both_logs, |c| acked(c, 2));
    let version = c["status"]["configVersion"].as_str().unwrap_or_default().to_owned();
    for proxy in ["proxy-1", "proxy-2"] {
        bed.settles_on(proxy, "pay", PORT, "gz-1", 3, Duration::from_secs(30));
    }
    assert_eq!(first.metric("csp_xds_connected_proxies"), Some(1.0));
    assert_eq!(second.metric("csp_xds_connected_proxies"), Some(1.0));

    // (d) The first replica (the leader: it started first) stops and starts again: the second takes the
    // Lease. Traffic through both proxies loses no request meanwhile.
    assert_eq!(first.metric("csp_operator_leader"), Some(1.0), "the first replica leads");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (replies, down) = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut replies = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                replies.extend(bed.get_many("proxy-1", "pay", PORT, 10, &[]));
                replies.extend(bed.get_many("proxy-2", "pay", PORT, 10, &[]));
            }
            replies
        });
        std::thread::sleep(Duration::from_millis(500));
        let down = first.restart();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (traffic.join().expect("the traffic thread"), down)
    });
    let failed: Vec<_> = replies.iter().filter(|r| r.status != 200 || r.backend != "gz-1").collect();
    assert!(replies.len() >= 40, "too little traffic to judge: {}", replies.len());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while the leader restarted: {failed:?}",
        failed.len(),
        replies.len()
    );

    // Status catches up under the new leader: an edit is ACKed by both proxies, on both replicas.
    // (Either replica may hold the Lease now: the restarted one races the other for it.)
    e2e::wait_until("a replica to lead", Duration::from_secs(30), || {
        let leaders =
            first.metric("csp_operator_leader").unwrap_or(0.0) + second.metric("csp_operator_leader").unwrap_or(0.0);
        (leaders == 1.0).then_some(())
    });
    bed.contract(&first, "pay", "  service: pay\n  port: 18080\n  sla: {maxLatency: 2s}\n");
    let both_logs = || format!("--- replica 1 ---\n{}\n--- replica 2 ---\n{}", first.log_tail(), second.log_tail());
    bed.wait_status("pay", "2/2 acked at the edited version", Duration::from_secs(60), &both_logs, |c| {
        acked(c, 2) && c["status"]["configVersion"] != version.as_str()
    });
    println!(
        "measured: {} requests through two proxies, none failed, while the leader was down for {:.2}s",
        replies.len(),
        down.as_secs_f64()
    );
}

#[test]
fn a_renewed_xds_certificate_is_served_without_restarting_the_operator() {
    let dir = e2e::run_dir("xds-renewal-certs");
    let certs = e2e::xds::write_certs(&dir);
    let operator = XdsOperator::start_with("xds-renewal-operator", &e2e::unique("xds-renewal"), &[], &certs);
    let mut bed = XdsBed::new("xds-renewal");
    bed.start_backend("gz-1");
    bed.service("pay", PORT, &[("gz-1", "gz")]);
    bed.contract(&operator, "pay", "  service: pay\n  port: 18080\n  sla: {maxLatency: 3s}\n");
    bed.start_proxy(&operator, ProxySpec::new("proxy-before", "gz", 2, 19401));
    bed.wait_status("pay", "1/1 acked", Duration::from_secs(60), &log_of(&operator), |c| acked(c, 1));

    // The Secret is renewed (here: a new CA, so that only the new pair can pass): the files change.
    let renewed = e2e::xds::write_certs(&e2e::run_dir("xds-renewal-new"));
    std::fs::copy(&renewed.cert, &certs.cert).expect("replace tls.crt");
    std::fs::copy(&renewed.key, &certs.key).expect("replace tls.key");
    std::fs::copy(&renewed.ca, &certs.ca).expect("replace ca.crt");
    e2e::wait_until("the operator to reload its certificate", Duration::from_secs(30), || {
        operator.log_tail().contains("xDS serving certificate reloaded").then_some(())
    });
    // A proxy that trusts only the new CA connects; the one connected before keeps its stream.
    bed.start_proxy(&operator, ProxySpec::new("proxy-after", "gz", 3, 19402));
    bed.wait_status("pay", "2/2 acked", Duration::from_secs(60), &log_of(&operator), |c| acked(c, 2));
    for proxy in ["proxy-before", "proxy-after"] {
        bed.settles_on(proxy, "pay", PORT, "gz-1", 3, Duration::from_secs(30));
    }
}
