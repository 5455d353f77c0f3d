//! Chaos (issue 15): the control plane and the product's own processes killed under load, each on a
//! control plane of its own, with what must hold asserted and the counts printed (`chaos <scenario>:
//! {json}`; `make chaos` collects them into `bench/results/`). Short by default (CI); `CSP_CHAOS=long`
//! (`make chaos`): 1,000 contracts, longer loads, repeated kills.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::chaos::{self, ConfigMapWatch, Operator, ProxyBed, Scale, Stage, StopOnDrop, Webhook, record, secs};
use e2e::fleet::ControlPlane;
use e2e::testbed::Reply;
use e2e::{rbac, wait_until};
use serde_json::{Value, json};

const PORT: u16 = 18080;

/// The replies that were not a 200 from the expected backend, described.
fn failed(seen: &[(Instant, bool, Reply)]) -> Vec<String> {
    seen.iter().filter(|(_, ok, _)| !ok).map(|(_, _, r)| format!("{} from [{}]", r.status, r.backend)).collect()
}

/// Contracts of `namespace` programmed for their current generation with `sla.maxLatency` `latency`.
fn programmed_with(cp: &ControlPlane, namespace: &str, latency: &str) -> Option<usize> {
    let r = cp.kubectl(&["get", "chc", "-n", namespace, "-o", "json", "--request-timeout", "20s"], None);
    let list: Value = serde_json::from_str(&r.stdout).ok()?;
    let items = list["items"].as_array()?;
    Some(items.iter().filter(|c| c["spec"]["sla"]["maxLatency"] == latency && chaos::is_programmed(c)).count())
}

#[test]
fn killing_the_api_server_then_etcd_while_contracts_reconcile_empties_nothing_and_proxies_keep_serving() {
    let scale = Scale::from_env();
    let n = scale.contracts;
    let stage = Stage::start("chaos-kill");
    let (cp, dir) = (&stage.cp, &stage.dir);
    let certs = e2e::xds::write_certs(dir);
    let kubeconfig = stage.service_account(&rbac::operator_service_account());
    let mut bed = ProxyBed::new(cp, "shop", dir);
    bed.backend("pay-1");
    for s in ["pay-a", "pay-b"] {
        bed.service(s, PORT, &["pay-1"]);
        bed.contract(s, PORT, "3s");
    }
    let operator = Operator::start(&kubeconfig, dir, "operator", "configmap,xds", Some(&certs), &[]);
    let proxies = [bed.proxy(&operator, &certs.ca, "proxy-1", 2), bed.proxy(&operator, &certs.ca, "proxy-2", 3)];
    for p in proxies {
        for s in ["pay-a", "pay-b"] {
            bed.settle(p, s, PORT, "pay-1");
        }
    }
    let baseline: Vec<usize> = proxies.iter().map(|p| bed.clusters(*p).expect("the proxy's clusters")).collect();
    let watch = ConfigMapWatch::start(&cp.kubeconfig());
    wait_until("the watch to list the proxied contracts' ConfigMaps", Duration::from_secs(30), || {
        (watch.report().seen.len() >= 2).then_some(())
    });

    let bulk = "bulk";
    cp.namespace(bulk, &[]);
    cp.kubectl(&["create", "-f", "-"], Some(&chaos::bulk(bulk, "svc", n, true, false, "1s"))).ok();
    // Each round changes every contract (a new maxLatency), so that all of them reconcile while the API
    // server, then etcd, die.
    let latencies: Vec<String> = (1..=scale.rounds).map(|r| format!("{r}s")).collect();
    let manifests: Vec<String> = latencies.iter().map(|l| chaos::bulk(bulk, "svc", n, false, true, l)).collect();
    let stop = AtomicBool::new(false);
    let targets = [(proxies[0], "pay-a", PORT, "pay-1"), (proxies[1], "pay-b", PORT, "pay-1")];
    let mut programmed_at_kill = Vec::new();
    let (mut api_down, mut etcd_down) = (Vec::new(), Vec::new());
    let (replies, xds, to_programmed) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let traffic = s.spawn(|| bed.traffic(&targets, &stop));
        let xds = s.spawn(|| {
            let (mut polls, mut unanswered, mut shrunk) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for (i, p) in proxies.iter().enumerate() {
                    match bed.clusters(*p) {
                        None => unanswered += 1,
                        Some(c) if c < baseline[i] => {
                            shrunk.push(format!("proxy {p}: {c} clusters of {}", baseline[i]))
                        }
                        Some(_) => polls += 1,
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            (polls, unanswered, shrunk)
        });
        for (latency, manifest) in latencies.iter().zip(&manifests) {
            let apply =
                || cp.kubectl(&["apply", "--server-side", "-f", "-", "--request-timeout", "30s"], Some(manifest));
            let applying = s.spawn(apply);
            let at_kill = wait_until("a quarter of the contracts to be programmed", Duration::from_secs(300), || {
                programmed_with(cp, bulk, latency).filter(|d| *d >= n / 4)
            });
            programmed_at_kill.push(at_kill);
            chaos::kill(cp, "kube-apiserver");
            let killed = Instant::now();
            std::thread::sleep(scale.down);
            chaos::restart(cp, "kube-apiserver");
            api_down.push(secs(killed.elapsed()));
            // The apply that the kill cut short, finished.
            let _ = applying.join();
            apply().ok();
            chaos::kill(cp, "etcd");
            let killed = Instant::now();
            std::thread::sleep(scale.down);
            chaos::restart(cp, "etcd");
            etcd_down.push(secs(killed.elapsed()));
        }
        let restarted = Instant::now();
        let last = latencies.last().expect("a round");
        wait_until(&format!("all {n} contracts to be programmed after the restarts"), Duration::from_secs(600), || {
            programmed_with(cp, bulk, last).filter(|d| *d == n)
        });
        let to_programmed = restarted.elapsed();
        stop.store(true, Ordering::Relaxed);
        (traffic.join().expect("traffic"), xds.join().expect("xDS polls"), to_programmed)
    });
    // The watch follows the restarts with back-off (up to seconds after the API server returns): it must
    // see every ConfigMap, and none of them emptied, before it stops.
    wait_until("the ConfigMap watch to catch up after the restarts", Duration::from_secs(90), || {
        (watch.report().seen.len() > n).then_some(())
    });
    let report = watch.stop();
    let failures = failed(&replies);
    let (xds_polls, xds_unanswered, xds_shrunk) = xds;
    // Every contract's ConfigMap is there, with its files.
    let configmaps =
        cp.kubectl(&["get", "cm", "-n", bulk, "-l", "app.kubernetes.io/managed-by", "-o", "json"], None).ok();
    let configmaps: Value = serde_json::from_str(&configmaps).expect("json");
    let complete = configmaps["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|cm| {
                    ["cds.yaml", "lds.yaml", "rds.yaml"]
                        .iter()
                        .all(|k| cm["data"][k].as_str().is_some_and(|v| !v.is_empty()))
                })
                .count()
        })
        .unwrap_or(0);
    record(
        "apiserver-etcd-kill",
        &scale,
        json!({
            "contracts": n,
            "proxied_contracts": 2,
            "rounds": scale.rounds,
            "apiserver_kills": api_down.len(),
            "etcd_kills": etcd_down.len(),
            "programmed_at_apiserver_kill": programmed_at_kill,
            "apiserver_down_s": api_down,
            "etcd_down_s": etcd_down,
            "all_programmed_after_last_restart_s": secs(to_programmed),
            "configmaps_complete": complete,
            "configmaps_seen_by_watch": report.seen.len(),
            "configmap_emptied_or_lost": report.violations.len(),
            "watch_lists": report.lists,
            "watch_errors": report.errors,
            "requests": replies.len(),
            "requests_failed": failures.len(),
            "xds_cluster_polls": xds_polls,
            "xds_polls_unanswered": xds_unanswered,
            "xds_polls_with_fewer_clusters": xds_shrunk.len(),
        }),
    );
    assert!(report.violations.is_empty(), "ConfigMaps emptied or lost: {:?}", report.violations);
    assert_eq!(complete, n, "every contract's ConfigMap, with its files");
    assert!(report.seen.len() > n, "the watch saw {} ConfigMaps", report.seen.len());
    assert!(failures.is_empty(), "{} of {} requests failed: {failures:?}", failures.len(), replies.len());
    assert!(replies.len() >= 40, "too little traffic to judge: {}", replies.len());
    assert!(xds_shrunk.is_empty(), "a proxy lost clusters: {xds_shrunk:?}");
    drop(operator);
}

/// How `kubectl create` ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Admitted,
    /// Refused by the webhook's policy.
    Denied,
    /// Refused because the webhook could not be called (failurePolicy Fail).
    Unavailable,
    Other(String),
}

fn create(cp: &ControlPlane, yaml: &str) -> Outcome {
    let r = cp.kubectl(&["create", "-f", "-", "--request-timeout", "30s"], Some(yaml));
    if r.success {
        Outcome::Admitted
    } else if r.stderr.contains("failed calling webhook") {
        Outcome::Unavailable
    } else if r.stderr.contains("denied the request") {
        Outcome::Denied
    } else {
        Outcome::Other(r.stderr.trim().to_owned())
    }
}

fn service(namespace: &str, name: &str, regions: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  annotations: {{csp.contracts.dev/failover-regions: \"{regions}\"}}\nspec:\n  ports: [{{port: 8080}}]\n  clusterIP: None\n"
    )
}

#[test]
fn killing_the_webhook_during_a_create_load_admits_nothing_non_compliant_and_leaves_kube_system_alone() {
    let scale = Scale::from_env();
    let stage = Stage::start("chaos-webhook");
    let (cp, dir) = (&stage.cp, &stage.dir);
    let mut webhook = Webhook::start(&stage.service_account(&rbac::webhook_service_account()), dir);
    // The chart's own registration: failurePolicy Fail, kube-system and the other control-plane namespaces
    // excluded.
    let configuration = chaos::chart_webhook_configuration(&webhook.url("/validate"), &webhook.ca_file);
    assert!(configuration.contains("failurePolicy: Fail") && configuration.contains("kube-system"), "{configuration}");
    cp.kubectl(&["apply", "-f", "-"], Some(&configuration)).ok();
    let ns = "shop";
    cp.namespace(ns, &[]);
    let policy = format!(
        "apiVersion: csp.contracts.dev/v1alpha1\nkind: ContractPolicy\nmetadata: {{name: baseline}}\nspec:\n  enforcementAction: Deny\n  match: {{namespaces: [{ns}]}}\n  failover: {{requiredRegions: [gz, sz, hz]}}\n"
    );
    cp.kubectl(&["apply", "-f", "-"], Some(&policy)).ok();
    wait_until("the webhook to audit the policy", Duration::from_secs(60), || {
        cp.get(&["contractpolicy", "baseline"], "{.status.auditTime}").filter(|t| !t.is_empty())
    });
    let probe = AtomicU64::new(0);
    wait_until("the webhook to deny a non-compliant Service", Duration::from_secs(60), || {
        let i = probe.fetch_add(1, Ordering::Relaxed);
        (create(cp, &service(ns, &format!("probe-{i}"), "gz,sz")) == Outcome::Denied).then_some(())
    });

    let stop = AtomicBool::new(false);
    let load = |kind: &'static str| {
        let mut seen = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let yaml = match kind {
                "compliant" => service(ns, &format!("ok-{i}"), "gz,sz,hz"),
                "non-compliant" => service(ns, &format!("bad-{i}"), "gz,sz"),
                // Non-compliant too: kube-system is never sent to the webhook.
                _ => service("kube-system", &format!("chaos-{i}"), "gz"),
            };
            let started = Instant::now();
            let outcome = create(cp, &yaml);
            seen.push((started, Instant::now(), outcome));
            i += 1;
        }
        seen
    };
    let (compliant, non_compliant, kube_system, killed, restarted, ready) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let threads =
            [s.spawn(|| load("compliant")), s.spawn(|| load("non-compliant")), s.spawn(|| load("kube-system"))];
        std::thread::sleep(scale.load);
        // Before the signal: kill9 returns only once it has seen the process gone (it polls), and a create
        // cut off by the kill may end before that.
        let killed = Instant::now();
        webhook.process.kill9();
        std::thread::sleep(scale.down);
        webhook.process.start_again();
        let restarted = Instant::now();
        webhook.wait_ready();
        let ready = Instant::now();
        std::thread::sleep(scale.load);
        stop.store(true, Ordering::Relaxed);
        let [a, b, c] = threads.map(|t| t.join().expect("a load thread"));
        (a, b, c, killed, restarted, ready)
    });
    // Each create as (started, ended, outcome); "while down" means wholly between the kill and the restart.
    type Seen = [(Instant, Instant, Outcome)];
    let count = |seen: &Seen, f: &dyn Fn(&Instant, &Instant, &Outcome) -> bool| {
        seen.iter().filter(|(from, to, o)| f(from, to, o)).count()
    };
    let down = |from: &Instant, to: &Instant| *from > killed && *to < restarted;
    let first_compliant_after_restart = compliant
        .iter()
        .find(|(from, _, o)| *from >= restarted && *o == Outcome::Admitted)
        .map(|(_, to, _)| secs(to.duration_since(restarted)));
    let others: Vec<&Outcome> = compliant
        .iter()
        .chain(&non_compliant)
        .chain(&kube_system)
        .map(|(_, _, o)| o)
        .filter(|o| matches!(o, Outcome::Other(_)))
        .collect();
    // Refusals of compliant Services outside the outage: ended before the kill, or started once the
    // restarted webhook said it was ready.
    let stray: Vec<String> = compliant
        .iter()
        .filter(|(from, to, o)| (*to < killed || *from >= ready) && *o != Outcome::Admitted)
        .map(|(from, to, o)| {
            let at = |t: &Instant| {
                if *t >= killed {
                    t.duration_since(killed).as_secs_f64()
                } else {
                    -killed.duration_since(*t).as_secs_f64()
                }
            };
            format!("{o:?} from {:.3}s to {:.3}s after the kill", at(from), at(to))
        })
        .collect();
    let counts = json!({
        "webhook_down_s": secs(ready.duration_since(killed)),
        "restart_to_ready_s": secs(ready.duration_since(restarted)),
        "non_compliant_creates": non_compliant.len(),
        "non_compliant_admitted": count(&non_compliant, &|_, _, o| *o == Outcome::Admitted),
        "non_compliant_denied_by_policy": count(&non_compliant, &|_, _, o| *o == Outcome::Denied),
        "non_compliant_refused_webhook_down": count(&non_compliant, &|_, _, o| *o == Outcome::Unavailable),
        "compliant_creates": compliant.len(),
        "compliant_admitted": count(&compliant, &|_, _, o| *o == Outcome::Admitted),
        "compliant_refused_webhook_down": count(&compliant, &|_, _, o| *o == Outcome::Unavailable),
        "compliant_admitted_while_down": count(&compliant, &|f, t, o| down(f, t) && *o == Outcome::Admitted),
        "compliant_refused_while_webhook_ran": stray.len(),
        "compliant_admitted_after_restart": count(&compliant, &|f, _, o| *f >= ready && *o == Outcome::Admitted),
        "first_compliant_admitted_after_restart_s": first_compliant_after_restart,
        "kube_system_creates": kube_system.len(),
        "kube_system_failed": count(&kube_system, &|_, _, o| *o != Outcome::Admitted),
        "kube_system_created_while_down": count(&kube_system, &|f, t, o| down(f, t) && *o == Outcome::Admitted),
        "other_errors": others.len(),
    });
    record("webhook-kill", &scale, counts.clone());
    assert_eq!(counts["non_compliant_admitted"], 0, "non-compliant Services were admitted: {counts}");
    assert_eq!(counts["kube_system_failed"], 0, "kube-system writes failed: {counts}");
    assert!(
        counts["kube_system_created_while_down"].as_u64() > Some(0),
        "no kube-system write during the outage: {counts}"
    );
    assert!(counts["compliant_refused_webhook_down"].as_u64() > Some(0), "the outage refused nothing: {counts}");
    assert!(
        counts["compliant_admitted_after_restart"].as_u64() > Some(0),
        "nothing admitted after the restart: {counts}"
    );
    assert!(others.is_empty(), "unexpected errors: {others:?}");
    assert_eq!(counts["compliant_admitted_while_down"], 0, "admitted with the webhook down: {counts}");
    assert!(stray.is_empty(), "compliant Services refused while the webhook ran: {stray:?}\n{counts}");
}

/// The route timeout `rds.yaml` says for a maxLatency of `ms` milliseconds (proto3 JSON durations).
fn timeout_of(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("timeout: {}s", ms / 1000)
    } else {
        format!("timeout: {}.{:03}s", ms / 1000, ms % 1000)
    }
}

#[test]
fn killing_the_operator_leader_during_churn_loses_no_update() {
    let scale = Scale::from_env();
    let m = scale.churned;
    let stage = Stage::start("chaos-leader");
    let (cp, dir) = (&stage.cp, &stage.dir);
    let kubeconfig = stage.service_account(&rbac::operator_service_account());
    let ns = "churn";
    cp.namespace(ns, &[]);
    cp.kubectl(&["create", "-f", "-"], Some(&chaos::bulk(ns, "c", m, true, true, "1s"))).ok();
    // The chart's Lease and the operator's default lease timings (15 s / 10 s / 2 s).
    let lease = rbac::operator_lease();
    let args = |identity: &str| -> Vec<String> {
        [
            "--leader-elect",
            "--leader-election-namespace",
            rbac::NAMESPACE,
            "--leader-election-lease",
            &lease,
            "--identity",
            identity,
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect()
    };
    let names = ["op-a", "op-b"];
    let mut operators: Vec<Operator> =
        names.iter().map(|n| Operator::start(&kubeconfig, dir, n, "configmap", None, &args(n))).collect();
    let holder = || cp.get(&["lease", &lease, "-n", rbac::NAMESPACE], "{.spec.holderIdentity}").unwrap_or_default();
    let first = wait_until("an operator to hold the Lease", Duration::from_secs(60), || {
        let h = holder();
        names.iter().position(|n| *n == h)
    });
    wait_until(&format!("all {m} contracts programmed"), Duration::from_secs(120), || {
        chaos::programmed(cp, ns).filter(|(d, t)| *d == m && *t == m)
    });

    let stop = AtomicBool::new(false);
    let next = AtomicU64::new(1001);
    let last: Mutex<Vec<Option<(u64, i64)>>> = Mutex::new(vec![None; m]);
    let edits: Mutex<Vec<(Instant, bool)>> = Mutex::new(Vec::new());
    let edit = |t: usize| {
        let mut i = t;
        while !stop.load(Ordering::Relaxed) {
            let ms = next.fetch_add(1, Ordering::Relaxed);
            let patch = format!(r#"{{"spec":{{"sla":{{"maxLatency":"{ms}ms"}}}}}}"#);
            let name = format!("c-{i}");
            let r = cp.kubectl(
                &[
                    "patch",
                    "chc",
                    &name,
                    "-n",
                    ns,
                    "--type",
                    "merge",
                    "-p",
                    &patch,
                    "-o",
                    "jsonpath={.metadata.generation}",
                ],
                None,
            );
            let generation = r.stdout.trim().parse::<i64>().ok().filter(|_| r.success);
            if let Some(g) = generation {
                last.lock().expect("last")[i] = Some((ms, g));
            }
            edits.lock().expect("edits").push((Instant::now(), generation.is_some()));
            i = (i + 2) % m;
        }
    };
    let mut leader = first;
    let mut takeovers = Vec::new();
    let churn_stopped = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let editors = [s.spawn(|| edit(0)), s.spawn(|| edit(1))];
        for _ in 0..scale.rounds {
            std::thread::sleep(scale.load);
            let standby = 1 - leader;
            operators[leader].process.kill9();
            let killed = Instant::now();
            wait_until("the standby to take the Lease", Duration::from_secs(60), || {
                (holder() == names[standby]).then_some(())
            });
            let lease_taken = killed.elapsed();
            wait_until("the standby to lead", Duration::from_secs(30), || operators[standby].leads().then_some(()));
            let leading = killed.elapsed();
            let during = edits
                .lock()
                .expect("edits")
                .iter()
                .filter(|(at, ok)| *ok && *at >= killed && at.duration_since(killed) < leading)
                .count();
            takeovers.push(json!({"lease_taken_s": secs(lease_taken), "leading_s": secs(leading), "edits_while_leaderless": during}));
            // The killed one comes back as the standby.
            operators[leader].process.start_again();
            operators[leader].wait_ready();
            leader = standby;
        }
        std::thread::sleep(scale.load);
        stop.store(true, Ordering::Relaxed);
        for e in editors {
            e.join().expect("an editor");
        }
        Instant::now()
    });

    // Every contract's last edit is in its status and in its ConfigMap.
    let last = last.into_inner().expect("last");
    let mut behind = Vec::new();
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("every contract's last edit to be published", Duration::from_secs(180), || {
            let contracts: Value =
                serde_json::from_str(&cp.kubectl(&["get", "chc", "-n", ns, "-o", "json"], None).stdout).ok()?;
            let cms: Value = serde_json::from_str(
                &cp.kubectl(&["get", "cm", "-n", ns, "-l", "app.kubernetes.io/managed-by", "-o", "json"], None).stdout,
            )
            .ok()?;
            behind.clear();
            for (i, want) in last.iter().enumerate() {
                let Some((ms, generation)) = want else { continue };
                let name = format!("c-{i}");
                let c = contracts["items"].as_array()?.iter().find(|c| c["metadata"]["name"] == name.as_str())?;
                let cm = cms["items"].as_array()?.iter().find(|x| x["metadata"]["name"] == format!("{name}-envoy"));
                let published = cm.is_some_and(|cm| {
                    cm["data"]["rds.yaml"].as_str().is_some_and(|r| r.contains(&timeout_of(*ms)))
                        && cm["metadata"]["annotations"]["csp.contracts.dev/config-version"]
                            == c["status"]["configVersion"]
                });
                if c["metadata"]["generation"] != *generation || !chaos::is_programmed(c) || !published {
                    behind.push(format!("{name} (edit {ms}ms, generation {generation})"));
                }
            }
            behind.is_empty().then_some(())
        })
    }));
    let edits = edits.into_inner().expect("edits");
    let counts = json!({
        "contracts": m,
        "lease": "15s lease / 10s renew deadline / 2s retry (defaults)",
        "leader_kills": takeovers.len(),
        "takeovers": takeovers,
        "edits": edits.iter().filter(|(_, ok)| *ok).count(),
        "edits_failed": edits.iter().filter(|(_, ok)| !ok).count(),
        "contracts_edited": last.iter().filter(|l| l.is_some()).count(),
        "last_edit_published_after_churn_s": secs(churn_stopped.elapsed()),
        "lost_updates": behind.len(),
    });
    record("operator-leader-kill", &scale, counts.clone());
    assert!(
        converged.is_ok(),
        "lost updates: {behind:?}\n{counts}\n--- op-a ---\n{}\n--- op-b ---\n{}",
        operators[0].process.log_tail(),
        operators[1].process.log_tail()
    );
    assert_eq!(counts["edits_failed"], 0, "{counts}");
}

#[test]
fn proxies_serve_without_a_failed_request_while_the_operator_restarts_and_is_killed() {
    let scale = Scale::from_env();
    let stage = Stage::start("chaos-proxies");
    let (cp, dir) = (&stage.cp, &stage.dir);
    let certs = e2e::xds::write_certs(dir);
    let kubeconfig = stage.service_account(&rbac::operator_service_account());
    let mut bed = ProxyBed::new(cp, "shop", dir);
    bed.backend("pay-1");
    bed.service("pay", PORT, &["pay-1"]);
    bed.contract("pay", PORT, "3s");
    let mut operator = Operator::start(&kubeconfig, dir, "operator", "xds", Some(&certs), &[]);
    let proxy = bed.proxy(&operator, &certs.ca, "proxy-1", 2);
    bed.settle(proxy, "pay", PORT, "pay-1");
    let connected = |operator: &Operator| operator.metric("csp_xds_connected_proxies") == Some(1.0);
    wait_until("the proxy to be connected", Duration::from_secs(30), || connected(&operator).then_some(()));
    let version = || cp.get(&["chc", "pay", "-n", "shop"], "{.status.configVersion}").unwrap_or_default();
    let before = version();

    let stop = AtomicBool::new(false);
    let mut phases = Vec::new();
    let replies = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let traffic = s.spawn(|| bed.traffic(&[(proxy, "pay", PORT, "pay-1")], &stop));
        for _ in 0..scale.rounds {
            for how in ["SIGTERM", "SIGKILL"] {
                let from = Instant::now();
                if how == "SIGTERM" {
                    operator.process.stop();
                } else {
                    operator.process.kill9();
                }
                operator.process.start_again();
                operator.wait_ready();
                let ready = from.elapsed();
                wait_until("the proxy to reconnect", Duration::from_secs(60), || connected(&operator).then_some(()));
                let reconnected = from.elapsed();
                std::thread::sleep(Duration::from_secs(2));
                phases.push((how, from, Instant::now(), ready, reconnected));
            }
        }
        stop.store(true, Ordering::Relaxed);
        traffic.join().expect("traffic")
    });
    // The restarted operator feeds the proxy: an edit reaches it.
    bed.contract("pay", PORT, "2s");
    wait_until("the proxy to ack the edit", Duration::from_secs(60), || {
        let c: Value =
            serde_json::from_str(&cp.kubectl(&["get", "chc", "pay", "-n", "shop", "-o", "json"], None).stdout).ok()?;
        (chaos::is_programmed(&c)
            && c["status"]["proxies"]["acked"] == 1
            && c["status"]["configVersion"] != before.as_str())
        .then_some(())
    });
    let failures = failed(&replies);
    let per_phase: Vec<Value> = phases
        .iter()
        .map(|(how, from, to, ready, reconnected)| {
            let during: Vec<_> = replies.iter().filter(|(at, _, _)| at >= from && at <= to).collect();
            json!({
                "signal": how,
                "operator_ready_s": secs(*ready),
                "proxy_reconnected_s": secs(*reconnected),
                "requests": during.len(),
                "failed": during.iter().filter(|(_, ok, _)| !ok).count(),
            })
        })
        .collect();
    let counts = json!({
        "operator_restarts": phases.len(),
        "phases": per_phase,
        "requests": replies.len(),
        "requests_failed": failures.len(),
    });
    record("operator-restart-proxies", &scale, counts.clone());
    assert!(failures.is_empty(), "{} of {} requests failed: {failures:?}\n{counts}", failures.len(), replies.len());
    for phase in &per_phase {
        assert!(phase["requests"].as_u64() > Some(10), "too little traffic during a restart: {counts}");
    }
}
